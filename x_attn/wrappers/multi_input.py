"""MultiInputTransformerWrapper: several token streams in, one logits head per stream out.

Each position carries one token of every named stream (e.g. a note, its pitch and its tone):
the stack's input is the sum of one embedding per stream plus the absolute position, and the
output has one logits head per stream (``{name: (b, n, v_name)}``), or the embeddings with
``return_only_embed``. Positions, memory tokens, Transformer-XL mems, the KV cache and prepended
embeddings are those of :class:`x_attn.wrappers.sequence.SequenceWrapper`.

Shape legend: b batch, n sequence, d model dim, e embedding dim, v vocabulary of a stream.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from x_attn.cache import KVCache
from x_attn.layers.intermediates import keep_hiddens
from x_attn.layers.stack import AttentionLayers
from x_attn.routing import checked_keywords
from x_attn.serialization import records_config
from x_attn.utils import check_positive_int
from x_attn.validation_inputs import check_bool_mask, token_ids
from x_attn.value_checks import require_ids_below
from x_attn.wrappers.sequence import SequenceWrapper

__all__ = ["MultiInputTransformerWrapper"]

_OWNER = "MultiInputTransformerWrapper"


def _check_vocabularies(num_tokens: Any) -> dict[str, int]:
    if not isinstance(num_tokens, dict) or not num_tokens:
        raise TypeError(
            f"{_OWNER}: 'num_tokens' must be a non-empty dict name -> vocabulary size, e.g. "
            "dict(note=128, pitch=32)"
        )
    for name, vocab in num_tokens.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{_OWNER}: 'num_tokens' keys must be names, got {name!r}")
        check_positive_int(f"num_tokens[{name!r}]", vocab, _OWNER)
    return dict(num_tokens)


@records_config
class MultiInputTransformerWrapper(SequenceWrapper):
    """Token model over several parallel token streams (see the module docstring).

    Args:
        num_tokens: ``{name: vocabulary size}``, one per stream.
        max_seq_len: longest sequence absolute positions cover.
        attn_layers: the stack (Encoder / Decoder / AttentionLayers).
        return_only_embed: no logits heads; forward returns the embeddings (b, n, d).
        emb_dim, emb_dropout, post_emb_norm, emb_frac_gradient, use_abs_pos_emb,
            scaled_sinu_pos_emb, num_memory_tokens, max_mem_len: as in TransformerWrapper.
    """

    @checked_keywords
    def __init__(
        self,
        *,
        num_tokens: dict[str, int],
        max_seq_len: int,
        attn_layers: AttentionLayers,
        emb_dim: int | None = None,
        max_mem_len: int = 0,
        emb_dropout: float = 0.0,
        post_emb_norm: bool = False,
        num_memory_tokens: int | None = None,
        return_only_embed: bool = False,
        use_abs_pos_emb: bool = True,
        scaled_sinu_pos_emb: bool = False,
        emb_frac_gradient: float = 1.0,
    ) -> None:
        super().__init__(
            max_seq_len=max_seq_len,
            attn_layers=attn_layers,
            emb_dropout=emb_dropout,
            use_abs_pos_emb=use_abs_pos_emb,
            scaled_sinu_pos_emb=scaled_sinu_pos_emb,
            num_memory_tokens=num_memory_tokens,
            max_mem_len=max_mem_len,
            emb_dim=emb_dim,
            post_emb_norm=post_emb_norm,
            emb_frac_gradient=emb_frac_gradient,
        )
        self.num_tokens = _check_vocabularies(num_tokens)
        emb_dim, dim = emb_dim or attn_layers.dim, attn_layers.dim
        self.embeds = nn.ModuleDict({k: nn.Embedding(v, emb_dim) for k, v in num_tokens.items()})
        for table in self.embeds.values():
            nn.init.normal_(table.weight, std=0.02)
        self.to_logits = None
        if not return_only_embed:
            heads = {k: nn.Linear(dim, v, bias=False) for k, v in num_tokens.items()}
            self.to_logits = nn.ModuleDict(heads)

    def forward(
        self,
        x: dict[str, Tensor],
        return_embeddings: bool = False,
        return_logits_and_embeddings: bool = False,
        return_intermediates: bool = False,
        mask: Tensor | None = None,
        return_mems: bool = False,
        return_attn: bool = False,
        mems: list[Tensor] | None = None,
        cache: KVCache | None = None,
        return_cache: bool = False,
        **kwargs: Any,
    ):
        """``{name: (b, n) ids}`` -> ``{name: (b, n, v_name) logits}``.

        Or the embeddings (b, n, d) (``return_embeddings`` or ``return_only_embed``), or both
        (``return_logits_and_embeddings``). With a :class:`KVCache`, ``x`` holds only the new
        tokens. Extra returns as in TransformerWrapper (mems, attention maps, cache,
        intermediates); other keywords (``prepend_embeds``, ``sum_embeds``, ``context``,
        ``seq_start_pos``, ...) go to the shared core and the stack.
        """
        ids = self._check_inputs(x, mask)
        h = sum(self.embeds[name](ids[name]) for name in self.num_tokens)
        keep_hiddens(kwargs, return_intermediates, return_mems)
        out, inter, _ = self._run_stack(
            h, mask, mems, cache, return_attn, return_intermediates, return_cache=return_cache,
            **kwargs,
        )  # fmt: skip
        if return_embeddings or self.to_logits is None:
            result = out
        else:
            logits = {name: head(out) for name, head in self.to_logits.items()}
            result = (logits, out) if return_logits_and_embeddings else logits
        return self._package(
            result, inter, mems, return_mems, return_attn, return_intermediates, return_cache
        )

    def _check_inputs(self, x: Any, mask: Tensor | None) -> dict[str, Tensor]:
        """Every stream's ids, (b, n) of one shape, in range."""
        if not isinstance(x, dict) or set(x) != set(self.num_tokens):
            given = sorted(x) if isinstance(x, dict) else type(x).__name__
            raise ValueError(
                f"{_OWNER}: 'x' must be a dict with ids for each of {sorted(self.num_tokens)}, "
                f"got {given}"
            )
        ids = {name: token_ids(f"x[{name!r}]", x[name], _OWNER) for name in self.num_tokens}
        shapes = {tuple(t.shape) for t in ids.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(
                f"{_OWNER}: every x[name] must be (batch, seq) of one shape, got {shapes}"
            )
        for name, t in ids.items():
            require_ids_below(f"x[{name!r}]", t, self.num_tokens[name], _OWNER)
        check_bool_mask("mask", mask, next(iter(shapes)), "batch x sequence, True = real token")
        return ids
