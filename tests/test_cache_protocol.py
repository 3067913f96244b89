"""A KV cache is a value, and the x-transformers cache protocol works as there.

Invariants (float64, 1e-9), each against the full uncached forward:
* a forward with a cache leaves that cache as it was and returns a new one: one cache
  serves several continuations, each correct, in any order, with or without autograd;
* the explicit API (``return_cache=True``, then only the new tokens with ``cache=``) refuses
  the whole sequence given with a cache, naming ``input_not_include_cache``, and reads it
  whole when told so;
* the x-transformers protocol: ``logits, cache = model(x, return_intermediates=True)`` then
  ``model(x_longer, cache=cache)`` with the whole sequence so far runs only the new tokens and
  returns their logits; ``input_not_include_cache=True`` (call or constructor) takes only the
  new tokens; a sequence that does not continue the cache is refused; stacks called directly
  (``return_hiddens=True``) follow the same protocol with new rows only.

Shape legend: b batch, n sequence, v vocabulary, d model dim.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from flag_models import DIM, DIMS, VOCAB, build, tokens

from x_attn import Decoder
from x_attn.registry import FLAGS, flag_case

ATOL = 1e-9
CACHEABLE = [case.name for case in FLAGS if case.causal_ok and case.cacheable]


def other_tail(x: torch.Tensor, start: int) -> torch.Tensor:
    """``x`` with every token from ``start`` on changed."""
    y = x.clone()
    y[:, start:] = (x[:, start:] + 3) % VOCAB
    return y


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("name", ["default", "rotary_pos_emb", "rel_pos_bias", "num_memory_tokens"])
def test_one_cache_serves_two_continuations(name: str, grad: bool) -> None:
    """Without autograd, decode steps append into a shared buffer: continuing one cache twice
    must not overwrite the keys the first continuation holds."""
    net, x = build(flag_case(name)), tokens(2, 9)
    y = other_tail(x, 6)
    with torch.set_grad_enabled(grad):
        full_x, full_y = net(x), net(y)
        _, cache = net(x[:, :5], return_cache=True)
        _, cache = net(x[:, 5:6], cache=cache, return_cache=True)  # now grows a buffer
        length = cache.length
        a, cache_a = net(x[:, 6:7], cache=cache, return_cache=True)
        b, cache_b = net(y[:, 6:7], cache=cache, return_cache=True)
        a2, _ = net(x[:, 7:9], cache=cache_a, return_cache=True)
        b2, _ = net(y[:, 7:9], cache=cache_b, return_cache=True)
        a_again, _ = net(x[:, 6:7], cache=cache, return_cache=True)
    assert cache.length == length and cache_a.length == length + 1
    for got, want in ((a, full_x[:, 6:7]), (b, full_y[:, 6:7]), (a_again, full_x[:, 6:7])):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(a2, full_x[:, 7:9], atol=ATOL, rtol=0)
    torch.testing.assert_close(b2, full_y[:, 7:9], atol=ATOL, rtol=0)


def test_a_loop_that_ignores_the_returned_cache_is_refused() -> None:
    """Caches are values: a new-token call must return the new cache, else a loop written
    for a cache updated in place would put every token at the same position."""
    net, x = build(flag_case("rotary_pos_emb")), tokens(2, 8)
    with torch.no_grad():
        _, cache = net(x[:, :5], return_cache=True)
        with pytest.raises(ValueError, match="return_cache=True.*continue from the cache"):
            net(x[:, 5:6], cache=cache)
        with pytest.raises(ValueError, match="return_hiddens=True"):
            net.attn_layers(net.token_emb(x[:, 5:6]), cache=cache)
        _, inter = net(x[:, :5], return_intermediates=True)
        whole = net(x[:, :6], cache=inter)  # the whole sequence: safe without the return
    torch.testing.assert_close(whole, net(x[:, :6])[:, 5:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["default", "rotary_pos_emb"])
def test_whole_sequence_with_an_explicit_cache(name: str) -> None:
    net, x = build(flag_case(name)), tokens(2, 8)
    with torch.no_grad():
        full = net(x)
        _, cache = net(x[:, :5], return_cache=True)
        with pytest.raises(ValueError, match="input_not_include_cache"):
            net(x[:, :7], cache=cache, return_cache=True)
        whole = net(x[:, :7], cache=cache, input_not_include_cache=False)
        new_only, _ = net(x[:, 5:7], cache=cache, input_not_include_cache=True, return_cache=True)
    torch.testing.assert_close(whole, full[:, 5:7], atol=ATOL, rtol=0)
    torch.testing.assert_close(new_only, full[:, 5:7], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", CACHEABLE)
def test_x_transformers_cache_protocol(name: str) -> None:
    net, x = build(flag_case(name)), tokens(2, 9)
    y = other_tail(x, 6)
    with torch.no_grad():
        full, full_y = net(x), net(y)
        logits, inter = net(x[:, :5], return_intermediates=True)
        torch.testing.assert_close(logits, full[:, :5], atol=ATOL, rtol=0)
        nxt = net(x[:, :6], cache=inter)
        assert nxt.shape == (2, 1, VOCAB)
        torch.testing.assert_close(nxt, full[:, 5:6], atol=ATOL, rtol=0)
        more, inter2 = net(x[:, :8], cache=inter, return_intermediates=True)
        torch.testing.assert_close(more, full[:, 5:8], atol=ATOL, rtol=0)
        other = net(y[:, :7], cache=inter)  # the same cache, another continuation
        torch.testing.assert_close(other, full_y[:, 5:7], atol=ATOL, rtol=0)
        last = net(x, cache=inter2)
        torch.testing.assert_close(last, full[:, 8:9], atol=ATOL, rtol=0)
        new_only, _ = net(
            x[:, 5:6], cache=inter, input_not_include_cache=True, return_intermediates=True
        )
        torch.testing.assert_close(new_only, full[:, 5:6], atol=ATOL, rtol=0)
    assert inter.cache_length == 5 + net.num_memory_tokens


def test_input_not_include_cache_in_the_constructor() -> None:
    case = flag_case("rotary_pos_emb")
    net = build(case)  # the same weights: build seeds and jitters the same way
    stepper = build(replace(case, wrapper={"input_not_include_cache": True}))
    x = tokens(2, 7)
    with torch.no_grad():
        full = net(x)
        _, inter = stepper(x[:, :1], return_intermediates=True)
        steps = []
        for t in range(1, 7):
            out, inter = stepper(x[:, t : t + 1], cache=inter, return_intermediates=True)
            steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 1:], atol=ATOL, rtol=0)


def test_a_sequence_that_does_not_continue_the_cache_is_refused() -> None:
    net, x = build(flag_case("default")), tokens(2, 8)
    with torch.no_grad():
        _, inter = net(x[:, :5], return_intermediates=True)
        with pytest.raises(ValueError, match="does not continue"):
            net(other_tail(x, 2)[:, :6], cache=inter)
        with pytest.raises(ValueError, match="holds 5 tokens"):
            net(x[:, :5], cache=inter)


def test_seq_start_pos_step_by_step_equals_the_parallel_forward() -> None:
    """The x-transformers parity check: left padding given by seq_start_pos, one token a call."""
    net, x = build(flag_case("default")), tokens(2, 10)
    start = torch.tensor([5, 0])
    with torch.no_grad():
        parallel = net(x, seq_start_pos=start)
        inter, steps = None, []
        for t in range(10):
            out, inter = net(
                x[:, t : t + 1],
                cache=inter,
                seq_start_pos=start,
                return_intermediates=True,
                input_not_include_cache=True,
            )
            steps.append(out)
    real = torch.arange(10) >= start.unsqueeze(-1)
    torch.testing.assert_close(torch.cat(steps, 1)[real], parallel[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("flags", [{}, {"rotary_pos_emb": True}, {"alibi_pos_bias": True}])
def test_stack_cache_protocol_with_return_hiddens(flags: dict) -> None:
    torch.manual_seed(0)
    stack = Decoder(**{**DIMS, **flags}).double().eval()
    seq = torch.randn(2, 9, DIM, dtype=torch.float64)
    with torch.no_grad():
        parallel = stack(seq)
        out, inter = stack(seq[:, :5], return_hiddens=True)
        steps = [out[:, -1:]]
        for t in range(5, 9):
            out, inter = stack(seq[:, t : t + 1], cache=inter, return_hiddens=True)
            steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), parallel[:, 4:], atol=ATOL, rtol=0)
