"""GPU: jrnn's LSTM on a GPU in float32 and bfloat16, against cuDNN.

Runs only when JAX sees a GPU; otherwise it records that it was skipped. Peers: jrnn (autodiff and
the hand-written backward), the cuDNN LSTM of ``jax.experimental.rnn`` (float32; it has no
bfloat16 path) and ``torch.nn.LSTM`` on CUDA when the installed torch has it. Every peer is
checked against jrnn in the same dtype before timing (bfloat16 with a looser tolerance); the
timing follows ``speed.py`` (interleaved rounds, medians, ratios peer / jrnn).

    python -m benchmarks.gpu [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.peers import Case
from benchmarks.speed import NAMED_SHAPES, run_case

PEERS = ["jrnn", "jrnn-bptt", "cudnn", "torch-cuda"]
DTYPES = {"float32": 2e-3, "bfloat16": 5e-2}  # dtype -> equivalence tolerance


def cases(quick: bool) -> list[Case]:
    shapes = [(4, 20, 4, 16)] if quick else NAMED_SHAPES
    structures = [(1, False)] if quick else [(1, False), (2, True)]
    return [Case("lstm", L, bi, *shape, dtype=dtype) for dtype in DTYPES for shape in shapes for (L, bi) in structures]


def run(out_dir: Path, *, quick: bool = False, show_progress: bool = True) -> dict[str, Any]:
    import jax

    env = common.environment()
    result = {
        "benchmark": "gpu",
        "question": "jrnn LSTM on GPU (float32, bfloat16) vs cuDNN",
        "command": env["command"],
        "environment": env,
        "cases": [],
    }
    if jax.default_backend() != "gpu":
        result["skipped"] = f"no GPU: JAX backend is {jax.default_backend()!r}"
    else:
        rounds, budget = (3, 1.0) if quick else (9, 20.0)
        for case in common.progress(cases(quick), "gpu", enabled=show_progress):
            result["cases"].append(run_case(case, PEERS, rounds=rounds, budget_s=budget, tolerance=DTYPES[case.dtype]))
    common.write_outputs(out_dir, "gpu", result, to_markdown(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    out = [f"## GPU\n\n{common.device_line(result['environment'])}\n\nCommand: `{result['command']}`\n"]
    if "skipped" in result:
        out.append(f"Skipped: {result['skipped']}.")
        return "\n".join(out)
    for mode in ("train", "infer"):
        rows = []
        for r in result["cases"]:
            t, q = r["timings"][mode], r["ratios"][mode]
            row = [f"{r['label']} {r['case']['dtype']}", common.fmt_time(t["jrnn"]["median_s"])]
            row += [f"{common.fmt_time(t[p]['median_s'])} ({common.fmt_ratio(q[p])})" if p in t else "–" for p in PEERS[1:]]
            rows.append(row)
        out.append(f"\n### {'Training gradient' if mode == 'train' else 'Inference'}\n\n"
                   + common.markdown_table(["case", "jrnn", *PEERS[1:]], rows))
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)
    print(to_markdown(run(args.out, quick=args.quick)))


if __name__ == "__main__":
    main()
