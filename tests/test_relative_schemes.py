"""Shaw et al. relative representations, the dynamic position bias, sinusoidal positions.

References written here from the papers: Shaw's equations as explicit loops over (i, j)
(e_ij = x_i W^Q (x_j W^K + a^K_ij)^T / sqrt(d), z_i = sum_j alpha_ij (x_j W^V + a^V_ij)), the
k = 0 limit (standard attention + w^V_0), the dynamic bias as the MLP evaluated by hand on
``query - key`` (or its signed log), the sinusoids of Vaswani et al. section 3.5.

Shape legend: b batch, h heads, n sequence, d model dim, dh head dim, r 2k + 1 offsets.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from flag_models import VOCAB, build, prefill_then_steps, tokens
from torch import Tensor

from x_attn import Attention, Decoder, Encoder, TransformerWrapper
from x_attn.config import LayersConfig
from x_attn.positional import DynamicPositionBias, SinusoidalEmbedding
from x_attn.registry import FlagCase

F64 = torch.float64


def shaw_layer(k: int, values: bool = True, causal: bool = True, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    stack = LayersConfig(
        dim=16,
        depth=1,
        heads=2,
        causal=causal,
        shaw_rel_pos=True,
        shaw_max_distance=k,
        shaw_rel_values=values,
    )
    layer = Attention(16, heads=2, causal=causal, dim_head=8, stack_config=stack).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def shaw_reference(layer: Attention, x: Tensor, causal: bool) -> Tensor:
    """The paper's equations, one (head, i, j) at a time, then the output projection."""
    b, n, _ = x.shape
    heads, dh, k = 2, 8, layer.shaw.max_distance
    wq, wk, wv = (getattr(layer.proj, f"to_{c}").weight for c in "qkv")
    rel_k, rel_v = layer.shaw.rel_k, layer.shaw.rel_v
    z = torch.zeros(b, n, heads * dh, dtype=F64)
    for s in range(b):
        for h in range(heads):
            rows = slice(h * dh, (h + 1) * dh)
            q, kk, v = x[s] @ wq[rows].T, x[s] @ wk[rows].T, x[s] @ wv[rows].T
            for i in range(n):
                seen = range(i + 1) if causal else range(n)
                r = [max(-k, min(k, j - i)) + k for j in seen]
                e = torch.stack(
                    [q[i] @ (kk[j] + rel_k[rj]) / math.sqrt(dh) for j, rj in zip(seen, r)]
                )
                alpha = e.softmax(-1)
                z[s, i, rows] = sum(a * (v[j] + rel_v[rj]) for a, j, rj in zip(alpha, seen, r))
    return layer.to_out(z, x)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("k", [1, 3])
def test_shaw_matches_the_papers_equations(k: int, causal: bool) -> None:
    layer = shaw_layer(k, causal=causal)
    x = torch.randn(2, 7, 16, dtype=F64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = layer(x)
        expected = shaw_reference(layer, x, causal)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_shaw_with_k_zero_is_standard_attention_plus_w_v0() -> None:
    layer = shaw_layer(0)
    plain = Attention(16, heads=2, causal=True, dim_head=8).double()
    plain.load_state_dict({n: p for n, p in layer.state_dict().items() if "shaw" not in n})
    x = torch.randn(1, 6, 16, dtype=F64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = layer(x)
        base = plain(x)
        shift = layer.to_out.weight @ layer.shaw.rel_v[0].repeat(2)  # w^V_0 in every head
    torch.testing.assert_close(got, base + shift, atol=1e-12, rtol=0)


def test_shaw_offsets_beyond_k_share_the_edge_vectors() -> None:
    """Far keys only see clip(j - i) = -k: a layer whose edge vector moves changes, one whose
    interior vector for an offset that never occurs does not."""
    layer = shaw_layer(2)
    x = torch.randn(1, 3, 16, dtype=F64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = layer(x)
        layer.shaw.rel_k[4].add_(1.0)  # offset +2: future keys only, masked in a decoder
        layer.shaw.rel_v[4].add_(1.0)
        after = layer(x)
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_shaw_values_need_the_scores_and_keys_alone_do_not() -> None:
    with pytest.raises(ValueError, match="attn_flash=True.*shaw_rel_pos"):
        Decoder(dim=16, depth=1, heads=2, shaw_rel_pos=True, attn_flash=True)
    keys_only = Decoder(dim=16, depth=1, heads=2, shaw_rel_pos=True, shaw_rel_values=False)
    assert keys_only.explain()[0].split(": ")[1] == "sdpa"


def test_shaw_refusals() -> None:
    with pytest.raises(ValueError, match="shaw_max_distance .* must be >= 0"):
        Decoder(dim=16, depth=1, shaw_rel_pos=True, shaw_max_distance=-1)
    with pytest.raises(ValueError, match="shaw_rel_values=False configures shaw_rel_pos"):
        Decoder(dim=16, depth=1, shaw_rel_values=False)
    with pytest.raises(ValueError, match="attn_use_latent_kv and shaw_rel_pos"):
        Decoder(dim=16, depth=1, shaw_rel_pos=True, attn_use_latent_kv=True, attn_dim_latent_kv=8)


def test_xpos_with_latent_attention_decodes_as_the_full_forward() -> None:
    """rotary_xpos implies rotary: MLA's decoupled rotary keys carry xPos, cached or not."""
    case = FlagCase("xpos_mla", "", layers=dict(rotary_xpos=True, rotary_xpos_scale_base=64))
    net = build(case, attn_use_latent_kv=True, attn_dim_latent_kv=8, attn_latent_rope_subheads=1)
    assert net.attn_layers.positions.rotary.xpos_scale_base == 64
    ids = tokens(2, 7)
    with torch.no_grad():
        full = net(ids)
        stepped, _ = prefill_then_steps(net, ids, 3)
    torch.testing.assert_close(stepped, full, atol=1e-9, rtol=0)


# ----------------------------------------------------------------------------------------------
# dynamic position bias


def mlp_by_hand(module: DynamicPositionBias, x: float, norm: bool) -> Tensor:
    """Linear -> (LayerNorm) -> SiLU per hidden layer, then the last Linear, on one scalar."""
    layers = list(module.mlp)
    h = torch.tensor([x], dtype=F64)
    for i in range(0, len(layers) - 1, 3):
        h = layers[i].weight @ h + layers[i].bias
        if norm:
            ln = layers[i + 1]
            h = (h - h.mean()) / torch.sqrt(h.var(unbiased=False) + ln.eps) * ln.weight + ln.bias
        h = F.silu(h)
    return layers[-1].weight @ h + layers[-1].bias


@pytest.mark.parametrize(("log", "norm", "depth"), [(False, False, 2), (True, True, 3)])
def test_dynamic_bias_is_the_mlp_of_query_minus_key(log: bool, norm: bool, depth: int) -> None:
    torch.manual_seed(0)
    module = DynamicPositionBias(8, heads=3, depth=depth, log_distance=log, norm=norm).double()
    q_pos, k_pos = torch.tensor([5, 9]), torch.tensor([0, 4, 5, 9, 12])
    bias = module(q_pos, k_pos)
    assert bias.shape == (3, 2, 5)
    for a, qp in enumerate(q_pos.tolist()):
        for c, kp in enumerate(k_pos.tolist()):
            d = qp - kp
            x = math.copysign(math.log1p(abs(d)), d) if log else float(d)
            torch.testing.assert_close(
                bias[:, a, c], mlp_by_hand(module, x, norm), atol=1e-12, rtol=0
            )


def test_dynamic_bias_is_one_module_shared_by_the_stack() -> None:
    layers = Decoder(dim=16, depth=3, heads=2, dynamic_pos_bias=True)
    params = [n for n, _ in layers.named_parameters() if "mlp" in n]
    assert params and all(n.startswith("positions.rel_pos.mlp") for n in params)
    assert layers.positions.rel_pos.mlp[0].out_features == 16 // 4


def test_dynamic_bias_refusals() -> None:
    with pytest.raises(ValueError, match="alibi_pos_bias and dynamic_pos_bias"):
        Decoder(dim=16, depth=1, dynamic_pos_bias=True, alibi_pos_bias=True)
    with pytest.raises(ValueError, match="dynamic_pos_bias_mlp_depth must be >= 1"):
        Decoder(dim=16, depth=1, dynamic_pos_bias=True, dynamic_pos_bias_mlp_depth=0)
    with pytest.raises(ValueError, match="dynamic_pos_bias_norm=True configures dynamic_pos_bias"):
        Decoder(dim=16, depth=1, dynamic_pos_bias_norm=True)
    with pytest.raises(ValueError, match="rel_pos_kwargs.*dynamic_pos_bias takes no extra"):
        Decoder(dim=16, depth=1, dynamic_pos_bias=True, rel_pos_kwargs=dict(slopes=[1.0]))


def test_alibi_slopes_refusals() -> None:
    with pytest.raises(ValueError, match="must hold 2 finite numbers"):
        Decoder(dim=16, depth=1, heads=2, alibi_pos_bias=True, rel_pos_kwargs=dict(slopes=[1.0]))
    with pytest.raises(TypeError, match="unknown key"):
        Decoder(dim=16, depth=1, heads=2, alibi_pos_bias=True, rel_pos_kwargs=dict(slope=[1, 1]))
    with pytest.raises(TypeError, match="rel_pos_kwargs must be a dict"):
        Decoder(dim=16, depth=1, heads=2, alibi_pos_bias=True, rel_pos_kwargs=[1, 1])


# ----------------------------------------------------------------------------------------------
# sinusoidal absolute positions


def test_sinusoidal_embedding_is_the_papers_formula() -> None:
    table = SinusoidalEmbedding(16)(torch.arange(50))
    for p in (0, 1, 7, 49):
        for i in range(8):
            w = p / 10000 ** (2 * i / 16)
            assert float(table[p, 2 * i]) == pytest.approx(math.sin(w), abs=1e-7)
            assert float(table[p, 2 * i + 1]) == pytest.approx(math.cos(w), abs=1e-7)


def test_wrapper_adds_the_sinusoids_to_the_token_embeddings() -> None:
    torch.manual_seed(0)
    net = TransformerWrapper(
        num_tokens=VOCAB,
        max_seq_len=8,
        sinusoidal_pos_emb=True,
        attn_layers=Encoder(dim=16, depth=1, heads=2),
    ).double()
    assert not any("pos_emb" in n for n, _ in net.named_parameters())  # fixed
    x = tokens(1, 20)  # longer than max_seq_len: sinusoids have no table to run out of
    seen = {}
    net.attn_layers.register_forward_pre_hook(lambda m, args: seen.setdefault("h", args[0]))
    with torch.no_grad():
        net(x)
    pe = torch.tensor(
        [
            [f(p / 10000 ** (2 * i / 16)) for i in range(8) for f in (math.sin, math.cos)]
            for p in range(20)
        ],
        dtype=F64,
    )
    torch.testing.assert_close(seen["h"][0], net.token_emb(x)[0] + pe, atol=1e-7, rtol=0)


def test_sinusoidal_refusals() -> None:
    layers = Encoder(dim=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="sinusoidal_pos_emb and scaled_sinu_pos_emb"):
        TransformerWrapper(
            num_tokens=VOCAB,
            max_seq_len=8,
            attn_layers=layers,
            sinusoidal_pos_emb=True,
            scaled_sinu_pos_emb=True,
        )
    with pytest.raises(ValueError, match="use_abs_pos_emb=False"):
        TransformerWrapper(
            num_tokens=VOCAB,
            max_seq_len=8,
            attn_layers=layers,
            sinusoidal_pos_emb=True,
            use_abs_pos_emb=False,
        )
    with pytest.raises(TypeError, match="sinusoidal_pos_emb"):
        TransformerWrapper(
            num_tokens=VOCAB, max_seq_len=8, attn_layers=layers, sinusoidal_pos_emb="yes"
        )
