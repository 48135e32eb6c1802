"""Quality: do the tasks train to their bars, how long does it take, against chance baselines?

Each task of ``jrnn.tasks`` is trained with ``jrnn.train.fit`` on fresh batches every step
(infinite data, as in the papers) and scored on a fixed held-out batch every ``eval_every``
steps. Reported: the chance baseline (the best input-blind predictor, from ``jrnn.tasks``), the
bar, the final held-out loss, the first step and the wall time at which the held-out loss went
below the bar (training time, compilation excluded: the time at that step minus the time of the
first step, which holds the compilation).

Bars:

* adding (T=100): MSE ≤ 0.01, Hochreiter & Schmidhuber (1997)'s stopping criterion (average
  training error below 0.01), against the baseline 1/6 of always predicting 1.
* copy memory (lag 20, 8 symbols, copy length 10): cross-entropy ≤ 10% of the memoryless
  baseline ``10 ln 8 / (T + 20)`` of Arjovsky, Shah & Bengio (2016). Trained with a GRU of 128
  units: LSTMs of 64 and 128 units did not reach the bar in 1500 to 8000 steps (best held-out
  loss 0.13 to 0.45 against the bar 0.052, Adam 3e-3 or 1e-2), a GRU of 64 units reached it
  after 6100 steps, one of 128 after 1600 (2026-11-24, this CPU).
* timing (the seed's task, T=100): MSE ≤ 10% of the best constant prediction's MSE.
* sine (the seed's next-step prediction, T=50): MSE ≤ 0.01, about 0.7% of the baseline of
  predicting the mean (the noise floor is 8.3e-4).

Then the rows of the studies of notebooks 06 (memory horizon of RNN, LSTM, GRU, minGRU and
minLSTM) and 07 (the seeds' experiments: timing, sine, AAPL against AR(1), sunspots against
AR(9)), redone with the notebooks' protocols by ``benchmarks.quality_studies`` (``--no-studies``
skips them; in full mode they take most of the time: the memory-horizon study alone took 34
minutes of CPU time on 2 cores in notebook 06).

    python -m benchmarks.quality [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common

TASKS = {
    "adding": dict(loss="mse", cell="lstm", hidden=64, batch=64, lr=3e-3, steps=3000, eval_every=100,
                   seq_len=100, bar_source="Hochreiter & Schmidhuber 1997: training MSE below 0.01"),
    "copy_memory": dict(loss="cross_entropy", cell="gru", hidden=128, batch=64, lr=1e-2, steps=3000, eval_every=50,
                        lag=20, bar_source="10% of the memoryless baseline of Arjovsky et al. 2016"),
    "timing": dict(loss="mse", cell="lstm", hidden=32, batch=32, lr=1e-2, steps=1500, eval_every=50,
                   seq_len=100, bar_source="10% of the best constant prediction's MSE"),
    "sine": dict(loss="mse", cell="lstm", hidden=32, batch=32, lr=1e-2, steps=800, eval_every=50,
                 seq_len=50, bar_source="MSE 0.01 (0.7% of the predict-the-mean baseline)"),
}
QUICK_OVERRIDES = dict(steps=30, eval_every=10, hidden=8, batch=8)
QUICK_LENGTHS = {"adding": dict(seq_len=10), "copy_memory": dict(lag=5), "timing": dict(seq_len=20), "sine": dict(seq_len=10)}
EVAL_SIZE = 512


def task_data(name: str, spec: dict[str, Any]):
    """``(sample(key) -> (xs, targets), baseline, bar, input_size, output_size)`` for a task."""
    from jrnn import tasks

    if name == "adding":
        T = spec["seq_len"]
        return (lambda k, n: tasks.adding(k, n, T)), tasks.ADDING_BASELINE_MSE, 0.01, 2, 1
    if name == "copy_memory":
        lag, K = spec["lag"], 8
        baseline = tasks.copy_memory_baseline(lag, K)
        return (lambda k, n: tasks.copy_memory(k, n, lag, K)), baseline, 0.1 * baseline, K + 2, K + 1
    if name == "timing":
        T = spec["seq_len"]
        baseline = tasks.timing_baseline_mse()
        return (lambda k, n: tasks.timing(k, n, T)), baseline, 0.1 * baseline, 2, 1
    if name == "sine":
        T = spec["seq_len"]
        return (lambda k, n: tasks.sine(k, n, T)), tasks.SINE_BASELINE_MSE, 0.01, 1, 1
    raise ValueError(f"unknown task {name!r}")


def train_task(name: str, spec: dict[str, Any], *, backward: str = "bptt", seed: int = 0) -> dict[str, Any]:
    import jax

    import jrnn
    from jrnn.optim import make_optimizer
    from jrnn.train import fit

    sample, baseline, bar, d_in, d_out = task_data(name, spec)
    model = jrnn.RNN(jrnn.make_cell(spec["cell"], spec["hidden"]), output_size=d_out)
    k_init, k_eval, k_fit = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = model.init(k_init, d_in)
    eval_data = sample(k_eval, EVAL_SIZE)
    optimizer = make_optimizer("adam", spec["lr"])
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.jsonl"
        t0 = time.perf_counter()
        result = fit(model, params, optimizer, lambda key: sample(key, spec["batch"]), steps=spec["steps"],
                     loss=spec["loss"], backward=backward, eval_data=eval_data, eval_every=spec["eval_every"],
                     log_path=log, progress=False, key=k_fit)
        total = time.perf_counter() - t0
        records = [json.loads(line) for line in log.read_text().splitlines()]
    times = {r["step"]: r["time"] for r in records if "time" in r}
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    reached = next(((s, v) for s, v in evals if v is not None and v <= bar), None)
    first = times.get(1, 0.0)
    return {
        "task": name,
        "spec": spec,
        "backward": backward,
        "baseline": baseline,
        "bar": bar,
        "bar_source": spec["bar_source"],
        "final_eval_loss": evals[-1][1] if evals else None,
        "best_eval_loss": min((v for _, v in evals if v is not None), default=None),
        "reached": reached is not None,
        "steps_to_bar": reached[0] if reached else None,
        "time_to_bar_s": (times[reached[0]] - first) if reached else None,
        "first_step_s": first,
        "train_time_s": (times[max(times)] - first) if times else None,
        "total_s": total,
        "eval_curve": evals,
        "steps": result.step,
    }


def run(
    out_dir: Path, *, quick: bool = False, backwards=("bptt",), show_progress: bool = True, studies: bool = True
) -> dict[str, Any]:
    missing = []
    try:
        import jrnn.tasks  # noqa: F401
    except ImportError:
        missing.append("jrnn.tasks")
    try:
        from jrnn.train import fit  # noqa: F401
    except ImportError:
        missing.append("jrnn.train.fit")
    env = common.environment()
    result = {
        "benchmark": "quality",
        "question": "tasks trained to their bars: time to reach them, next to chance baselines",
        "command": env["command"],
        "environment": env,
        "quick": quick,
        "missing": missing,
        "rows": [],
        "studies": [],
    }
    if not missing:
        jobs = [(name, b) for name in TASKS for b in backwards]
        for name, backward in common.progress(jobs, "quality", enabled=show_progress):
            spec = dict(TASKS[name])
            if quick:
                spec.update(QUICK_OVERRIDES, **QUICK_LENGTHS[name])
            try:
                result["rows"].append(train_task(name, spec, backward=backward))
            except Exception as e:  # noqa: BLE001 - one task failing must not hide the others
                result["rows"].append({"task": name, "backward": backward, "error": f"{type(e).__name__}: {e}"[:500]})
        if studies:
            from benchmarks import quality_studies

            for study in common.progress(list(quality_studies.STUDIES), "studies", enabled=show_progress):
                result["studies"].extend(quality_studies.run(quick, (study,)))
    common.write_outputs(out_dir, "quality", result, to_markdown(result), plot(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    out = [f"## Quality\n\n{common.device_line(result['environment'])}\n\nCommand: `{result['command']}`\n"]
    if result["missing"]:
        out.append("Not run: " + ", ".join(result["missing"]) + " not available in this checkout.")
        return "\n".join(out)
    if result["quick"]:
        out.append("Quick mode: tiny models and a few steps; bars are not expected to be reached.\n")
    rows = []
    for r in result["rows"]:
        if "error" in r:
            rows.append([r["task"], r["backward"], "error", r["error"], "", "", "", "", ""])
            continue
        s = r["spec"]
        size = ", ".join(f"{k}={s[k]}" for k in ("seq_len", "lag") if k in s)
        rows.append([
            r["task"], r["backward"], f"{s['cell']} H={s['hidden']} B={s['batch']} {size}",
            f"{r['baseline']:.4g}", f"{r['bar']:.4g}", f"{r['best_eval_loss']:.4g}" if r["best_eval_loss"] is not None else "–",
            r["steps_to_bar"] if r["reached"] else f"not in {r['steps']}",
            common.fmt_time(r["time_to_bar_s"]) if r["reached"] else "–", r["bar_source"],
        ])
    out.append(common.markdown_table(
        ["task", "backward", "model / data", "chance baseline", "bar", "best held-out loss", "steps to bar",
         "time to bar", "bar from"], rows))
    if result.get("studies"):
        from benchmarks import quality_studies

        out.append("\n## Studies (notebooks 06 and 07)\n")
        if result["quick"]:
            out.append("Quick mode: smoke-test sizes; the values mean nothing.\n")
        out.append(quality_studies.to_markdown(result["studies"]))
    return "\n".join(out)


def plot(result: dict[str, Any]):
    rows = [r for r in result["rows"] if "eval_curve" in r and r["eval_curve"]]
    if not rows:
        return []
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(3.8 * len(rows), 3.4), squeeze=False)
    for ax, r in zip(axes[0], rows):
        steps, losses = zip(*[(s, v) for s, v in r["eval_curve"] if v is not None])
        ax.semilogy(steps, losses, label="held-out loss")
        ax.axhline(r["baseline"], color="gray", ls="--", label="chance baseline")
        ax.axhline(r["bar"], color="green", ls=":", label="bar")
        ax.set(title=f"{r['task']} ({r['backward']})", xlabel="step")
        ax.legend(fontsize=7)
    return [("", fig)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backward", default="bptt", help="comma-separated: bptt (the training default), autodiff")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    parser.add_argument("--no-studies", action="store_true", help="skip the studies of notebooks 06 and 07")
    args = parser.parse_args(argv)
    result = run(args.out, quick=args.quick, backwards=tuple(args.backward.split(",")), studies=not args.no_studies)
    print(to_markdown(result))


if __name__ == "__main__":
    main()
