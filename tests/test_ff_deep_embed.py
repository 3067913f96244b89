"""ff_deep_embed: each feed-forward run scales its output by a learned vector of the token id.

Checked against the stack run layer by layer with the scaling written out, against
x-transformers on copied weights (skipped without it), for cached decoding == the full forward
(also with memory tokens, whose rows are not scaled), and for its refusals.

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from xt_pairs import xt_pair

from x_attn import Decoder, Encoder, TransformerWrapper

V, D = 12, 16


def model(**wrapper):
    torch.manual_seed(0)
    layers = Decoder(dim=D, depth=2, heads=2, attn_dim_head=8)
    m = TransformerWrapper(num_tokens=V, max_seq_len=16, attn_layers=layers, **wrapper).double()
    with torch.no_grad():
        m.ff_deep_embed.normal_()
    return m.eval()


def by_hand(m, tokens):
    """Embeddings, then the layers one by one; feed-forward run k times table[token, k]."""
    x = m.token_emb(tokens) + m.pos_emb(torch.arange(tokens.shape[1])).to(torch.float64)
    k = 0
    for layer in m.attn_layers.layers:
        out = layer.block(layer.normed(x, None))
        if layer.kind == "f":
            out = out * m.ff_deep_embed[tokens, k]
            k += 1
        x = layer.merge(layer.post_branch(out, None), x, None)
    return m.to_logits(m.attn_layers.final_norm(x))


def test_feed_forward_outputs_are_scaled_by_the_token_vectors():
    m = model(ff_deep_embed=True)
    assert m.ff_deep_embed.shape == (V, 2, D)
    tokens = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(m(tokens), by_hand(m, tokens), rtol=1e-10, atol=1e-10)


def test_starts_as_the_plain_model():
    torch.manual_seed(0)
    deep = TransformerWrapper(
        num_tokens=V, max_seq_len=16, ff_deep_embed=True, attn_layers=Decoder(dim=D, depth=2)
    )
    plain = TransformerWrapper(num_tokens=V, max_seq_len=16, attn_layers=Decoder(dim=D, depth=2))
    plain.load_state_dict({k: v for k, v in deep.state_dict().items() if k != "ff_deep_embed"})
    tokens = torch.randint(0, V, (2, 5))
    torch.testing.assert_close(deep(tokens), plain(tokens), rtol=0, atol=0)


@pytest.mark.parametrize("memory", [0, 2])
def test_cached_decoding_equals_the_full_forward(memory):
    m = model(ff_deep_embed=True, num_memory_tokens=memory or None)
    tokens = torch.randint(0, V, (1, 8), generator=torch.Generator().manual_seed(2))
    full = m(tokens)
    out, cache = m(tokens[:, :3], return_cache=True)
    steps = [out]
    for i in range(3, 8):
        out, cache = m(tokens[:, i : i + 1], cache=cache, return_cache=True)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-10, atol=1e-10)


def test_refusals_name_the_problem():
    enc = Encoder(dim=D, depth=1)
    with pytest.raises(TypeError, match="ff_deep_embed"):
        TransformerWrapper(num_tokens=V, max_seq_len=8, attn_layers=enc, ff_deep_embed=1)
    no_ff = Encoder(dim=D, depth=None, custom_layers=("a",))
    with pytest.raises(ValueError, match="has none"):
        TransformerWrapper(num_tokens=V, max_seq_len=8, attn_layers=no_ff, ff_deep_embed=True)
    rev = Decoder(dim=D, depth=1, reversible=True)
    with pytest.raises(ValueError, match="reversible"):
        TransformerWrapper(num_tokens=V, max_seq_len=8, attn_layers=rev, ff_deep_embed=True)
    x = torch.randn(1, 4, D)
    with pytest.raises(ValueError, match=r"\(vocabulary, 1, 16\)"):
        enc(x, deep_embeds_and_ids=(torch.ones(V, 2, D), torch.zeros(1, 4, dtype=torch.long)))
    with pytest.raises(ValueError, match="5 deep embedding ids"):
        enc(x, deep_embeds_and_ids=(torch.ones(V, 1, D), torch.zeros(1, 5, dtype=torch.long)))


def test_equals_x_transformers():
    def build(lib):
        layers = lib.Decoder(dim=D, depth=2, heads=2, attn_dim_head=8, attn_flash=True)
        return lib.TransformerWrapper(
            num_tokens=V, max_seq_len=16, ff_deep_embed=True, attn_layers=layers
        )

    theirs, ours = xt_pair(build)
    tokens = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), theirs(tokens), atol=1e-9, rtol=0)
