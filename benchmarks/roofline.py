"""Roofline: how close does the training default get to the matrix-product rate of this CPU, and
where does the rest of its time go?

For every case of the speed grid (``speed.default_cases()``) the matrix products of one training
gradient with the hand-written backward (``backward="bptt"``, the training default) are counted,
per layer and direction (``G`` the cell's gate width: ``H`` vanilla, ``3H`` GRU, ``4H`` LSTM;
``D_l`` the layer's input width):

- input projection ``(T·B, D_l) @ (D_l, G)``, once, before the forward loop;
- recurrent, forward ``(B, H) @ (H, G)``, ``T`` times, one per step of the loop;
- recurrent, backward ``(B, G) @ (G, H)`` (``d_a w_hᵀ``), ``T`` times, one per step of the reverse loop;
- weight gradients, once after the loop: ``[x, h, 1]ᵀ d_a``, ``(D_l + H + 1, T·B) @ (T·B, G)``,
  where ``G ≥ 2 (D_l + H)`` (``cells.base.stacks_outer_sums``: the LSTM with ``H ≥ D_l``), else
  ``xᵀ d_a`` and ``hᵀ d_a`` (the GRU: ``xᵀ d_xp`` and ``hᵀ d_hp``), two products;
- input gradient ``(T·B, G) @ (G, D_l)``, once, for the layers above the first only (the first
  layer's input takes no gradient in a training step).

Each distinct product is then timed alone on this machine, with XLA, in the form jrnn writes it:
the recurrent ones inside a ``lax.scan`` of ``T`` dependent steps (so the loop's own cost per
step is included: it is the least any scan can pay), the others as one jitted product; the cost
of dispatching one compiled call (timed on an empty one) is taken off each and counted once, as
the gradient pays it once. Their sum is the **attainable time** of the gradient's products, and ``FLOPs / attainable time`` the
**attainable rate**: what XLA reaches on this CPU for exactly these matrix sizes, measured, not
quoted. A case's **fraction** is ``attainable time / measured time`` of its whole gradient
(equivalently achieved rate / attainable rate): 100 % would mean that nothing but the products
takes time. PyTorch's gradient (at its better thread setting) is timed in the same rounds and
given the same fraction: above 100 % means that its kernels beat XLA's products at these sizes.

**Where the rest goes** (single-layer rows): the forward (``jrnn.scan.forward`` keeping its
reserve) and the backward (``jrnn.scan.backward``) are timed on their own, interleaved with the
gradient, and each is split into its products' attainable time and the rest ("other": the gate
arithmetic, reading and writing the reserve, the loop); per step of its loop that rest is
``other / T``. What the two parts leave of the gradient is the loss and the glue around them.
Bytes: the reserve (``T·B·G``, written by the forward, read and overwritten by the backward) and
the carries are given against the copy bandwidth measured here, as the memory floor.

    python -m benchmarks.roofline [--quick] [--out DIR] [--render]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.peers import PEERS, Case, Unavailable, make_problem
from benchmarks.speed import TOLERANCE, check, default_cases, quick_cases, reference_of

GATE_BLOCKS = {"vanilla": 1, "gru": 3, "lstm": 4}
CARRY_LEAVES = {"vanilla": 1, "gru": 1, "lstm": 2}
RESERVE_BLOCKS = {"vanilla": 0, "gru": 4, "lstm": 4}
"""Width of a step's residuals in units of H (the GRU: its gates r, z, n and h_n; the vanilla cell
keeps none)."""
TORCH = ("torch", "torch-1t")


@dataclasses.dataclass(frozen=True)
class Product:
    """One kind of matrix product of a gradient: ``(M, K) @ (K, N)``, ``count`` times."""

    name: str
    M: int
    K: int
    N: int
    count: int
    in_loop: bool  # one per step of a loop (timed inside a scan of ``count`` steps)

    @property
    def flops(self) -> int:
        return 2 * self.M * self.K * self.N * self.count

    @property
    def key(self) -> tuple:
        """Products with the same key are timed once (``count`` is 1 outside loops)."""
        return (self.name, self.M, self.K, self.N, self.count)


def products(case: Case) -> list[Product]:
    """The matrix products of one training gradient of ``case`` with the hand-written backward
    (module docstring), one entry per layer, direction and kind."""
    from jrnn.cells.base import stacks_outer_sums

    B, T, D, H = case.shape
    G = GATE_BLOCKS[case.cell] * H
    dirs = 2 if case.bidirectional else 1
    out = []
    for layer in range(case.layers):
        D_l = D if layer == 0 else dirs * H
        for _ in range(dirs):
            out += [
                Product("input projection", T * B, D_l, G, 1, False),
                Product("recurrent, forward", B, H, G, T, True),
                Product("recurrent, backward", B, G, H, T, True),
            ]
            if case.cell != "gru" and stacks_outer_sums((D_l, H), G):  # Cell.param_grads: one over [x, h, 1]
                out.append(Product("weight gradients", D_l + H + 1, T * B, G, 1, False))
            else:  # one product per weight (the GRU's d_xp and d_hp differ; a narrow d_a)
                out += [Product("weight gradients", D_l, T * B, G, 1, False),
                        Product("weight gradients", H, T * B, G, 1, False)]
            if layer > 0:
                out.append(Product("input gradient", T * B, G, D_l, 1, False))
    return out


def flops(case: Case) -> int:
    """Matrix-product FLOPs of one training gradient (``products``)."""
    return sum(p.flops for p in products(case))


def reserve_bytes(case: Case, itemsize: int = 4) -> int:
    """Bytes the hand backward keeps between its loops, all layers: the residuals ``(T, B,
    RESERVE_BLOCKS·H)`` and the carries ``(T, B, H)`` per carry leaf, per layer and direction."""
    B, T, _, H = case.shape
    per = T * B * (RESERVE_BLOCKS[case.cell] + CARRY_LEAVES[case.cell]) * H * itemsize
    return per * case.layers * (2 if case.bidirectional else 1)


def _product_fn(p: Product):
    """A zero-argument callable timing ``p`` as jrnn computes it (module docstring)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    rand = lambda *shape: jnp.asarray(rng.standard_normal(shape, dtype=np.float32) / math.sqrt(shape[0]))  # noqa: E731
    if p.name == "recurrent, forward":  # h (B, H) @ w_h (H, G), T dependent steps
        B, H, G = p.M, p.K, p.N
        w, h0 = rand(H, G), rand(B, H)

        def loop(h, w):
            def step(h, _):
                a = h @ w
                return jnp.tanh(a.reshape(B, G // H, H).sum(axis=1)), None  # every column is used

            return jax.lax.scan(step, h, None, length=p.count)[0]

        f, args = jax.jit(loop), (h0, w)
    elif p.name == "recurrent, backward":  # d_a (B, G) @ w_hᵀ, w_h (H, G): T dependent steps
        B, G, H = p.M, p.K, p.N
        w, d0 = rand(H, G), rand(B, G)

        def loop(d, w):
            def step(d, _):
                d_h = d @ w.T
                return jnp.tile(jnp.tanh(d_h), (1, G // H)), None

            return jax.lax.scan(step, d, None, length=p.count)[0]

        f, args = jax.jit(loop), (d0, w)
    elif p.name == "weight gradients":  # stacked [x, h, 1]ᵀ (K_in, T·B) @ d_a (T·B, G)
        z, d = rand(p.K, p.M), rand(p.K, p.N)
        f, args = jax.jit(lambda z, d: z.T @ d), (z, d)
    elif p.name == "input gradient":  # d_a (T·B, G) @ w_xᵀ, w_x (D, G)
        d, w = rand(p.M, p.K), rand(p.N, p.K)
        f, args = jax.jit(lambda d, w: d @ w.T), (d, w)
    else:  # input projection: xs (T·B, D) @ w_x (D, G)
        x, w = rand(p.M, p.K), rand(p.K, p.N)
        f, args = jax.jit(lambda x, w: x @ w), (x, w)
    compiled = f.lower(*args).compile()
    return lambda: jax.block_until_ready(compiled(*args))


def _empty_call():
    """A jitted call that does nothing: what dispatching one compiled computation costs here."""
    import jax
    import jax.numpy as jnp

    a = jnp.zeros((1,), jnp.float32)
    compiled = jax.jit(lambda a: a + 1.0).lower(a).compile()
    return lambda: jax.block_until_ready(compiled(a))


def copy_bandwidth(nbytes: int = 64 << 20, rounds: int = 5) -> float:
    """Bytes per second of ``a + 1`` over a float32 array of ``nbytes`` (read + write counted)."""
    import jax
    import jax.numpy as jnp

    a = jnp.zeros(nbytes // 4, jnp.float32)
    f = jax.jit(lambda a: a + 1.0)
    t = common.measure({"copy": lambda: jax.block_until_ready(f(a))}, rounds=rounds)["copy"]["median_s"]
    return 2 * nbytes / t


def _parts(problem):
    """The forward (keeping the reserve) and the backward of a one-layer case, each its own
    compiled function: ``{"forward": fn, "backward": fn}`` (zero-argument, blocking)."""
    import jax
    import jax.numpy as jnp

    from jrnn import scan

    model, case = problem.model, problem.case
    cell, params = model.cell, problem.params.layers[0]
    # the layout the network runs the layer in: batch-major (time_axis=1) from a size on
    ax = int(scan.runs_batch_major("bptt", "sequential", case.B * case.T * case.H))
    xs = jnp.asarray(problem.xs)  # (B, T, D)
    xs = xs if ax else jnp.swapaxes(xs, 0, 1)
    carry = cell.initial_carry((case.B,))
    d_ys = np.random.default_rng(1).standard_normal((case.B, case.T, case.H), dtype=np.float32)
    d_ys = jnp.asarray(d_ys if ax else np.swapaxes(d_ys, 0, 1))
    d_carry = jax.tree_util.tree_map(jnp.zeros_like, carry)
    fwd = jax.jit(lambda p, xs: scan.forward(cell, p, xs, carry, None, keep="reserve", time_axis=ax))
    kept = jax.block_until_ready(fwd(params, xs))[2]
    bwd = jax.jit(lambda p, xs, kept: scan.backward(cell, p, xs, carry, None, kept, d_ys, d_carry, need_d_xs=False,
                                                    time_axis=ax))  # fmt: skip
    fwd_c, bwd_c = fwd.lower(params, xs).compile(), bwd.lower(params, xs, kept).compile()
    return {
        "forward": lambda: jax.block_until_ready(fwd_c(params, xs)),
        "backward": lambda: jax.block_until_ready(bwd_c(params, xs, kept)),
    }


def run_case(case: Case, product_s: dict, *, rounds: int, budget_s: float, min_block_s: float) -> dict[str, Any]:
    """Time one case (gradient, PyTorch, parts) and read it against its products' attainable time."""
    problem = make_problem(case)
    built, status = {}, {}
    for name in ("jrnn", "jrnn-bptt", *TORCH):
        try:
            built[name] = PEERS[name](problem)
            status[name] = {"available": True}
        except Unavailable as e:
            status[name] = {"available": False, "reason": str(e)}
    reference = reference_of(built.pop("jrnn"), modes=("train",))
    for name, b in list(built.items()):
        status[name]["check"] = check(b, reference, TOLERANCE)
        if not status[name]["check"]["ok"]:
            del built[name]  # computes something else: not timed
    if "jrnn-bptt" not in built:
        return {"case": case.asdict(), "label": case.label, "peers": status, "error": "jrnn-bptt unavailable"}
    fns = {name: b.train for name, b in built.items()}
    single = case.layers == 1 and not case.bidirectional
    if single:
        fns.update(_parts(problem))
    t = {k: v["median_s"] for k, v in common.measure(fns, rounds=rounds, budget_s=budget_s,
                                                     min_block_s=min_block_s).items()}  # fmt: skip
    prods = products(case)
    attainable = product_s["call"] + sum(product_s[p.key] for p in prods)
    by_kind: dict[str, float] = {}
    for p in prods:
        by_kind[p.name] = by_kind.get(p.name, 0.0) + product_s[p.key]
    total_flops = sum(p.flops for p in prods)
    row = {
        "case": case.asdict(), "label": case.label, "peers": status, "flops": total_flops,
        "reserve_bytes": reserve_bytes(case), "attainable_s": attainable, "products_s": by_kind,
        "attainable_rate": total_flops / attainable, "times_s": t,
        "bptt_s": t["jrnn-bptt"], "fraction": attainable / t["jrnn-bptt"],
        "rate": total_flops / t["jrnn-bptt"],
    }
    torch = [t[n] for n in TORCH if n in t]
    if torch:
        row["torch_best_s"] = min(torch)
        row["torch_fraction"] = attainable / min(torch)
        row["torch_ratio"] = t["jrnn-bptt"] / min(torch)
    if single:
        fwd_products = by_kind["input projection"] + by_kind["recurrent, forward"]
        bwd_products = by_kind["recurrent, backward"] + by_kind["weight gradients"]
        call = product_s["call"]  # each part is its own call: its dispatch is not "other"
        fwd_other, bwd_other = t["forward"] - call - fwd_products, t["backward"] - call - bwd_products
        row["profile"] = {
            "forward_s": t["forward"], "forward_products_s": fwd_products, "forward_other_s": fwd_other,
            "backward_s": t["backward"], "backward_products_s": bwd_products, "backward_other_s": bwd_other,
            "other_per_step_s": (fwd_other + bwd_other) / case.T,
            "glue_s": t["jrnn-bptt"] - call - (t["forward"] - call) - (t["backward"] - call),
        }
    return row


def shape_class(case: dict[str, Any]) -> str:
    """``latency`` (B·H ≤ 4096: a step's product is a few µs of work), ``gemm`` (H ≥ 512: large
    products), else ``medium``."""
    if case["B"] * case["H"] <= 4096:
        return "latency"
    return "gemm" if case["H"] >= 512 else "medium"


def run(out_dir: Path, *, quick: bool = False, show_progress: bool = True) -> dict[str, Any]:
    try:
        common.set_torch_threads()
    except ImportError:
        pass
    cases = quick_cases() if quick else default_cases()
    rounds, budget, block = (3, 1.0, 0.01) if quick else (7, 30.0, 0.05)
    needed = {p.key: p for c in cases for p in products(c)}
    fns = {key: _product_fn(p) for key, p in needed.items()}  # a loop's callable runs all its steps
    fns["call"] = _empty_call()
    measured = common.measure(fns, rounds=rounds, budget_s=budget * 2, min_block_s=block)
    overhead = measured.pop("call")["median_s"]  # each timed call pays it; the gradient pays it once
    product_s = {key: max(v["median_s"] - overhead, 0.0) for key, v in measured.items()}
    product_s["call"] = overhead
    bandwidth = copy_bandwidth(8 << 20 if quick else 64 << 20)
    rows = [run_case(c, product_s, rounds=rounds, budget_s=budget, min_block_s=block)
            for c in common.progress(cases, "roofline", enabled=show_progress)]  # fmt: skip
    _classify(rows, bandwidth)
    result = {
        "benchmark": "roofline",
        "question": "fraction of the attainable matrix-product rate one training gradient reaches, and where the rest goes",
        "command": common.environment()["command"],
        "environment": common.environment(),
        "method": {"rounds": rounds, "budget_s": budget, "min_block_s": block, "backward": "bptt",
                   "products": "timed alone with XLA in jrnn's form; recurrent ones in a scan of T dependent steps",
                   "copy_bandwidth_bytes_per_s": bandwidth},
        "call_overhead_s": product_s["call"],
        "products": [{**dataclasses.asdict(p), "seconds": product_s[k], "rate": p.flops / max(product_s[k], 1e-12)}
                     for k, p in needed.items()],
        "rows": rows,
    }
    result["summary"] = summarize(rows)
    common.write_outputs(out_dir, "roofline", result, to_markdown(result))
    return result


def _classify(rows: list[dict[str, Any]], bandwidth: float) -> None:
    """Each measured row's shape class, reserve bytes and memory floor (the reserve written and
    read once at ``bandwidth``)."""
    for r in rows:
        if "bptt_s" in r:
            r["class"] = shape_class(r["case"])
            r["reserve_bytes"] = reserve_bytes(Case(**r["case"]))
            r["memory_floor_s"] = 2 * r["reserve_bytes"] / bandwidth


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometric means of the fractions per shape class, jrnn and PyTorch."""
    out = {}
    for cls in ("latency", "medium", "gemm"):
        sel = [r for r in rows if r.get("class") == cls]
        if sel:
            out[cls] = {"cases": len(sel), "fraction_geomean": common.geomean([r["fraction"] for r in sel]),
                        "fraction_min": min(r["fraction"] for r in sel)}
            torch = [r["torch_fraction"] for r in sel if "torch_fraction" in r]
            if torch:
                out[cls]["torch_fraction_geomean"] = common.geomean(torch)
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def to_markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    out = [f"## Roofline of the training default (`backward=\"bptt\"`)\n\n{common.device_line(env)}\n\n"
           f"Command: `{result['command']}`\n"]
    out.append(
        "Attainable: the gradient's matrix products timed alone with XLA in jrnn's form (recurrent "
        "ones in a scan of T dependent steps); fraction = attainable time / measured time of the "
        "whole gradient (100 %: nothing but the products takes time). PyTorch at its better thread "
        "setting, timed in the same rounds, against the same attainable time (above 100 %: its kernels "
        "beat XLA's products at these sizes). Memory floor: the reserve written and read once at the "
        f"copy bandwidth measured here ({result['method']['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s)."
    )
    rows = []
    for r in result["rows"]:
        if "bptt_s" not in r:
            rows.append([r["label"], "–", "–", "–", "–", "–", "–", "–", r.get("error", "")])
            continue
        rows.append([
            r["label"], r["class"], f"{r['flops'] / 1e9:.2f}", f"{r['attainable_rate'] / 1e9:.0f}",
            common.fmt_time(r["attainable_s"]), common.fmt_time(r["bptt_s"]), _pct(r["fraction"]),
            _pct(r.get("torch_fraction")), common.fmt_ratio(r.get("torch_ratio")),
        ])
    out.append("\n### Every row of the speed grid\n\n" + common.markdown_table(
        ["case", "class", "GFLOP", "attainable GFLOP/s", "attainable", "jrnn-bptt", "jrnn fraction",
         "torch-best fraction", "jrnn-bptt / torch-best"], rows))
    rows = []
    for r in result["rows"]:
        p = r.get("profile")
        if not p:
            continue
        rows.append([
            r["label"], common.fmt_time(p["forward_s"]), common.fmt_time(p["forward_products_s"]),
            common.fmt_time(p["backward_s"]), common.fmt_time(p["backward_products_s"]),
            common.fmt_time(p["other_per_step_s"]), common.fmt_time(p["glue_s"]),
            common.fmt_time(r["memory_floor_s"]),
        ])
    out.append("\n### Where the time goes (one layer)\n\nforward: `scan.forward` keeping the reserve; "
               "backward: `scan.backward` (reverse loop and weight gradients); other per step: (forward + "
               "backward − their products' attainable time − their calls' dispatch) / T; glue: gradient − "
               "forward − backward (the loss, the layer's glue; dispatch counted once; negative where the two "
               "parts, compiled apart, take longer than inside the one gradient).\n\n" +
               common.markdown_table(["case", "forward", "its products", "backward", "its products",
                                      "other per step", "glue", "memory floor"], rows))
    rows = [[cls, s["cases"], _pct(s["fraction_geomean"]), _pct(s["fraction_min"]),
             _pct(s.get("torch_fraction_geomean"))] for cls, s in result["summary"].items()]
    out.append("\n### By shape class\n\nlatency: B·H ≤ 4096; gemm: H ≥ 512; medium: the rest.\n\n" +
               common.markdown_table(["class", "cases", "jrnn fraction (geomean)", "jrnn fraction (min)",
                                      "torch-best fraction (geomean)"], rows))
    rows = [[p["name"], f"({p['M']}, {p['K']}) @ ({p['K']}, {p['N']})", p["count"],
             common.fmt_time(p["seconds"]), f"{p['rate'] / 1e9:.0f}"] for p in result["products"]]
    out.append("\n### The products, timed alone\n\n" + common.markdown_table(
        ["product", "shape", "count", "time (all of them)", "GFLOP/s"], rows))
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=common.LOCAL_OUT)
    parser.add_argument("--render", action="store_true", help="recompute the derived columns and rewrite "
                        "OUT/roofline.md from OUT/roofline.json (no timing)")
    args = parser.parse_args(argv)
    if args.render:
        path = args.out / "roofline.json"
        result = json.loads(path.read_text())
        _classify(result["rows"], result["method"]["copy_bandwidth_bytes_per_s"])
        result["summary"] = summarize(result["rows"])
        common.write_outputs(args.out, "roofline", result, to_markdown(result))
    else:
        result = run(args.out, quick=args.quick)
    print(to_markdown(result))


if __name__ == "__main__":
    main()
