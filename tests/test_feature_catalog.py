"""The feature catalog: one declaration per feature drives a layer's parts and kernel.

A feature added to the catalog (here, from the test) is built, chooses the kernel through its
declared needs, and clashes in an exclusive slot are refused naming both flags.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from x_attn import Attention
from x_attn.attention.features import ScoreFeature, catalog
from x_attn.attention.features.spec import FeatureSpec
from x_attn.cache import CacheEntry, EntryWrapper, KVEntry


class _Halve(ScoreFeature):
    """A score feature defined outside the package: halves the logits."""

    flag = "attn_halve"

    def on_logits(self, sim: Tensor, prev_logits: Tensor | None) -> Tensor:
        return sim / 2


HALVE = FeatureSpec("halve", "", "logits", lambda ctx: True, lambda ctx: _Halve(), True)


def test_a_declared_score_feature_is_built_and_picks_the_kernel(monkeypatch) -> None:
    torch.manual_seed(0)
    plain = Attention(16, heads=2, dim_head=8).double()
    monkeypatch.setattr(catalog, "FEATURES", (*catalog.FEATURES, HALVE))
    halved = Attention(16, heads=2, dim_head=8).double()
    halved.load_state_dict(plain.state_dict())
    assert halved.explain() == "manual: attn_halve need(s) the raw attention scores"
    with pytest.raises(ValueError, match="attn_flash=True.*attn_halve"):
        Attention(16, heads=2, dim_head=8, flash=True)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    _, maps = halved(x, return_attn=True)
    heads = lambda t: t.unflatten(-1, (2, 8)).transpose(1, 2)  # noqa: E731  (b n (h d)) -> (b h n d)
    q, k = heads(x @ plain.proj.to_q.weight.T), heads(x @ plain.proj.to_k.weight.T)
    expected = (q @ k.transpose(-1, -2) * 8**-0.5 / 2).softmax(dim=-1)
    torch.testing.assert_close(maps.probs, expected, atol=1e-12, rtol=0)
    assert not torch.allclose(plain(x), halved(x))


def test_two_features_in_one_slot_are_refused_naming_both(monkeypatch) -> None:
    other = FeatureSpec(
        "sigmoid", "", "normalize", lambda ctx: True, lambda ctx: nn.Sigmoid(), True, "normalizer"
    )
    monkeypatch.setattr(catalog, "FEATURES", (*catalog.FEATURES, other))
    with pytest.raises(ValueError, match="attn_use_entmax15 and attn_sigmoid both replace"):
        Attention(16, heads=2, dim_head=8, use_entmax15=True)


def test_every_declared_paper_is_cited() -> None:
    bib = (Path(__file__).resolve().parents[1] / "CITATIONS.bib").read_text()
    cited = set(re.findall(r"eprint\s*=\s*\{([\d.]+)\}", bib))
    papers = {spec.paper for spec in catalog.FEATURES if spec.paper}  # "" = no arXiv paper
    assert papers <= cited, papers - cited
    assert len({spec.name for spec in catalog.FEATURES}) == len(catalog.FEATURES)


class _ScaleHeads(nn.Module):
    """A "heads" stage defined outside the package: head t's output times t + 1."""

    def forward(self, out: Tensor, x: Tensor) -> Tensor:  # (b h n d), query input (b n d)
        return out * torch.arange(1, out.shape[1] + 1, dtype=out.dtype)[:, None, None]


class _Counting(EntryWrapper):
    """An entry wrapper defined outside the package: counts the updates, delegates the rest."""

    def __init__(self, inner: CacheEntry) -> None:
        super().__init__(inner)
        self.updates = 0

    def update(self, new, project):
        self.updates += 1
        return super().update(new, project)


class _SeesCall(ScoreFeature):
    """Records what each call tells it (per-call views, not module state)."""

    flag = "attn_sees_call"
    seen: list = []

    def for_call(self, call):
        _SeesCall.seen.append((type(call.entry), call.mask.q.start, call.mask.q.stop))
        return self


def test_heads_stage_entry_wrapper_and_call_view(monkeypatch) -> None:
    specs = (
        FeatureSpec("scale", "", "heads", lambda ctx: True, lambda ctx: _ScaleHeads(), attr="sc"),
        FeatureSpec("count", "", "cache", lambda ctx: True, wrap_entry=lambda ctx: _Counting),
        FeatureSpec("sees", "", "logits", lambda ctx: True, lambda ctx: _SeesCall(), True),
    )
    torch.manual_seed(0)
    plain = Attention(16, heads=2, dim_head=8, causal=True).double()
    monkeypatch.setattr(catalog, "FEATURES", (*catalog.FEATURES, *specs))
    layer = Attention(16, heads=2, dim_head=8, causal=True).double()
    layer.load_state_dict(plain.state_dict())
    assert isinstance(layer.sc, _ScaleHeads) and "sc" not in dict(plain.named_children())
    with torch.no_grad():  # head 1's values doubled == head 1's output doubled
        plain.proj.to_v.weight[8:] *= 2
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), plain(x), atol=1e-12, rtol=0)
    entry = layer.new_cache_entry()
    assert isinstance(entry, _Counting) and isinstance(entry.inner, KVEntry)
    _SeesCall.seen.clear()
    layer(x[:, :3], cache=entry)
    layer(x[:, 3:], cache=entry)
    assert entry.updates == 2
    assert _SeesCall.seen == [(_Counting, 0, 3), (_Counting, 3, 5)]
