"""TransformerWrapper's output assembly: prepended positions, pooling, embeddings / logits, the
next-embedding head.

A mixin of :class:`x_attn.wrappers.token.TransformerWrapper`: it reads the heads, pooler and
mixture the wrapper builds in ``__init__`` (with :mod:`x_attn.wrappers.token_io`).

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from x_attn.layers.stack import LayerIntermediates
from x_attn.wrappers.token_io import tied_logits


class TokenHead:
    """Output steps of ``TransformerWrapper.forward`` (after the stack runs)."""

    def _head(
        self,
        out: Tensor,
        seq_mask: Tensor | None,
        inter: LayerIntermediates,
        excise: int,
        return_embeddings: bool,
        return_both: bool,
        return_intermediates: bool,
        to_logits_kwargs: dict[str, Any] | None,
        logits_to_keep: int = 0,
    ):
        """Pooling, then embeddings / logits (of the last ``logits_to_keep`` positions when
        > 0) / pooled tokens as asked."""
        if self.attn_pool is not None and (not self.attn_layers.causal or return_intermediates):
            pooled_tokens = self.attn_pool(out, seq_mask)
            inter.attn_pooled_tokens = pooled_tokens
            if not self.attn_layers.causal and not (return_embeddings or return_both):
                return pooled_tokens
        embeddings = self._pool(out, seq_mask)[:, excise:] if excise else self._pool(out, seq_mask)
        if return_embeddings:
            return embeddings
        kept = embeddings[:, -logits_to_keep:] if logits_to_keep else embeddings
        logits = self._logits(kept, to_logits_kwargs)
        return (logits, embeddings) if return_both else logits

    def _assemble(
        self,
        out: Tensor,
        seq_mask: Tensor | None,
        inter: LayerIntermediates,
        tokens: int,
        asked: tuple[bool, bool, bool, bool, bool],
        to_logits_kwargs: dict[str, Any] | None,
        logits_to_keep: int,
    ):
        """The stack's output ``out`` as asked: ``asked`` is (excise_prepend_embeds,
        return_embeddings, return_logits_and_embeddings, return_intermediates,
        return_next_embed_pred); ``tokens``: the token positions that ran."""
        excise, embeddings, both, intermediates, next_embed = asked
        p = out.shape[1] - tokens - self.num_cls_tokens  # prepended positions in the output
        add_emb = next_embed and not (embeddings or both)
        result = self._head(
            out,
            seq_mask,
            inter,
            p if excise else 0,
            embeddings,
            both or add_emb,
            intermediates,
            to_logits_kwargs,
            logits_to_keep,
        )
        if next_embed:
            result = self._with_next_embed(result, inter, embeddings, add_emb)
        return result

    def _logits(self, h: Tensor, to_logits_kwargs: dict[str, Any] | None = None) -> Tensor:
        if self.mixture is not None:
            logits = self.mixture(h, lambda c: self._head_logits(c, to_logits_kwargs))
        else:
            logits = self._head_logits(h, to_logits_kwargs)
        if self.squeeze_out_last_dim and logits.shape[-1] == 1:
            logits = logits.squeeze(-1)
        return logits

    def _head_logits(self, h: Tensor, to_logits_kwargs: dict[str, Any] | None) -> Tensor:
        """The output head (tied, linear or custom) on ``h`` (..., d)."""
        if self.to_logits is None:
            logits = tied_logits(h, self.token_emb, self.tie_embedding_scale)
        elif isinstance(self.to_logits, nn.Linear):
            if to_logits_kwargs:
                raise ValueError(
                    "'to_logits_kwargs' given, but the model uses its built-in linear head; "
                    "build it with to_logits=<your module> to pass extra inputs"
                )
            logits = self.to_logits(h)
        else:
            logits = self.to_logits(h, **(to_logits_kwargs or {}))
        return logits

    def _check_logits_to_keep(self, k: Any) -> None:
        """``logits_to_keep``: an int >= 0 (0: every position), on a per-position output."""
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(
                f"'logits_to_keep' must be an int (the last k positions get logits, 0 = all), "
                f"got {type(k).__name__}"
            )
        if k < 0:
            raise ValueError(f"'logits_to_keep' must be >= 0 (0 = every position), got {k}")
        pooled = self.attn_pool is not None and not self.attn_layers.causal
        if k and (self.pools or pooled):
            raise ValueError(
                "'logits_to_keep' cuts positions, but this model pools its output "
                "(average_pool_embed / use_cls_token / attn_pool) into per-row vectors; drop it"
            )

    def _check_next_embed(self, asked: bool) -> None:
        if asked and self.to_next_embed_pred is None:
            raise ValueError(
                "return_next_embed_pred=True needs the head: build the model with "
                "add_continuous_pred_head=True"
            )
        if asked and (self.pools or (self.attn_pool is not None and not self.attn_layers.causal)):
            raise ValueError(
                "return_next_embed_pred=True predicts per position, but this model pools its "
                "output (average_pool_embed / use_cls_token / attn_pool)"
            )

    def _with_next_embed(
        self, result: Any, inter: LayerIntermediates, embeddings_only: bool, added: bool
    ) -> tuple[Any, tuple[Tensor, Tensor]]:
        """``(result, (pred, inputs))``: the head on the output embeddings and the stack's input
        at the same positions; ``added``: the embeddings were added to ``result`` for this."""
        emb = result if embeddings_only else result[1]
        if added:
            result = result[0]
        if not inter.layer_hiddens:
            raise ValueError("return_next_embed_pred=True: this stack keeps no layer inputs")
        inputs = inter.layer_hiddens[0][:, -emb.shape[1] :]
        return result, (self.to_next_embed_pred(emb), inputs)
