"""Sequence losses with masking, and their derivatives written out by hand.

Shapes: ``B`` batch, ``T`` time steps, ``O`` regression outputs, ``K`` classes.

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

from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn._checks import (
    check_array_dtype,
    check_choice,
    check_ndim,
    check_seq_lengths,
    fail,
    is_concrete,
    shape_of,
)

__all__ = [
    "LOSSES",
    "LossName",
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


def _check_preds(argument: str, preds, layout: str) -> jax.Array:
    """``preds``/``logits``: a floating ``(B, T, ·)`` array."""
    preds = jnp.asarray(preds)
    check_ndim(argument, preds, 3, layout)
    check_array_dtype(argument, preds, "floating")
    return preds


def _check_targets(argument: str, targets, every_step: tuple[int, ...], last_step: tuple[int, ...],
                   layouts: tuple[str, str]) -> bool:  # fmt: skip
    """``targets``/``labels`` of shape ``every_step`` or ``last_step``; True for ``every_step``."""
    shape = shape_of(targets)
    if shape not in (every_step, last_step):
        fail(
            argument,
            f"{layouts[0]} = {every_step} to score every valid step or {layouts[1]} = "
            f"{last_step} to score the last valid step only",
            f"shape {shape}",
        )
    return shape == every_step


def _scored_mask(batch: int, steps: int, seq_lengths, every_step: bool) -> jax.Array:
    """The boolean ``(B, T)`` mask ``s_bt`` of scored steps (see the module docstring)."""
    if seq_lengths is None:
        seq_lengths = jnp.full((batch,), steps, dtype=jnp.int32)
    t = jnp.arange(steps, dtype=seq_lengths.dtype)[None, :]             # (1, T)
    lengths = seq_lengths[:, None]                                      # (B, 1)
    if every_step:
        return jnp.broadcast_to(t < lengths, (batch, steps))
    return jnp.broadcast_to(t == lengths - 1, (batch, steps))


def _acc(dtype):
    """The dtype sums of ``dtype`` values are accumulated in: float32 for float16 and bfloat16
    (a float16 sum of squares overflows past 65504, and its count of scored steps stops being
    exact past 2048), else ``dtype`` itself."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype.itemsize < 4 else dtype


def _count(scored: jax.Array, dtype) -> jax.Array:
    """``max(N, 1)`` in the accumulation dtype of ``dtype``: the number of scored steps, guarded
    against 0."""
    acc = _acc(dtype)
    return jnp.maximum(jnp.sum(scored.astype(acc)), jnp.ones((), acc))


def _mean(total_terms: jax.Array, denom: jax.Array, dtype) -> jax.Array:
    """``Σ total_terms / denom``, summed in the accumulation dtype, returned in ``dtype``."""
    return (jnp.sum(total_terms.astype(denom.dtype)) / denom).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Mean squared error
# ----------------------------------------------------------------------------------------------


def _mse_residual(preds, targets, seq_lengths):
    """Validated inputs -> (masked residual ``s_bt (p_bto - y_bto)``, ``O · max(N, 1)``)."""
    preds = _check_preds("preds", preds, "(B, T, O)")
    batch, steps, out = preds.shape
    targets = jnp.asarray(targets)
    check_array_dtype("targets", targets, "real")
    every_step = _check_targets("targets", targets, preds.shape, (batch, out),
                                ("(B, T, O)", "(B, O)"))
    if not every_step:
        targets = jnp.broadcast_to(targets[:, None, :], preds.shape)   # (B, T, O)
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
    return _mean(residual * residual, denom, residual.dtype)


def mse_value_and_grad(preds, targets, seq_lengths=None) -> tuple[jax.Array, jax.Array]:
    r"""``mse`` and its derivative with respect to ``preds``, in closed form.

    .. math::

        \frac{\partial \mathcal{L}}{\partial p_{bto}} = \frac{2}{O N}\, s_{bt}\,(p_{bto} - y_{bto})

    Args:
      preds: ``(B, T, O)`` floating predictions.
      targets: ``(B, T, O)`` or ``(B, O)``, as in :func:`mse`.
      seq_lengths: optional ``(B,)`` integer valid lengths in ``[0, T]``.

    Returns:
      ``(loss, d_preds)`` with ``d_preds`` of shape ``(B, T, O)``, zero at unscored steps.
    """
    residual, denom = _mse_residual(preds, targets, seq_lengths)
    loss = _mean(residual * residual, denom, residual.dtype)
    d_preds = (2 * residual.astype(denom.dtype) / denom).astype(residual.dtype)
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
    logits = _check_preds("logits", logits, "(B, T, K)")
    batch, steps, classes = logits.shape
    labels = jnp.asarray(labels)
    check_array_dtype("labels", labels, "integer", "(class indices)")
    every_step = _check_targets("labels", labels, (batch, steps), (batch,), ("(B, T)", "(B,)"))
    if not every_step:
        labels = jnp.broadcast_to(labels[:, None], (batch, steps))    # (B, T)
    seq_lengths = check_seq_lengths(seq_lengths, batch, steps)
    scored = _scored_mask(batch, steps, seq_lengths, every_step)       # (B, T)
    if is_concrete(labels) and is_concrete(scored):
        used = np.asarray(labels)[np.asarray(scored)]
        if used.size and (used.min() < 0 or used.max() >= classes):
            fail("labels", f"class indices in [0, K) = [0, {classes}) at scored steps",
                 f"values in [{used.min()}, {used.max()}]")
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
    return -_mean(jnp.where(scored, picked, 0), count, log_probs.dtype)


def cross_entropy_value_and_grad(logits, labels, seq_lengths=None) -> tuple[jax.Array, jax.Array]:
    r"""``cross_entropy`` and its derivative with respect to ``logits``, in closed form.

    .. math::

        \frac{\partial \mathcal{L}}{\partial z_{btk}}
            = \frac{1}{N}\, s_{bt} \big(\mathrm{softmax}(z_{bt})_k - [k = y_{bt}]\big)

    Args:
      logits: ``(B, T, K)`` floating unnormalized scores.
      labels: integer class indices ``(B, T)`` or ``(B,)``, as in :func:`cross_entropy`.
      seq_lengths: optional ``(B,)`` integer valid lengths in ``[0, T]``.

    Returns:
      ``(loss, d_logits)`` with ``d_logits`` of shape ``(B, T, K)``, zero at unscored steps.
    """
    log_probs, labels, scored, count = _cross_entropy_parts(logits, labels, seq_lengths)
    classes = log_probs.shape[-1]
    classes_k = jnp.arange(classes, dtype=labels.dtype)[None, None, :]                # (1, 1, K)
    one_hot = (labels[:, :, None] == classes_k).astype(log_probs.dtype)                # (B, T, K)
    picked = jnp.sum(one_hot * log_probs, axis=-1)                                 # (B, T)
    loss = -_mean(jnp.where(scored, picked, 0), count, log_probs.dtype)
    d_logits = jnp.where(scored[:, :, None], jnp.exp(log_probs) - one_hot, 0)
    d_logits = (d_logits.astype(count.dtype) / count).astype(log_probs.dtype)
    return loss, d_logits


# ----------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------


class LossPair(NamedTuple):
    """A loss and its hand-written ``value_and_grad``; both share the same signature."""

    loss: Callable[..., jax.Array]
    value_and_grad: Callable[..., tuple[jax.Array, jax.Array]]


LossName = Literal["mse", "cross_entropy"]
"""The names in :data:`LOSSES`."""

LOSSES: dict[str, LossPair] = {
    "mse": LossPair(mse, mse_value_and_grad),
    "cross_entropy": LossPair(cross_entropy, cross_entropy_value_and_grad),
}
"""The registry: ``name -> LossPair(loss, value_and_grad)``, for ``get_loss`` and training."""


def get_loss(name: LossName) -> LossPair:
    """The ``(loss, value_and_grad)`` pair registered under ``name`` in :data:`LOSSES`.

    Args:
      name: a key of :data:`LOSSES`: ``"mse"`` or ``"cross_entropy"``.

    Returns:
      The :class:`LossPair` ``(loss, value_and_grad)``.

    Raises:
      ValueError: ``name`` is not a key of :data:`LOSSES`.
    """
    return LOSSES[check_choice("loss", name, LOSSES)]
