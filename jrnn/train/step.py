"""One training step: loss, gradient, optimizer update and metrics, in one jit-compiled function.

::

    optimizer = jrnn.optim.make_optimizer("adam", 1e-3, clip_norm=1.0)
    step = make_train_step(model, optimizer, loss="mse")
    params, opt_state, metrics = step(params, opt_state, xs, targets, seq_lengths=None, key=None)

    step = make_train_step(loss_fn, optimizer, metrics=("accuracy",))   # any loss, any params pytree
    params, opt_state, metrics = step(params, opt_state, batch, key=None)

With a loss function (``jrnn.train.objective``) the gradient is ``jax.value_and_grad`` of
``loss_fn(params, batch, key)``, and everything below holds the same way: clipping is read from
the optimizer, a non-finite loss or gradient skips the update, and the requested metrics come
from the function's ``aux``. Its update is skipped only when not finite (it has no notion of
"nothing scored").

``xs`` is a batch ``(B, T, D)``; ``targets`` follow :mod:`jrnn.losses` (``(B, T, O)`` or ``(B, O)``
for ``"mse"``, integer labels ``(B, T)`` or ``(B,)`` for ``"cross_entropy"``); ``key`` is the
dropout key (no key, no dropout). The gradient is ``jax.value_and_grad`` of the loss of
``model.apply(..., backward=backward)``: with ``backward="bptt"`` every recurrent layer runs its
hand-written backward (``jrnn.bptt``) through ``jax.custom_vjp``.

An update is **skipped** (params and optimizer state returned unchanged, bit for bit) when the loss
or the gradient's global norm is not finite (a NaN or an infinity in any leaf, or a sum of squares
that overflows), when the update would make a parameter or the optimizer's state non-finite (a
finite gradient that overflows Adagrad's or RMSprop's sum of squares, which would freeze the
weights for good), or when the batch has no scored step at all (every ``seq_lengths`` is 0). ``metrics`` holds scalars:

=================  ==============================================================================
``loss``           the loss of the batch (with truncation: the mean over chunks, weighted by
                   their number of scored steps, which is the loss of the whole sequence)
``grad_norm``      global L2 norm of the gradient before clipping (the largest over chunks)
``clipped``        the optimizer's clipping fired (in some chunk): what the state of its
                   ``jrnn.optim.clip_by_global_norm`` link records, ``not grad_norm < clip_norm``;
                   always False for an optimizer without that link
``finite``         the loss, the gradient norm, the new params and the new optimizer state were
                   finite (in every chunk)
``num_updates``    updates applied (1 or 0 without truncation; up to ``ceil(T / truncation)``)
``num_clipped``    updates whose gradient was clipped
``num_nonfinite``  updates skipped because one of those was not finite
=================  ==============================================================================

and one scalar per requested metric (``make_train_step(..., metrics=...)``, ``jrnn.metrics``): its
value on the batch with the parameters before the update (over all chunks with truncation: the
metric's sums pooled over chunks).

Clipping belongs to the optimizer: give ``clip_norm`` once, to
``jrnn.optim.make_optimizer(..., clip_norm=c)``; the step finds the clipping link's state in the
(possibly nested) optimizer state (``jrnn.optim.clip_state``) and reads whether it fired. Passing
``clip_norm`` to ``make_train_step`` or ``fit`` as well is deprecated (``jrnn.train._deprecated``).

**Truncated BPTT** (``truncation=k``). Each sequence is cut into ``n = ceil(T / k)`` chunks of
``k`` steps (the last one padded with masked steps when ``k`` does not divide ``T``). Chunk ``c``
starts from the carries that chunk ``c - 1`` ended with, behind ``jax.lax.stop_gradient`` (the
state flows forward, the gradient does not), and each chunk makes one optimizer update, so a
step makes up to ``n`` updates. A dropout key gives the same masks in every chunk (variational
dropout over the whole sequence). With ``seq_lengths = L``, chunk ``c`` sees the local lengths
``clip(L - c·k, 0, k)``: a sequence that has ended keeps its carry unchanged. What each chunk
scores follows the targets:

- every-step targets (``(B, T, O)``, labels ``(B, T)``): the chunk's valid steps, with the loss
  averaged over them (the loss module's mean, restricted to the chunk);
- last-step targets (``(B, O)``, labels ``(B,)``): sequence ``b`` is scored only in the chunk that
  holds its last valid step ``L_b - 1``; a chunk where no sequence ends has nothing to score,
  makes no update, and only carries the state forward. So with equal lengths the first
  ``n - 1`` chunks only run forward and the gradient reaches back ``k`` steps from the end.

Shapes: ``B`` batch, ``T`` time steps, ``D`` input features, ``O`` outputs, ``n`` chunks of ``k``
steps.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import optax

from jrnn._checks import check_seq_lengths, check_sequence, check_truncation, fail
from jrnn.metrics import Metric
from jrnn.optim import clip_state
from jrnn.scan import compute_dtype
from jrnn.train._deprecated import NOT_GIVEN, check_clip_norm_agrees, pop_clip_norm, warn_clip_norm
from jrnn.train.objective import (
    TARGET_RANKS,
    FunctionObjective,
    ModelObjective,
    as_objective,
    check_metrics,
    num_scored,
    output_loss,
)

__all__ = ["METRICS", "TARGET_RANKS", "Backward", "build_step", "make_train_step"]

Array = jax.Array

Backward = Literal["autodiff", "bptt"]
"""How the gradient is computed: ``"bptt"`` (the hand-written backward) or ``"autodiff"``."""

METRICS = ("loss", "grad_norm", "clipped", "finite", "num_updates", "num_clipped", "num_nonfinite")
"""The keys of a train step's ``metrics``, in the order logs print them (then the requested
``jrnn.metrics``, in the order asked)."""


# ----------------------------------------------------------------------------------------------
# Argument checks (shared with fit)
# ----------------------------------------------------------------------------------------------


def check_optimizer(optimizer: Any) -> None:
    """``optimizer`` has callable ``init`` and ``update`` (an optax transformation)."""
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        fail("optimizer", "an optax GradientTransformation (with init and update)",
             type(optimizer).__name__, TypeError)  # fmt: skip


def check_train_truncation(truncation: Any, objective) -> int | None:
    """None, or a positive int ``k`` that ``objective`` can be trained with.

    Raises:
      TypeError: a value that is not an int; a loss function that does not expose its carry.
      ValueError: a value below 1; a bidirectional model or one that pools each sequence.
    """
    expected = "None or a positive int (steps per chunk)"
    if truncation is not None and (isinstance(truncation, bool) or not isinstance(truncation, numbers.Integral)):
        fail("truncation", expected, repr(truncation), TypeError)
    k = check_truncation(truncation)
    if k is None:
        return None
    if isinstance(objective, ModelObjective):
        if objective.model.bidirectional:
            fail(
                "truncation",
                "None for a bidirectional model (its backward direction reads each sequence from the "
                "end, so no state can be carried across chunks)",
                repr(truncation),
            )
        if objective.pooled:
            fail("truncation", "None for a model that pools each sequence into one output (its "
                 "output needs the whole sequence)", repr(truncation))  # fmt: skip
    elif not objective.takes_carry:
        fail("truncation", "None for a loss function that does not expose its carry (truncated BPTT "
             "needs loss_fn(params, batch, key, carry) returning (loss, {'carry': ...}), carry None "
             "at the first chunk)", repr(truncation), TypeError)  # fmt: skip
    return k


def check_batch(objective: ModelObjective, params, xs, targets, seq_lengths) -> tuple[bool, Array | None]:
    """Static checks of one batch of a model (shapes and dtypes; values too where concrete).

    Returns:
      ``(every_step, seq_lengths)``: whether the targets score every step, and the lengths as a
      flat ``int32`` array (or None).
    """
    input_size = objective.check_params(params)
    if jnp.ndim(xs) == 2:
        fail("xs", f"(B, T, D) (a 2-D batch is not read as one unbatched sequence in training; for "
             f"univariate sequences pass xs[..., None])", f"shape {tuple(jnp.shape(xs))}")  # fmt: skip
    check_sequence(xs, input_size, "xs", batched_only=True)
    if xs.shape[0] == 0:
        fail("xs", "a batch of at least one sequence", f"shape {tuple(xs.shape)}")
    every = objective.every_step(xs.shape, targets)
    return every, check_seq_lengths(seq_lengths, xs.shape[0], xs.shape[1])


# ----------------------------------------------------------------------------------------------
# One update
# ----------------------------------------------------------------------------------------------


def _select(pred: Array, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


def _stays_finite(new, old) -> Array:
    """Whether no floating-point leaf of ``new`` holds a non-finite value where ``old`` held a
    finite one (True for trees without such leaves). An optimizer state may hold non-finite
    values by design (an ``inf`` best value, ``NaN`` for history slots not yet written): those
    are left alone; only what an update turns non-finite counts."""
    checks = [jnp.all(jnp.isfinite(a) | ~jnp.isfinite(b))
              for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(old))
              if jnp.issubdtype(jnp.result_type(a), jnp.inexact)]  # fmt: skip
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def _clipped(opt_state) -> Array:
    """Whether the update that produced ``opt_state`` was clipped: its clipping link's record,
    or False when the optimizer has no ``jrnn.optim.clip_by_global_norm`` link."""
    state = clip_state(opt_state)
    return jnp.array(False) if state is None else state.clipped


def _apply_gradients(optimizer, params, opt_state, value, grads, weight):
    """The optimizer's update, kept only when the loss and gradient are finite and ``weight``
    (what the loss scored) is above 0; returns ``(params, opt_state, stats)``."""
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    # A NaN or an infinity in any gradient reaches the norm, so one test covers every leaf; a
    # finite gradient whose sum of squares overflows is refused too (no update could use it). A
    # finite gradient can still overflow the optimizer's state (Adagrad's sum of squares, Adam's
    # second moment) or the params: such an update would freeze them for good, so it is refused.
    finite = (jnp.isfinite(value) & jnp.isfinite(grad_norm)
              & _stays_finite(new_params, params) & _stays_finite(new_opt_state, opt_state))  # fmt: skip
    apply = finite & (weight > 0)
    stats = {
        "loss": value,
        "grad_norm": grad_norm,
        "clipped": _clipped(new_opt_state),
        "finite": finite,
        "applied": apply,
        "weight": weight,
    }
    return _select(apply, new_params, params), _select(apply, new_opt_state, opt_state), stats


def _model_update(objective: ModelObjective, optimizer, metrics: tuple[Metric, ...]):
    """``update(params, opt_state, carries, xs, targets, fwd_lengths, loss_lengths, weight, key)
    -> (params, opt_state, carries, stats)`` for one chunk (or a whole batch) of a model."""
    model, loss_fn, backward = objective.model, objective.loss_fn, objective.backward

    def update(params, opt_state, carries, xs, targets, fwd_lengths, loss_lengths, weight, key):
        def f(p):
            ys, carries_out = model.apply(
                p, xs, carries, seq_lengths=fwd_lengths, dropout_key=key, backward=backward
            )
            return output_loss(loss_fn, ys, targets, loss_lengths), (carries_out, ys)

        (value, (carries_out, ys)), grads = jax.value_and_grad(f, has_aux=True)(params)
        params, opt_state, stats = _apply_gradients(optimizer, params, opt_state, value, grads, weight)
        stats["parts"] = {m.name: m.parts(ys, targets, loss_lengths) for m in metrics}
        return params, opt_state, carries_out, stats

    return update


def _function_update(objective: FunctionObjective, optimizer, metrics: tuple[Metric, ...]):
    """``update(params, opt_state, carry, batch, weight, key) -> (params, opt_state, carry,
    stats)`` for one chunk (or a whole batch) of a loss function."""

    def update(params, opt_state, carry, batch, weight, key):
        def f(p):
            return objective.call(p, batch, key, carry)

        (value, aux), grads = jax.value_and_grad(f, has_aux=True)(params)
        params, opt_state, stats = _apply_gradients(optimizer, params, opt_state, value, grads, weight)
        stats["parts"] = objective.metric_parts(aux, batch, metrics, weight)
        return params, opt_state, aux.get("carry"), stats

    return update


def _summarize(m: dict, metrics: tuple[Metric, ...]) -> dict:
    """Per-update stats with a leading ``(n,)`` axis -> the step's metrics (``METRICS``, then the
    requested metrics)."""
    weight = m["weight"].astype(m["loss"].dtype)
    loss = jnp.sum(m["loss"] * weight) / jnp.maximum(jnp.sum(weight), 1)
    out = {
        "loss": loss,
        "grad_norm": jnp.max(m["grad_norm"]),
        "clipped": jnp.any(m["clipped"]),
        "finite": jnp.all(m["finite"]),
        "num_updates": jnp.sum(m["applied"].astype(jnp.int32)),
        "num_clipped": jnp.sum(m["clipped"].astype(jnp.int32)),
        "num_nonfinite": jnp.sum((~m["finite"]).astype(jnp.int32)),
    }
    for metric in metrics:
        total, count = m["parts"][metric.name]
        out[metric.name] = metric.finish(jnp.sum(total), jnp.sum(count))
    return out


def _one(m: dict) -> dict:
    """The stats of a single update, given the leading ``(1,)`` axis of a chunk sequence."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], m)


def _concat(ms: list[dict]) -> dict:
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a, axis=0), *ms)


def _chunks(a: Array, n: int, k: int) -> Array:
    """``(B, T, ...) -> (n, B, k, ...)``, zero-padding ``T`` up to ``n·k``."""
    pad = n * k - a.shape[1]
    if pad:
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
    a = a.reshape(a.shape[0], n, k, *a.shape[2:])
    return jnp.swapaxes(a, 0, 1)


# ----------------------------------------------------------------------------------------------
# Steps of a model
# ----------------------------------------------------------------------------------------------


def _model_full_step(objective: ModelObjective, update: Callable, metrics) -> Callable:
    """The step without truncation: one update on the whole batch."""

    def step(params, opt_state, batch, key=None):
        xs, targets, seq_lengths = batch
        every, lengths = check_batch(objective, params, xs, targets, seq_lengths)
        B, T = xs.shape[:2]
        weight = num_scored(every, lengths, B, T)
        params, opt_state, _, m = update(params, opt_state, None, xs, targets, lengths, lengths, weight, key)
        return params, opt_state, _summarize(_one(m), metrics)

    return step


def _model_chunked_step(objective: ModelObjective, update: Callable, metrics, k: int) -> Callable:
    """The step with truncated BPTT: one update per chunk of ``k`` steps (module docstring)."""
    model = objective.model

    def step(params, opt_state, batch, key=None):
        xs, targets, seq_lengths = batch
        every, lengths = check_batch(objective, params, xs, targets, seq_lengths)
        B, T = xs.shape[:2]
        n = -(-T // k)
        if lengths is None and n * k != T:
            lengths = jnp.full((B,), T, jnp.int32)  # mask the padding of the last chunk
        carries = model.initial_carries((B,), compute_dtype(xs, model.first_cell_params(params)))
        xs_c = _chunks(xs, n, k)  # (n, B, k, D)
        targets_c = _chunks(targets, n, k) if every else None  # (n, B, k, ...)
        ends_in = None if every else ((T if lengths is None else lengths) - 1) // k  # (B,) or ()

        def body(state, inputs):
            params, opt_state, carries = state
            c, x_c, y_c = inputs
            fwd = None if lengths is None else jnp.clip(lengths - c * k, 0, k)  # (B,) local lengths
            if every:
                loss_lengths, targets_here = fwd, y_c
            else:
                scored = (ends_in == c) & ((T if lengths is None else lengths) > 0)  # (B,) or ()
                loss_lengths = jnp.where(scored, k if fwd is None else fwd, 0) * jnp.ones((B,), jnp.int32)
                targets_here = targets
            weight = num_scored(every, loss_lengths, B, k)
            carries = jax.lax.stop_gradient(carries)  # truncate: no gradient into the previous chunk
            params, opt_state, carries, m = update(
                params, opt_state, carries, x_c, targets_here, fwd, loss_lengths, weight, key
            )
            return (params, opt_state, carries), m

        (params, opt_state, _), m = jax.lax.scan(
            body, (params, opt_state, carries), (jnp.arange(n), xs_c, targets_c)
        )
        return params, opt_state, _summarize(m, metrics)

    return step


# ----------------------------------------------------------------------------------------------
# Steps of a loss function
# ----------------------------------------------------------------------------------------------


def _function_full_step(update: Callable, metrics) -> Callable:
    def step(params, opt_state, batch, key=None):
        params, opt_state, _, m = update(params, opt_state, None, batch, jnp.asarray(1, jnp.int32), key)
        return params, opt_state, _summarize(_one(m), metrics)

    return step


def _time_batch(batch) -> tuple[Array, Array, Array | None]:
    """The ``(xs, targets[, seq_lengths])`` that truncation cuts along time."""
    if not (isinstance(batch, (tuple, list)) and len(batch) in (2, 3)):
        fail("the batch for truncated BPTT with a loss function", "a tuple (xs (B, T, ...), "
             "targets[, seq_lengths (B,)])", type(batch).__name__, TypeError)  # fmt: skip
    xs, targets = batch[0], batch[1]
    if jnp.ndim(xs) < 2:
        fail("xs of the batch for truncated BPTT", "(B, T, ...)", f"shape {jnp.shape(xs)}")
    lengths = batch[2] if len(batch) == 3 else None
    if lengths is not None:
        lengths = check_seq_lengths(lengths, xs.shape[0], xs.shape[1])
    return xs, targets, lengths


def _function_chunked_step(update: Callable, metrics, k: int) -> Callable:
    """Truncated BPTT with a loss function that exposes its carry (``jrnn.train.objective``):
    the first chunk, the full chunks after it (one ``lax.scan``), the shorter last chunk."""

    def step(params, opt_state, batch, key=None):
        xs, targets, lengths = _time_batch(batch)
        B, T = xs.shape[:2]
        every = jnp.ndim(targets) >= 2 and tuple(targets.shape[:2]) == (B, T)

        def chunk(x_c, y_c, start, size):
            if lengths is None:
                return (x_c, y_c)
            return (x_c, y_c, jnp.clip(lengths - start, 0, size))

        def cut(a, start, size):
            return jax.lax.slice_in_dim(a, start, start + size, axis=1)

        def piece(start, size):
            return chunk(cut(xs, start, size), cut(targets, start, size) if every else targets, start, size)

        n_full, rest = divmod(T, k)
        first = k if n_full else T
        params, opt_state, carry, m0 = update(params, opt_state, None, piece(0, first), jnp.int32(first), key)
        if carry is None:
            fail("the aux that loss_fn returns under truncation", "a dict holding 'carry' (the state "
                 "to start the next chunk from)", "no 'carry'", TypeError)  # fmt: skip
        ms = [_one(m0)]
        if n_full > 1:
            starts = k * jnp.arange(1, n_full)
            xs_mid = _chunks(cut(xs, k, (n_full - 1) * k), n_full - 1, k)  # (n - 1, B, k, ...)
            ys_mid = _chunks(cut(targets, k, (n_full - 1) * k), n_full - 1, k) if every else None

            def body(state, inputs):
                params, opt_state, carry = state
                start, x_c, y_c = inputs
                b = chunk(x_c, y_c if every else targets, start, k)
                carry = jax.lax.stop_gradient(carry)  # truncate: no gradient into the previous chunk
                params, opt_state, carry, m = update(params, opt_state, carry, b, jnp.int32(k), key)
                return (params, opt_state, carry), m

            (params, opt_state, carry), m_mid = jax.lax.scan(
                body, (params, opt_state, carry), (starts, xs_mid, ys_mid)
            )
            ms.append(m_mid)
        if n_full and rest:
            start = n_full * k
            params, opt_state, _, m_last = update(
                params, opt_state, jax.lax.stop_gradient(carry), piece(start, rest), jnp.int32(rest), key
            )
            ms.append(_one(m_last))
        return params, opt_state, _summarize(_concat(ms), metrics)

    return step


# ----------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------


def build_step(objective, optimizer, truncation: int | None, metrics: tuple[Metric, ...]) -> Callable:
    """The unjitted ``step(params, opt_state, batch, key) -> (params, opt_state, metrics)`` for
    a checked objective, optimizer, truncation and metrics (``fit`` jits its own wrapper).
    A model's ``batch`` is ``(xs, targets, seq_lengths or None)``."""
    if isinstance(objective, ModelObjective):
        update = _model_update(objective, optimizer, metrics)
        if truncation is None:
            return _model_full_step(objective, update, metrics)
        return _model_chunked_step(objective, update, metrics, truncation)
    update = _function_update(objective, optimizer, metrics)
    if truncation is None:
        return _function_full_step(update, metrics)
    return _function_chunked_step(update, metrics, truncation)


def make_train_step(
    model_or_loss_fn,
    optimizer: optax.GradientTransformation,
    *,
    loss: str | None = None,
    backward: Backward | None = None,
    truncation: int | None = None,
    metrics=(),
    **deprecated: Any,
) -> Callable:
    """A jitted train step (module docstring).

    For a ``jrnn.RNN``: ``step(params, opt_state, xs, targets, seq_lengths=None, key=None)
    -> (params, opt_state, metrics)``. For a loss function: ``step(params, opt_state, batch,
    key=None) -> (params, opt_state, metrics)``, where ``batch`` and ``key`` go to
    ``loss_fn(params, batch, key)`` (``jrnn.train.objective``).

    Args:
      model_or_loss_fn: the ``jrnn.RNN`` to train, or ``loss_fn(params, batch, key) -> loss`` or
        ``-> (loss, aux)`` over any params pytree.
      optimizer: an optax ``GradientTransformation`` (e.g. ``jrnn.optim.make_optimizer``); its
        ``update`` receives the params, so weight decay works. When it clips
        (``make_optimizer(..., clip_norm=c)``), ``metrics["clipped"]`` says whether it fired.
      loss: for a model, ``"mse"`` (the default) or ``"cross_entropy"`` (``jrnn.losses``); left
        out with a loss function.
      backward: for a model, ``"bptt"`` (the default: the hand-written backward of ``jrnn.bptt``,
        the same gradients as autodiff and faster in 20 of the 21 cases of
        ``benchmarks/README.md``) or ``"autodiff"`` (``jax.value_and_grad`` through
        ``lax.scan``); left out with a loss function.
      truncation: None for full BPTT, or ``k``: truncated BPTT over chunks of ``k`` steps, one
        update per chunk, the state carried across chunks (a loss function must expose its
        carry: ``jrnn.train.objective``).
      metrics: names of ``jrnn.metrics`` (or ``Metric``s) to compute on the batch too, with the
        parameters before the update; they join ``metrics`` under their names.
      **deprecated: ``clip_norm``, accepted for old callers only: it warns
        (``DeprecationWarning``), and the first step raises ``ValueError`` if the optimizer's
        clipping link records another threshold. Give it to ``make_optimizer`` only.

    Returns:
      The jitted step function.

    Raises:
      TypeError: ``model_or_loss_fn`` neither a ``jrnn.RNN`` nor callable, ``optimizer`` not an
        optax transformation, ``loss``/``backward`` given with a loss function, a loss function
        without a carry under truncation, or a keyword this function does not take.
      ValueError: an unknown ``loss``, ``backward`` or metric, a bad ``truncation``.
    """
    clip_norm = pop_clip_norm(deprecated, "make_train_step")
    objective = as_objective(model_or_loss_fn, loss, backward)
    check_optimizer(optimizer)
    k = check_train_truncation(truncation, objective)
    metrics = check_metrics(metrics)
    objective.check_metrics(metrics)
    core = build_step(objective, optimizer, k, metrics)
    if isinstance(objective, ModelObjective):

        def step(params, opt_state, xs, targets, seq_lengths=None, key=None):
            return core(params, opt_state, (xs, targets, seq_lengths), key)

        call_args = ("xs", "targets", "seq_lengths", "key")
    else:

        def step(params, opt_state, batch, key=None):
            return core(params, opt_state, batch, key)

        call_args = ("batch", "key")
    step.__doc__ = make_train_step.__doc__
    step = jax.jit(step)
    if isinstance(objective, ModelObjective):
        step = _checking_values(step, objective)
    if clip_norm is NOT_GIVEN:
        return step
    warn_clip_norm("make_train_step")
    return _checking_clip_norm(step, clip_norm, call_args)


def _checking_values(step: Callable, objective: ModelObjective) -> Callable:
    """``step`` behind a thin eager check of what its trace cannot see: the values of
    ``seq_lengths`` (in ``[0, T]``) and of the labels (below the model's ``out_size``), when they
    are concrete. Under an outer ``jit`` they are traced and the step runs unchecked."""

    @functools.wraps(step)
    def checked_step(params, opt_state, xs, targets, seq_lengths=None, key=None):
        objective.check_values(xs, targets, seq_lengths)
        return step(params, opt_state, xs, targets, seq_lengths, key)

    checked_step.lower = step.lower  # the jitted step's AOT interface stays reachable
    return checked_step


def _checking_clip_norm(step: Callable, clip_norm: float | None, call_args: tuple) -> Callable:
    """``step``, checking once (on the first concrete optimizer state) that the deprecated
    ``clip_norm`` agrees with the optimizer's clipping link."""
    pending = [True]

    def checked_step(params, opt_state, *args, **kwargs):
        if pending and check_clip_norm_agrees(clip_norm, opt_state):
            pending.clear()
        return step(params, opt_state, *args, **kwargs)

    checked_step.__doc__ = step.__doc__
    return checked_step
