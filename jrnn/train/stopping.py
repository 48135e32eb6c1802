"""Early stopping and the best evaluation of a ``fit`` run, both read from its ``history``.

``EarlyStopping(patience, metric="loss", mode=None, min_delta=0.0)`` stops a run when the
evaluation ``metric`` has not improved for ``patience`` evaluations in a row. An evaluation
improves when its value is finite and better than the best so far by more than ``min_delta``
(lower for ``mode="min"``, higher for ``"max"``; ``None`` picks the metric's own direction: the
loss, ``mse``, ``mae``, ``rmse`` lower, accuracies higher). The state is a function of the
evaluation column of ``history`` alone, so a run resumed from a checkpoint stops exactly where an
uninterrupted one would, and a run that already stopped stays stopped.

``keep_best`` names the metric by which ``fit`` keeps the best checkpoint (``True``: the early
stopping metric, or the loss); ``best(history, metric, higher)`` is the best evaluation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from jrnn._checks import check_choice, check_float, check_int, fail
from jrnn.metrics import Metric

__all__ = ["EarlyStopping", "best", "check_early_stopping", "check_keep_best", "higher_is_better"]


def higher_is_better(name: str, metrics: Sequence[Metric]) -> bool:
    """The direction of ``"loss"`` (lower) or of a requested metric."""
    for m in metrics:
        if m.name == name:
            return m.higher_is_better
    return False


def _check_monitored(argument: str, name: Any, metrics: Sequence[Metric]) -> str:
    return check_choice(argument, name, ["loss", *(m.name for m in metrics)])


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop after ``patience`` evaluations without improvement of ``metric`` (module docstring).

    Args:
      patience: evaluations without improvement before the run stops (a positive int).
      metric: ``"loss"`` or one of ``fit``'s ``metrics``.
      mode: ``"min"``, ``"max"``, or None (the metric's own direction).
      min_delta: how much better than the best a value must be to count as an improvement.
    """

    #: Evaluations without improvement before the run stops.
    patience: int
    #: The watched evaluation: ``"loss"`` or one of ``fit``'s ``metrics``.
    metric: str = "loss"
    #: ``"min"``, ``"max"``, or None for the metric's own direction.
    mode: str | None = None
    #: How much better than the best a value must be to count as an improvement.
    min_delta: float = 0.0

    def __post_init__(self):
        check_int("early_stopping.patience", self.patience)
        if not isinstance(self.metric, str):
            fail("early_stopping.metric", "a metric name", repr(self.metric), TypeError)
        if self.mode is not None:
            check_choice("early_stopping.mode", self.mode, ("min", "max"))
        check_float("early_stopping.min_delta", self.min_delta, 0.0)

    def higher(self, metrics: Sequence[Metric]) -> bool:
        """Whether higher values of the watched metric are better (``mode``, else the metric's
        own direction among ``metrics``)."""
        if self.mode is not None:
            return self.mode == "max"
        return higher_is_better(self.metric, metrics)

    def should_stop(self, history: dict, metrics: Sequence[Metric]) -> bool:
        """Whether the evaluations recorded in ``history`` end ``patience`` evaluations without
        improvement."""
        higher = self.higher(metrics)
        best_value, waited = None, 0
        for value in history["eval"].get(self.metric, []):
            if _improves(value, best_value, higher, self.min_delta):
                best_value, waited = value, 0
            else:
                waited += 1
        return waited >= self.patience


def _improves(value, best_value, higher: bool, min_delta: float = 0.0) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if best_value is None:
        return True
    return value > best_value + min_delta if higher else value < best_value - min_delta


def check_early_stopping(value: Any, metrics: Sequence[Metric]) -> EarlyStopping | None:
    """None, a patience (int), a dict of ``EarlyStopping``'s fields, or an ``EarlyStopping``,
    whose metric is ``"loss"`` or one of ``metrics``."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = EarlyStopping(**value)
    elif not isinstance(value, EarlyStopping):
        if isinstance(value, bool) or not isinstance(value, int):
            fail("early_stopping", "None, a patience (int), a dict or a jrnn.train.EarlyStopping",
                 repr(value), TypeError)  # fmt: skip
        value = EarlyStopping(value)
    _check_monitored("early_stopping.metric", value.metric, metrics)
    return value


def check_keep_best(value: Any, stopping: EarlyStopping | None, metrics: Sequence[Metric]) -> tuple[str, bool] | None:
    """None, True (the early-stopping metric, else the loss) or a metric name ->
    ``(name, higher_is_better)`` or None."""
    if value is None or value is False:
        return None
    if value is True:
        if stopping is not None:
            return stopping.metric, stopping.higher(metrics)
        value = "loss"
    name = _check_monitored("keep_best", value, metrics)
    if stopping is not None and stopping.metric == name:
        return name, stopping.higher(metrics)
    return name, higher_is_better(name, metrics)


def best(history: dict, metric: str, higher: bool) -> dict | None:
    """The best evaluation in ``history`` by ``metric`` (the first one on ties):
    ``{"step", "metric", "value"}``, or None before any finite evaluation."""
    found = None
    for step, value in zip(history["eval"]["step"], history["eval"].get(metric, [])):
        if _improves(value, None if found is None else found["value"], higher):
            found = {"step": step, "metric": metric, "value": value}
    return found
