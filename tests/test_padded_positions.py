"""Padding takes no position: a left-padded row computes what the row computes alone.

Invariants, for every registered flag (x_attn/registry.py), alone and with memory tokens:
* the logits of a left-padded row's real positions equal those of the row run alone
  (float64, 1e-9), whatever the pad tokens are;
* generating a batch of prompts of different lengths (with the KV cache) gives each prompt
  the tokens it gets when generated alone;
* ``seq_start_pos`` masks the left padding (as in x-transformers): pad token values change
  nothing, and the real positions equal the unpadded row alone.

Shape legend: b batch, n sequence, p prompt length, v vocabulary.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch
from flag_models import VOCAB, build, tokens

from x_attn.registry import FLAGS, FlagCase, flag_case
from x_attn.wrappers.autoregressive import AutoregressiveWrapper

ATOL = 1e-9
NAMES = [case.name for case in FLAGS if case.causal_ok]
# flags anchored at absolute slots: left padding is refused (the error names this)
SLOT_ANCHORED = {"attn_global_tokens": "attn_global_tokens", "attn_sparse_summary": "fixed"}
LENGTHS = (2, 5, 3)


def with_memory(case: FlagCase, memory: int) -> FlagCase:
    return replace(case, wrapper={**case.wrapper, "num_memory_tokens": memory or None})


def left_padded(prompts: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, p) left-padded tokens and their mask (True = real)."""
    width = max(len(p) for p in prompts)
    rows = [torch.cat((p.new_full((width - len(p),), pad), p)) for p in prompts]
    mask = torch.stack([torch.arange(width) >= width - len(p) for p in prompts])
    return torch.stack(rows), mask


def prompts_of(lengths=LENGTHS) -> list[torch.Tensor]:
    return [tokens(1, n, seed=n)[0] for n in lengths]


@pytest.mark.parametrize("memory", [0, 2])
@pytest.mark.parametrize("name", NAMES)
def test_left_padded_rows_equal_each_row_alone(name: str, memory: int) -> None:
    net = build(with_memory(flag_case(name), memory))
    prompts = prompts_of()
    x, mask = left_padded(prompts)
    if memory and flag_case(name).row_conv:  # padding between memory tokens and the row
        with pytest.raises(ValueError, match="mix neighbouring"):
            net(x, mask=mask)
        return
    if name in SLOT_ANCHORED:  # absolute positions would shift in padded rows
        with pytest.raises(ValueError, match=SLOT_ANCHORED[name]):
            net(x, mask=mask)
        return
    other, _ = left_padded(prompts, pad=VOCAB - 1)
    with torch.no_grad():
        out = net(x, mask=mask)
        out_other = net(other, mask=mask)
        for row, p in enumerate(prompts):
            alone = net(p.unsqueeze(0))[0]
            torch.testing.assert_close(out[row][mask[row]], alone, atol=ATOL, rtol=0)
    torch.testing.assert_close(out[mask], out_other[mask], atol=ATOL, rtol=0)


@pytest.mark.parametrize("memory", [0, 2])
@pytest.mark.parametrize("name", NAMES)
def test_padded_batch_generation_equals_one_by_one(name: str, memory: int) -> None:
    ar = AutoregressiveWrapper(build(with_memory(flag_case(name), memory)))
    prompts = prompts_of()
    if memory and flag_case(name).row_conv:
        with pytest.raises(ValueError, match="mix neighbouring"):
            ar.generate(prompts, 6, temperature=0.0)
        return
    if name in SLOT_ANCHORED:
        with pytest.raises(ValueError, match=SLOT_ANCHORED[name]):
            ar.generate(prompts, 6, temperature=0.0)
        return
    with warnings.catch_warnings():  # the uncached forward is covered by the test above
        warnings.simplefilter("ignore", RuntimeWarning)  # uncacheable flags decode uncached
        batch = ar.generate(prompts, 6, temperature=0.0)
        for row, p in enumerate(prompts):
            assert torch.equal(batch[row], ar.generate(p, 6, temperature=0.0)), row


@pytest.mark.parametrize("memory", [0, 2])
@pytest.mark.parametrize("name", ["default", "rotary_pos_emb", "rel_pos_bias", "alibi_pos_bias"])
def test_padded_cached_logits_equal_each_row_alone(name: str, memory: int) -> None:
    """Prefill a left-padded batch, then decode: every step's logits are the row's alone."""
    net = build(with_memory(flag_case(name), memory))
    prompts = prompts_of()
    x, mask = left_padded(prompts)
    cont = tokens(3, 4, seed=9)
    with torch.no_grad():
        logits, cache = net(x, mask=mask, return_cache=True)
        steps = [logits[:, -1:]]
        for t in range(cont.shape[1]):
            logits, cache = net(cont[:, t : t + 1], cache=cache, return_cache=True)
            steps.append(logits)
        steps = torch.cat(steps, dim=1)
        for row, p in enumerate(prompts):
            alone = net(torch.cat((p, cont[row])).unsqueeze(0))[0, len(p) - 1 :]
            torch.testing.assert_close(steps[row], alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "name", ["default", "rotary_pos_emb", "rel_pos_bias", "alibi_pos_bias", "scaled_sinu_pos_emb"]
)
def test_seq_start_pos_masks_the_left_padding(name: str) -> None:
    net, x = build(flag_case(name)), tokens(2, 8)
    start = torch.tensor([3, 0])
    other = x.clone()
    other[0, :3] = (x[0, :3] + 7) % VOCAB
    with torch.no_grad():
        out = net(x, seq_start_pos=start)
        out_other = net(other, seq_start_pos=start)
        alone = net(x[:1, 3:])
        full_row = net(x[1:])
    torch.testing.assert_close(out[0, 3:], out_other[0, 3:], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[0, 3:], alone[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1], full_row[0], atol=ATOL, rtol=0)
