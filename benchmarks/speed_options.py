"""Speed of the cell options and the minimal cells, against the plain LSTM and GRU of the same run.

The rows of the speed grid for what ``CELL_KINDS`` leaves out: ``MinGRUCell``, ``MinLSTMCell``,
``GRUCell(reset_after=False)``, ``LSTMCell(proj_size=64)``, ``LSTMCell(peepholes=True)`` and
``layer_norm=True`` for both; ``RNN(input_dropout=0.25, recurrent_dropout=0.25)`` (LSTM, GRU),
a ``(B, T)`` step mask with 20% of the steps off, and a bidirectional LSTM with ``merge="sum"``
and ``"mul"`` against ``"concat"``; at the grid's first shape (B, T, D, H) = (32, 100, 32, 128),
one layer. Each row times one training gradient with ``backward="autodiff"`` and with
``backward="bptt"`` (``jax.value_and_grad`` of ``mean((ys - target)²)``, as in ``speed.py``) and
forward-only inference. The plain LSTM and GRU are rows of the same run, and within each mode
(training, inference) every timing is measured interleaved with all the others
(``common.measure``: rounds that visit every callable in a rotated order), so a row's ratio to
its plain cell (the LSTM for the LSTM options and the minLSTM, the GRU for the GRU options and
the minGRU) is read off one run, under the same load.

Peers: PyTorch has the LSTM projection (``nn.LSTM(proj_size=...)``), so that row, and the plain
LSTM and GRU, are also timed against ``torch`` (all cores) and ``torch-1t`` (one thread); no peer
has the other options or the minimal cells. Every peer and the ``bptt`` backward are first checked
against jrnn's autodiff (loss, every weight gradient, outputs; ``speed.TOLERANCE``), and one that
disagrees is reported and not timed.

    python -m benchmarks.speed_options [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.peers import PEERS, Case, Unavailable, make_problem
from benchmarks.speed import NAMED_SHAPES, TOLERANCE, check, reference_of

DROPOUT = (("input_dropout", 0.25), ("recurrent_dropout", 0.25))

VARIANTS: list[tuple[str, tuple[tuple[str, Any], ...], str] | tuple[str, tuple, str, tuple, bool]] = [
    ("lstm", (), "lstm"),
    ("gru", (), "gru"),
    ("minlstm", (), "lstm"),
    ("mingru", (), "gru"),
    ("gru", (("reset_after", False),), "gru"),
    ("lstm", (("proj_size", 64),), "lstm"),
    ("lstm", (("peepholes", True),), "lstm"),
    ("lstm", (("layer_norm", True),), "lstm"),
    ("gru", (("layer_norm", True),), "gru"),
    ("lstm", (), "lstm", DROPOUT, False),
    ("gru", (), "gru", DROPOUT, False),
    ("lstm", (), "lstm", (("mask", 0.2),), False),
    ("lstm", (), "lstm bi", (), True),
    ("lstm", (), "lstm bi", (("merge", "sum"),), True),
    ("lstm", (), "lstm bi", (("merge", "mul"),), True),
]
"""``(cell, options, name of the row it is compared with[, network options, bidirectional])``:
cell options, then the network's (``peers.Case.network``: recurrent and input dropout with a fixed
key in training, a fixed step mask with 20% of the steps off, bidirectional merge modes). The quick
run halves ``proj_size``."""

PEER_NAMES = ["jrnn", "jrnn-bptt", "torch", "torch-1t"]
MODES = {"train": ("jrnn", "jrnn-bptt", "torch", "torch-1t"), "infer": ("jrnn", "torch", "torch-1t")}
"""The callables timed per mode (``jrnn-bptt`` runs the same forward as ``jrnn``)."""


def variant_name(cell: str, options: tuple[tuple[str, Any], ...], network: tuple[tuple[str, Any], ...] = (),
                 bidirectional: bool = False) -> str:  # fmt: skip
    return cell + (" bi" if bidirectional else "") + "".join(f" {k}={v}" for k, v in (*options, *network))


def cases(quick: bool) -> list[tuple[Case, str]]:
    """``(case, name of the row it is compared with)`` per variant."""
    B, T, D, H = (4, 20, 4, 16) if quick else NAMED_SHAPES[0]
    out = []
    for cell, options, plain, *more in VARIANTS:
        network, bidirectional = more if more else ((), False)
        options = tuple((k, H // 2 if k == "proj_size" else v) for k, v in options)
        out.append((Case(cell, 1, bidirectional, B, T, D, H, options=options, network=network), plain))
    return out


def run(out_dir: Path, *, quick: bool = False, show_progress: bool = True) -> dict[str, Any]:
    try:
        common.set_torch_threads()
    except ImportError:
        pass
    rounds, budget, block = (3, 1.0, 0.01) if quick else (15, 120.0, 0.05)
    rows, fns = [], {"train": {}, "infer": {}}
    for case, plain in common.progress(cases(quick), "speed options", enabled=show_progress):
        name = variant_name(case.cell, case.options, case.network, case.bidirectional)
        problem = make_problem(case)
        built, status = {}, {}
        for peer in PEER_NAMES:
            try:
                built[peer] = PEERS[peer](problem)
                status[peer] = {"available": True, "note": built[peer].note}
            except Unavailable as e:
                status[peer] = {"available": False, "reason": str(e)}
        reference = reference_of(built["jrnn"])
        for peer, b in list(built.items()):
            if peer != "jrnn":
                status[peer]["check"] = check(b, reference, TOLERANCE)
                if not status[peer]["check"]["ok"]:
                    del built[peer]  # computes something else: not timed
        for mode, peers in MODES.items():
            for peer in peers:
                if peer in built:
                    fns[mode][name, peer] = getattr(built[peer], mode)
        rows.append({"variant": name, "plain": plain, "case": case.asdict(), "label": case.label, "peers": status,
                     "compile_s": built["jrnn"].compile_s})
    timings = {}
    for mode, table in fns.items():
        measured = common.measure(dict(table), rounds=rounds, budget_s=budget, min_block_s=block)
        timings[mode] = {key: measured[key] for key in table}
    for row in rows:
        row["timings"], row["ratio_to_plain"], row["ratio_torch"] = {}, {}, {}
        for mode, peers in MODES.items():
            t = {peer: timings[mode][row["variant"], peer] for peer in peers if (row["variant"], peer) in timings[mode]}
            row["timings"][mode] = t
            for peer in ("jrnn", "jrnn-bptt"):
                base = timings[mode].get((row["plain"], peer))
                if peer in t and base:
                    row["ratio_to_plain"][f"{mode} {peer}"] = t[peer]["median_s"] / base["median_s"]
            torch_times = [t[p]["median_s"] for p in ("torch", "torch-1t") if p in t]
            for peer in ("jrnn", "jrnn-bptt"):
                if torch_times and peer in t:
                    row["ratio_torch"][f"{mode} {peer}"] = min(torch_times) / t[peer]["median_s"]
    result = {
        "benchmark": "speed_options",
        "question": "time of the cell options and the minimal cells against the plain LSTM and GRU, in one run",
        "command": common.environment()["command"],
        "environment": common.environment(),
        "method": {"rounds": rounds, "budget_s_per_mode": budget, "min_block_s": block, "tolerance": TOLERANCE,
                   "ratio_to_plain": "variant median / plain cell median, same mode and backward, same run",
                   "ratio_torch": "min(torch, torch-1t) median / jrnn median (above 1: jrnn is faster)",
                   "loss": "mean((ys - target)^2) over (B, T, output size)", "dtype": "float32"},
        "rows": rows,
    }
    common.write_outputs(out_dir, "speed_options", result, to_markdown(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    case = result["rows"][0]["case"]
    out = [f"## Speed of the cell options\n\n{common.device_line(env)}\n\nCommand: `{result['command']}`\n",
           f"One forward layer, (B, T, D, H) = ({case['B']}, {case['T']}, {case['D']}, {case['H']}), float32. "
           "Median time per call over interleaved rounds of every row and mode in one run; in brackets the "
           "ratio to the plain cell in the same column (`plain`), so above 1 means slower than the plain "
           "cell. `torch-best`: the faster of PyTorch at 2 threads and at 1, with the ratio torch / jrnn "
           "autodiff (above 1: jrnn is faster); `–`: no peer has that cell.\n"]
    rows = []
    for r in result["rows"]:
        t, q = r["timings"], r["ratio_to_plain"]
        cells = [r["variant"], r["plain"]]
        for mode, peer in (("train", "jrnn"), ("train", "jrnn-bptt"), ("infer", "jrnn")):
            if peer in t[mode]:
                cells.append(f"{common.fmt_time(t[mode][peer]['median_s'])} ({common.fmt_ratio(q.get(f'{mode} {peer}'))})")
            else:
                cells.append("–")
        for mode in ("train", "infer"):
            present = [t[mode][p]["median_s"] for p in ("torch", "torch-1t") if p in t[mode]]
            ratio = r["ratio_torch"].get(f"{mode} jrnn")
            cells.append(f"{common.fmt_time(min(present))} ({common.fmt_ratio(ratio)})" if present else "–")
        rows.append(cells)
    out.append(common.markdown_table(
        ["cell", "plain", "train autodiff", "train bptt", "inference", "torch-best train", "torch-best inference"],
        rows))
    failed = [(r["variant"], p, s["check"]) for r in result["rows"] for p, s in r["peers"].items()
              if s.get("check") and not s["check"]["ok"]]
    if failed:
        out.append("\nExcluded because they disagree with jrnn's autodiff: "
                   + "; ".join(f"{p} on {v}" for v, p, _ in failed))
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny shape: a smoke test, not a measurement")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: benchmarks/results, or benchmarks/results/quick with --quick)")
    args = parser.parse_args(argv)
    out = args.out or (common.DEFAULT_OUT / "quick" if args.quick else common.DEFAULT_OUT)
    print(to_markdown(run(out, quick=args.quick)))


if __name__ == "__main__":
    main()
