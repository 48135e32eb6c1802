"""The ``jrnn`` command: the subcommand table, --help, and smoke runs of demo and train."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from jrnn import cli

PNG = b"\x89PNG\r\n\x1a\n"


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _json_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_command_table_pairs_configure_and_run():
    assert set(cli.COMMANDS) >= {"demo", "train"}
    for name, (configure, run) in cli.COMMANDS.items():
        assert callable(configure) and callable(run), name
        assert configure.__doc__, f"{name}: configure's docstring is the subcommand's help"


def test_every_flag_is_documented():
    subparsers = _subparsers(cli.build_parser())
    train = subparsers["train"]
    flags = {s for a in train._actions for s in a.option_strings}
    for flag in ("--task", "--cell", "--activation", "--layers", "--hidden", "--optimizer", "--lr", "--clip",
                 "--steps", "--batch-size", "--seq-len", "--truncation", "--backward", "--checkpoint-dir",
                 "--seed", "--out"):
        assert flag in flags
    for action in train._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
    visible = [a for a in subparsers["demo"]._actions if a.help != argparse.SUPPRESS]
    assert {s for a in visible for s in a.option_strings} == {"-h", "--help", "--out", "--no-progress"}
    help_text = train.format_help()
    for task in cli.TASKS:
        assert task in help_text


def test_help_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "jrnn.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in out.stdout and "train" in out.stdout


def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    status = cli.main(["demo", "--out", str(out), "--steps", "6", "--hidden", "4", "--series-length", "200",
                       "--batch-size", "16", "--no-progress"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "train MSE" in printed and "validation MSE" in printed and "variance of the series" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["config"]["layers"] == 3
    for name in ("train_mse", "val_mse", "series_variance", "repeat_last_value_mse", "wall_time_s"):
        assert isinstance(metrics[name], float)
    for png in ("loss_curve.png", "predictions.png"):
        assert (out / png).read_bytes()[:8] == PNG
    assert [r["step"] for r in _json_lines(out / "log.jsonl") if "loss" in r] == list(range(1, 7))


def test_train_smoke_with_truncation(tmp_path, capsys):
    out = tmp_path / "train"
    args = ["train", "--task", "adding", "--cell", "gru", "--hidden", "4", "--steps", "4",
            "--batch-size", "4", "--seq-len", "6", "--truncation", "4", "--eval-every", "2",
            "--out", str(out), "--no-progress"]
    assert cli.main(args) == 0
    assert "validation MSE" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "adding" and metrics["steps"] == 4 and metrics["config"]["truncation"] == 4
    assert "best_constant_mse" in metrics["baselines"]
    lines = _json_lines(out / "log.jsonl")
    assert [r["step"] for r in lines if "eval_loss" in r] == [2, 4]
    # two chunks (6 = 4 + 2), but the last-step target is scored only in the second one
    assert all(r["num_updates"] == 1 for r in lines if "loss" in r)
    assert (out / "loss_curve.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_train_with_the_parallel_in_time_cells_and_presets(tmp_path, capsys, cell):
    out = tmp_path / cell
    args = ["train", "--task", "sine", "--cell", cell, "--init", "torch", "--hidden", "4", "--steps", "3",
            "--batch-size", "4", "--seq-len", "6", "--eval-every", "3", "--out", str(out), "--no-progress"]
    assert cli.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["cell"] == cell and metrics["config"]["init"] == "torch" and metrics["steps"] == 3
    assert np.isfinite(metrics["val_loss"]) and metrics["val_loss"] < metrics["baselines"]["predict_mean_mse"] * 2


def test_train_classification_resumes_from_its_checkpoint(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out, ckpt = tmp_path / "digits", tmp_path / "ckpt"
    base = ["train", "--task", "digits", "--cell", "vanilla", "--activation", "relu", "--hidden", "8",
            "--batch-size", "32", "--optimizer", "sgd", "--lr", "0.1", "--checkpoint-dir", str(ckpt),
            "--checkpoint-every", "2", "--out", str(out), "--no-progress"]
    assert cli.main(base + ["--steps", "3"]) == 0
    assert cli.main(base + ["--steps", "5"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 5 and 0.0 <= metrics["val_accuracy"] <= 1.0
    assert [r["step"] for r in _json_lines(out / "log.jsonl") if "loss" in r] == [1, 2, 3, 4, 5]
    assert "validation accuracy" in capsys.readouterr().out


def test_train_rejects_activation_for_gated_cells(tmp_path):
    with pytest.raises(SystemExit, match="--activation"):
        cli.main(["train", "--cell", "lstm", "--activation", "relu", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["train", "--task", "unknown"])


@pytest.mark.parametrize("flag, value", [
    ("--steps", "-5"), ("--steps", "0"), ("--lr", "0"), ("--lr", "nan"), ("--hidden", "0"),
    ("--clip", "-1"), ("--batch-size", "2.5"), ("--layers", "x"), ("--seq-len", "0"),
    ("--truncation", "-3"), ("--eval-every", "0"), ("--checkpoint-every", "0"), ("--seed", "-1"),
])
def test_train_rejects_bad_numbers_as_argparse_errors_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"jrnn train: error: argument {flag}: must be " in err and value in err


def test_train_accepts_the_boundary_values():
    args = cli.build_parser().parse_args(["train", "--clip", "0", "--seed", "0", "--steps", "1", "--lr", "1e-4"])
    assert (args.clip, args.seed, args.steps, args.lr) == (0.0, 0, 1, 1e-4)


def test_train_with_metrics_early_stopping_and_pool(tmp_path, capsys):
    """--metrics columns in the log and metrics.json, --early-stopping ends the run, --pool gives
    one output per sequence; compile time reported apart."""
    import jrnn

    out = tmp_path / "order"
    args = ["train", "--task", "temporal_order", "--cell", "gru", "--hidden", "4", "--steps", "40",
            "--batch-size", "4", "--seq-len", "12", "--eval-every", "2", "--metrics", "accuracy,top_2_accuracy",
            "--early-stopping", "1:accuracy", "--init", "torch", "--out", str(out), "--no-progress"]
    pooled = "pool" in getattr(jrnn.RNN, "__dataclass_fields__", {})
    if pooled:
        args += ["--pool", "mean"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "validation accuracy" in printed and "compilation" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["pool"] == ("mean" if pooled else None)
    assert metrics["config"]["init"] == "torch"
    assert {"train_accuracy", "val_accuracy", "train_top_2_accuracy", "val_top_2_accuracy"} <= set(metrics)
    assert metrics["compile_s"] > 0 and metrics["step_ms"] > 0
    lines = _json_lines(out / "log.jsonl")
    steps = [r for r in lines if "loss" in r]
    assert "compile_s" in steps[0] and all("accuracy" in r and "top_2_accuracy" in r for r in steps)
    evals = [r for r in lines if "eval_loss" in r]
    assert all("eval_accuracy" in r for r in evals)
    # patience 1 on accuracy: the run stops at the first evaluation that does not improve on the best
    accuracies = [r["eval_accuracy"] for r in evals]
    assert metrics["stopped_early"] is (metrics["steps"] < 40)
    if metrics["stopped_early"]:
        assert accuracies[-1] <= max(accuracies[:-1]) and "early stopping" in printed
    assert metrics["steps"] == evals[-1]["step"] == steps[-1]["step"]


def test_train_rejects_pool_on_every_step_tasks_and_bad_flags(tmp_path):
    with pytest.raises(SystemExit, match="--pool needs a task scored once per sequence"):
        cli.main(["train", "--task", "sine", "--pool", "mean", "--steps", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--early-stopping must be PATIENCE"):
        cli.main(["train", "--early-stopping", "soon", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["train", "--init", "xavier", "--out", str(tmp_path)])
    flags = {s for a in _subparsers(cli.build_parser())["train"]._actions for s in a.option_strings}
    assert {"--pool", "--metrics", "--early-stopping", "--init"} <= flags


def test_metrics_json_is_strict_json_after_a_diverged_run(tmp_path):
    """A loss of inf or NaN used to be written as Infinity/NaN, which JSON readers reject."""
    path = tmp_path / "metrics.json"
    cli._write_json(str(path), {"loss": float("inf"), "history": [1.0, float("nan"), np.float32(2.5)],
                                "steps": np.int64(3), "curve": np.array([0.5, np.inf]), "ok": True})
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data == {"loss": None, "history": [1.0, None, 2.5], "steps": 3, "curve": [0.5, None], "ok": True}



TRAIN_SMALL = ["train", "--task", "adding", "--cell", "gru", "--hidden", "4", "--batch-size", "4",
               "--seq-len", "6", "--eval-every", "2", "--no-progress"]


def test_a_new_checkpoint_dir_starts_a_new_log_in_an_old_out(tmp_path, capsys):
    """--out D --checkpoint-dir NEW used to append to the earlier run's D/log.jsonl."""
    out = tmp_path / "out"
    assert cli.main(TRAIN_SMALL + ["--steps", "3", "--out", str(out), "--checkpoint-dir", str(tmp_path / "a")]) == 0
    assert cli.main(TRAIN_SMALL + ["--steps", "2", "--out", str(out), "--checkpoint-dir", str(tmp_path / "b")]) == 0
    assert [r["step"] for r in _json_lines(out / "log.jsonl") if "loss" in r] == [1, 2]
    # the same checkpoint dir again resumes, and the log goes on
    assert cli.main(TRAIN_SMALL + ["--steps", "4", "--out", str(out), "--checkpoint-dir", str(tmp_path / "b")]) == 0
    assert [r["step"] for r in _json_lines(out / "log.jsonl") if "loss" in r] == [1, 2, 3, 4]


@pytest.mark.parametrize("command", ["demo", "train"])
def test_out_holding_a_users_files_is_refused_and_left_alone(tmp_path, command):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "log.jsonl").write_text("my own log\n")
    (out / "metrics.json").write_text("{}\n")
    args = ["demo", "--steps", "2", "--hidden", "4", "--series-length", "200", "--no-progress"] \
        if command == "demo" else TRAIN_SMALL + ["--steps", "2"]
    with pytest.raises(SystemExit, match=r"--out .* holds log.jsonl, metrics.json, not written by a jrnn run"):
        cli.main(args + ["--out", str(out)])
    assert (out / "log.jsonl").read_text() == "my own log\n" and (out / "metrics.json").read_text() == "{}\n"
    # a folder of a jrnn run is replaced by the next run
    assert cli.main(args + ["--out", str(tmp_path / "run")]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "run")]) == 0


def test_train_with_other_settings_on_a_checkpoint_is_refused_unless_asked(tmp_path):
    base = TRAIN_SMALL + ["--out", str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ck")]
    assert cli.main(base + ["--steps", "2", "--lr", "0.01"]) == 0
    with pytest.raises(SystemExit, match="jrnn train: error: --checkpoint-dir .*another run.*the optimizer.*--no-resume-check"):
        cli.main(base + ["--steps", "3", "--lr", "0.02"])
    with pytest.warns(UserWarning, match="the optimizer"):
        assert cli.main(base + ["--steps", "3", "--lr", "0.02", "--no-resume-check"]) == 0


@pytest.mark.slow
def test_ctrl_c_during_train_saves_a_checkpoint_and_exits_with_one_line(tmp_path):
    import os
    import signal
    import time

    out, ck = tmp_path / "out", tmp_path / "ck"
    args = [sys.executable, "-m", "jrnn.cli"] + TRAIN_SMALL + [
        "--steps", "1000000", "--checkpoint-every", "1000000", "--out", str(out), "--checkpoint-dir", str(ck)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # the child gets Python's default Ctrl-C handling even where the runner ignores SIGINT (a
    # background job of a non-interactive shell does, and a child inherits an ignored signal)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            log = out / "log.jsonl"
            if log.exists() and len(log.read_text().splitlines()) >= 20:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    step = int(last.split("interrupted after step ")[1].split(";")[0])
    assert step >= 10 and f"checkpoint saved in {ck}" in last
    assert (ck / str(step)).is_dir()
    # the same command resumes from there
    again = subprocess.run(args[:-8] + ["--steps", str(step + 2), "--checkpoint-every", "1000000", "--out", str(out),
                                        "--checkpoint-dir", str(ck)], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "metrics.json").read_text())["steps"] == step + 2
