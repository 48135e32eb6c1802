"""Fit overhead: how much slower is a step of ``jrnn.train.fit`` than a hand-written jitted loop?

The same model, loss, optimizer and data order both ways: an LSTM classifier (a readout on the
last valid step, cross-entropy, Adam, ``backward="bptt"``) trained on minibatches of a fixed data
set. The hand-written loop is what one would write without ``fit``: a ``jax.jit`` of
``value_and_grad`` and the optax update, host NumPy minibatches passed straight to it (in the
order ``fit`` uses, computed beforehand), the losses kept on the device and one
``block_until_ready`` at the end. ``fit`` is timed as a user calls it: a whole call of ``S`` steps
(its setup included) with the progress bar off, and once more with the progress bar and a JSON
log on. Both end with the same parameters (checked before timing).

Each timed sample is one run of ``S`` steps from the initial parameters, after both are compiled
(compile time is reported apart, measured from ``jax.monitoring``'s compilation events); the
contenders are interleaved round by round in a rotated order and the median per-step time over
rounds is reported, with the ratio ``fit / hand`` as the median of per-round ratios. Target:
within 10% (ratio at most 1.10).

    python -m benchmarks.fit_overhead [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common

CASES = [
    dict(name="lstm-64", B=32, T=50, D=8, H=64, K=10, N=512),
    dict(name="lstm-32-short", B=16, T=20, D=4, H=32, K=10, N=256),
]
QUICK_CASES = [dict(name="lstm-16-quick", B=8, T=10, D=4, H=16, K=5, N=64)]
TARGET = 1.10


def build(case: dict[str, Any], steps: int) -> dict[str, Any]:
    """The problem and the three contenders of one case, checked against each other."""
    import jax
    import jax.numpy as jnp
    import optax

    import jrnn
    from jrnn.losses import cross_entropy
    from jrnn.train import fit
    from jrnn.train.data import Minibatches
    from jrnn.train.fit import CompileClock
    from jrnn.train.objective import as_objective

    B, T, D, H, K, N = (case[k] for k in ("B", "T", "D", "H", "K", "N"))
    model = jrnn.RNN(jrnn.LSTMCell(H), output_size=K)
    params = model.init(jax.random.PRNGKey(0), D)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((N, T, D)).astype(np.float32)
    labels = rng.integers(0, K, size=N).astype(np.int32)
    optimizer = optax.adam(1e-3)
    key = jax.random.PRNGKey(1)

    # fit's order, computed once: the hand-written loop reads the same minibatches
    order = Minibatches((xs, labels), B, None, objective=as_objective(model, "cross_entropy", None), input_size=D)
    order.set_key(jax.random.split(key)[0])
    indices = [order.indices(s) for s in range(steps)]

    @jax.jit
    def step(params, opt_state, xs, labels):
        def loss_fn(p):
            ys, _ = model.apply(p, xs, backward="bptt")
            return cross_entropy(ys, labels)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def hand():
        p, o = params, optimizer.init(params)
        losses = []
        for idx in indices:
            p, o, loss = step(p, o, xs[idx], labels[idx])
            losses.append(loss)
        return jax.block_until_ready((p, o, losses))

    fit_kwargs = dict(steps=steps, batch_size=B, loss="cross_entropy", key=key)
    log_dir = tempfile.mkdtemp(prefix="jrnn-fit-overhead-")

    def fit_plain():
        return fit(model, params, optimizer, (xs, labels), progress=False, **fit_kwargs)

    def fit_logged():
        with contextlib.redirect_stderr(io.StringIO()):  # the bar draws, into a buffer
            return fit(model, params, optimizer, (xs, labels), progress=True,
                       log_path=f"{log_dir}/log.jsonl", **fit_kwargs)  # fmt: skip

    with CompileClock() as clock:
        t0 = time.perf_counter()
        hand_params = hand()[0]
        hand_first = time.perf_counter() - t0
    hand_compile = clock.seconds
    t0 = time.perf_counter()
    first = fit_plain()
    fit_first = time.perf_counter() - t0
    error = common.max_rel_error(jax.tree_util.tree_leaves(first.params), jax.tree_util.tree_leaves(hand_params))
    return {
        "fns": {"hand": hand, "fit": fit_plain, "fit+bar+log": fit_logged},
        "compile_s": {"hand": hand_compile, "fit": first.timing["compile_s"]},
        "first_call_s": {"hand": hand_first, "fit": fit_first},
        "check": {"max_rel_error": error, "ok": bool(error < 1e-4)},
    }


def time_interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    """``rounds`` rounds, each running every contender once in a rotated order; seconds per run."""
    names = list(fns)
    for name in names:  # warm: compiled, caches filled
        fns[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
    return samples


def run(out_dir: Path, *, quick: bool = False, show_progress: bool = True) -> dict[str, Any]:
    import jax

    cases = QUICK_CASES if quick else CASES
    steps = 20 if quick else 200
    rounds = 3 if quick else 21
    rows = []
    for case in common.progress(cases, "fit_overhead", enabled=show_progress):
        built = build(case, steps)
        if not built["check"]["ok"]:
            rows.append({"case": case, "check": built["check"], "note": "fit and the hand loop disagree: not timed"})
            continue
        samples = time_interleaved(built["fns"], rounds)
        per_step = {n: [s / steps for s in v] for n, v in samples.items()}
        ratios = {n: [a / b for a, b in zip(per_step[n], per_step["hand"])] for n in per_step if n != "hand"}
        rows.append({
            "case": case,
            "steps_per_run": steps,
            "check": built["check"],
            "compile_s": built["compile_s"],
            "first_call_s": built["first_call_s"],
            "step_s": {n: common.summarize(v) for n, v in per_step.items()},
            "ratio_to_hand": {n: {"median": float(np.median(v)), "q25": float(np.percentile(v, 25)),
                                  "q75": float(np.percentile(v, 75))} for n, v in ratios.items()},
        })  # fmt: skip
    env = common.environment()
    timed = [r for r in rows if "ratio_to_hand" in r]
    result = {
        "benchmark": "fit_overhead",
        "question": "step time of jrnn.train.fit against a hand-written jitted loop on the same model and data",
        "command": env["command"],
        "environment": env,
        "steps_per_run": steps,
        "rounds": rounds,
        "target_ratio": TARGET,
        "rows": rows,
        "target_met": {r["case"]["name"]: bool(r["ratio_to_hand"]["fit"]["median"] <= TARGET) for r in timed},
        "devices": [str(d) for d in jax.devices()],
    }
    common.write_outputs(out_dir, "fit_overhead", result, to_markdown(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    out = [
        f"## Fit overhead\n\n{common.device_line(result['environment'])}\n\nCommand: `{result['command']}`\n",
        "An LSTM classifier (readout at the last step, cross-entropy, Adam, `backward=\"bptt\"`) trained on "
        "minibatches of a fixed data set: `jrnn.train.fit` against a hand-written `jax.jit` loop over the same "
        f"minibatches. Time per step over runs of {result['steps_per_run']} steps (a whole `fit` call, setup "
        f"included), median of {result['rounds']} interleaved rounds; ratio: median of per-round ratios "
        "(25-75% range). Compilation apart.\n",
    ]
    rows = []
    for r in result["rows"]:
        c = r["case"]
        shape = f"{c['name']} (B={c['B']}, T={c['T']}, D={c['D']}, H={c['H']}, K={c['K']})"
        if "ratio_to_hand" not in r:
            rows.append([shape, "–", "–", "–", r.get("note", ""), "–", "–"])
            continue
        t, q = r["step_s"], r["ratio_to_hand"]
        rows.append([
            shape,
            common.fmt_time(t["hand"]["median_s"]),
            common.fmt_time(t["fit"]["median_s"]),
            common.fmt_time(t["fit+bar+log"]["median_s"]),
            f"{q['fit']['median']:.3f} ({q['fit']['q25']:.2f}-{q['fit']['q75']:.2f})",
            f"{q['fit+bar+log']['median']:.3f}",
            f"{common.fmt_time(r['compile_s']['fit'])} / {common.fmt_time(r['compile_s']['hand'])}",
        ])  # fmt: skip
    out.append(common.markdown_table(
        ["case", "hand loop", "fit", "fit + bar + log", "fit / hand", "fit+bar+log / hand", "compile: fit / hand"],
        rows,
    ))  # fmt: skip
    verdicts = ", ".join(f"{name} **{'met' if ok else 'not met'}**" for name, ok in result["target_met"].items())
    out.append(f"\nTarget `fit` within {100 * (result['target_ratio'] - 1):.0f}% of the hand loop: {verdicts}.")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)
    print(to_markdown(run(args.out, quick=args.quick)))


if __name__ == "__main__":
    main()
