"""x_attn.interop.from_x_transformers: x-transformers' weights give x-transformers' outputs.

Each case builds the same flags in x-transformers and x_attn, jitters x-transformers' weights
(so zero- or identity-initialised parts are active), loads its state_dict into the x_attn model
and compares the outputs in float64. Two known numeric differences are removed on the test side
only, so the comparison checks the weight mapping to 1e-9: x-transformers keeps its rotary
frequencies in a float32 buffer (reset here to their float64 values) and normalizes RMSNorm with
a clamped norm where x_attn adds eps to the mean square (x_attn's eps set to 0 here). T5 bias
runs on x-transformers' manual path, whose softmax is float32 (hence 1e-6). Skipped when
x-transformers is not installed.

Shape legend: b batch, n sequence.
"""

from __future__ import annotations

import pytest
import torch

xt = pytest.importorskip("x_transformers")

from xt_pairs import jittered_x_transformers  # noqa: E402

import x_attn  # noqa: E402
from x_attn.interop import from_x_transformers  # noqa: E402
from x_attn.layers.norms import RMSNorm  # noqa: E402

WRAP = dict(num_tokens=20, max_seq_len=16)
BASE = dict(dim=16, depth=2, heads=2, attn_dim_head=8, attn_flash=True)
ROTARY = dict(rotary_pos_emb=True, rotary_emb_dim=4)
TOKENS = torch.randint(0, 20, (2, 9), generator=torch.Generator().manual_seed(1))

CASES = {
    "default_decoder": ("Decoder", {}, {}),
    "rotary_glu_rmsnorm": ("Decoder", dict(**ROTARY, ff_glu=True, use_rmsnorm=True), {}),
    "encoder_scalenorm_glu": ("Encoder", dict(use_scalenorm=True, ff_glu=True), {}),
    "post_norm_emb_dim_memory": (
        "Decoder",
        dict(pre_norm=False),
        dict(post_emb_norm=True, num_memory_tokens=2, emb_dim=8),
    ),
    "sandwich_layerscale_mem_kv": (
        "Decoder",
        dict(sandwich_norm=True, use_layerscale=True, attn_num_mem_kv=2),
        {},
    ),
    "gqa_qk_norm_rotary": ("Decoder", dict(attn_kv_heads=1, attn_qk_norm=True, **ROTARY), {}),
    "t5_bias_manual_path": ("Encoder", dict(rel_pos_bias=True, attn_flash=False), {}),
    "l2_distance_qk_norm_rotary": (
        "Decoder",
        dict(attn_l2_distance=True, attn_qk_norm=True, attn_one_kv_head=True, **ROTARY),
        {},
    ),
    "cog_signed_learned_sink": (
        "Decoder",
        dict(attn_cog_signed=True, attn_head_learned_sink=True, attn_flash=False),
        {},
    ),
    "unet_skips": ("Decoder", dict(unet_skips=True, depth=4), {}),
}


def _exact_numerics(theirs: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Remove the two numeric (not layout) differences described in the module docstring."""
    for module in theirs.modules():
        if isinstance(getattr(module, "inv_freq", None), torch.Tensor):
            r = 2 * module.inv_freq.numel()
            exponents = torch.arange(0, r, 2, dtype=torch.float64) / r
            module.inv_freq = 1.0 / 10000**exponents
    for module in ours.modules():
        if isinstance(module, RMSNorm):
            module.eps = 0.0


def _jittered(build) -> torch.nn.Module:
    return jittered_x_transformers(build)


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_equal_x_transformers(name):
    stack, flags, wrapper = CASES[name]
    layers = {**BASE, **flags}

    def build(lib):
        return lib.TransformerWrapper(**WRAP, **wrapper, attn_layers=getattr(lib, stack)(**layers))

    theirs = _jittered(build)
    ours = from_x_transformers(theirs.state_dict(), build(x_attn).double()).eval()
    _exact_numerics(theirs, ours)
    with torch.no_grad():
        expected, got = theirs(TOKENS), ours(TOKENS)
    tol = 1e-9 if layers["attn_flash"] else 1e-6
    torch.testing.assert_close(got, expected, atol=tol, rtol=0)
    assert (expected - theirs(TOKENS.flip(-1))).abs().max() > 1e-3  # the logits are not constant


def test_xtransformer_encoder_decoder_equal():
    sizes = dict(dim=16, enc_num_tokens=20, dec_num_tokens=20, enc_max_seq_len=16)
    sizes.update(enc_depth=1, dec_depth=2, enc_heads=2, dec_heads=2, dec_max_seq_len=16)
    sizes.update(enc_attn_dim_head=8, dec_attn_dim_head=8, enc_attn_flash=True)
    sizes.update(dec_attn_flash=True, dec_ff_glu=True)
    theirs = _jittered(lambda lib: lib.XTransformer(**sizes))
    ours = from_x_transformers(theirs, x_attn.XTransformer(**sizes).double()).eval()
    src, tgt = TOKENS[:, :7], TOKENS.flip(-1)[:, :6]
    with torch.no_grad():
        encoded = theirs.encoder(src, return_embeddings=True)
        torch.testing.assert_close(
            ours.encoder(src, return_embeddings=True), encoded, atol=1e-9, rtol=0
        )
        expected = theirs.decoder.net(tgt, context=encoded)
        got = ours.decoder.net(tgt, context=encoded)
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=0)


def test_continuous_wrapper_equal():
    def build(lib):
        stack = lib.Decoder(**BASE)
        return lib.ContinuousTransformerWrapper(
            dim_in=5, dim_out=3, max_seq_len=16, attn_layers=stack
        )

    theirs = _jittered(build)
    ours = from_x_transformers(theirs.state_dict(), build(x_attn).double()).eval()
    x = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-9, rtol=0)


def test_config_dict_builds_the_model():
    def build(lib):
        return lib.TransformerWrapper(**WRAP, attn_layers=lib.Decoder(**BASE, ff_glu=True))

    theirs = _jittered(build)
    config = x_attn.to_config(build(x_attn))
    ours = from_x_transformers(theirs.state_dict(), config).eval()  # built in float32
    assert next(ours.parameters()).dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(ours(TOKENS), theirs.float()(TOKENS), atol=1e-5, rtol=0)


def test_different_flags_are_refused_naming_the_weight():
    theirs = _jittered(
        lambda lib: lib.TransformerWrapper(**WRAP, attn_layers=lib.Decoder(**BASE, ff_glu=True))
    )
    plain = x_attn.TransformerWrapper(**WRAP, attn_layers=x_attn.Decoder(**BASE))
    with pytest.raises(ValueError, match=r"ff.0.proj.weight. has shape \(128, 16\)"):
        from_x_transformers(theirs.state_dict(), plain)
    sandwich = x_attn.TransformerWrapper(
        **WRAP, attn_layers=x_attn.Decoder(**BASE, ff_glu=True, sandwich_norm=True)
    )
    with pytest.raises(ValueError, match="no weight for x_attn's 'attn_layers.layers.0.branch"):
        from_x_transformers(theirs.state_dict(), sandwich)


def test_rotary_dim_mismatch_names_the_flag():
    """x-transformers' default rotary dim is dim_head // 2; x_attn's is at least 32 (capped)."""
    flags = dict(**BASE, rotary_pos_emb=True)
    theirs = _jittered(lambda lib: lib.TransformerWrapper(**WRAP, attn_layers=lib.Decoder(**flags)))
    ours = x_attn.TransformerWrapper(**WRAP, attn_layers=x_attn.Decoder(**flags))
    with pytest.raises(ValueError, match="rotary_emb_dim=4"):
        from_x_transformers(theirs.state_dict(), ours)


def test_bad_arguments_are_type_errors():
    model = x_attn.TransformerWrapper(**WRAP, attn_layers=x_attn.Decoder(**BASE))
    with pytest.raises(TypeError, match="'source'"):
        from_x_transformers([1, 2], model)
    with pytest.raises(TypeError, match="'model'"):
        from_x_transformers({}, "decoder")


def test_alibi_checkpoint_with_absolute_positions_is_refused():
    """x-transformers keeps learned absolute positions next to ALiBi; x_attn drops them."""

    def build(lib):
        return lib.TransformerWrapper(**WRAP, attn_layers=lib.Decoder(**BASE, alibi_pos_bias=True))

    theirs = _jittered(build)
    with pytest.raises(ValueError, match="'pos_emb.emb.weight' has no place"):
        from_x_transformers(theirs.state_dict(), build(x_attn))
