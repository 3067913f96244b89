"""ViTransformerWrapper: images as sequences of patches for an Encoder stack.

Paper: An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale
(Dosovitskiy et al., arXiv 2010.11929), section 3.1.

The image is cut into non-overlapping ``p x p`` patches in raster order; each patch is
flattened channel-major, ``(c p1 p2)``, which is the weight layout of a ``Conv2d`` with
kernel = stride = ``p`` (the paper's "hybrid" remark: the patch projection is such a
convolution). A learned class token is prepended (the paper's ``x_class``), learned position
embeddings are added, and the stack's output at the class token, normalised by the stack's
final norm, is the image representation fed to a linear head.

Register tokens (``num_register_tokens``): learned tokens appended after the patches, attended
to like patches but without positions and dropped from the output (Darcet et al., "Vision
Transformers Need Registers", arXiv 2309.16588). ``post_emb_norm``: a LayerNorm after the patch
and position embeddings.

Shape legend: b batch, c channels, x image height, y image width, p1 p2 patch height/width,
gh gw patch grid, n patches (+1 with the class token), r registers, d model dim, k classes.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from x_attn.layers.stack import AttentionLayers
from x_attn.routing import checked_keywords
from x_attn.serialization import records_config
from x_attn.utils import check_positive_int, check_probability


@records_config
class ViTransformerWrapper(nn.Module):
    """Vision Transformer around a bidirectional :class:`AttentionLayers` stack.

    Pooling is the paper's class token (not mean pooling): the sequence is
    ``[cls, patch_1, ..., patch_N]``, so ``return_embeddings=True`` gives ``N + 1`` vectors,
    class token first. The stack's final norm (pre-norm) or last post-norm is the paper's
    ``LN(z_L^0)``; no second norm is added.

    Causal (Decoder) stacks are refused: patches have no left-to-right order, and with the
    class token first a causal mask would let it see only itself, so the head would classify
    from no image content. Cross-attending stacks are refused too, since forward takes no
    context.

    Args:
        image_size: height and width of the (square) input images, in pixels.
        patch_size: side of the square patches; must divide ``image_size``.
        attn_layers: the stack (an Encoder or a non-causal AttentionLayers).
        num_classes: size of the linear classification head; None for no head.
        channels: input channels (3 for RGB).
        dropout: dropout on the pooled representation, before the head.
        emb_dropout: dropout after adding the position embeddings (as in the paper).
        post_emb_norm: LayerNorm (gain, no bias) after the patch + position embeddings.
        num_register_tokens: learned register tokens appended after the patches.
    """

    @checked_keywords
    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        attn_layers: AttentionLayers,
        num_classes: int | None = None,
        channels: int = 3,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        post_emb_norm: bool = False,
        num_register_tokens: int = 0,
    ) -> None:
        super().__init__()
        owner = "ViTransformerWrapper"
        _check_stack(attn_layers)
        for name, value in (
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("channels", channels),
        ):
            check_positive_int(name, value, owner)
        if num_classes is not None:
            check_positive_int("num_classes", num_classes, owner)
        check_probability("dropout", dropout, owner)
        check_probability("emb_dropout", emb_dropout, owner)
        if image_size % patch_size:
            raise ValueError(
                f"{owner}: 'image_size' ({image_size}) must be divisible by 'patch_size' "
                f"({patch_size}); pick a patch size that divides it or resize the images"
            )
        dim = attn_layers.dim
        self.image_size, self.patch_size, self.channels = image_size, patch_size, channels
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_to_embedding = nn.Linear(channels * patch_size**2, dim)
        self.cls_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.pos_embedding = nn.Parameter(torch.randn(self.num_patches + 1, dim) * 0.02)
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.post_emb_norm = nn.LayerNorm(dim, bias=False) if post_emb_norm else None
        if isinstance(num_register_tokens, bool) or not isinstance(num_register_tokens, int):
            raise TypeError(f"{owner}: 'num_register_tokens' must be an int >= 0")
        if num_register_tokens < 0:
            raise ValueError(f"{owner}: 'num_register_tokens' must be >= 0")
        self.register_tokens = None
        if num_register_tokens:
            self.register_tokens = nn.Parameter(torch.randn(num_register_tokens, dim) * 0.02)
        self.attn_layers = attn_layers
        self.dropout = nn.Dropout(dropout)
        self.mlp_head = nn.Linear(dim, num_classes) if num_classes is not None else None

    def patchify(self, img: Tensor) -> Tensor:
        """(b, c, x, y) images -> (b, n, c * p * p) flattened patches, raster order."""
        p = self.patch_size
        return rearrange(img, "b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)", p1=p, p2=p)

    @checked_keywords
    def forward(
        self,
        img: Tensor,
        return_embeddings: bool = False,
        return_logits_and_embeddings: bool = False,
    ):
        """Classify images, or return their token embeddings.

        Args:
            img: (b, channels, image_size, image_size) float images.
            return_embeddings: return every output vector instead of the head's result.
            return_logits_and_embeddings: return both, as a pair.

        Returns:
            (b, num_patches + 1, d) embeddings (class token first, registers dropped) with
            ``return_embeddings``; else (b, num_classes) logits, or the (b, d) pooled
            representation when the model has no head.
        """
        self._check_image(img)
        tokens = self.patch_to_embedding(self.patchify(img))
        cls = repeat(self.cls_token, "d -> b 1 d", b=img.shape[0]).to(tokens.dtype)
        h = torch.cat((cls, tokens), dim=1) + self.pos_embedding.to(tokens.dtype)
        if self.post_emb_norm is not None:
            h = self.post_emb_norm(h)
        h = self.emb_dropout(h)
        n = h.shape[1]
        if self.register_tokens is not None:
            registers = repeat(self.register_tokens, "r d -> b r d", b=img.shape[0])
            h = torch.cat((h, registers.to(h.dtype)), dim=1)
        out = self.attn_layers(h)[:, :n]
        if return_embeddings:
            return out
        pooled = self.dropout(out[:, 0])
        logits = pooled if self.mlp_head is None else self.mlp_head(pooled)
        return (logits, out) if return_logits_and_embeddings else logits

    def _check_image(self, img: Tensor) -> None:
        owner = "ViTransformerWrapper"
        if not isinstance(img, Tensor):
            raise TypeError(f"{owner}: 'img' must be a torch.Tensor, got {type(img).__name__}")
        if not img.is_floating_point():
            raise TypeError(
                f"{owner}: 'img' must be a float tensor, got {img.dtype}; use img.float()"
            )
        expected = (self.channels, self.image_size, self.image_size)
        if img.ndim != 4 or tuple(img.shape[1:]) != expected:
            raise ValueError(
                f"{owner}: 'img' must have shape (batch, {', '.join(map(str, expected))}) "
                f"(channels={self.channels}, image_size={self.image_size}), got "
                f"{tuple(img.shape)}; resize the images or build the wrapper with matching "
                "channels / image_size"
            )


def _check_stack(attn_layers: AttentionLayers) -> None:
    owner = "ViTransformerWrapper"
    if not isinstance(attn_layers, AttentionLayers):
        raise TypeError(
            f"{owner}: 'attn_layers' must be an Encoder, got {type(attn_layers).__name__}"
        )
    if attn_layers.causal:
        raise ValueError(
            f"{owner}: 'attn_layers' is causal ({type(attn_layers).__name__}); image patches "
            "have no left-to-right order and the class token (first) would see only itself. "
            "Use an Encoder"
        )
    if attn_layers.cross_attend:
        raise ValueError(
            f"{owner}: 'attn_layers' cross-attends, but the wrapper passes no context; "
            "use an Encoder without cross_attend"
        )
