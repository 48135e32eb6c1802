"""Metrics of sequence models, masked by ``seq_lengths`` with the scoring rule of ``jrnn.losses``.

Shapes: ``B`` batch, ``T`` time steps, ``O`` regression outputs, ``K`` classes.

Every metric takes predictions and targets the way the losses do, and scores the same steps:

========================  =========================  =====================  ==================
metric                    predictions                every valid step       last valid step
========================  =========================  =====================  ==================
``mse`` ``mae`` ``rmse``  ``preds (B, T, O)``        ``targets (B, T, O)``  ``targets (B, O)``
``accuracy``, top-k       ``logits (B, T, K)``       ``labels (B, T)``      ``labels (B,)``
========================  =========================  =====================  ==================

Step ``t`` of sequence ``b`` is valid when ``t < L_b`` (``seq_lengths``); unscored steps count
neither in the sum nor in the mean, and their targets are never read. Sequence-level predictions
(one output per sequence, as a pooled model gives: ``preds (B, O)``, ``logits (B, K)``) take
``targets (B, O)`` or ``labels (B,)``; a sequence is scored when its length is above 0 (or always,
without ``seq_lengths``). When nothing is scored a metric is 0, as the losses are.

- ``accuracy``: the fraction of scored steps where ``argmax_k logits == label`` (the first
  maximum on ties, as ``jnp.argmax``).
- ``top_k_accuracy(k)``: the fraction of scored steps whose label's logit has fewer than ``k``
  logits strictly above it (ties count in the label's favour).
- ``mse``, ``mae``: the mean squared / absolute error over the scored elements (``O`` per step);
  ``rmse``: the square root of ``mse``.

**Aggregation.** A metric is a ``Metric(name, parts, finish, higher_is_better)``:
``parts(preds, targets, seq_lengths) -> (total, count)`` sums over the scored elements, and the
value is ``finish(total, count)``. Summing the parts of many batches before finishing gives the
metric of the whole data set exactly (an RMSE is the root of the pooled mean, not a mean of
roots); ``jrnn.train.evaluate`` and ``fit`` aggregate that way.

**Names.** ``METRICS`` is the table of names ``fit`` and ``evaluate`` accept: ``"accuracy"``,
``"top_5_accuracy"``, ``"mse"``, ``"mae"``, ``"rmse"``; ``get_metric`` also builds
``"top_<k>_accuracy"`` for any ``k`` and passes a ``Metric`` of your own through.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn._checks import check_array_dtype, check_int, check_seq_lengths, fail, is_concrete, shape_of
from jrnn.losses import _scored_mask

__all__ = [
    "METRICS",
    "Metric",
    "accuracy",
    "get_metric",
    "mae",
    "mse",
    "rmse",
    "top_k",
    "top_k_accuracy",
]

Array = jax.Array


# ----------------------------------------------------------------------------------------------
# Validation: predictions, targets and the scored mask, in the per-step form (B, T, ·)
# ----------------------------------------------------------------------------------------------


def _prepare(preds, targets, seq_lengths, *, labels: bool):
    """Validate and bring any layout to the per-step form.

    Returns ``(preds (B, T, C), targets (B, T, O) or labels (B, T), scored (B, T))``.
    """
    p_name, t_name = ("logits", "labels") if labels else ("preds", "targets")
    preds = jnp.asarray(preds)
    shape = shape_of(preds)
    if len(shape) not in (2, 3):
        layout = "(B, T, K) per step or (B, K) per sequence" if labels else "(B, T, O) per step or (B, O) per sequence"
        fail(p_name, layout, f"shape {shape}")
    check_array_dtype(p_name, preds, "floating")
    targets = jnp.asarray(targets)
    check_array_dtype(t_name, targets, "integer" if labels else "real", "(class indices)" if labels else "")
    B, C = shape[0], shape[-1]
    T = shape[1] if len(shape) == 3 else 1
    per_sequence = len(shape) == 2
    if labels:
        every, last = ((B, T), (B,)) if not per_sequence else (None, (B,))
        names = ("(B, T)", "(B,)")
    else:
        every, last = ((B, T, C), (B, C)) if not per_sequence else (None, (B, C))
        names = ("(B, T, O)", "(B, O)")
    given = shape_of(targets)
    if given not in (every, last):
        if per_sequence:
            expected = f"{names[1]} = {last} for {p_name} of shape {shape} (one output per sequence)"
        else:
            expected = (f"{names[0]} = {every} to score every valid step or {names[1]} = {last} to "
                        "score the last valid step only")  # fmt: skip
        fail(t_name, expected, f"shape {given}")
    # per sequence, any length >= 0 is valid: the model has already read the sequence
    lengths = check_seq_lengths(seq_lengths, B, shape[1] if not per_sequence else np.iinfo(np.int32).max)
    if per_sequence:
        preds = preds[:, None, :]  # (B, 1, C)
        lengths = None if lengths is None else jnp.minimum(lengths, 1)
        every_step = False
    else:
        every_step = given == every
    if not every_step:
        targets = targets[:, None] if labels else targets[:, None, :]  # (B, 1[, O])
        targets = jnp.broadcast_to(targets, (B, T) if labels else (B, T, C))
    scored = _scored_mask(B, T, lengths, every_step)  # (B, T)
    if labels:
        if is_concrete(targets) and is_concrete(scored):
            used = np.asarray(targets)[np.asarray(scored)]
            if used.size and (used.min() < 0 or used.max() >= C):
                fail(t_name, f"class indices in [0, K) = [0, {C}) at scored steps",
                     f"values in [{used.min()}, {used.max()}]")  # fmt: skip
    return preds, targets, scored


def _count(scored: Array, dtype, per_step: int = 1) -> Array:
    return jnp.sum(scored.astype(dtype)) * per_step


def _finish_mean(total: Array, count: Array) -> Array:
    """``total / max(count, 1)``: the mean over scored elements, 0 when nothing is scored."""
    return total / jnp.maximum(count, jnp.ones_like(count))


def _finish_root_mean(total: Array, count: Array) -> Array:
    return jnp.sqrt(_finish_mean(total, count))


# ----------------------------------------------------------------------------------------------
# Parts: (total, count) over the scored elements
# ----------------------------------------------------------------------------------------------


def _label_dtype(logits: Array):
    return jnp.result_type(logits.dtype, jnp.float32)


def accuracy_parts(logits, labels, seq_lengths=None) -> tuple[Array, Array]:
    """``(number of scored steps predicted right, number of scored steps)``."""
    logits, labels, scored = _prepare(logits, labels, seq_lengths, labels=True)
    dtype = _label_dtype(logits)
    right = (jnp.argmax(logits, axis=-1) == labels) & scored  # (B, T)
    return jnp.sum(right.astype(dtype)), _count(scored, dtype)


def top_k_accuracy_parts(logits, labels, seq_lengths=None, *, k: int = 5) -> tuple[Array, Array]:
    """``(number of scored steps whose label is among the top k, number of scored steps)``."""
    k = check_int("k", k)
    logits, labels, scored = _prepare(logits, labels, seq_lengths, labels=True)
    dtype = _label_dtype(logits)
    in_range = (labels >= 0) & (labels < logits.shape[-1])  # traced labels out of range are wrong
    safe = jnp.where(scored & in_range, labels, 0)
    picked = jnp.take_along_axis(logits, safe[:, :, None], axis=-1)  # (B, T, 1)
    above = jnp.sum((logits > picked).astype(jnp.int32), axis=-1)  # (B, T)
    right = (above < k) & scored & in_range
    return jnp.sum(right.astype(dtype)), _count(scored, dtype)


def _error_parts(preds, targets, seq_lengths, power: Callable[[Array], Array]) -> tuple[Array, Array]:
    preds, targets, scored = _prepare(preds, targets, seq_lengths, labels=False)
    residual = jnp.where(scored[:, :, None], preds - targets.astype(preds.dtype), 0)  # (B, T, O)
    dtype = _label_dtype(preds)  # float16/bfloat16 sums accumulate in float32
    return jnp.sum(power(residual.astype(dtype))), _count(scored, dtype, preds.shape[-1])


def squared_error_parts(preds, targets, seq_lengths=None) -> tuple[Array, Array]:
    """``(sum of squared errors, number of scored elements)``."""
    return _error_parts(preds, targets, seq_lengths, jnp.square)


def absolute_error_parts(preds, targets, seq_lengths=None) -> tuple[Array, Array]:
    """``(sum of absolute errors, number of scored elements)``."""
    return _error_parts(preds, targets, seq_lengths, jnp.abs)


# ----------------------------------------------------------------------------------------------
# The metrics
# ----------------------------------------------------------------------------------------------


def accuracy(logits, labels, seq_lengths=None) -> Array:
    """The fraction of scored steps where the largest logit is the label's.

    Args:
      logits: ``(B, T, K)`` per step or ``(B, K)`` per sequence, floating.
      labels: integer class indices ``(B, T)`` (every valid step) or ``(B,)`` (the last valid
        step, or the sequence).
      seq_lengths: optional ``(B,)`` valid lengths in ``[0, T]``.

    Returns:
      A scalar in ``[0, 1]`` (0 when nothing is scored).
    """
    return _finish_mean(*accuracy_parts(logits, labels, seq_lengths))


def top_k_accuracy(logits, labels, seq_lengths=None, *, k: int = 5) -> Array:
    """The fraction of scored steps whose label's logit has fewer than ``k`` logits above it.

    Args: as :func:`accuracy`, and ``k`` a positive int (``k = 1`` is ``accuracy`` up to ties).

    Returns:
      A scalar in ``[0, 1]``.
    """
    return _finish_mean(*top_k_accuracy_parts(logits, labels, seq_lengths, k=k))


def mse(preds, targets, seq_lengths=None) -> Array:
    """Mean squared error over the scored elements (the value of ``jrnn.losses.mse``).

    Args:
      preds: ``(B, T, O)`` per step or ``(B, O)`` per sequence, floating.
      targets: ``(B, T, O)`` (every valid step) or ``(B, O)`` (the last valid step, or the
        sequence).
      seq_lengths: optional ``(B,)`` valid lengths in ``[0, T]``.
    """
    return _finish_mean(*squared_error_parts(preds, targets, seq_lengths))


def mae(preds, targets, seq_lengths=None) -> Array:
    """Mean absolute error over the scored elements (arguments as :func:`mse`)."""
    return _finish_mean(*absolute_error_parts(preds, targets, seq_lengths))


def rmse(preds, targets, seq_lengths=None) -> Array:
    """Root mean squared error, ``sqrt(mse)`` (arguments as :func:`mse`)."""
    return _finish_root_mean(*squared_error_parts(preds, targets, seq_lengths))


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------


class Metric(NamedTuple):
    """A named metric that aggregates exactly over batches (module docstring).

    ``parts(preds, targets, seq_lengths) -> (total, count)``; ``finish(total, count) -> value``;
    ``higher_is_better`` tells early stopping and ``keep_best`` which way is better;
    ``labels``: whether the targets are integer class labels (classification) or real values.
    """

    name: str
    parts: Callable[..., tuple[Array, Array]]
    finish: Callable[[Array, Array], Array]
    higher_is_better: bool
    labels: bool

    def __call__(self, preds, targets, seq_lengths=None) -> Array:
        return self.finish(*self.parts(preds, targets, seq_lengths))


def top_k(k: int) -> Metric:
    """The ``Metric`` ``"top_<k>_accuracy"`` (:func:`top_k_accuracy` with this ``k``)."""
    k = check_int("k", k)

    def parts(logits, labels, seq_lengths=None):
        return top_k_accuracy_parts(logits, labels, seq_lengths, k=k)

    return Metric(f"top_{k}_accuracy", parts, _finish_mean, True, True)


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", accuracy_parts, _finish_mean, True, True),
    "top_5_accuracy": top_k(5),
    "mse": Metric("mse", squared_error_parts, _finish_mean, False, False),
    "mae": Metric("mae", absolute_error_parts, _finish_mean, False, False),
    "rmse": Metric("rmse", squared_error_parts, _finish_root_mean, False, False),
}
"""The metrics by name (module docstring)."""

_TOP_K = re.compile(r"top_([1-9][0-9]*)_accuracy")


def get_metric(metric: Any) -> Metric:
    """The ``Metric`` for a name of :data:`METRICS` (or ``"top_<k>_accuracy"``), or ``metric``
    itself when it is a ``Metric``.

    Raises:
      ValueError: an unknown name. TypeError: neither a string nor a ``Metric``.
    """
    if isinstance(metric, Metric):
        return metric
    if not isinstance(metric, str):
        fail("metric", "a metric name or a jrnn.metrics.Metric", type(metric).__name__, TypeError)
    if metric in METRICS:
        return METRICS[metric]
    match = _TOP_K.fullmatch(metric)
    if match:
        return top_k(int(match.group(1)))
    fail("metric", f"one of {sorted(METRICS)} or 'top_<k>_accuracy'", repr(metric))
