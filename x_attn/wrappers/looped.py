"""Looped language model (Zhu et al., "Scaling Latent Reasoning via Looped Language Models",
arXiv 2510.25741; x-transformers' ``looped``): the whole stack runs T times, each run reading the
previous run's output, with a learned exit gate after every run::

    h_0 = embed(x)        h_t = stack(h_{t-1})        logits_t = head(h_t)        t = 1 .. T
    lam_t = sigmoid(w . h_t)                          (``exit_gate``, one number per token)
    p(exit at t) = lam_t prod_{s<t} (1 - lam_s)       (the last run takes what is left)

The stack must be ``pre_and_post_norm`` (no final norm: the output of a run is the input of the
next). T is ``max_looped_steps`` (train default 4), ``looped_steps=`` fixes it for a call.
With ``looped_inference=True`` (and no fixed count) each token's logits come from the first run
whose cumulative exit probability ``1 - prod_{s<=t}(1 - lam_s)`` reaches
``looped_exit_prob_threshold`` (0.9), else the last; its index is in ``exit_indices``. The rule
is per token, so a batch, a prompt and a decoded token follow the same rule.

KV cache: x_attn keeps one exact cache per run (:class:`LoopedKVCache`), so cached decoding
equals the full forward run by run, whatever the exits; every run still executes when a cache is
kept (the exit chooses the logits, it saves no compute then). x-transformers keeps per-run keys
only for the prompt and lets decoded tokens reuse their exit run's keys (the paper's
memory-saving approximation): decoded logits may differ from its.

Training loss (``AutoregressiveWrapper``, as x-transformers): per-run token losses l_t weighted
by the detached exit distribution (a masked mean over runs and tokens), plus
``looped_exit_loss_weight`` times the binary cross-entropy of the gates' logits of runs 1..T-1
against the detached targets ``sigmoid(k (l_{t+1} - l_t + gamma))`` (k = ``looped_loss_slope``,
gamma = ``looped_loss_threshold_exit``): exit when the next run improves the loss by less than
gamma (the paper's adaptive-exit training).

Shape legend: b batch, n sequence, d model dim, t runs, v vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from x_attn.cache import KVCache
from x_attn.layers.stack import LayerIntermediates

KEYWORDS = (
    "looped_steps",
    "max_looped_steps",
    "looped_pred_all_logits",
    "looped_inference",
    "looped_exit_prob_threshold",
)


@dataclass
class LoopedIntermediates(LayerIntermediates):
    """A looped forward's intermediates: the last run's, plus per-run gates and logits.

    Attributes:
        exit_logits: per run, the exit gate's logits (b, n, 1).
        all_pred_logits: per run, the logits (b, n, v), when asked (training default).
        exit_indices: (b, tokens so far) run index each token's logits came from (0-based),
            across the calls of a cache.
        looped_prompt_kv_cache: the per-run caches (one KVCache per run), or None.
    """

    exit_logits: list[Tensor] = field(default_factory=list)
    all_pred_logits: list[Tensor] = field(default_factory=list)
    exit_indices: Tensor | None = None
    looped_prompt_kv_cache: tuple[KVCache, ...] | None = None


_BASE_FIELDS = tuple(f.name for f in fields(LayerIntermediates))


class LoopedKVCache(KVCache):
    """One :class:`KVCache` per run; it reads as run 0's cache (length, inputs, batch)."""

    def __init__(self, loops: list[KVCache], exit_indices: Tensor | None = None) -> None:
        first = loops[0]
        super().__init__(length=first.length)
        self.entries, self._real = first.entries, first.real
        self.position_values = first.position_values
        self.loops, self.exit_indices = loops, exit_indices

    def _with(self, loops: list[KVCache], exit_indices: Tensor | None) -> LoopedKVCache:
        out = LoopedKVCache(loops, exit_indices)
        out._inputs = self._inputs
        return out

    def fork(self) -> LoopedKVCache:
        return self._with([c.fork() for c in self.loops], self.exit_indices)

    def select(self, index: Tensor) -> LoopedKVCache:
        picked = None if self.exit_indices is None else self.exit_indices[index]
        out = self._with([c.select(index) for c in self.loops], picked)
        out._inputs = self._inputs.select(index)
        return out

    def slide(self, keep: int, layers: Any = None) -> None:
        for cache in self.loops:
            cache.slide(keep, layers)


@dataclass(frozen=True)
class LoopOptions:
    """The loop keywords of one forward."""

    steps: int
    fixed: bool
    pred_all: bool
    inference: bool
    threshold: float
    tokens: int = 0  # the stream's last positions that are tokens (memory tokens lead)

    def refusing(self, **inputs: Any) -> LoopOptions:
        """These options, after refusing the inputs a looped call cannot take."""
        given = [name for name, value in inputs.items() if value is not None]
        if given:
            raise ValueError(
                f"TransformerWrapper: {', '.join(given)} with looped=True: every run would "
                "need its own (not supported); drop them"
            )
        return self


def check_looped(wrapper: nn.Module, looped: Any, max_steps: Any, owner: str) -> None:
    """Construction checks: the flag's type, the run count, a stack made to be looped."""
    if not isinstance(looped, bool):
        raise TypeError(f"{owner}: 'looped' must be True or False, got {looped!r}")
    _check_steps("max_looped_steps", max_steps, owner)
    if not looped:
        return
    if not wrapper.attn_layers.config.pre_and_post_norm:
        raise ValueError(
            f"{owner}: looped=True feeds the stack's output back as its input, which needs "
            "pre_and_post_norm=True on the attention layers (no final norm between runs)"
        )
    if wrapper.max_mem_len:
        raise ValueError(
            f"{owner}: max_mem_len with looped=True: each run would need its own memories "
            "(not supported); drop one"
        )
    if wrapper.pools or getattr(wrapper, "attn_pool", None) is not None:
        raise ValueError(f"{owner}: looped=True predicts per token at every run; drop pooling")


def _check_steps(name: str, value: Any, owner: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: '{name}' must be an int >= 1, got {value!r}")


def loop_options(looped: bool, train_max: int, training: bool, given: dict) -> LoopOptions | None:
    """The options of a call (``given``: the loop keywords as passed), None for a plain model."""
    owner = "TransformerWrapper"
    passed = [k for k, v in given.items() if v is not None and v is not False]
    if not looped:
        if passed:
            raise ValueError(f"{owner}: {', '.join(passed)} need(s) looped=True")
        return None
    fixed = given["looped_steps"] is not None
    most = given["max_looped_steps"]
    steps = given["looped_steps"] if fixed else train_max if most is None else most
    _check_steps("looped_steps" if fixed else "max_looped_steps", steps, owner)
    pred_all = given["looped_pred_all_logits"]
    threshold = given["looped_exit_prob_threshold"]
    threshold = 0.9 if threshold is None else threshold
    if not 0 < threshold <= 1:
        raise ValueError(
            f"{owner}: 'looped_exit_prob_threshold' must be in (0, 1], got {threshold}"
        )
    pred_all = training if pred_all is None else bool(pred_all)
    return LoopOptions(steps, fixed, pred_all, bool(given["looped_inference"]), threshold)


def exit_steps(exit_logits: list[Tensor], opts: LoopOptions) -> Tensor:
    """(b, n) run index whose logits each token returns: the first run whose cumulative exit
    probability reaches the threshold (looped inference without a fixed count), else the last."""
    last = len(exit_logits) - 1
    gates = torch.stack([g.squeeze(-1) for g in exit_logits], dim=-1)  # b n t
    if not opts.inference or opts.fixed:
        return torch.full(gates.shape[:2], last, dtype=torch.long, device=gates.device)
    stay = F.logsigmoid(-gates.double()).cumsum(dim=-1)  # log prod_{s<=t} (1 - lam_s)
    reached = (1 - stay.exp()) >= opts.threshold
    reached[..., last] = True
    return reached.long().argmax(dim=-1)


def start_loops(cache: KVCache | None, layers: nn.Module, steps: int, owner: str) -> list:
    """Per-run caches to continue: a looped cache's runs, fresh ones, or None per run."""
    if cache is None:
        return [None] * steps
    if isinstance(cache, LoopedKVCache):
        if len(cache.loops) != steps:
            raise ValueError(
                f"{owner}: the cache holds {len(cache.loops)} runs of the loop, this call asks "
                f"for {steps}; decode with the run count the cache was started with"
            )
        return list(cache.loops)
    if cache.length:
        raise ValueError(f"{owner}: a looped model continues only a cache a looped call returned")
    return [cache] + [layers.new_cache() for _ in range(steps - 1)]


def run_loops(wrapper: nn.Module, h: Tensor, cache: Any, opts: LoopOptions, kwargs: dict):
    """The stack ``opts.steps`` times on ``h``; returns (output (b, n, d), LoopedIntermediates)."""
    owner = type(wrapper).__name__
    caches = start_loops(cache, wrapper.attn_layers, opts.steps, owner)
    outs, gates, preds, new = [], [], [], []
    for step_cache in caches:
        h, inter = wrapper.attn_layers(h, cache=step_cache, **kwargs)
        outs.append(h)
        gates.append(wrapper.exit_gate(h))
        if opts.pred_all:
            preds.append(wrapper._logits(h))
        new.append(inter.cache)
    chosen = exit_steps(gates, opts)
    stacked = torch.stack(outs, dim=2)  # b n t d
    index = chosen[..., None, None].expand(-1, -1, 1, stacked.shape[-1])
    out = stacked.gather(2, index).squeeze(2)
    keep = opts.tokens or h.shape[1]  # intermediates: the token positions only
    gates, preds = [g[:, -keep:] for g in gates], [p[:, -keep:] for p in preds]
    before = cache.exit_indices if isinstance(cache, LoopedKVCache) else None
    chosen = chosen[:, -keep:]
    indices = chosen if before is None else torch.cat((before, chosen), dim=1)
    looped_cache = None if new[0] is None else LoopedKVCache(new, indices)
    base = {name: getattr(inter, name) for name in _BASE_FIELDS}
    base["cache"] = looped_cache
    result = LoopedIntermediates(
        **base,
        exit_logits=gates,
        all_pred_logits=preds,
        exit_indices=indices,
        looped_prompt_kv_cache=None if looped_cache is None else tuple(new),
    )
    return out, result


def looped_loss(
    pred_logits: list[Tensor],
    exit_logits: list[Tensor],
    target: Tensor,
    ignore_index: int,
    weights: tuple[float, float, float],
) -> Tensor:
    """The looped training loss (module docstring); ``weights``: (slope k, threshold gamma,
    exit loss weight). ``pred_logits`` / ``exit_logits``: per run (b, n, v) / (b, n, 1)."""
    slope, gamma, exit_weight = weights
    logits = torch.stack(pred_logits, dim=1)  # b t n v
    gates = torch.stack(exit_logits, dim=1).squeeze(-1)  # b t n
    steps = logits.shape[1]
    targets = target[:, None].expand(-1, steps, -1)
    losses = F.cross_entropy(
        logits.flatten(0, 2), targets.flatten(), ignore_index=ignore_index, reduction="none"
    ).view_as(targets)
    valid = targets != ignore_index
    with torch.no_grad():
        exit_target = torch.sigmoid(slope * (losses[:, 1:] - losses[:, :-1] + gamma))
        stay = F.logsigmoid(-gates).cumsum(dim=1)
        before = torch.cat((torch.zeros_like(stay[:, :1]), stay[:, :-1]), dim=1)
        exits = torch.cat((F.logsigmoid(gates[:, :-1]), torch.zeros_like(gates[:, :1])), dim=1)
        p_exit = (before + exits).exp()  # b t n, sums to 1 over t
    weighted = (losses * p_exit)[valid].sum() / valid.sum().clamp(min=1)
    if steps == 1:
        return weighted
    bce = F.binary_cross_entropy_with_logits(gates[:, :-1], exit_target, reduction="none")
    exit_loss = bce[valid[:, 1:]].mean()
    return weighted + exit_weight * exit_loss


def generation_intermediates(cache: KVCache) -> LayerIntermediates:
    """What ``generate(return_intermediates=True)`` returns: the decoding's last cache (for a
    looped net, with its exit indices and per-run caches)."""
    if not isinstance(cache, LoopedKVCache):
        return LayerIntermediates(cache=cache)
    loops = tuple(cache.loops)
    return LoopedIntermediates(
        cache=cache, exit_indices=cache.exit_indices, looped_prompt_kv_cache=loops
    )
