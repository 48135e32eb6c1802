"""Evaluation during ``fit``: the loss of a fixed data set every few steps and at the end."""

from __future__ import annotations

import functools

import jax

from jrnn.losses import get_loss
from jrnn.network import RNN
from jrnn.train.data import DataParallel, check_batch_tuple

__all__ = ["Evaluator"]


@functools.lru_cache(maxsize=16)
def _loss_fn(model: RNN, loss: str, backward: str):
    """The jitted ``(params, xs, targets, seq_lengths) -> loss``, shared by ``fit`` calls with the
    same setup (a resumed or repeated ``fit`` in one process does not compile again)."""
    loss_fn = get_loss(loss).loss

    @jax.jit
    def evaluate(params, xs, targets, seq_lengths):
        ys, _ = model.apply(params, xs, seq_lengths=seq_lengths, backward=backward)
        return loss_fn(ys, targets, seq_lengths)

    return evaluate


class Evaluator:
    """The loss of ``model`` on ``eval_data``, due every ``every`` steps and at the last one.

    The data is validated when the evaluator is built and placed on the devices once (sharded
    when its rows divide over them, replicated otherwise).
    """

    def __init__(self, model: RNN, eval_data, *, loss: str, backward: str, every: int,
                 input_size: int, parallel: DataParallel):  # fmt: skip
        batch = check_batch_tuple(eval_data, loss, input_size, model.out_size, argument="eval_data")
        self.every = every
        self._parallel = parallel
        self._batch = parallel.put(batch)
        self._loss = _loss_fn(model, loss, backward)

    def due(self, step: int, last: int) -> bool:
        """Whether to evaluate after completed step ``step`` of a run of ``last`` steps."""
        return step % self.every == 0 or step == last

    def __call__(self, params) -> float:
        """The loss of ``params`` on the evaluation data, as a Python float."""
        return float(self._parallel.fetch(self._loss(params, *self._batch)))
