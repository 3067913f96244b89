"""Tests for the reversible residual stack (RevNet arXiv 1707.04585, Reformer arXiv 2001.04451).

The reference is the two-stream recurrence written out here with ordinary autograd:
x1 = x2 = x; y1 = x1 + f(x2, **kw); y2 = x2 + g(y1); out = (y1 + y2) / 2.
Shape legend: b batch, i query positions, j context positions, d model dim.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.graph import saved_tensors_hooks

from x_attn.layers.reversible import ReversibleSequence

D = 16


class MlpBranch(nn.Module):
    """Pre-norm MLP with dropout; returns only the residual update."""

    def __init__(self, dim: int = D, dropout: float = 0.0, mult: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mult),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim * mult, dim),
        )

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        return self.net(x)


class CrossBranch(nn.Module):
    """Pre-norm single-head cross attention over ``context`` (b j d) with a key mask (b j)."""

    def __init__(self, dim: int = D, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor, scale: float = 1.0) -> Tensor:
        q, k, v = self.q(self.norm(x)), self.k(context), self.v(context)
        scores = torch.einsum("bid,bjd->bij", q, k) * scale / D**0.5
        scores = scores.masked_fill(~mask[:, None, :], -1e9)
        attn = self.drop(scores.softmax(dim=-1))
        return self.o(torch.einsum("bij,bjd->bid", attn, v))


def make_pairs(depth: int, dropout: float = 0.0, cross: bool = False) -> list:
    first = CrossBranch if cross else MlpBranch
    return [(first(dropout=dropout), MlpBranch(dropout=dropout)) for _ in range(depth)]


def reference(pairs: list, x: Tensor, **kwargs) -> Tensor:
    """The plain two-stream equations with ordinary autograd (stores every activation)."""
    x1 = x2 = x
    for f, g in pairs:
        y1 = x1 + f(x2, **kwargs)
        y2 = x2 + g(y1)
        x1, x2 = y1, y2
    return (x1 + x2) / 2


def cross_kwargs(b: int = 2, j: int = 5, ctx_grad: bool = True) -> dict:
    context = torch.randn(b, j, D, dtype=torch.float64, requires_grad=ctx_grad)
    mask = torch.ones(b, j, dtype=torch.bool)
    mask[0, -2:] = False
    return {"context": context, "mask": mask, "scale": 0.7}


def grads_of(loss: Tensor, tensors: list[Tensor]) -> list[Tensor | None]:
    for t in tensors:
        t.grad = None
    loss.backward()
    return [None if t.grad is None else t.grad.clone() for t in tensors]


def run_both(pairs, x, weight, seed, **kwargs):
    """Loss and gradients (params, x, tensor kwargs) of reversible and reference runs."""
    model = ReversibleSequence(pairs).double().train()
    leaves = [*model.parameters(), x, *(v for v in kwargs.values() if isinstance(v, Tensor))]
    torch.manual_seed(seed)
    out_rev = model(x, **kwargs)
    g_rev = grads_of((out_rev * weight).sum(), leaves)
    torch.manual_seed(seed)
    out_ref = reference(pairs, x, **kwargs)
    g_ref = grads_of((out_ref * weight).sum(), leaves)
    return out_rev, out_ref, g_rev, g_ref


def assert_all_close(a: list, b: list, atol: float = 1e-10) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert (u is None) == (v is None)
        if u is not None:
            torch.testing.assert_close(u, v, atol=atol, rtol=0)


@pytest.mark.parametrize("training", [True, False])
def test_forward_equals_two_stream_equations(training: bool) -> None:
    torch.manual_seed(0)
    pairs = make_pairs(3, cross=True)
    model = ReversibleSequence(pairs).double().train(training)
    x = torch.randn(2, 7, D, dtype=torch.float64, requires_grad=True)
    kwargs = cross_kwargs()
    expected = reference(pairs, x, **kwargs)
    torch.testing.assert_close(model(x, **kwargs), expected, atol=1e-12, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x, **kwargs), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("cross", [False, True])
def test_gradients_equal_ordinary_autograd(dropout: float, cross: bool) -> None:
    torch.manual_seed(1)
    pairs = make_pairs(4, dropout=dropout, cross=cross)
    x = torch.randn(2, 7, D, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 7, D, dtype=torch.float64)
    kwargs = cross_kwargs() if cross else {}
    out_rev, out_ref, g_rev, g_ref = run_both(pairs, x, weight, seed=123, **kwargs)
    torch.testing.assert_close(out_rev, out_ref, atol=1e-12, rtol=0)
    n_float = len(g_ref) - (1 if cross else 0)  # the bool mask is last and has no gradient
    assert all(g is not None for g in g_ref[:n_float])  # every parameter, x and context
    assert_all_close(g_rev, g_ref)
    if dropout > 0:  # the masks matter: another seed gives other gradients
        _, _, _, g_other = run_both(pairs, x, weight, seed=124, **kwargs)
        assert max((a - b).abs().max().item() for a, b in zip(g_ref[:n_float], g_other)) > 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CUDA RNG replay)")
def test_cuda_dropout_gradients_equal_ordinary_autograd() -> None:
    torch.manual_seed(8)
    pairs = [(f.cuda(), g.cuda()) for f, g in make_pairs(3, dropout=0.3, cross=True)]
    x = torch.randn(2, 7, D, dtype=torch.float64, device="cuda", requires_grad=True)
    kwargs = {k: v.cuda() if isinstance(v, Tensor) else v for k, v in cross_kwargs().items()}
    kwargs["context"] = kwargs["context"].detach().requires_grad_()
    weight = torch.randn(2, 7, D, dtype=torch.float64, device="cuda")
    _, _, g_rev, g_ref = run_both(pairs, x, weight, seed=9, **kwargs)
    assert_all_close(g_rev, g_ref)


def test_mask_kwarg_gets_no_gradient_and_context_without_grad() -> None:
    torch.manual_seed(2)
    pairs = make_pairs(2, cross=True)
    x = torch.randn(2, 7, D, dtype=torch.float64)  # input does not require grad either
    kwargs = cross_kwargs(ctx_grad=False)
    weight = torch.randn(2, 7, D, dtype=torch.float64)
    _, _, g_rev, g_ref = run_both(pairs, x, weight, seed=0, **kwargs)
    assert g_rev[-3:] == [None, None, None]  # x, context, mask
    assert_all_close(g_rev, g_ref)


def test_autograd_grad_returns_parameter_and_context_grads() -> None:
    torch.manual_seed(3)
    pairs = make_pairs(3, dropout=0.2, cross=True)
    model = ReversibleSequence(pairs).double().train()
    x = torch.randn(2, 7, D, dtype=torch.float64, requires_grad=True)
    kwargs = cross_kwargs()
    inputs = [*model.parameters(), x, kwargs["context"]]
    torch.manual_seed(5)
    got = torch.autograd.grad(model(x, **kwargs).square().sum(), inputs)
    torch.manual_seed(5)
    want = torch.autograd.grad(reference(pairs, x, **kwargs).square().sum(), inputs)
    assert all(p.grad is None for p in model.parameters())  # nothing leaked into .grad
    assert_all_close(list(got), list(want))


def test_shared_and_frozen_parameters() -> None:
    torch.manual_seed(4)
    f, g = MlpBranch(), MlpBranch()
    g.net[1].weight.requires_grad_(False)
    pairs = [(f, g)] * 3  # weights tied across depth: gradients must sum over blocks
    x = torch.randn(2, 7, D, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 7, D, dtype=torch.float64)
    _, _, g_rev, g_ref = run_both(pairs, x, weight, seed=0)
    assert g.net[1].weight.grad is None
    assert_all_close(g_rev, g_ref)


def test_gradcheck_against_finite_differences() -> None:
    torch.manual_seed(6)
    model = ReversibleSequence(make_pairs(2, cross=True)).double().train()
    x = torch.randn(1, 3, D, dtype=torch.float64, requires_grad=True)
    kwargs = cross_kwargs(b=1, j=2)
    kwargs["mask"][:] = True

    def fn(inp: Tensor, context: Tensor) -> Tensor:
        return model(inp, context=context, mask=kwargs["mask"])

    assert torch.autograd.gradcheck(fn, (x, kwargs["context"]), eps=1e-6, atol=1e-6, fast_mode=True)


def test_backward_leaves_global_rng_stream_untouched() -> None:
    pairs = make_pairs(3, dropout=0.5)
    model = ReversibleSequence(pairs).double().train()
    x = torch.randn(2, 7, D, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(7)
    reference(pairs, x).sum().backward()
    after_plain = torch.rand(4)
    torch.manual_seed(7)
    model(x).sum().backward()
    torch.testing.assert_close(torch.rand(4), after_plain, atol=0, rtol=0)


class Counter:
    """Saved-tensor accounting: total bytes packed and peak bytes alive at once."""

    def __init__(self) -> None:
        self.total = self.live = self.peak = 0

    def pack(self, tensor: Tensor) -> Packed:
        return Packed(tensor, self)


class Packed:
    def __init__(self, tensor: Tensor, counter: Counter) -> None:
        self.tensor, self.counter = tensor, counter
        self.nbytes = tensor.numel() * tensor.element_size()
        counter.total += self.nbytes
        counter.live += self.nbytes
        counter.peak = max(counter.peak, counter.live)

    def __del__(self) -> None:
        self.counter.live -= self.nbytes


def saved_bytes(depth: int, reversible: bool, train: bool = True) -> tuple[int, int, int]:
    """(bytes saved by forward, peak bytes alive during fwd+bwd, x bytes), d=64, n=256."""
    torch.manual_seed(0)
    pairs = [(MlpBranch(64), MlpBranch(64)) for _ in range(depth)]
    model = ReversibleSequence(pairs).train(train)
    x = torch.randn(1, 256, 64, requires_grad=True)
    counter = Counter()
    with saved_tensors_hooks(counter.pack, lambda packed: packed.tensor):
        out = model(x) if reversible else reference(pairs, x)
        forward_bytes = counter.total
        out.sum().backward()
    assert counter.live == 0
    return forward_bytes, counter.peak, x.numel() * x.element_size()


def test_reversible_saves_far_fewer_activation_bytes() -> None:
    plain_fwd, plain_peak, x_bytes = saved_bytes(24, reversible=False)
    rev_fwd, rev_peak, _ = saved_bytes(24, reversible=True)
    rev_fwd_shallow, rev_peak_shallow, _ = saved_bytes(4, reversible=True)
    assert rev_fwd == 2 * x_bytes  # only the two final streams are kept
    assert rev_fwd_shallow == rev_fwd and rev_peak_shallow == rev_peak  # depth-independent
    assert plain_peak == plain_fwd  # the plain stack holds everything until backward
    assert 50 * rev_fwd < plain_fwd
    assert 10 * rev_peak < plain_peak  # even counting one recomputed block during backward


def test_eval_mode_uses_plain_autograd() -> None:
    plain_fwd, _, _ = saved_bytes(4, reversible=False)
    eval_fwd, _, _ = saved_bytes(4, reversible=True, train=False)
    assert eval_fwd == plain_fwd


class AutocastProbe(nn.Module):
    """Identity-like branch recording whether CPU autocast is on at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, D)
        self.seen: list[bool] = []

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return self.lin(x).to(x.dtype)


def test_recomputation_replays_autocast_setting() -> None:
    f, g = AutocastProbe(), AutocastProbe()
    model = ReversibleSequence([(f, g)]).train()
    x = torch.randn(2, 3, D, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.sum().backward()  # backward outside the autocast region
    assert f.seen == [True, True] and g.seen == [True, True]
    model(x).sum().backward()
    assert f.seen[2:] == [False, False] and g.seen[2:] == [False, False]


def test_nested_tensor_requiring_grad_is_refused() -> None:
    model = ReversibleSequence(make_pairs(1)).train()
    x = torch.randn(1, 3, D)
    with pytest.raises(ValueError, match="'tables'"):
        model(x, tables=[torch.randn(3, requires_grad=True)])
    model(x, tables=[torch.randn(3)])  # without grad it is accepted


class WrongShape(nn.Module):
    def forward(self, x: Tensor, **kwargs) -> Tensor:
        return x[..., :-1]


class ReturnsTuple(nn.Module):
    def forward(self, x: Tensor, **kwargs) -> tuple:
        return x, None


@pytest.mark.parametrize(
    ("blocks", "error", "match"),
    [
        ([], ValueError, "empty"),
        (nn.Linear(2, 2), TypeError, "'blocks'"),
        ([(MlpBranch(),)], TypeError, r"blocks\[0\]"),
        ([(MlpBranch(), torch.tanh)], TypeError, "'g'"),
    ],
)
def test_bad_blocks_are_refused(blocks, error, match) -> None:
    with pytest.raises(error, match=match):
        ReversibleSequence(blocks)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("branch", "error"), [(WrongShape, ValueError), (ReturnsTuple, TypeError)])
def test_bad_branch_outputs_are_refused(train: bool, branch, error) -> None:
    model = ReversibleSequence([(branch(), MlpBranch())]).train(train)
    with pytest.raises(error, match="'f'"):
        model(torch.randn(1, 3, D, requires_grad=True))
    with pytest.raises(TypeError, match="'x'"):
        model([1.0])
