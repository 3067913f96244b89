"""Tiny float64 decoders built from registry flag cases, shared by the decoding tests.

Parameters are jittered after initialisation so that parts initialised to zero or identity
(ReZero, gates, talking heads) are active and the invariants cannot hold trivially.

Also the setup of the one-layer mechanism tests: :func:`one_layer_decoder` and
:func:`naive_block_output`, the attention block computed by loops from a test's own logits.

Shape legend: b batch, n sequence, h heads, d model dim, dh head dim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from x_attn import Decoder, Encoder, TransformerWrapper
from x_attn.layers.conditioning import fix_condition
from x_attn.registry import FLAGS, FlagCase

VOCAB, DIM = 24, 16
DIMS = dict(dim=DIM, depth=2, heads=2, attn_dim_head=8)
# the stack flags that make positions relative; a case that turns rotary_pos_emb on with its own
# flag is relative through rotary_pos_emb (attn_latent_rope_subheads is position-free without it)
RELATIVE = tuple(
    case.name
    for case in FLAGS
    if case.relative and (case.name == "rotary_pos_emb" or not case.layers.get("rotary_pos_emb"))
)


def build(
    case: FlagCase,
    max_seq_len: int = 32,
    relative: bool = False,
    max_mem_len: int = 0,
    **extra,
) -> TransformerWrapper:
    """Eval-mode float64 TransformerWrapper(Decoder) with ``case``'s flags (+ ``extra``); an
    Encoder for a flag refused on a Decoder (registry: causal_ok=False).

    ``relative=True`` adds rotary positions when the case has no relative scheme of its own.
    """
    torch.manual_seed(0)
    layers = {**case.layers, **extra}
    if relative and not any(layers.get(k) for k in RELATIVE):
        layers["rotary_pos_emb"] = True
    net = TransformerWrapper(
        num_tokens=VOCAB,
        max_seq_len=max_seq_len,
        max_mem_len=max_mem_len,
        attn_layers=(Decoder if case.causal_ok else Encoder)(**{**DIMS, **layers}),
        **case.wrapper,
    )
    net = net.double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    bind_condition(net.attn_layers)
    return net


def bind_condition(stack: nn.Module) -> None:
    """A stack with adaptive norms gets, when a call passes none, the same seeded condition
    (1, dim_condition) in every call, so the invariant tests run on it unchanged."""
    if getattr(stack, "needs_condition", False):
        dim = stack.config.dim_condition or stack.dim
        gen = torch.Generator().manual_seed(7)
        fix_condition(stack, torch.randn(1, dim, generator=gen, dtype=torch.float64))


def tokens(b: int, n: int, seed: int = 1) -> Tensor:
    """(b, n) token ids from a seeded generator."""
    return torch.randint(0, VOCAB, (b, n), generator=torch.Generator().manual_seed(seed))


def jittered(module: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """``module`` in float64 eval mode, every parameter moved by N(0, scale^2) (seeded)."""
    module.double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return module


@torch.no_grad()
def prefill_then_steps(
    model: TransformerWrapper, ids: Tensor, prefill: int, first: dict | None = None, **kwargs
):
    """(logits of a prefill of ``prefill`` tokens then one token per call with the cache,
    concatenated; the final cache). ``kwargs`` reach every call (e.g. ``context``), ``first``
    only the prefill (e.g. mems, which a cache takes in once)."""
    logits, cache = model(ids[:, :prefill], return_cache=True, **kwargs, **(first or {}))
    steps = [logits]
    for t in range(prefill, ids.shape[1]):
        step, cache = model(ids[:, t : t + 1], cache=cache, return_cache=True, **kwargs)
        steps.append(step)
    return torch.cat(steps, dim=1), cache


def block_output(stack: nn.Module, x: Tensor, index: int = 0) -> Tensor:
    """The output of the block of layer ``index`` when ``stack`` runs on ``x`` (no grad)."""
    captured: dict[str, Tensor] = {}
    block = stack.layers[index].block
    handle = block.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        with torch.no_grad():
            stack(x)
    finally:
        handle.remove()
    out = captured["out"]
    return out[0] if isinstance(out, tuple) else out


def one_layer_decoder(dim: int, heads: int, dim_head: int, seed: int = 3, **flags) -> Decoder:
    """A one-layer Decoder with ``flags``, built after ``torch.manual_seed(0)``, then
    :func:`jittered` with ``seed`` (float64, eval mode)."""
    torch.manual_seed(0)
    stack = Decoder(dim=dim, depth=1, heads=heads, attn_dim_head=dim_head, **flags)
    return jittered(stack, seed=seed)


# (normed input rows of one sample (n, d), head index, that head's q, k (n, dh)) -> for each
# query i, the logits of the keys j <= i
RowLogits = Callable[[Tensor, int, Tensor, Tensor], Sequence[Sequence[Tensor | float]]]


def naive_block_output(stack: nn.Module, x: Tensor, heads: int, dim_head: int, logits: RowLogits):
    """The attention block output of ``stack``'s first (pre-norm) layer on ``x`` (b, n, d) by
    loops, one (sample, head, query) at a time: causal softmax over ``logits`` (a test's own
    formula), weighted sum of the values, output map. Plain q/k/v maps (``to_q``, ``to_k``,
    ``to_v``) without bias are assumed."""
    layer = stack.layers[0]
    attn = layer.block
    with torch.no_grad():
        h = layer.norm(x)
        wq, wk, wv = (getattr(attn.proj, f"to_{c}").weight for c in "qkv")
        b, n, _ = x.shape
        out = torch.zeros(b, n, heads * dim_head, dtype=x.dtype)
        for s in range(b):
            for hd in range(heads):
                rows = slice(hd * dim_head, (hd + 1) * dim_head)
                q, k, v = (h[s] @ w[rows].T for w in (wq, wk, wv))
                per_query = logits(h[s], hd, q, k)
                for i in range(n):
                    scores = [torch.as_tensor(sc, dtype=x.dtype) for sc in per_query[i]]
                    alpha = torch.stack(scores).softmax(-1)
                    out[s, i, rows] = sum(a * v[j] for j, a in enumerate(alpha))
        return attn.to_out(out, h, None)


def assert_causal_stack(stack: nn.Module, dim: int) -> None:
    """Changing the rows from position 4 on leaves the outputs before it as they were (and
    changes the later ones): ``stack`` float64, 7 rows."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 7, dim, dtype=torch.float64, generator=gen)
    changed = x.clone()
    changed[:, 4:] += torch.randn(1, 3, dim, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        before, after = stack(x), stack(changed)
    torch.testing.assert_close(after[:, :4], before[:, :4], atol=1e-12, rtol=0)
    assert (after[:, 4:] - before[:, 4:]).abs().max() > 1e-3


def assert_cache_matches_full(stack: nn.Module, prefill: int = 4) -> None:
    """A jittered float64 wrapper around ``stack``: prefill then one token per call with the
    KV cache gives the full forward's logits."""
    model = jittered(TransformerWrapper(num_tokens=VOCAB, max_seq_len=32, attn_layers=stack))
    ids = tokens(2, 9)
    with torch.no_grad():
        stepped, _ = prefill_then_steps(model, ids, prefill)
        torch.testing.assert_close(stepped, model(ids), atol=1e-10, rtol=0)
