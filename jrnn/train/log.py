"""The record of a ``fit`` run: the ``history`` columns and the JSON-lines log, written together.

``history`` is a JSON-friendly dict of columns::

    {"train": {"step": [...], "loss": [...], "grad_norm": [...], "clipped": [...], "finite": [...],
               "num_updates": [...], "num_clipped": [...], "num_nonfinite": [...],
               <one column per requested metric, e.g. "accuracy": [...]>},
     "eval":  {"step": [...], "loss": [...], <one column per requested metric>}}

with ``step`` counting completed steps (1 for the first). A training column holds the value of
each step's batch (a requested metric with the parameters before the update); an evaluation
column the value over ``eval_data``. The log file receives one JSON object per line:
``{"step", "loss", "grad_norm", "clipped", "finite", "num_updates", "num_clipped",
"num_nonfinite", <metrics>, "time"}`` per step (``time``: seconds since the log was opened, when
the record reached the host; a non-finite number is written as ``null``), and ``{"step",
"eval_loss", "eval_<metric>", ...}`` per evaluation. The first step record of every ``fit`` call
also holds ``compile_s``, the seconds spent compiling (tracing, lowering and XLA compilation)
before it, so that step times are read apart from compilation. When a run resumes, the lines
past its step are dropped first, so that the file matches the history.

The step's metrics stay on the device: ``pack`` turns them into one vector inside the jitted step,
and ``fit`` fetches the vectors of ``log_every`` steps at once (``unpack`` reads one back).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from jrnn.train.objective import check_metrics
from jrnn.train.step import METRICS

__all__ = ["RunLog", "host_metrics", "new_history", "pack", "trim_log", "unpack"]

_BOOLS = ("clipped", "finite")
_INTS = ("num_updates", "num_clipped", "num_nonfinite")


def _names(metrics: Sequence) -> list[str]:
    return [m.name for m in check_metrics(tuple(metrics))]


def new_history(metrics: Sequence = ()) -> dict:
    """The empty ``history`` of a run that starts at step 0 (module docstring).

    Args:
      metrics: the requested metrics (names or ``jrnn.metrics.Metric``), one column each.

    Returns:
      ``{"train": {"step": [], <METRICS and metrics>: []}, "eval": {"step": [], "loss": [],
      <metrics>: []}}``.
    """
    names = _names(metrics)
    return {
        "train": {name: [] for name in ("step", *METRICS, *names)},
        "eval": {name: [] for name in ("step", "loss", *names)},
    }


def pack(metrics: dict, names: Sequence[str]):
    """A step's metrics -> one vector (traced, inside the step), in the order of ``names``; the
    dtype is the loss's (at least float32), which holds the counts and flags exactly."""
    dtype = jnp.result_type(metrics["loss"].dtype, jnp.float32)
    return jnp.stack([jnp.asarray(metrics[name]).astype(dtype) for name in names])


def unpack(row: np.ndarray, names: Sequence[str]) -> dict:
    """The inverse of ``pack`` on the host: ``{name: bool | int | float}``."""
    out = {}
    for name, v in zip(names, np.asarray(row).tolist()):
        out[name] = bool(v) if name in _BOOLS else int(v) if name in _INTS else float(v)
    return out


def host_metrics(m: dict, names: Sequence[str] = METRICS) -> dict:
    """A step's metrics (host NumPy scalars) as plain Python values: ``{name: bool | int | float}``."""
    out = {}
    for name in names:
        v = np.asarray(m[name])
        if v.dtype == np.bool_:
            out[name] = bool(v)
        else:
            out[name] = int(v) if np.issubdtype(v.dtype, np.integer) else float(v)
    return out


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def trim_log(path: str, step: int) -> None:
    """Drop the lines of ``path`` recorded after ``step`` (work lost by an interrupted run).

    The file is rewritten atomically; a line cut short by a kill is dropped too.

    Args:
      path: the JSON-lines log (nothing happens when it does not exist).
      step: the last step to keep (the step of the checkpoint the run resumes from).
    """
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (json.JSONDecodeError, AttributeError):
                continue  # a line cut short by the kill
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


class RunLog:
    """Appends each step's and each evaluation's record to ``history`` and, given a ``path``, to
    the JSON-lines file (trimmed to ``start`` first when the run resumes). A context manager
    that closes the file.

    Args:
      history: the run's history (extended in place).
      path: the JSON-lines file, or None.
      start: the step the run starts from.
      names: the training columns (``METRICS`` and the requested metrics), in record order.
    """

    def __init__(self, history: dict, path: str | os.PathLike | None = None, start: int = 0,
                 names: Sequence[str] = METRICS):  # fmt: skip
        self.history = history
        self.names = tuple(names)
        missing = [n for n in self.names if n not in history["train"]]
        if missing:
            raise ValueError(
                f"metrics must be those of the run being resumed (its history has columns "
                f"{sorted(history['train'])}), got new ones {missing}"
            )
        self._file = None
        if path is not None:
            path = os.fspath(path)
            if start > 0:
                trim_log(path, start)
            self._file = open(path, "a", buffering=1)
        self._t0 = time.perf_counter()

    def train(self, step: int, metrics: dict, extra: dict | None = None) -> None:
        """Record the metrics (plain values, ``unpack``) of completed step ``step``; ``extra``
        fields (such as ``compile_s``) go to the log line only."""
        columns = self.history["train"]
        columns["step"].append(step)
        for name in self.names:
            columns[name].append(metrics[name])
        if self._file is not None:
            record = {"step": step, **{k: _json_value(metrics[k]) for k in self.names}}
            record["time"] = round(time.perf_counter() - self._t0, 4)
            if extra:
                record.update(extra)
            self._file.write(json.dumps(record) + "\n")

    def eval(self, step: int, results: dict | float) -> None:
        """Record the evaluation after step ``step``: ``{"loss": ..., <metric>: ...}`` (a float
        is the loss alone)."""
        if not isinstance(results, dict):
            results = {"loss": results}
        columns = self.history["eval"]
        columns["step"].append(step)
        for name, value in results.items():
            columns.setdefault(name, []).append(value)
        if self._file is not None:
            record = {"step": step, **{f"eval_{k}": _json_value(v) for k, v in results.items()}}
            self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
