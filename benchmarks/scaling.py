"""Scaling: how does the time of one training gradient grow with T, B and H?

One axis at a time around ``B=32, T=100, D=32, H=128`` (a 1-layer LSTM), jrnn (``jrnn``: autodiff,
``jrnn-bptt``: the hand-written backward, the training default) and PyTorch timed interleaved at
every point (after checking that they agree), and the exponent ``p`` of
``time ∝ x^p`` fitted in log-log space. Ideal: ``p = 1`` in T; in B and H below the FLOP count's
1 and 2 while per-step overheads dominate, approaching them once the products are large.

    python -m benchmarks.scaling [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.peers import PEERS, Case, Unavailable, make_problem

BASE = dict(B=32, T=100, D=32, H=128)
QUICK_BASE = dict(B=4, T=20, D=4, H=16)
SWEEPS = {"T": [25, 50, 100, 200, 400, 800], "B": [8, 16, 32, 64, 128], "H": [32, 64, 128, 256, 512]}
QUICK_SWEEPS = {"T": [10, 40], "B": [2, 8], "H": [8, 32]}
PEER_NAMES = ["jrnn", "jrnn-bptt", "torch", "torch-1t"]


def run(out_dir: Path, *, quick: bool = False, cell: str = "lstm", show_progress: bool = True) -> dict[str, Any]:
    from benchmarks.speed import check, reference_of

    try:
        common.set_torch_threads()
    except ImportError:
        pass
    base = QUICK_BASE if quick else BASE
    sweeps = QUICK_SWEEPS if quick else SWEEPS
    points = [(axis, v) for axis, values in sweeps.items() for v in values]
    rows = []
    for axis, value in common.progress(points, "scaling", enabled=show_progress):
        shape = dict(base, **{axis: value})
        case = Case(cell, 1, False, shape["B"], shape["T"], shape["D"], shape["H"])
        problem = make_problem(case)
        built, notes = {}, {}
        for name in PEER_NAMES:
            try:
                built[name] = PEERS[name](problem)
            except Unavailable as e:
                notes[name] = str(e)
        reference = reference_of(built["jrnn"], modes=("train",))
        checks = {}
        for name in list(built):
            if name != "jrnn":
                checks[name] = check(built[name], reference)
                if not checks[name]["ok"]:
                    del built[name]
        t = common.measure({n: b.train for n, b in built.items()}, rounds=3 if quick else 7,
                           budget_s=1.0 if quick else 15.0)
        rows.append({"axis": axis, "value": value, "shape": shape, "checks": checks, "unavailable": notes,
                     "time_s": {n: v["median_s"] for n, v in t.items()}, "timings": t})
    fits = {}
    for axis in sweeps:
        for name in PEER_NAMES:
            pts = [(r["value"], r["time_s"][name]) for r in rows if r["axis"] == axis and name in r["time_s"]]
            if len(pts) >= 2:
                fits.setdefault(axis, {})[name] = common.fit_exponent(*zip(*pts))
    env = common.environment()
    result = {
        "benchmark": "scaling",
        "question": "time of one training gradient vs T, B and H, with fitted exponents",
        "command": env["command"],
        "environment": env,
        "cell": cell,
        "base": base,
        "rows": rows,
        "fits": fits,
    }
    common.write_outputs(out_dir, "scaling", result, to_markdown(result), plot(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    b = result["base"]
    out = [
        f"## Scaling\n\n{common.device_line(result['environment'])}\n\nCommand: `{result['command']}`\n",
        f"Training gradient of a 1-layer {result['cell'].upper()}, one axis varied around "
        f"B={b['B']}, T={b['T']}, D={b['D']}, H={b['H']}; medians of interleaved rounds.\n",
    ]
    for axis, fits in result["fits"].items():
        rows = []
        for r in result["rows"]:
            if r["axis"] == axis:
                t = r["time_s"]
                torch_best = min([t[n] for n in ("torch", "torch-1t") if n in t], default=None)
                ratios = [torch_best / t[n] if torch_best and n in t else None for n in ("jrnn-bptt", "jrnn")]
                rows.append([r["value"], *(common.fmt_time(t.get(n)) for n in PEER_NAMES),
                             *(common.fmt_ratio(x) for x in ratios)])
        fit = ", ".join(f"{n}: p = {f['exponent']:.2f} (R² {f['r2']:.3f})" for n, f in fits.items())
        out.append(f"\n### vs {axis} — {fit}\n\n" + common.markdown_table(
            [axis, "jrnn (autodiff)", "jrnn-bptt", "torch (2 threads)", "torch (1 thread)",
             "best torch / jrnn-bptt", "best torch / jrnn"], rows))
    return "\n".join(out)


def plot(result: dict[str, Any]):
    plt = common.pyplot()
    axes_names = list(result["fits"])
    fig, axes = plt.subplots(1, len(axes_names), figsize=(4.3 * len(axes_names), 3.8))
    for ax, axis in zip(axes if len(axes_names) > 1 else [axes], axes_names):
        for name, fit in result["fits"][axis].items():
            pts = sorted((r["value"], r["time_s"][name]) for r in result["rows"] if r["axis"] == axis and name in r["time_s"])
            ax.loglog(*zip(*pts), "o-", label=f"{name} (p={fit['exponent']:.2f})")
        ax.set(xlabel=axis, ylabel="seconds per gradient", title=f"vs {axis}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return [("", fig)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cell", default="lstm", choices=["vanilla", "lstm", "gru"])
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)
    print(to_markdown(run(args.out, quick=args.quick, cell=args.cell)))


if __name__ == "__main__":
    main()
