"""The record of a ``fit`` run: the ``history`` columns and the JSON-lines log, written together.

``history`` is a JSON-friendly dict of columns::

    {"train": {"step": [...], "loss": [...], "grad_norm": [...], "clipped": [...], "finite": [...],
               "num_updates": [...], "num_clipped": [...], "num_nonfinite": [...]},
     "eval":  {"step": [...], "loss": [...]}}

with ``step`` counting completed steps (1 for the first). The log file receives one JSON object
per line: ``{"step", "loss", "grad_norm", "clipped", "finite", "num_updates", "num_clipped",
"num_nonfinite", "time"}`` per step (``time``: seconds since the log was opened; a non-finite
number is written as ``null``) and ``{"step", "eval_loss"}`` per evaluation. When a run resumes,
the lines past its step are dropped first, so that the file matches the history.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from jrnn.train.step import METRICS

__all__ = ["RunLog", "host_metrics", "new_history", "trim_log"]


def new_history() -> dict:
    """The empty ``history`` of a run that starts at step 0 (module docstring).

    Returns:
      ``{"train": {"step": [], <one list per METRICS name>}, "eval": {"step": [], "loss": []}}``.
    """
    return {"train": {name: [] for name in ("step", *METRICS)}, "eval": {"step": [], "loss": []}}


def host_metrics(m: dict) -> dict:
    """A step's metrics as plain Python values.

    Args:
      m: the step's metrics (``METRICS``) as host NumPy scalars.

    Returns:
      ``{name: bool | int | float}`` for every name of ``METRICS``.
    """
    out = {}
    for name in METRICS:
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
    that closes the file."""

    def __init__(self, history: dict, path: str | os.PathLike | None = None, start: int = 0):
        self.history = history
        self._file = None
        if path is not None:
            path = os.fspath(path)
            if start > 0:
                trim_log(path, start)
            self._file = open(path, "a", buffering=1)
        self._t0 = time.perf_counter()

    def train(self, step: int, metrics: dict) -> None:
        """Record the metrics (``host_metrics``) of completed step ``step``."""
        columns = self.history["train"]
        columns["step"].append(step)
        for name in METRICS:
            columns[name].append(metrics[name])
        if self._file is not None:
            record = {"step": step, **{k: _json_value(v) for k, v in metrics.items()}}
            record["time"] = round(time.perf_counter() - self._t0, 4)
            self._file.write(json.dumps(record) + "\n")

    def eval(self, step: int, loss: float) -> None:
        """Record the evaluation loss after step ``step``."""
        self.history["eval"]["step"].append(step)
        self.history["eval"]["loss"].append(loss)
        if self._file is not None:
            self._file.write(json.dumps({"step": step, "eval_loss": _json_value(loss)}) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
