"""``logits_to_keep``: the head runs on the last k positions only; generation asks for one.

The kept logits must equal the same positions of the full forward (to rounding: one row
through the head may take another matrix-product path than many); generation's
prefill (and uncached decoding) reads only the last position, so it asks for that one.
"""

from __future__ import annotations

import pytest
import torch

from x_attn import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper


def _model(**kwargs) -> TransformerWrapper:
    torch.manual_seed(0)
    layers = Decoder(dim=16, depth=2, heads=2, rotary_pos_emb=True)
    return TransformerWrapper(num_tokens=30, max_seq_len=32, attn_layers=layers, **kwargs).eval()


@pytest.mark.parametrize("k", [1, 3, 9])
def test_kept_logits_equal_the_full_forward(k):
    model = _model()
    x = torch.randint(0, 30, (2, 9))
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    full = model(x, mask=mask)
    kept = model(x, mask=mask, logits_to_keep=k)
    assert kept.shape == (2, k, 30)
    torch.testing.assert_close(kept, full[:, -k:], rtol=1e-6, atol=1e-6)


def test_embeddings_stay_whole_and_cache_continues():
    model = _model()
    x = torch.randint(0, 30, (2, 7))
    logits, emb = model(x, logits_to_keep=2, return_logits_and_embeddings=True)
    assert logits.shape == (2, 2, 30) and emb.shape == (2, 7, 16)
    _, cache = model(x[:, :5], logits_to_keep=1, return_cache=True)
    step, _ = model(x[:, 5:], cache=cache, logits_to_keep=1, return_cache=True)
    torch.testing.assert_close(step, model(x)[:, -1:], rtol=1e-5, atol=1e-5)


def test_generation_prefill_runs_the_head_on_one_position():
    model = _model()
    seen = []
    model.to_logits.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    prompt = torch.randint(0, 30, (2, 6))
    for cache_kv in (True, False):
        seen.clear()
        AutoregressiveWrapper(model).generate(prompt, 4, temperature=0.0, cache_kv=cache_kv)
        assert seen == [1, 1, 1, 1]


def test_generation_tokens_equal_greedy_argmax_of_full_forwards():
    model = _model()
    prompt = torch.randint(0, 30, (1, 5))
    out = AutoregressiveWrapper(model).generate(prompt, 6, temperature=0.0, cache_kv=True)
    seq = prompt
    for _ in range(6):  # independent: full forwards, argmax of the last position
        seq = torch.cat((seq, model(seq)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, seq[:, 5:])


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (1.0, TypeError), (True, TypeError)]
)
def test_bad_values_are_refused_by_name(value, error):
    model = _model()
    with pytest.raises(error, match="logits_to_keep"):
        model(torch.randint(0, 30, (1, 4)), logits_to_keep=value)


def test_pooled_models_refuse_it():
    torch.manual_seed(0)
    model = TransformerWrapper(
        num_tokens=30,
        max_seq_len=16,
        attn_layers=Encoder(dim=16, depth=1, heads=2),
        average_pool_embed=True,
    )
    with pytest.raises(ValueError, match="logits_to_keep.*pools"):
        model(torch.randint(0, 30, (1, 4)), logits_to_keep=1)
