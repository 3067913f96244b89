"""Token wrapper input and output: token embedding, extra embeddings, logits head.

x-transformers options: a custom ``token_emb`` module (called as ``token_emb(x, **kwargs)``),
``embed_num_tokens`` (extra embedding tables, e.g. BERT's segment embeddings, summed with the
tokens), ``l2norm_embed`` on the default embedding, a custom ``to_logits`` module, and
``tie_embedding`` with ``tie_embedding_scale`` (default ``dim ** -0.5``, as in x-transformers 2.31).

Shape legend: b batch, n sequence, e embedding dim, d model dim, v vocabulary.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn

from x_attn.utils import check_positive_int
from x_attn.value_checks import require_ids_below
from x_attn.wrappers.embedding import l2norm

# a bias-free linear map, the x-transformers helper of that name (e.g. for custom heads)
LinearNoBias = functools.partial(nn.Linear, bias=False)


def build_token_embedding(
    num_tokens: int, emb_dim: int, token_emb: nn.Module | None, l2norm_embed: bool, owner: str
) -> nn.Module:
    """The given module, or an (num_tokens, emb_dim) table (std 0.02; 1e-5 under the L2 norm)."""
    if token_emb is not None:
        if not isinstance(token_emb, nn.Module):
            raise TypeError(
                f"{owner}: 'token_emb' must be an nn.Module called as token_emb(x, **kwargs), "
                f"got {type(token_emb).__name__}"
            )
        if l2norm_embed:
            raise ValueError(
                f"{owner}: l2norm_embed normalises the built-in token embedding; with a custom "
                "token_emb, normalise inside that module instead"
            )
        return token_emb
    table = nn.Embedding(num_tokens, emb_dim)
    nn.init.normal_(table.weight, std=1e-5 if l2norm_embed else 0.02)
    return table


def build_extra_embeds(
    embed_num_tokens: dict[str, int] | None, emb_dim: int, owner: str
) -> nn.ModuleDict | None:
    """``{name: vocabulary}`` -> one table per name (``{name}_embed``), or None."""
    if not embed_num_tokens:
        return None
    if not isinstance(embed_num_tokens, dict):
        raise TypeError(f"{owner}: 'embed_num_tokens' must be a dict name -> vocabulary size")
    tables = {}
    for name, vocab in embed_num_tokens.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{owner}: 'embed_num_tokens' keys must be names, got {name!r}")
        check_positive_int(f"embed_num_tokens[{name!r}]", vocab, owner)
        tables[f"{name}_embed"] = nn.Embedding(vocab, emb_dim)
        nn.init.normal_(tables[f"{name}_embed"].weight, std=0.02)
    return nn.ModuleDict(tables)


def add_extra_embeds(
    h: Tensor, embeds: nn.ModuleDict | None, embed_ids: dict[str, Tensor] | None
) -> Tensor:
    """``h`` (b, n, e) plus the embedding of each ``embed_ids[name]`` (b, n)."""
    given = set(embed_ids or {})
    wanted = {key.removesuffix("_embed") for key in embeds} if embeds is not None else set()
    if given != wanted:
        raise ValueError(
            f"'embed_ids' must give ids for exactly the tables of embed_num_tokens "
            f"({sorted(wanted)}), got {sorted(given)}"
        )
    for name, ids in (embed_ids or {}).items():
        table = embeds[f"{name}_embed"]
        if not isinstance(ids, Tensor) or ids.shape != h.shape[:2] or ids.is_floating_point():
            raise ValueError(f"'embed_ids[{name!r}]' must be (batch, seq) integer ids")
        require_ids_below(f"embed_ids[{name!r}]", ids, table.num_embeddings)
        h = h + table(ids.long()).to(h.dtype)
    return h


def embed_tokens(
    token_emb: nn.Module, x: Tensor, l2norm_embed: bool, kwargs: dict[str, Any] | None
) -> Tensor:
    """(b, n) ids -> (b, n, e) through the token embedding (custom modules get ``kwargs``)."""
    if kwargs and isinstance(token_emb, nn.Embedding):
        raise ValueError(
            f"'token_emb_kwargs' {sorted(kwargs)} given, but the model uses its built-in token "
            "embedding; build it with token_emb=<your module> to pass extra inputs"
        )
    h = token_emb(x, **(kwargs or {}))
    return l2norm(h) if l2norm_embed else h


def build_logits_head(
    dim: int,
    num_tokens: int,
    logits_dim: int | None,
    tie_embedding: bool,
    to_logits: nn.Module | None,
    owner: str,
    logits_bias: bool | None = None,
) -> nn.Module | None:
    """The output head: a custom module, a Linear(dim, logits_dim), or None when tied.

    ``logits_bias`` (None or a bool) says whether the built-in Linear has a bias (None: yes).
    """
    if logits_dim is not None:
        check_positive_int("logits_dim", logits_dim, owner)
    if to_logits is not None:
        if not isinstance(to_logits, nn.Module):
            raise TypeError(f"{owner}: 'to_logits' must be an nn.Module")
        if tie_embedding or logits_dim is not None:
            raise ValueError(
                f"{owner}: a custom to_logits module is the output head, so it cannot be "
                "combined with tie_embedding or logits_dim"
            )
        if logits_bias is not None:
            raise ValueError(
                f"{owner}: 'logits_bias' sets the built-in linear head's bias, but a custom "
                "to_logits module is given; give the bias to that module instead"
            )
        return to_logits
    if tie_embedding:
        if logits_dim is not None and logits_dim != num_tokens:
            raise ValueError(f"{owner}: tie_embedding=True needs logits_dim == num_tokens")
        if logits_bias:
            raise ValueError(
                f"{owner}: logits_bias=True, but tie_embedding=True computes the logits with "
                "the token embedding matrix and has no bias; drop one of the two"
            )
        return None
    return nn.Linear(dim, logits_dim or num_tokens, bias=logits_bias is not False)


def tied_logits(h: Tensor, token_emb: nn.Module, scale: float) -> Tensor:
    """Logits through the token embedding matrix, times ``scale``."""
    return (h @ token_emb.weight.t().to(h.dtype)) * scale


def check_tie(token_emb: nn.Module, dim: int, tie_embedding: bool, owner: str) -> None:
    if not tie_embedding:
        return
    weight = getattr(token_emb, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] != dim:
        raise ValueError(
            f"{owner}: tie_embedding=True multiplies by the token embedding matrix, which "
            f"needs an embedding table of width dim={dim} (no custom token_emb, no emb_dim)"
        )
