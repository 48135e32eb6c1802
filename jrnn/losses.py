"""Sequence losses with masking, and their derivatives written out by hand.

Every loss takes the network's per-step outputs ``(B, T, ·)`` and scores either every valid step
or only the last valid step of each sequence, chosen by the rank of the targets:

==================  =======================  ==========================================
loss                every valid step          last valid step only
==================  =======================  ==========================================
``mse``             ``targets (B, T, O)``     ``targets (B, O)``
``cross_entropy``   ``labels (B, T)`` ints    ``labels (B,)`` ints
==================  =======================  ==========================================

``seq_lengths: (B,)`` ints gives each sequence's valid length ``L_b``. Step ``t`` of sequence
``b`` is *valid* when ``t < L_b``; the last valid step is ``L_b - 1`` (``T - 1`` when
``seq_lengths`` is ``None``). Write ``s_bt ∈ {0, 1}`` for "step t of sequence b is scored":

- every step:  ``s_bt = [t < L_b]``
- last step:   ``s_bt = [t = L_b - 1]``  (a sequence of length 0 has no scored step)

and ``N = Σ_bt s_bt`` for the number of scored steps. Unscored steps count neither in the sum nor
in the mean, and their targets are never read (they may hold padding, even NaN or ``-1``). When no
step at all is scored the loss is 0.

The ``*_value_and_grad`` functions return the loss and its derivative with respect to the
predictions, written out in closed form with no automatic differentiation, for the hand-written
backpropagation through time. The derivative has the predictions' full ``(B, T, ·)`` shape, with
zeros at unscored steps.

Validation uses only static shape and dtype information, so every function works under
``jax.jit``; when ``seq_lengths`` or ``labels`` are concrete (not traced) their ranges are checked
as well.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn.unroll import check_seq_lengths

__all__ = [
    "LOSSES",
    "LossPair",
    "cross_entropy",
    "cross_entropy_value_and_grad",
    "get_loss",
    "mse",
    "mse_value_and_grad",
]


# ----------------------------------------------------------------------------------------------
# Validation and the scored-step mask
# ----------------------------------------------------------------------------------------------


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_preds(name: str, preds) -> jax.Array:
    preds = jnp.asarray(preds)
    if preds.ndim != 3:
        raise ValueError(
            f"{name}: expected a 3-D array (B, T, {'K' if name == 'logits' else 'O'}), "
            f"got shape {preds.shape}"
        )
    if not jnp.issubdtype(preds.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating dtype, got {preds.dtype}")
    return preds


def _scored_mask(batch: int, steps: int, seq_lengths, every_step: bool) -> jax.Array:
    """The boolean ``(B, T)`` mask ``s_bt`` of scored steps (see the module docstring)."""
    if seq_lengths is None:
        seq_lengths = jnp.full((batch,), steps, dtype=jnp.int32)
    t = jnp.arange(steps, dtype=seq_lengths.dtype)[None, :]             # (1, T)
    lengths = seq_lengths[:, None]                                      # (B, 1)
    if every_step:
        return jnp.broadcast_to(t < lengths, (batch, steps))
    return jnp.broadcast_to(t == lengths - 1, (batch, steps))


def _count(scored: jax.Array, dtype) -> jax.Array:
    """``max(N, 1)`` in ``dtype``: the number of scored steps, guarded against 0."""
    return jnp.maximum(jnp.sum(scored.astype(dtype)), jnp.ones((), dtype))


# ----------------------------------------------------------------------------------------------
# Mean squared error
# ----------------------------------------------------------------------------------------------


def _mse_residual(preds, targets, seq_lengths):
    """Validated inputs -> (masked residual ``s_bt (p_bto - y_bto)``, ``O · max(N, 1)``)."""
    preds = _check_preds("preds", preds)
    batch, steps, out = preds.shape
    targets = jnp.asarray(targets)
    if not (jnp.issubdtype(targets.dtype, jnp.floating)
            or jnp.issubdtype(targets.dtype, jnp.integer)):
        raise TypeError(f"targets: expected a real numeric dtype, got {targets.dtype}")
    if targets.ndim == 3:
        if targets.shape != preds.shape:
            raise ValueError(
                f"targets: expected shape (B, T, O) = {preds.shape} (every step) or "
                f"(B, O) = {(batch, out)} (last step), got {targets.shape}"
            )
        every_step = True
    elif targets.ndim == 2:
        if targets.shape != (batch, out):
            raise ValueError(
                f"targets: expected shape (B, O) = {(batch, out)} (last step) or "
                f"(B, T, O) = {preds.shape} (every step), got {targets.shape}"
            )
        targets = jnp.broadcast_to(targets[:, None, :], preds.shape)   # (B, T, O)
        every_step = False
    else:
        raise ValueError(
            f"targets: expected shape (B, T, O) = {preds.shape} or (B, O) = {(batch, out)}, "
            f"got {targets.shape}"
        )
    seq_lengths = check_seq_lengths(seq_lengths, batch, steps)
    targets = targets.astype(preds.dtype)
    scored = _scored_mask(batch, steps, seq_lengths, every_step)[:, :, None]   # (B, T, 1)
    residual = jnp.where(scored, preds - targets, 0)                   # (B, T, O)
    return residual, out * _count(scored, preds.dtype)


def mse(preds, targets, seq_lengths=None) -> jax.Array:
    r"""Mean squared error over the scored target elements.

    .. math::

        \mathcal{L} = \frac{1}{O N} \sum_{b,t} s_{bt} \sum_{o} (p_{bto} - y_{bto})^2

    where ``s_bt`` marks scored steps and ``N = Σ s_bt`` (module docstring). With last-step
    targets ``(B, O)``, ``y_bto = y_bo`` at the scored step ``t = L_b - 1``.

    Args:
      preds: ``(B, T, O)`` floating predictions.
      targets: ``(B, T, O)`` to score every valid step, or ``(B, O)`` to score the last valid
        step only; cast to ``preds.dtype``.
      seq_lengths: optional ``(B,)`` integer valid lengths in ``[0, T]``.

    Returns:
      The scalar loss, in ``preds.dtype``.
    """
    residual, denom = _mse_residual(preds, targets, seq_lengths)
    return jnp.sum(residual * residual) / denom


def mse_value_and_grad(preds, targets, seq_lengths=None) -> tuple[jax.Array, jax.Array]:
    r"""``mse`` and its derivative with respect to ``preds``, in closed form.

    .. math::

        \frac{\partial \mathcal{L}}{\partial p_{bto}} = \frac{2}{O N}\, s_{bt}\,(p_{bto} - y_{bto})

    Returns:
      ``(loss, d_preds)`` with ``d_preds`` of shape ``(B, T, O)``, zero at unscored steps.
    """
    residual, denom = _mse_residual(preds, targets, seq_lengths)
    loss = jnp.sum(residual * residual) / denom
    d_preds = 2 * residual / denom
    return loss, d_preds


# ----------------------------------------------------------------------------------------------
# Softmax cross-entropy
# ----------------------------------------------------------------------------------------------


def _log_softmax(logits: jax.Array) -> jax.Array:
    r"""``z_k - log Σ_j exp z_j``, as ``(z_k - m) - log Σ_j exp(z_j - m)`` with ``m = max z``.

    Subtracting the maximum keeps every exponent ``<= 0``; the result does not depend on ``m``,
    so ``m`` is held constant for differentiation.
    """
    shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def _cross_entropy_parts(logits, labels, seq_lengths):
    """Validated inputs -> (log-probs, in-range labels, scored mask (B, T), ``max(N, 1)``)."""
    logits = _check_preds("logits", logits)
    batch, steps, classes = logits.shape
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels: expected an integer dtype (class indices), got {labels.dtype}")
    if labels.ndim == 2:
        if labels.shape != (batch, steps):
            raise ValueError(
                f"labels: expected shape (B, T) = {(batch, steps)} (every step) or "
                f"(B,) = ({batch},) (last step), got {labels.shape}"
            )
        every_step = True
    elif labels.ndim == 1:
        if labels.shape != (batch,):
            raise ValueError(
                f"labels: expected shape (B,) = ({batch},) (last step) or "
                f"(B, T) = {(batch, steps)} (every step), got {labels.shape}"
            )
        labels = jnp.broadcast_to(labels[:, None], (batch, steps))    # (B, T)
        every_step = False
    else:
        raise ValueError(
            f"labels: expected shape (B, T) = {(batch, steps)} or (B,) = ({batch},), "
            f"got {labels.shape}"
        )
    seq_lengths = check_seq_lengths(seq_lengths, batch, steps)
    scored = _scored_mask(batch, steps, seq_lengths, every_step)       # (B, T)
    if _is_concrete(labels) and _is_concrete(scored):
        used = np.asarray(labels)[np.asarray(scored)]
        if used.size and (used.min() < 0 or used.max() >= classes):
            raise ValueError(
                f"labels: expected class indices in [0, K) = [0, {classes}) at scored steps, "
                f"got min {used.min()} and max {used.max()}"
            )
    labels = jnp.where(scored, labels, 0)
    return _log_softmax(logits), labels, scored, _count(scored, logits.dtype)


def cross_entropy(logits, labels, seq_lengths=None) -> jax.Array:
    r"""Softmax cross-entropy averaged over the scored steps.

    .. math::

        \mathcal{L} = \frac{1}{N} \sum_{b,t} s_{bt}
            \Big(\log \sum_k e^{z_{btk}} - z_{bt\,y_{bt}}\Big)

    computed stably as ``-log_softmax`` with the maximum logit subtracted first.

    Args:
      logits: ``(B, T, K)`` floating unnormalized scores.
      labels: integer class indices, ``(B, T)`` to score every valid step or ``(B,)`` to score
        the last valid step only. Labels at unscored steps are ignored.
      seq_lengths: optional ``(B,)`` integer valid lengths in ``[0, T]``.

    Returns:
      The scalar loss, in ``logits.dtype``.
    """
    log_probs, labels, scored, count = _cross_entropy_parts(logits, labels, seq_lengths)
    picked = jnp.take_along_axis(log_probs, labels[:, :, None], axis=-1)[:, :, 0]   # (B, T)
    return -jnp.sum(jnp.where(scored, picked, 0)) / count


def cross_entropy_value_and_grad(logits, labels, seq_lengths=None) -> tuple[jax.Array, jax.Array]:
    r"""``cross_entropy`` and its derivative with respect to ``logits``, in closed form.

    .. math::

        \frac{\partial \mathcal{L}}{\partial z_{btk}}
            = \frac{1}{N}\, s_{bt} \big(\mathrm{softmax}(z_{bt})_k - [k = y_{bt}]\big)

    Returns:
      ``(loss, d_logits)`` with ``d_logits`` of shape ``(B, T, K)``, zero at unscored steps.
    """
    log_probs, labels, scored, count = _cross_entropy_parts(logits, labels, seq_lengths)
    classes = log_probs.shape[-1]
    classes_k = jnp.arange(classes, dtype=labels.dtype)[None, None, :]                # (1, 1, K)
    one_hot = (labels[:, :, None] == classes_k).astype(log_probs.dtype)                # (B, T, K)
    picked = jnp.sum(one_hot * log_probs, axis=-1)                                 # (B, T)
    loss = -jnp.sum(jnp.where(scored, picked, 0)) / count
    d_logits = jnp.where(scored[:, :, None], jnp.exp(log_probs) - one_hot, 0) / count
    return loss, d_logits


# ----------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------


class LossPair(NamedTuple):
    """A loss and its hand-written ``value_and_grad``; both share the same signature."""

    loss: Callable[..., jax.Array]
    value_and_grad: Callable[..., tuple[jax.Array, jax.Array]]


LOSSES: dict[str, LossPair] = {
    "mse": LossPair(mse, mse_value_and_grad),
    "cross_entropy": LossPair(cross_entropy, cross_entropy_value_and_grad),
}


def get_loss(name: str) -> LossPair:
    """The ``(loss, value_and_grad)`` pair registered under ``name`` in :data:`LOSSES`.

    Raises:
      ValueError: ``name`` is not a key of :data:`LOSSES`.
    """
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"loss: expected one of {sorted(LOSSES)}, got {name!r}"
        ) from None
