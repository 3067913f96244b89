"""Continuous next-embedding prediction (``add_continuous_pred_head``), an auxiliary loss.

Besides the logits, a small head (linear, SiLU, linear; no biases, as in x-transformers 2.31)
maps the output h_i at position i to a prediction of the *input embedding* e_{i+1} the stack
receives at the next position (token embedding + absolute position, projected to the model
dim). :class:`x_attn.wrappers.autoregressive.AutoregressiveWrapper` adds
``next_embed_loss_weight * mean |head(h_i) - sg(e_{i+1})|`` (L1, target detached) to the
cross-entropy, over the positions whose next input is a real token. The input embedding of the
last input is not computed by the loss's forward pass, so the last position has no such target
(x-transformers also predicts it).

``TransformerWrapper.forward(return_next_embed_pred=True)`` returns ``(output, (pred, inputs))``:
``pred`` (b, n, d) the head's predictions and ``inputs`` (b, n, d) the stack's input at the same
positions (so ``pred[:, i]`` is compared with ``inputs[:, i + 1]``).

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["build_next_embed_head", "next_embed_loss"]


def build_next_embed_head(dim: int) -> nn.Sequential:
    """(..., d) -> (..., d): Linear, SiLU, Linear, without biases."""
    return nn.Sequential(
        nn.Linear(dim, dim, bias=False), nn.SiLU(), nn.Linear(dim, dim, bias=False)
    )


def next_embed_loss(pred: Tensor, inputs: Tensor, valid: Tensor | None) -> Tensor:
    """Mean L1 between ``pred[:, i]`` and the detached ``inputs[:, i + 1]``.

    Args:
        pred: (b, n, d) predictions.
        inputs: (b, n, d) stack inputs at the same positions.
        valid: (b, n - 1) bool, True where position i + 1 holds a real token; None: all.

    Returns:
        A scalar; 0 when no position has a target.
    """
    error = (pred[:, :-1] - inputs[:, 1:].detach()).abs().mean(dim=-1)  # (b, n - 1)
    if valid is None:
        return error.mean() if error.numel() else error.sum()
    count = valid.sum()
    return error.masked_fill(~valid, 0.0).sum() / count.clamp(min=1)
