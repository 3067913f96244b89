"""U-Net long skips (U-ViT, arXiv 2209.12152) against the wiring written out by hand.

The reference runs the stack's own layers one at a time and, at the start of each block of
the second half, replaces the stream x by W [x_k ; x] with x_k the stream at the start of the
mirrored block k; the stack must give the same output (float64).

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import pytest
import torch

from x_attn import Decoder, Encoder


def run_by_hand(stack, x: torch.Tensor, pairs: dict[int, int]) -> torch.Tensor:
    """Blocks of (attention, feed-forward) run in order; ``pairs``: target block -> source."""
    starts = []
    for b in range(len(stack.layers) // 2):
        starts.append(x)
        if b in pairs:
            w = stack.unet.combines[str(2 * b)].weight
            x = torch.cat((starts[pairs[b]], x), dim=-1) @ w.T
        for layer in stack.layers[2 * b : 2 * b + 2]:
            out = layer.block(layer.normed(x, None))
            x = layer.merge(layer.post_branch(out, None), x, None)
    return stack.final_norm(x)


@pytest.mark.parametrize(("depth", "pairs"), [(2, {1: 0}), (4, {3: 0, 2: 1}), (5, {4: 0, 3: 1})])
def test_mirrored_blocks_are_combined_by_a_linear_map_of_both_streams(depth, pairs):
    torch.manual_seed(0)
    stack = Encoder(dim=16, depth=depth, heads=2, attn_dim_head=8, unet_skips=True).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    torch.testing.assert_close(stack(x), run_by_hand(stack, x, pairs), rtol=1e-10, atol=1e-10)
    assert sorted(stack.unet.combines) == sorted(str(2 * t) for t in pairs)


def test_identity_combines_give_the_plain_stack():
    torch.manual_seed(0)
    skips = Encoder(dim=16, depth=4, heads=2, unet_skips=True).double()
    plain = Encoder(dim=16, depth=4, heads=2).double()
    plain.load_state_dict(skips.state_dict(), strict=False)
    with torch.no_grad():
        for combine in skips.unet.combines.values():
            combine.weight.copy_(torch.cat((torch.zeros(16, 16), torch.eye(16)), dim=1))
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(skips(x), plain(x), rtol=1e-12, atol=1e-12)


def test_refusals_name_the_clash():
    with pytest.raises(ValueError, match="depth >= 2"):
        Encoder(dim=16, depth=1, unet_skips=True)
    with pytest.raises(ValueError, match="custom_layers"):
        Encoder(dim=16, depth=None, custom_layers=("a", "f", "a", "f"), unet_skips=True)
    with pytest.raises(ValueError, match="weight_tie_layers"):
        Encoder(dim=16, depth=2, weight_tie_layers=True, unet_skips=True)
    with pytest.raises(ValueError, match="reversible"):
        Decoder(dim=16, depth=2, reversible=True, unet_skips=True)
    with pytest.raises(ValueError, match="unet_skips pairs the blocks"):
        Decoder(dim=16, depth=2, unet_skips=True)(torch.randn(1, 3, 16), repeat_blocks=[(1, 2)])
