"""Shared benchmark machinery: environment record, interleaved timing, outputs.

Methodology (every script follows it):

* Steady state: each callable is compiled and run before timing; compile time is reported apart.
* Each call ends with ``block_until_ready`` (JAX) or returns host memory (PyTorch, NumPy).
* Peers are interleaved: round ``r`` visits every callable in a rotated order; each visit makes one
  untimed call first (so a runtime that has just woken up, or the thread pool of the runtime
  visited before it spinning down, is not charged to it), then times a block of ``k`` calls.
* The reported time is the median over rounds of the per-call block mean; ratios are ratios of
  medians taken in the same run, so a noisy neighbour slows all peers alike.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results"
LOCAL_OUT = DEFAULT_OUT / "local"
"""Where the runner writes without ``--out`` or ``--update-results``: not committed."""


# --------------------------------------------------------------------------------------------
# Environment


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    """The installed version of ``package`` without importing it (None when absent)."""
    if package == "jrnn":
        import jrnn

        return jrnn.__version__
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_threads() -> int | None:
    if "torch" not in sys.modules:
        return None
    import torch

    return torch.get_num_threads()


def command() -> str:
    """The command line that started this process as it is typed: ``python -m benchmarks.parallel
    --quick`` for a benchmark module run with ``-m`` (whose ``sys.argv[0]`` is the module's path),
    ``sys.argv`` itself otherwise."""
    first = Path(sys.argv[0])
    here = Path(__file__).resolve().parent
    if first.suffix == ".py" and first.resolve().parent == here:
        head = "python -m benchmarks" + ("" if first.stem == "__main__" else f".{first.stem}")
    else:
        head = first.name
    return " ".join([head, *sys.argv[1:]])


def environment() -> dict[str, Any]:
    """Device, versions and settings that a result depends on."""
    import jax

    devices = jax.devices()
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "versions": {m: _version(m) for m in ("jax", "jaxlib", "flax", "equinox", "torch", "numpy", "jrnn")},
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "torch_threads": torch_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def device_line(env: dict[str, Any]) -> str:
    """One line for a table header: what ran where."""
    v = env["versions"]
    peers = ", ".join(f"{k} {v[k]}" for k in ("flax", "equinox", "torch", "numpy") if v.get(k))
    threads = "; PyTorch and NumPy timed at 2 and at 1 thread" if env.get("torch_threads") else ""
    return (
        f"{env['cpu']} ({env['cpu_count']} cores), JAX {v['jax']} on {env['jax_backend']}; "
        f"{peers}{threads}; {env['date_utc']}"
    )


def set_torch_threads(n: int | None = None) -> int:
    """Pin PyTorch's intra-op threads to the core count (what XLA's CPU client uses)."""
    import torch

    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


# --------------------------------------------------------------------------------------------
# Timing


def block(tree: Any) -> Any:
    """Wait for every JAX array in ``tree``; other leaves pass through."""
    import jax

    return jax.block_until_ready(tree)


def _one(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(
    fns: dict[str, Callable[[], Any]],
    *,
    rounds: int = 7,
    min_block_s: float = 0.05,
    max_block: int = 50,
    budget_s: float | None = None,
    min_rounds: int = 3,
) -> dict[str, dict[str, Any]]:
    """Interleaved steady-state timing of zero-argument callables (each must block until done).

    Every callable is warmed up (two calls), then ``rounds`` rounds visit them in a rotated order.
    A visit makes one untimed call (skipped for calls over 0.2 s, where a switch cannot matter),
    then times ``k`` back-to-back calls, ``k`` chosen so a block lasts about ``min_block_s``. Returns ``{name: {"median_s", "q25_s", "q75_s", "min_s",
    "samples_s", "calls_per_sample"}}``. ``budget_s`` stops after the round that exceeds it (never
    before ``min_rounds``).
    """
    names = list(fns)
    block_len, settle = {}, {}
    for name in names:
        fns[name]()  # compile / first-touch
        t = _one(fns[name])
        block_len[name] = int(min(max_block, max(1, math.ceil(min_block_s / max(t, 1e-9)))))
        settle[name] = t < 0.2  # an untimed call per visit only where the switch could matter
    samples: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order = order[::-1]
        for name in order:
            fn, k = fns[name], block_len[name]
            if settle[name]:
                fn()  # untimed: absorb the switch from the previous runtime
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            samples[name].append((time.perf_counter() - t0) / k)
        if budget_s is not None and r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return {n: summarize(samples[n], block_len[n]) for n in names}


def summarize(samples: list[float], calls: int = 1) -> dict[str, Any]:
    a = np.asarray(samples, dtype=float)
    return {
        "median_s": float(np.median(a)),
        "q25_s": float(np.percentile(a, 25)),
        "q75_s": float(np.percentile(a, 75)),
        "min_s": float(a.min()),
        "samples_s": [float(x) for x in a],
        "calls_per_sample": calls,
    }


def geomean(values) -> float:
    v = [x for x in values if x is not None and x > 0 and math.isfinite(x)]
    return float(math.exp(sum(math.log(x) for x in v) / len(v))) if v else float("nan")


def fit_exponent(xs, ys) -> dict[str, float]:
    """Least-squares fit of ``y = a·x^p`` in log-log space: ``{"exponent", "prefactor", "r2"}``."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    p, c = np.polyfit(lx, ly, 1)
    pred = p * lx + c
    ss_res = float(np.sum((ly - pred) ** 2))
    ss_tot = float(np.sum((ly - ly.mean()) ** 2)) or 1.0
    return {"exponent": float(p), "prefactor": float(np.exp(c)), "r2": 1.0 - ss_res / ss_tot}


# --------------------------------------------------------------------------------------------
# Equivalence


def max_rel_error(got, want) -> float:
    """``max|got - want| / max(max|want|, 1e-6)`` over matching lists of arrays."""
    got, want = list(got), list(want)
    if len(got) != len(want):
        return float("inf")
    worst = 0.0
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g.shape != w.shape:
            return float("inf")
        scale = max(float(np.max(np.abs(w))) if w.size else 0.0, 1e-6)
        worst = max(worst, float(np.max(np.abs(g - w))) / scale if w.size else 0.0)
    return worst


# --------------------------------------------------------------------------------------------
# Outputs


def _three(v: float) -> str:
    """Three significant digits, without switching to an exponent at 1000 and above."""
    return f"{v:.3g}" if abs(v) < 999.5 else f"{v:.0f}"


def fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{_three(seconds * 1e3)} ms"
    return f"{_three(seconds * 1e6)} µs"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{_three(n / scale)} {unit}"
    return f"{int(n)} B"


def fmt_ratio(r: float | None) -> str:
    return "–" if r is None or not math.isfinite(r) else f"{r:.2f}×"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_outputs(out_dir: Path, name: str, result: dict[str, Any], markdown: str, figures=()) -> list[Path]:
    """Write ``name.json`` and ``name.md`` (and any matplotlib ``(suffix, figure)`` pairs as PNG)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    paths[0].write_text(json.dumps(_jsonable(result), indent=1, allow_nan=False) + "\n")
    paths[1].write_text(markdown.rstrip() + "\n")
    for suffix, fig in figures:
        path = out_dir / f"{name}_{suffix}.png" if suffix else out_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        paths.append(path)
        import matplotlib.pyplot as plt

        plt.close(fig)
    return paths


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def progress(iterable, desc: str, total: int | None = None, enabled: bool = True):
    """A tqdm bar on stderr (plain iteration when tqdm is missing or disabled)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True)
