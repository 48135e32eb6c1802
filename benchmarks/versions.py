"""Versions: is the working tree's jrnn as fast as an earlier commit's, measured in one run?

The base revision's ``jrnn/`` is exported (``git archive``) into a temporary folder outside the
checkout; the working tree (uncommitted changes included) is the new version. Two long-lived
worker processes import one version each (``PYTHONPATH`` is that tree's root; the worker is a copy
of this file run by path, so it does not depend on either tree's ``benchmarks`` package), and
build every (case, mode) once: compile, warm up, choose a block of calls lasting at least
``--min-block-s``. Then the driver interleaves them: round after round, for every (case, mode),
it asks one worker then the other (alternating which goes first) for ``--samples`` blocks,
keeping the median block as that round's time. Reported: the median over rounds of each
version's time per call, the ratio new / base (below 1: the new version is faster), the 25-75%
range of the per-round ratios (the noise), and the geometric mean ratio per mode and overall.
Each worker also reports a fingerprint of its results (L1 norm, L2 norm and max of the outputs
or gradients), and the table gives their largest relative difference between the versions.

Modes, all through the public API both versions share (``RNN(cell=..., num_layers,
bidirectional)``, ``init``, ``apply``, ``jrnn.bptt.value_and_grad``):

* ``infer``: ``jax.jit(model.apply)`` on ``(B, T, D)`` float32 inputs;
* ``train-autodiff``, ``train-bptt``: ``jax.jit(jax.grad(loss))``, ``loss`` the MSE of
  ``model.apply(params, xs, backward=...)`` outputs against random targets;
* ``train-vg``: ``jrnn.bptt.value_and_grad(model, params, xs, targets, loss="mse")``, jitted.

Cases: the grid of ``speed.py`` (``default_cases()``); ``--quick`` runs each cell and a 2-layer
bidirectional LSTM at (B, T, D, H) = (4, 20, 4, 16), two rounds: a smoke test, not a measurement.

    python -m benchmarks.versions --base REV [--rounds N] [--quick] [--out DIR]

writes ``versions.json`` and ``versions.md`` into ``--out`` (default ``benchmarks/results/versions``,
or ``benchmarks/results/quick/versions`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

MODES = ("infer", "train-autodiff", "train-bptt", "train-vg")
QUICK_SHAPE = (4, 20, 4, 16)
VERSIONS = ("base", "new")


# --------------------------------------------------------------------------------------------
# The worker: imports only the standard library, numpy, jax and the jrnn of its tree


def _fingerprint(tree) -> list[float]:
    import jax
    import numpy as np

    leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(tree)]
    v = np.concatenate(leaves) if leaves else np.zeros(0)
    if not v.size:
        return [0.0, 0.0, 0.0]
    return [float(np.abs(v).sum()), float(np.sqrt(np.sum(v * v))), float(np.abs(v).max())]


def _build_case(case: dict[str, Any]):
    import jax
    import numpy as np

    import jrnn

    cells = {"vanilla": jrnn.VanillaCell, "lstm": jrnn.LSTMCell, "gru": jrnn.GRUCell}
    model = jrnn.RNN(cell=cells[case["cell"]](case["H"]), num_layers=case["layers"],
                     bidirectional=case["bidirectional"])
    params = model.init(jax.random.PRNGKey(0), case["D"])
    label = json.dumps(case, sort_keys=True)
    rng = np.random.default_rng(zlib.crc32(label.encode()))
    xs = rng.standard_normal((case["B"], case["T"], case["D"])).astype(np.float32)
    try:  # the outputs' shape without compiling
        shape = jax.eval_shape(lambda p, x: model.apply(p, x)[0], params, xs).shape
    except Exception:  # noqa: BLE001 - a version whose apply needs concrete inputs
        shape = model.apply(params, xs)[0].shape
    targets = rng.standard_normal(shape).astype(np.float32)
    return model, params, xs, targets


def _build_fn(model, params, xs, targets, mode: str):
    """A zero-argument callable running ``mode`` once and waiting for its results."""
    import jax
    import jax.numpy as jnp

    if mode == "infer":
        f = jax.jit(model.apply)
        args = (params, xs)
    elif mode in ("train-autodiff", "train-bptt"):
        backward = mode.split("-", 1)[1]

        def loss(p, x, y):
            return jnp.mean((model.apply(p, x, backward=backward)[0] - y) ** 2)

        f = jax.jit(jax.grad(loss))
        args = (params, xs, targets)
    elif mode == "train-vg":
        import jrnn.bptt

        f = jax.jit(lambda p, x, y: jrnn.bptt.value_and_grad(model, p, x, y, loss="mse"))
        args = (params, xs, targets)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return lambda: jax.block_until_ready(f(*args))


def _worker(root: str) -> None:
    """Answer the driver's JSON requests, one per line on stdin, one reply per line."""
    reply_to = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever else writes to stdout (warnings, C libraries) goes to stderr
    sys.stdout = sys.stderr

    def reply(obj):
        reply_to.write(json.dumps(obj) + "\n")
        reply_to.flush()

    try:  # the first reply: which jrnn this worker runs, or why it cannot
        import jax

        import jrnn

        where = Path(jrnn.__file__).resolve()
        if Path(root).resolve() not in where.parents:
            raise RuntimeError(f"imported jrnn from {where}, not from the tree {root}")
        reply({"jrnn_file": str(where), "jrnn_version": getattr(jrnn, "__version__", None),
               "jax": jax.__version__, "backend": jax.default_backend(), "python": sys.version.split()[0]})
    except Exception as e:  # noqa: BLE001 - reported to the driver
        import traceback

        traceback.print_exc()
        reply({"error": f"cannot import jrnn from {root}: {type(e).__name__}: {e}"})
        return
    fns: dict[str, Any] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg["op"]
        if op == "quit":
            break
        try:
            if op == "build":
                reply({"items": _build_items(msg["items"], msg["min_block_s"], fns)})
            elif op == "time":
                fn, k = fns[msg["id"]]
                fn()  # untimed: absorb the switch from the other worker
                samples = []
                for _ in range(msg["samples"]):
                    t0 = time.perf_counter()
                    for _ in range(k):
                        fn()
                    samples.append((time.perf_counter() - t0) / k)
                reply({"samples": samples})
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as e:  # noqa: BLE001 - reported to the driver
            reply({"error": f"{type(e).__name__}: {e}"[:2000]})


def _build_items(items: list[dict], min_block_s: float, fns: dict) -> dict[str, dict]:
    built: dict[str, dict] = {}
    cases: dict[str, Any] = {}
    for item in items:
        key = json.dumps(item["case"], sort_keys=True)
        try:
            if key not in cases:
                cases[key] = _build_case(item["case"])
            fn = _build_fn(*cases[key], item["mode"])
            t0 = time.perf_counter()
            out = fn()  # compile and first run
            compile_s = time.perf_counter() - t0
            fn()
            best, n, start = math.inf, 0, time.perf_counter()  # the fastest of a few calls
            while n < 3 or (n < 50 and time.perf_counter() - start < 2 * min_block_s):
                t0 = time.perf_counter()
                fn()
                best, n = min(best, time.perf_counter() - t0), n + 1
            k = int(min(10_000, max(1, math.ceil(min_block_s / max(best, 1e-9)))))
            fns[item["id"]] = (fn, k)
            built[item["id"]] = {"compile_s": compile_s, "calls_per_sample": k, "fingerprint": _fingerprint(out)}
        except Exception as e:  # noqa: BLE001 - a mode one version lacks is reported, not fatal
            built[item["id"]] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    return built


# --------------------------------------------------------------------------------------------
# The driver


class _Worker:
    def __init__(self, name: str, script: Path, tree: Path):
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--worker", str(tree)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=env, cwd=script.parent,
        )

    def send(self, msg: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"the {self.name} worker exited (status {self.proc.wait()}); "
                               "see its stderr above") from None

    def receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker exited (status {self.proc.wait()}); see its stderr above")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the {self.name} worker: {reply['error']}")
        return reply

    def ask(self, msg: dict) -> dict:
        self.send(msg)
        return self.receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"op": "quit"})
                self.proc.wait(timeout=30)
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass


def _git(root: Path, *args: str, text: bool = True):
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=text, check=True).stdout


def _export(root: Path, commit: str, dest: Path) -> None:
    """``jrnn/`` of ``commit`` into ``dest``."""
    data = _git(root, "archive", "--format=tar", commit, "jrnn", text=False)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Python without extraction filters
            tar.extractall(dest)


def cases(quick: bool) -> list:
    from benchmarks.peers import CELL_KINDS, Case
    from benchmarks.speed import default_cases

    if quick:
        return [*(Case(cell, 1, False, *QUICK_SHAPE) for cell in CELL_KINDS), Case("lstm", 2, True, *QUICK_SHAPE)]
    return default_cases()


def _relative_difference(a, b) -> float | None:
    if a is None or b is None:
        return None
    diffs = [abs(x - y) / max(abs(y), 1e-30) for x, y in zip(a, b)]
    return max(diffs) if diffs and all(math.isfinite(d) for d in diffs) else None


def _quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def compare(base_tree: Path, new_tree: Path, items: list[dict], *, rounds: int, samples: int,
            min_block_s: float, script: Path) -> tuple[dict, dict, dict]:
    """Build ``items`` in both workers, time them interleaved; ``(workers' info, built, per-round
    medians)``, the last two as ``{version: {item id: ...}}``."""
    workers = {"base": _Worker("base", script, base_tree), "new": _Worker("new", script, new_tree)}
    try:
        info = {v: w.receive() for v, w in workers.items()}
        t0 = time.perf_counter()
        for w in workers.values():  # built side by side: compiling is not what is compared
            w.send({"op": "build", "items": items, "min_block_s": min_block_s})
        built = {v: w.receive()["items"] for v, w in workers.items()}
        print(f"versions: built {len(items)} (case, mode) pairs in each version in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        ok = [it["id"] for it in items if all("error" not in built[v][it["id"]] for v in VERSIONS)]
        medians: dict[str, dict[str, list[float]]] = {v: {i: [] for i in ok} for v in VERSIONS}
        t0 = time.perf_counter()
        for r in range(rounds):
            for n, item_id in enumerate(ok):
                order = VERSIONS if (r + n) % 2 == 0 else VERSIONS[::-1]
                for v in order:
                    times = workers[v].ask({"op": "time", "id": item_id, "samples": samples})["samples"]
                    medians[v][item_id].append(statistics.median(times))
            ratios = [statistics.median(medians["new"][i]) / statistics.median(medians["base"][i]) for i in ok]
            geo = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")
            print(f"versions: round {r + 1}/{rounds} done at {time.perf_counter() - t0:.0f} s; "
                  f"geometric mean new/base so far {geo:.3f}", file=sys.stderr, flush=True)
        return info, built, medians
    finally:
        for w in workers.values():
            w.close()


def rows_of(case_list: list, modes: list[str], built: dict, medians: dict) -> list[dict[str, Any]]:
    rows = []
    for index, case in enumerate(case_list):
        for mode in modes:
            item_id = f"{index}:{mode}"
            row: dict[str, Any] = {"case": case.asdict(), "label": case.label, "mode": mode}
            for v in VERSIONS:
                b = built[v][item_id]
                row[v] = dict(b)
                if item_id in medians[v]:
                    row[v]["rounds_s"] = medians[v][item_id]
                    row[v]["median_s"] = statistics.median(medians[v][item_id])
            if all("median_s" in row[v] for v in VERSIONS):
                row["ratio"] = row["new"]["median_s"] / row["base"]["median_s"]
                per_round = [n / b for n, b in zip(row["new"]["rounds_s"], row["base"]["rounds_s"])]
                row["ratio_rounds"] = per_round
                row["ratio_q25"], row["ratio_q75"] = _quantile(per_round, 0.25), _quantile(per_round, 0.75)
            else:
                row["ratio"] = None
            row["output_difference"] = _relative_difference(row["new"].get("fingerprint"),
                                                            row["base"].get("fingerprint"))
            rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    from benchmarks import common

    summary = {}
    for mode in [*modes, "all"]:
        ratios = [r["ratio"] for r in rows if r["ratio"] is not None and mode in ("all", r["mode"])]
        summary[mode] = {
            "geomean": common.geomean(ratios),
            "min": min(ratios) if ratios else None,
            "max": max(ratios) if ratios else None,
            "cases": len(ratios),
        }
    return summary


def to_markdown(result: dict[str, Any]) -> str:
    from benchmarks import common

    base, new, s = result["base"], result["new"], result["settings"]
    dirty = " + uncommitted changes to jrnn/" if new["dirty"] else ""
    out = [
        f"## Versions: new vs base\n\n{common.device_line(result['environment'])}\n\n"
        f"Command: `{result['command']}`\n\n"
        f"Base: `{base['commit'][:12]}` ({base['rev']}); new: the working tree at `{new['commit'][:12]}`{dirty}. "
        f"Rounds: {s['rounds']}, the versions alternating which goes first; a version's time in a round is "
        f"the median of {s['samples']} timed block(s) of calls lasting at least {s['min_block_s'] * 1e3:.0f} ms, "
        "and its reported time the median over rounds. Ratio: new time / base "
        "time (below 1: the new version is faster); spread: the 25-75% range of the per-round ratios; "
        "Δ results: largest relative difference of the results' L1 norm, L2 norm and max between the versions.\n",
        common.markdown_table(
            ["mode", "geomean new/base", "min", "max", "cases"],
            [[m, common.fmt_ratio(v["geomean"]), common.fmt_ratio(v["min"]), common.fmt_ratio(v["max"]), v["cases"]]
             for m, v in result["summary"].items()],
        ),
        "",
    ]
    table = []
    for r in result["rows"]:
        errors = "; ".join(f"{v}: {r[v]['error']}" for v in VERSIONS if "error" in r[v])
        spread = (f"{r['ratio_q25']:.3f}-{r['ratio_q75']:.3f}" if r["ratio"] is not None else errors[:120])
        diff = r["output_difference"]
        table.append([
            r["label"], r["mode"],
            common.fmt_time(r["base"].get("median_s")), common.fmt_time(r["new"].get("median_s")),
            f"{r['ratio']:.3f}" if r["ratio"] is not None else "–", spread,
            f"{diff:.1e}" if diff is not None else "–",
        ])
    out.append(common.markdown_table(["case", "mode", "base", "new", "new/base", "spread", "Δ results"], table))
    return "\n".join(out)


def run(base_rev: str, out_dir: Path, *, rounds: int, quick: bool = False, samples: int = 3,
        min_block_s: float = 0.05, modes: list[str] | None = None, command: str | None = None) -> dict[str, Any]:
    from benchmarks import common

    root = common.ROOT
    modes = list(modes or MODES)
    base_commit = _git(root, "rev-parse", "--verify", f"{base_rev}^{{commit}}").strip()
    new_commit = _git(root, "rev-parse", "HEAD").strip()
    changed = [line for line in _git(root, "status", "--porcelain", "--", "jrnn").splitlines() if line.strip()]
    case_list = cases(quick)
    items = [{"id": f"{i}:{m}", "case": c.asdict(), "mode": m} for i, c in enumerate(case_list) for m in modes]
    with tempfile.TemporaryDirectory(prefix="jrnn-versions-") as tmp:
        tmp = Path(tmp)
        _export(root, base_commit, tmp / "tree-base")
        script = tmp / "jrnn_versions_worker.py"
        shutil.copyfile(Path(__file__), script)
        info, built, medians = compare(tmp / "tree-base", root, items, rounds=rounds, samples=samples,
                                       min_block_s=min_block_s, script=script)
    rows = rows_of(case_list, modes, built, medians)
    env = common.environment()
    if command:
        env["command"] = command
    result = {
        "benchmark": "versions",
        "question": "speed of the working tree's jrnn vs an earlier commit's, interleaved in one run",
        "command": env["command"],
        "environment": env,
        "base": {"rev": base_rev, "commit": base_commit, **info["base"]},
        "new": {"commit": new_commit, "dirty": bool(changed), "changed": changed, "tree": str(root), **info["new"]},
        "settings": {"rounds": rounds, "samples": samples, "min_block_s": min_block_s, "quick": quick, "modes": modes},
        "notes": "compile_s: first call of each (case, mode), both versions building side by side (indicative only); "
                 "fingerprint: L1 norm, L2 norm and max of the results; output_difference: their largest relative "
                 "difference between the versions",
        "summary": summarize(rows, modes),
        "rows": rows,
    }
    common.write_outputs(out_dir, "versions", result, to_markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.versions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, metavar="REV", help="the git revision to compare against (e.g. HEAD)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: 5, or 2 with --quick)")
    parser.add_argument("--samples", type=int, default=3,
                        help="timed blocks per visit; their median is the round's time (default: 3)")
    parser.add_argument("--min-block-s", type=float, default=0.05,
                        help="least duration of a timed block of calls (default: 0.05)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated modes (default: all): {', '.join(MODES)}")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a smoke test")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: benchmarks/results/versions, or "
                             "benchmarks/results/quick/versions with --quick)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes must name modes among {', '.join(MODES)}, got {args.modes!r}")
    if args.rounds is not None and args.rounds < 1 or args.samples < 1:
        parser.error("--rounds and --samples must be at least 1")
    from benchmarks import common

    out = args.out if args.out is not None else common.DEFAULT_OUT / ("quick/versions" if args.quick else "versions")
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    try:
        result = run(args.base, out, rounds=rounds, quick=args.quick, samples=args.samples,
                     min_block_s=args.min_block_s, modes=modes,
                     command=" ".join(["python -m benchmarks.versions", *argv]))
    except subprocess.CalledProcessError as e:
        print(f"versions: {' '.join(e.cmd)} failed: {(e.stderr or '').strip()}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"versions: {e}", file=sys.stderr)
        return 1
    summary = result["summary"]["all"]
    print(f"versions: geometric mean new/base {summary['geomean']:.3f} over {summary['cases']} (case, mode) pairs; "
          f"wrote {out}/versions.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
    else:
        sys.exit(main())
