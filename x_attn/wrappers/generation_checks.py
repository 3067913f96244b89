"""Argument checks shared by ``AutoregressiveWrapper.generate`` and ``beam_search``.

:func:`prepare_generation` checks the prompts, ``seq_len``, ``restrict_to_max_seq_len`` and the
model inputs passed through, and that the positions the generation needs fit the model;
:func:`uncacheable_reason` says why a model cannot decode with the KV cache.

Shape legend: b batch, p prompt length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from x_attn.compat import drop_unsupported
from x_attn.utils import check_positive_int
from x_attn.wrappers.decoding import PromptBatch, check_passthrough, prepare_prompts
from x_attn.wrappers.looped import KEYWORDS as LOOP_KEYWORDS
from x_attn.wrappers.stepper import PREPEND_INPUTS

__all__ = ["LOOP_INPUTS", "check_length", "prepare_generation", "uncacheable_reason"]

LOOP_INPUTS = frozenset(LOOP_KEYWORDS) - {"looped_pred_all_logits"}  # a looped net's generate

_RELATIVE_HINT = (
    "; use relative positions (rotary_pos_emb=True, rel_pos_bias=True or alibi_pos_bias=True "
    "on the Decoder) to generate past max_seq_len with a sliding window"
)


def uncacheable_reason(net: nn.Module) -> str | None:
    """The first ``uncacheable_reason`` a submodule of ``net`` declares, or None."""
    if not hasattr(net, "attn_layers"):
        return f"{type(net).__name__} has no attention stack (attn_layers) to cache"
    for module in net.modules():
        reason = getattr(module, "uncacheable_reason", None)
        if isinstance(reason, str):
            return reason
    return None


def prepare_generation(
    wrapper: nn.Module,
    prompts: Any,
    prompt_lens: Any,
    seq_len: Any,
    restrict: bool,
    kwargs: dict,
    own: Callable,
) -> PromptBatch:
    """Checked prompts and model inputs of ``wrapper``'s generate or beam_search (``own``)."""
    owner = f"{type(wrapper).__name__}.{own.__name__}"
    net = wrapper.net
    batch = prepare_prompts(prompts, prompt_lens, wrapper.pad_value, owner)
    if seq_len is None:
        raise TypeError(f"{owner}: missing the number of tokens to generate, 'seq_len'")
    check_positive_int("seq_len", seq_len, owner)
    if not isinstance(restrict, bool):
        raise TypeError(f"{owner}: 'restrict_to_max_seq_len' must be True or False")
    drop_unsupported("AutoregressiveWrapper", "generate", kwargs, set())
    loop = LOOP_INPUTS if getattr(net, "looped", False) else frozenset()
    check_passthrough(kwargs, owner, net, own, PREPEND_INPUTS | loop)
    check_length(net, batch.tokens.shape[1], seq_len, owner)
    prepend = kwargs.get("prepend_embeds")
    if restrict and isinstance(prepend, Tensor) and prepend.ndim == 3:
        lead = prepend.shape[1] + batch.tokens.shape[1] + seq_len - 1
        if lead + getattr(net, "num_memory_tokens", 0) > wrapper._window:
            raise ValueError(
                f"{owner}: prepend_embeds ({prepend.shape[1]}) + prompt + seq_len exceed "
                f"max_seq_len={net.max_seq_len}; past it the window would slide over the "
                "prepended embeddings. Raise max_seq_len or pass "
                "restrict_to_max_seq_len=False"
            )
    return batch


def check_length(net: nn.Module, p: int, seq_len: int, owner: str) -> None:
    """Learned absolute positions cap the positions fed to the model at max_seq_len."""
    if not getattr(net, "has_abs_positions", False):
        return
    limit = net.max_seq_len
    if p > limit:
        raise ValueError(
            f"{owner}: the prompt has {p} tokens but the model takes at most "
            f"max_seq_len={limit} with learned absolute positions{_RELATIVE_HINT}"
        )
    if p + seq_len - 1 > limit:
        raise ValueError(
            f"{owner}: prompt length {p} + seq_len {seq_len} needs {p + seq_len - 1} "
            f"positions, beyond max_seq_len={limit} of the learned absolute positions; "
            f"lower seq_len to at most {limit - p + 1}{_RELATIVE_HINT}"
        )
