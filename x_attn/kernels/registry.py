"""The attention kernels x_attn can run, each with one signature and declared capabilities.

Every kernel is called as ``run(inputs, hooks, entry) -> (out, maps or None)``:
``inputs`` (:class:`AttnInputs`: q, k, v, the mask description, a bias), ``hooks`` (the
layer's score features bound to this call; a kernel without the ``"scores"`` capability may
ignore them because :func:`x_attn.kernels.select.choose_kernel` never gives it a layer that
has any), ``entry`` (the layer's cache entry, for kernels that keep a state there) ->
``out`` (b, h, i, dv) and the attention maps when the kernel forms them.

Capabilities (what a layer may need, see :class:`Need`):
    "scores"      forms the (b, h, i, j) scores: runs score hooks, returns maps;
    "maps"        returns attention maps for ``return_attn`` (implied by "scores"; a kernel
                  whose weights are not a softmax of scores, e.g. linear attention's implied
                  matrix, declares only this);
    "bias"        adds a float bias to the logits;
    "dense_mask"  applies a dense bool mask, hence every mask rule ("rule:<kind>");
    "rule:<kind>" understands that mask rule without a dense mask (e.g. "rule:window");
    "fast:<kind>" computes the <kind> pattern without forming a dense (i, j) mask: a layer that
                  needs it runs a dense kernel only where no allowed kernel computes the
                  pattern with its other needs (attention maps, the manual path of
                  ``attn_flash=False``, a feature that needs the scores), and ``explain()``
                  says so;
    "cache:<kind>" reads a cache entry whose payload is not keys/values (e.g. "cache:state").

Adding a kernel: one file with the computation, one line in ``KERNELS`` (order = preference).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from x_attn.kernels.block_sparse import block_sparse_attention
from x_attn.kernels.inputs import AttnInputs
from x_attn.kernels.linear import linear_attention, linear_attention_maps
from x_attn.kernels.lsh import lsh_attention, lsh_attention_maps
from x_attn.kernels.manual import AttnMaps, ScoreHooks, manual_attention
from x_attn.kernels.sdpa import sdpa_attention
from x_attn.kernels.window import window_attention

KernelFn = Callable[[AttnInputs, ScoreHooks, object], tuple[Tensor, AttnMaps | None]]

CAPABILITIES = {
    "scores": "the raw attention scores",
    "bias": "an additive logit bias",
    "dense_mask": "a dense attention mask",
    "maps": "attention maps (return_attn)",
    "lsh": "Reformer's hashed buckets",
}


def describe(capability: str) -> str:
    """Words for a capability in error messages and ``explain()``."""
    kind, _, name = capability.partition(":")
    words = {
        "rule": f"the {name} mask",
        "fast": f"the {name} pattern computed without a dense (i, j) mask",
        "cache": f"the {name} cache entry",
    }
    if name and kind in words:
        return words[kind]
    return CAPABILITIES.get(capability, capability)


def dense_fallback(capability: str) -> bool:
    """Needs a dense kernel may drop, saying so (see "fast:<kind>" above)."""
    return capability.startswith("fast:")


@dataclass(frozen=True)
class Need:
    """One requirement of one layer: ``flag`` (named in messages) needs ``capability``."""

    flag: str
    capability: str


@dataclass(frozen=True)
class Kernel:
    """An attention kernel and what it supports.

    Attributes:
        name: reported by ``explain()`` and ``LayerIntermediates.kernels``.
        run: ``(inputs, hooks, entry) -> (out, maps or None)``.
        fused: a fused kernel (what ``attn_flash=True`` requires; ``False`` excludes it).
        supports: capabilities (see the module docstring).
        default_reason: ``explain()`` text when it is chosen with nothing asking for more.
    """

    name: str
    run: KernelFn
    fused: bool
    supports: frozenset[str]
    default_reason: str = ""

    def can(self, capability: str) -> bool:
        if capability in self.supports:
            return True
        if capability == "maps":
            return "scores" in self.supports
        return capability.startswith("rule:") and "dense_mask" in self.supports


def _sdpa(inputs: AttnInputs, hooks: ScoreHooks, entry: object) -> tuple[Tensor, None]:
    return sdpa_attention(inputs), None


def _manual(inputs: AttnInputs, hooks: ScoreHooks, entry: object) -> tuple[Tensor, AttnMaps]:
    return manual_attention(inputs, hooks)


def _window(inputs: AttnInputs, hooks: ScoreHooks, entry: object) -> tuple[Tensor, None]:
    return window_attention(inputs), None


def _block_sparse(inputs: AttnInputs, hooks: ScoreHooks, entry: object) -> tuple[Tensor, None]:
    return block_sparse_attention(inputs), None


def _linear(inputs: AttnInputs, hooks: ScoreHooks, entry: object) -> tuple[Tensor, None]:
    return linear_attention(inputs, entry), None


def _linear_maps(inputs: AttnInputs, hooks: ScoreHooks, entry: object) -> tuple[Tensor, AttnMaps]:
    return linear_attention_maps(inputs, entry)


def _lsh(inputs: AttnInputs, hooks: ScoreHooks, entry: object) -> tuple[Tensor, None]:
    return lsh_attention(inputs), None


def _lsh_maps(inputs: AttnInputs, hooks: ScoreHooks, entry: object) -> tuple[Tensor, AttnMaps]:
    return lsh_attention_maps(inputs)


KERNELS: tuple[Kernel, ...] = (
    Kernel(
        "sdpa",
        _sdpa,
        fused=True,
        supports=frozenset({"bias", "dense_mask"}),
        default_reason="no active feature needs the attention scores",
    ),
    Kernel(
        "window",
        _window,
        fused=True,
        supports=frozenset({"bias", "dense_mask", "fast:window"}),
        default_reason="blockwise sliding window: O(n w) time and memory, SDPA per block",
    ),
    Kernel(
        "manual",
        _manual,
        fused=False,
        supports=frozenset({"scores", "bias", "dense_mask"}),
        default_reason="the reference softmax path",
    ),
    Kernel(
        "linear",
        _linear,
        fused=False,
        supports=frozenset({"cache:state"}),
        default_reason="feature-mapped queries and keys: sums over keys, O(n)",
    ),
    Kernel(
        "linear_maps",
        _linear_maps,
        fused=False,
        supports=frozenset({"cache:state", "maps"}),
        default_reason="linear attention through its implied attention matrix (return_attn)",
    ),
    Kernel(
        "block_sparse",
        _block_sparse,
        fused=False,
        supports=frozenset({"bias", "dense_mask", "fast:block_sparse"}),
        default_reason="block-sparse pattern: only the gathered key blocks, one softmax per row",
    ),
    Kernel(
        "lsh",
        _lsh,
        fused=False,
        supports=frozenset({"lsh", "rule:lsh"}),
        default_reason="Reformer LSH: sorted buckets in chunks, O(n c) per hash round",
    ),
    Kernel(
        "lsh_maps",
        _lsh_maps,
        fused=False,
        supports=frozenset({"lsh", "rule:lsh", "maps"}),
        default_reason="LSH attention with its weights scattered into a dense map (return_attn)",
    ),
)


def kernel_named(name: str) -> Kernel:
    """The registered kernel called ``name``."""
    for kernel in KERNELS:
        if kernel.name == name:
            return kernel
    known = ", ".join(k.name for k in KERNELS)
    raise KeyError(f"no attention kernel named {name!r}; registered: {known}")
