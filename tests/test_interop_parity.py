"""Imported Hugging Face models compute what the originals compute (every family).

Reference: the ``transformers`` model itself (an independent implementation), tiny and
randomly initialised (tests/hf_models.py). Checked per family: logits (float32 1e-4, float64
1e-9; Hugging Face's Llama-family rotary tables and RMSNorm run in float32 even in float64,
so those steps are replaced by float64 ones of the same formulas, see tests/hf_models.py),
greedy generation of 20 tokens with the KV cache on both sides, left-padded batches
(logits and generation), and loading from a saved safetensors directory offline.

Shape legend: b batch, n sequence, v vocabulary.
"""

from __future__ import annotations

import pytest
import torch
from hf_models import (
    FAMILIES,
    ROPE,
    VOCAB,
    float64_internals,
    hf_generate,
    left_pad,
    position_ids,
    tiny_hf,
)

from x_attn import AutoregressiveWrapper
from x_attn.interop import from_hf

STEPS = 20


def tokens(b: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_float32(family):
    hf = tiny_hf(family)
    model = from_hf(hf)
    x = tokens(2, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_float64(family):
    hf = tiny_hf(family).double()
    if family != "gpt2":
        float64_internals(hf, ROPE["rope_theta"])
    model = from_hf(hf)
    assert next(model.parameters()).dtype == torch.float64
    x = tokens(2, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-9, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_with_cache(family):
    hf = tiny_hf(family)
    wrapper = AutoregressiveWrapper(from_hf(hf))
    prompt = tokens(1, 5)
    ours = wrapper.generate(prompt, STEPS, temperature=0.0, cache_kv=True)
    theirs = hf_generate(hf, prompt, torch.ones_like(prompt, dtype=torch.bool), STEPS)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_logits(family):
    hf = tiny_hf(family)
    model = from_hf(hf)
    ids, mask = left_pad([tokens(1, n, seed=n)[0] for n in (9, 4, 7)])
    with torch.no_grad():
        ours = model(ids, mask=mask)
        theirs = hf(ids, attention_mask=mask.long(), position_ids=position_ids(mask)).logits
        alone = hf(tokens(1, 4, seed=4)).logits[0]
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours[1, -4:], alone, atol=1e-4, rtol=0)  # padding takes no place


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_generation(family):
    hf = tiny_hf(family)
    wrapper = AutoregressiveWrapper(from_hf(hf))
    prompts = [tokens(1, n, seed=n)[0] for n in (6, 3, 8)]
    ids, mask = left_pad(prompts)
    ours = wrapper.generate(prompts, STEPS, temperature=0.0, cache_kv=True)
    theirs = hf_generate(hf, ids, mask, STEPS)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_directory_loads_offline(family, tmp_path, monkeypatch):
    hf = tiny_hf(family)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    assert list(tmp_path.glob("*.safetensors")), "save_pretrained wrote no safetensors file"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = from_hf(tmp_path)
    x = tokens(1, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=0)
