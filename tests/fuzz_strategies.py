"""What the fuzzer draws (tests/test_fuzz.py) and how a draw becomes a model.

A :class:`Case` is one flag set from ``x_attn.registry.FLAGS`` (several flags, legal values),
an architecture, tiny dims and the options of one usage pattern. :func:`build` turns it into a
:class:`Subject`: a float64, eval-mode model whose parameters are jittered (so zero- or
identity-initialised parts such as ReZero, gates and talking heads are active), together with
the inputs it takes. A case the library refuses at construction builds to ``None`` after its
message has been checked to name a flag of the case.

Shape legend: b batch, n sequence, d model dim, j context length, di continuous input dim.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor, nn

from x_attn import (
    ContinuousTransformerWrapper,
    CrossAttender,
    Decoder,
    Encoder,
    TransformerWrapper,
    XTransformer,
)
from x_attn.registry import FLAGS, flag_case

VOCAB, DIM, CTX = 20, 16, 5
RELATIVE = ("rotary_pos_emb", "rel_pos_bias", "alibi_pos_bias", "position_infused_attn")
# token wrappers around a stack; "cross" = Decoder(cross_attend=True); "xtransformer" = the
# decoder of an encoder-decoder model (its context is the encoder's output)
ARCHS = (
    "decoder",
    "encoder",
    "cross",
    "crossattender",
    "continuous-decoder",
    "continuous-encoder",
    "xtransformer",
)
CAUSAL_ARCHS = ("decoder", "cross", "continuous-decoder", "xtransformer")
TOKEN_ARCHS = ("decoder", "encoder", "cross", "crossattender", "xtransformer")
# legal values beyond the registry's example setting
VARIANTS: dict[str, tuple[Any, ...]] = {
    "attn_num_mem_kv": (1, 2, 3),
    "attn_sparse_topk": (1, 2, 3, 5),
    "attn_collab_compression": (0.25, 0.5, 1.0),
    "sandwich_coef": (1, 2),
    "num_memory_tokens": (1, 2, 3),
    "attn_mta_kernel_q": (1, 2, 3, 4),
    "attn_mta_kernel_k": (1, 3, 5),
    "attn_mta_head_kernel": (1, 2),
}
# "default" (no flag) comes first, so that shrinking drops flags that play no part
FLAG_NAMES = tuple(c.name for c in FLAGS)


@dataclass(frozen=True)
class Case:
    """One draw. ``layers`` / ``wrapper`` are the merged keywords of the drawn flags."""

    arch: str
    flags: tuple[str, ...]
    layers: tuple[tuple[str, Any], ...]
    wrapper: tuple[tuple[str, Any], ...]
    depth: int = 2
    heads: int = 2
    dim_head: int = 8
    batch: int = 2
    n: int = 6
    seed: int = 0
    opts: tuple[tuple[str, Any], ...] = ()

    def __repr__(self) -> str:  # the reproduction recipe hypothesis prints
        return (
            f"Case(arch={self.arch!r}, layers={dict(self.layers)}, wrapper={dict(self.wrapper)}, "
            f"depth={self.depth}, heads={self.heads}, dim_head={self.dim_head}, "
            f"batch={self.batch}, n={self.n}, seed={self.seed}, opts={dict(self.opts)})"
        )

    @property
    def layer_kw(self) -> dict[str, Any]:
        return dict(self.layers)

    @property
    def wrapper_kw(self) -> dict[str, Any]:
        return dict(self.wrapper)

    def opt(self, name: str, default: Any = None) -> Any:
        return dict(self.opts).get(name, default)

    def has(self, *names: str) -> bool:
        """True when any of ``names`` is a drawn flag (registry name) or an active keyword."""
        kw = {**self.layer_kw, **self.wrapper_kw}
        return any(n in self.flags or bool(kw.get(n)) for n in names)

    @property
    def causal(self) -> bool:
        return self.arch in CAUSAL_ARCHS

    @property
    def tokens(self) -> bool:
        return self.arch in TOKEN_ARCHS

    @property
    def relative(self) -> bool:
        return any(self.layer_kw.get(k) for k in RELATIVE)

    def without(self, name: str) -> Case:
        """The same case without registry flag ``name`` (its keywords removed)."""
        case = flag_case(name)
        layers = tuple((k, v) for k, v in self.layers if k not in _owned_keys(case.layers))
        wrapper = tuple((k, v) for k, v in self.wrapper if k not in case.wrapper)
        flags = tuple(f for f in self.flags if f != name)
        return replace(self, flags=flags, layers=layers, wrapper=wrapper)

    def with_layers(self, **kw: Any) -> Case:
        return replace(self, layers=tuple({**self.layer_kw, **kw}.items()))


def _owned_keys(layers: dict[str, Any]) -> set[str]:
    keys = set(layers)
    if "rotary_pos_emb" in keys:
        keys |= {"rotary_emb_dim"}
    if "alibi_pos_bias" in keys:
        keys |= {"alibi_num_heads"}
    if "attn_mta" in keys:
        keys |= {"attn_mta_layers"}
    return keys


def flag_keywords(case: Case) -> set[str]:
    """Every keyword a refusal message may name for this case."""
    names = set(case.layer_kw) | set(case.wrapper_kw) | {"max_mem_len", "mems", "cache"}
    if case.arch == "crossattender":
        names |= {"CrossAttender", "only_cross", "cross_attend"}
    if case.arch in ("cross", "xtransformer"):
        names |= {"cross_attend", "context"}
    if case.arch.startswith("continuous"):
        names |= {"ContinuousTransformerWrapper"}
    return names


# ------------------------------------------------------------------------------------------
# strategies


@st.composite
def cases(
    draw: st.DrawFn,
    archs: tuple[str, ...] = ARCHS,
    opts: Callable[[st.DrawFn, Case], dict[str, Any]] | None = None,
    max_flags: int = 6,
    min_flags: int = 1,
) -> Case:
    """A Case; ``opts(draw, case)`` adds the options of one usage pattern."""
    arch = draw(st.sampled_from(archs))
    flag_names = st.sampled_from(FLAG_NAMES)
    names = draw(st.lists(flag_names, min_size=min_flags, max_size=max_flags, unique=True))
    names = [n for n in names if n != "default"]
    if arch.startswith("continuous"):
        names = [n for n in names if n != "tie_embedding"]
    layers: dict[str, Any] = {}
    wrapper: dict[str, Any] = {}
    for name in sorted(names):
        case = flag_case(name)
        for target, kw in ((layers, case.layers), (wrapper, case.wrapper)):
            for key, value in kw.items():
                target[key] = draw(st.sampled_from(VARIANTS[key])) if key in VARIANTS else value
    layers.update(draw(_extra_layer_flags(arch, layers)))
    case = Case(
        arch=arch,
        flags=tuple(sorted(names)),
        layers=tuple(sorted(layers.items())),
        wrapper=tuple(sorted(wrapper.items())),
        depth=draw(st.integers(1, 3)),
        heads=draw(st.sampled_from((1, 2, 4))),
        dim_head=draw(st.sampled_from((4, 8))),
        batch=draw(st.integers(2, 3)),
        n=draw(st.integers(3, 9)),
        seed=draw(st.integers(0, 3)),
    )
    if opts is not None:
        case = replace(case, opts=tuple(sorted(opts(draw, case).items())))
    return case


@st.composite
def _extra_layer_flags(draw: st.DrawFn, arch: str, layers: dict[str, Any]) -> dict[str, Any]:
    """Flags outside the registry, drawn rarely: custom layer orders and partial schemes."""
    extra: dict[str, Any] = {}
    # rare, and shrinking (towards 0) removes them; 'c' only where a context is passed
    if arch in ("decoder", "encoder", "cross") and draw(st.integers(0, 5)) == 5:
        letters = st.sampled_from(("a", "c", "f") if arch == "cross" else ("a", "f"))
        extra["custom_layers"] = tuple(draw(st.lists(letters, min_size=2, max_size=5)))
    if arch == "crossattender" and draw(st.integers(0, 3)) == 3:
        extra["causal"] = True
    if layers.get("rotary_pos_emb") and draw(st.booleans()):
        extra["rotary_emb_dim"] = draw(st.sampled_from((2, 4)))
    if layers.get("alibi_pos_bias") and draw(st.booleans()):
        extra["alibi_num_heads"] = 1
    if layers.get("attn_mta") and draw(st.integers(0, 3)) == 3:
        extra["attn_mta_layers"] = (draw(st.integers(0, 2)),)  # past the stack: refused
    return extra


# ------------------------------------------------------------------------------------------
# models


@dataclass
class Subject:
    """A built case: ``subject(x, **kw)`` runs the sequence model under test.

    Attributes:
        root: the model the user built (config / state_dict round trips use it).
        net: the sequence model (for XTransformer: its decoder's TransformerWrapper).
        case: the draw.
        dtype: the parameters' dtype.
    """

    root: nn.Module
    case: Case
    dtype: torch.dtype = torch.float64

    @property
    def net(self) -> nn.Module:
        return self.root.decoder.net if self.case.arch == "xtransformer" else self.root

    def extra(self, rows: slice | None = None) -> dict[str, Any]:
        """Inputs every call needs: context and context_mask (cross-attending archs)."""
        return _context(self.root, self.case, rows)

    def __call__(self, x: Tensor, **kw: Any):
        return self.net(x, **self.extra(), **kw)

    def to(self, dtype: torch.dtype) -> Subject:
        """A copy of the model in ``dtype`` (same weights, rounded)."""
        return Subject(copy.deepcopy(self.root).to(dtype), self.case, dtype)

    def inputs(self, n: int | None = None, seed: int = 1) -> Tensor:
        """(b, n) tokens or (b, n, di) floats, from a seeded generator."""
        case, n = self.case, n or self.case.n
        g = torch.Generator().manual_seed(seed + 100 * case.seed)
        if case.tokens:
            return torch.randint(0, VOCAB, (case.batch, n), generator=g)
        x = torch.randn(case.batch, n, self.net.dim_in, generator=g, dtype=torch.float64)
        x = x * case.opt("scale", 1.0)
        if case.opt("zero_rows"):
            x[:, ::2] = 0.0
        return x.to(self.dtype)

    def changed(self, x: Tensor, where: Tensor, fill_nan: bool = False) -> Tensor:
        """``x`` with different values wherever ``where`` (b, n) is True."""
        if self.case.tokens:
            return torch.where(where, (x + 1 + torch.arange(x.shape[1])) % VOCAB, x)
        new = torch.full_like(x, float("nan")) if fill_nan else x * -2.0 + 1.0
        return torch.where(where.unsqueeze(-1), new, x)


def construct(case: Case) -> nn.Module:
    """The case's root model (may raise the library's refusal)."""
    torch.manual_seed(case.seed)
    layers = dict(case.layer_kw, depth=case.depth, heads=case.heads)
    if set(layers.get("custom_layers", "a")) & {"a", "c"}:  # attention options need attention
        layers["attn_dim_head"] = case.dim_head
    wrapper = dict(case.wrapper_kw, max_seq_len=32, max_mem_len=case.opt("max_mem_len", 0))
    arch = case.arch
    if arch == "xtransformer":
        wrapper.pop("max_mem_len")
        prefixed = {f"dec_{k}": v for k, v in {**layers, **wrapper}.items()}
        return XTransformer(
            dim=DIM,
            enc_num_tokens=VOCAB,
            enc_max_seq_len=16,
            enc_depth=1,
            enc_heads=2,
            dec_num_tokens=VOCAB,
            **prefixed,
        )
    stack = {
        "decoder": Decoder,
        "encoder": Encoder,
        "cross": Decoder,
        "crossattender": CrossAttender,
        "continuous-decoder": Decoder,
        "continuous-encoder": Encoder,
    }[arch]
    if arch == "cross":
        layers["cross_attend"] = True
    attn_layers = stack(dim=DIM, **layers)
    if arch.startswith("continuous"):
        dim_in, dim_out = case.opt("dim_in", 5), case.opt("dim_out", 3)
        return ContinuousTransformerWrapper(
            attn_layers=attn_layers, dim_in=dim_in, dim_out=dim_out, **wrapper
        )
    return TransformerWrapper(num_tokens=VOCAB, attn_layers=attn_layers, **wrapper)


def _context(root: nn.Module, case: Case, rows: slice | None) -> dict[str, Any]:
    """Context (b, j, d) and context_mask (b, j) of the cross-attending archs, else {}."""
    if case.arch not in ("xtransformer", "cross", "crossattender"):
        return {}
    g = torch.Generator().manual_seed(7 + case.seed)
    mask = torch.ones(case.batch, CTX, dtype=torch.bool)
    mask[0, 3:] = False
    if case.opt("empty_context_row"):
        mask[-1] = False
    if case.arch == "xtransformer":
        src = torch.randint(0, VOCAB, (case.batch, CTX), generator=g)
        context = root.encode(src, mask=mask)
    else:
        dtype = next(root.parameters()).dtype
        context = torch.randn(case.batch, CTX, DIM, generator=g, dtype=torch.float64).to(dtype)
    rows = rows or slice(None)
    return dict(context=context[rows], context_mask=mask[rows])


def jitter(model: nn.Module, seed: int) -> None:
    """Move every parameter off its initial value (0.3 * N(0, 1), seeded)."""
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def build(case: Case, check_refusal: bool = True) -> Subject | None:
    """Float64 eval Subject of ``case``, or None when the library refuses it (checked).

    Parameters are jittered unless the case asks for the library's own initialisation
    (``init="default"``: tiny embeddings, identity talking heads, zero ReZero scalars).
    """
    try:
        root = construct(case)
    except (ValueError, TypeError) as error:
        if check_refusal:
            assert_names_a_flag(error, case)
        return None
    root = root.double().eval()
    if case.opt("init") != "default":
        jitter(root, case.seed)
    return Subject(root, case)


def assert_names_a_flag(error: Exception, case: Case) -> None:
    """A refusal must say which flag(s) of the case it refuses."""
    message = str(error)
    names = flag_keywords(case)
    refusal = f"{type(error).__name__}({message!r})"
    assert any(name in message for name in names), (
        f"refusal {refusal} names none of the case's flags {sorted(names)}"
    )
