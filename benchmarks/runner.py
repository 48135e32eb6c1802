"""The runner of the benchmark suite: run some or all benchmarks and write their results.

::

    python -m benchmarks [--quick] [--only speed,memory,...] [--out DIR | --update-results]   # from the checkout root
    jrnn bench ...            # the same, from a source checkout (an editable install of jrnn)

Each benchmark answers one question (``BENCHMARKS``) and writes ``NAME.json`` (device, versions,
shapes, every timing, ratios), ``NAME.md`` (tables) and ``NAME*.png`` (plots) under ``--out``; the
runner adds ``summary.md`` (the tables of every benchmark in the folder, the latest run of each,
with its date, device and command; ``--only`` refreshes some and keeps the others) and
``index.json`` (what this run ran and what failed; ``runs``: the latest run of each). ``--quick``
runs tiny sizes in a few minutes at most: a smoke test, not a measurement. Without ``--out`` the
results go to ``benchmarks/results/local`` (``results/quick`` with ``--quick``), not committed;
only ``--update-results`` writes into the committed ``benchmarks/results``.

``configure_parser(parser)`` adds the options to an ``argparse`` parser and ``run(args)`` runs
them, returning an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from benchmarks import common

PROG = "python -m benchmarks"

BENCHMARKS = {
    "speed": "training gradient and inference time vs PyTorch, Flax, Equinox, NumPy hand BPTT",
    "roofline": "fraction of the attainable matrix-product rate the training default reaches, and where the rest goes",
    "memory": "peak memory of one gradient vs T: autodiff, remat, bptt",
    "compile": "compile time vs T, layers and unroll",
    "fit_overhead": "step time of jrnn.train.fit against a hand-written jitted loop on the same model and data",
    "scaling": "time vs T, B and H with fitted exponents",
    "quality": "tasks trained to their bars, time to reach them, chance baselines",
    "gpu": "vanilla, LSTM, GRU on GPU, float32 and bfloat16, vs cuDNN and torch on CUDA (skipped without a GPU)",
}
"""``name -> question``, in run order; each is the module ``benchmarks.<name>``."""


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the runner's options to ``parser``."""
    parser.description = parser.description or __doc__.split("\n\n")[0]
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test (minutes at most)")
    parser.add_argument(
        "--only", default=None, metavar="NAMES",
        help=f"comma-separated benchmarks to run (default: all): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help="output directory (default: benchmarks/results/local, or benchmarks/results/quick with "
             "--quick; neither is committed)",
    )
    parser.add_argument(
        "--update-results", action="store_true",
        help="write into the committed benchmarks/results (the measurements benchmarks/README.md "
             "quotes) instead of benchmarks/results/local",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _selected(only: str | None) -> list[str]:
    if only is None:
        return list(BENCHMARKS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise ValueError(f"--only must name benchmarks among {', '.join(BENCHMARKS)}, got {only!r}")
    return names


def _run_each(names: list[str], out: Path, args: argparse.Namespace) -> dict:
    status = {}
    for name in names:
        print(f"{PROG}: {name} — {BENCHMARKS[name]}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            module.run(out, quick=args.quick, show_progress=not getattr(args, "no_progress", False))
            status[name] = {"ok": True, "seconds": time.perf_counter() - t0}
        except Exception as e:  # noqa: BLE001 - one benchmark failing must not stop the others
            traceback.print_exc()
            status[name] = {"ok": False, "seconds": time.perf_counter() - t0, "error": f"{type(e).__name__}: {e}"[:1000]}
    return status


def _out_dir(args: argparse.Namespace) -> Path | None:
    """Where the results go (module docstring); None (after saying why) for conflicting options."""
    update = getattr(args, "update_results", False)
    if update and (args.out is not None or args.quick):
        print(f"{PROG}: --update-results writes the committed benchmarks/results; it takes neither "
              "--out nor --quick", file=sys.stderr)  # fmt: skip
        return None
    if args.out is not None:
        return Path(args.out)
    if update:
        return common.DEFAULT_OUT
    return common.DEFAULT_OUT / "quick" if args.quick else common.LOCAL_OUT


def run(args: argparse.Namespace) -> int:
    """Run the benchmarks ``args`` selects; 0 when all of them ran, 1 otherwise, 2 for bad options."""
    try:
        names = _selected(args.only)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    out = _out_dir(args)
    if out is None:
        return 2
    out.mkdir(parents=True, exist_ok=True)
    command = PROG + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "") + (
        f" --out {args.out}" if args.out is not None else "") + (
        " --update-results" if getattr(args, "update_results", False) else "")
    argv = sys.argv
    sys.argv = command.split()  # what common.environment() records as "command" in every result
    try:
        status = _run_each(names, out, args)
    finally:
        sys.argv = argv
    env = common.environment()
    env["command"] = command
    # --only updates its benchmarks and keeps the others' last results: the summary covers every
    # benchmark in OUT, each table with its own date and command
    index_path = out / "index.json"
    runs = {}
    if index_path.exists():
        try:
            runs = json.loads(index_path.read_text()).get("runs", {})
        except (ValueError, AttributeError):
            runs = {}
    for name in names:
        runs[name] = {**status[name], "command": command, "date_utc": env.get("date_utc")}
    for name in BENCHMARKS:  # results already in OUT from earlier runs
        if name not in runs and (out / f"{name}.json").exists() and (out / f"{name}.md").exists():
            try:
                earlier = json.loads((out / f"{name}.json").read_text())
                runs[name] = {"ok": True, "command": earlier.get("command"),
                              "date_utc": earlier.get("environment", {}).get("date_utc")}
            except ValueError:
                pass
    parts = [f"# jrnn benchmarks\n\n{common.device_line(env)}\n\nLast command: `{command}`"]
    for name in BENCHMARKS:
        if name not in runs:
            continue
        md = out / f"{name}.md"
        if runs[name]["ok"] and md.exists():
            parts.append(md.read_text().strip())
        else:
            parts.append(f"## {name}\n\nFailed: {runs[name].get('error', 'no output')}")
    (out / "summary.md").write_text("\n\n".join(parts) + "\n")
    index = {"command": command, "environment": env, "benchmarks": status, "runs": runs}
    index_path.write_text(json.dumps(index, indent=1) + "\n")
    failed = [n for n, s in status.items() if not s["ok"]]
    print(f"{PROG}: wrote {out}/summary.md" + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog=PROG))
    return run(parser.parse_args(argv))
