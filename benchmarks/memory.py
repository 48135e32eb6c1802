"""Memory: how does the peak memory of one training gradient grow with T, for each backward?

For an LSTM layer at ``B=32, D=32, H=128`` and T up to 10000, with ``backward="autodiff"``,
``remat=True`` (autodiff that recomputes each step) and ``backward="bptt"`` (the hand-written
backward): the peak XLA plans for the compiled gradient (``compiled.memory_analysis()``:
arguments, outputs and the temporaries live at once, the same on every run), and, in full mode,
the peak growth of the process's resident memory while one gradient runs in a fresh subprocess
(sampled every 0.5 ms from ``/proc/self/statm``; Linux only). The
time per gradient is reported alongside, so the memory/time trade-off is visible.

    python -m benchmarks.memory [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import common

T_VALUES = [100, 300, 1000, 3000, 10000]
QUICK_T = [10, 40]
SHAPE = dict(B=32, D=32, H=128)
QUICK_SHAPE = dict(B=4, D=4, H=16)
MODES = {
    "autodiff": dict(backward="autodiff", remat=False),
    "remat": dict(backward="autodiff", remat=True),
    "bptt": dict(backward="bptt", remat=False),
}


def make_gradient(T: int, B: int, D: int, H: int, backward: str, remat: bool, cell: str = "lstm"):
    """The jitted training gradient and its arguments."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jrnn

    model = jrnn.RNN(jrnn.make_cell(cell, H))
    params = model.init(jax.random.PRNGKey(0), D)
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
    target = jnp.asarray(0.5 * rng.standard_normal((B, T, H)), jnp.float32)

    def loss_fn(params, xs, target):
        ys, _ = model.apply(params, xs, backward=backward, remat=remat)
        return jnp.mean((ys - target) ** 2)

    return jax.jit(jax.value_and_grad(loss_fn)), (params, xs, target)


def planned_peak(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")}
    # On CPU ``peak_memory_in_bytes`` counts arguments and outputs only; the temporaries block is
    # sized by buffer assignment to the largest set of temporaries live at once.
    out["peak_bytes"] = out["argument_size_in_bytes"] + out["output_size_in_bytes"] + out["temp_size_in_bytes"]
    return out


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rss_child(spec: str) -> None:
    """Run in a subprocess: compile, then run one gradient while a thread samples the resident
    memory every 0.5 ms; print the peak growth over the resident memory before the run."""
    import gc
    import threading
    import time

    import jax

    s = json.loads(spec)
    fn, args = make_gradient(**s)
    compiled = fn.lower(*args).compile()
    jax.block_until_ready(args)
    gc.collect()
    before = _current_rss()
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _current_rss())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    jax.block_until_ready(compiled(*args))
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _current_rss())
    print(json.dumps({"rss_growth_bytes": peak[0] - before, "rss_before_bytes": before}))


def measured_rss(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ)
    cmd = [sys.executable, "-c", f"from benchmarks.memory import _rss_child; _rss_child({json.dumps(json.dumps(spec))})"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT, env=env, timeout=900)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(out_dir: Path, *, quick: bool = False, show_progress: bool = True) -> dict[str, Any]:
    import time

    from benchmarks.peers import jrnn_bptt_available

    T_values = QUICK_T if quick else T_VALUES
    shape = QUICK_SHAPE if quick else SHAPE
    modes = dict(MODES)
    unavailable = {}
    if reason := jrnn_bptt_available():
        unavailable["bptt"] = reason
        modes.pop("bptt")
    rows = []
    for T in common.progress(T_values, "memory", enabled=show_progress):
        fns = {}
        for name, opts in modes.items():
            fn, args = make_gradient(T, **shape, **opts)
            t0 = time.perf_counter()
            compiled = fn.lower(*args).compile()
            row = {"T": T, "mode": name, "compile_s": time.perf_counter() - t0, **planned_peak(compiled)}
            if not quick and Path("/proc/self/statm").exists():
                row["measured"] = measured_rss({"T": T, **shape, **opts})
            rows.append(row)
            fns[name] = (lambda c=compiled, a=args: common.block(c(*a)))
        timings = common.measure(fns, rounds=3, budget_s=5.0 if quick else 60.0, min_rounds=2)
        for row in rows[-len(modes):]:
            row["time_s"] = timings[row["mode"]]["median_s"]
            row["timing"] = timings[row["mode"]]
    fits = {}
    for name in modes:
        pts = [(r["T"], r["peak_bytes"]) for r in rows if r["mode"] == name]
        if len(pts) >= 2:
            fits[name] = common.fit_exponent(*zip(*pts))
    env = common.environment()
    result = {
        "benchmark": "memory",
        "question": "peak memory of one training gradient vs T for autodiff, remat and bptt",
        "command": env["command"],
        "environment": env,
        "shape": {"cell": "lstm", "layers": 1, **shape, "dtype": "float32"},
        "unavailable": unavailable,
        "rows": rows,
        "fits": fits,
    }
    common.write_outputs(out_dir, "memory", result, to_markdown(result), plot(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    s = result["shape"]
    out = [
        f"## Memory\n\n{common.device_line(result['environment'])}\n\nCommand: `{result['command']}`\n",
        f"One training gradient of a {s['layers']}-layer LSTM, B={s['B']}, D={s['D']}, H={s['H']}, float32. "
        "`planned peak`: XLA's buffer assignment for the compiled gradient (arguments + outputs + live "
        "temporaries); `RSS growth`: measured growth of resident memory while one gradient runs in a "
        "fresh process (full mode only).\n",
    ]
    modes = sorted({r["mode"] for r in result["rows"]}, key=list(MODES).index)
    by = {(r["T"], r["mode"]): r for r in result["rows"]}
    header = ["T"] + [f"{m} planned peak" for m in modes] + [f"{m} time" for m in modes]
    if any("measured" in r for r in result["rows"]):
        header += [f"{m} RSS growth" for m in modes]
    rows = []
    for T in sorted({r["T"] for r in result["rows"]}):
        row = [T] + [common.fmt_bytes(by[(T, m)]["peak_bytes"]) for m in modes] + [common.fmt_time(by[(T, m)]["time_s"]) for m in modes]
        if "measured" in by[(T, modes[0])]:
            row += [common.fmt_bytes(by[(T, m)]["measured"].get("rss_growth_bytes")) for m in modes]
        rows.append(row)
    out.append(common.markdown_table(header, rows))
    fits = result["fits"]
    if fits:
        out.append("\nFitted growth of the planned peak, `peak ∝ T^p`: " + ", ".join(
            f"{m} p = {f['exponent']:.2f}" for m, f in fits.items()))
    for m, why in result["unavailable"].items():
        out.append(f"\n`{m}` not measured: {why}")
    return "\n".join(out)


def plot(result: dict[str, Any]):
    plt = common.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for m in MODES:
        pts = sorted((r["T"], r["peak_bytes"], r["time_s"]) for r in result["rows"] if r["mode"] == m)
        if not pts:
            continue
        T, peak, t = zip(*pts)
        a1.loglog(T, [p / 2**20 for p in peak], "o-", label=m)
        a2.loglog(T, t, "o-", label=m)
    a1.set(xlabel="T", ylabel="planned peak (MiB)", title="memory of one gradient")
    a2.set(xlabel="T", ylabel="seconds", title="time of one gradient")
    for a in (a1, a2):
        a.legend()
        a.grid(True, which="both", alpha=0.3)
    return [("", fig)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)
    print(to_markdown(run(args.out, quick=args.quick)))


if __name__ == "__main__":
    main()
