"""Small pieces shared by the per-step reference and the fast form: masks, truncation cuts,
sums over the batch, and the carry that entered each step.

Everything here is time-major: ``(T, B, ·)`` sequences and ``(T, B)`` masks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def check_truncation(truncation) -> int | None:
    """``None`` (full BPTT) or a positive int ``k``; anything else is a ``ValueError``."""
    if truncation is None:
        return None
    if isinstance(truncation, bool) or not isinstance(truncation, (int, np.integer)) or truncation < 1:
        raise ValueError(f"truncation must be None or a positive int (steps per chunk), got {truncation!r}")
    return int(truncation)


def truncation_cuts(num_steps: int, truncation: int | None, reverse: bool = False) -> np.ndarray | None:
    """``(T,)`` booleans: True where the gradient into the carry *entering* step t is cut.

    The sequence is split into chunks of ``truncation`` positions, ``[0, k), [k, 2k), ...``, and no
    gradient crosses a chunk boundary through the carry, whatever the direction:

    - forward layer (steps processed 0, 1, ..., T-1): the carry entering step ``t`` is cut when
      ``t`` is a positive multiple of ``k`` (between positions ``jk - 1`` and ``jk``);
    - reverse layer (steps processed T-1, ..., 0): the carry entering step ``t`` comes from step
      ``t + 1`` and is cut when ``t + 1`` is a multiple of ``k`` below ``T`` (the same boundaries).

    So in processing order a reverse layer's first chunk holds ``T mod k`` steps (``k`` when ``k``
    divides ``T``), and both directions of a bidirectional layer share one chunking of positions.
    The initial carry is never cut: ``d_carry0`` is the gradient into the first chunk.
    """
    if truncation is None:
        return None
    t = np.arange(num_steps)
    if reverse:
        return ((t + 1) % truncation == 0) & (t < num_steps - 1)
    return (t % truncation == 0) & (t > 0)


def valid_steps(lengths: Array | None, num_steps: int) -> Array | None:
    """``(T, B)`` booleans, True where step t lies inside sequence b; None without lengths."""
    if lengths is None:
        return None
    return jnp.arange(num_steps)[:, None] < lengths[None, :]


def batch_sum(a: Array) -> Array:
    """Sum over every leading (batch or time) axis: ``(..., n) -> (n,)``."""
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


def outer_sum(a: Array, b: Array) -> Array:
    """``Σ a_i b_j`` over every leading axis: ``(..., m), (..., n) -> (m, n)``; one GEMM."""
    return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])


def entering(states: Array, first: Array, valid: Array | None, reverse: bool) -> Array:
    """The carry that entered each step, from the per-step carries after it.

    ``states (T, B, H)`` holds the carry after each step, zero at padded steps; ``first (B, H)``
    is the initial carry. The step processed before step t is ``t - 1`` (``t + 1`` when
    ``reverse``); when that step is padded (or t is the first processed) the carry entering t is
    still the initial carry, since padded steps leave the carry unchanged and the valid steps of
    a sequence are processed first (forward) or come right after its padding (reverse).
    """
    if reverse:
        shifted = jnp.concatenate([states[1:], first[None]], axis=0)
    else:
        shifted = jnp.concatenate([first[None], states[:-1]], axis=0)
    if valid is None:
        return shifted
    false = jnp.zeros_like(valid[:1])
    valid_before = jnp.concatenate([valid[1:], false]) if reverse else jnp.concatenate([false, valid[:-1]])
    return jnp.where(valid_before[..., None], shifted, first[None])


def tree_where(m: Array, a, b):
    """``where(m, a, b)`` leaf by leaf; ``m`` is ``(B, 1)``."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(m, x, y), a, b)


def tree_zeros_like(tree):
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def tree_cast_like(tree, like):
    """Cast every leaf of ``tree`` to the dtype of the matching leaf of ``like``."""
    return jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, jnp.result_type(b)), tree, like)
