"""GPU: jrnn on a GPU against cuDNN and PyTorch's CUDA RNNs, in float32 and bfloat16.

The grid (``grid()``, in the order it runs): vanilla, LSTM and GRU; one layer at the four shapes
of ``speed.py``, then two layers, bidirectional, and both at its first shape; float32, then the
same in bfloat16; then long sequences, ``B`` in {1, 4}, ``T`` in {1000, 10000}, ``H = D`` in
{32, 512}, one layer, both dtypes.

Peers, each built from the same jrnn weights: ``jrnn`` (autodiff, the baseline), ``jrnn-bptt``
(the hand-written backward), ``jrnn-cudnn`` (``backward="cudnn"``: LSTM, float32),
``jrnn-pallas`` (``backward="pallas"``: the fused Pallas kernels), ``cudnn``
(``jax.experimental.rnn.lstm`` called directly, with its own weight packing) and ``torch-cuda``
(``torch.nn.RNN``/``LSTM``/``GRU`` on CUDA, cuDNN underneath). Before timing, every peer's loss,
weight gradients and outputs are checked against jrnn's in the same dtype (relative error within
``DTYPES[dtype]``: 1e-2 in float32, 5e-2 in bfloat16); a peer that disagrees or raises is
reported and not timed, one that cannot run a case (no CUDA torch, a cell cuDNN lacks, ...) is
reported unavailable with the reason. Timing follows ``speed.py``: interleaved rounds, medians,
ratios peer time / jrnn time.

Resumable by case: the results are rewritten to ``OUT/gpu.json`` and ``OUT/gpu.md`` after every
case, and a case already in ``OUT/gpu.json`` (same case, dtype and pass) is skipped. ``--pass
short`` (the default, the first pass) times each case briefly so that the whole grid fits in a few
minutes; ``--pass full`` times it again with more rounds. ``--budget-s``: no case starts after that
many seconds (rerun to go on). ``--dry-run``: two tiny cases on whatever backend JAX has (the CPU
in the tests): the Pallas peer runs in Pallas' interpreter, the CUDA peers say why they are
unavailable, and the times are not GPU numbers. Without a GPU and without ``--dry-run`` the
benchmark records that it was skipped.

    python -m benchmarks.gpu [--quick | --dry-run] [--pass short|full] [--budget-s S] [--out DIR]

``benchmarks/gpu_run.sh`` installs what a bare GPU machine lacks and runs this.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.peers import PEERS as BUILDERS
from benchmarks.peers import Case, Unavailable, make_problem
from benchmarks.speed import NAMED_SHAPES, STRUCTURES, check, reference_of

PEERS = ["jrnn", "jrnn-bptt", "jrnn-cudnn", "jrnn-pallas", "cudnn", "torch-cuda"]
BASELINE = "jrnn"
DTYPES = {"float32": 1e-2, "bfloat16": 5e-2}
"""dtype -> the largest relative error of a peer's loss, gradients and outputs against jrnn's.
Looser than ``speed.py``'s 2e-3 in float32: on recent NVIDIA GPUs float32 matrix products run as
TF32 by default (XLA, cuDNN and PyTorch's cuDNN RNNs alike), about 1e-3 relative per product, and
the errors of ``T`` steps add up. Every measured error is recorded in the JSON."""

CELLS = ("lstm", "gru", "vanilla")
LONG_SHAPES = [(B, T, H, H) for T in (1000, 10000) for B in (1, 4) for H in (32, 512)]
"""(B, T, D, H): long sequences at small batches, the regime where a fused kernel matters most."""

PASSES = {
    "short": {"rounds": 3, "budget_s": 0.3, "min_block_s": 0.02},
    "full": {"rounds": 9, "budget_s": 5.0, "min_block_s": 0.05},
}
"""Timing per case: the first pass is short, so that the grid is covered before it is refined."""


def grid() -> list[Case]:
    """Every case, in the order the driver runs them."""
    cases = []
    for dtype in DTYPES:
        cases += [Case(cell, 1, False, *shape, dtype=dtype) for cell in CELLS for shape in NAMED_SHAPES]
        cases += [Case(cell, L, bi, *NAMED_SHAPES[0], dtype=dtype) for (L, bi) in STRUCTURES for cell in CELLS]
    for dtype in DTYPES:
        cases += [Case(cell, 1, False, *shape, dtype=dtype) for shape in LONG_SHAPES for cell in CELLS]
    return cases


def quick_cases() -> list[Case]:
    """A few tiny cases on a GPU: every peer once."""
    return [Case("lstm", 1, False, 4, 20, 4, 16, dtype=d) for d in DTYPES] + [Case("gru", 2, True, 4, 20, 4, 16)]


def dry_cases() -> list[Case]:
    """Two tiny cases for a dry run on any backend."""
    return [Case("lstm", 1, False, 2, 5, 3, 4), Case("gru", 1, True, 2, 5, 3, 4)]


def case_key(case: Case, pass_name: str) -> str:
    return f"{case.label} {case.dtype} [{pass_name}]"


class _OutOfTime(Exception):
    """The hard deadline passed inside a case: it is dropped, and runs again next time."""


def _guard(deadline: float | None) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise _OutOfTime


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def run_case(case: Case, peers: list[str], *, rounds: int, budget_s: float, min_block_s: float,
             deadline: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Build, check and time every peer on one case; a peer that raises is reported, not fatal."""
    tolerance = DTYPES[case.dtype]
    out = {"case": case.asdict(), "label": case.label, "peers": {}, "timings": {}, "ratios": {}}
    problem = make_problem(case)
    built, status = {}, out["peers"]
    for name in peers:
        _guard(deadline)
        try:
            built[name] = BUILDERS[name](problem)
            status[name] = {"available": True, "compile_s": built[name].compile_s, "note": built[name].note}
        except Unavailable as e:
            status[name] = {"available": False, "reason": str(e)}
        except Exception as e:  # noqa: BLE001 - a peer's failure is a result
            status[name] = {"available": False, "reason": f"failed to build: {_reason(e)}"}
    if BASELINE not in built:
        out["error"] = f"baseline {BASELINE} unavailable: {status[BASELINE].get('reason')}"
        return out
    try:
        reference = reference_of(built[BASELINE])
    except Exception as e:  # noqa: BLE001
        out["error"] = f"baseline {BASELINE} failed: {_reason(e)}"
        return out
    for name in [n for n in built if n != BASELINE]:
        _guard(deadline)
        try:
            status[name]["check"] = check(built[name], reference, tolerance)
        except Exception as e:  # noqa: BLE001
            status[name]["check"] = {"ok": False, "tolerance": tolerance, "error": _reason(e)}
        if not status[name]["check"]["ok"]:
            del built[name]  # a peer that computes something else, or fails, is not timed
    for mode in ("train", "infer"):
        _guard(deadline)
        fns = {name: getattr(b, mode) for name, b in built.items()}
        try:
            out["timings"][mode] = common.measure(fns, rounds=rounds, budget_s=budget_s, min_block_s=min_block_s)
        except Exception as e:  # noqa: BLE001
            out["timings"][mode] = {}
            out.setdefault("errors", []).append(f"timing {mode}: {_reason(e)}")
            continue
        base = out["timings"][mode][BASELINE]["median_s"]
        out["ratios"][mode] = {n: v["median_s"] / base for n, v in out["timings"][mode].items()}
    return out


def _load(path: Path) -> list[dict[str, Any]]:
    """The cases of an earlier run in ``path`` (none when it is missing or unreadable)."""
    try:
        return list(json.loads(path.read_text()).get("cases", []))
    except (OSError, ValueError, AttributeError):
        return []


def run(out_dir: Path, *, quick: bool = False, show_progress: bool = True, dry_run: bool = False,
        pass_name: str = "short", budget_s: float | None = None, peers: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    if dry_run:
        os.environ.setdefault("JRNN_PALLAS_INTERPRET", "1")  # the Pallas peer in the interpreter
    import jax

    start = time.perf_counter()
    out_dir = Path(out_dir)
    env = common.environment()
    on_gpu = jax.default_backend() == "gpu"
    mode = "dry-run" if dry_run else ("quick" if quick else "grid")
    result = {
        "benchmark": "gpu",
        "question": "jrnn on GPU (float32, bfloat16) vs cuDNN and PyTorch on CUDA",
        "command": env["command"],
        "environment": env,
        "mode": mode,
        "pass": pass_name,
        "peers": peers or PEERS,
        "cases": [],
    }
    if not on_gpu and not dry_run:
        result["skipped"] = f"no GPU: JAX backend is {jax.default_backend()!r}"
        common.write_outputs(out_dir, "gpu", result, to_markdown(result))
        return result
    cases = dry_cases() if dry_run else (quick_cases() if quick else grid())
    earlier = [r for r in _load(out_dir / "gpu.json") if r.get("mode", mode) == mode]
    done = {r["key"] for r in earlier if "key" in r and "error" not in r}
    result["cases"] = [r for r in earlier if r.get("key") in done]
    todo = [c for c in cases if case_key(c, pass_name) not in done]
    result["resumed"] = len(cases) - len(todo)
    timing = PASSES["short" if dry_run else pass_name]
    deadline = None if budget_s is None else start + budget_s
    hard = None if budget_s is None else start + budget_s + 45  # a case still running then is dropped
    remaining = list(todo)
    for case in common.progress(todo, "gpu", enabled=show_progress):
        if deadline is not None and time.perf_counter() > deadline:
            break
        try:
            r = run_case(case, result["peers"], deadline=hard, **timing)
        except _OutOfTime:
            break
        r.update(key=case_key(case, pass_name), mode=mode, pass_name=pass_name)
        result["cases"].append(r)
        remaining.remove(case)
        result["remaining"] = [case_key(c, pass_name) for c in remaining]
        common.write_outputs(out_dir, "gpu", result, to_markdown(result))  # after every case: resumable
    result["remaining"] = [case_key(c, pass_name) for c in remaining]
    result["elapsed_s"] = time.perf_counter() - start
    common.write_outputs(out_dir, "gpu", result, to_markdown(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    out = [f"## GPU\n\n{common.device_line(result['environment'])}\n\nCommand: `{result['command']}`\n"]
    if "skipped" in result:
        out.append(f"Skipped: {result['skipped']}.")
        return "\n".join(out)
    if result.get("mode") == "dry-run":
        out.append(f"Dry run on {result['environment']['jax_backend']}: tiny cases, to check the driver and the "
                   "peers' checks; these times are not GPU numbers.\n")  # fmt: skip
    out.append("Median time per call; in brackets peer time / jrnn time (above 1: jrnn autodiff is faster). "
               "`–`: not timed (unavailable, or it disagreed with jrnn; see below).")  # fmt: skip
    peers = [p for p in result["peers"] if p != BASELINE]
    for mode, title in (("train", "Training gradient (forward + backward)"), ("infer", "Inference (forward only)")):
        rows = []
        for r in result["cases"]:
            t, q = r["timings"].get(mode, {}), r["ratios"].get(mode, {})
            row = [r["label"], r["case"]["dtype"], r.get("pass_name", ""),
                   common.fmt_time(t[BASELINE]["median_s"]) if BASELINE in t else "–"]  # fmt: skip
            row += [f"{common.fmt_time(t[p]['median_s'])} ({common.fmt_ratio(q[p])})" if p in t else "–" for p in peers]
            rows.append(row)
        out.append(f"\n### {title}\n\n" + common.markdown_table(["case", "dtype", "pass", BASELINE, *peers], rows))
    why: dict[tuple[str, str], list[str]] = {}
    for r in result["cases"]:
        for p, s in r["peers"].items():
            if not s.get("available"):
                reason = f"unavailable: {s.get('reason')}"
            elif s.get("check") and not s["check"]["ok"]:
                c = s["check"]
                reason = f"check failed: {c.get('error') or {k: v for k, v in c.items() if k not in ('ok',)}}"
            else:
                continue
            why.setdefault((p, reason), []).append(f"{r['label']} {r['case']['dtype']}")
        if "error" in r:
            why.setdefault(("case", r["error"]), []).append(f"{r['label']} {r['case']['dtype']}")
    if why:
        lines = [f"- **{p}** {reason} ({len(cases)} case{'s' if len(cases) > 1 else ''}: {', '.join(cases[:3])}"
                 f"{', ...' if len(cases) > 3 else ''})" for (p, reason), cases in why.items()]  # fmt: skip
        out.append("\n### Not timed\n\n" + "\n".join(lines))
    checked = sum(1 for r in result["cases"] for s in r["peers"].values() if s.get("check", {}).get("ok"))
    out.append(f"\nPeer checks passed before timing: {checked}.")
    if result.get("remaining"):
        out.append(f"\nNot run yet (budget reached; rerun to resume): {len(result['remaining'])} cases.")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few tiny cases (on a GPU)")
    parser.add_argument("--dry-run", action="store_true", help="two tiny cases on any backend: checks, no GPU numbers")
    parser.add_argument("--pass", dest="pass_name", choices=sorted(PASSES), default="short")
    parser.add_argument("--budget-s", type=float, default=None, help="start no case after this many seconds")
    parser.add_argument("--peers", default=None, help=f"comma-separated, from {','.join(PEERS)}")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    # JAX would take 75% of the GPU's memory up front; torch shares the card in this process
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    peers = None
    if args.peers:
        peers = [p.strip() for p in args.peers.split(",") if p.strip()]
        unknown = sorted(set(peers) - set(BUILDERS))
        if unknown:
            parser.error(f"unknown peers {unknown}; choose from {sorted(BUILDERS)}")
        if BASELINE not in peers:
            peers = [BASELINE, *peers]
    result = run(args.out, quick=args.quick, show_progress=not args.no_progress, dry_run=args.dry_run,
                 pass_name=args.pass_name, budget_s=args.budget_s, peers=peers)  # fmt: skip
    print(to_markdown(result))


if __name__ == "__main__":
    main()
