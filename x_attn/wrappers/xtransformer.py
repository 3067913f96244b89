"""XTransformer: encoder-decoder (sequence to sequence) model from ``enc_*`` / ``dec_*`` flags.

The architecture of Attention Is All You Need (Vaswani et al., arXiv 1706.03762): a
bidirectional encoder over the source, and a causal decoder that cross-attends to the encoder's
output and is trained with next-token cross-entropy.

Every keyword starting with ``enc_`` configures the encoder, every keyword starting with
``dec_`` the decoder; after the prefix comes either a TransformerWrapper argument
(``num_tokens``, ``max_seq_len``, ``emb_dropout``, ``num_memory_tokens``, ...) or any layer
flag (``depth``, ``heads``, ``rotary_pos_emb``, ``attn_dim_head``, ``ff_glu``,
``cross_residual_attn``, ...). ``dim`` is shared.

Shape legend: b batch, i source length, j target length, d model dim.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

from x_attn.layers.stack import Decoder, Encoder
from x_attn.routing import checked_keywords, known_layer_arguments, unknown_argument
from x_attn.serialization import records_config
from x_attn.utils import check_positive_int
from x_attn.wrappers.autoregressive import AutoregressiveWrapper
from x_attn.wrappers.token import TransformerWrapper

OWNER = "XTransformer"
# set by XTransformer itself: the shared width (the encoder's output, which the decoder's
# cross-attention reads), and the roles of the two stacks
FIXED = {
    "dim",
    "causal",
    "cross_attend",
    "only_cross",
    "attn_dim_context",
    "cross_attn_dim_context",
}
# the encoder returns embeddings, so it has no logits head of its own
ENCODER_FIXED = FIXED | {"tie_embedding", "logits_dim"}
REQUIRED = ("num_tokens", "max_seq_len", "depth")


def _wrapper_arguments() -> set[str]:
    params = inspect.signature(TransformerWrapper.__init__).parameters
    return set(params) - {"self", "attn_layers"}


def _known(prefix: str) -> set[str]:
    fixed = ENCODER_FIXED if prefix == "enc_" else FIXED
    names = (_wrapper_arguments() | known_layer_arguments()) - fixed
    return {prefix + name for name in names}


def split_prefixed(kwargs: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Route ``enc_*`` / ``dec_*`` keywords to each side's wrapper and layer arguments.

    Returns:
        ``{"enc_": {"wrapper": {...}, "layers": {...}}, "dec_": {...}}`` without prefixes.

    Raises:
        TypeError: unknown or unprefixed keyword (with a did-you-mean), or a missing
            required one (``enc_num_tokens``, ``enc_max_seq_len``, ``enc_depth``, same for dec).
        ValueError: a keyword XTransformer sets itself (``enc_dim``, ``dec_causal``, ...).
    """
    wrapper_names = _wrapper_arguments()
    out = {p: {"wrapper": {}, "layers": {}} for p in ("enc_", "dec_")}
    for key, value in kwargs.items():
        prefix = key[:4] if key[:4] in out else None
        name = key[4:]
        if prefix is not None and name in (ENCODER_FIXED if prefix == "enc_" else FIXED):
            raise ValueError(
                f"{OWNER}: '{key}' is set by XTransformer itself (dim is shared: pass dim=; "
                "the encoder is bidirectional and returns embeddings, the decoder is causal "
                "and cross-attends); remove it"
            )
        if prefix is None or key not in _known(prefix):
            error = unknown_argument(OWNER, key, _known("enc_") | _known("dec_"))
            hint = "" if prefix else "; per-stack arguments start with enc_ or dec_"
            raise TypeError(f"{error}{hint}")
        out[prefix]["wrapper" if name in wrapper_names else "layers"][name] = value
    for prefix, parts in out.items():
        for name in REQUIRED:
            if name not in parts["wrapper"] and name not in parts["layers"]:
                raise TypeError(f"{OWNER}: missing required argument '{prefix}{name}'")
    return out


@records_config
class XTransformer(nn.Module):
    """Encoder-decoder transformer; ``forward`` returns the decoder's next-token loss.

    Args:
        dim: model dimension of both stacks.
        tie_token_emb: the decoder uses the encoder's token embedding (one Parameter);
            needs ``enc_num_tokens == dec_num_tokens``.
        ignore_index: target id ignored by the loss.
        pad_value: id used to pad generated sequences.
        **kwargs: ``enc_*`` and ``dec_*`` arguments (see the module docstring).

    Attributes:
        encoder: :class:`TransformerWrapper` over an :class:`Encoder`.
        decoder: :class:`AutoregressiveWrapper` around a :class:`TransformerWrapper` over a
            cross-attending :class:`Decoder` (``decoder.net``).
    """

    def __init__(
        self,
        *,
        dim: int,
        tie_token_emb: bool = False,
        ignore_index: int = -100,
        pad_value: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        check_positive_int("dim", dim, OWNER)
        parts = split_prefixed(kwargs)
        enc, dec = parts["enc_"], parts["dec_"]
        if tie_token_emb and enc["wrapper"]["num_tokens"] != dec["wrapper"]["num_tokens"]:
            raise ValueError(
                f"{OWNER}: tie_token_emb=True shares one token embedding, so enc_num_tokens "
                f"({enc['wrapper']['num_tokens']}) must equal dec_num_tokens "
                f"({dec['wrapper']['num_tokens']}); make them equal or set tie_token_emb=False"
            )
        self.encoder = TransformerWrapper(
            **enc["wrapper"], tie_embedding=True, attn_layers=Encoder(dim=dim, **enc["layers"])
        )
        net = TransformerWrapper(
            **dec["wrapper"], attn_layers=Decoder(dim=dim, cross_attend=True, **dec["layers"])
        )
        if tie_token_emb:
            net.token_emb = self.encoder.token_emb
        self.decoder = AutoregressiveWrapper(net, ignore_index=ignore_index, pad_value=pad_value)

    def encode(
        self, src: Tensor, mask: Tensor | None = None, attn_mask: Tensor | None = None
    ) -> Tensor:
        """Encoder output (b, i, d) of source tokens ``src`` (b, i)."""
        return self.encoder(src, mask=mask, attn_mask=attn_mask, return_embeddings=True)

    @checked_keywords
    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
    ) -> Tensor:
        """Next-token cross-entropy of ``tgt`` (b, j) given ``src`` (b, i).

        Args:
            src: (b, i) source token ids.
            tgt: (b, j) target token ids; position t is predicted from positions < t.
            mask: (b, i) source padding mask, True = real token (current spelling).
            attn_mask: attention mask of the encoder's self-attention.
            src_mask: the 2021 spelling of ``mask``; give one of the two.
            tgt_mask: (b, j) target padding mask (keys the decoder may attend to); the loss
                skips targets equal to ``ignore_index``, so pad targets with it.

        Returns:
            Scalar loss.
        """
        src_mask = _source_mask(mask, src_mask)
        context = self.encode(src, mask=src_mask, attn_mask=attn_mask)
        extra = {} if tgt_mask is None else {"mask": tgt_mask}
        return self.decoder(tgt, context=context, context_mask=src_mask, **extra)

    def generate(
        self,
        seq_in: Tensor,
        seq_out_start: Tensor,
        seq_len: int,
        mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        src_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Decode ``seq_len`` tokens after ``seq_out_start`` (b, s), conditioned on ``seq_in``.

        Args:
            seq_in: (b, i) source token ids.
            seq_out_start: (b, s) decoder prompt (for example a start token).
            seq_len: number of tokens to generate.
            mask / src_mask: (b, i) source padding mask (one of the two spellings).
            attn_mask: attention mask of the encoder's self-attention.
            **kwargs: sampling options of :meth:`AutoregressiveWrapper.generate`.

        Returns:
            (b, seq_len) generated token ids.
        """
        src_mask = _source_mask(mask, src_mask)
        context = self.encode(seq_in, mask=src_mask, attn_mask=attn_mask)
        return self.decoder.generate(
            seq_out_start, seq_len, context=context, context_mask=src_mask, **kwargs
        )


def _source_mask(mask: Tensor | None, src_mask: Tensor | None) -> Tensor | None:
    if mask is not None and src_mask is not None:
        raise ValueError(
            f"{OWNER}: 'mask' and 'src_mask' are two spellings of the source padding mask; "
            "pass only one"
        )
    return mask if mask is not None else src_mask
