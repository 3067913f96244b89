"""NonAutoregressiveWrapper: masking, MDLM weights, self-conditioning, critic, MaskGIT decoding.

References: closed forms of the MDLM weight for the linear and cosine schedules, the loss
replayed by hand under the same random stream, and invariants of the decoding rounds (how many
positions are masked after each round, fixed tokens stay fixed, no mask token in the output).

Shape legend: b batch, n sequence, v vocabulary.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from x_attn import Encoder, NonAutoregressiveWrapper, TransformerWrapper
from x_attn.wrappers.nonautoregressive_parts import (
    bert_corruption,
    cosine_schedule,
    linear_schedule,
    mdlm_weight,
)

VOCAB, MASK, N = 21, 20, 10


def wrapper(**kwargs) -> NonAutoregressiveWrapper:
    torch.manual_seed(0)
    net = TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=N, attn_layers=Encoder(dim=16, depth=1, heads=2)
    )
    return NonAutoregressiveWrapper(net, mask_id=MASK, **kwargs)


def data(b: int = 4) -> torch.Tensor:
    return torch.randint(0, MASK, (b, N), generator=torch.Generator().manual_seed(1))


def test_mdlm_weight_closed_forms() -> None:
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(mdlm_weight(linear_schedule, t), 1 / (1 - t))
    torch.testing.assert_close(
        mdlm_weight(cosine_schedule, t), math.pi / 2 * torch.tan(math.pi * t / 2)
    )


@pytest.mark.parametrize("weighted", [True, False])
def test_loss_replayed_by_hand(weighted: bool) -> None:
    model = wrapper(
        no_replace_prob=0.0, random_token_prob=0.0, use_simple_mdlm_loss_weight=weighted
    )
    x = data()
    torch.manual_seed(3)
    loss = model(x)
    torch.manual_seed(3)
    t = torch.rand(4)
    count = ((1 - t) * N).clamp(min=1)
    mask = torch.rand(4, N).argsort(-1).argsort(-1) < count[:, None]
    assert mask.sum(-1).tolist() == torch.ceil(count).long().tolist()
    ce = F.cross_entropy(model.net(x.masked_fill(mask, MASK)).transpose(1, 2), x, reduction="none")
    if weighted:
        ce = ce / (1 - t)[:, None]
    torch.testing.assert_close(loss.loss, ce[mask].mean())
    assert loss.generator_loss is loss.loss and loss.critic_loss is None


def test_bert_corruption_keeps_or_randomises_a_fraction_of_the_masked() -> None:
    x, mask = data(64), torch.rand(64, N, generator=torch.Generator().manual_seed(2)) < 0.6
    seen_kept = seen_random = False
    for seed in range(20):
        torch.manual_seed(seed)
        out = bert_corruption(x, mask, MASK, 0.5, 0.0, VOCAB)
        assert torch.equal(out[~mask], x[~mask])
        kept = (out == x) & mask
        assert bool((out[mask & ~kept] == MASK).all())
        expected = torch.ceil(mask.sum(-1) * 0.5)
        assert kept.sum(-1).tolist() in ([0] * 64, expected.long().tolist())  # a coin per batch
        seen_kept |= bool(kept.any())
        torch.manual_seed(seed)
        seen_random |= bool(
            ((bert_corruption(x, mask, MASK, 0.0, 0.5, VOCAB) != MASK) & mask).any()
        )
    assert seen_kept and seen_random


def test_self_conditioning_adds_the_projected_embeddings() -> None:
    model = wrapper(
        self_cond=True,
        self_cond_train_prob=1.0,
        no_replace_prob=0.0,
        random_token_prob=0.0,
        use_simple_mdlm_loss_weight=False,
    )
    x = data()
    torch.manual_seed(5)
    loss = model(x).loss
    torch.manual_seed(5)
    t = torch.rand(4)
    mask = torch.rand(4, N).argsort(-1).argsort(-1) < ((1 - t) * N).clamp(min=1)[:, None]
    inp = x.masked_fill(mask, MASK)
    cond = model.to_self_cond(model.net(inp, return_embeddings=True).detach())
    logits = model.net(inp, sum_embeds=cond)
    torch.testing.assert_close(loss, F.cross_entropy(logits[mask], x[mask]))


def test_critic_learns_which_tokens_differ_from_the_data() -> None:
    model = wrapper(self_token_critic=True)
    x = data()
    logits = torch.randn(4, N, VOCAB)
    mask = torch.zeros(4, N, dtype=torch.bool)
    mask[:, :5] = True
    torch.manual_seed(7)
    loss = model._critic_loss(logits, x, mask, 0.5)
    torch.manual_seed(7)
    u = torch.rand_like(logits)
    sampled = (logits / 0.5 - torch.log(-torch.log(u))).argmax(-1)
    generated = torch.where(mask, sampled, x)
    labels = (generated != x).float()
    assert not bool(labels[:, 5:].any())  # unmasked tokens are the data's
    expected = F.binary_cross_entropy_with_logits(model.token_critic(generated).squeeze(-1), labels)
    torch.testing.assert_close(loss, expected)
    total = model(x)
    torch.testing.assert_close(total.loss, total.generator_loss + total.critic_loss)


@pytest.mark.parametrize("remask", [False, True])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decoding_rounds_follow_the_schedule(schedule: str, remask: bool) -> None:
    model = wrapper(steps=5, schedule=schedule, can_mask_prev_unmasked=remask)
    inputs = []
    model.net.register_forward_pre_hook(lambda m, a: inputs.append(a[0].clone()))
    out = model.generate(3, generator=torch.Generator().manual_seed(0))
    times = torch.linspace(0, 1, 6)[1:]
    counts = [N] + (model.schedule_fn(times) * N).long().tolist()[:-1]
    assert [int((seq == MASK).sum(-1).max()) for seq in inputs] == counts
    assert [int((seq == MASK).sum(-1).min()) for seq in inputs] == counts
    assert not bool((out == MASK).any())
    if not remask:  # a token fixed in one round keeps its value in every later round
        for before, after in zip(inputs[1:], [*inputs[2:], out]):
            fixed = before != MASK
            assert torch.equal(after[fixed], before[fixed])


def test_generate_shapes_and_reproducibility() -> None:
    model = wrapper(steps=3, self_cond=True, self_token_critic=True)
    a = model.generate(2, generator=torch.Generator().manual_seed(1))
    b = model.generate(2, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, N) and torch.equal(a, b)
    assert model.generate().shape == (N,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mask_id": VOCAB}, "'mask_id' must be a token id"),
        ({"mask_id": MASK, "schedule": "square"}, "'schedule' must be"),
        ({"mask_id": MASK, "no_replace_prob": 1.5}, "'no_replace_prob'"),
    ],
)
def test_bad_construction(kwargs, match) -> None:
    net = TransformerWrapper(num_tokens=VOCAB, max_seq_len=N, attn_layers=Encoder(dim=16, depth=1))
    with pytest.raises(ValueError, match=match):
        NonAutoregressiveWrapper(net, **kwargs)


def test_sequences_must_fill_max_seq_len() -> None:
    with pytest.raises(ValueError, match="max_seq_len=10"):
        wrapper()(torch.randint(0, MASK, (2, 7)))
