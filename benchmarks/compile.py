"""Compile: how long does jit take for a training gradient, against T, layers and ``unroll``?

``lax.scan`` compiles the step once, so compile time must not grow with T; it grows with the
number of layers (one scan each) and with ``unroll`` (copies of the step in the loop body). Each
point traces, lowers and compiles a fresh function (no cache hit) ``repeats`` times and reports
the medians of the two phases apart. The ``unroll`` sweep also times the compiled gradient, since
unrolling trades compile time for fewer loop iterations.

    python -m benchmarks.compile [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common

BASE = dict(cell="lstm", B=32, D=32, H=128, T=100, layers=1, unroll=1, backward="autodiff")
QUICK_BASE = dict(BASE, B=4, D=4, H=16, T=20)
SWEEPS = {"T": [10, 100, 1000, 10000], "layers": [1, 2, 4], "unroll": [1, 2, 4, 8, 16]}
QUICK_SWEEPS = {"T": [10, 1000], "layers": [1, 2], "unroll": [1, 4]}


def make(cell, B, D, H, T, layers, unroll, backward):
    import jax
    import jax.numpy as jnp

    import jrnn

    model = jrnn.RNN(jrnn.make_cell(cell, H), num_layers=layers)
    params = model.init(jax.random.PRNGKey(0), D)
    xs = jnp.ones((B, T, D), jnp.float32) * 0.1
    target = jnp.zeros((B, T, H), jnp.float32)

    def loss_fn(params, xs, target):  # a new function object each call: no jit cache hit
        ys, _ = model.apply(params, xs, unroll=unroll, backward=backward)
        return jnp.mean((ys - target) ** 2)

    return jax.jit(jax.value_and_grad(loss_fn)), (params, xs, target)


def compile_times(spec: dict[str, Any], repeats: int) -> dict[str, Any]:
    lower, compile_ = [], []
    compiled = args = None
    for _ in range(repeats):
        fn, args = make(**spec)
        t0 = time.perf_counter()
        lowered = fn.lower(*args)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        lower.append(t1 - t0)
        compile_.append(t2 - t1)
    return {
        "trace_lower_s": float(np.median(lower)),
        "compile_s": float(np.median(compile_)),
        "total_s": float(np.median(np.add(lower, compile_))),
        "samples": {"trace_lower_s": lower, "compile_s": compile_},
    }, compiled, args


def run(out_dir: Path, *, quick: bool = False, show_progress: bool = True) -> dict[str, Any]:
    from benchmarks.peers import jrnn_bptt_available

    base = QUICK_BASE if quick else BASE
    sweeps = QUICK_SWEEPS if quick else SWEEPS
    repeats = 1 if quick else 3
    backwards = ["autodiff"] + ([] if jrnn_bptt_available() else ["bptt"])
    points = [(axis, v, b) for b in backwards for axis, values in sweeps.items() for v in values]
    rows = []
    for axis, value, backward in common.progress(points, "compile", enabled=show_progress):
        spec = dict(base, **{axis: value}, backward=backward)
        times, compiled, args = compile_times(spec, repeats)
        row = {"axis": axis, "value": value, "backward": backward, "spec": spec, **times}
        if axis == "unroll":
            t = common.measure({"run": lambda c=compiled, a=args: common.block(c(*a))}, rounds=3 if quick else 7,
                               budget_s=2.0 if quick else 10.0)
            row["run_s"] = t["run"]["median_s"]
        rows.append(row)
    fits = {}
    for backward in backwards:
        pts = [(r["value"], r["total_s"]) for r in rows if r["axis"] == "T" and r["backward"] == backward]
        fits[backward] = common.fit_exponent(*zip(*pts))
    env = common.environment()
    result = {
        "benchmark": "compile",
        "question": "compile time of the training gradient vs T, layers and unroll (must not grow with T)",
        "command": env["command"],
        "environment": env,
        "base": base,
        "repeats": repeats,
        "rows": rows,
        "fit_vs_T": fits,
        "grows_with_T": {b: bool(f["exponent"] > 0.1) for b, f in fits.items()},
    }
    common.write_outputs(out_dir, "compile", result, to_markdown(result), plot(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    b = result["base"]
    out = [
        f"## Compile time\n\n{common.device_line(result['environment'])}\n\nCommand: `{result['command']}`\n",
        f"Training gradient (`jax.jit(jax.value_and_grad(loss))`) of an {b['cell'].upper()} network, "
        f"B={b['B']}, D={b['D']}, H={b['H']}; base point T={b['T']}, 1 layer, unroll=1; one axis varied at a "
        f"time. Median of {result['repeats']} fresh compilations; trace+lower and XLA compile apart.\n",
    ]
    for axis in ("T", "layers", "unroll"):
        rows = []
        for r in result["rows"]:
            if r["axis"] != axis:
                continue
            row = [r["backward"], r["value"], common.fmt_time(r["trace_lower_s"]), common.fmt_time(r["compile_s"]),
                   common.fmt_time(r["total_s"])]
            if axis == "unroll":
                row.append(common.fmt_time(r.get("run_s")))
            rows.append(row)
        header = ["backward", axis, "trace + lower", "compile", "total"] + (["steady-state run"] if axis == "unroll" else [])
        out.append(f"\n### vs {axis}\n\n" + common.markdown_table(header, rows))
    out.append("\nFitted `compile time ∝ T^p`: " + ", ".join(
        f"{k} p = {f['exponent']:.3f}" for k, f in result["fit_vs_T"].items())
        + " (|p| < 0.1: does not grow with T).")
    return "\n".join(out)


def plot(result: dict[str, Any]):
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, axis in zip(axes, ("T", "layers", "unroll")):
        run_ax = ax.twinx() if axis == "unroll" else None
        for backward in sorted({r["backward"] for r in result["rows"]}):
            pts = sorted((r["value"], r["total_s"]) for r in result["rows"] if r["axis"] == axis and r["backward"] == backward)
            ax.plot(*zip(*pts), "o-", label=f"{backward} compile")
            if run_ax is not None:
                pts = sorted((r["value"], 1e3 * r["run_s"]) for r in result["rows"] if r["axis"] == axis and r["backward"] == backward)
                run_ax.plot(*zip(*pts), "s--", alpha=0.7, label=f"{backward} run (ms, right)")
        ax.set(xlabel=axis, ylabel="compile seconds", title=f"vs {axis}")
        values = sorted({r["value"] for r in result["rows"] if r["axis"] == axis})
        if axis in ("T", "unroll"):
            ax.set_xscale("log")
        ax.set_xticks(values, [str(v) for v in values])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        if run_ax is not None:
            run_ax.set_ylim(bottom=0)
            run_ax.set_ylabel("steady-state run (ms)")
            run_ax.legend(fontsize=7, loc="lower right")
    return [("", fig)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)
    print(to_markdown(run(args.out, quick=args.quick)))


if __name__ == "__main__":
    main()
