"""Evaluation: the loss and metrics over a data set (``evaluate``), outputs over a data set
(``predict``), and the periodic evaluation of ``fit`` (``Evaluator``).

::

    scores = evaluate(model, params, (xs, labels), loss="cross_entropy", metrics=("accuracy",))
    scores["loss"], scores["accuracy"]                 # Python floats over the whole data set
    logits = predict(model, params, xs, batch_size=256)   # NumPy, (N, T, O) or (N, O) pooled

``evaluate`` cuts the data set into consecutive batches of ``batch_size`` rows in their stored
order (None: one batch; the last batch may be shorter and then compiles once more), scores each
with a jitted function (no dropout; a loss function gets ``key=None``), keeps the sums on the
device and reads them once at the end. The results are exact over the whole set, not means of
batch means: the loss is weighted by what each batch scored (``jrnn.train.objective``) and each
metric sums its ``(total, count)`` parts before finishing (``jrnn.metrics``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jrnn._checks import check_optional_int, fail, shape_of
from jrnn.metrics import Metric
from jrnn.network import RNN
from jrnn.train.data import DataParallel
from jrnn.train.objective import ModelObjective, as_objective, check_metrics, slice_rows

__all__ = ["Evaluator", "evaluate", "predict"]


@functools.lru_cache(maxsize=32)
def _scores_fn(objective, metrics: tuple[Metric, ...]) -> Callable:
    """The jitted ``(params, batch) -> (loss, weight, parts)``, shared by calls with the same
    setup (so repeated evaluations do not compile again)."""

    @jax.jit
    def scores(params, batch):
        return objective.scores(params, batch, metrics)

    return scores


def _combine(results: list, metrics: tuple[Metric, ...]) -> dict:
    """Per-batch ``(loss, weight, parts)`` on the device -> ``{"loss", <metrics>}`` (device)."""
    if len(results) == 1:
        loss = results[0][0]
    else:
        total = sum(value * weight.astype(value.dtype) for value, weight, _ in results)
        weight = sum(weight for _, weight, _ in results)
        loss = total / jnp.maximum(weight, 1).astype(total.dtype)
    out = {"loss": loss}
    for m in metrics:
        total = sum(parts[m.name][0] for _, _, parts in results)
        count = sum(parts[m.name][1] for _, _, parts in results)
        out[m.name] = m.finish(total, count)
    return out


def _batches(batch, rows: int, batch_size: int | None):
    if batch_size is None or batch_size >= rows:
        yield batch
        return
    for start in range(0, rows, batch_size):
        yield slice_rows(batch, slice(start, start + batch_size))


def evaluate(
    model_or_loss_fn,
    params,
    data,
    *,
    metrics: Sequence = (),
    loss: str | None = None,
    batch_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> dict:
    """The loss and ``metrics`` of ``params`` over a data set (module docstring).

    Args:
      model_or_loss_fn: a ``jrnn.RNN`` (with ``loss``) or a loss function
        ``loss_fn(params, batch, key)`` (called with ``key=None``; ``jrnn.train.objective``).
      params: the parameters.
      data: for a model, ``(xs (N, T, D), targets[, seq_lengths (N,)])``; for a loss function,
        any pytree of arrays sharing the leading axis ``N``.
      metrics: names of ``jrnn.metrics`` (``"accuracy"``, ``"top_5_accuracy"``, ``"mse"``,
        ``"mae"``, ``"rmse"``, ``"top_<k>_accuracy"``) or ``Metric``s. A loss function provides
        them through its ``aux`` (``"preds"``, or the metric's name).
      loss: for a model, ``"mse"`` (default) or ``"cross_entropy"``; left out with a function.
      batch_size: rows per batch (None: the whole set at once).
      devices: devices to shard each batch over (default: ``jax.local_devices()``); a batch
        whose rows do not divide over them is replicated instead.

    Returns:
      ``{"loss": float, <metric name>: float, ...}``.

    Raises:
      TypeError, ValueError: bad arguments (named), before any compilation.
    """
    objective = as_objective(model_or_loss_fn, loss, None)
    input_size = objective.check_params(params)
    metrics = check_metrics(metrics)
    objective.check_metrics(metrics)
    batch_size = check_optional_int("batch_size", batch_size)
    batch = objective.check_data(data, input_size, argument="data")
    parallel = DataParallel(devices)
    params = parallel.replicate(params)
    scores = _scores_fn(objective, metrics)
    rows = DataParallel.rows(batch)
    results = [scores(params, parallel.put(b)) for b in _batches(batch, rows, batch_size)]
    return {k: float(v) for k, v in parallel.fetch(_combine(results, metrics)).items()}


@functools.lru_cache(maxsize=32)
def _outputs_fn(model_or_apply_fn, with_lengths: bool) -> Callable:
    if isinstance(model_or_apply_fn, RNN):
        objective = ModelObjective(model_or_apply_fn, "mse", "autodiff")

        @jax.jit
        def outputs(params, xs, seq_lengths):
            return objective.outputs(params, xs, seq_lengths)

        return outputs

    if with_lengths:
        return jax.jit(lambda params, xs, seq_lengths: model_or_apply_fn(params, xs, seq_lengths=seq_lengths))
    return jax.jit(lambda params, xs, seq_lengths: model_or_apply_fn(params, xs))


def predict(
    model_or_apply_fn,
    params,
    xs,
    *,
    seq_lengths=None,
    batch_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Any:
    """Outputs over a data set, batched, as host NumPy arrays (module docstring).

    Args:
      model_or_apply_fn: a ``jrnn.RNN`` (its ``apply`` without dropout; the outputs are
        ``(N, T, O)``, or ``(N, O)`` for a model that pools each sequence) or a function
        ``apply_fn(params, xs) -> outputs`` (``apply_fn(params, xs, seq_lengths=...)`` when
        ``seq_lengths`` is given) over any pytree ``xs`` sharing the leading axis ``N``.
      params: the parameters.
      xs: for a model, ``(N, T, D)`` (a 2-D array is an error that suggests ``xs[..., None]``).
      seq_lengths: optional ``(N,)`` valid lengths, cut into batches with ``xs``.
      batch_size: rows per batch (None: all at once).
      devices: as in :func:`evaluate`.

    Returns:
      The outputs of every row, concatenated along the leading axis (a pytree of NumPy arrays
      when ``apply_fn`` returns one).

    Raises:
      TypeError, ValueError: bad arguments, before any compilation.
    """
    batch_size = check_optional_int("batch_size", batch_size)
    if isinstance(model_or_apply_fn, RNN):
        input_size = model_or_apply_fn.check_params(params)
        shape = shape_of(xs)
        if shape is not None and len(shape) == 2:
            fail("xs", f"(N, T, D) (a 2-D array is not read as one unbatched sequence here; for a "
                 f"univariate series pass xs[..., None], of shape {(*shape, 1)})", f"shape {shape}")  # fmt: skip
        if shape is None or len(shape) != 3 or shape[-1] != input_size:
            fail("xs", f"(N, T, D) with D = {input_size} (the model's input size)", f"shape {shape}")
    elif not callable(model_or_apply_fn):
        fail("model_or_apply_fn", "a jrnn.RNN or a function apply_fn(params, xs)",
             type(model_or_apply_fn).__name__, TypeError)  # fmt: skip
    batch = (jax.tree_util.tree_map(np.asarray, xs), None if seq_lengths is None else np.asarray(seq_lengths))
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves or any(shape_of(a) is None or len(shape_of(a)) == 0 for a in leaves):
        fail("xs", "arrays with a leading example axis", type(xs).__name__, TypeError)
    rows = DataParallel.rows(batch)
    if any(shape_of(a)[0] != rows for a in leaves):
        fail("seq_lengths" if seq_lengths is not None else "xs", f"one row per example ({rows})",
             [shape_of(a) for a in leaves])  # fmt: skip
    parallel = DataParallel(devices)
    params = parallel.replicate(params)
    outputs = _outputs_fn(model_or_apply_fn, seq_lengths is not None)
    parts = [parallel.fetch_all(outputs(params, *parallel.put(b))) for b in _batches(batch, rows, batch_size)]
    if len(parts) == 1:
        return parts[0]
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a, axis=0), *parts)


class Evaluator:
    """The loss and metrics of ``fit``'s parameters on ``eval_data``, due every ``every`` steps
    and at the last one.

    The data is validated when the evaluator is built and placed on the devices once (sharded
    when its rows divide over them, replicated otherwise), and scored in one batch.
    """

    def __init__(self, objective, eval_data, *, metrics: tuple[Metric, ...], every: int,
                 input_size: int | None, parallel: DataParallel):  # fmt: skip
        batch = objective.check_data(eval_data, input_size, argument="eval_data")
        self.every = every
        self.metrics = metrics
        self._parallel = parallel
        self._batch = parallel.put(batch)
        self._scores = _scores_fn(objective, metrics)

    def due(self, step: int, last: int) -> bool:
        """Whether to evaluate after completed step ``step`` of a run of ``last`` steps."""
        return step % self.every == 0 or step == last

    def __call__(self, params) -> dict:
        """``{"loss": float, <metric>: float}`` of ``params`` on the evaluation data."""
        results = _combine([self._scores(params, self._batch)], self.metrics)
        return {k: float(v) for k, v in self._parallel.fetch(results).items()}
