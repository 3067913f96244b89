"""Mask descriptions over absolute positions (x_attn.masks) against masks written by hand.

Shape legend: b batch, h heads, i queries, j keys.
"""

from __future__ import annotations

import torch

from x_attn.masks import CAUSAL, AttnMask, MaskRule, Span


class _Window(MaskRule):
    """A rule defined outside the package: a causal query sees itself and w - 1 keys before."""

    kind = "window"

    def __init__(self, w: int) -> None:
        self.w = w

    def allows(self, q_pos, k_pos):
        return (q_pos - k_pos) < self.w


def test_causal_is_bottom_right_over_absolute_positions() -> None:
    mask = AttnMask(Span(7, 10), Span(2, 10), (CAUSAL,)).dense()
    expected = torch.ones(3, 8, dtype=torch.bool).tril(8 - 3)  # key s <= query t + (j - i)
    assert torch.equal(mask, expected)


def test_a_single_newest_query_builds_no_mask() -> None:
    assert AttnMask(Span(9, 10), Span(0, 10), (CAUSAL,)).dense() is None
    assert AttnMask(Span(8, 9), Span(0, 10), (CAUSAL,)).dense() is not None  # a future key


def test_rules_padding_user_mask_and_free_keys_merge_in_one_place() -> None:
    q, k = Span(5, 8), Span(3, 8)  # 3 queries, 5 positional keys, 2 free keys in front
    padding = torch.tensor([[True, False, True, True, True], [True] * 5])
    user = torch.rand(3, 7, generator=torch.Generator().manual_seed(0)) > 0.3  # 7 >= 5 columns
    spec = AttnMask(q, k, (CAUSAL, _Window(2)), padding, user, free=2)
    q_pos, k_pos = torch.arange(5, 8)[:, None], torch.arange(3, 8)[None, :]
    positional = (k_pos <= q_pos) & (q_pos - k_pos < 2) & padding[:, None, None, :] & user[:, 2:]
    expected = torch.cat((torch.ones(2, 1, 3, 2, dtype=torch.bool), positional), dim=-1)
    assert torch.equal(spec.dense(), expected)
    assert [rule.kind for rule in spec.active_rules()] == ["causal", "window"]


def test_square_causal_only_when_nothing_else_constrains() -> None:
    assert AttnMask(Span(0, 4), Span(0, 4), (CAUSAL,)).square_causal()
    assert not AttnMask(Span(1, 4), Span(0, 4), (CAUSAL,)).square_causal()  # i != j
    assert not AttnMask(Span(0, 4), Span(0, 4), (CAUSAL,), free=1).square_causal()
    padded = AttnMask(Span(0, 4), Span(0, 4), (CAUSAL,), torch.ones(1, 4, dtype=torch.bool))
    assert not padded.square_causal()
    assert not AttnMask(Span(0, 1), Span(0, 1), (CAUSAL,)).square_causal()  # hides nothing
