"""Distributed training (x_attn.train.distributed): two CPU processes on gloo take exactly the
steps one process takes on the whole batch, with DDP and with FSDP2; the time budget stops both
at rank 0's step; the checkpoint of a sharded run loads without torch.distributed; the command
line under torchrun's environment prints and writes on rank 0 only; bad launches get one line.

The two ranks run tests/distributed_worker.py once (spawned, about 10 s on a quiet machine);
the tests below read what they wrote.
"""

from __future__ import annotations

import json
import socket

import pytest
import torch

import x_attn
from x_attn.train.cli import main
from x_attn.train.loop import evaluate

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this PyTorch build has no torch.distributed with the gloo backend",
)

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """The folder the two ranks wrote their results to."""
    import distributed_worker as worker

    out = tmp_path_factory.mktemp("ranks")
    (out / "tiny.txt").write_text(worker.TEXT, encoding="utf-8")
    ports = (_free_port(), _free_port())
    torch.multiprocessing.spawn(worker.run_rank, args=(WORLD, ports, str(out)), nprocs=WORLD)
    return out


def _rank(out, kind: str, rank: int) -> dict:
    return torch.load(out / f"{kind}-rank{rank}.pt", weights_only=True)


@pytest.fixture(scope="module")
def single(ranks):
    """One process, the same loop and train_step, the whole global batch (the reference)."""
    import distributed_worker as worker

    result, _ = worker.train_once(worker.RECIPE)
    budget, _ = worker.train_once(worker.BUDGET)
    initial = dict(worker.fresh_model(worker.RECIPE).named_parameters())
    return result, budget, initial


def _assert_params_close(actual: dict, expected: dict, atol: float = 1e-10) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value.detach(), rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process_on_the_global_batch(ranks, single, kind):
    reference, _, initial = single
    rank0, rank1 = (_rank(ranks, kind, r) for r in range(WORLD))
    for name, value in rank0["params"].items():  # the ranks agree exactly
        assert torch.equal(value, rank1["params"][name]), name
    _assert_params_close(rank0["params"], reference["params"])
    moved = max((reference["params"][n] - p).abs().max().item() for n, p in initial.items())
    assert moved > 1e-3  # three steps really changed the model
    assert rank0["steps"] == reference["steps"] == 3
    for step, batch in enumerate(reference["windows"]):  # each rank trained on its half
        assert torch.equal(torch.cat((rank0["windows"][step], rank1["windows"][step])), batch)
        assert len(rank0["windows"][step]) == len(batch) // WORLD
    # the logged loss is the global batch's mean, validation covers the same windows
    for got, want in ((rank0["train"], reference["train"]), (rank0["val"], reference["val"])):
        assert [s for s, _ in got] == [s for s, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-10)
    # three validation windows in chunks of 2: rank 1 gets no row of the last chunk
    assert rank0["val_short_chunk"] == pytest.approx(reference["val_short_chunk"], abs=1e-10)


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_time_budget_stops_every_rank_at_rank0s_step(ranks, single, kind):
    _, reference, _ = single
    rank0, rank1 = (_rank(ranks, kind, r) for r in range(WORLD))
    # 0.35 s at 0.05 s a step; rank 1's clock runs 100x faster: alone it would stop after one
    assert rank0["budget_steps"] == rank1["budget_steps"] == reference["steps"] == 7
    _assert_params_close(rank1["budget_params"], reference["params"])


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_checkpoint_of_the_sharded_run_loads_without_distributed(ranks, kind):
    model = x_attn.load(ranks / f"{kind}-checkpoint")
    params = _rank(ranks, kind, 1)["params"]
    loaded = dict(model.named_parameters())
    assert loaded.keys() == params.keys()
    for name, value in params.items():
        assert loaded[name].dtype == torch.float64 and torch.equal(loaded[name], value), name


def test_command_line_under_torchrun_prints_and_saves_on_rank0_only(ranks):
    import distributed_worker as worker

    codes = [(ranks / f"cli-rank{r}.code").read_text() for r in range(WORLD)]
    assert codes == ["0", "0"]
    printed = (ranks / "cli-rank0.out").read_text()
    assert printed.count("validation loss") == 1 and "x 2 processes (FSDP" in printed
    assert "step 2: val" in printed and printed.count("--- sample") == 1
    assert (
        "it/s" in (ranks / "cli-rank0.err").read_text()
        or "step/s" in (ranks / "cli-rank0.err").read_text()
    )  # the progress bar, on rank 0
    assert (ranks / "cli-rank1.out").read_text() == ""
    assert (ranks / "cli-rank1.err").read_text() == ""  # no bar, no warning
    history = json.loads((ranks / "cli" / "history.json").read_text())
    assert (history["processes"], history["parallel"], history["steps"]) == (2, "fsdp", 3)
    model = x_attn.load(ranks / "cli" / "checkpoint")
    windows = worker.data().val_windows(16, history["recipe"]["final_eval_tokens"])
    assert evaluate(model, windows, torch.device("cpu")) == pytest.approx(
        history["val_nats_per_char"], abs=1e-6
    )


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    return captured.err


def test_bad_launches_get_one_line_errors(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 20, encoding="utf-8")
    base = ["--data", str(corpus), "--out", str(tmp_path / "x"), "--steps", "1"]
    base += ["--context", "16", "--no-progress"]
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert "--fsdp shards the model over several processes" in _error(capsys, [*base, "--fsdp"])
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    err = _error(capsys, [*base, "--batch", "16"])
    assert "--batch 16 is the global batch and must be divisible by the 3 processes" in err
    assert "run it without torchrun" in _error(capsys, ["--sample", str(tmp_path)])
    monkeypatch.setenv("RANK", "1")  # the other ranks fail alike, silently
    assert main([*base, "--batch", "16"]) == 2
    assert capsys.readouterr().err == ""
