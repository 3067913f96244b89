"""ContinuousAutoregressiveWrapper: next-vector prediction and generation for continuous inputs.

Training regresses each position's output on the next input vector: mean squared error by
default, L1 with ``use_l1_loss``, any ``loss_fn(pred, target)`` returning per-element losses,
and for a ``probabilistic`` net the Gaussian negative log-likelihood of the target under the
predicted mean and variance. With a padding mask the loss averages over the predictions of real
targets (or, with ``equal_loss_weight_batch``, over each row's first, then over rows).

``rollout_steps = k > 1`` trains on the model's own rollouts: each row is cut at a random
context length c in [1, len - k]; the model predicts position c from the context, the
prediction (a sample for a probabilistic net) is appended, and so on for k steps; the loss
compares the k predictions with the true next k vectors. Rows shorter than k + 1 are left
out. (x-transformers 2.31 feeds each prediction back without the context; see
docs/compat.md.)

Generation appends ``seq_len`` predicted vectors (samples ``N(mean, (temperature * std) ** 2)``
for a probabilistic net; the mean at temperature 0), with the KV cache when the net allows it.

Shape legend: b batch, n sequence, d feature dim, c context length, k rollout steps,
t generated vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from x_attn.routing import checked_keywords
from x_attn.serialization import records_config
from x_attn.utils import check_positive_int
from x_attn.validation_inputs import check_float_input
from x_attn.wrappers.continuous import ContinuousTransformerWrapper
from x_attn.wrappers.decoding import check_passthrough, inference
from x_attn.wrappers.training_aids import lens_mask

__all__ = ["ContinuousAutoregressiveWrapper"]


def gaussian_nll(pred: Tensor, target: Tensor) -> Tensor:
    """Per-element Gaussian negative log-likelihood; ``pred`` = stack((mean, variance))."""
    return F.gaussian_nll_loss(pred[0], target, pred[1], reduction="none")


@records_config
class ContinuousAutoregressiveWrapper(nn.Module):
    """Autoregressive training and generation around a :class:`ContinuousTransformerWrapper`.

    Args:
        net: the continuous model (a causal stack).
        loss_fn: ``loss_fn(pred, target)`` -> per-element losses (b, n, d); default MSE, L1
            with ``use_l1_loss``, Gaussian NLL for a probabilistic net.
        use_l1_loss: L1 instead of MSE.
        equal_loss_weight_batch: with a mask, every row weighs the same in the loss.
    """

    @checked_keywords
    def __init__(
        self,
        net: ContinuousTransformerWrapper,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        use_l1_loss: bool = False,
        equal_loss_weight_batch: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if not isinstance(net, ContinuousTransformerWrapper):
            raise TypeError(f"{owner}: 'net' must be a ContinuousTransformerWrapper")
        if not net.attn_layers.causal:
            raise ValueError(f"{owner}: 'net' must have a causal stack (Decoder)")
        if net.pools:
            raise ValueError(f"{owner}: 'net' pools its output; it must predict per position")
        if loss_fn is not None and (use_l1_loss or not callable(loss_fn)):
            raise ValueError(f"{owner}: give a callable loss_fn or use_l1_loss, not both")
        if use_l1_loss and net.probabilistic:
            raise ValueError(f"{owner}: a probabilistic net is trained with the Gaussian NLL")
        self.net, self.probabilistic = net, net.probabilistic
        if loss_fn is None:
            loss_fn = gaussian_nll if net.probabilistic else None
            loss_fn = loss_fn or (nn.L1Loss if use_l1_loss else nn.MSELoss)(reduction="none")
        self.loss_fn, self.equal_loss_weight_batch = loss_fn, equal_loss_weight_batch

    @property
    def max_seq_len(self) -> int:
        return self.net.max_seq_len

    def forward(self, x: Tensor, rollout_steps: int = 1, **kwargs: Any) -> Tensor:
        """Mean loss of predicting each next vector of ``x`` (b, n, d).

        ``mask`` (b, n) or ``lens`` (b,) mark the real positions; other kwargs go to ``net``.
        """
        owner = f"{type(self).__name__}.forward"
        check_float_input("x", x, x.shape[-1] if x.ndim == 3 else -1, owner)
        check_positive_int("rollout_steps", rollout_steps, owner)
        if "prepend_embeds" in kwargs:
            raise ValueError(f"{owner}: prepend_embeds are not predicted; pass them to net")
        mask = _mask(kwargs, x, owner)
        if rollout_steps > 1:
            return self._rollout_loss(x, mask, rollout_steps, kwargs)
        if x.shape[1] < 2:
            raise ValueError(f"{owner}: 'x' needs at least 2 positions, got {x.shape[1]}")
        inp, target = x[:, :-1], x[:, 1:]
        if mask is None:
            return self._reduce(self.loss_fn(self.net(inp, **kwargs), target), None)
        if mask.shape[-1] != x.shape[1]:
            raise ValueError(f"{owner}: 'mask' must cover the n={x.shape[1]} positions of x")
        # attend over the real inputs, score only the predictions of real targets
        loss = self.loss_fn(self.net(inp, mask=mask[:, :-1], **kwargs), target)
        return self._reduce(loss, mask[:, 1:])

    def _reduce(self, loss: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            return loss.mean()
        if loss.ndim < 2:
            raise ValueError("loss_fn must return per-position losses (reduction='none')")
        if not self.equal_loss_weight_batch:
            return loss[mask].mean()
        per_row = loss.flatten(2).mean(-1) if loss.ndim > 2 else loss
        return ((per_row * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()

    def _rollout_loss(self, x: Tensor, mask: Tensor | None, k: int, kwargs: dict) -> Tensor:
        """The model's own k-step rollouts from random context lengths (module docstring)."""
        lens = torch.full((x.shape[0],), x.shape[1], device=x.device)
        if mask is not None:
            lens = mask.sum(-1)
            if not bool((mask == lens_mask(lens, x.shape[1], "rollout")).all()):
                raise ValueError("rollout_steps > 1 needs right-padded rows (mask = a prefix)")
        keep = lens > k
        if not bool(keep.any()):
            raise ValueError(f"rollout_steps={k} needs rows of at least {k + 1} positions")
        x, lens = x[keep], lens[keep]
        context = 1 + (torch.rand(x.shape[0], device=x.device) * (lens - k)).long()
        inp, inp_mask, start = _left_align(x, context)
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(-1)
        targets = x[rows, context.unsqueeze(-1) + torch.arange(k, device=x.device)]
        preds = []
        for _ in range(k):
            out = self.net(inp, mask=inp_mask, seq_start_pos=start, **kwargs)
            last = out[..., -1:, :]
            preds.append(last)
            inp = torch.cat((inp, self._next_input(last, 1.0, None)), dim=1)
            inp_mask = torch.cat((inp_mask, inp_mask.new_ones(inp.shape[0], 1)), dim=1)
        return self.loss_fn(torch.cat(preds, dim=-2), targets).mean()

    def _next_input(self, last: Tensor, temperature: float, generator) -> Tensor:
        """The prediction (b, 1, d) fed back: itself, or a sample of a probabilistic net."""
        if not self.probabilistic:
            return last
        mean, variance = last[0], last[1]
        if temperature == 0:
            return mean
        std = variance.clamp(min=1e-5).sqrt() * temperature
        return torch.normal(mean, std, generator=generator)

    def generate(
        self,
        start_tokens: Tensor,
        seq_len: int,
        temperature: float = 1.0,
        cache_kv: bool = True,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Append ``seq_len`` predicted vectors to ``start_tokens`` (b, n, d) or (n, d).

        Returns the new vectors (b, t, d), or (t, d) for an unbatched start.
        """
        owner = f"{type(self).__name__}.generate"
        squeeze = isinstance(start_tokens, Tensor) and start_tokens.ndim == 2
        x = start_tokens.unsqueeze(0) if squeeze else start_tokens
        check_float_input("start_tokens", x, x.shape[-1] if x.ndim == 3 else -1, owner)
        check_positive_int("seq_len", seq_len, owner)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(f"{owner}: 'temperature' must be a float, got {temperature!r}")
        if temperature < 0:
            raise ValueError(f"{owner}: 'temperature' must be >= 0, got {temperature}")
        check_passthrough(kwargs, owner, self.net, self.generate)
        self._check_length(x.shape[1] + seq_len - 1, owner)
        cached = cache_kv and self.net.attn_layers.uncacheable_reason is None
        with inference(self.net):
            out = self._decode(x, seq_len, float(temperature), cached, generator, kwargs)
        return out[0] if squeeze else out

    def _decode(self, x, seq_len, temperature, cached, generator, kwargs) -> Tensor:
        if cached:
            out, cache = self.net(x, return_cache=True, **kwargs)
        else:
            out = self.net(x, **kwargs)
        generated = []
        for step in range(seq_len):
            generated.append(self._next_input(out[..., -1:, :], temperature, generator))
            if step == seq_len - 1:
                break
            if cached:
                out, cache = self.net(generated[-1], cache=cache, return_cache=True, **kwargs)
            else:
                out = self.net(torch.cat((x, *generated), dim=1), **kwargs)
        return torch.cat(generated, dim=1)

    def _check_length(self, positions: int, owner: str) -> None:
        if self.net.has_abs_positions and positions > self.max_seq_len:
            raise ValueError(
                f"{owner}: start + seq_len need {positions} positions, beyond max_seq_len="
                f"{self.max_seq_len} of the learned absolute positions; use relative positions "
                "(e.g. rotary_pos_emb=True) or lower seq_len"
            )


def _mask(kwargs: dict, x: Tensor, owner: str) -> Tensor | None:
    """Pop ``mask`` / ``lens`` from kwargs as one (b, n) mask."""
    mask, lens = kwargs.pop("mask", None), kwargs.pop("lens", None)
    if lens is not None:
        if mask is not None:
            raise ValueError(f"{owner}: give 'mask' or 'lens', not both")
        mask = lens_mask(lens, x.shape[1], owner)
    return mask


def _left_align(x: Tensor, lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rows' first ``lens`` vectors, right-aligned: (b, c, d), mask (b, c), start (b,)."""
    c = int(lens.max())
    start = c - lens
    index = (torch.arange(c, device=x.device) - start.unsqueeze(-1)).clamp(min=0)
    mask = torch.arange(c, device=x.device) >= start.unsqueeze(-1)
    aligned = x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return aligned.masked_fill(~mask.unsqueeze(-1), 0.0), mask, start
