"""One training step: loss, gradient, optimizer update and metrics, in one jit-compiled function.

::

    step = make_train_step(model, optimizer, loss="mse", clip_norm=1.0)
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
``clipped``        clipping fired: ``grad_norm > clip_norm`` (in some chunk); always False
                   without ``clip_norm``
``finite``         the loss and every gradient were finite (in every chunk)
``num_updates``    updates applied (1 or 0 without truncation; up to ``ceil(T / truncation)``)
``num_clipped``    updates whose gradient was clipped
``num_nonfinite``  updates skipped because the loss or the gradient was not finite
=================  ==============================================================================

``clip_norm`` is only read to report ``clipped``: the clipping itself belongs to the optimizer
(``jrnn.optim.make_optimizer(..., clip_norm=c)``); pass the same ``c`` here. An optax chain does
not expose its settings, so the train step cannot read it from the optimizer.

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
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jrnn.losses import get_loss
from jrnn.network import RNN
from jrnn.unroll import BACKWARDS, check_seq_lengths

__all__ = ["METRICS", "TARGET_RANKS", "make_train_step"]

Array = jax.Array

METRICS = ("loss", "grad_norm", "clipped", "finite", "num_updates", "num_clipped", "num_nonfinite")
"""The keys of a train step's ``metrics``, in the order logs print them."""

TARGET_RANKS: dict[str, int] = {"mse": 3, "cross_entropy": 2}
"""Rank of every-step targets per loss; one less means last-step targets (see jrnn.losses)."""


# ----------------------------------------------------------------------------------------------
# Argument checks (shared with fit)
# ----------------------------------------------------------------------------------------------


def check_model(model: Any) -> None:
    if not isinstance(model, RNN):
        raise TypeError(f"model must be a jrnn.RNN, got {type(model).__name__}")


def check_optimizer(optimizer: Any) -> None:
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(
            f"optimizer must be an optax GradientTransformation (with init and update), "
            f"got {type(optimizer).__name__}"
        )


def check_loss(loss: Any) -> None:
    get_loss(loss)  # raises ValueError naming the valid losses
    if loss not in TARGET_RANKS:
        raise ValueError(f"loss must be one of {sorted(TARGET_RANKS)} for training, got {loss!r}")


def check_backward(backward: Any) -> None:
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {list(BACKWARDS)}, got {backward!r}")


def check_clip_norm(clip_norm: Any) -> float | None:
    if clip_norm is None:
        return None
    if (isinstance(clip_norm, bool) or not isinstance(clip_norm, numbers.Real)
            or not math.isfinite(clip_norm) or clip_norm <= 0):
        raise ValueError(f"clip_norm must be None or a positive finite number, got {clip_norm!r}")
    return float(clip_norm)


def check_truncation(truncation: Any, model: RNN) -> int | None:
    if truncation is None:
        return None
    if isinstance(truncation, bool) or not isinstance(truncation, numbers.Integral):
        raise TypeError(f"truncation must be None or a positive int, got {truncation!r}")
    if truncation < 1:
        raise ValueError(f"truncation must be None or a positive int, got {truncation!r}")
    if model.bidirectional:
        raise ValueError(
            "truncation must be None for a bidirectional model (its backward direction reads "
            f"each sequence from the end, so no state can be carried across chunks), got {truncation!r}"
        )
    return int(truncation)


def every_step_targets(loss: str, xs_shape, targets, output_size: int, argument: str = "targets") -> bool:
    """True for every-step targets, False for last-step ones; ValueError / TypeError otherwise.

    ``mse`` takes ``(B, T, O)`` or ``(B, O)`` with ``O = output_size``; ``cross_entropy`` takes
    integer labels ``(B, T)`` or ``(B,)``.
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
        raise ValueError(
            f"{argument} for loss={loss!r} must be {names[0]} = {every} (every step) or {names[1]} = "
            f"{last} (last step) for xs of shape {tuple(xs_shape)} and a model with out_size "
            f"{output_size}; got shape {shape}"
        )
    dtype = getattr(targets, "dtype", None)
    if loss == "cross_entropy" and not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(
            f"{argument} for loss='cross_entropy' must be integer class labels, got dtype {dtype}"
        )
    return shape == every


def check_batch(model: RNN, params, xs, targets, seq_lengths, loss: str):
    """Static checks of one batch; returns ``(every_step, seq_lengths as int32 or None)``."""
    input_size = model.check_params(params)
    shape = getattr(xs, "shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(f"xs must be a batch (B, T, D), got shape {shape}")
    if shape[1] == 0 or shape[0] == 0:
        raise ValueError(f"xs must have at least one sequence and one step, got shape {tuple(shape)}")
    if shape[2] != input_size:
        raise ValueError(f"xs must have input_size {input_size} in its last axis, got shape {tuple(shape)}")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"xs must be floating point, got dtype {xs.dtype}")
    every = every_step_targets(loss, shape, targets, model.out_size)
    return every, check_seq_lengths(seq_lengths, shape[0], shape[1])


# ----------------------------------------------------------------------------------------------
# One update
# ----------------------------------------------------------------------------------------------


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def _select(pred: Array, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


def _make_update(model: RNN, optimizer, loss_fn: Callable, backward: str, clip_norm: float | None):
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
        params = _select(apply, new_params, params)
        opt_state = _select(apply, new_opt_state, opt_state)
        clipped = grad_norm > clip_norm if clip_norm is not None else jnp.array(False)
        metrics = {
            "loss": value,
            "grad_norm": grad_norm,
            "clipped": clipped,
            "finite": finite,
            "applied": apply,
            "num_scored": num_scored,
        }
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


# ----------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------


def make_train_step(
    model: RNN,
    optimizer: optax.GradientTransformation,
    *,
    loss: str = "mse",
    backward: str = "bptt",
    clip_norm: float | None = None,
    truncation: int | None = None,
) -> Callable:
    """A jitted ``step(params, opt_state, xs, targets, seq_lengths=None, key=None)
    -> (params, opt_state, metrics)`` (module docstring).

    Args:
      model: the ``jrnn.RNN`` to train.
      optimizer: an optax ``GradientTransformation`` (e.g. ``jrnn.optim.make_optimizer``); its
        ``update`` receives the params, so weight decay works.
      loss: ``"mse"`` or ``"cross_entropy"`` (``jrnn.losses``).
      backward: ``"bptt"`` (the default: the hand-written backward of ``jrnn.bptt``, the same
        gradients as autodiff and faster in 20 of the 21 cases of ``benchmarks/README.md``) or
        ``"autodiff"`` (``jax.value_and_grad`` through ``lax.scan``).
      clip_norm: the optimizer's global-norm clipping threshold, read only to report
        ``metrics["clipped"]``; None when the optimizer does not clip.
      truncation: None for full BPTT, or ``k``: truncated BPTT over chunks of ``k`` steps, one
        update per chunk, the state carried across chunks.
    """
    check_model(model)
    check_optimizer(optimizer)
    check_loss(loss)
    check_backward(backward)
    clip_norm = check_clip_norm(clip_norm)
    k = check_truncation(truncation, model)
    update = _make_update(model, optimizer, get_loss(loss).loss, backward, clip_norm)

    def full_step(params, opt_state, xs, targets, seq_lengths=None, key=None):
        every, lengths = check_batch(model, params, xs, targets, seq_lengths, loss)
        B, T = xs.shape[:2]
        num_scored = _num_scored(every, lengths, B, T)
        params, opt_state, _, m = update(
            params, opt_state, None, xs, targets, lengths, lengths, num_scored, key
        )
        return params, opt_state, _summarize(jax.tree_util.tree_map(lambda a: a[None], m))

    def chunked_step(params, opt_state, xs, targets, seq_lengths=None, key=None):
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
                scored = (ends_in == c) & ((T if lengths is None else lengths) > 0)
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

    step = full_step if k is None else chunked_step
    step.__doc__ = make_train_step.__doc__
    return jax.jit(step)
