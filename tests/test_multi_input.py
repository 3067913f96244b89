"""MultiInputTransformerWrapper: summed embeddings of parallel token streams, a head per stream.

References: the stack called on the hand-built sum of embedding-table rows and positions, a
one-stream model against TransformerWrapper with the same weights, x-transformers 2.31 on
copied weights (skipped when it is not installed); invariants: cached decoding equals the full
forward, padding has no effect.

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import pytest
import torch

from x_attn import Decoder, MultiInputTransformerWrapper, TransformerWrapper

VOCABS = dict(note=11, pitch=5, tone=3)
LAYERS = dict(dim=16, depth=2, heads=2, attn_dim_head=8)


def model(vocabs=VOCABS, **kw) -> MultiInputTransformerWrapper:
    torch.manual_seed(0)
    layers = {**LAYERS, **kw.pop("layers", {})}
    net = MultiInputTransformerWrapper(
        num_tokens=vocabs, max_seq_len=32, attn_layers=Decoder(**layers), **kw
    )
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.double().eval()


def streams(b: int = 2, n: int = 7, vocabs=VOCABS) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {k: torch.randint(0, v, (b, n), generator=gen) for k, v in vocabs.items()}


def test_stack_input_is_the_sum_of_the_embeddings():
    net = model()
    x = streams()
    h = sum(net.embeds[k].weight[x[k]] for k in VOCABS)
    h = h + net.pos_emb(torch.arange(7))
    torch.testing.assert_close(net(x, return_embeddings=True), net.attn_layers(h))


def test_one_head_per_stream():
    net = model()
    x = streams()
    logits, emb = net(x, return_logits_and_embeddings=True)
    assert set(logits) == set(VOCABS)
    for k, v in VOCABS.items():
        assert logits[k].shape == (2, 7, v)
        torch.testing.assert_close(logits[k], emb @ net.to_logits[k].weight.T)
    only = model(return_only_embed=True)
    assert only.to_logits is None
    only.load_state_dict({k: v for k, v in net.state_dict().items() if "to_logits" not in k})
    torch.testing.assert_close(only(x), emb)


def test_one_stream_is_a_transformer_wrapper():
    net = model(dict(tok=13))
    ref = TransformerWrapper(num_tokens=13, max_seq_len=32, attn_layers=Decoder(**LAYERS))
    state = {
        k.replace("embeds.tok", "token_emb").replace("to_logits.tok", "to_logits"): v
        for k, v in net.state_dict().items()
    }
    state["to_logits.bias"] = torch.zeros(13, dtype=torch.float64)
    ref.double().load_state_dict(state)
    x = streams(vocabs=dict(tok=13))
    torch.testing.assert_close(net(x)["tok"], ref.eval()(x["tok"]))


def test_cached_decoding_equals_the_full_forward():
    net = model(layers={"rotary_pos_emb": True})
    x = streams(n=6)
    full = net(x)
    out, cache = net({k: v[:, :3] for k, v in x.items()}, return_cache=True)
    steps = [out]
    for i in range(3, 6):
        out, cache = net({k: v[:, i : i + 1] for k, v in x.items()}, cache=cache, return_cache=True)
        steps.append(out)
    for k in VOCABS:
        torch.testing.assert_close(torch.cat([s[k] for s in steps], dim=1), full[k])


def test_padding_has_no_effect():
    net = model()
    x = streams()
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    out = net(x, mask=mask)
    short = net({k: v[1:, :4] for k, v in x.items()})
    for k in VOCABS:
        torch.testing.assert_close(out[k][1, :4], short[k][0])


def test_equals_x_transformers_on_identical_weights():
    xt = pytest.importorskip("x_transformers")
    from x_transformers.multi_input import MultiInputTransformerWrapper as Theirs

    from x_attn.interop import from_x_transformers

    layers = {**LAYERS, "rotary_pos_emb": True, "rotary_emb_dim": 4}
    torch.manual_seed(0)
    theirs = Theirs(num_tokens=VOCABS, max_seq_len=32, attn_layers=xt.Decoder(**layers))
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = MultiInputTransformerWrapper(
        num_tokens=VOCABS, max_seq_len=32, attn_layers=Decoder(**layers)
    )
    from_x_transformers(theirs.attn_layers, ours.attn_layers)
    with torch.no_grad():
        for k in VOCABS:
            ours.embeds[k].weight.copy_(theirs.embeds[f"{k}_embed"].weight)
            ours.to_logits[k].weight.copy_(theirs.to_logits[k].weight)
    ours, theirs = ours.double().eval(), theirs.double().eval()
    x = streams()
    mine, ref = ours(x), theirs(x)
    for k in VOCABS:  # x-transformers' stack keeps float32 steps in a float64 model
        torch.testing.assert_close(mine[k], ref[k], rtol=1e-6, atol=1e-6)


def test_bad_input():
    net = model()
    x = streams()
    with pytest.raises(ValueError, match="'note', 'pitch', 'tone'"):
        net({"note": x["note"]})
    with pytest.raises(ValueError, match=r"x\['pitch'\].*outside \[0, 5\)"):
        net({**x, "pitch": x["note"].clamp(min=5)})
    with pytest.raises(ValueError, match="one shape"):
        net({**x, "tone": x["tone"][:, :3]})
    with pytest.raises(TypeError, match="num_tokens"):
        MultiInputTransformerWrapper(num_tokens=11, max_seq_len=8, attn_layers=Decoder(**LAYERS))
    with pytest.raises(ValueError, match="num_tokens\\['a'\\]"):
        MultiInputTransformerWrapper(
            num_tokens=dict(a=0), max_seq_len=8, attn_layers=Decoder(**LAYERS)
        )
