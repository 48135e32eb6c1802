"""The ``jrnn`` command.

::

    jrnn demo [--out DIR]            the seed's experiment: a 3-layer tanh RNN learns a noisy sum
                                     of sines and cosines (Adagrad, clipping, 600 iterations)
    jrnn train --task adding ...     any task or data set, cell, optimizer and training option
    jrnn bench [--quick] ...         the benchmark suite of a source checkout (python -m benchmarks)

Each subcommand is a pair of functions in :data:`COMMANDS`: ``configure(parser)`` adds its flags
to an ``argparse`` subparser and ``run(args) -> int`` does the work. ``demo`` and ``train`` write
their results into an output directory: ``metrics.json``, ``log.jsonl`` (one line per step, from
``jrnn.train.fit``) and ``loss_curve.png`` (plus ``predictions.png`` for the demo), with
matplotlib's Agg canvas so no display is needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np

__all__ = ["COMMANDS", "TASKS", "build_parser", "main"]


# ----------------------------------------------------------------------------------------------
# Problems: what to train on
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Problem:
    """Data and loss of one task: ``train`` is a tuple (minibatched by ``batch_size``) or a
    callable ``(key) -> batch``; ``train_eval`` and ``val`` are fixed tuples scored at the end;
    ``baselines`` are the losses of input-blind predictors, to compare against."""

    train: Any
    batch_size: int | None
    train_eval: tuple
    val: tuple
    loss: str
    input_size: int
    output_size: int
    baselines: dict
    note: str = ""


EVAL_SIZE = 256


def _synthetic(task: Callable, loss: str, classes: int | None, baselines: Callable[[int], dict], note: str):
    """A task of ``jrnn.tasks``: a fresh batch every step; fixed sets to score train and
    validation loss at the end. ``classes`` is the number of logits for cross-entropy tasks."""

    def build(args, key, seq_len):
        import jax

        k_train, k_val = jax.random.split(key)
        train_eval = tuple(np.asarray(a) for a in task(k_train, EVAL_SIZE, seq_len))
        val = tuple(np.asarray(a) for a in task(k_val, EVAL_SIZE, seq_len))
        batch_size = args.batch_size

        def train(step_key):
            return task(step_key, batch_size, seq_len)

        outputs = classes if classes is not None else val[1].shape[-1]
        return Problem(
            train, None, train_eval, val, loss, val[0].shape[-1], outputs, baselines(seq_len), note
        )

    return build


def _series(load: Callable[[], np.ndarray], note: str):
    """A real series for next-value prediction: z-scored with the training part's statistics,
    cut into windows of ``seq_len`` by ``jrnn.datasets.windows`` (validation strictly later)."""

    def build(args, key, seq_len):
        from jrnn import datasets

        series = np.asarray(load(), np.float64)
        n_train = len(series) - round(0.2 * len(series))
        mean, std = series[:n_train].mean(), series[:n_train].std()
        series = ((series - mean) / std).astype(np.float32)
        train, val = datasets.windows(series, seq_len, val_fraction=0.2)
        baselines = {
            "predict_mean_mse": float(np.mean(val[1] ** 2)),
            "repeat_last_value_mse": float(np.mean((val[0][:, -1] - val[1]) ** 2)),
        }
        return Problem(train, args.batch_size, train, val, "mse", 1, 1, baselines,
                       f"{note}; values z-scored with the training part's mean {mean:.4g} and std {std:.4g}")

    return build


def _digits(args, key, seq_len):
    import jax

    from jrnn import datasets

    xs, labels = datasets.digits()
    order = np.asarray(jax.random.permutation(key, len(xs)))
    n_val = len(xs) // 5
    val = (xs[order[:n_val]], labels[order[:n_val]])
    train = (xs[order[n_val:]], labels[order[n_val:]])
    return Problem(train, args.batch_size, train, val, "cross_entropy", 8, 10,
                   {"chance_cross_entropy": math.log(10), "chance_accuracy": 0.1},
                   "scikit-learn digits, 8 rows of 8 pixels per image, class at the last step; 20% held out")


def _tasks_table() -> dict:
    from jrnn import datasets, tasks

    return {
        "sine": (_synthetic(tasks.sine, "mse", None, lambda T: {
            "predict_mean_mse": tasks.SINE_BASELINE_MSE, "noise_floor_mse": tasks.SINE_NOISE_FLOOR_MSE,
        }, "next value of the noisy sum of sines and cosines, every step"), 50),
        "timing": (_synthetic(tasks.timing, "mse", None, lambda T: {
            "best_constant_mse": tasks.timing_baseline_mse(),
        }, "timing task: 0.5 for 10*u2 steps after each trigger pulse, every step"), 200),
        "adding": (_synthetic(tasks.adding, "mse", None, lambda T: {
            "best_constant_mse": tasks.ADDING_BASELINE_MSE,
        }, "adding problem: sum of the two marked values, last step"), 100),
        # copy_memory's labels are the 8 symbols and the blank (8); one logit per input symbol
        "copy": (_synthetic(tasks.copy_memory, "cross_entropy", 10, lambda T: {
            "memoryless_cross_entropy": tasks.copy_memory_baseline(T),
        }, "copy memory: reproduce 10 symbols after a lag of --seq-len steps, every step"), 20),
        "temporal_order": (_synthetic(tasks.temporal_order, "cross_entropy", 4, lambda T: {
            "chance_cross_entropy": tasks.TEMPORAL_ORDER_BASELINE_CE,
            "chance_accuracy": tasks.TEMPORAL_ORDER_BASELINE_ACCURACY,
        }, "temporal order: classify the order of two relevant symbols, last step"), 100),
        "sunspots": (_series(lambda: datasets.sunspots()[1],
                             "yearly sunspot numbers 1700-2008, next year"), 20),
        "aapl": (_series(lambda: datasets.aapl().log_returns,
                         "AAPL monthly log returns 2000-2010, next month"), 12),
        "digits": (_digits, 8),
    }


TASKS = ("sine", "timing", "adding", "copy", "temporal_order", "sunspots", "aapl", "digits")
"""Task names of ``jrnn train --task`` (built lazily, so ``--help`` needs no data packages)."""


# ----------------------------------------------------------------------------------------------
# Shared: evaluation, plots, files
# ----------------------------------------------------------------------------------------------


def _evaluate(model, params, data: tuple, loss: str, metrics: tuple = ()) -> dict:
    """Loss (and accuracy for classification, and any ``metrics``) of ``params`` on a fixed set,
    by ``jrnn.train.evaluate``."""
    from jrnn.train import evaluate

    metrics = tuple(metrics)
    if loss == "cross_entropy" and "accuracy" not in metrics:
        metrics = ("accuracy", *metrics)
    return evaluate(model, params, data, loss=loss, metrics=metrics)


def _figure(width=7.0, height=4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_loss_curve(history: dict, path: str, *, loss: str, baselines: dict | None = None, title: str = ""):
    """Training loss per step and validation loss at each evaluation, log scale when positive."""
    fig = _figure()
    ax = fig.add_subplot()
    train = history["train"]
    ax.plot(train["step"], train["loss"], lw=0.8, alpha=0.8, label="train (minibatch)")
    if history["eval"]["step"]:
        ax.plot(history["eval"]["step"], history["eval"]["loss"], "o-", ms=4, label="validation")
    for i, (name, value) in enumerate((baselines or {}).items()):
        if "accuracy" not in name:
            ax.axhline(value, ls="--", lw=0.8, color=f"C{i + 2}", label=name.replace("_", " "))
    values = [v for v in train["loss"] if v is not None and math.isfinite(v)]
    if values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(loss)
    ax.set_title(title)
    ax.legend()
    fig.savefig(path, dpi=120)


def _plain(value):
    """``value`` as strict JSON: NumPy/JAX scalars and arrays as numbers and lists, a float that
    is not finite (a diverged run's loss) as null, anything else unknown as its string."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _plain(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _write_json(path: str, obj: dict) -> None:
    """Write ``obj`` as strict JSON (no ``NaN``/``Infinity``: those become null), atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(_plain(obj), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


OUTPUT_FILES = ("log.jsonl", "metrics.json", "loss_curve.png", "predictions.png")
OUTPUT_MARKER = ".jrnn-output"
"""Written into every ``--out`` folder: its ``OUTPUT_FILES`` are a run's, and the next run may
replace them."""


def _prepare_out(out: str, command: str) -> None:
    """Create ``--out``, refusing (exit 2) a folder that holds files of ours by name that no jrnn
    run wrote (a user's own ``log.jsonl`` or ``metrics.json`` would be replaced)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise SystemExit(f"jrnn {command}: error: --out must be a directory, got {out!r}, an existing file")
    if os.path.isdir(out) and not os.path.exists(os.path.join(out, OUTPUT_MARKER)):
        theirs = [name for name in OUTPUT_FILES if os.path.exists(os.path.join(out, name))]
        if theirs:
            raise SystemExit(
                f"jrnn {command}: error: --out {out!r} holds {', '.join(theirs)}, not written by a "
                f"jrnn run, which this run would replace; choose another --out or move them away"
            )
    try:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, OUTPUT_MARKER), "w") as f:
            f.write("This folder holds the output of a jrnn demo or jrnn train run; the next run "
                    "with this --out replaces it.\n")
    except OSError as err:
        raise SystemExit(f"jrnn {command}: error: --out {out!r} cannot be written ({err.strerror or err})") from err


def _fresh_log(out: str, resume: bool) -> str:
    path = os.path.join(out, "log.jsonl")
    if not resume and os.path.exists(path):
        os.remove(path)  # a new run starts a new log; a resumed one is trimmed and extended by fit
    return path


def _interrupted(command: str, err) -> int:
    """The one line for Ctrl-C during ``fit``; exit status 130 (as a shell reports SIGINT)."""
    where = (f"; checkpoint saved in {err.checkpoint_dir}: run the same command to resume"
             if err.checkpoint_dir else " (no --checkpoint-dir: nothing saved)")  # fmt: skip
    print(f"jrnn {command}: interrupted after step {err.result.step}{where}", file=sys.stderr)
    return 130


def _step_counts(history: dict) -> dict:
    train = history["train"]
    return {"clipped_steps": sum(map(bool, train["clipped"])),
            "nonfinite_steps": sum(not f for f in train["finite"])}


# ----------------------------------------------------------------------------------------------
# jrnn demo
# ----------------------------------------------------------------------------------------------

DEMO = dict(steps=600, hidden=32, layers=3, batch_size=128, lr=0.1, clip=1.0, window=10,
            series_length=5000, seed=0)
"""The demo's settings: the seed's 3-layer tanh RNN with 10 past values predicting the next,
Adagrad (cosine-decayed step size) with global-norm clipping, 600 iterations."""


def configure_demo(parser: argparse.ArgumentParser) -> None:
    """Train the seed's RNN on a noisy sum of sines and cosines (CPU, under a minute)."""
    parser.description = (
        "The seed's experiment in one command. A 3-layer tanh RNN (hidden size "
        f"{DEMO['hidden']}) reads windows of {DEMO['window']} consecutive samples of the noisy "
        "series sin(pi t/3) + cos(pi t/3) + sin(pi t/1.5) + U(-0.05, 0.05) (jrnn.tasks.sine_series, "
        f"{DEMO['series_length']} samples 0.01 apart) and predicts the next sample. The last 20% of "
        "the series (strictly later in time) is the validation set. Training: Adagrad with a "
        f"cosine-decayed step size from {DEMO['lr']}, gradients clipped to global norm "
        f"{DEMO['clip']}, {DEMO['steps']} iterations of {DEMO['batch_size']} windows. Prints the "
        "train and validation MSE next to the series' variance and writes loss_curve.png, "
        "predictions.png, metrics.json and log.jsonl into DIR."
    )
    parser.add_argument("--out", default="jrnn-demo", metavar="DIR",
                        help="output directory (default: ./jrnn-demo)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    # Hidden overrides for quick smoke tests; the defaults are the real demo.
    for name in ("steps", "hidden", "batch_size", "series_length", "seed"):
        flag = f"--{name.replace('_', '-')}"
        parser.add_argument(flag, type=int, default=DEMO[name], help=argparse.SUPPRESS)


def run_demo(args) -> int:
    t0 = time.perf_counter()
    import jax

    import jrnn
    from jrnn import datasets, tasks
    from jrnn.optim import make_optimizer
    from jrnn.train import FitInterrupted, fit

    _prepare_out(args.out, "demo")
    k_series, k_init, k_fit = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    series = np.asarray(tasks.sine_series(k_series, args.series_length))
    train, val = datasets.windows(series, DEMO["window"], val_fraction=0.2)

    cell = jrnn.VanillaCell(args.hidden, activation="tanh")
    model = jrnn.RNN(cell, num_layers=DEMO["layers"], output_size=1)
    params = jax.jit(model.init, static_argnums=1)(k_init, 1)
    optimizer = make_optimizer("adagrad", DEMO["lr"], schedule="cosine",
                               decay_steps=args.steps)
    try:
        result = fit(
            model, params, optimizer, train, steps=args.steps, batch_size=min(args.batch_size, len(train[0])),
            eval_data=val, eval_every=max(1, args.steps // 6), log_path=_fresh_log(args.out, False),
            progress=not args.no_progress, key=k_fit,
        )
    except FitInterrupted as err:
        return _interrupted("demo", err)
    train_mse = _evaluate(model, result.params, train, "mse")["loss"]
    val_mse = _evaluate(model, result.params, val, "mse")["loss"]
    preds = np.asarray(jax.jit(lambda p, x: model.apply(p, x)[0])(result.params, val[0]))[:, -1, 0]
    baselines = {
        "series_variance": float(series.var()),
        "repeat_last_value_mse": float(np.mean((val[0][:, -1] - val[1]) ** 2)),
        "noise_floor_mse": tasks.SINE_NOISE_FLOOR_MSE,
    }
    wall = time.perf_counter() - t0

    fig = _figure(8, 4)
    ax = fig.add_subplot()
    first_target = len(series) - round(0.2 * len(series)) + DEMO["window"]  # index of val[1][0]
    t = (first_target + np.arange(len(val[1]))) * tasks.SINE_SAMPLE_GAP
    ax.plot(t, val[1][:, 0], lw=1.0, color="0.6", label="truth (noisy series)")
    ax.plot(t, preds, lw=1.2, color="C3", label="RNN prediction of the next value")
    ax.set_xlabel("time")
    ax.set_title(f"validation, strictly after the training part: MSE {val_mse:.2e}")
    ax.legend()
    fig.savefig(os.path.join(args.out, "predictions.png"), dpi=120)
    plot_loss_curve(result.history, os.path.join(args.out, "loss_curve.png"), loss="mse",
                    baselines={"repeat last value": baselines["repeat_last_value_mse"],
                               "noise floor": baselines["noise_floor_mse"]},
                    title="jrnn demo: 3-layer tanh RNN, Adagrad + clipping")
    metrics = {
        "command": "demo",
        "train_mse": train_mse,
        "val_mse": val_mse,
        **baselines,
        "steps": result.step,
        **_step_counts(result.history),
        "wall_time_s": round(wall, 2),
        "device": str(jax.devices()[0]),
        "config": {
            **DEMO,
            **{k: getattr(args, k) for k in ("steps", "hidden", "batch_size", "series_length", "seed")},
            "cell": "vanilla", "activation": "tanh", "optimizer": "adagrad", "schedule": "cosine",
        },
    }
    _write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(f"train MSE       {train_mse:.3e}")
    print(f"validation MSE  {val_mse:.3e}")
    print(f"variance of the series {baselines['series_variance']:.4f} (the MSE of predicting its mean); "
          f"repeating the last value {baselines['repeat_last_value_mse']:.3e}; "
          f"noise floor {baselines['noise_floor_mse']:.1e}")
    print(f"{result.step} steps in {wall:.1f} s; wrote loss_curve.png, predictions.png, metrics.json, "
          f"log.jsonl to {os.path.abspath(args.out)}")
    return 0


# ----------------------------------------------------------------------------------------------
# jrnn train
# ----------------------------------------------------------------------------------------------


def configure_train(parser: argparse.ArgumentParser) -> None:
    """Train an RNN on a synthetic task or a bundled data set."""
    parser.description = (
        "Train a jrnn.RNN with jrnn.train.fit and write metrics.json, log.jsonl and "
        "loss_curve.png into --out. Synthetic tasks draw a fresh batch every step; the data sets "
        "(sunspots, aapl, digits; need the 'data' extra) are split into train and validation "
        "parts and minibatched."
    )
    add = parser.add_argument
    add("--task", choices=TASKS, default="sine",
        help="sine: next value of the noisy sum of sines (every step); timing: the seed's timing "
             "task; adding: adding problem; copy: copy memory (--seq-len is the lag); "
             "temporal_order: temporal order classification; sunspots, aapl: next value of a "
             "real series (windows of --seq-len); digits: 8x8 digits read row by row "
             "(default: sine)")
    add("--cell", choices=("vanilla", "lstm", "gru", "mingru", "minlstm"), default="lstm",
        help="recurrent cell (default: lstm); mingru and minlstm are the parallel-in-time cells")
    add("--activation", choices=("tanh", "relu", "sigmoid", "linear"), default=None,
        help="activation of the vanilla cell (default: tanh; only with --cell vanilla)")
    add("--layers", type=POSITIVE_INT, default=1, help="number of stacked layers (default: 1)")
    add("--hidden", type=POSITIVE_INT, default=64, help="hidden size of each layer (default: 64)")
    add("--optimizer", choices=("sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"), default="adam",
        help="update rule of jrnn.optim.make_optimizer (default: adam)")
    add("--lr", type=POSITIVE_FLOAT, default=3e-3, help="learning rate (default: 3e-3)")
    add("--clip", type=NONNEGATIVE_FLOAT, default=1.0,
        help="clip gradients to this global norm before the update; 0 turns clipping off (default: 1.0)")
    add("--steps", type=POSITIVE_INT, default=1000, help="training steps (minibatches) (default: 1000)")
    add("--batch-size", type=POSITIVE_INT, default=32, help="sequences per step (default: 32)")
    add("--seq-len", type=POSITIVE_INT, default=None,
        help="sequence length: T of the synthetic tasks, the lag of copy, the window of "
             "sunspots/aapl; ignored by digits (default: the task's own, e.g. 50 for sine)")
    add("--truncation", type=POSITIVE_INT, default=None,
        help="truncated BPTT: chunks of this many steps, the state carried across chunks, one "
             "update per chunk (default: full BPTT)")
    add("--backward", choices=("autodiff", "bptt", "cudnn", "pallas"), default="bptt",
        help="gradient: the hand-written BPTT of jrnn.bptt or JAX autodiff (default: bptt, the "
             "same gradients, faster); on a GPU, cudnn (an LSTM through cuDNN) or pallas "
             "(jrnn's fused kernels), see jrnn.kernels")
    add("--pool", choices=("final", "last", "mean", "max", "flatten"), default=None,
        help="pool each sequence into one output before the readout (jrnn.RNN(pool=...)): for "
             "tasks scored once per sequence (adding, temporal_order, digits, sunspots, aapl) "
             "(default: none, one output per step)")
    add("--init", choices=("default", "torch", "keras"), default="default",
        help="initializer preset (model.init(key, D, init=...)): default, torch or keras (default: default)")
    add("--metrics", default=None, metavar="NAMES",
        help="comma-separated jrnn.metrics recorded at every step and evaluation and in "
             "metrics.json: accuracy, top_5_accuracy (classification), mse, mae, rmse (regression) "
             "(default: none; classification tasks report accuracy at the end anyway)")
    add("--early-stopping", default=None, metavar="PATIENCE[:METRIC]",
        help="stop after PATIENCE validation evaluations (every --eval-every steps) without "
             "improvement of METRIC (loss, or one of --metrics; default: loss)")
    add("--checkpoint-dir", default=None,
        help="save orbax checkpoints here and resume from the latest one if present (default: none)")
    add("--checkpoint-every", type=POSITIVE_INT, default=100, help="steps between checkpoints (default: 100)")
    add("--no-resume-check", action="store_true",
        help="resume a checkpoint even when it was written with other settings (learning rate, batch "
             "size, data, ...); by default that is an error naming what differs")
    add("--eval-every", type=POSITIVE_INT, default=100, help="steps between validation evaluations (default: 100)")
    add("--seed", type=NONNEGATIVE_INT, default=0, help="random seed for data, initialization and order (default: 0)")
    add("--out", default="jrnn-train", metavar="DIR", help="output directory (default: ./jrnn-train)")
    add("--no-progress", action="store_true", help="hide the progress bar")


def _bounded(kind: type, low: float, *, strict: bool):
    """An argparse ``type``: a ``kind`` (int or float) above ``low`` (``strict``) or at least
    ``low``, so that a bad flag is an argparse error naming it (exit status 2) before any work."""
    what = "an integer" if kind is int else "a number"
    bound = f"{'>' if strict else '>='} {low:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


POSITIVE_INT = _bounded(int, 0, strict=True)
NONNEGATIVE_INT = _bounded(int, 0, strict=False)
POSITIVE_FLOAT = _bounded(float, 0.0, strict=True)
NONNEGATIVE_FLOAT = _bounded(float, 0.0, strict=False)


def run_train(args) -> int:
    t0 = time.perf_counter()
    if args.activation is not None and args.cell != "vanilla":
        raise SystemExit(
            f"jrnn train: error: --activation applies to --cell vanilla only, got --cell {args.cell}"
        )
    import jax

    import jrnn
    from jrnn.optim import make_optimizer
    from jrnn.train import FitInterrupted, fit

    metrics = tuple(m.strip() for m in (args.metrics or "").split(",") if m.strip())
    stopping = _early_stopping(args.early_stopping)
    build, default_len = _tasks_table()[args.task]
    seq_len = default_len if args.seq_len is None else args.seq_len
    k_data, k_init, k_fit = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    problem = build(args, k_data, seq_len)
    every_step = np.ndim(problem.val[1]) == (3 if problem.loss == "mse" else 2)
    if args.pool is not None and every_step:
        raise SystemExit(
            f"jrnn train: error: --pool needs a task scored once per sequence (adding, "
            f"temporal_order, digits, sunspots, aapl); --task {args.task} scores every step"
        )

    _prepare_out(args.out, "train")
    from jrnn.train.checkpoint import holds_checkpoint

    resuming = holds_checkpoint(args.checkpoint_dir)  # the log of a new run starts empty
    model = _train_model(jrnn, args, problem.output_size, num_steps=int(np.shape(problem.val[0])[1]))
    params = jax.jit(model.init, static_argnums=1, static_argnames="init")(k_init, problem.input_size, init=args.init)
    clip = args.clip if args.clip and args.clip > 0 else None
    optimizer = make_optimizer(args.optimizer, args.lr, clip_norm=clip)  # clip once: fit reads it here
    try:
        result = fit(
            model, params, optimizer, problem.train, steps=args.steps, loss=problem.loss,
            truncation=args.truncation, backward=args.backward, batch_size=problem.batch_size,
            eval_data=problem.val, eval_every=args.eval_every, checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every, resume_check=not args.no_resume_check,
            metrics=metrics, early_stopping=stopping,
            log_path=_fresh_log(args.out, resuming), progress=not args.no_progress, key=k_fit,
        )
    except FitInterrupted as err:
        return _interrupted("train", err)
    except ValueError as err:  # the checkpoint directory's (in use, another run, damaged): one line
        message = str(err)
        if not message.startswith("checkpoint_dir"):
            raise
        message = "--checkpoint-dir" + message[len("checkpoint_dir"):]
        raise SystemExit(f"jrnn train: error: {message.replace('resume_check=False', '--no-resume-check')}") from err
    train_scores = _evaluate(model, result.params, problem.train_eval, problem.loss, metrics)
    val_scores = _evaluate(model, result.params, problem.val, problem.loss, metrics)
    wall = time.perf_counter() - t0
    timing = result.timing

    plot_loss_curve(result.history, os.path.join(args.out, "loss_curve.png"), loss=problem.loss,
                    baselines=problem.baselines,
                    title=f"jrnn train --task {args.task}: {args.layers}-layer {args.cell}, {args.optimizer}")
    metrics = {
        "command": "train",
        "task": args.task,
        "note": problem.note,
        "loss": problem.loss,
        "train_loss": train_scores["loss"],
        "val_loss": val_scores["loss"],
        **{f"{part}_{name}": scores[name] for name in val_scores if name != "loss"
           for part, scores in (("train", train_scores), ("val", val_scores))},
        "baselines": problem.baselines,
        "steps": result.step,
        "stopped_early": result.stopped_early,
        "best_eval": result.best,
        **_step_counts(result.history),
        "wall_time_s": round(wall, 2),
        "compile_s": round(timing["compile_s"], 3),
        "step_ms": None if timing["step_s"] is None else round(1e3 * timing["step_s"], 4),
        "device": str(jax.devices()[0]),
        "config": {k: v for k, v in vars(args).items() if k != "run"} | {"seq_len": seq_len},
    }
    _write_json(os.path.join(args.out, "metrics.json"), metrics)
    name = "MSE" if problem.loss == "mse" else "cross-entropy"
    print(f"train {name}       {train_scores['loss']:.4g}")
    print(f"validation {name}  {val_scores['loss']:.4g}")
    for name in (n for n in val_scores if n != "loss"):
        print(f"validation {name.replace('_', ' ')}  {val_scores[name]:.4g}")
    print("baselines: " + ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in problem.baselines.items()))
    if result.stopped_early:
        best = result.best
        print(f"early stopping after step {result.step}; best validation {best['metric']} "
              f"{best['value']:.4g} at step {best['step']}")
    step_ms = "" if timing["step_s"] is None else f", {1e3 * timing['step_s']:.3g} ms per step"
    print(f"{result.step} steps in {wall:.1f} s (compilation {timing['compile_s']:.1f} s{step_ms}); wrote "
          f"loss_curve.png, metrics.json, log.jsonl to {os.path.abspath(args.out)}")
    return 0


def _early_stopping(value: str | None):
    """``PATIENCE[:METRIC]`` -> ``jrnn.train.EarlyStopping`` (None for None)."""
    if value is None:
        return None
    from jrnn.train import EarlyStopping

    patience, _, metric = value.partition(":")
    try:
        return EarlyStopping(int(patience), metric=metric or "loss")
    except ValueError:
        raise SystemExit(f"jrnn train: error: --early-stopping must be PATIENCE[:METRIC] with PATIENCE a "
                         f"positive int, got {value!r}") from None


def _train_model(jrnn, args, output_size: int, num_steps: int):
    """The ``jrnn.RNN`` of ``jrnn train``: ``--cell``, ``--activation``, ``--init``, ``--layers``,
    ``--hidden``, ``--pool`` (``"flatten"`` with the task's fixed ``num_steps``)."""
    cell_kwargs = {"activation": args.activation or "tanh"} if args.cell == "vanilla" else {}
    cell = jrnn.make_cell(args.cell, args.hidden, **cell_kwargs)
    rnn_kwargs = {} if args.pool is None else {"pool": args.pool}
    if args.pool == "flatten":
        rnn_kwargs["num_steps"] = num_steps
    return jrnn.RNN(cell, num_layers=args.layers, output_size=output_size, **rnn_kwargs)


# ----------------------------------------------------------------------------------------------
# The command table and main
# ----------------------------------------------------------------------------------------------

_BENCH_NAMES = ("speed", "roofline", "memory", "compile", "scaling", "quality", "gpu", "fit_overhead")
"""The benchmarks of ``python -m benchmarks`` (``benchmarks.runner.BENCHMARKS``), for the help."""


def _bench_checkout():
    """Where a source checkout holding ``benchmarks/`` would be: the folder above the ``jrnn``
    package (true of an editable install; for a wheel it is ``site-packages``)."""
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


def configure_bench(parser: argparse.ArgumentParser) -> None:
    """Benchmarks against PyTorch, Flax, Equinox and a NumPy hand BPTT (JSON, markdown, PNG)."""
    parser.description = (
        "Run the benchmark suite of a source checkout: python -m benchmarks in the checkout that "
        "holds this jrnn (an editable install), with these options. An installed wheel has no "
        "benchmarks; clone the repository to run them."
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test (minutes at most)")
    parser.add_argument("--only", default=None, metavar="NAMES",
                        help=f"comma-separated benchmarks to run (default: all): {', '.join(_BENCH_NAMES)}")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output directory (default: benchmarks/results/local, or "
                             "benchmarks/results/quick with --quick; neither is committed)")
    parser.add_argument("--update-results", action="store_true",
                        help="write into the committed benchmarks/results instead")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_bench(args) -> int:
    import subprocess

    root = _bench_checkout()
    if not (root / "benchmarks" / "runner.py").is_file():
        print("jrnn bench: the benchmark suite needs a source checkout of jrnn (git clone the "
              "repository, then run python -m benchmarks in it); this jrnn is installed without one",
              file=sys.stderr)
        return 2
    argv = [sys.executable, "-m", "benchmarks"]
    if args.quick:
        argv.append("--quick")
    if args.only is not None:
        argv += ["--only", args.only]
    if args.out is not None:
        argv += ["--out", os.path.abspath(args.out)]  # relative to where jrnn bench was called
    if args.update_results:
        argv.append("--update-results")
    if args.no_progress:
        argv.append("--no-progress")
    return subprocess.run(argv, cwd=root).returncode


COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "demo": (configure_demo, run_demo),
    "train": (configure_train, run_train),
    "bench": (configure_bench, run_bench),
}
"""Subcommand name -> ``(configure(parser), run(args) -> exit status)``; the first line of
``configure``'s docstring is the subcommand's one-line help."""


def build_parser() -> argparse.ArgumentParser:
    """The ``jrnn`` parser: one subcommand per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="jrnn", description="Recurrent neural networks in JAX: demo, training and benchmarks."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (configure, run) in COMMANDS.items():
        summary = (configure.__doc__ or "").strip().splitlines()[0] if configure.__doc__ else ""
        sub = commands.add_parser(name, help=summary, description=summary)
        configure(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jrnn`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
