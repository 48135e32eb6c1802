"""``fit``: the training loop around the jitted step.

::

    result = fit(model, params, optimizer, (xs, targets), steps=600, batch_size=32, key=key)
    result.params, result.opt_state, result.step, result.history

One *step* is one minibatch: one optimizer update, or up to ``ceil(T / truncation)`` updates with
truncated BPTT (``jrnn.train.step``). Everything random is derived from ``key`` and the step
number alone (``jax.random.fold_in``): the minibatch order (``jrnn.train.data``) and the dropout
key of each step. So a run that is stopped and resumed from a checkpoint ends with exactly the
parameters of an uninterrupted run with the same key.

``fit`` is a short loop over small pieces, one concern each:

- the data order and the device mesh: ``Minibatches`` and ``DataParallel`` (``jrnn.train.data``);
- the step: ``make_train_step`` (``jrnn.train.step``), compiled once per setup;
- the record: ``RunLog`` (``jrnn.train.log``) appends to ``history`` and the JSON-lines log;
- evaluation: ``Evaluator`` (``jrnn.train.evaluation``);
- checkpoints and resume: ``Checkpointer`` and ``resume`` (``jrnn.train.checkpoint``);
- progress: ``Progress`` (``jrnn.train.progress``), and ``NonfiniteStreak`` below.

``history`` (a JSON-friendly dict of columns) and the log's records are described in
``jrnn.train.log``. A step whose loss or gradient is not finite is skipped (``finite`` False,
``num_nonfinite`` > 0, parameters unchanged); ``max_consecutive_nonfinite`` such steps in a row
stop the run with a ``FloatingPointError``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import optax

from jrnn._checks import check_int, check_key, fail
from jrnn.losses import LossName
from jrnn.network import RNN
from jrnn.train._deprecated import NOT_GIVEN, check_clip_norm_agrees, pop_clip_norm, warn_clip_norm
from jrnn.train.checkpoint import Checkpointer, RunState, resume
from jrnn.train.data import DataParallel, Minibatches
from jrnn.train.evaluation import Evaluator
from jrnn.train.log import RunLog, host_metrics, new_history
from jrnn.train.progress import Progress
from jrnn.train.step import (
    Backward,
    check_backward,
    check_loss,
    check_model,
    check_optimizer,
    check_train_truncation,
    make_train_step,
)

__all__ = ["FitResult", "fit", "new_history"]


class FitResult(NamedTuple):
    """What ``fit`` returns: final ``params`` and ``opt_state``, the number of completed
    ``step``s, and the ``history`` (``jrnn.train.log``)."""

    params: Any
    opt_state: Any
    step: int
    history: dict


@functools.lru_cache(maxsize=16)
def _cached_train_step(model: RNN, optimizer, loss: str, backward: str, truncation: int | None):
    return make_train_step(model, optimizer, loss=loss, backward=backward, truncation=truncation)


def _train_step(model: RNN, optimizer, loss: str, backward: str, truncation: int | None) -> Callable:
    """The jitted train step, shared by ``fit`` calls with the same setup (so a resumed or
    repeated ``fit`` in one process does not compile again)."""
    try:
        hash(optimizer)
    except TypeError:  # an optimizer holding unhashable pieces: build a fresh step
        return _cached_train_step.__wrapped__(model, optimizer, loss, backward, truncation)
    return _cached_train_step(model, optimizer, loss, backward, truncation)


class NonfiniteStreak:
    """Counts the non-finite steps in a row (continuing the ``history`` of a resumed run) and
    stops the run with a ``FloatingPointError`` when they reach ``limit``."""

    def __init__(self, limit: int, history: dict):
        self.limit = limit
        self.count = 0
        for finite in reversed(history["train"]["finite"]):
            if finite:
                break
            self.count += 1

    def check(self, step: int, finite: bool) -> None:
        """Count completed step ``step``; raise when it ends a streak of ``limit``."""
        self.count = 0 if finite else self.count + 1
        if self.count >= self.limit:
            raise FloatingPointError(
                f"fit: {self.count} consecutive steps with a non-finite loss or gradient "
                f"(steps {step - self.count + 1} to {step}, max_consecutive_nonfinite={self.limit}); "
                f"the parameters are those after step {step - self.count}. Lower the learning rate, "
                "clip gradients or check the data."
            )


def fit(
    model: RNN,
    params,
    optimizer: optax.GradientTransformation,
    data: tuple | Callable,
    *,
    steps: int,
    loss: LossName = "mse",
    truncation: int | None = None,
    backward: Backward = "bptt",
    batch_size: int | None = None,
    eval_data: tuple | None = None,
    eval_every: int = 100,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    log_path: str | os.PathLike | None = None,
    progress: bool = True,
    key=None,
    devices: Sequence[jax.Device] | None = None,
    max_consecutive_nonfinite: int = 10,
    **deprecated: Any,
) -> FitResult:
    """Train ``params`` of ``model`` with ``optimizer`` for ``steps`` steps (module docstring).

    Args:
      model: a ``jrnn.RNN``.
      params: its ``NetworkParams`` (the starting point; the template when resuming).
      optimizer: an optax ``GradientTransformation``; its state starts from ``optimizer.init``.
        Clipping belongs to it (``jrnn.optim.make_optimizer(..., clip_norm=c)``), and the history
        reports whether it fired.
      data: ``(xs (N, T, D), targets[, seq_lengths (N,)])`` host or device arrays, or a callable
        ``(key) -> (xs, targets[, seq_lengths])`` called once per step (``jrnn.train.data``).
      steps: the total number of steps, counting those of a resumed checkpoint.
      loss: ``"mse"`` or ``"cross_entropy"``; the targets' rank picks every-step or last-step
        scoring (``jrnn.losses``).
      truncation: None, or ``k`` for truncated BPTT over chunks of ``k`` steps (``jrnn.train.step``).
      backward: ``"bptt"`` (default, the hand-written backward) or ``"autodiff"``
        (``make_train_step``).
      batch_size: minibatch size for tuple data (None: the whole set each step); must be None for
        callable data.
      eval_data: ``(xs, targets[, seq_lengths])`` scored every ``eval_every`` steps and at the end.
      eval_every: steps between evaluations.
      checkpoint_dir: where to save checkpoints every ``checkpoint_every`` steps and at the end
        (the 3 latest are kept); if it already holds one, training resumes from the latest (its
        key and history included).
      checkpoint_every: steps between checkpoints.
      log_path: a file to append JSON lines of metrics to (``jrnn.train.log``).
      progress: show a progress bar (tqdm, on stderr) with the loss and steps per second.
      key: the run's ``jax.random`` key (default ``PRNGKey(0)``); split into the data key and the
        dropout key.
      devices: devices to shard each batch over (default ``jax.local_devices()``); the batch
        size must be divisible by their number. After ``jax.distributed.initialize()``, pass
        ``jax.devices()`` to span every process: each one must then call ``fit`` with the same
        params, data and key (it uploads only its own devices' rows of each global batch); only
        process 0 shows progress and writes ``log_path``.
      max_consecutive_nonfinite: this many non-finite steps in a row raise ``FloatingPointError``.
      **deprecated: ``clip_norm``, accepted for old callers only: a ``DeprecationWarning`` when it
        agrees with the optimizer's clipping link (or the optimizer has none), a ``ValueError``
        when it does not. Give it to ``make_optimizer`` only.

    Returns:
      ``FitResult(params, opt_state, step, history)``.

    Raises:
      TypeError, ValueError: bad arguments, before any compilation or checkpoint I/O.
      FloatingPointError: ``max_consecutive_nonfinite`` non-finite steps in a row.
    """
    clip_norm = pop_clip_norm(deprecated, "fit")
    check_model(model)
    input_size = model.check_params(params)
    check_optimizer(optimizer)
    check_loss(loss)
    check_backward(backward)
    truncation = check_train_truncation(truncation, model)
    steps = check_int("steps", steps, 0)
    eval_every = check_int("eval_every", eval_every)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every)
    streak_limit = check_int("max_consecutive_nonfinite", max_consecutive_nonfinite)
    if not (callable(data) or isinstance(data, (tuple, list))):
        fail("data", "a tuple (xs, targets[, seq_lengths]) or a callable (key) -> batch",
             type(data).__name__, TypeError)  # fmt: skip
    key_given = key is not None
    key = jax.random.PRNGKey(0) if key is None else check_key("key", key)
    parallel = DataParallel(devices)
    lead = jax.process_index() == 0

    # Validate the data before any compilation or checkpoint I/O.
    batches = Minibatches(data, batch_size, key, loss=loss, input_size=input_size, output_size=model.out_size)
    if batches.rows is not None:
        parallel.check_divides(batches.rows, note=" (the whole data set)" if batch_size is None else "")
    evaluator = None
    if eval_data is not None:
        evaluator = Evaluator(model, eval_data, loss=loss, backward=backward, every=eval_every,
                              input_size=input_size, parallel=parallel)  # fmt: skip

    params = parallel.replicate(params)
    opt_state = parallel.replicate(optimizer.init(params))
    if clip_norm is not NOT_GIVEN:
        check_clip_norm_agrees(clip_norm, opt_state)
        warn_clip_norm("fit")
    run = RunState(params, opt_state, key, 0, new_history())

    with contextlib.ExitStack() as stack:
        checkpointer = None
        if checkpoint_dir is not None:
            checkpointer = stack.enter_context(Checkpointer(checkpoint_dir))
            run = resume(checkpointer, run, key_given=key_given, steps=steps, stacklevel=3)
        k_data, k_dropout = jax.random.split(run.key)
        batches.set_key(k_data)
        train_step = _train_step(model, optimizer, loss, backward, truncation)
        log = stack.enter_context(RunLog(run.history, log_path if lead else None, start=run.step))
        bar = stack.enter_context(Progress(steps, run.step, enabled=progress and lead))
        streak = NonfiniteStreak(streak_limit, run.history)

        params, opt_state = run.params, run.opt_state
        for s in range(run.step, steps):
            xs, targets, seq_lengths = parallel.shard_batch(batches.batch(s))
            dropout_key = jax.random.fold_in(k_dropout, s) if model.dropout > 0 else None
            params, opt_state, metrics = train_step(params, opt_state, xs, targets, seq_lengths, dropout_key)
            done, m = s + 1, host_metrics(parallel.fetch(metrics))
            log.train(done, m)
            bar.step(m["loss"])
            streak.check(done, m["finite"])
            if evaluator is not None and evaluator.due(done, steps):
                log.eval(done, evaluator(params))
            if checkpointer is not None and (done % checkpoint_every == 0 or done == steps):
                checkpointer.save(done, params, opt_state, run.key, run.history)
    return FitResult(params, opt_state, max(run.step, steps), run.history)
