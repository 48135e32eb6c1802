"""Parallel in time: when does solving the whole trajectory at once beat the sequential scan?

For each cell (vanilla tanh, LSTM, GRU, minGRU, minLSTM), hidden size ``H`` and sequence length
``T`` at batch 1 (the regime a parallel solver is for: one long sequence), the forward pass (the
layer's outputs ``ys``) is computed by ``jrnn.unroll`` (``method="sequential"``) and by
``jrnn.parallel.solve`` with each parallel method (``"newton"``, ``"quasi_newton"``, ``"elk"``);
at ``T`` in ``TRAIN_T`` also one training gradient (``value_and_grad`` of ``mean(ys²)`` in the
parameters). Reported per case: the median time over interleaved rounds (all methods of a case in
the same rounds, after compilation, ``block_until_ready``), the ratio sequential / method (above
1: the parallel method is faster), the Newton iterations and whether the solve converged (a
solve that did not is recomputed sequentially inside the timed call, as ``on_failure`` says), the
largest difference from the sequential outputs, and XLA's temporary buffers of the compiled
forward (``memory_analysis``: what the call allocates besides its inputs and outputs). For the
minGRU and minLSTM every parallel method is the same exact log-space scan, timed once (as
``quasi_newton``).

Weights: each cell's default initialization (Glorot-uniform input weights, orthogonal recurrent
blocks of gain 1), inputs ``N(0, 1)``, ``D = 4``, float32, the default tolerance. Full Newton only
where the flat carry ``N`` (``H``, ``2H`` for the LSTM) is at most
``jrnn.parallel.FULL_JACOBIAN_MAX_SIZE``. The grid runs what fits this CPU: a generic cell's
parallel methods take ``N`` tangents per step per iteration, so they run where ``T·N³`` is at
most ``PARALLEL_WORK``; the sequential scan where ``T·H²`` is at most ``SEQUENTIAL_WORK``; the
others are listed as skipped.

    python -m benchmarks.parallel [--quick] [--out DIR] [--render]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks import common

CELLS = ("vanilla", "lstm", "gru", "mingru", "minlstm")
T_GRID = (100, 1_000, 10_000, 100_000, 1_000_000)
H_GRID = (2, 8, 32, 128, 256)
QUICK_T, QUICK_H = (100, 1_000), (2, 8)
METHODS = ("sequential", "newton", "quasi_newton", "elk")
B, D = 1, 4
PARALLEL_WORK = 4e9
"""A generic cell's parallel methods run where ``T·N³`` is at most this."""
SEQUENTIAL_WORK = 2e7
"""The sequential scan (and the min cells' log-space scan) runs where ``T·H²`` is at most this."""
TRAIN_T = (1_000,)
"""The training gradient is timed at these ``T``."""
SAME_SCAN = "the same log-space scan as quasi_newton"


def make_cell(name: str, H: int):
    import jrnn

    return {
        "vanilla": jrnn.VanillaCell, "lstm": jrnn.LSTMCell, "gru": jrnn.GRUCell,
        "mingru": jrnn.MinGRUCell, "minlstm": jrnn.MinLSTMCell,
    }[name](H)  # fmt: skip


def flat_size(name: str, H: int) -> int:
    return 2 * H if name == "lstm" else H


def linear(name: str) -> bool:
    """The min cells: one exact log-space scan, no Newton iteration."""
    return name in ("mingru", "minlstm")


def planned(name: str, H: int, T: int) -> dict[str, str | None]:
    """``method -> None`` (run) or the reason it is skipped."""
    from jrnn.parallel import FULL_JACOBIAN_MAX_SIZE

    N = flat_size(name, H)
    plan: dict[str, str | None] = {}
    if T * H * H > SEQUENTIAL_WORK:
        return {m: f"T·H² = {T * H * H:.1e} over {SEQUENTIAL_WORK:.0e}" for m in METHODS}
    for m in METHODS:
        if m == "sequential" or (linear(name) and m == "quasi_newton"):
            plan[m] = None
        elif linear(name):
            plan[m] = SAME_SCAN
        elif m == "newton" and N > FULL_JACOBIAN_MAX_SIZE:
            plan[m] = f"full Jacobians only for N <= {FULL_JACOBIAN_MAX_SIZE} (N = {N})"
        elif T * N**3 > PARALLEL_WORK:
            plan[m] = f"T·N³ = {T * N**3:.1e} over {PARALLEL_WORK:.0e}"
        else:
            plan[m] = None
    return plan


def build(name: str, H: int, T: int, methods: list[str], train: bool) -> dict[str, Any]:
    """The jitted forward (and gradient) of each method on one problem, compiled, with its
    first result."""
    import jax
    import jax.numpy as jnp

    import jrnn
    from jrnn.parallel import solve
    from jrnn.train.fit import CompileClock

    cell = make_cell(name, H)
    k_p, k_x = jax.random.split(jax.random.PRNGKey(T * 1000 + H))
    params = cell.init(k_p, D)
    xs = jax.random.normal(k_x, (B, T, D), jnp.float32)

    def forward_of(method):
        if method == "sequential":
            return lambda p, x: (jrnn.unroll(cell, p, x)[1], None)
        return lambda p, x: (lambda r: (r.ys, r.info))(solve(cell, p, x, method=method))

    out: dict[str, Any] = {"forward": {}, "train": {}, "info": {}, "ys": {}, "temp_bytes": {}, "compile_s": {}}
    for method in methods:
        fwd = forward_of(method)
        lowered = jax.jit(fwd).lower(params, xs)
        with CompileClock() as clock:
            compiled = lowered.compile()
        out["compile_s"][method] = clock.seconds
        memory = compiled.memory_analysis()
        out["temp_bytes"][method] = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
        ys, info = jax.block_until_ready(compiled(params, xs))
        out["ys"][method] = ys
        out["info"][method] = None if info is None else {
            "iterations": int(info.iterations), "residual": float(info.residual),
            "converged": bool(info.converged), "fell_back": bool(info.fell_back),
        }  # fmt: skip
        out["forward"][method] = (lambda c: lambda: jax.block_until_ready(c(params, xs)))(compiled)
        if train:
            grad = jax.jit(jax.value_and_grad(lambda p, x, f=fwd: jnp.mean(f(p, x)[0] ** 2)))
            jax.block_until_ready(grad(params, xs))
            out["train"][method] = (lambda g: lambda: jax.block_until_ready(g(params, xs)))(grad)
    return out


def run(out_dir: Path, *, quick: bool = False, show_progress: bool = True) -> dict[str, Any]:
    import numpy as np

    Ts, Hs = (QUICK_T, QUICK_H) if quick else (T_GRID, H_GRID)
    points = [(c, H, T) for c in CELLS for H in Hs for T in Ts]
    rows = []
    for name, H, T in common.progress(points, "parallel", enabled=show_progress):
        plan = planned(name, H, T)
        methods = [m for m in METHODS if plan[m] is None]
        row: dict[str, Any] = {"cell": name, "H": H, "T": T, "N": flat_size(name, H),
                               "skipped": {m: r for m, r in plan.items() if r is not None}}  # fmt: skip
        if "sequential" in methods:
            train = T in (Ts if quick else TRAIN_T)
            built = build(name, H, T, methods, train)
            budget = 2.0 if quick else 5.0
            rounds = 2 if quick else 3
            fwd = common.measure(built["forward"], rounds=rounds, budget_s=budget, min_rounds=2)
            row["forward_s"] = {m: v["median_s"] for m, v in fwd.items()}
            row["forward_timings"] = fwd
            if train:
                tr = common.measure(built["train"], rounds=rounds, budget_s=budget, min_rounds=2)
                row["train_s"] = {m: v["median_s"] for m, v in tr.items()}
            ref = np.asarray(built["ys"]["sequential"])
            row["max_abs_error"] = {m: float(np.max(np.abs(np.asarray(y) - ref))) for m, y in built["ys"].items()
                                    if m != "sequential"}  # fmt: skip
            row["info"] = {m: i for m, i in built["info"].items() if i is not None}
            row["temp_bytes"] = built["temp_bytes"]
            row["compile_s"] = built["compile_s"]
        rows.append(row)
    env = common.environment()
    result = {
        "benchmark": "parallel",
        "question": "time, iterations and memory of the sequential scan vs each parallel-in-time method",
        "command": env["command"],
        "environment": env,
        "shape": {"B": B, "D": D, "T": list(Ts), "H": list(Hs)},
        "limits": {"parallel_work": PARALLEL_WORK, "sequential_work": SEQUENTIAL_WORK, "train_t": list(TRAIN_T)},
        "rows": rows,
    }
    common.write_outputs(out_dir, "parallel", result, to_markdown(result), plot(result))
    return result


def _cell_text(row: dict, method: str, key: str = "forward_s") -> str:
    times = row.get(key) or {}
    if method not in times:
        if row.get("skipped", {}).get(method) == SAME_SCAN:
            return "= quasi_newton"
        return "skipped" if method in row.get("skipped", {}) else "-"
    if method == "sequential":
        return common.fmt_time(times[method])
    ratio = times["sequential"] / times[method]
    text = f"{common.fmt_time(times[method])} ({ratio:.2f}x)"
    info = row.get("info", {}).get(method)
    if info is not None and key == "forward_s":
        text += f", {info['iterations']} it"
        if not info["converged"]:
            text += ", **not converged**"
    return text


def to_markdown(result: dict[str, Any]) -> str:
    s = result["shape"]
    out = [
        f"## Parallel in time\n\n{common.device_line(result['environment'])}\n\nCommand: `{result['command']}`\n",
        f"One layer at batch B={s['B']}, D={s['D']}, float32, default initialization, inputs N(0, 1). "
        "Forward time (median of interleaved rounds after compilation) of the sequential scan and of "
        "each parallel method, with the speed-up sequential / method in parentheses (above 1: the "
        "parallel method is faster) and the Newton iterations (`it`; the min cells' log-space scan "
        "counts 1). A solve that did not converge is recomputed sequentially in the same call. "
        "`skipped`: outside what this CPU runs in the benchmark's time (see `parallel.json`).\n",
    ]
    for name in CELLS:
        rows = [r for r in result["rows"] if r["cell"] == name]
        if not rows:
            continue
        table = [[r["H"], r["T"], *(_cell_text(r, m) for m in METHODS),
                  max(r.get("max_abs_error", {}).values(), default=None) if r.get("max_abs_error") else "-"]
                 for r in rows]  # fmt: skip
        for line in table:
            if isinstance(line[-1], float):
                line[-1] = f"{line[-1]:.1e}"
        out.append(f"\n### {name} (forward)\n\n" + common.markdown_table(
            ["H", "T", *METHODS, "max |ys - sequential|"], table))
    train_rows = [r for r in result["rows"] if r.get("train_s")]
    if train_rows:
        table = [[r["cell"], r["H"], r["T"], *(_cell_text(r, m, "train_s") for m in METHODS)] for r in train_rows]
        out.append("\n### Training gradient (`value_and_grad` of mean(ys²))\n\n" + common.markdown_table(
            ["cell", "H", "T", *METHODS], table))
    mem = [[r["cell"], r["H"], r["T"], *(common.fmt_bytes(r["temp_bytes"].get(m)) if r.get("temp_bytes", {}).get(m)
                                          is not None else "-" for m in METHODS)]
           for r in result["rows"] if r.get("temp_bytes")]  # fmt: skip
    if mem:
        out.append("\n### Temporary memory of the compiled forward (XLA `memory_analysis`)\n\n"
                   + common.markdown_table(["cell", "H", "T", *METHODS], mem))
    return "\n".join(out)


def plot(result: dict[str, Any]):
    plt = common.pyplot()
    sizes = sorted({r["H"] for r in result["rows"]})
    colors = {H: plt.cm.viridis(i / max(len(sizes) - 1, 1)) for i, H in enumerate(sizes)}
    styles = {"newton": "o-", "quasi_newton": "s--", "elk": "^:"}
    fig, axes = plt.subplots(1, len(CELLS), figsize=(3.6 * len(CELLS), 3.6), sharey=True)
    for ax, name in zip(axes, CELLS):
        for m in METHODS[1:]:
            for H in sizes:
                pts = [(r["T"], r["forward_s"]["sequential"] / r["forward_s"][m]) for r in result["rows"]
                       if r["cell"] == name and r["H"] == H and m in r.get("forward_s", {})]
                if pts:
                    ax.loglog(*zip(*pts), styles[m], ms=3, color=colors[H])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(xlabel="T", title=name + (" (one exact scan)" if linear(name) else ""))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("speed-up over sequential (forward)")
    handles = [plt.Line2D([], [], color="gray", linestyle=styles[m][1:], marker=styles[m][0], label=m)
               for m in METHODS[1:]]
    handles += [plt.Line2D([], [], color=colors[H], lw=3, label=f"H = {H}") for H in sizes]
    axes[0].legend(handles=handles, fontsize=6, loc="lower left")
    return [("", fig)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    parser.add_argument("--render", action="store_true", help="redo parallel.md and the plot from parallel.json in --out")
    args = parser.parse_args(argv)
    if args.render:
        import json

        result = json.loads((args.out / "parallel.json").read_text())
        common.write_outputs(args.out, "parallel", result, to_markdown(result), plot(result))
        return
    print(to_markdown(run(args.out, quick=args.quick)))


if __name__ == "__main__":
    main()
