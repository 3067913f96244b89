"""Custom positions in forward (``pos=``, ``context_pos=``), as in x-transformers.

Invariants: ``pos = arange`` equals the default; a shifted ``pos`` leaves relative schemes
unchanged (and changes absolute ones); permuting tokens and their positions together permutes
an encoder's output (every scheme then sees the same (token, position) pairs); per-sample
positions equal each row run alone; a cached decode with custom positions equals the full
forward; per-head positions that agree across heads equal per-sample ones. A one-layer ALiBi
reference with the bias written from the formula checks the values themselves.

Shape legend: b batch, h heads, n sequence, j context length, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from flag_models import VOCAB, build, tokens
from reference import reference_attention
from torch import Tensor

from x_attn import Decoder, Encoder, TransformerWrapper
from x_attn.positional import alibi_slopes
from x_attn.registry import FLAGS

SCHEMES = {
    "rotary": dict(rotary_pos_emb=True),
    "rotary_xpos": dict(rotary_xpos=True, rotary_xpos_scale_base=64),
    "alibi": dict(alibi_pos_bias=True),
    "t5": dict(rel_pos_bias=True),
    "dynamic": dict(dynamic_pos_bias=True, dynamic_pos_bias_log_distance=True),
    "shaw": dict(shaw_rel_pos=True, shaw_max_distance=3),
    "infused": dict(position_infused_attn=True),
}
RELATIVE = [name for name in SCHEMES if name != "infused"]
ENCODER_OK = [name for name in SCHEMES if name != "rotary_xpos"]
ATOL = 1e-10


def decoder(name: str, **extra) -> TransformerWrapper:
    from x_attn.registry import FlagCase

    return build(FlagCase(name, ""), **{**SCHEMES[name], **extra})


def encoder(name: str, **extra) -> Encoder:
    torch.manual_seed(0)
    layers = Encoder(dim=16, depth=2, heads=2, attn_dim_head=8, **{**SCHEMES[name], **extra})
    layers = layers.double().eval()
    with torch.no_grad():
        for p in layers.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layers


def hidden(b: int, n: int, seed: int = 0) -> Tensor:
    return torch.randn(b, n, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(SCHEMES))
def test_pos_arange_equals_default(name: str) -> None:
    net, x = decoder(name), tokens(2, 9)
    with torch.no_grad():
        default = net(x)
        torch.testing.assert_close(net(x, pos=torch.arange(9)), default, atol=ATOL, rtol=0)
        per_sample = torch.arange(9).expand(2, 9)
        torch.testing.assert_close(net(x, pos=per_sample), default, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_shifted_positions_change_only_absolute_schemes(name: str) -> None:
    net, x = decoder(name), tokens(2, 9)
    with torch.no_grad():
        default, shifted = net(x), net(x, pos=torch.arange(9) + 37)
    if name in RELATIVE:
        torch.testing.assert_close(shifted, default, atol=1e-9, rtol=0)
    else:
        assert (shifted - default).abs().max() > 1e-6


@pytest.mark.parametrize("name", ENCODER_OK)
def test_permuting_tokens_with_their_positions_permutes_the_output(name: str) -> None:
    layers, h = encoder(name), hidden(2, 8)
    perm = torch.tensor([3, 0, 7, 1, 5, 2, 6, 4])
    with torch.no_grad():
        plain = layers(h)
        permuted = layers(h[:, perm], pos=perm)
        torch.testing.assert_close(permuted, plain[:, perm], atol=ATOL, rtol=0)
        assert (layers(h[:, perm]) - plain[:, perm]).abs().max() > 1e-6  # positions matter


@pytest.mark.parametrize("name", list(SCHEMES))
def test_per_sample_positions_equal_each_row_alone(name: str) -> None:
    net, x = decoder(name), tokens(2, 7)
    pos = torch.stack(
        (torch.arange(7) * 2 + 1, torch.arange(7) + torch.tensor([0, 0, 0, 4, 4, 4, 9]))
    )
    with torch.no_grad():
        both = net(x, pos=pos)
        for row in range(2):
            alone = net(x[row : row + 1], pos=pos[row])
            torch.testing.assert_close(both[row : row + 1], alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_cached_decode_with_custom_positions_equals_full_forward(name: str) -> None:
    net, x = decoder(name), tokens(2, 9)
    pos = torch.tensor([[0, 2, 3, 7, 8, 9, 13, 14, 20], [5, 6, 7, 8, 9, 10, 11, 12, 13]])
    with torch.no_grad():
        full = net(x, pos=pos)
        logits, cache = net(x[:, :4], pos=pos[:, :4], return_cache=True)
        steps = [logits]
        for t in range(4, 9):
            logits, cache = net(
                x[:, t : t + 1], pos=pos[:, t : t + 1], cache=cache, return_cache=True
            )
            steps.append(logits)
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-9, rtol=0)
        assert (full - net(x)).abs().max() > 1e-6
        # keeping one row of the cache keeps that row's positions
        one = cache.select(torch.tensor([1]))
        nxt = tokens(1, 1, seed=5)
        step, _ = net(nxt, pos=torch.tensor([[14]]), cache=one, return_cache=True)
        whole = net(
            torch.cat((x[1:], nxt), dim=1), pos=torch.cat((pos[1:], torch.tensor([[14]])), 1)
        )
        torch.testing.assert_close(step[:, -1], whole[:, -1], atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", ["alibi", "t5", "dynamic"])
def test_per_head_positions_that_agree_equal_per_sample_positions(name: str) -> None:
    layers, h = encoder(name), hidden(2, 6)
    pos = torch.tensor([[0, 1, 2, 4, 6, 9], [3, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        per_sample = layers(h, pos=pos)
        per_head = layers(h, pos=pos.unsqueeze(1).expand(2, 2, 6))
        torch.testing.assert_close(per_head, per_sample, atol=ATOL, rtol=0)
        differ = pos.unsqueeze(1).repeat(1, 2, 1)
        differ[:, 1] = differ[:, 1] * 3
        assert (layers(h, pos=differ) - per_sample).abs().max() > 1e-6


def test_custom_alibi_positions_and_slopes_match_the_formula() -> None:
    """One ALiBi layer with per-head positions against the reference with -m_h |p_i - p_j|."""
    torch.manual_seed(0)
    slopes = [0.5, 0.125]
    layers = Decoder(
        dim=16,
        depth=1,
        heads=2,
        attn_dim_head=8,
        alibi_pos_bias=True,
        rel_pos_kwargs=dict(slopes=slopes),
        custom_layers=("a",),
    ).double()
    h = hidden(1, 5)
    pos = torch.tensor([[[0, 1, 2, 4, 7], [0, 3, 6, 9, 12]]])
    with torch.no_grad():
        got = layers(h, pos=pos)
        attn = layers.layers[0]["block"]
        x = layers.layers[0]["norm"](h)
        q, (k, v) = attn.proj.queries(x, _none()), attn.proj.keys(x, _none())
        dist = (pos.unsqueeze(-1) - pos.unsqueeze(-2)).abs().double()  # (b, h, i, j)
        bias = -torch.tensor(slopes, dtype=torch.float64).view(1, 2, 1, 1) * dist
        out = reference_attention(q, k, v, bias=bias, causal=True)
        out = attn.to_out(out.transpose(1, 2).reshape(1, 5, 16), x)
        expected = layers.final_norm(h + out)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def _none():
    from x_attn.positional.context import NO_POSITIONS

    return NO_POSITIONS


def test_default_alibi_slopes_reach_the_model() -> None:
    layers = Decoder(dim=16, depth=1, heads=4, alibi_pos_bias=True)
    assert torch.equal(layers.positions.rel_pos.slopes().float(), alibi_slopes(4).float())


# ----------------------------------------------------------------------------------------------
# cross-attention: context_pos


def cross_encoder(**extra) -> Encoder:
    torch.manual_seed(0)
    layers = Encoder(
        dim=16, depth=1, heads=2, attn_dim_head=8, cross_attend=True, rotary_pos_emb=True, **extra
    )
    return layers.double().eval()


def test_context_pos_rotates_the_context_relative_to_the_queries() -> None:
    layers, h, ctx = cross_encoder(), hidden(2, 5), hidden(2, 7, seed=1)
    with torch.no_grad():
        plain = layers(h, context=ctx)
        placed = layers(h, context=ctx, context_pos=torch.arange(7))
        assert (placed - plain).abs().max() > 1e-6  # cross-attention now sees positions
        both_shifted = layers(
            h, context=ctx, pos=torch.arange(5) + 11, context_pos=torch.arange(7) + 11
        )
        torch.testing.assert_close(both_shifted, placed, atol=ATOL, rtol=0)
        perm = torch.tensor([6, 2, 0, 5, 1, 3, 4])
        torch.testing.assert_close(
            layers(h, context=ctx[:, perm], context_pos=perm), placed, atol=ATOL, rtol=0
        )


def test_context_pos_with_a_cache_equals_the_full_forward() -> None:
    net = decoder("rotary", cross_attend=True)
    x, ctx = tokens(2, 8), hidden(2, 5, seed=2)
    kw = dict(context=ctx, context_pos=torch.tensor([3, 1, 4, 1, 5]))
    with torch.no_grad():
        full = net(x, **kw)
        logits, cache = net(x[:, :3], return_cache=True, **kw)
        steps = [logits]
        for t in range(3, 8):
            logits, cache = net(x[:, t : t + 1], cache=cache, return_cache=True, **kw)
            steps.append(logits)
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-9, rtol=0)
        assert (full - net(x, context=ctx)).abs().max() > 1e-6


# ----------------------------------------------------------------------------------------------
# the wrapper


def test_wrapper_pos_drives_learned_absolute_positions() -> None:
    torch.manual_seed(0)
    net = TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=16, attn_layers=Encoder(dim=16, depth=1, heads=2)
    ).double()
    x = tokens(2, 6)
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    with torch.no_grad():
        plain = net(x)
        torch.testing.assert_close(net(x[:, perm], pos=perm), plain[:, perm], atol=ATOL, rtol=0)
        torch.testing.assert_close(net(x, pos=torch.arange(6)), plain, atol=0, rtol=0)


def test_wrapper_pos_reaches_the_stack() -> None:
    net, x = decoder("alibi"), tokens(2, 6)
    with torch.no_grad():
        assert (net(x, pos=torch.arange(6) * 2) - net(x)).abs().max() > 1e-6


# ----------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize(
    ("flags", "kwargs", "error", "pattern"),
    [
        ({}, dict(pos=torch.arange(4)), ValueError, "'pos' gives positions .* has none"),
        (SCHEMES["rotary"], dict(pos=torch.arange(5)), ValueError, r"'pos' must have shape"),
        (
            SCHEMES["rotary"],
            dict(pos=torch.zeros(1, 2, 4, dtype=torch.long)),
            ValueError,
            "per-head",
        ),
        (SCHEMES["t5"], dict(pos=torch.arange(4) + 0.5), TypeError, "integer positions"),
        (SCHEMES["rotary"], dict(pos=torch.ones(4, dtype=torch.bool)), TypeError, "'pos'"),
        (SCHEMES["alibi"], dict(context_pos=torch.arange(3)), ValueError, "context_pos"),
    ],
)
def test_bad_positions_are_refused(flags, kwargs, error, pattern) -> None:
    layers = Decoder(dim=16, depth=1, heads=2, attn_dim_head=8, **flags)
    with pytest.raises(error, match=pattern):
        layers(hidden(1, 4).float(), **kwargs)


def test_pos_with_mems_or_memory_tokens_is_refused() -> None:
    net = decoder("rotary", max_mem_len=8)
    x = tokens(1, 4)
    _, mems = net(x, return_mems=True)
    with pytest.raises(ValueError, match="pos and mems"):
        net(x, mems=mems, pos=torch.arange(4))
    torch.manual_seed(0)
    with_memory = TransformerWrapper(
        num_tokens=VOCAB,
        max_seq_len=16,
        num_memory_tokens=2,
        attn_layers=Decoder(dim=16, depth=1, heads=2, rotary_pos_emb=True),
    )
    with pytest.raises(ValueError, match="num_memory_tokens"):
        with_memory(x, pos=torch.arange(4))
    _, cache = with_memory(x, return_cache=True)  # memory tokens now sit in the cache
    with pytest.raises(ValueError, match="num_memory_tokens"):
        with_memory(x[:, :1], cache=cache, pos=torch.tensor([4]), return_cache=True)
    with pytest.raises(TypeError, match="integer tensor of token positions"):
        with_memory(x, pos=torch.arange(4.0))


# position-infused attention replaces the absolute embedding (registry: relative) but adds
# absolute sinusoids in every layer, so it does see a shift (checked above)
SHIFT_INVARIANT = [
    case.name for case in FLAGS if case.relative and case.name != "position_infused_attn"
]


@pytest.mark.parametrize("name", SHIFT_INVARIANT)
def test_every_relative_registry_entry_ignores_a_shift_of_all_positions(name: str) -> None:
    case = next(case for case in FLAGS if case.name == name)
    net, x = build(case), tokens(2, 7)
    with torch.no_grad():
        default, shifted = net(x), net(x, pos=torch.arange(7) + 29)
        torch.testing.assert_close(shifted, default, atol=1e-9, rtol=0)
        assert (net(x, pos=torch.arange(7) * 3) - default).abs().max() > 1e-6  # positions count


# ----------------------------------------------------------------------------------------------
# custom positions and padding (padding takes no position unless pos says otherwise)


@pytest.mark.parametrize("name", ["rotary", "alibi"])
def test_pos_after_a_left_padded_prefix_continues_the_real_positions(name: str) -> None:
    """The held slots keep the positions padding gave them when a later call passes pos."""
    net, x = decoder(name), tokens(1, 6)
    padded = torch.cat((tokens(1, 2, seed=7), x[:, :5]), dim=1)  # two pads, then 5 real tokens
    mask = torch.arange(7) >= 2
    with torch.no_grad():
        alone = net(x)
        _, cache = net(padded, mask=mask.expand(1, 7), return_cache=True)
        step, _ = net(x[:, 5:], pos=torch.tensor([5]), cache=cache, return_cache=True)
        torch.testing.assert_close(step[:, -1], alone[:, -1], atol=1e-9, rtol=0)
        shifted, _ = net(x[:, 5:], pos=torch.tensor([7]), cache=cache, return_cache=True)
        assert (shifted[:, -1] - alone[:, -1]).abs().max() > 1e-6  # 7 is the slot, not the row


@pytest.mark.parametrize("name", ["rotary", "t5"])
def test_given_positions_are_not_renumbered_by_padding(name: str) -> None:
    net, x = decoder(name), tokens(1, 5)
    padded = torch.cat((tokens(1, 2, seed=7), x), dim=1)
    mask = (torch.arange(7) >= 2).expand(1, 7)
    with torch.no_grad():
        real = torch.tensor([3, 5, 6, 10, 11])
        alone = net(x, pos=real)
        given = net(padded, mask=mask, pos=torch.cat((torch.tensor([0, 1]), real)))
        torch.testing.assert_close(given[:, 2:], alone, atol=1e-9, rtol=0)
        assert (alone - net(x)).abs().max() > 1e-6  # the gaps count


def test_pos_of_the_whole_sequence_with_the_x_transformers_cache_protocol() -> None:
    """With intermediates as the cache, x and pos both hold the whole sequence so far."""
    net, x = decoder("alibi"), tokens(2, 6)
    pos = torch.tensor([0, 2, 3, 7, 8, 11])
    with torch.no_grad():
        full = net(x, pos=pos)
        _, inter = net(x[:, :4], pos=pos[:4], return_intermediates=True)
        step = net(x[:, :5], pos=pos[:5], cache=inter)
        torch.testing.assert_close(step[:, -1], full[:, 4], atol=1e-9, rtol=0)
        with pytest.raises(ValueError, match="positions of all 5"):
            net(x[:, :5], pos=pos[4:5], cache=inter)
