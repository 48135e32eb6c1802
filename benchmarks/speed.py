"""Speed: how fast is one training gradient, and forward-only inference, against the peers?

For each case (cell, layers, direction, shape) every peer is built from the same jrnn weights,
checked against jrnn (loss, every weight gradient and the forward outputs; a peer that disagrees
is reported and not timed), then all peers are timed interleaved in this process. Ratios are
``peer time / jrnn time``: above 1 means jrnn is faster.

    python -m benchmarks.speed [--quick] [--peers jrnn,torch,...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.peers import CELL_KINDS, PEERS, Case, Unavailable, jrnn_bptt_available, make_problem

NAMED_SHAPES = [(32, 100, 32, 128), (1, 1000, 1, 32), (64, 200, 64, 256), (128, 50, 128, 512)]
"""The four (B, T, D, H) shapes the targets name."""

STRUCTURES = [(2, False), (1, True), (2, True)]
"""(layers, bidirectional) beyond the single forward layer, run at the first named shape."""

LARGE_SHAPES = [(64, 50, 300, 1024), (32, 50, 300, 2048)]
"""Large-hidden (B, T, D, H) shapes (word-embedding inputs, D = 300), one forward layer per cell:
the GEMM-bound end of the grid, where PyTorch's LSTM is oneDNN's fused primitive."""

DEFAULT_PEERS = ["jrnn", "jrnn-bptt", "torch", "torch-1t", "flax", "equinox", "numpy", "numpy-1t", "cudnn"]
BASELINE = "jrnn"
TOLERANCE = 2e-3  # max |peer - jrnn| / max |jrnn| for float32 losses, gradients and outputs

TRAINING_DEFAULT = "jrnn-bptt"
"""What ``make_train_step``, ``fit`` and ``jrnn train`` run by default (``backward="bptt"``); the
targets are also judged with it as the baseline."""

BEST_OF = {"torch-best": ("torch", "torch-1t"), "numpy-best": ("numpy", "numpy-1t")}
"""A peer's faster thread setting per case: targets are judged against it (the conservative choice:
on a loaded 2-core machine a 2-thread OpenMP/BLAS team can wait a scheduler slice at each barrier)."""

# Targets for jrnn's autodiff gradient: (peer, statistic, bound, text), ratios = peer time / jrnn time.
TARGETS = [
    ("torch-best", "geomean", 1.0, "jrnn at least as fast as PyTorch on the geometric mean"),
    ("torch-best", "min", 1 / 1.25, "jrnn never more than 1.25x slower than PyTorch"),
    ("flax", "geomean", 1.3, "jrnn at least 1.3x faster than Flax nn.RNN (geomean)"),
    ("flax", "min", 1.3, "jrnn at least 1.3x faster than Flax nn.RNN (every case)"),
    ("numpy-best", "min", 2.0, "jrnn at least 2x faster than the NumPy hand BPTT on every shape"),
]

# Targets for the training default (``backward="bptt"``), ratios = peer time / jrnn-bptt time.
TARGETS_DEFAULT = [
    ("torch-best", "min", 1.0, "the training default at most 1.0x PyTorch's time on every shape"),
    ("torch-best", "geomean", 1 / 0.8, "the training default at most 0.8x PyTorch's time on the geometric mean"),
    ("flax", "geomean", 1.5, "the training default at least 1.5x faster than Flax nn.RNN (geomean)"),
]


def default_cases() -> list[Case]:
    cases = [Case(cell, 1, False, *shape) for shape in NAMED_SHAPES for cell in CELL_KINDS]
    cases += [Case(cell, L, bi, *NAMED_SHAPES[0]) for (L, bi) in STRUCTURES for cell in CELL_KINDS]
    cases += [Case(cell, 1, False, *shape) for shape in LARGE_SHAPES for cell in CELL_KINDS]
    return cases


def quick_cases() -> list[Case]:
    """Every cell once, and the stacked bidirectional path once, at a tiny shape."""
    return [Case("vanilla", 1, False, 4, 20, 4, 16), Case("gru", 1, False, 4, 20, 4, 16), Case("lstm", 2, True, 4, 20, 4, 16)]


def reference_of(built, modes=("train", "infer")) -> dict[str, Any]:
    """What ``check`` compares against: jrnn's loss and gradients, and its outputs."""
    ref = {}
    if "train" in modes:
        ref["loss"], ref["grads"] = built.check_train()
    if "infer" in modes:
        ref["ys"] = built.check_infer()
    return ref


def check(built, reference: dict[str, Any], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Compare a peer's loss and gradients (and outputs, when ``reference`` has them) with jrnn's;
    ``ok`` when every relative error is within ``TOLERANCE``."""
    errors = {}
    if "grads" in reference:
        loss, grads = built.check_train()
        errors["loss"] = abs(loss - reference["loss"]) / max(abs(reference["loss"]), 1e-6)
        errors["grads"] = common.max_rel_error(grads, reference["grads"])
    if "ys" in reference:
        errors["outputs"] = common.max_rel_error([built.check_infer()], [reference["ys"]])
    return {"ok": all(v <= tolerance for v in errors.values()), "tolerance": tolerance, **errors}


def run_case(case: Case, peers: list[str], *, rounds: int, budget_s: float, min_block_s: float = 0.05,
             tolerance: float = TOLERANCE) -> dict[str, Any]:
    problem = make_problem(case)
    built, status = {}, {}
    for name in peers:
        if name == "jrnn-bptt" and (reason := jrnn_bptt_available()):
            status[name] = {"available": False, "reason": reason}
            continue
        try:
            built[name] = PEERS[name](problem)
            status[name] = {"available": True, "compile_s": built[name].compile_s, "note": built[name].note}
        except Unavailable as e:
            status[name] = {"available": False, "reason": str(e)}
    reference = reference_of(built[BASELINE])
    for name, b in list(built.items()):
        if name == BASELINE:
            continue
        status[name]["check"] = check(b, reference, tolerance)
        if not status[name]["check"]["ok"]:
            del built[name]  # a peer that computes something else is not timed
    timings = {}
    for mode in ("train", "infer"):
        fns = {name: getattr(b, mode) for name, b in built.items()}
        timings[mode] = common.measure(fns, rounds=rounds, budget_s=budget_s, min_block_s=min_block_s)
    ratios = {}
    for mode, t in timings.items():
        base = t[BASELINE]["median_s"]
        ratios[mode] = {n: v["median_s"] / base for n, v in t.items()}
        for group, members in BEST_OF.items():
            present = [t[m]["median_s"] for m in members if m in t]
            if present:
                ratios[mode][group] = min(present) / base
    return {"case": case.asdict(), "label": case.label, "peers": status, "timings": timings, "ratios": ratios}


def summarize(results: list[dict[str, Any]], peers: list[str]) -> dict[str, Any]:
    summary = {}
    for mode in ("train", "infer"):
        per_peer = {}
        for name in [*peers, *BEST_OF]:
            values = [r["ratios"][mode][name] for r in results if name in r["ratios"][mode]]
            if values and name != BASELINE:
                per_peer[name] = {
                    "geomean": common.geomean(values),
                    "min": min(values),
                    "max": max(values),
                    "cases": len(values),
                }
        summary[mode] = per_peer
    summary["targets"] = _targets(summary["train"])
    # the same targets against the training default: ratios peer time / jrnn-bptt time
    rebased = {}
    for name in [*peers, *BEST_OF]:
        values = []
        for r in results:
            t = r["timings"]["train"]
            members = [m for m in BEST_OF.get(name, (name,)) if m in t]
            if TRAINING_DEFAULT in t and members and name != TRAINING_DEFAULT:
                values.append(min(t[m]["median_s"] for m in members) / t[TRAINING_DEFAULT]["median_s"])
        if values:
            rebased[name] = {"geomean": common.geomean(values), "min": min(values), "max": max(values),
                             "cases": len(values)}
    summary["train_vs_default"] = rebased
    summary["targets_default"] = _targets(rebased, TARGETS_DEFAULT) if rebased else []
    return summary


def _targets(stats: dict[str, dict[str, Any]], targets_list=TARGETS) -> list[dict[str, Any]]:
    targets = []
    for peer, stat, bound, text in targets_list:
        s = stats.get(peer)
        value = s[stat] if s else None
        targets.append({"target": text, "peer": peer, "statistic": stat, "bound": bound, "value": value,
                        "met": None if value is None else bool(value >= bound)})
    return targets


def to_markdown(result: dict[str, Any]) -> str:
    env, peers = result["environment"], result["peers"]
    out = [f"## Speed\n\n{common.device_line(env)}\n\nCommand: `{result['command']}`\n"]
    out.append(
        "Median time per call (interleaved rounds); in brackets the ratio peer time / jrnn time "
        "(above 1: jrnn is faster). `–`: not available for that case (see the JSON for why)."
    )
    shown = [p for p in peers if any(p in r["timings"]["train"] for r in result["cases"])]
    for mode, title in (("train", "Training gradient (forward + backward)"), ("infer", "Inference (forward only)")):
        rows = []
        for r in result["cases"]:
            t, q = r["timings"][mode], r["ratios"][mode]
            row = [r["label"], common.fmt_time(t[BASELINE]["median_s"]) if BASELINE in t else "–"]
            for p in shown:
                if p == BASELINE:
                    continue
                row.append(f"{common.fmt_time(t[p]['median_s'])} ({common.fmt_ratio(q[p])})" if p in t else "–")
            rows.append(row)
        geo = ["**geomean ratio**", ""]
        for p in shown:
            if p != BASELINE:
                s = result["summary"][mode].get(p)
                geo.append(f"**{common.fmt_ratio(s['geomean'])}** (min {common.fmt_ratio(s['min'])})" if s else "–")
        rows.append(geo)
        out.append(f"\n### {title}\n\n" + common.markdown_table(["case", BASELINE, *[p for p in shown if p != BASELINE]], rows))
    rows = []
    for p, s in result["summary"]["train"].items():
        si = result["summary"]["infer"].get(p, {})
        rows.append([p, common.fmt_ratio(s["geomean"]), common.fmt_ratio(s["min"]), common.fmt_ratio(s["max"]),
                     common.fmt_ratio(si.get("geomean")), common.fmt_ratio(si.get("min")), s["cases"]])
    out.append("\n### Ratios peer / jrnn over the grid\n\n`*-best`: the faster of the peer's 2-thread and "
               "1-thread settings, case by case.\n\n" + common.markdown_table(
                   ["peer", "train geomean", "train min", "train max", "infer geomean", "infer min", "cases"], rows))
    sections = [("targets", "`jax.value_and_grad` of `RNN.apply` (`backward=\"autodiff\"`, the column jrnn)")]
    if result["summary"].get("targets_default"):
        sections.append(("targets_default", f"the training default, `backward=\"bptt\"` of `make_train_step` "
                                            f"and `fit` (the column {TRAINING_DEFAULT})"))
    for key, what in sections:
        out.append(f"\n### Targets (training gradient): jrnn = {what}\n")
        rows = [[t["target"], f"{t['statistic']} ratio {common.fmt_ratio(t['value'])}", f"≥ {t['bound']:.2f}",
                 "met" if t["met"] else ("not met" if t["met"] is not None else "not measured")]
                for t in result["summary"][key]]
        out.append(common.markdown_table(["target", "measured", "bound", ""], rows))
    failed = [(r["label"], p, s["check"]) for r in result["cases"] for p, s in r["peers"].items()
              if s.get("check") and not s["check"]["ok"]]
    if failed:
        out.append("\nPeers excluded because they disagree with jrnn: " + "; ".join(f"{p} on {c}" for c, p, _ in failed))
    return "\n".join(out)


def plot(result: dict[str, Any]):
    plt = common.pyplot()
    figures = []
    for mode in ("train", "infer"):
        labels = [r["label"] for r in result["cases"]]
        peers = [p for p in result["peers"] if p != BASELINE and any(p in r["timings"][mode] for r in result["cases"])]
        fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(labels) * max(1, len(peers)) / 2), 4.5))
        width = 0.8 / max(1, len(peers))
        for k, p in enumerate(peers):
            xs = [i + k * width for i, r in enumerate(result["cases"]) if p in r["ratios"][mode]]
            ys = [r["ratios"][mode][p] for r in result["cases"] if p in r["ratios"][mode]]
            ax.bar(xs, ys, width, label=p)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=75, fontsize=7)
        ax.set_ylabel("peer time / jrnn time (log)")
        ax.set_title(f"{'training gradient' if mode == 'train' else 'inference'}: above 1 = jrnn faster")
        ax.legend(fontsize=7)
        figures.append((mode, fig))
    return figures


def run(out_dir: Path, *, quick: bool = False, peers: list[str] | None = None, show_progress: bool = True) -> dict[str, Any]:
    if "torch" in (peers or DEFAULT_PEERS):
        try:
            common.set_torch_threads()
        except ImportError:
            pass
    peers = list(peers or DEFAULT_PEERS)
    if BASELINE not in peers:
        peers.insert(0, BASELINE)
    cases = quick_cases() if quick else default_cases()
    rounds, budget, block = (3, 1.0, 0.01) if quick else (9, 20.0, 0.05)
    results = []
    for case in common.progress(cases, "speed", enabled=show_progress):
        results.append(run_case(case, peers, rounds=rounds, budget_s=budget, min_block_s=block))
    result = {
        "benchmark": "speed",
        "question": "time of one training gradient and of forward-only inference, jrnn vs peers",
        "command": common.environment()["command"],
        "environment": common.environment(),
        "method": {"rounds": rounds, "budget_s_per_mode": budget, "min_block_s": block, "tolerance": TOLERANCE,
                   "ratio": "peer / jrnn", "best_of": BEST_OF,
                   "loss": "mean((ys - target)^2) over (B, T, dirs*H)", "dtype": "float32"},
        "peers": peers,
        "cases": results,
    }
    result["summary"] = summarize(results, peers)
    common.write_outputs(out_dir, "speed", result, to_markdown(result), plot(result))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS))
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    parser.add_argument("--render", action="store_true", help="recompute the summary and rewrite OUT/speed.md "
                        "from OUT/speed.json (no timing)")
    args = parser.parse_args(argv)
    if args.render:
        path = args.out / "speed.json"
        result = json.loads(path.read_text())
        result["summary"] = summarize(result["cases"], result["peers"])
        path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
        (args.out / "speed.md").write_text(to_markdown(result).rstrip() + "\n")
    else:
        result = run(args.out, quick=args.quick, peers=args.peers.split(","))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
