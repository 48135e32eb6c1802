"""BPTT memory and time: is the hand-written backward leaner and faster than autodiff?

One training gradient — ``jax.value_and_grad`` of the MSE of a one-layer ``RNN`` with a per-step
readout (``output_size=1``), with respect to all parameters — jitted, for each peer:

- ``autodiff``: ``backward="autodiff"`` (JAX differentiates the ``lax.scan``);
- ``autodiff_remat``: the same with ``remat=True`` (``jax.checkpoint`` around the step);
- ``bptt``: ``backward="bptt"`` (the hand-written fast backward behind ``jax.custom_vjp``);
- ``bptt_remat``: the same with ``remat=True`` (only the carries kept; gates recomputed per chunk);
- ``hand``: ``jrnn.bptt.value_and_grad`` (the network's backward written out, no ``custom_vjp``).

Memory is XLA's compiled memory analysis of each jitted gradient
(``jax.jit(f).lower(...).compile().memory_analysis()``): ``temp`` is the scratch XLA allocates for
the program (activations kept for the backward, gradients in flight: everything but the
arguments and results, with buffers whose lifetimes do not overlap sharing space), and
``peak = argument + output + temp - alias``. It is what the program needs, measured before it
runs, not a sampled resident-set size.

Time: steady state after compilation (compile time reported apart), ``block_until_ready``,
median over rounds; the peers are interleaved in every round (rotated order), so a noisy
neighbour slows them alike, and ratios are also given as the median of per-round ratios.

    python -m benchmarks.bptt_memory [--quick] [--cells lstm,gru] [--T 100,1000,10000]
                                     [--H 64,256] [--B 32] [--peers ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from benchmarks import common
from jrnn import bptt, losses

PEERS = ("autodiff", "autodiff_remat", "bptt", "bptt_remat", "hand")
BASELINE = "autodiff"
CELLS = {"lstm": jrnn.LSTMCell, "gru": jrnn.GRUCell, "vanilla": jrnn.VanillaCell}

TIME_TARGET = "bptt no slower than autodiff for T >= 100 (time ratio bptt/autodiff <= 1)"
MEMORY_TARGET = "bptt at most half of autodiff's peak memory for the LSTM at T = 1000"


def problem(cell: str, T: int, H: int, B: int, D: int, seed: int = 0):
    """Model, parameters, inputs and targets (float32, random)."""
    model = jrnn.RNN(CELLS[cell](H), num_layers=1, output_size=1)
    k_p, k_x, k_y = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = model.init(k_p, D)
    xs = jax.random.normal(k_x, (B, T, D), jnp.float32)
    targets = jax.random.normal(k_y, (B, T, 1), jnp.float32)
    return model, params, xs, targets


def gradient_fn(model, peer: str):
    """``(params, xs, targets) -> (loss, grads)`` for one peer (not yet jitted)."""
    if peer == "hand":
        return lambda params, xs, targets: bptt.value_and_grad(model, params, xs, targets)
    backward = "bptt" if peer.startswith("bptt") else "autodiff"
    remat = peer.endswith("_remat")

    def loss(params, xs, targets):
        ys, _ = model.apply(params, xs, backward=backward, remat=remat)
        return losses.mse(ys, targets)

    return jax.value_and_grad(loss)


def memory_of(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    out = {
        "temp_bytes": int(m.temp_size_in_bytes),
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
    }
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return out


def available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def time_interleaved(
    fns: dict[str, Any], *, budget_s: float, min_rounds: int, max_rounds: int
) -> dict[str, Any]:
    """Median steady-state time of zero-argument callables, visited in rotated order each round.

    Short calls (< 0.2 s) are timed in blocks of several calls after one untimed call (which
    absorbs the switch from the previous peer); long ones one call at a time.
    """
    names = list(fns)
    est = {}
    for name in names:  # warm-up: one call each after compilation
        fns[name]()
        t0 = time.perf_counter()
        fns[name]()
        est[name] = time.perf_counter() - t0
    block = {n: max(1, min(20, math.ceil(0.1 / max(est[n], 1e-6)))) for n in names}
    samples: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(max_rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if est[name] < 0.2:
                fns[name]()
            t0 = time.perf_counter()
            for _ in range(block[name]):
                fns[name]()
            samples[name].append((time.perf_counter() - t0) / block[name])
        if r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return {n: common.summarize(samples[n], block[n]) for n in names}


def run_case(
    cell: str, T: int, H: int, B: int, D: int, peers, *, budget_s, min_rounds, max_rounds, log
) -> dict:
    model, params, xs, targets = problem(cell, T, H, B, D)
    case: dict[str, Any] = {"cell": cell, "T": T, "H": H, "B": B, "D": D, "output_size": 1, "layers": 1}
    compiled, memory, compile_s = {}, {}, {}
    for peer in peers:
        t0 = time.perf_counter()
        compiled[peer] = jax.jit(gradient_fn(model, peer)).lower(params, xs, targets).compile()
        compile_s[peer] = time.perf_counter() - t0
        memory[peer] = memory_of(compiled[peer])
    case["compile_s"] = compile_s
    case["memory"] = memory

    # a check that every peer computes the same gradient, so the table compares like with like
    outs = {p: jax.block_until_ready(compiled[p](params, xs, targets)) for p in peers}
    ref = outs[peers[0]]
    case["max_rel_diff_vs_" + peers[0]] = {
        p: common.max_rel_error([outs[p][0], *jax.tree_util.tree_leaves(outs[p][1])],
                                [ref[0], *jax.tree_util.tree_leaves(ref[1])])  # fmt: skip
        for p in peers
    }
    del outs, ref

    need = max(m["peak_bytes"] for m in memory.values())
    avail = available_bytes()
    if avail is not None and need > 0.6 * avail:
        case["timing_skipped"] = (
            f"peak {need / 2**30:.1f} GiB > 60% of available memory {avail / 2**30:.1f} GiB"
        )
        log(f"  {cell} T={T} H={H}: timing skipped ({case['timing_skipped']})")
        return case
    fns = {p: (lambda c=compiled[p]: jax.block_until_ready(c(params, xs, targets))) for p in peers}
    times = time_interleaved(fns, budget_s=budget_s, min_rounds=min_rounds, max_rounds=max_rounds)
    case["time"] = times
    if BASELINE in times:
        base = np.asarray(times[BASELINE]["samples_s"])
        case["paired_time_ratio"] = {
            p: float(np.median(np.asarray(times[p]["samples_s"]) / base)) for p in peers if p != BASELINE
        }
    summary = ", ".join(
        f"{p} {common.fmt_time(times[p]['median_s'])} {mib(memory[p]['peak_bytes'])} MiB" for p in peers
    )
    log(f"  {cell} T={T} H={H}: {summary}")
    return case


def ratios(case: dict, peer: str) -> dict[str, float | None]:
    mem, base_mem = case["memory"].get(peer), case["memory"].get(BASELINE)
    out = {
        "peak": mem["peak_bytes"] / base_mem["peak_bytes"] if mem and base_mem else None,
        "temp": mem["temp_bytes"] / base_mem["temp_bytes"] if mem and base_mem["temp_bytes"] else None,
        "time": None,
        "paired_time": None,
    }
    t = case.get("time")
    if t and peer in t and BASELINE in t:
        out["time"] = t[peer]["median_s"] / t[BASELINE]["median_s"]
        out["paired_time"] = case.get("paired_time_ratio", {}).get(peer)
    return out


def targets(cases: list[dict]) -> dict[str, Any]:
    time_rows = [(c, ratios(c, "bptt")) for c in cases if c["T"] >= 100 and "time" in c]
    mem_rows = [(c, ratios(c, "bptt")) for c in cases if c["cell"] == "lstm" and c["T"] == 1000]
    return {
        "time": {
            "target": TIME_TARGET,
            "met": all(r["paired_time"] <= 1.0 for _, r in time_rows) if time_rows else None,
            "worst_ratio": max((r["paired_time"] for _, r in time_rows), default=None),
            "cases": len(time_rows),
        },
        "memory": {
            "target": MEMORY_TARGET,
            "met": all(r["peak"] <= 0.5 for _, r in mem_rows) if mem_rows else None,
            "worst_peak_ratio": max((r["peak"] for _, r in mem_rows), default=None),
            "cases": len(mem_rows),
        },
    }


def verdict(met) -> str:
    return "not measured (no such case in this run)" if met is None else ("met" if met else "missed")


def mib(nbytes: int | None) -> str:
    if nbytes is None:
        return "–"
    v = nbytes / 2**20
    return f"{v:,.0f}" if v >= 10 else f"{v:.2f}"


def to_markdown(result: dict) -> str:
    env, cases, peers = result["environment"], result["cases"], result["peers"]
    lines = [
        "# BPTT memory and time: hand-written backward vs autodiff",
        "",
        f"Device: {common.device_line(env)}. Load average at start {env.get('load_average')}.",
        "",
        "One training gradient (`jax.value_and_grad` of MSE through a one-layer `RNN` with a per-step "
        "readout, all parameters), jitted, float32, B = "
        f"{cases[0]['B'] if cases else '?'}, D = H (input size = hidden size), output size 1.",
        "",
        "Memory: XLA's compiled memory analysis. **peak** = arguments + outputs + temp − aliased "
        "(MiB); **temp** = the scratch buffers of the program (residuals for the backward, "
        "gradients in flight). Time: median steady-state seconds per gradient, peers interleaved in "
        "the same process; ratios are peer / autodiff (below 1: less memory or faster than autodiff); "
        "the time ratio is the median of per-round ratios.",
        "",
    ]
    others = [p for p in peers if p != BASELINE]
    lines += ["## Peak memory (MiB), and ratio to autodiff", ""]
    header = ["cell", "T", "H"] + [f"{p}" for p in peers] + [f"{p} / autodiff" for p in others]
    header += ["bptt temp / autodiff temp"] if "bptt" in peers else []
    rows = []
    for c in cases:
        row = [c["cell"], c["T"], c["H"]] + [mib(c["memory"][p]["peak_bytes"]) for p in peers]
        row += [common.fmt_ratio(ratios(c, p)["peak"]) for p in others]
        row += [common.fmt_ratio(ratios(c, "bptt")["temp"])] if "bptt" in peers else []
        rows.append(row)
    lines += [common.markdown_table(header, rows), ""]
    lines += [
        "## Temp memory in units of one (T, B, H) float32 array",
        "",
        "What each program keeps per step, read off the scratch size: the hand LSTM backward keeps "
        "the gate activations (4, written over the input projection), the carries h and c (2), "
        "h_{t-1} for the d_w_h GEMM (1) and the incoming d_ys (1), plus the time-major copy of xs "
        "that `RNN.apply` makes (D = H here: 1); with remat, the carries and a few chunks.",
        "",
    ]
    header = ["cell", "T", "H"] + list(peers)
    rows = []
    for c in cases:
        unit = c["T"] * c["B"] * c["H"] * 4
        units = [f"{c['memory'][p]['temp_bytes'] / unit:.1f}" for p in peers]
        rows.append([c["cell"], c["T"], c["H"], *units])
    lines += [common.markdown_table(header, rows), ""]
    lines += ["## Time per gradient, and ratio to autodiff (median of per-round ratios)", ""]
    header = ["cell", "T", "H"] + [f"{p}" for p in peers] + [f"{p} / autodiff" for p in others]
    rows = []
    for c in cases:
        row = [c["cell"], c["T"], c["H"]]
        row += [common.fmt_time(c["time"][p]["median_s"]) if "time" in c else "skipped" for p in peers]
        row += [common.fmt_ratio(ratios(c, p)["paired_time"]) for p in others]
        rows.append(row)
    lines += [common.markdown_table(header, rows), ""]
    skipped = [c for c in cases if "timing_skipped" in c]
    for c in skipped:
        lines.append(f"- {c['cell']} T={c['T']} H={c['H']}: timing skipped: {c['timing_skipped']}.")
    t = result["targets"]
    lines += [
        "",
        "## Targets",
        "",
        f"- {t['time']['target']}: **{verdict(t['time']['met'])}** "
        f"(worst per-round ratio {common.fmt_ratio(t['time']['worst_ratio'])}).",
        f"- {t['memory']['target']}: **{verdict(t['memory']['met'])}** "
        f"(peak ratio {common.fmt_ratio(t['memory']['worst_peak_ratio'])}).",
        "",
        "Compile times (s): "
        + "; ".join(
            f"{c['cell']} T={c['T']} H={c['H']}: " + ", ".join(f"{p} {c['compile_s'][p]:.1f}" for p in peers)
            for c in cases
        ),
    ]
    return "\n".join(lines)


QUICK = dict(Ts=(20,), Hs=(8,), B=4, budget_s=0.5, min_rounds=2, max_rounds=3)
"""``--quick``: tiny sizes, seconds; a smoke test of the script, not a measurement."""


def run(
    out_dir: Path,
    *,
    quick: bool = False,
    show_progress: bool = True,
    cells=("lstm", "gru"),
    Ts=(100, 1000, 10000),
    Hs=(64, 256),
    B: int = 32,
    peers=PEERS,
    budget_s: float = 30.0,
    min_rounds: int = 3,
    max_rounds: int = 15,
    log=None,
) -> dict[str, Any]:
    """Measure every (T, H, cell) case and write ``bptt_memory.json`` / ``.md`` under ``out_dir``.

    The keyword-only ``quick`` and ``show_progress`` match the other scripts of the suite
    (``jrnn bench``); ``quick`` replaces the sizes by ``QUICK``.
    """
    if quick:
        Ts, Hs, B = QUICK["Ts"], QUICK["Hs"], QUICK["B"]
        budget_s, min_rounds, max_rounds = QUICK["budget_s"], QUICK["min_rounds"], QUICK["max_rounds"]
    if log is None:

        def log(msg: str) -> None:
            if show_progress:
                print(msg, file=sys.stderr, flush=True)

    env = common.environment()
    cases = []
    for T in Ts:
        for H in Hs:
            for cell in cells:
                cases.append(
                    run_case(cell, T, H, B, H, list(peers), budget_s=budget_s, min_rounds=min_rounds,
                             max_rounds=max_rounds, log=log)  # fmt: skip
                )
    env["load_average_end"] = common.environment()["load_average"]
    result = {
        "benchmark": "bptt_memory",
        "environment": env,
        "peers": list(peers),
        "baseline": BASELINE,
        "measured": {
            "memory": "XLA compiled memory analysis of the jitted gradient: peak = argument + output + "
            "temp - alias bytes; temp = scratch buffers (residuals and intermediates)",
            "time": "median seconds per gradient after compilation, block_until_ready, peers interleaved",
        },
        "cases": cases,
    }
    result["targets"] = targets(cases)
    common.write_outputs(out_dir, "bptt_memory", result, to_markdown(result))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (smoke test)")
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--T", default="100,1000,10000", help="sequence lengths, comma-separated")
    parser.add_argument("--H", default="64,256", help="hidden sizes, comma-separated")
    parser.add_argument("--B", type=int, default=32)
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timing per case (soft)")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    parser.add_argument("--render", action="store_true", help="rewrite OUT/bptt_memory.md from its JSON")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads((args.out / "bptt_memory.json").read_text())
        (args.out / "bptt_memory.md").write_text(to_markdown(result).rstrip() + "\n")
        print(to_markdown(result))
        return 0
    peers = [p for p in args.peers.split(",") if p]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peers {unknown}; choose from {list(PEERS)}")
    if BASELINE not in peers:
        peers.insert(0, BASELINE)
    ints = lambda s: tuple(int(v) for v in s.split(",") if v)  # noqa: E731
    sizes = dict(Ts=ints(args.T), Hs=ints(args.H), B=args.B, budget_s=args.budget)
    result = run(args.out, quick=args.quick, cells=tuple(args.cells.split(",")), peers=tuple(peers), **sizes)
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
