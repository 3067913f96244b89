"""Static decode path (generate(static_cache=True, compile=...)): same tokens and logits as the
ordinary cached decode, one trace per shape (no graph breaks, no recompiles per token), and a
ValueError naming the option for every model it does not serve.

The reference is the ordinary KV-cache decode (itself tested against the uncached forward);
both are fed the same tokens and compared in float64. Compile checks use dynamo with the
"eager" / "aot_eager" backends (no inductor needed).
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from x_attn import Decoder, TransformerWrapper
from x_attn.decode import static_stepper
from x_attn.wrappers.autoregressive import AutoregressiveWrapper
from x_attn.wrappers.decoding import inference, prepare_prompts
from x_attn.wrappers.stepper import LogitStepper

VOCAB, MAX_LEN = 48, 24

CONFIGS = {
    "default": {},
    "rotary_gqa_rmsnorm_swiglu": dict(
        rotary_pos_emb=True, attn_kv_heads=2, use_rmsnorm=True, ff_glu=True, ff_swish=True
    ),
    "mqa_partial_interleaved_rotary": dict(
        rotary_pos_emb=True, attn_one_kv_head=True, rotary_emb_dim=4, rotary_interleaved=True
    ),
    "alibi": dict(alibi_pos_bias=True),
    "t5": dict(rel_pos_bias=True, rel_pos_num_buckets=8, rel_pos_max_distance=16),
}


def _model(seed: int = 0, tie: bool = False, **flags) -> AutoregressiveWrapper:
    torch.manual_seed(seed)
    stack = Decoder(dim=32, depth=2, heads=4, attn_dim_head=8, **flags)
    net = TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=MAX_LEN, attn_layers=stack, tie_embedding=tie
    )
    return AutoregressiveWrapper(net).double().eval()


def _prompts(batch: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (3 + 2 * i,), generator=gen) for i in range(batch)]


def _logits(model, prompts, tokens, static: bool, restrict: bool = True) -> torch.Tensor:
    """(t, b, v) logits of both paths fed the same tokens (t, b)."""
    batch = prepare_prompts(prompts, None, model.pad_value, "test")
    with inference(model.net):
        if static:
            stepper = static_stepper(model, batch, len(tokens), restrict, True, {}, False)
        else:
            stepper = LogitStepper(model, batch, {}, True, restrict)
        out = [stepper.first()]
        out += [stepper.step(token) for token in tokens[:-1]]
    return torch.stack(out)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("batch", [1, 3])
def test_static_equals_cached_decode(name: str, batch: int) -> None:
    model = _model(**CONFIGS[name])
    prompts = _prompts(batch)
    expected = model.generate(prompts, 12, temperature=0.0)
    tokens = model.generate(prompts, 12, temperature=0.0, static_cache=True)
    assert torch.equal(tokens, expected)
    steps = expected.t()
    ours = _logits(model, prompts, steps, static=True)
    ref = _logits(model, prompts, steps, static=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


def test_tied_embedding_and_sampling() -> None:
    """Tied logits; seeded top-k sampling draws the same tokens as the ordinary cache."""
    model = _model(tie=True, rotary_pos_emb=True)
    prompts = _prompts(2)
    runs = [
        model.generate(
            prompts,
            10,
            temperature=0.8,
            filter_kwargs={"k": 5},
            generator=torch.Generator().manual_seed(3),
            static_cache=static,
        )
        for static in (False, True)
    ]
    assert torch.equal(*runs)


def test_sliding_window_past_max_seq_len() -> None:
    """Relative positions past max_seq_len: the mask's window equals the evicting cache."""
    model = _model(rotary_pos_emb=True)
    prompts = _prompts(2)
    n = MAX_LEN + 10
    expected = model.generate(prompts, n, temperature=0.0)
    assert torch.equal(model.generate(prompts, n, temperature=0.0, static_cache=True), expected)
    ours = _logits(model, prompts, expected.t(), static=True)
    torch.testing.assert_close(
        ours, _logits(model, prompts, expected.t(), False), rtol=0, atol=1e-10
    )
    unrestricted = model.generate(prompts, n, temperature=0.0, restrict_to_max_seq_len=False)
    static = model.generate(
        prompts, n, temperature=0.0, restrict_to_max_seq_len=False, static_cache=True
    )
    assert torch.equal(static, unrestricted)


class _CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them eagerly."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return gm.forward


@pytest.mark.parametrize("skip_guards", [False, True])
@pytest.mark.parametrize("name", ["default", "rotary_gqa_rmsnorm_swiglu", "alibi"])
def test_compiles_once_without_breaks(name: str, skip_guards: bool, monkeypatch) -> None:
    """fullgraph=True (a break raises); 20 decode steps and a second call add no graph.

    With every guard evaluated on every step (skip_guards=False) a recompile would show; with
    the guards skipped after the first step, the tokens must still be the reference's.
    """
    monkeypatch.setattr("x_attn.decode.generate.SKIP_GUARDS", skip_guards)
    torch._dynamo.reset()
    model = _model(**CONFIGS[name])
    prompts = _prompts(2)
    expected = model.generate(prompts, 20, temperature=0.0)
    backend = _CountingBackend()
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = model.generate(prompts, 20, temperature=0.0, static_cache=True, compile=backend)
        assert torch.equal(out, expected)
        assert backend.graphs == 2  # the prefill and the step, nothing per token
        again = model.generate(prompts, 15, temperature=0.0, static_cache=True, compile=backend)
    assert torch.equal(again, expected[:, :15])
    assert backend.graphs == 2


def test_aot_eager_functionalizes_the_buffer_writes() -> None:
    """aot_eager (functionalised graphs, in-place buffer writes copied back): same tokens."""
    torch._dynamo.reset()
    model = _model(rotary_pos_emb=True, attn_kv_heads=2)
    prompts = _prompts(2)
    expected = model.generate(prompts, 12, temperature=0.0)
    out = model.generate(prompts, 12, temperature=0.0, static_cache=True, compile="aot_eager")
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (dict(attn_qk_norm=True), "attn_qk_norm"),
        (dict(use_scalenorm=True), "norm='scalenorm'"),
        (dict(rotary_xpos=True), "rotary_xpos"),
        (dict(shift_tokens=1), "shift_tokens"),
        (dict(pre_norm=False), "pre_norm"),
        (dict(attn_num_mem_kv=2), "attn_num_mem_kv"),
        (dict(ff_post_act_ln=True), "ff_post_act_ln"),
        (dict(cross_attend=True), "cross_attend"),
    ],
)
def test_refuses_unsupported_flags_by_name(flags: dict, named: str) -> None:
    model = _model(**flags)
    with pytest.raises(ValueError, match="static_cache=True") as error:
        model.generate(_prompts(1)[0], 4, static_cache=True)
    assert named in str(error.value)


def test_refuses_wrapper_options_and_inputs() -> None:
    torch.manual_seed(0)
    net = TransformerWrapper(
        num_tokens=VOCAB,
        max_seq_len=MAX_LEN,
        num_memory_tokens=2,
        attn_layers=Decoder(dim=32, depth=1, heads=4),
    )
    model = AutoregressiveWrapper(net).eval()
    prompt = _prompts(1)[0]
    with pytest.raises(ValueError, match="num_memory_tokens=2"):
        model.generate(prompt, 4, static_cache=True)
    plain = _model()
    with pytest.raises(ValueError, match="cache_kv=False"):
        plain.generate(prompt, 4, static_cache=True, cache_kv=False)
    with pytest.raises(ValueError, match="static_cache=True"):
        plain.generate(prompt, 4, compile=True)
    with pytest.raises(TypeError, match="'compile'"):
        plain.generate(prompt, 4, static_cache=True, compile=3)
    with pytest.raises(ValueError, match="outside"):
        plain.generate(torch.tensor([1, VOCAB]), 4, static_cache=True)


def test_refuses_intermediates_with_static_cache() -> None:
    """The intermediates are the ordinary KV cache, which the static path never builds."""
    with pytest.raises(ValueError, match="return_intermediates=True") as error:
        _model().generate(_prompts(1)[0], 4, static_cache=True, return_intermediates=True)
    assert "drop static_cache=True" in str(error.value)
    assert "reads the ordinary KV cache" in str(error.value)


def test_follows_weight_updates_and_copies() -> None:
    """A compiled decoder reads the live parameters (training between generations); the model
    still deep-copies; released decoders are rebuilt."""
    import copy

    from x_attn.decode import release_static_decoders

    torch._dynamo.reset()
    model = _model(rotary_pos_emb=True)
    prompts = _prompts(2)
    backend = _CountingBackend()
    before = model.generate(prompts, 8, temperature=0.0, static_cache=True, compile=backend)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    expected = model.generate(prompts, 8, temperature=0.0)
    assert not torch.equal(before, expected)  # the update changes the tokens
    out = model.generate(prompts, 8, temperature=0.0, static_cache=True, compile=backend)
    assert torch.equal(out, expected)
    twin = copy.deepcopy(model)
    assert torch.equal(twin.generate(prompts, 8, temperature=0.0, static_cache=True), expected)
    release_static_decoders(model)
    out = model.generate(prompts, 8, temperature=0.0, static_cache=True, compile=backend)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lower_precision(dtype: torch.dtype) -> None:
    """float32 / bfloat16 models: the ordinary cache's tokens, logits within a few ulps."""
    model = _model(rotary_pos_emb=True, attn_kv_heads=2).to(dtype)
    prompts = _prompts(3)
    expected = model.generate(prompts, 10, temperature=0.0)
    assert torch.equal(model.generate(prompts, 10, temperature=0.0, static_cache=True), expected)
    ours = _logits(model, prompts, expected.t(), static=True).float()
    ref = _logits(model, prompts, expected.t(), static=False).float()
    tol = 1e-5 if dtype == torch.float32 else 4e-2
    torch.testing.assert_close(ours, ref, rtol=0, atol=tol)
