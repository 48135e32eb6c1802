"""``fit``: the training loop around the jitted step.

::

    result = fit(model, params, optimizer, (xs, labels), steps=600, batch_size=32, loss="cross_entropy",
                 eval_data=(xs_val, labels_val), eval_every=50, metrics=("accuracy",),
                 early_stopping=EarlyStopping(patience=5, metric="accuracy"), key=key)
    result.params, result.opt_state, result.step, result.history, result.timing, result.best

    # any loss over any params pytree (a Flax, Equinox or NNX head on jrnn layers):
    result = fit(loss_fn, params, optimizer, data, steps=600, batch_size=32)

One *step* is one minibatch: one optimizer update, or up to ``ceil(T / truncation)`` updates with
truncated BPTT (``jrnn.train.step``). Everything random is derived from ``key`` and the step
number alone (``jax.random.fold_in``): the minibatch order (``jrnn.train.data``) and the dropout
key of each step. So a run that is stopped and resumed from a checkpoint ends with exactly the
parameters of an uninterrupted run with the same key.

``fit`` is a short loop over small pieces, one concern each:

- what is trained: a ``jrnn.RNN`` with a loss name, or a loss function (``jrnn.train.objective``);
- the data order and the device mesh: ``Minibatches`` and ``DataParallel`` (``jrnn.train.data``);
- the step: ``build_step`` (``jrnn.train.step``), jitted once per setup with the dropout key
  folded in and the metrics packed into one vector on the device;
- the record: ``RunLog`` (``jrnn.train.log``) appends to ``history`` and the JSON-lines log;
- evaluation: ``Evaluator`` (``jrnn.train.evaluation``); early stopping and the best evaluation:
  ``jrnn.train.stopping``;
- checkpoints and resume: ``Checkpointer`` and ``resume`` (``jrnn.train.checkpoint``);
- progress: ``Progress`` (``jrnn.train.progress``), and ``NonfiniteStreak`` below.

**Overhead.** The step's metrics stay on the device; ``fit`` reads them every ``log_every`` steps
(and before an evaluation, a checkpoint and the end), so the host never waits for the device in
between and the next steps are dispatched while the device works. ``history`` and the log still
hold every step. A streak of non-finite steps is therefore noticed at the next read, up to
``log_every - 1`` steps late (skipped steps leave the parameters unchanged).

**Timing.** ``FitResult.timing`` reports the seconds spent compiling (``compile_s``: tracing,
lowering and XLA compilation of everything ``fit`` ran, measured through ``jax.monitoring``'s
compilation events; 0 when a repeated call reuses the compiled step), evaluating
(``eval_s``) and writing checkpoints (``checkpoint_s``), the rest of the loop's wall time
(``train_s``), the steps run in this call (``steps``) and ``step_s = train_s / steps``. The log's
first step record of a call holds ``compile_s`` as well.

``history`` (a JSON-friendly dict of columns) and the log's records are described in
``jrnn.train.log``. A step whose loss, gradient or update is not finite is skipped (``finite`` False,
``num_nonfinite`` > 0, parameters unchanged); ``max_consecutive_nonfinite`` such steps in a row
stop the run with a ``FloatingPointError``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import optax

from jrnn._checks import check_bool, check_int, check_key, fail
from jrnn.train._deprecated import NOT_GIVEN, check_clip_norm_agrees, pop_clip_norm, warn_clip_norm
from jrnn.train.checkpoint import Checkpointer, RunState, check_checkpoint_dir, resume
from jrnn.train.data import DataParallel, Minibatches
from jrnn.train.evaluation import Evaluator
from jrnn.train.log import RunLog, new_history, pack, unpack
from jrnn.train.objective import ModelObjective, as_objective, check_metrics
from jrnn.train.progress import Progress
from jrnn.train.runspec import run_spec
from jrnn.train.step import METRICS, Backward, build_step, check_optimizer, check_train_truncation
from jrnn.train.stopping import EarlyStopping, best, check_early_stopping, check_keep_best

__all__ = ["FitInterrupted", "FitResult", "fit", "new_history"]


class FitResult(NamedTuple):
    """What ``fit`` returns: final ``params`` and ``opt_state``, the number of completed
    ``step``s, the ``history`` (``jrnn.train.log``), the ``timing`` of this call (module
    docstring), the ``best`` evaluation ``{"step", "metric", "value"}`` (by ``keep_best``'s
    metric, else the early-stopping metric, else the loss; None without evaluations) and whether
    early stopping ended the run (``stopped_early``)."""

    params: Any
    opt_state: Any
    step: int
    history: dict
    timing: dict | None = None
    best: dict | None = None
    stopped_early: bool = False


class FitInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped ``fit`` between two steps. ``result`` is the run so far (a
    ``FitResult``); with a ``checkpoint_dir`` its last step was saved there (``checkpoint_dir``
    is then that directory), so calling ``fit`` again resumes it."""

    def __init__(self, result: "FitResult", checkpoint_dir: str | None):
        self.result = result
        self.checkpoint_dir = checkpoint_dir
        where = f"; checkpoint of step {result.step} saved in {checkpoint_dir}" if checkpoint_dir else ""
        super().__init__(f"fit interrupted after step {result.step}{where}")


class Interrupts:
    """While open in the main thread with Python's default SIGINT handler, a first Ctrl-C only
    asks the loop to stop after the step it is running (``requested``); a second one interrupts
    at once, as usual. Elsewhere (another thread, a handler of the caller's own) it does nothing."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # fmt: skip
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


@functools.lru_cache(maxsize=16)
def _cached_fit_step(objective, optimizer, truncation: int | None, metrics: tuple) -> Callable:
    core = build_step(objective, optimizer, truncation, metrics)
    names = (*METRICS, *(m.name for m in metrics))
    uses_key = objective.uses_key

    @jax.jit
    def step(params, opt_state, batch, *key_args):
        key = jax.random.fold_in(*key_args) if uses_key else None
        params, opt_state, m = core(params, opt_state, batch, key)
        return params, opt_state, pack(m, names)

    return step


def _fit_step(objective, optimizer, truncation: int | None, metrics: tuple) -> Callable:
    """The jitted ``step(params, opt_state, batch[, dropout_key, s]) -> (params, opt_state,
    packed metrics)``, shared by ``fit`` calls with the same setup (so a resumed or repeated
    ``fit`` in one process does not compile again). The step's key ``fold_in(dropout_key, s)`` is
    made inside; without dropout neither is passed (nothing to transfer per step)."""
    try:
        hash(optimizer)
    except TypeError:  # an optimizer holding unhashable pieces: build a fresh step
        return _cached_fit_step.__wrapped__(objective, optimizer, truncation, metrics)
    return _cached_fit_step(objective, optimizer, truncation, metrics)


def _init_state(optimizer, parallel: DataParallel) -> Callable:
    """``optimizer.init`` jitted, its state replicated over the devices (one dispatch instead of
    one per leaf; cached per optimizer and devices when the optimizer is hashable)."""
    devices = tuple(parallel.devices)
    try:
        return _cached_init(optimizer, devices)
    except TypeError:  # an optimizer holding unhashable pieces
        return _cached_init.__wrapped__(optimizer, devices)


@functools.lru_cache(maxsize=16)
def _cached_init(optimizer, devices: tuple) -> Callable:
    return jax.jit(optimizer.init, out_shardings=DataParallel(devices).replicated)


class CompileClock:
    """Seconds spent compiling while it is open (``jax.monitoring``'s compilation events: the
    trace of the outermost function, its lowering to MLIR and XLA's compilation). A context
    manager."""

    _EVENTS = (
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self):
        self.seconds = 0.0

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if event in self._EVENTS:
            self.seconds += duration

    def __enter__(self) -> "CompileClock":
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)


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
                f"fit: {self.count} consecutive steps with a non-finite loss, gradient or update "
                f"(steps {step - self.count + 1} to {step}, max_consecutive_nonfinite={self.limit}); "
                f"the parameters are those after step {step - self.count}. Lower the learning rate, "
                "clip gradients or check the data."
            )


class Pending:
    """The packed metrics of the steps run since the last read, fetched together: each one goes
    to the log, the progress bar and the non-finite streak."""

    def __init__(self, names: Sequence[str], log: RunLog, bar: Progress, streak: NonfiniteStreak,
                 parallel: DataParallel, clock: CompileClock):  # fmt: skip
        self.names = names
        self.log, self.bar, self.streak, self.parallel, self.clock = log, bar, streak, parallel, clock
        self.steps: list[int] = []
        self.values: list = []
        self.first = True

    def add(self, step: int, packed) -> None:
        self.steps.append(step)
        self.values.append(packed)

    def flush(self, keep_last: bool = False) -> None:
        """Read and record the pending steps; ``keep_last`` leaves the latest one pending, so
        that the device still has work queued while the host reads the others."""
        n = len(self.steps) - (1 if keep_last else 0)
        if n <= 0:
            return
        rows = jax.device_get([a.addressable_data(0) for a in self.values[:n]])
        steps, self.steps, self.values = self.steps[:n], self.steps[n:], self.values[n:]
        records = [unpack(row, self.names) for row in rows]
        extra = None
        if self.first:
            extra, self.first = {"compile_s": round(self.clock.seconds, 4)}, False
        for i, (done, m) in enumerate(zip(steps, records)):
            self.log.train(done, m, extra if i == 0 else None)
            self.streak.check(done, m["finite"])
        self.bar.advance(n, records[-1]["loss"])


def _check_data_kind(data, objective) -> None:
    if isinstance(objective, ModelObjective) and not (callable(data) or isinstance(data, (tuple, list))):
        fail("data", "a tuple (xs, targets[, seq_lengths]) or a callable (key) -> batch",
             type(data).__name__, TypeError)  # fmt: skip


def fit(
    model_or_loss_fn,
    params,
    optimizer: optax.GradientTransformation,
    data: Any,
    *,
    steps: int,
    loss: str | None = None,
    truncation: int | None = None,
    backward: Backward | None = None,
    batch_size: int | None = None,
    shuffle: bool = True,
    eval_data: Any = None,
    eval_every: int = 100,
    metrics: Sequence = (),
    early_stopping: int | dict | EarlyStopping | None = None,
    keep_best: bool | str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume_check: bool = True,
    log_path: str | os.PathLike | None = None,
    log_every: int = 10,
    progress: bool = True,
    key=None,
    devices: Sequence[jax.Device] | None = None,
    max_consecutive_nonfinite: int = 10,
    **deprecated: Any,
) -> FitResult:
    """Train ``params`` with ``optimizer`` for ``steps`` steps (module docstring).

    Args:
      model_or_loss_fn: a ``jrnn.RNN`` (trained on ``loss``), or a loss function
        ``loss_fn(params, batch, key) -> loss`` or ``-> (loss, aux)`` over any params pytree
        (``jrnn.train.objective``: what ``aux`` may hold, truncation with a carry).
      params: the starting parameters (the template when resuming).
      optimizer: an optax ``GradientTransformation``; its state starts from ``optimizer.init``.
        Clipping belongs to it (``jrnn.optim.make_optimizer(..., clip_norm=c)``), and the history
        reports whether it fired.
      data: a data set (for a model ``(xs (N, T, D), targets[, seq_lengths (N,)])``; for a loss
        function any pytree of arrays with leading axis ``N``), or a callable ``data(key)`` or
        ``data(key, step)`` returning one batch per step (``jrnn.train.data``). A 2-D ``xs (N,
        T)`` is an error that suggests ``xs[..., None]``.
      steps: the total number of steps, counting those of a resumed checkpoint.
      loss: for a model, ``"mse"`` (default) or ``"cross_entropy"``; the targets' rank picks
        every-step or last-step scoring (``jrnn.losses``). Left out with a loss function.
      truncation: None, or ``k`` for truncated BPTT over chunks of ``k`` steps (``jrnn.train.step``).
      backward: for a model, ``"bptt"`` (default, the hand-written backward) or ``"autodiff"``.
        Left out with a loss function.
      batch_size: minibatch size for a data set (None: the whole set each step); must be None
        for callable data.
      shuffle: a new random order of the data set every epoch (default), or ``False``: the stored
        order, wrapping around the end (``jrnn.train.data``).
      eval_data: a data set like ``data``, scored every ``eval_every`` steps and at the end.
      eval_every: steps between evaluations.
      metrics: names of ``jrnn.metrics`` (``"accuracy"``, ``"top_5_accuracy"``, ``"mse"``,
        ``"mae"``, ``"rmse"``, ``"top_<k>_accuracy"``) or ``Metric``s, computed on every training
        batch and on ``eval_data``; ``history`` keeps a column of each (``jrnn.train.log``).
      early_stopping: None, a patience (int: evaluations without improvement of the evaluation
        loss), a dict of ``EarlyStopping`` fields or an ``EarlyStopping(patience, metric, mode,
        min_delta)``; needs ``eval_data``. The run stops after the evaluation that exhausts the
        patience (and saves a checkpoint there); ``FitResult.stopped_early`` says so.
      keep_best: None, a metric name (``"loss"`` or one of ``metrics``), or True (the early
        stopping metric, else the loss): every evaluation also saves a checkpoint, and orbax
        keeps the best one by that metric besides the 3 latest (needs ``eval_data`` and
        ``checkpoint_dir``; ``jrnn.train.checkpoint.restore(..., step="best")`` reads it).
      checkpoint_dir: where to save checkpoints every ``checkpoint_every`` steps and at the end
        (the 3 latest are kept); if it already holds one, training resumes from the latest (its
        key and history included). A directory holding an integer-named entry that is not a
        checkpoint is refused (a ``ValueError``): orbax would take it for a step. The directory
        is created and locked up front (a ``ValueError`` when it cannot be written, or while
        another process's ``fit`` holds it).
      checkpoint_every: steps between checkpoints.
      resume_check: resuming a checkpoint written by another run (another learning rate or
        optimizer, batch size, truncation, shuffle, loss, backward, model, params dtype or data
        set: ``jrnn.train.runspec``) is refused with a ``ValueError`` naming what differs (True,
        the default), or done with a warning that names it (False). A checkpoint of another
        structure (model or optimizer state) is always refused. A damaged newest checkpoint is
        skipped with a warning, and the run resumes from the newest intact one.
      log_path: a file to append JSON lines of metrics to (``jrnn.train.log``).
      log_every: steps between reads of the metrics from the device (module docstring).
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
      ``FitResult(params, opt_state, step, history, timing, best, stopped_early)``.

    Raises:
      TypeError, ValueError: bad arguments, before any compilation or checkpoint I/O.
      FloatingPointError: ``max_consecutive_nonfinite`` non-finite steps in a row.
      FitInterrupted: (a ``KeyboardInterrupt``) Ctrl-C: the run stops after the step it is
        running, saves a checkpoint of it (with ``checkpoint_dir``) and raises this with the run
        so far (``.result``); a second Ctrl-C interrupts at once.
    """
    clip_norm = pop_clip_norm(deprecated, "fit")
    objective = as_objective(model_or_loss_fn, loss, backward)
    input_size = objective.check_params(params)
    check_optimizer(optimizer)
    truncation = check_train_truncation(truncation, objective)
    metrics = check_metrics(metrics)
    objective.check_metrics(metrics)
    steps = check_int("steps", steps, 0)
    eval_every = check_int("eval_every", eval_every)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every)
    log_every = check_int("log_every", log_every)
    streak_limit = check_int("max_consecutive_nonfinite", max_consecutive_nonfinite)
    resume_check = check_bool("resume_check", resume_check)
    stopping = check_early_stopping(early_stopping, metrics)
    best_rule = check_keep_best(keep_best, stopping, metrics)
    if eval_data is None and (stopping is not None or best_rule is not None):
        fail("eval_data", "given with early_stopping or keep_best (they watch the evaluations)", None)
    if best_rule is not None and checkpoint_dir is None:
        fail("checkpoint_dir", "given with keep_best (the best checkpoint is kept there)", None)
    if checkpoint_dir is not None:
        check_checkpoint_dir(checkpoint_dir)
    _check_data_kind(data, objective)
    key_given = key is not None
    key = jax.random.PRNGKey(0) if key is None else check_key("key", key)
    parallel = DataParallel(devices)
    lead = jax.process_index() == 0

    # Validate the data before any compilation or checkpoint I/O.
    batches = Minibatches(data, batch_size, key, objective=objective, input_size=input_size, shuffle=shuffle)
    if batches.rows is not None:
        parallel.check_divides(batches.rows, note=" (the whole data set)" if batch_size is None else "")
    evaluator = None
    if eval_data is not None:
        evaluator = Evaluator(objective, eval_data, metrics=metrics, every=eval_every, input_size=input_size,
                              parallel=parallel)  # fmt: skip
    names = (*METRICS, *(m.name for m in metrics))
    watched = best_rule or ((stopping.metric, stopping.higher(metrics)) if stopping else ("loss", False))

    t_start = time.perf_counter()
    eval_s = checkpoint_s = 0.0
    with contextlib.ExitStack() as stack:
        clock = stack.enter_context(CompileClock())
        params = parallel.replicate(params)
        opt_state = _init_state(optimizer, parallel)(params)
        if clip_norm is not NOT_GIVEN:
            check_clip_norm_agrees(clip_norm, opt_state)
            warn_clip_norm("fit")
        run = RunState(params, opt_state, key, 0, new_history(metrics))
        checkpointer = None
        if checkpoint_dir is not None:
            spec = run_spec(objective, optimizer, params, batches, truncation)
            checkpointer = stack.enter_context(Checkpointer(checkpoint_dir, best=best_rule, run=spec))
            run = resume(checkpointer, run, key_given=key_given, steps=steps, check_run=resume_check,
                         stacklevel=3)  # fmt: skip
        k_data, k_dropout = jax.random.split(run.key)
        batches.set_key(k_data)
        train_step = _fit_step(objective, optimizer, truncation, metrics)
        uses_key = objective.uses_key
        log = stack.enter_context(RunLog(run.history, log_path if lead else None, start=run.step, names=names))
        bar = stack.enter_context(Progress(steps, run.step, enabled=progress and lead))
        streak = NonfiniteStreak(streak_limit, run.history)
        pending = Pending(names, log, bar, streak, parallel, clock)

        params, opt_state = run.params, run.opt_state
        stopped = stopping is not None and stopping.should_stop(run.history, metrics)
        done = saved = run.step
        interrupts = stack.enter_context(Interrupts())
        for s in range(run.step, 0 if stopped else steps):
            if interrupts.requested:
                break
            batch = parallel.feed(batches.batch(s))
            params, opt_state, packed = train_step(params, opt_state, batch, *((k_dropout, s) if uses_key else ()))
            done = s + 1
            pending.add(done, packed)
            scores = None
            if evaluator is not None and evaluator.due(done, steps):
                pending.flush()
                t0, c0 = time.perf_counter(), clock.seconds
                scores = evaluator(params)
                eval_s += time.perf_counter() - t0 - (clock.seconds - c0)  # its compilation apart
                log.eval(done, scores)
                stopped = stopping is not None and stopping.should_stop(run.history, metrics)
            if checkpointer is not None and (
                done % checkpoint_every == 0 or done == steps or stopped
                or (best_rule is not None and scores is not None)
            ):  # fmt: skip
                pending.flush()
                t0, c0 = time.perf_counter(), clock.seconds
                checkpointer.save(done, params, opt_state, run.key, run.history, metrics=scores)
                saved = done
                checkpoint_s += time.perf_counter() - t0 - (clock.seconds - c0)
            if stopped:
                break
            if done % log_every == 0:
                pending.flush(keep_last=True)
        pending.flush()
        interrupted = interrupts.requested and not stopped and done < steps
        if interrupted and checkpointer is not None and saved != done:
            checkpointer.save(done, params, opt_state, run.key, run.history)
        jax.block_until_ready((params, opt_state))
        compile_s = clock.seconds
    wall = time.perf_counter() - t_start
    ran = max(done - run.step, 0)
    train_s = max(wall - compile_s - eval_s - checkpoint_s, 0.0)
    timing = {
        "compile_s": compile_s,
        "train_s": train_s,
        "eval_s": eval_s,
        "checkpoint_s": checkpoint_s,
        "steps": ran,
        "step_s": train_s / ran if ran else None,
    }
    last = done if stopped or interrupted else max(run.step, steps)
    result = FitResult(params, opt_state, last, run.history, timing, best(run.history, *watched), stopped)
    if interrupted:
        raise FitInterrupted(result, checkpointer.directory if checkpointer is not None else None)
    return result
