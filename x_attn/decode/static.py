"""Static decoding: preallocated key/value buffers, positions carried as tensors.

One :class:`StaticDecoder` holds, per self-attention layer, key and value buffers
(b, hk, L, dh) for ``L`` slots. A call writes the new rows in place at the slots
``pos + arange(n)`` (``index_copy_`` with a tensor index) and attends over the whole buffer
with a mask computed from tensors: key slot <= query slot, key slot >= the row's first real
slot (left padding; a padded query sees itself only, so its row stays finite), and, with a
sliding window, query slot - key slot < window. Rotary cos/sin tables and the learned position
table are looked up by the position tensor. No Python value changes from token to token, so
``torch.compile(fullgraph=True, dynamic=False)`` traces :meth:`StaticDecoder.prefill` once per
prompt shape and :meth:`StaticDecoder.step` once, and reuses them for every token.

It re-runs the modules of the model it wraps (norms, projections, feed-forwards, output
head: the same parameters, no copies); which models it serves is decided by
:mod:`x_attn.decode.support`. Input checks (token range) happen before, once per generate call.

Shape legend: b batch, n new tokens (the prompt length p at prefill, 1 per step), L buffer
slots, d model dim, h query heads, hk key/value heads, dh head dim, f rotary frequencies, v
vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from x_attn.attention.projections.multihead import merge_heads
from x_attn.positional.context import RowPositions
from x_attn.positional.rotary import RotaryTable
from x_attn.wrappers.token_io import tied_logits


class StaticDecoder(nn.Module):
    """Decodes ``net`` (a supported TransformerWrapper) with buffers of ``length`` slots.

    Args:
        net: the token model; its modules are used as they are (not copied).
        batch: rows b.
        length: slots L (every position a generation feeds the model).
        window: with a sliding window, the slots a query may see (None: all earlier ones).
        dtype, device: of the buffers (the model's).
    """

    def __init__(
        self,
        net: nn.Module,
        batch: int,
        length: int,
        window: int | None,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "net", net)  # not a submodule: no second copy in state_dict
        stack = net.attn_layers
        self.window = window if window is not None and window < length else None
        attn = [layer.block for layer in stack.layers if layer.kind == "a"]
        shape = [(batch, a.proj.k_heads, length, a.proj.qk_dim) for a in attn]
        self.keys = [torch.zeros(s, dtype=dtype, device=device) for s in shape]
        self.values = [torch.zeros(s, dtype=dtype, device=device) for s in shape]
        self.slots = torch.arange(length, device=device)
        self.rotary = None
        if stack.positions.rotary is not None:
            table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
            self.rotary = stack.positions.rotary.table(self.slots, dtype=table_dtype)
        self.bias = stack.positions.rel_pos  # T5 / ALiBi module, or None

    def prefill(self, tokens: Tensor, start: Tensor) -> Tensor:
        """Prompts (b, p), first real slot per row (b,) -> (b, v) logits of the last slot."""
        return self._forward(tokens, torch.zeros((), dtype=torch.long, device=tokens.device), start)

    def step(self, token: Tensor, pos: Tensor, start: Tensor) -> Tensor:
        """Tokens (b, 1) at slot ``pos`` (0-d tensor) -> (b, v) logits of that slot."""
        return self._forward(token, pos, start)

    def _forward(self, tokens: Tensor, pos: Tensor, start: Tensor) -> Tensor:
        net, n = self.net, tokens.shape[1]
        q_slots = pos + self.slots[:n]  # (n,)
        values = (q_slots - start.unsqueeze(-1)).clamp(min=0)  # (b, n) each row's positions
        h = net.token_emb(tokens)
        if net.pos_emb is not None:
            h = h + net.pos_emb.emb(values).to(h.dtype)
        mask = self._mask(q_slots, start, h.dtype)
        q_rows, k_rows = self._rows(values)
        x, i = h, 0
        for layer in net.attn_layers.layers:
            branch = layer.normed(x)
            if layer.kind == "a":
                branch = self._attend(layer.block, branch, i, q_slots, q_rows, k_rows, mask)
                i += 1
            else:
                branch = layer.run_block(branch)
            x = layer.merge(layer.post_branch(branch), x)
        x = net.attn_layers.final_norm(x[:, -1])
        if net.to_logits is None:
            return tied_logits(x, net.token_emb, net.tie_embedding_scale)
        return net.to_logits(x)

    def _mask(self, q_slots: Tensor, start: Tensor, dtype: torch.dtype) -> Tensor:
        """(b, 1, n, L) bool mask (True = may attend), or the float bias with -inf where not."""
        k, q = self.slots, q_slots.unsqueeze(-1)  # (L,), (n, 1)
        seen = (k <= q) & ((k >= start.view(-1, 1, 1)) | (k == q))  # (b, n, L)
        if self.window is not None:
            seen = seen & (q - k < self.window)
        seen = seen.unsqueeze(1)
        if self.bias is None:
            return seen
        bias = self.bias(q_slots, self.slots).to(dtype)  # (h, n, L)
        return torch.where(seen, bias, float("-inf"))  # (b, h, n, L)

    def _rows(self, values: Tensor) -> tuple[RowPositions, RowPositions]:
        """Rotary rows of the new tokens (b, n, f), as queries and as keys."""
        table = self.rotary
        if table is None:
            return RowPositions(), RowPositions(key=True)
        rows = RotaryTable(table.cos[values], table.sin[values], interleaved=table.interleaved)
        return RowPositions(rows), RowPositions(rows, key=True)

    def _attend(
        self,
        block: nn.Module,
        x: Tensor,
        i: int,
        q_slots: Tensor,
        q_rows: RowPositions,
        k_rows: RowPositions,
        mask: Tensor,
    ) -> Tensor:
        """Self-attention of layer ``i``: write the new key/value rows, attend over all slots."""
        proj = block.proj
        q = proj.queries(x, q_rows)  # (b, h, n, dh)
        k, v = proj.keys(x, k_rows)  # (b, hk, n, dh)
        keys, values = self.keys[i], self.values[i]
        keys.index_copy_(2, q_slots, k)
        values.index_copy_(2, q_slots, v)
        out = F.scaled_dot_product_attention(
            q,
            keys,
            values,
            attn_mask=mask,
            scale=block.scale,
            enable_gqa=proj.k_heads != proj.heads,
        )
        return block.to_out(merge_heads(out))
