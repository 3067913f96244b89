"""The cache protocols and left padding together with the wrapper's input options.

Invariants: a cached run equals the full forward (prepended embeddings given once, per-token
inputs of a whole sequence cut like its tokens), padded generation equals generating each prompt
alone (prepended embeddings included), and left padding named by ``seq_start_pos`` is padding
for pooling too.

Shape legend: b batch, n sequence, p prepended positions, d model dim.
"""

from __future__ import annotations

import pytest
import torch

from x_attn import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper

VOCAB, DIM, N, B = 20, 16, 7, 2


def model(stack=Decoder, layers: dict | None = None, **wrapper) -> TransformerWrapper:
    torch.manual_seed(0)
    net = TransformerWrapper(
        num_tokens=VOCAB,
        max_seq_len=24,
        attn_layers=stack(dim=DIM, depth=2, heads=2, attn_dim_head=8, **(layers or {})),
        **wrapper,
    )
    with torch.no_grad():  # away from the initialisation, so positions and tokens matter
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def tokens(n: int = N, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, n), generator=torch.Generator().manual_seed(seed))


def test_prepended_embeddings_given_once_then_the_cache_holds_them() -> None:
    net = model()
    x, pre = tokens(), torch.randn(B, 3, DIM)
    full = net(x, prepend_embeds=pre, excise_prepend_embeds=True)
    with torch.no_grad():
        first, cache = net(x[:, :4], prepend_embeds=pre, return_cache=True)
        steps = [first[:, -1]]
        for t in range(4, N):  # later steps without prepend_embeds: positions still continue
            logits, cache = net(x[:, t : t + 1], cache=cache, return_cache=True)
            steps.append(logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 3:].detach(), rtol=1e-5, atol=1e-6)


def test_whole_sequence_protocol_cuts_embed_ids_and_sum_embeds() -> None:
    net = model(embed_num_tokens={"segment": 3})
    x, extra = tokens(), torch.randn(B, N, DIM)
    ids = torch.randint(0, 3, (B, N), generator=torch.Generator().manual_seed(2))
    full = net(x, embed_ids={"segment": ids}, sum_embeds=extra)
    with torch.no_grad():
        inputs = dict(embed_ids={"segment": ids[:, :4]}, sum_embeds=extra[:, :4])
        logits, inter = net(x[:, :4], return_intermediates=True, **inputs)
        steps = [logits[:, -1]]
        for t in range(5, N + 1):  # x-transformers style: the whole sequence so far each time
            inputs = dict(embed_ids={"segment": ids[:, :t]}, sum_embeds=extra[:, :t])
            logits, inter = net(x[:, :t], cache=inter, return_intermediates=True, **inputs)
            assert logits.shape[1] == 1  # only the token the cache has not seen ran
            steps.append(logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 3:].detach(), rtol=1e-5, atol=1e-6)


def test_mean_pool_leaves_out_the_left_padding_of_seq_start_pos() -> None:
    net = model(Encoder, average_pool_embed=True)
    x, start = tokens(), torch.tensor([2, 0])
    mask = torch.arange(N) >= start.unsqueeze(-1)
    by_start = net(x, seq_start_pos=start, return_embeddings=True)
    torch.testing.assert_close(by_start, net(x, mask=mask, return_embeddings=True))
    alone = net(x[:1, 2:], return_embeddings=True)  # padding takes no position either
    torch.testing.assert_close(by_start[:1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layers", [{}, {"rotary_pos_emb": True}], ids=["absolute", "rotary"])
@pytest.mark.parametrize("cache_kv", [True, False], ids=["cached", "uncached"])
def test_prompts_of_different_lengths_with_prepend_equal_each_alone(layers, cache_kv) -> None:
    ar = AutoregressiveWrapper(model(layers=layers, num_memory_tokens=2))
    prompts = [torch.tensor([1, 2, 3, 4, 5]), torch.tensor([6, 7])]
    pre = torch.randn(B, 3, DIM, generator=torch.Generator().manual_seed(3))
    batch = ar.generate(prompts, 6, temperature=0.0, prepend_embeds=pre, cache_kv=cache_kv)
    for row, prompt in enumerate(prompts):
        alone = ar.generate(prompt, 6, temperature=0.0, prepend_embeds=pre[row : row + 1])
        assert torch.equal(batch[row], alone)


def test_pos_places_the_tokens_after_prepended_embeddings() -> None:
    net = model()  # learned absolute positions: pos feeds them
    x, pre = tokens(), torch.randn(B, 3, DIM)
    plain = net(x, prepend_embeds=pre)
    torch.testing.assert_close(net(x, prepend_embeds=pre, pos=torch.arange(N)), plain)
    shifted = net(x, prepend_embeds=pre, pos=torch.arange(N) + 2)
    assert (shifted - plain).abs().max() > 1e-3


def test_pos_for_relative_layers_with_unpositioned_lead_tokens_is_refused() -> None:
    net = model(layers={"rotary_pos_emb": True})
    with pytest.raises(ValueError, match="prepend_embeds open the stream at positions"):
        net(tokens(), prepend_embeds=torch.randn(B, 3, DIM), pos=torch.arange(N))
    cls = model(Encoder, layers={"rotary_pos_emb": True}, use_cls_token=True)
    with pytest.raises(ValueError, match="class tokens"):
        cls(tokens(), pos=torch.arange(N))


def test_sinusoidal_positions_need_max_seq_len() -> None:
    from x_attn import ContinuousTransformerWrapper

    with pytest.raises(ValueError, match="max_seq_len=None turns absolute embeddings off"):
        ContinuousTransformerWrapper(
            max_seq_len=None, attn_layers=Decoder(dim=DIM, depth=1), sinusoidal_pos_emb=True
        )
