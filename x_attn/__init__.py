"""x_attn: transformers composed from keyword flags, on fused attention by default."""

__version__ = "0.1.0"

from x_attn.attention.attention import Attention
from x_attn.attention.features.gumbel import log_prob_from_hard_attend
from x_attn.attention.features.rel_proj_bias import RelativeProjPositionalBias
from x_attn.cache import KVCache, KVEntry, Mems
from x_attn.checkpoint import load
from x_attn.layers.feedforward import FeedForward
from x_attn.layers.plan import layer_schedule
from x_attn.layers.stack import AttentionLayers, CrossAttender, Decoder, Encoder
from x_attn.per_layer import per_layer
from x_attn.serialization import from_config, to_config
from x_attn.uptrain import group_kv_heads
from x_attn.wrappers.autoregressive import AutoregressiveWrapper
from x_attn.wrappers.continuous import ContinuousTransformerWrapper
from x_attn.wrappers.continuous_autoencoder import ContinuousTransformerAutoencoder
from x_attn.wrappers.continuous_autoregressive import ContinuousAutoregressiveWrapper
from x_attn.wrappers.multi_input import MultiInputTransformerWrapper
from x_attn.wrappers.nonautoregressive import NonAutoregressiveWrapper
from x_attn.wrappers.pooling import AttentionPool
from x_attn.wrappers.token import TransformerWrapper
from x_attn.wrappers.token_io import LinearNoBias
from x_attn.wrappers.universal_pretrain import UniversalPretrainWrapper
from x_attn.wrappers.vit import ViTransformerWrapper
from x_attn.wrappers.xl import XLAutoregressiveWrapper
from x_attn.wrappers.xtransformer import XTransformer

__all__ = [
    "Attention",
    "AttentionLayers",
    "AttentionPool",
    "AutoregressiveWrapper",
    "ContinuousAutoregressiveWrapper",
    "ContinuousTransformerAutoencoder",
    "ContinuousTransformerWrapper",
    "CrossAttender",
    "Decoder",
    "Encoder",
    "FeedForward",
    "KVCache",
    "KVEntry",
    "LinearNoBias",
    "Mems",
    "MultiInputTransformerWrapper",
    "NonAutoregressiveWrapper",
    "RelativeProjPositionalBias",
    "TransformerWrapper",
    "UniversalPretrainWrapper",
    "ViTransformerWrapper",
    "XLAutoregressiveWrapper",
    "XTransformer",
    "__version__",
    "from_config",
    "group_kv_heads",
    "layer_schedule",
    "load",
    "log_prob_from_hard_attend",
    "per_layer",
    "to_config",
]
