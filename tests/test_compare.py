"""The comparison study: same budget and seeds per variant, honest rows, measured cache bytes."""

from __future__ import annotations

import torch

import x_attn.catalog
import x_attn.train.compare
from x_attn.catalog import CATALOG, Mechanism, mechanism
from x_attn.data.text import TextData, split_text
from x_attn.train.compare import NANOGPT, Study, run_study, table_markdown, variants
from x_attn.train.loop import evaluate, train
from x_attn.train.measure import cache_bytes_per_token, step_memory_bytes
from x_attn.train.recipes import RECIPES, build_model

TINY = RECIPES["default"].replace(
    dim=16,
    depth=2,
    heads=2,
    context=16,
    batch=4,
    steps=3,
    time_budget=None,
    warmup=1,
    eval_every=10**9,
    final_eval_tokens=256,
)
DATA = TextData.from_splits(*split_text("Now is the winter of our discontent. " * 20))


def test_kv_cache_bytes_are_measured_from_the_cache():
    # per token: 2 layers x (k + v) x 2 heads x 8 dims x 4 bytes; fixed: the recipe's token
    # shift keeps the last input row of each block, 2 layers x (attention + feed-forward) x 16 dims
    model = build_model(TINY, 30)
    assert cache_bytes_per_token(model) == (2 * 2 * 2 * 8 * 4, 2 * 2 * 16 * 4)
    collab = build_model(TINY, 30, "collab-heads")  # shared keys: compressed key dim
    assert cache_bytes_per_token(collab)[0] < 2 * 2 * 2 * 8 * 4
    assert cache_bytes_per_token(build_model(TINY.replace(depth=4), 30))[0] == 2 * 256


def test_step_memory_counts_activations_linear_in_the_batch():
    model = build_model(TINY, 30)
    weights = 4 * sum(p.numel() * 4 for p in model.parameters())
    windows = DATA.batch(8, 16, torch.Generator().manual_seed(0))
    one, two = (step_memory_bytes(model, windows[:b]) - weights for b in (4, 8))
    assert one > 0 and abs(two - 2 * one) / (2 * one) < 0.05


def test_study_rows_are_runs_with_the_same_budget_or_say_why_not(monkeypatch):
    # a causal mechanism whose flags have not landed yet (every catalog entry has landed, so
    # one is added for the test, as mqa was one until its flags landed)
    future = Mechanism("future-attn", "flags not settled", None, "0000.00000", note="not yet")
    for module in (x_attn.catalog, x_attn.train.compare):
        monkeypatch.setattr(module, "CATALOG", (*CATALOG, future))
    pending = future.name
    names = ["mha", pending, "linformer", NANOGPT]
    rows = run_study(Study(TINY, seeds=(0, 1)), DATA, names, log=lambda _: None)
    assert [r.name for r in rows] == names
    mha, waiting, linformer, nano = rows
    assert waiting.reason == mechanism(pending).unavailable_reason and not waiting.losses
    assert linformer.reason.startswith("not causal")
    assert len(mha.losses) == 2 and mha.losses[0] != mha.losses[1]
    # a row's seed-0 loss is exactly a separate run with that seed and budget
    torch.manual_seed(0)
    model = build_model(TINY, len(DATA.vocab))
    train(model, DATA, TINY, device=torch.device("cpu"), seed=0, progress=False)
    windows = DATA.val_windows(TINY.context, TINY.final_eval_tokens)
    assert evaluate(model, windows, torch.device("cpu")) == mha.losses[0]
    assert nano.parameters > 0 and nano.cache_per_token == mha.cache_per_token
    table = table_markdown(rows)
    assert f"| {pending} | {waiting.reason} | | | | | |" in table
    assert f"| mha | {mha.loss:.4f} (" in table


def test_every_catalog_entry_is_a_study_variant():
    assert [v[0] for v in variants()] == [m.name for m in CATALOG] + [NANOGPT]


def test_a_mechanism_without_a_kv_cache_is_a_row_that_says_so():
    rows = run_study(Study(TINY, seeds=(0,)), DATA, ["lsh"], log=lambda _: None)
    assert rows[0].losses and not rows[0].cacheable
    assert "| none (no KV cache) |" in table_markdown(rows)
