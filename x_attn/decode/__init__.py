"""Static decoding: preallocated key/value buffers and a step that compiles once.

Use it through ``AutoregressiveWrapper.generate(..., static_cache=True, compile=True)``;
:mod:`x_attn.decode.support` lists the models it serves.
"""

from x_attn.decode.generate import StaticStepper, release_static_decoders, static_stepper
from x_attn.decode.static import StaticDecoder
from x_attn.decode.support import check_wrapper

__all__ = [
    "StaticDecoder",
    "StaticStepper",
    "check_wrapper",
    "release_static_decoders",
    "static_stepper",
]
