"""AutoregressiveWrapper: the 2021 generate signature, return_prime, restrict_to_max_seq_len,
prepended embeddings through generate, and the training options (mask_prob, lens,
prepend_embeds, return_outputs).

References: the current spelling of the same sampling options under the same random
generator, x-transformers 2.31 on identical weights (greedy decoding and the loss, skipped when
it is not installed), the uncached path, and losses computed by hand.

Shape legend: b batch, n sequence, p prompt / prepended length, t generated tokens, v vocabulary.
"""

from __future__ import annotations

import entmax
import pytest
import torch
import torch.nn.functional as F

from x_attn import AutoregressiveWrapper, Decoder, TransformerWrapper
from x_attn.wrappers.training_aids import forgetful_key_mask

VOCAB = 24
LAYERS = dict(dim=16, depth=2, heads=2, attn_dim_head=8)


def wrapper(max_seq_len: int = 32, **layers) -> AutoregressiveWrapper:
    torch.manual_seed(0)
    net = TransformerWrapper(
        num_tokens=VOCAB,
        max_seq_len=max_seq_len,
        attn_layers=Decoder(**LAYERS, **layers),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return AutoregressiveWrapper(net).eval()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


PROMPTS = torch.tensor([[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(
    ("legacy", "current"),
    [
        ({"filter_thres": 0.9}, {"filter_kwargs": {"frac_num_tokens": 0.1}}),
        ({"filter_thres": 0.5}, {"filter_kwargs": {"frac_num_tokens": 0.5}}),
        (
            {"filter_logits_fn": "top_p", "filter_thres": 0.8},
            {"filter_logits_fn": "top_p", "filter_kwargs": {"thres": 0.8}},
        ),
        (
            {"filter_logits_fn": "top_a", "min_p_ratio": 0.1, "min_p_pow": 1.5},
            {"filter_logits_fn": "top_a", "filter_kwargs": {"min_p_ratio": 0.1, "min_p_pow": 1.5}},
        ),
        ({"filter_logits_fn": entmax.entmax15}, {"filter_logits_fn": None, "entmax_alpha": 1.5}),
    ],
    ids=["top_k", "top_k_half", "top_p", "top_a", "entmax15"],
)
def test_2021_keywords_sample_what_the_current_ones_do(legacy, current) -> None:
    model = wrapper()
    old = model.generate(start_tokens=PROMPTS, seq_len=10, generator=gen(), **legacy)
    new = model.generate(PROMPTS, 10, generator=gen(), **current)
    assert torch.equal(old, new)
    other = model.generate(PROMPTS, 10, generator=gen(1), **current)
    assert not torch.equal(new, other)  # the generator does drive the draw


def test_2021_prompt_mask_is_a_list_of_prompts() -> None:
    model = wrapper()
    tokens = torch.tensor([[0, 0, 7, 8], [9, 10, 11, 0]])
    mask = torch.tensor([[False, False, True, True], [True, True, True, False]])
    old = model.generate(tokens, 6, temperature=0.0, mask=mask)
    new = model.generate([torch.tensor([7, 8]), torch.tensor([9, 10, 11])], 6, temperature=0.0)
    assert torch.equal(old, new)
    with pytest.raises(ValueError, match="one contiguous"):
        model.generate(tokens, 6, mask=torch.tensor([[True, False, True, True]] * 2))


def test_both_spellings_are_refused() -> None:
    model = wrapper()
    with pytest.raises(TypeError, match="as 'prompts' or as 'start_tokens'"):
        model.generate(PROMPTS, 4, start_tokens=PROMPTS)
    with pytest.raises(ValueError, match="give the filter's options once"):
        model.generate(PROMPTS, 4, filter_thres=0.9, filter_kwargs={"k": 2})
    with pytest.raises(ValueError, match="top_a only"):
        model.generate(PROMPTS, 4, min_p_ratio=0.1)


def test_return_prime_keeps_the_prompt_in_front() -> None:
    model = wrapper()
    new = model.generate(PROMPTS, 5, temperature=0.0)
    both = model.generate(PROMPTS, 5, temperature=0.0, return_prime=True)
    assert torch.equal(both, torch.cat((PROMPTS, new), dim=1))


@pytest.mark.parametrize("restrict", [True, False])
def test_window_option_cached_equals_uncached(restrict: bool) -> None:
    model = wrapper(max_seq_len=6, rotary_pos_emb=True)
    a = model.generate(PROMPTS, 10, temperature=0.0, restrict_to_max_seq_len=restrict)
    b = model.generate(
        PROMPTS, 10, temperature=0.0, restrict_to_max_seq_len=restrict, cache_kv=False
    )
    assert torch.equal(a, b)


def test_unrestricted_generation_attends_to_the_whole_sequence() -> None:
    model = wrapper(max_seq_len=6, rotary_pos_emb=True)
    out = model.generate(PROMPTS, 10, temperature=0.0, restrict_to_max_seq_len=False)
    full = torch.cat((PROMPTS, out), dim=1)
    with torch.no_grad():
        logits = model.net(full[:, :-1])  # one pass, no window: every token sees all before it
    assert torch.equal(logits[:, PROMPTS.shape[1] - 1 :].argmax(-1), out)
    windowed = model.generate(PROMPTS, 10, temperature=0.0)
    assert not torch.equal(out, windowed)  # the window does change the result here


@pytest.mark.parametrize("cache_kv", [True, False])
def test_generate_with_prepended_embeddings_is_greedy_on_the_full_stream(cache_kv: bool) -> None:
    model = wrapper()
    pre = torch.randn(2, 3, 16, generator=gen(2))
    pre_mask = torch.tensor([[True, False, True], [True, True, True]])
    out = model.generate(
        PROMPTS[:, :1],
        8,
        temperature=0.0,
        prepend_embeds=pre,
        prepend_mask=pre_mask,
        cache_kv=cache_kv,
    )
    seq = torch.cat((PROMPTS[:, :1], out), dim=1)
    with torch.no_grad():
        logits = model.net(
            seq[:, :-1], prepend_embeds=pre, prepend_mask=pre_mask, excise_prepend_embeds=True
        )
    assert torch.equal(logits.argmax(-1), out)


def test_prepend_past_the_window_is_refused() -> None:
    model = wrapper(max_seq_len=6, rotary_pos_emb=True)
    with pytest.raises(ValueError, match="window would slide over the prepended"):
        model.generate(PROMPTS, 8, prepend_embeds=torch.randn(2, 2, 16))


def test_greedy_generation_equals_x_transformers() -> None:
    xt = pytest.importorskip("x_transformers")
    from xt_pairs import token_pair

    mine, theirs = token_pair("Decoder", 0.3, num_tokens=VOCAB, max_seq_len=32, layers=LAYERS)
    pre = torch.randn(2, 3, 16, generator=gen(2))
    for extra in ({}, {"prepend_embeds": pre}):
        a = AutoregressiveWrapper(mine).generate(PROMPTS, 8, temperature=0.0, **extra)
        b = xt.AutoregressiveWrapper(theirs).generate(PROMPTS, 8, temperature=0.0, **extra)
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# training


def test_forgetful_mask_hides_the_asked_fraction_never_the_first() -> None:
    torch.manual_seed(0)
    keep = forgetful_key_mask(64, 10, 0.35, torch.device("cpu"))
    assert bool(keep[:, 0].all())
    assert bool(((~keep).sum(-1) == 3).all())
    assert bool((forgetful_key_mask(4, 3, 0.99, torch.device("cpu")).sum(-1) == 1).all())


def test_mask_prob_hides_keys_while_training_only() -> None:
    model = wrapper()
    masked = AutoregressiveWrapper(model.net, mask_prob=0.4)
    x = torch.randint(0, VOCAB, (3, 12), generator=gen(3))
    inp, target = x[:, :-1], x[:, 1:]
    masked.train()
    torch.manual_seed(5)
    loss = masked(x)
    torch.manual_seed(5)
    keep = forgetful_key_mask(3, 11, 0.4, x.device)
    expected = F.cross_entropy(masked.net(inp, mask=keep).transpose(1, 2), target)
    torch.testing.assert_close(loss, expected)
    assert (loss - model.train()(x)).abs() > 1e-6  # the hidden keys do matter
    masked.eval()
    torch.testing.assert_close(masked(x), model.eval()(x), rtol=0, atol=0)


def test_lens_exclude_padding_from_the_loss() -> None:
    model = wrapper()
    x = torch.randint(0, VOCAB, (2, 9), generator=gen(4))
    lens = torch.tensor([9, 5])
    loss = model(x, lens=lens)
    logits = model.net(x[:, :-1])
    terms = [
        F.cross_entropy(logits[i, : int(n) - 1], x[i, 1 : int(n)], reduction="sum")
        for i, n in enumerate(lens)
    ]
    torch.testing.assert_close(loss, sum(terms) / (lens - 1).sum())
    y = x.clone()
    y[1, 5:] = (y[1, 5:] + 1) % VOCAB  # the padding itself does not matter
    torch.testing.assert_close(model(y, lens=lens), loss)


def test_prepend_embeds_in_the_loss_and_return_outputs() -> None:
    model = wrapper()
    x = torch.randint(0, VOCAB, (2, 8), generator=gen(6))
    pre = torch.randn(2, 3, 16, generator=gen(7))
    loss, (logits, inter) = model(x, prepend_embeds=pre, return_outputs=True)
    full = model.net(x[:, :-1], prepend_embeds=pre)[:, 3:]
    torch.testing.assert_close(logits, full)
    torch.testing.assert_close(loss, F.cross_entropy(full.transpose(1, 2), x[:, 1:]))
    assert inter.cache is not None or inter.hiddens


def test_loss_with_prepend_equals_x_transformers() -> None:
    xt = pytest.importorskip("x_transformers")
    from xt_pairs import token_pair

    mine, theirs = token_pair("Decoder", num_tokens=VOCAB, max_seq_len=32, layers=LAYERS)
    x = torch.randint(0, VOCAB, (2, 8), generator=gen(6))
    pre = torch.randn(2, 3, 16, generator=gen(7))
    pre_mask = torch.tensor([[True, False, True], [True, True, True]])
    a = AutoregressiveWrapper(mine)(x, prepend_embeds=pre, prepend_mask=pre_mask)
    b = xt.AutoregressiveWrapper(theirs)(x, prepend_embeds=pre, prepend_mask=pre_mask)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
