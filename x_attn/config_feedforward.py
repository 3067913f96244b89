"""The typed, frozen options of the position-wise feed-forward block (``ff_*`` flags).

Re-exported by :mod:`x_attn.config`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from torch.nn import Module

from x_attn.utils import check_probability, refuse_several


@dataclass(frozen=True)
class FeedForwardConfig:
    """Options of the position-wise feed-forward block (``ff_*`` flags)."""

    mult: float = 4
    glu: bool = False
    swish: bool = False
    no_bias: bool = False
    dropout: float = 0.0
    relu_squared: bool = False
    solu: bool = False
    # an nn.Module (copied per layer), as in x-transformers; configs compare its repr
    custom_activation: Any = field(default=None, compare=False)
    post_act_ln: bool = False
    softclamp_value: float | None = None
    glu_mult_bias: bool = False
    glu_softclamp: bool = False
    glu_gate_softclamp_value: float = 4.0
    glu_up_softclamp_value: float = 25.0
    zero_init_output: bool = False
    sublayer_dropout: float = 0.0
    activation_repr: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        shown = "" if self.custom_activation is None else repr(self.custom_activation)
        object.__setattr__(self, "activation_repr", shown)

    def validate(self, owner: str, warn: bool = True) -> None:
        """Refuse values that cannot work; ``warn``: say which flags have no effect."""
        if not isinstance(self.mult, (int, float)) or self.mult <= 0:
            raise ValueError(f"{owner}: 'ff_mult' must be a positive number, got {self.mult!r}")
        check_probability("ff_dropout", self.dropout, owner)
        check_probability("ff_sublayer_dropout", self.sublayer_dropout, owner)
        choices = (
            ("ff_custom_activation", self.custom_activation is not None),
            ("ff_relu_squared", self.relu_squared),
            ("ff_solu", self.solu),
            ("ff_swish", self.swish),
        )
        activations = refuse_several(owner, choices, "each choose the feed-forward activation")
        if self.custom_activation is not None and not isinstance(self.custom_activation, Module):
            raise TypeError(
                f"{owner}: 'ff_custom_activation' must be a torch.nn.Module (e.g. nn.Sigmoid()), "
                f"got {type(self.custom_activation).__name__}"
            )
        self._validate_softclamp(owner, activations)
        if warn:
            self._warn_no_effect(owner)

    def _warn_no_effect(self, owner: str) -> None:
        """x-transformers accepts these and ignores them; x_attn says so (a warning, not an
        error, so that x-transformers code still runs)."""
        unused = []
        if self.softclamp_value is not None and self.glu:
            unused.append(("ff_softclamp_value", "clamps the plain (non-GLU) hidden layer"))
        if self.glu_mult_bias and not self.glu:
            unused.append(("ff_glu_mult_bias", "scales the GLU output (ff_glu=True)"))
        for name, value, default in (
            ("ff_glu_gate_softclamp_value", self.glu_gate_softclamp_value, 4.0),
            ("ff_glu_up_softclamp_value", self.glu_up_softclamp_value, 25.0),
        ):
            if value != default and not self.glu_softclamp:
                unused.append((name, "is read only with ff_glu_softclamp=True"))
        for name, why in unused:
            warnings.warn(f"{owner}: {name} has no effect here: it {why}", stacklevel=4)

    def _validate_softclamp(self, owner: str, activations: list[str]) -> None:
        values = [("ff_glu_gate_softclamp_value", self.glu_gate_softclamp_value)]
        values.append(("ff_glu_up_softclamp_value", self.glu_up_softclamp_value))
        if self.softclamp_value is not None:
            values.append(("ff_softclamp_value", self.softclamp_value))
        for name, value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{owner}: '{name}' must be a number > 0, got {value!r}")
        if self.glu_softclamp and not self.glu:
            raise ValueError(f"{owner}: ff_glu_softclamp clamps the GLU gate; set ff_glu=True")
        if self.glu_softclamp and activations and activations != ["ff_swish"]:
            raise ValueError(
                f"{owner}: ff_glu_softclamp has soft-clamped forms of GELU and SiLU only, not "
                f"{activations[0]}; drop one"
            )
