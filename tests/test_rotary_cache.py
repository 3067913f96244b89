"""The kept rotary table (RotaryEmbedding.slot_table) and the full-width rotation.

A table cut from the kept one must equal a table computed afresh for the same positions, after
every change that could leave it stale: a longer sequence, another dtype or device, a changed
frequency setting, a table built under inference mode used with autograd. The full-width
rotation (``t * cos + roll(t) * sin``) must give the numbers of the pairwise one and of the
paper's formula.

Shape legend: b batch, h heads, n positions, r rotary dim (= head dim here).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor

from x_attn import Decoder, TransformerWrapper
from x_attn.positional import RotaryEmbedding, YarnScaling
from x_attn.positional import rotary as rotary_module
from x_attn.positional.rotary import rotate_pairs

F64 = torch.float64


def fresh(rot: RotaryEmbedding, start: int, stop: int, dtype: torch.dtype, device="cpu"):
    """The table computed for just these positions, by an embedding that keeps nothing."""
    return copy.deepcopy(rot).table(torch.arange(start, stop, device=device), dtype)


def assert_same_table(got, want) -> None:
    assert got.cos.dtype == want.cos.dtype and got.cos.device == want.cos.device
    assert torch.equal(got.cos, want.cos) and torch.equal(got.sin, want.sin)
    for a, b in ((got.q_scale, want.q_scale), (got.k_scale, want.k_scale)):
        assert (a is None) == (b is None)
        assert a is None or torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_slot_rows_equal_fresh_rows_as_the_kept_table_grows(dtype: torch.dtype) -> None:
    rot = RotaryEmbedding(16)
    for start, stop in [(0, 10), (3, 4), (0, 64), (50, 65), (64, 300), (0, 1), (299, 1030)]:
        assert_same_table(
            rot.slot_table(start, stop, torch.device("cpu"), dtype), fresh(rot, start, stop, dtype)
        )
    assert rot._kept[1].cos.shape[-2] == 2048  # grown to a power of two, not per call


def test_dtype_change_rebuilds_the_kept_table() -> None:
    rot = RotaryEmbedding(8)
    cpu = torch.device("cpu")
    first = rot.slot_table(0, 20, cpu, torch.float32)
    got = rot.slot_table(0, 20, cpu, F64)
    assert_same_table(got, fresh(rot, 0, 20, F64))
    assert not torch.equal(got.cos, first.cos.double())  # float64 is not widened float32
    assert_same_table(rot.slot_table(2, 9, cpu, torch.float32), fresh(rot, 2, 9, torch.float32))


def test_device_change_rebuilds_the_kept_table() -> None:
    rot = RotaryEmbedding(8)
    rot.slot_table(0, 20, torch.device("cpu"), F64)
    meta = rot.slot_table(0, 20, torch.device("meta"), F64)
    assert meta.cos.device.type == "meta" and meta.wide[0].device.type == "meta"
    assert_same_table(rot.slot_table(0, 20, torch.device("cpu"), F64), fresh(rot, 0, 20, F64))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("interpolation_factor", 4.0),
        ("base_rescale_factor", 8.0),
        ("base", 500.0),
        ("scaling", YarnScaling(4.0, 64)),
        ("xpos_scale_base", 512.0),
        ("interleaved", True),
    ],
)
def test_changed_setting_rebuilds_the_kept_table(name: str, value) -> None:
    rot = RotaryEmbedding(8)
    cpu = torch.device("cpu")
    before = rot.slot_table(0, 40, cpu, F64)
    setattr(rot, name, value)
    got = rot.slot_table(0, 40, cpu, F64)
    assert_same_table(got, fresh(rot, 0, 40, F64))
    assert not torch.equal(got.cos, before.cos) or got.q_scale is not None or got.interleaved


def rotary_model(depth: int) -> TransformerWrapper:
    torch.manual_seed(0)
    layers = Decoder(dim=16, depth=depth, heads=2, rotary_pos_emb=True)
    return TransformerWrapper(num_tokens=32, max_seq_len=64, attn_layers=layers)


def test_table_kept_under_inference_mode_serves_a_training_forward() -> None:
    model = rotary_model(depth=1)
    twin = copy.deepcopy(model)  # never ran under inference mode
    x = torch.randint(0, 32, (2, 12))
    with torch.inference_mode():
        model(x)
    assert model.attn_layers.positions.rotary._kept[1].cos.is_inference()
    loss = model(x).square().mean()
    loss.backward()  # an inference tensor saved for backward would raise here
    twin(x).square().mean().backward()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


def test_model_dtype_change_gives_the_fresh_float64_logits() -> None:
    model = rotary_model(depth=2).eval()
    twin = copy.deepcopy(model).double()
    x = torch.randint(0, 32, (2, 20))
    model(x)  # keeps a float32 table
    assert torch.equal(model.double()(x), twin(x))


def test_past_the_keep_limit_rows_are_computed_per_call(monkeypatch) -> None:
    monkeypatch.setattr(rotary_module, "KEEP_MAX_POSITIONS", 32)
    rot = RotaryEmbedding(8)
    cpu = torch.device("cpu")
    rot.slot_table(0, 20, cpu, F64)
    kept = rot._kept
    assert_same_table(rot.slot_table(30, 50, cpu, F64), fresh(rot, 30, 50, F64))
    assert rot._kept is kept  # nothing longer was kept


def paper_rotation(t: Tensor, positions: Tensor, r: int) -> Tensor:
    """RoFormer's rotation, half-split pairs (i, i + r/2), one scalar at a time in float64."""
    out = t.clone().double()
    for n, p in enumerate(positions.tolist()):
        for i in range(r // 2):
            angle = p * 10000.0 ** (-2 * i / r)
            a, b = float(t[..., n, i]), float(t[..., n, i + r // 2])
            out[..., n, i] = a * math.cos(angle) - b * math.sin(angle)
            out[..., n, i + r // 2] = a * math.sin(angle) + b * math.cos(angle)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_full_width_rotation_equals_pairwise_and_the_paper(dtype: torch.dtype) -> None:
    rot = RotaryEmbedding(8)
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 3, 5, 8, generator=g, dtype=dtype).transpose(1, 2).transpose(1, 2)
    table = rot.slot_table(7, 12, torch.device("cpu"), dtype)
    assert table.wide is not None
    got = table.rotate(t)
    assert torch.equal(got, rotate_pairs(t, table.cos, table.sin))  # bit for bit
    want = paper_rotation(t[0, 0], torch.arange(7, 12), 8)
    tol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(got[0, 0].double(), want, atol=tol, rtol=tol)


def test_full_width_rotation_is_skipped_where_it_does_not_apply() -> None:
    rot = RotaryEmbedding(8)
    table = rot.slot_table(0, 5, torch.device("cpu"), torch.float32)
    partial = torch.randn(1, 2, 5, 12)  # head dim 12 > r: the tail must stay bit-identical
    out = table.rotate(partial)
    assert torch.equal(out[..., 8:], partial[..., 8:])
    assert torch.equal(out, rotate_pairs(partial, table.cos, table.sin))
    half = torch.randn(1, 2, 5, 8, dtype=torch.bfloat16)  # rotated in float32, cast back
    assert torch.equal(table.rotate(half), rotate_pairs(half, table.cos, table.sin))
    assert (
        RotaryEmbedding(8, xpos_scale_base=512.0).slot_table(0, 5, torch.device("cpu")).wide is None
    )


def test_embedding_pickled_before_the_kept_table_existed_still_serves() -> None:
    rot = RotaryEmbedding(8)
    del rot.__dict__["_kept"]  # what unpickling a module saved by an older version gives
    assert_same_table(
        rot.slot_table(0, 5, torch.device("cpu"), F64), fresh(RotaryEmbedding(8), 0, 5, F64)
    )
