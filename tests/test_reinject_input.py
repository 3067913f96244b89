"""reinject_input: every block reads the stream plus a (gated) projection of the stack input.

Checked against the stack run layer by layer with the injection written out, against
x-transformers on copied weights (skipped without it), and for its refusals. The registry entry
runs it through the invariants (causality, padding, cache == full forward).

Shape legend: b batch, n sequence, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from xt_pairs import xt_pair

from x_attn import Decoder, TransformerWrapper

D = 16


def by_hand(stack, x0):
    inj = stack.reinject_input_proj(x0)
    if stack.learned_reinject_input_gate is not None:
        inj = torch.sigmoid(x0 @ stack.learned_reinject_input_gate.weight.T) * inj
    x = x0
    for layer in stack.layers:
        out = layer.block(layer.normed(x + inj, None))
        x = layer.merge(layer.post_branch(out, None), x, None)  # the residual skips inj
    return stack.final_norm(x)


@pytest.mark.parametrize("gated", [False, True])
def test_blocks_read_the_injected_input(gated):
    torch.manual_seed(0)
    flags = dict(reinject_input=True, learned_reinject_input_gate=gated)
    stack = Decoder(dim=D, depth=2, heads=2, attn_dim_head=8, **flags).double()
    x = torch.randn(2, 6, D).double()
    torch.testing.assert_close(stack(x), by_hand(stack, x), rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        stack.reinject_input_proj.weight.zero_()  # no injection: the plain stack
    plain = Decoder(dim=D, depth=2, heads=2, attn_dim_head=8).double()
    plain.load_state_dict(stack.state_dict(), strict=False)
    torch.testing.assert_close(stack(x), plain(x), rtol=0, atol=0)


def test_refusals_name_the_clash():
    with pytest.raises(ValueError, match="learned_reinject_input_gate.*reinject_input=True"):
        Decoder(dim=D, depth=1, learned_reinject_input_gate=True)
    Decoder(dim=D, depth=1, learned_reinject_input_gate=False)  # the off value is accepted
    with pytest.raises(ValueError, match="reversible"):
        Decoder(dim=D, depth=1, reversible=True, reinject_input=True)
    with pytest.raises(ValueError, match="reinject_input"):
        TransformerWrapper(
            num_tokens=10,
            max_seq_len=8,
            max_mem_len=4,
            attn_layers=Decoder(dim=D, depth=1, reinject_input=True),
        )


@pytest.mark.parametrize("gated", [False, True])
def test_equals_x_transformers(gated):
    flags = dict(dim=D, depth=2, heads=2, attn_dim_head=8, attn_flash=True)
    flags.update(reinject_input=True, learned_reinject_input_gate=gated)
    theirs, ours = xt_pair(
        lambda lib: lib.TransformerWrapper(
            num_tokens=20, max_seq_len=16, attn_layers=lib.Decoder(**flags)
        )
    )
    tokens = torch.randint(0, 20, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), theirs(tokens), atol=1e-9, rtol=0)
