"""A registry entry: one flag, a tiny example setting, its paper and the properties the
tests read (written by hand from the papers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FlagCase:
    """One flag: ``layers`` goes to the stack, ``wrapper`` to TransformerWrapper.

    The properties below are written by hand from the papers, not read from the library, so
    that the tests that use them check the library against an independent expectation.
    """

    name: str
    summary: str
    paper: str = ""
    layers: dict[str, Any] = field(default_factory=dict)
    wrapper: dict[str, Any] = field(default_factory=dict)
    causal_ok: bool = True  # meaningful on a Decoder
    needs_scores: bool = False  # its feature needs the raw scores, which fused kernels hide
    kernel: str = "sdpa"  # the kernel a layer with this flag alone runs by default
    probs: str = "softmax"  # "sparse": exact zeros among seen keys; "mixed": rows need not sum to 1
    cacheable: bool = True  # decodes with a KV cache (else generation falls back, with a warning)
    exact: bool = True  # exact attention (an approximation is compared with a tolerance)
    relative: bool = False  # a relative position scheme (absolute positions are switched off)
    stochastic: bool = False  # training mode is random by design (stochastic depth), eval is not
    mems_ok: bool = True  # takes Transformer-XL memories (else max_mem_len is refused)
    extra_keys: int = 0  # keys without position in front of every call's (beyond attn_num_mem_kv)
    any_mask: bool = True  # applies an arbitrary attn_mask (False: only causality and padding)
    encoder_ok: bool = True  # meaningful without a causal mask (else refused on an Encoder)
    row_conv: bool = (
        False  # convolves over neighbouring positions: padding between real ones refused
    )
    # torch.compile(model, fullgraph=True) traces a train step (forward + backward) without a
    # graph break; else compile_reason says what in the mechanism stops the trace
    compiles: bool = True
    compile_reason: str = ""
    # parameters that only the wrapper's own loss trains (the logits do not depend on them)
    loss_only: tuple[str, ...] = ()
