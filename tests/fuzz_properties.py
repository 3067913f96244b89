"""The properties the fuzzer (tests/test_fuzz.py) checks on a built :class:`Subject`.

Each property compares the model with itself under a transformation whose effect is known
exactly (a future token changed, a masked key changed, a cache instead of a full pass, a twin
built with another kernel, a model rebuilt from its config), in float64 at 1e-9 or tighter,
or a low-precision copy with the float64 model at a tolerance for the dtype.

Shape legend: b batch, n sequence, h heads, i queries, j keys, m memory tokens.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any

import torch
from flag_models import bind_condition
from fuzz_strategies import CTX, RELATIVE, Case, Subject, build
from torch import Tensor

from x_attn import from_config, to_config
from x_attn.masks.spec import AttnMask, Span
from x_attn.registry import flag_case

EXACT = 1e-10


def close(a: Tensor, b: Tensor, atol: float = EXACT, msg: str = "", rtol: float = 0.0) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"{msg}\n{m}")


def finite(t: Tensor, what: str) -> None:
    bad = ~torch.isfinite(t)
    assert not bad.any(), f"{what}: {int(bad.sum())} non-finite values (of {t.numel()})"


def differs(a: Tensor, b: Tensor, eps: float = 1e-6) -> bool:
    return bool((a - b).abs().max() > eps)


# ------------------------------------------------------------------------------------------
# masks


def padding_mask(s: Subject, n: int | None = None) -> Tensor | None:
    """(b, n) True = real token: row 0 left-padded, row 1 with a hole, maybe an empty row."""
    kind = s.case.opt("mask")
    if kind is None:
        return None
    n = n or s.case.n
    mask = torch.ones(s.case.batch, n, dtype=torch.bool)
    mask[0, : min(2, n - 1)] = False
    mask[1, n // 2] = False
    if kind == "empty-row":
        mask[-1] = False
    return mask


# what a refusal of left padding by design names: memory tokens in front of it with a feature
# that mixes neighbouring positions; global positions or block boundaries (the fixed sparse
# pattern, BigBird) at absolute slots that it would move
LEFT_PADDING_REFUSALS = ("num_memory_tokens", "attn_global_tokens", "block boundaries")
SLOT_ANCHORED = ("attn_global_tokens", "attn_sparse_summary", "attn_bigbird")


def left_padding_refused(error: ValueError) -> bool:
    """Whether ``error`` is a refusal of left padding by design (see LEFT_PADDING_REFUSALS)."""
    return any(word in str(error) for word in LEFT_PADDING_REFUSALS)


def usable_mask(s: Subject) -> Tensor | None:
    """:func:`padding_mask`, or None where the model refuses it by design (a ValueError of
    :func:`left_padding_refused`); the draw's other properties still run."""
    mask = padding_mask(s)
    anchored = any(flag in s.case.flags for flag in SLOT_ANCHORED)
    if mask is None or not (s.net.num_memory_tokens or anchored):
        return mask
    try:
        with torch.no_grad():
            s(s.inputs(), mask=mask)
    except ValueError as error:
        if not left_padding_refused(error):
            raise
        return None
    return mask


def head_mask(s: Subject) -> tuple[Tensor | None, Tensor]:
    """Per-head attn_mask (b, h, m + n, m + n) and the (b, n) positions hidden from every head.

    Random entries, one query row emptied in one head, and one or two key columns masked for
    every head and query (memory tokens stay visible).
    """
    case = s.case
    b, h, n, m = case.batch, case.heads, case.n, s.net.num_memory_tokens
    hidden = torch.zeros(b, n, dtype=torch.bool)
    if not case.opt("head_mask"):
        return None, hidden
    g = torch.Generator().manual_seed(11 + case.seed)
    attn = torch.rand(b, h, m + n, m + n, generator=g) < 0.7
    attn[:, :, :, :m] = True
    attn[0, -1, m + n - 1] = False  # an emptied row: the last query of the last head
    hidden[0, n // 2] = True
    hidden[-1, 0] = True
    for row in range(b):
        attn[row, :, :, m:][..., hidden[row]] = False
    return attn, hidden


def visible(s: Subject, mask: Tensor | None, hidden: Tensor) -> Tensor:
    """(b, n) positions whose outputs must not move when hidden keys change."""
    real = mask if mask is not None else torch.ones_like(hidden)
    return real & ~hidden


# ------------------------------------------------------------------------------------------
# forward properties


def finite_forward_backward(s: Subject, x: Tensor, **kw: Any) -> Tensor:
    """Output finite everywhere; train-mode backward gives every parameter a finite gradient."""
    with torch.no_grad():
        out = s(x, **kw)
    finite(out, "forward output")
    s.root.train()
    s.root.zero_grad(set_to_none=True)
    try:
        grad_out = s(x, **kw)
        g = torch.Generator().manual_seed(5)
        cot = torch.randn(grad_out.shape, generator=g, dtype=torch.float64).to(grad_out.dtype)
        (grad_out * cot).sum().backward()
    finally:
        s.root.eval()
    for name, p in s.root.named_parameters():
        if p.grad is not None:
            finite(p.grad, f"gradient of {name}")
    return out


def causal(s: Subject, x: Tensor, **kw: Any) -> None:
    """Changing tokens t.. leaves the outputs before t unchanged (causal stacks)."""
    n = x.shape[1]
    for t in sorted({1, n // 2, n - 1}):
        later = torch.zeros(x.shape[:2], dtype=torch.bool)
        later[:, t:] = True
        with torch.no_grad():
            a, b = s(x, **kw), s(s.changed(x, later), **kw)
        close(a[:, :t], b[:, :t], msg=f"outputs before position {t} moved with later tokens")


def masked_keys(s: Subject, x: Tensor, mask: Tensor | None, hidden: Tensor, **kw: Any) -> None:
    """Tokens hidden from every head (padding, attn_mask columns) do not move other outputs."""
    keep = visible(s, mask, hidden)
    if keep.all():
        return
    y = s.changed(x, ~keep)
    if mask is not None and not s.case.tokens:  # continuous inputs: NaN where mask is False
        y = s.changed(y, ~mask, fill_nan=True)
    with torch.no_grad():
        a, b = s(x, mask=mask, **kw), s(y, mask=mask, **kw)
    finite(b[keep], "outputs at real positions with NaN in masked positions")
    close(a[keep], b[keep], msg="a key masked for every head changed a visible output")


def _loss_and_grads(s: Subject, x: Tensor, **kw: Any) -> tuple[Tensor, dict[str, Tensor]]:
    s.root.zero_grad(set_to_none=True)
    out = s(x, **kw)
    g = torch.Generator().manual_seed(5)
    (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum().backward()
    return out.detach(), {n: p.grad for n, p in s.root.named_parameters() if p.grad is not None}


def fused_equals_manual(s: Subject, x: Tensor, **kw: Any) -> None:
    """A twin forced onto the manual kernel computes the same values and gradients."""
    twin = build(s.case.with_layers(attn_flash=False))
    assert twin is not None, "adding attn_flash=False to a buildable case must not be refused"
    twin.root.load_state_dict(s.root.state_dict())
    out, grads = _loss_and_grads(s, x, **kw)
    twin_out, twin_grads = _loss_and_grads(twin, x, **kw)
    close(out, twin_out, msg="SDPA and manual kernels give different outputs", rtol=1e-9)
    assert grads.keys() == twin_grads.keys()
    for name, grad in grads.items():  # gradients reach 1e3: relative 1e-9 as well
        msg = f"SDPA and manual gradients of {name} differ"
        close(grad, twin_grads[name], msg=msg, rtol=1e-9)


def round_trip(s: Subject, x: Tensor) -> None:
    """to_config -> JSON -> from_config + load_state_dict gives the same model, exactly."""
    config = to_config(s.root)
    rebuilt = from_config(json.loads(json.dumps(config)))
    assert to_config(rebuilt) == config
    rebuilt = rebuilt.double().eval()
    rebuilt.load_state_dict(s.root.state_dict())
    for module in rebuilt.modules():  # the fixed condition is a hook, not part of the config
        bind_condition(module)
    twin = Subject(rebuilt, s.case)
    with torch.no_grad():
        assert torch.equal(s(x), twin(x)), "the rebuilt model computes something else"


def position_aware(s: Subject, x: Tensor) -> None:
    """A non-causal model with positions is not equivariant to shifting its input (roll by 1)."""
    case = s.case
    claims = any(case.layer_kw.get(k) for k in RELATIVE)
    claims |= case.wrapper_kw.get("use_abs_pos_emb", True)
    if case.causal or not claims or x.shape[1] < 2 or (_top1(case) and case.relative):
        return  # relative schemes act on logits only, which top-1 attention reads by argmax
    with torch.no_grad():
        rolled = s(x.roll(1, dims=1))
        out = s(x)
    assert differs(rolled, out.roll(1, dims=1)), (
        "the model asked for positions but is blind to token order"
    )


def flag_effect(s: Subject, x: Tensor) -> None:
    """Every drawn flag changes the function (checked where the twin without it has the same
    parameters): nothing is silently ignored. No masks, so that every key can matter."""
    for name in s.case.flags:
        if _effect_exempt(s, name):
            continue
        twin = build(s.case.without(name))
        if twin is None or not _same_parameters(s, twin):
            continue
        twin.root.load_state_dict(s.root.state_dict())
        assert differs(_unmasked(s, x), _unmasked(twin, x), 1e-9), (
            f"flag {name} has no effect: {s.case}"
        )
    if s.case.arch == "crossattender" and s.case.layer_kw.get("causal"):
        twin = build(s.case.with_layers(causal=False))
        twin.root.load_state_dict(s.root.state_dict())
        assert differs(_unmasked(s, x), _unmasked(twin, x), 1e-9), "causal=True has no effect"


def _unmasked(s: Subject, x: Tensor) -> Tensor:
    """Output with every context position visible (no context_mask)."""
    context = {k: v for k, v in s.extra().items() if k != "context_mask"}
    with torch.no_grad():
        return s.net(x, **context)


def _top1(case: Case) -> bool:
    return case.layer_kw.get("attn_sparse_topk") == 1


def _same_parameters(s: Subject, twin: Subject) -> bool:
    mine, theirs = s.root.state_dict(), twin.root.state_dict()
    return mine.keys() == theirs.keys() and all(mine[k].shape == theirs[k].shape for k in mine)


def _qk_dim(s: Subject) -> int:
    """Query/key head dim of the first attention layer (the case's dim_head when none)."""
    dims = [m.qk_dim for m in s.net.attn_layers.modules() if hasattr(m, "qk_dim")]
    return dims[0] if dims else s.case.dim_head


def _rotary_pairs(s: Subject) -> int:
    """Rotated pairs per head of the first attention layer's queries and keys."""
    qk = _qk_dim(s)
    return min(s.case.layer_kw.get("rotary_emb_dim") or qk, qk) // 2


def _pattern_hides_nothing(s: Subject, slots: int) -> bool:
    """Whether no self-attention layer's pattern rule (window, block-sparse) hides a pair of
    ``slots`` positions beyond what causality hides (true without self-attention layers)."""
    layers = getattr(s.net.attn_layers, "layers", ())
    for rules in (layer.block.rules for layer in layers if layer.kind == "a"):
        bound = tuple(rule.for_length(slots) for rule in rules)
        span = Span(0, slots)
        plain = AttnMask(span, span, tuple(r for r in bound if r.kind == "causal")).dense()
        full = AttnMask(span, span, bound).dense()
        if full is None:
            continue
        if not torch.equal(full, plain if plain is not None else torch.ones_like(full)):
            return False
    return True


def _effect_exempt(s: Subject, name: str) -> bool:
    """Flags that legitimately leave the function unchanged in this case."""
    case, types = s.case, getattr(s.net.attn_layers, "types", ())
    context = CTX if case.arch in ("cross", "crossattender", "xtransformer") else 0
    keys = max(case.n + s.net.num_memory_tokens, context) + case.layer_kw.get("attn_num_mem_kv", 0)
    # a relative scheme in self-attention turns the wrapper's absolute positions off
    positions = getattr(s.net.attn_layers, "positions", None)
    relative = case.relative or bool(positions is not None and positions.is_relative)
    absolute_off = relative or "use_abs_pos_emb=False" in case.flags
    slots = case.n + s.net.num_memory_tokens  # positions a self-attention window counts
    if _top1(case):
        return True  # top-1 attention copies one value: the logits only matter through an argmax
    rules = {
        "default": True,  # no flag at all
        "attn_flash=False": True,  # by design: the same function on another kernel
        "attn_sparse_topk": case.layer_kw.get("attn_sparse_topk", 0) >= keys,
        "residual_attn": types.count("a") == 1,
        # later layers of a kind mix in the first one's values: none with one layer per kind
        "add_value_residual": max(types.count("a"), types.count("c")) < 2,
        "use_abs_pos_emb=False": relative,  # relative schemes turn them off already
        "scaled_sinu_pos_emb": absolute_off,
        "sinusoidal_pos_emb": absolute_off,
        "sandwich_coef": case.depth == 1,
        "weight_tie_layers": case.depth == 1,  # one layer of each kind: nothing to tie
        "rotary_pos_emb": bool(case.layer_kw.get("rotary_xpos")),  # xPos implies rotary
        # as many kv heads as query heads (the case's heads win over the entry's) is MHA
        "attn_kv_heads": case.layer_kw.get("attn_kv_heads") == case.heads,
        "attn_one_kv_head": case.heads == 1,
        "rotary_emb_dim": case.layer_kw.get("rotary_emb_dim", 0) >= _qk_dim(s),  # all of it
        # one rotated pair (rotary dim 2): the interleaved and half layouts are the same
        "rotary_interleaved": _rotary_pairs(s) <= 1,
        # a window at least as long as the sequence is full attention (by definition); no
        # self-attention layer (a CrossAttender): nothing to window
        "attn_window_size": case.layer_kw.get("attn_window_size", 0) >= slots
        or _pattern_hides_nothing(s, slots),
        "attn_global_tokens": slots <= 1 or _pattern_hides_nothing(s, slots),
        # a block-sparse pattern covering every (causal) pair of this length is full attention
        "attn_sparse_pattern": _pattern_hides_nothing(s, slots),
        "attn_sparse_summary": _pattern_hides_nothing(s, slots),
        "attn_bigbird": _pattern_hides_nothing(s, slots),
        # synonyms: attn_talking_heads = attn_pre_talking_heads + attn_post_talking_heads
        "attn_pre_talking_heads": "attn_talking_heads" in case.flags,
        "attn_post_talking_heads": "attn_talking_heads" in case.flags,
        "attn_talking_heads": {"attn_pre_talking_heads", "attn_post_talking_heads"}
        <= set(case.flags),
        "zero_init_branch_output": True,  # an initialisation: the twin loads the same weights
        "emb_frac_gradient": True,  # it scales the embedding gradient; the forward is unchanged
        "checkpoint_layers": True,  # it recomputes activations in backward; same forward
        "layer_dropout": not s.root.training,  # stochastic depth acts in training only
        # it clamps the plain hidden layer; with ff_glu it warns at construction that it does not
        "ff_softclamp_value": case.has("ff_glu"),
        # ResiDual is its own norm structure (pre_norm=True is refused with it): False is a no-op
        "pre_norm=False": case.has("resi_dual"),
    }
    return bool(rules.get(name, False))


# ------------------------------------------------------------------------------------------
# low precision


# max |low - float64| allowed, relative to 1 + max |float64 output|. Measured over 600 draws:
# float16 median 7e-4, p99 3e-3; bf16 autocast median 4e-3, p99 1.7e-2. Bugs show as NaN,
# inf, zeros or O(1) errors. Ill-conditioned models (gated residuals at depth 3) get more:
# MARGIN x their float32 error x the ratio of unit roundoffs.
TOLERANCE = {"float16": 5e-2, "bf16-autocast": 2e-1}
ROUNDOFF_RATIO = {"float16": 2.0**13, "bf16-autocast": 2.0**16}  # vs float32's 2**-24
MARGIN = 10.0


FLOAT16_SAFE = 2.0**14  # a quarter of float16's largest finite value


def _cotangent(out: Tensor) -> Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randn(out.shape, generator=g, dtype=torch.float64)


def float64_peaks(s: Subject, x: Tensor, **kw: Any) -> tuple[float, float]:
    """Largest |activation| and |activation gradient| at any module boundary of a float64
    train-mode forward and backward (the loss of :func:`_low_run`)."""
    peaks = {"value": [0.0], "grad": [0.0]}

    def record(kind: str, tensors: tuple) -> None:
        for t in tensors:
            if isinstance(t, Tensor) and t.is_floating_point() and t.numel():
                peaks[kind].append(float(t.detach().abs().max()))

    modules = list(s.root.modules())
    hooks = [m.register_forward_hook(lambda m, a, o: record("value", (*a, o))) for m in modules]
    hooks += [
        m.register_full_backward_hook(lambda m, gi, go: record("grad", (*gi, *go))) for m in modules
    ]
    s.root.train()
    try:
        with warnings.catch_warnings():  # hooks on modules that return non-tensors: harmless
            warnings.simplefilter("ignore", UserWarning)
            out = s(x, **kw)
            (out * _cotangent(out)).mean().backward()
    finally:
        s.root.eval().zero_grad(set_to_none=True)
        for hook in hooks:
            hook.remove()
    return max(peaks["value"]), max(peaks["grad"])


def _tolerance(s: Subject, kind: str, x: Tensor, reference: Tensor, mask, real) -> float:
    """Absolute tolerance for ``kind``: the dtype's, or more for an ill-conditioned model."""
    scale = 1 + float(reference[real].abs().max())
    with torch.no_grad():
        single = s.to(torch.float32)(x if s.case.tokens else x.float(), mask=mask)
    conditioning = float((single.double() - reference)[real].abs().max()) / scale
    return max(TOLERANCE[kind], MARGIN * conditioning * ROUNDOFF_RATIO[kind]) * scale


def _low_run(s: Subject, kind: str, x: Tensor, check_grads: bool, **kw: Any) -> Tensor:
    """Output of a float16 copy, or of a float32 copy under bfloat16 autocast; checks that a
    train-mode backward gives finite gradients (when ``check_grads``)."""
    low = s.to(torch.float16 if kind == "float16" else torch.float32)
    x = x if s.case.tokens else x.to(low.dtype)
    low.root.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind == "bf16-autocast"):
        out = low(x, **kw)
    (out.float() * _cotangent(out).float()).mean().backward()
    for name, p in low.root.named_parameters():
        if p.grad is not None and check_grads:
            finite(p.grad, f"{kind} gradient of {name}")
    return out.detach()


def kernel_of(s: Subject) -> str:
    """The kernel label of the sequence model: manual when any attention layer runs manual."""
    manual = any(": manual:" in line for line in s.net.attn_layers.explain())
    return "manual" if manual else "default"


def low_precision(
    s: Subject, kind: str, mask: Tensor | None, skip: Callable[[str], bool] = lambda k: False
) -> None:
    """float16 / bf16-autocast outputs are finite and near the float64 model's on the default
    kernel and on the manual one (unless ``skip(kernel)``); gradients are finite. float16 draws
    whose exact activations or gradients leave float16's range are not held to that.

    Top-k attention and LSH attention are discontinuous (a near tie of the top-k or of the hash
    argmax flips in low precision, moving a key to another bucket), so with attn_sparse_topk or
    attn_lsh only finiteness is checked.
    """
    x = s.inputs()
    values, grads = float64_peaks(s, x, mask=mask)
    if kind == "float16" and values > FLOAT16_SAFE:
        return  # the model's own activations leave float16's range: no kernel can hold them
    # likewise its activation gradients (a LayerNorm of a near-constant row has gain ~316)
    check_grads = kind != "float16" or grads <= FLOAT16_SAFE
    with torch.no_grad():
        reference = s(x, mask=mask)
    real = mask if mask is not None else torch.ones(x.shape[:2], dtype=torch.bool)
    atol = _tolerance(s, kind, x, reference, mask, real)
    twin = build(s.case.with_layers(attn_flash=False))
    twin.root.load_state_dict(s.root.state_dict())
    for subject in (s, twin):
        kernel = kernel_of(subject)
        if skip(kernel):
            continue
        out = _low_run(subject, kind, x, check_grads, mask=mask)
        finite(out, f"{kind} output ({kernel} kernel)")
        # stochastic depth drops layers in the train-mode run, and flags random in training by
        # design (registry: stochastic, e.g. recycling's run count) draw: only finiteness there
        discontinuous = s.case.has("attn_sparse_topk") or s.case.has("attn_lsh")
        random = any(flag_case(f).stochastic for f in s.case.flags)
        if not (discontinuous or random or s.case.has("layer_dropout")):
            close(out.double()[real], reference[real], atol, f"{kind} ({kernel} kernel) vs float64")
