"""The main job's command line on a tiny corpus: outputs, checkpoint, sampling, bad arguments."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import x_attn
from x_attn.data.text import CharVocab, TextData, split_text
from x_attn.train.cli import main, parser
from x_attn.train.loop import evaluate
from x_attn.train.run import recipe_from_args

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dim", "16", "--depth", "1", "--heads", "2", "--context", "16", "--batch", "4"]
TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind.\n" * 12


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _train(corpus, out, *extra):
    args = ["--data", str(corpus), "--out", str(out), "--no-progress", *TINY, *extra]
    return main(["--steps", "4", "--eval-every", "2", "--length", "12", *args])


@pytest.fixture
def trained(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(corpus, out, "--seed", "3") == 0
    return out, capsys.readouterr().out


def test_training_writes_checkpoint_curve_history_and_samples(trained, corpus):
    out, printed = trained
    assert (out / "loss.png").stat().st_size > 1000
    history = json.loads((out / "history.json").read_text())
    assert history["steps"] == 4 and len(history["train_curve"]) == 4
    assert [s for s, _ in history["val_curve"]] == [2, 4]
    assert "bits/char" in printed and printed.count("--- sample") == 2
    # the reported validation loss is that of the saved model on the held-out text
    model = x_attn.load(out / "checkpoint")
    meta = x_attn.checkpoint.load_metadata(out / "checkpoint")
    train_text, val_text = split_text(TEXT)
    data = TextData.from_splits(train_text, val_text)
    assert meta["vocab"] == data.vocab.chars
    windows = data.val_windows(16, history["recipe"]["final_eval_tokens"])
    assert evaluate(model, windows, torch.device("cpu")) == pytest.approx(
        history["val_nats_per_char"], abs=1e-6
    )
    assert f"{history['val_nats_per_char']:.4f} nats/char" in printed


@pytest.mark.parametrize("preset", ["default", "nanogpt"])
def test_greedy_sample_is_the_argmax_continuation(corpus, tmp_path, capsys, preset):
    out = tmp_path / preset
    assert _train(corpus, out, "--preset", preset, "--num-samples", "0") == 0
    capsys.readouterr()
    prompt = "To be"
    args = ["--sample", str(out / "checkpoint"), "--prompt", prompt, "--length", "9"]
    assert main([*args, "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    model = x_attn.load(out / "checkpoint")
    vocab = CharVocab(x_attn.checkpoint.load_metadata(out / "checkpoint")["vocab"])
    ids = vocab.encode(prompt)
    with torch.no_grad():
        for _ in range(9):  # independent reference: full forward, argmax, append
            ids = torch.cat((ids, model(ids[None])[0, -1].argmax().reshape(1)))
    assert printed == vocab.decode(ids) + "\n"


def test_time_budget_stops_training_and_sets_the_schedule(corpus, tmp_path, capsys):
    assert _train(corpus, tmp_path / "b", "--time-budget", "0.001", "--num-samples", "0") == 0
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert history["steps"] == 1 and history["stopped_by_time"]
    assert history["recipe"]["steps"] == 4 and history["recipe"]["time_budget"] == 0.001
    assert "stopped by the time budget" in capsys.readouterr().out


def test_steps_and_time_budget_override_the_presets_limits():
    def recipe(*argv):
        return recipe_from_args(parser().parse_args(list(argv)))

    default = recipe()
    assert default.steps and default.time_budget  # a step count, capped by a time budget
    assert (recipe("--time-budget", "60").steps, recipe("--time-budget", "60").time_budget) == (
        None,
        60.0,
    )
    assert (recipe("--steps", "7").steps, recipe("--steps", "7").time_budget) == (7, None)


def _error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("x-attn-train: error: "), err
    return err


def test_bad_arguments_get_one_line_errors(corpus, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    data = ["--data", str(corpus), "--out", str(tmp_path / "x"), "--steps", "1"]
    assert "no such file" in _error(capsys, "--data", str(tmp_path / "nope.txt"))
    assert "is empty" in _error(capsys, "--data", str(empty))
    assert "--context 900 needs at least 901" in _error(capsys, *data, "--context", "900")
    assert "not divisible by --heads 3" in _error(capsys, *data, "--dim", "16", "--heads", "3")
    data += ["--context", "16"]
    assert "did you mean 'mha'" in _error(capsys, *data, "--attention", "mhaa")
    assert "not causal" in _error(capsys, *data, "--attention", "linformer")
    assert "no checkpoint at" in _error(capsys, "--sample", str(tmp_path / "none"))
    if not torch.cuda.is_available():
        assert "no CUDA device" in _error(capsys, *data, "--device", "cuda")


def test_bad_prompt_and_argparse_errors_are_one_line(trained, capsys):
    out, _ = trained
    err = _error(capsys, "--sample", str(out / "checkpoint"), "--prompt", "Zebra~")
    assert "not in the model's vocabulary" in err
    for argv in (["--steps", "0"], ["--preset", "huge"], ["--lr", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "x-attn-train: error:" in err


def test_entry_points_print_no_traceback(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "missing.txt"
    expected = f"x-attn-train: error: --data: no such file: {missing}"
    done = subprocess.run(  # the README's command, as a user runs it
        [sys.executable, str(ROOT / "examples" / "train_shakespeare.py"), "--data", str(missing)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert (done.returncode, done.stderr.strip()) == (2, expected)
    monkeypatch.setattr(sys, "argv", ["x_attn.train", "--data", str(missing)])
    with pytest.raises(SystemExit) as exit_info:  # python -m x_attn.train
        runpy.run_module("x_attn.train", run_name="__main__")
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip() == expected
