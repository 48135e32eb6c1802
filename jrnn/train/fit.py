"""``fit``: the training loop around the jitted step.

::

    result = fit(model, params, optimizer, (xs, targets), steps=600, batch_size=32, key=key)
    result.params, result.opt_state, result.step, result.history

One *step* is one minibatch: one optimizer update, or up to ``ceil(T / truncation)`` updates with
truncated BPTT (``jrnn.train.step``). Everything random is derived from ``key`` and the step
number alone (``jax.random.fold_in``): the minibatch order (``jrnn.train.data``) and the dropout
key of each step. So a run that is stopped and resumed from a checkpoint ends with exactly the
parameters of an uninterrupted run with the same key.

``history`` is a JSON-friendly dict of columns::

    {"train": {"step": [...], "loss": [...], "grad_norm": [...], "clipped": [...], "finite": [...],
               "num_updates": [...], "num_clipped": [...], "num_nonfinite": [...]},
     "eval":  {"step": [...], "loss": [...]}}

with ``step`` counting completed steps (1 for the first). A step whose loss or gradient is not
finite is skipped (``finite`` False, ``num_nonfinite`` > 0, parameters unchanged);
``max_consecutive_nonfinite`` such steps in a row stop the run with a ``FloatingPointError``.

``log_path`` receives one JSON object per line: ``{"step", "loss", "grad_norm", "clipped",
"finite", "num_updates", "num_clipped", "num_nonfinite", "time"}`` per step (``time``: seconds
since this call started; a non-finite number is written as ``null``) and ``{"step",
"eval_loss"}`` per evaluation. When a run resumes, lines past the checkpoint's step are dropped
first, so the log matches the history.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
import time
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
import optax
import tqdm

from jrnn.losses import get_loss
from jrnn.network import RNN
from jrnn.train.checkpoint import Checkpointer, key_to_data
from jrnn.train.data import DataParallel, Minibatches, check_batch_tuple
from jrnn.train.step import (
    METRICS,
    check_backward,
    check_clip_norm,
    check_loss,
    check_model,
    check_optimizer,
    check_truncation,
    make_train_step,
)

__all__ = ["FitResult", "fit", "new_history"]


class FitResult(NamedTuple):
    """What ``fit`` returns: final ``params`` and ``opt_state``, the number of completed
    ``step``s, and the ``history`` (module docstring)."""

    params: Any
    opt_state: Any
    step: int
    history: dict


def new_history() -> dict:
    return {"train": {name: [] for name in ("step", *METRICS)}, "eval": {"step": [], "loss": []}}


@functools.lru_cache(maxsize=16)
def _compiled(model: RNN, optimizer, loss: str, backward: str, clip_norm, truncation):
    """The jitted train step and eval function, shared by ``fit`` calls with the same setup
    (so a resumed or repeated ``fit`` in one process does not compile again)."""
    train_step = make_train_step(
        model, optimizer, loss=loss, backward=backward, clip_norm=clip_norm, truncation=truncation
    )
    loss_fn = get_loss(loss).loss

    @jax.jit
    def evaluate(params, xs, targets, seq_lengths):
        ys, _ = model.apply(params, xs, seq_lengths=seq_lengths, backward=backward)
        return loss_fn(ys, targets, seq_lengths)

    return train_step, evaluate


def _compile(model, optimizer, loss, backward, clip_norm, truncation):
    try:
        hash(optimizer)
    except TypeError:  # an optimizer holding unhashable pieces: build a fresh step
        return _compiled.__wrapped__(model, optimizer, loss, backward, clip_norm, truncation)
    return _compiled(model, optimizer, loss, backward, clip_norm, truncation)


def _check_int(argument: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{argument} must be {what}, got {value!r}")
    return int(value)


def _check_key(key: Any):
    if key is None:
        return jax.random.PRNGKey(0)
    if not isinstance(key, jax.Array) or not (
        jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,)
    ):
        raise TypeError(
            f"key must be None or a jax.random key, got {type(key).__name__} {getattr(key, 'shape', '')}"
        )
    return key


def _same_key(a, b) -> bool:
    (da, ia), (db, ib) = key_to_data(a), key_to_data(b)
    return ia == ib and np.array_equal(np.asarray(da), np.asarray(db))


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _host_metrics(m: dict) -> dict:
    out = {}
    for name in METRICS:
        v = np.asarray(m[name])
        if v.dtype == np.bool_:
            out[name] = bool(v)
        else:
            out[name] = int(v) if np.issubdtype(v.dtype, np.integer) else float(v)
    return out


def _trim_log(path: str, step: int) -> None:
    """Drop the lines of ``path`` recorded after ``step`` (work lost by an interrupted run)."""
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


def _trailing_nonfinite(history: dict) -> int:
    n = 0
    for finite in reversed(history["train"]["finite"]):
        if finite:
            break
        n += 1
    return n


def fit(
    model: RNN,
    params,
    optimizer: optax.GradientTransformation,
    data: tuple | Callable,
    *,
    steps: int,
    loss: str = "mse",
    truncation: int | None = None,
    backward: str = "bptt",
    batch_size: int | None = None,
    eval_data: tuple | None = None,
    eval_every: int = 100,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    log_path: str | os.PathLike | None = None,
    progress: bool = True,
    key=None,
    devices: Sequence[jax.Device] | None = None,
    clip_norm: float | None = None,
    max_consecutive_nonfinite: int = 10,
) -> FitResult:
    """Train ``params`` of ``model`` with ``optimizer`` for ``steps`` steps (module docstring).

    Args:
      model: a ``jrnn.RNN``.
      params: its ``NetworkParams`` (the starting point; the template when resuming).
      optimizer: an optax ``GradientTransformation``; its state starts from ``optimizer.init``.
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
      log_path: a file to append JSON lines of metrics to.
      progress: show a progress bar (tqdm, on stderr) with the loss and steps per second.
      key: the run's ``jax.random`` key (default ``PRNGKey(0)``); split into the data key and the
        dropout key.
      devices: devices to shard each batch over (default ``jax.local_devices()``); the batch
        size must be divisible by their number. After ``jax.distributed.initialize()``, pass
        ``jax.devices()`` to span every process: each one must then call ``fit`` with the same
        params, data and key (it uploads only its own devices' rows of each global batch); only
        process 0 shows progress and writes ``log_path``.
      clip_norm: the optimizer's clipping threshold, to report ``clipped`` (``make_train_step``).
      max_consecutive_nonfinite: this many non-finite steps in a row raise ``FloatingPointError``.

    Returns:
      ``FitResult(params, opt_state, step, history)``.
    """
    check_model(model)
    input_size = model.check_params(params)
    check_optimizer(optimizer)
    check_loss(loss)
    check_backward(backward)
    clip_norm = check_clip_norm(clip_norm)
    truncation = check_truncation(truncation, model)
    steps = _check_int("steps", steps, 0)
    eval_every = _check_int("eval_every", eval_every, 1)
    checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1)
    max_consecutive_nonfinite = _check_int("max_consecutive_nonfinite", max_consecutive_nonfinite, 1)
    if not (callable(data) or isinstance(data, (tuple, list))):
        raise TypeError(
            "data must be a tuple (xs, targets[, seq_lengths]) or a callable (key) -> batch, "
            f"got {type(data).__name__}"
        )
    given_key = key
    key = _check_key(key)
    parallel = DataParallel(devices)
    lead = jax.process_index() == 0

    # Validate the data before any compilation or checkpoint I/O.
    batches = Minibatches(data, batch_size, key, loss=loss, input_size=input_size, output_size=model.out_size)
    if isinstance(data, (tuple, list)):
        rows = batch_size if batch_size is not None else np.shape(data[0])[0]
        if rows % parallel.size:
            raise ValueError(
                f"batch_size must be divisible by the number of devices ({parallel.size}) to shard "
                f"each batch over them, got {rows}" + (" (the whole data set)" if batch_size is None else "")
            )
    evaluation = None
    if eval_data is not None:
        evaluation = parallel.put(
            check_batch_tuple(eval_data, loss, input_size, model.out_size, argument="eval_data")
        )

    params = parallel.replicate(params)
    opt_state = parallel.replicate(optimizer.init(params))
    history = new_history()
    start = 0
    checkpointer = Checkpointer(checkpoint_dir) if checkpoint_dir is not None else None
    try:
        if checkpointer is not None and checkpointer.latest_step() is not None:
            latest = checkpointer.latest_step()
            try:
                params, opt_state, saved_key, meta = checkpointer.restore(latest, params, opt_state, key)
            except (ValueError, TypeError, KeyError) as err:
                raise ValueError(
                    f"checkpoint_dir {checkpointer.directory!r} holds a checkpoint (step {latest}) that does "
                    f"not match these params and this optimizer's state; use another directory "
                    f"or the same model and optimizer "
                    f"({type(err).__name__}: {str(err).splitlines()[0][:300]})"
                ) from err
            if given_key is not None and not _same_key(saved_key, key):
                warnings.warn(
                    f"fit: resuming from {checkpointer.directory} at step {meta['step']} with the "
                    "checkpoint's key, not the key given", stacklevel=2,
                )
            key, start, history = saved_key, int(meta["step"]), meta["history"]
            if start > steps:
                warnings.warn(
                    f"fit: the checkpoint is at step {start}, past steps={steps}; nothing to do", stacklevel=2
                )
        k_data, k_dropout = jax.random.split(key)
        batches.set_key(k_data)

        train_step, evaluate = _compile(model, optimizer, loss, backward, clip_norm, truncation)

        log = None
        if log_path is not None and lead:
            log_path = os.fspath(log_path)
            if start > 0:
                _trim_log(log_path, start)
            log = open(log_path, "a", buffering=1)
        bar = tqdm.tqdm(
            total=steps, initial=min(start, steps), unit="step", disable=not (progress and lead),
            dynamic_ncols=True, leave=True,
        )
        t0 = time.perf_counter()
        consecutive = _trailing_nonfinite(history)
        try:
            for s in range(start, steps):
                xs, targets, seq_lengths = parallel.shard_batch(batches.batch(s))
                dropout_key = jax.random.fold_in(k_dropout, s) if model.dropout > 0 else None
                params, opt_state, metrics = train_step(
                    params, opt_state, xs, targets, seq_lengths, dropout_key
                )
                m = _host_metrics(parallel.fetch(metrics))
                done = s + 1
                history["train"]["step"].append(done)
                for name in METRICS:
                    history["train"][name].append(m[name])
                if log is not None:
                    record = {"step": done, **{k: _json_value(v) for k, v in m.items()}}
                    record["time"] = round(time.perf_counter() - t0, 4)
                    log.write(json.dumps(record) + "\n")
                bar.set_postfix_str(f"loss={m['loss']:.4g}", refresh=False)
                bar.update(1)

                consecutive = 0 if m["finite"] else consecutive + 1
                if consecutive >= max_consecutive_nonfinite:
                    raise FloatingPointError(
                        f"fit: {consecutive} consecutive steps with a non-finite loss or gradient "
                        f"(steps {done - consecutive + 1} to {done}, max_consecutive_nonfinite="
                        f"{max_consecutive_nonfinite}); the parameters are those after step "
                        f"{done - consecutive}. Lower the learning rate, clip gradients or check the data."
                    )
                if evaluation is not None and (done % eval_every == 0 or done == steps):
                    value = float(parallel.fetch(evaluate(params, *evaluation)))
                    history["eval"]["step"].append(done)
                    history["eval"]["loss"].append(value)
                    if log is not None:
                        log.write(json.dumps({"step": done, "eval_loss": _json_value(value)}) + "\n")
                if checkpointer is not None and (done % checkpoint_every == 0 or done == steps):
                    checkpointer.save(done, params, opt_state, key, history)
        finally:
            bar.close()
            if log is not None:
                log.close()
    finally:
        if checkpointer is not None:
            checkpointer.close()
    return FitResult(params, opt_state, max(start, steps), history)
