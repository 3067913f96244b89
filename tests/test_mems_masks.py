"""Transformer-XL mems carry their padding, and a KV cache consumes mems once.

Invariants (float64, 1e-9):
* segments run one after the other with the mems each returns equal one pass over the whole
  sequence with the same padding mask, at every real position, for rotary, T5, ALiBi and
  learned absolute positions. Absolute positions restart in every segment (as in
  x-transformers), so their one-pass reference is written here by hand: the stack run once on
  token embeddings plus the positions each segment gives its real tokens;
* cached decoding with mems (a prefill that consumes the mems, then single tokens) equals the
  forward over the same segment with the same mems, and, with relative positions, one pass
  over the whole sequence.

Shape legend: b batch, n sequence, s segment length, m memory length, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from flag_models import DIM, build, tokens
from torch import Tensor

from x_attn import Mems
from x_attn.registry import flag_case

ATOL = 1e-9
SCHEMES = {
    "rotary": {"rotary_pos_emb": True},
    "t5": {"rel_pos_bias": True},
    "alibi": {"alibi_pos_bias": True},
    "absolute": {},
}
SIZES = (5, 4, 3)
# row 0: three left pads, a pad inside segment 2; row 1: a pad closing segment 1, two later
MASK = torch.tensor(
    [
        [False, False, False, True, True, True, True, False, True, True, True, True],
        [True, True, True, True, False, True, True, True, True, False, False, True],
    ]
)


def lm(scheme: str, **extra):
    return build(flag_case("default"), max_seq_len=16, max_mem_len=64, **SCHEMES[scheme], **extra)


def segment_starts() -> list[int]:
    starts, at = [], 0
    for size in SIZES:
        starts.append(at)
        at += size
    return starts


def run_segments(net, x: Tensor, mask: Tensor) -> tuple[Tensor, Mems]:
    mems, outs = None, []
    for start, size in zip(segment_starts(), SIZES):
        part = slice(start, start + size)
        out, mems = net(x[:, part], mask=mask[:, part], mems=mems, return_mems=True)
        outs.append(out)
    return torch.cat(outs, dim=1), mems


def one_pass_reference(net, x: Tensor, mask: Tensor, scheme: str) -> Tensor:
    """The whole sequence in one pass; absolute positions as each segment gives them."""
    if scheme != "absolute":
        return net(x, mask=mask)
    pos = torch.cat(
        [mask[:, s : s + n].long().cumsum(-1) - 1 for s, n in zip(segment_starts(), SIZES)], -1
    ).clamp(min=0)  # each segment counts its real tokens from 0; pads take no position
    h = net.token_emb(x) + net.pos_emb(pos.flatten()).unflatten(0, pos.shape)
    return net.to_logits(net.attn_layers(h, mask=mask))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_segments_with_padded_mems_equal_one_pass(scheme: str) -> None:
    net, x = lm(scheme), tokens(2, 12)
    with torch.no_grad():
        segmented, mems = run_segments(net, x, MASK)
        reference = one_pass_reference(net, x, MASK, scheme)
    torch.testing.assert_close(segmented[MASK], reference[MASK], atol=ATOL, rtol=0)
    assert isinstance(mems, list) and len(mems) == 2 and mems[0].shape == (2, 12, DIM)
    assert torch.equal(mems.mask, MASK)


@pytest.mark.parametrize("scheme", ["rotary", "absolute"])
def test_padded_memory_rows_have_no_effect(scheme: str) -> None:
    """Changing what the padded positions of segment 1 hold changes nothing after it."""
    net, x = lm(scheme), tokens(2, 12)
    other = torch.where(MASK, x, (x + 5) % net.num_tokens)
    with torch.no_grad():
        out, _ = run_segments(net, x, MASK)
        out_other, _ = run_segments(net, other, MASK)
    torch.testing.assert_close(out[MASK], out_other[MASK], atol=ATOL, rtol=0)


def test_plain_list_mems_still_work_and_mean_all_real() -> None:
    net, x = lm("rotary"), tokens(2, 9)
    with torch.no_grad():
        _, mems = net(x[:, :5], return_mems=True)
        assert mems.mask is None
        as_list = net(x[:, 5:], mems=[m.clone() for m in mems])
        torch.testing.assert_close(as_list, net(x)[:, 5:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_cached_decode_with_mems_equals_the_full_forward(scheme: str) -> None:
    """mems are the context before the cache's first position, consumed once by the prefill."""
    net, x = lm(scheme), tokens(2, 13)
    first = MASK[:, :6]  # segment 1 left-padded in row 0
    seg = x[:, 6:]
    with torch.no_grad():
        _, mems = net(x[:, :6], mask=first, return_mems=True)
        full = net(seg, mems=mems)
        logits, cache = net(seg[:, :3], mems=mems, return_cache=True)
        steps = [logits]
        for t in range(3, seg.shape[1]):
            logits, cache = net(seg[:, t : t + 1], cache=cache, return_cache=True)
            steps.append(logits)
        one_pass = net(x, mask=torch.cat((first, torch.ones_like(seg, dtype=torch.bool)), 1))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)
    if scheme != "absolute":  # absolute positions restart with every segment
        torch.testing.assert_close(full, one_pass[:, 6:], atol=ATOL, rtol=0)


def test_mems_again_with_a_filled_cache_is_refused() -> None:
    net, x = lm("rotary"), tokens(2, 8)
    with torch.no_grad():
        _, mems = net(x[:, :4], return_mems=True)
        _, cache = net(x[:, 4:6], mems=mems, return_cache=True)
        with pytest.raises(ValueError, match="'mems'.*'cache'"):
            net(x[:, 6:7], mems=mems, cache=cache, return_cache=True)
