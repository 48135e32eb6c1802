"""One training step: loss, gradient, optimizer update and metrics, in one jit-compiled function.

::

    optimizer = jrnn.optim.make_optimizer("adam", 1e-3, clip_norm=1.0)
    step = make_train_step(model, optimizer, loss="mse")
    params, opt_state, metrics = step(params, opt_state, xs, targets, seq_lengths=None, key=None)

``xs`` is a batch ``(B, T, D)``; ``targets`` follow :mod:`jrnn.losses` (``(B, T, O)`` or ``(B, O)``
for ``"mse"``, integer labels ``(B, T)`` or ``(B,)`` for ``"cross_entropy"``); ``key`` is the
dropout key (no key, no dropout). The gradient is ``jax.value_and_grad`` of the loss of
``model.apply(..., backward=backward)``: with ``backward="bptt"`` every recurrent layer runs its
hand-written backward (``jrnn.bptt``) through ``jax.custom_vjp``.

An update is **skipped** (params and optimizer state returned unchanged, bit for bit) when the loss
or any gradient leaf is not finite, or when the batch has no scored step at all (every
``seq_lengths`` is 0). ``metrics`` holds scalars:

=================  ==============================================================================
``loss``           the loss of the batch (with truncation: the mean over chunks, weighted by
                   their number of scored steps, which is the loss of the whole sequence)
``grad_norm``      global L2 norm of the gradient before clipping (the largest over chunks)
``clipped``        the optimizer's clipping fired (in some chunk): what the state of its
                   ``jrnn.optim.clip_by_global_norm`` link records, ``not grad_norm < clip_norm``;
                   always False for an optimizer without that link
``finite``         the loss and every gradient were finite (in every chunk)
``num_updates``    updates applied (1 or 0 without truncation; up to ``ceil(T / truncation)``)
``num_clipped``    updates whose gradient was clipped
``num_nonfinite``  updates skipped because the loss or the gradient was not finite
=================  ==============================================================================

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

import numbers
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import optax

from jrnn._checks import check_choice, check_seq_lengths, check_sequence, check_truncation, fail
from jrnn.losses import LossName, get_loss
from jrnn.network import RNN
from jrnn.optim import clip_state
from jrnn.train._deprecated import NOT_GIVEN, check_clip_norm_agrees, pop_clip_norm, warn_clip_norm
from jrnn.unroll import BACKWARDS

__all__ = ["METRICS", "TARGET_RANKS", "Backward", "make_train_step"]

Array = jax.Array

Backward = Literal["autodiff", "bptt"]
"""How the gradient is computed: ``"bptt"`` (the hand-written backward) or ``"autodiff"``."""

METRICS = ("loss", "grad_norm", "clipped", "finite", "num_updates", "num_clipped", "num_nonfinite")
"""The keys of a train step's ``metrics``, in the order logs print them."""

TARGET_RANKS: dict[str, int] = {"mse": 3, "cross_entropy": 2}
"""Rank of every-step targets per loss; one less means last-step targets (see jrnn.losses)."""


# ----------------------------------------------------------------------------------------------
# Argument checks (shared with fit)
# ----------------------------------------------------------------------------------------------


def check_model(model: Any) -> None:
    """``model`` is a ``jrnn.RNN``; ``TypeError`` otherwise."""
    if not isinstance(model, RNN):
        fail("model", "a jrnn.RNN", type(model).__name__, TypeError)


def check_optimizer(optimizer: Any) -> None:
    """``optimizer`` has callable ``init`` and ``update`` (an optax transformation)."""
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        fail("optimizer", "an optax GradientTransformation (with init and update)",
             type(optimizer).__name__, TypeError)  # fmt: skip


def check_loss(loss: Any) -> None:
    """``loss`` names a loss that training supports (a key of ``TARGET_RANKS``)."""
    check_choice("loss", loss, TARGET_RANKS)


def check_backward(backward: Any) -> None:
    """``backward`` is ``"autodiff"`` or ``"bptt"``."""
    check_choice("backward", backward, BACKWARDS)


def check_train_truncation(truncation: Any, model: RNN) -> int | None:
    """None, or a positive int ``k`` for a unidirectional ``model``: ``TypeError`` for a value that
    is not an int, ``ValueError`` for one below 1 or with a bidirectional model."""
    expected = "None or a positive int (steps per chunk)"
    if truncation is not None and (isinstance(truncation, bool) or not isinstance(truncation, numbers.Integral)):
        fail("truncation", expected, repr(truncation), TypeError)
    k = check_truncation(truncation)
    if k is not None and model.bidirectional:
        fail(
            "truncation",
            "None for a bidirectional model (its backward direction reads each sequence from the "
            "end, so no state can be carried across chunks)",
            repr(truncation),
        )
    return k


def every_step_targets(loss: str, xs_shape, targets, output_size: int, argument: str = "targets") -> bool:
    """Whether ``targets`` score every step (True) or the last step only (False).

    Args:
      loss: ``"mse"`` or ``"cross_entropy"``.
      xs_shape: the shape ``(B, T, D)`` of the inputs.
      targets: ``mse``: ``(B, T, O)`` or ``(B, O)`` with ``O = output_size``; ``cross_entropy``:
        integer labels ``(B, T)`` or ``(B,)``.
      output_size: the model's ``out_size``.
      argument: the name of ``targets`` in error messages.

    Returns:
      True for every-step targets, False for last-step ones.

    Raises:
      ValueError: another shape. TypeError: non-integer labels.
    """
    B, T = xs_shape[:2]
    shape = tuple(jnp.shape(targets))
    if loss == "cross_entropy":
        every, last = (B, T), (B,)
        names = ("labels (B, T)", "labels (B,)")
    else:
        every, last = (B, T, output_size), (B, output_size)
        names = ("(B, T, O)", "(B, O)")
    if shape not in (every, last):
        fail(
            f"{argument} for loss={loss!r}",
            f"{names[0]} = {every} (every step) or {names[1]} = {last} (last step) for xs of shape "
            f"{tuple(xs_shape)} and a model with out_size {output_size}",
            f"shape {shape}",
        )
    dtype = getattr(targets, "dtype", None)
    if loss == "cross_entropy" and not jnp.issubdtype(dtype, jnp.integer):
        fail(f"{argument} for loss='cross_entropy'", "integer class labels", f"dtype {dtype}", TypeError)
    return shape == every


def check_batch(model: RNN, params, xs, targets, seq_lengths, loss: str) -> tuple[bool, Array | None]:
    """Static checks of one batch (shapes and dtypes; values too where concrete).

    Args:
      model: the model; params: its parameters (checked against it).
      xs: ``(B, T, D)``; targets: see ``every_step_targets``; seq_lengths: ``(B,)`` or None.
      loss: ``"mse"`` or ``"cross_entropy"``.

    Returns:
      ``(every_step, seq_lengths)``: whether the targets score every step, and the lengths as a
      flat ``int32`` array (or None).
    """
    input_size = model.check_params(params)
    check_sequence(xs, input_size, "xs", batched_only=True)
    if xs.shape[0] == 0:
        fail("xs", "a batch of at least one sequence", f"shape {tuple(xs.shape)}")
    every = every_step_targets(loss, xs.shape, targets, model.out_size)
    return every, check_seq_lengths(seq_lengths, xs.shape[0], xs.shape[1])


# ----------------------------------------------------------------------------------------------
# One update
# ----------------------------------------------------------------------------------------------


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def _select(pred: Array, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


def _clipped(opt_state) -> Array:
    """Whether the update that produced ``opt_state`` was clipped: its clipping link's record,
    or False when the optimizer has no ``jrnn.optim.clip_by_global_norm`` link."""
    state = clip_state(opt_state)
    return jnp.array(False) if state is None else state.clipped


def _make_update(model: RNN, optimizer, loss_fn: Callable, backward: str):
    """``update(params, opt_state, carries, xs, targets, fwd_lengths, loss_lengths, num_scored,
    key) -> (params, opt_state, carries, metrics)`` for one chunk (or a whole batch)."""

    def update(params, opt_state, carries, xs, targets, fwd_lengths, loss_lengths, num_scored, key):
        def objective(p):
            ys, carries_out = model.apply(
                p, xs, carries, seq_lengths=fwd_lengths, dropout_key=key, backward=backward
            )
            return loss_fn(ys, targets, loss_lengths), carries_out

        (value, carries_out), grads = jax.value_and_grad(objective, has_aux=True)(params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(value) & _all_finite(grads)
        apply = finite & (num_scored > 0)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        metrics = {
            "loss": value,
            "grad_norm": grad_norm,
            "clipped": _clipped(new_opt_state),
            "finite": finite,
            "applied": apply,
            "num_scored": num_scored,
        }
        params = _select(apply, new_params, params)
        opt_state = _select(apply, new_opt_state, opt_state)
        return params, opt_state, carries_out, metrics

    return update


def _summarize(m: dict) -> dict:
    """Per-update metrics with a leading ``(n,)`` axis -> the step's metrics (``METRICS``)."""
    weight = m["num_scored"].astype(m["loss"].dtype)
    loss = jnp.sum(m["loss"] * weight) / jnp.maximum(jnp.sum(weight), 1)
    return {
        "loss": loss,
        "grad_norm": jnp.max(m["grad_norm"]),
        "clipped": jnp.any(m["clipped"]),
        "finite": jnp.all(m["finite"]),
        "num_updates": jnp.sum(m["applied"].astype(jnp.int32)),
        "num_clipped": jnp.sum(m["clipped"].astype(jnp.int32)),
        "num_nonfinite": jnp.sum((~m["finite"]).astype(jnp.int32)),
    }


def _num_scored(every: bool, lengths, batch: int, steps: int) -> Array:
    if lengths is None:
        return jnp.asarray(batch * steps if every else batch, jnp.int32)
    return jnp.sum(lengths) if every else jnp.sum((lengths > 0).astype(jnp.int32))


def _chunks(a: Array, n: int, k: int) -> Array:
    """``(B, T, ...) -> (n, B, k, ...)``, zero-padding ``T`` up to ``n·k``."""
    pad = n * k - a.shape[1]
    if pad:
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
    a = a.reshape(a.shape[0], n, k, *a.shape[2:])
    return jnp.swapaxes(a, 0, 1)


def _compute_dtype(model: RNN, params, xs):
    first = params.layers[0][0] if model.bidirectional else params.layers[0]
    return jnp.result_type(xs.dtype, first.w_h.dtype)


def _full_step(model: RNN, loss: str, update: Callable) -> Callable:
    """The step without truncation: one update on the whole batch."""

    def step(params, opt_state, xs, targets, seq_lengths=None, key=None):
        every, lengths = check_batch(model, params, xs, targets, seq_lengths, loss)
        B, T = xs.shape[:2]
        num_scored = _num_scored(every, lengths, B, T)
        params, opt_state, _, m = update(
            params, opt_state, None, xs, targets, lengths, lengths, num_scored, key
        )
        return params, opt_state, _summarize(jax.tree_util.tree_map(lambda a: a[None], m))

    return step


def _chunked_step(model: RNN, loss: str, update: Callable, k: int) -> Callable:
    """The step with truncated BPTT: one update per chunk of ``k`` steps (module docstring)."""

    def step(params, opt_state, xs, targets, seq_lengths=None, key=None):
        every, lengths = check_batch(model, params, xs, targets, seq_lengths, loss)
        B, T = xs.shape[:2]
        n = -(-T // k)
        if lengths is None and n * k != T:
            lengths = jnp.full((B,), T, jnp.int32)  # mask the padding of the last chunk
        carries = model.initial_carries((B,), _compute_dtype(model, params, xs))
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
            num_scored = _num_scored(every, loss_lengths, B, k)
            carries = jax.lax.stop_gradient(carries)  # truncate: no gradient into the previous chunk
            params, opt_state, carries, m = update(
                params, opt_state, carries, x_c, targets_here, fwd, loss_lengths, num_scored, key
            )
            return (params, opt_state, carries), m

        (params, opt_state, _), m = jax.lax.scan(
            body, (params, opt_state, carries), (jnp.arange(n), xs_c, targets_c)
        )
        return params, opt_state, _summarize(m)

    return step


# ----------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------


def make_train_step(
    model: RNN,
    optimizer: optax.GradientTransformation,
    *,
    loss: LossName = "mse",
    backward: Backward = "bptt",
    truncation: int | None = None,
    **deprecated: Any,
) -> Callable:
    """A jitted ``step(params, opt_state, xs, targets, seq_lengths=None, key=None)
    -> (params, opt_state, metrics)`` (module docstring).

    Args:
      model: the ``jrnn.RNN`` to train.
      optimizer: an optax ``GradientTransformation`` (e.g. ``jrnn.optim.make_optimizer``); its
        ``update`` receives the params, so weight decay works. When it clips
        (``make_optimizer(..., clip_norm=c)``), ``metrics["clipped"]`` says whether it fired.
      loss: ``"mse"`` or ``"cross_entropy"`` (``jrnn.losses``).
      backward: ``"bptt"`` (the default: the hand-written backward of ``jrnn.bptt``, the same
        gradients as autodiff and faster in 20 of the 21 cases of ``benchmarks/README.md``) or
        ``"autodiff"`` (``jax.value_and_grad`` through ``lax.scan``).
      truncation: None for full BPTT, or ``k``: truncated BPTT over chunks of ``k`` steps, one
        update per chunk, the state carried across chunks.
      **deprecated: ``clip_norm``, accepted for old callers only: it warns
        (``DeprecationWarning``), and the first step raises ``ValueError`` if the optimizer's
        clipping link records another threshold. Give it to ``make_optimizer`` only.

    Returns:
      The jitted step function.

    Raises:
      TypeError: ``model`` is not a ``jrnn.RNN``, ``optimizer`` not an optax transformation, or a
        keyword this function does not take.
      ValueError: an unknown ``loss`` or ``backward``, a bad ``truncation``.
    """
    clip_norm = pop_clip_norm(deprecated, "make_train_step")
    check_model(model)
    check_optimizer(optimizer)
    check_loss(loss)
    check_backward(backward)
    k = check_train_truncation(truncation, model)
    update = _make_update(model, optimizer, get_loss(loss).loss, backward)
    step = _full_step(model, loss, update) if k is None else _chunked_step(model, loss, update, k)
    step.__doc__ = make_train_step.__doc__
    step = jax.jit(step)
    if clip_norm is NOT_GIVEN:
        return step
    warn_clip_norm("make_train_step")
    return _checking_clip_norm(step, clip_norm)


def _checking_clip_norm(step: Callable, clip_norm: float | None) -> Callable:
    """``step``, checking once (on the first concrete optimizer state) that the deprecated
    ``clip_norm`` agrees with the optimizer's clipping link."""
    pending = [True]

    def checked_step(params, opt_state, xs, targets, seq_lengths=None, key=None):
        if pending and check_clip_norm_agrees(clip_norm, opt_state):
            pending.clear()
        return step(params, opt_state, xs, targets, seq_lengths, key)

    checked_step.__doc__ = step.__doc__
    return checked_step
