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
