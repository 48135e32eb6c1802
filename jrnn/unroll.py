"""``unroll``: one recurrent layer over a sequence. It validates and dispatches; the scans
themselves are in ``jrnn.scan``.

With ``seq_lengths`` a step at or past a sequence's length leaves its carry unchanged and outputs
zeros; with ``reverse=True`` the scan runs from the last position down, so each sequence is read
backwards from its own last valid step (PyTorch's packed-sequence semantics) and outputs stay
aligned with input positions.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jrnn._checks import Layout, check_choice, check_int, check_mask, check_seq_lengths, check_sequence, run_steps
from jrnn.cells.base import Cell, check_cell
from jrnn.scan import BACKWARDS, METHODS, Backward, Method, compute_dtype, scan_layer, time_axis_for

Array = jax.Array

__all__ = ["BACKWARDS", "METHODS", "check_options", "prepare_carry", "unroll"]


def check_options(*, backward: Any, unroll: Any, method: Any = "sequential") -> None:
    """``backward`` in ``BACKWARDS``, ``unroll`` a positive int and ``method`` in ``METHODS``."""
    check_choice("backward", backward, BACKWARDS)
    check_int("unroll", unroll)
    check_choice("method", method, METHODS)


def prepare_carry(cell: Cell, carry, batch_shape, dtype, argument: str = "carry"):
    """Zeros when ``carry`` is None; otherwise validate it and cast it to the compute dtype."""
    if carry is None:
        return cell.initial_carry(batch_shape, dtype)
    cell.check_carry(carry, batch_shape, argument)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), carry)


def unroll(
    cell: Cell,
    params,
    xs: Array,
    carry=None,
    *,
    seq_lengths=None,
    mask=None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int = 1,
    remat: bool = False,
    backward: Backward = "autodiff",
    method: Method = "sequential",
):
    """Run ``cell`` over a sequence.

    Args:
      cell: a jrnn cell (``VanillaCell``, ``LSTMCell``, ``GRUCell``, ...).
      params: the cell's params NamedTuple.
      xs: ``(B, T, D)`` (``(T, B, D)`` with ``time_major=True``) or unbatched ``(T, D)``.
      carry: initial carry (zeros when None), batch shape ``(B,)`` (``()`` when unbatched).
      seq_lengths: ``(B,)`` ints; steps ``t >= seq_lengths[b]`` leave the carry unchanged and give
        zero outputs, so ``carry_T`` is each sequence's carry after its last valid step.
      mask: booleans laid out like ``xs`` without its feature axis (``(B, T)``, ``(T, B)``
        time-major, ``(T,)`` unbatched), for gaps and left padding (Keras' semantics): a step
        where it is False keeps the carry and outputs zeros. With ``seq_lengths`` too, a step runs
        where both allow it. ``seq_lengths`` alone is the faster path.
      reverse: run from the last valid step back to the first (outputs stay aligned with inputs);
        with ``mask``, the unmasked steps are read backwards.
      time_major: ``xs`` and ``ys`` are ``(T, B, ·)``.
      unroll: steps per scan iteration (``lax.scan``'s ``unroll``).
      remat: recompute each step in the backward pass instead of storing its intermediates.
      backward: ``"autodiff"`` (JAX) or ``"bptt"`` (the hand-written backward of ``jrnn.scan``,
        a ``jax.custom_vjp``: reverse mode only, so ``jax.jvp``, ``jax.jacfwd`` and
        ``jax.hessian`` need ``"autodiff"``); on a GPU, ``"cudnn"`` (cuDNN's LSTM) or
        ``"pallas"`` (jrnn's fused Pallas kernels), which run the forward pass too
        (``jrnn.kernels``: plain cells, ``seq_lengths`` but no ``mask``, reverse mode only).
      method: ``"sequential"`` (the scan, one step after another), or a parallel-in-time solve of
        the whole trajectory: ``"newton"`` (DEER), ``"quasi_newton"`` (diagonal Jacobians) or
        ``"elk"`` (damped); see ``jrnn.parallel``, whose ``solve`` takes the same arguments plus
        the solver's options and also returns the iteration count and residual. A solve that
        does not converge falls back to the sequential scan. Its gradient is the adjoint of the
        solve; ``backward`` picks how that is solved, and ``unroll`` and ``remat`` do not apply.

    Returns:
      ``(carry_T, ys)`` with ``ys`` laid out like ``xs`` and ``H`` features.
    """
    check_cell(cell)
    check_options(backward=backward, unroll=unroll, method=method)
    cell.check_params(params)
    layout = check_sequence(xs, cell.input_size_of(params), time_major=time_major)
    lengths = check_seq_lengths(seq_lengths, layout.batch_size if layout.batched else None, layout.num_steps)
    steps = run_steps(lengths, check_mask(mask, layout), layout.num_steps)
    if carry is not None:
        carry = prepare_carry(cell, carry, layout.batch_shape, compute_dtype(xs, params))
    return _unroll(
        cell, params, xs, carry, steps,
        layout=layout, reverse=bool(reverse), unroll=int(unroll), remat=bool(remat), backward=backward,
        method=method,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("cell", "layout", "reverse", "unroll", "remat", "backward", "method"))
def _unroll(cell, params, xs, carry, lengths, *, layout: Layout, reverse, unroll, remat, backward, method):
    """``unroll`` after validation, compiled once per spec and shape (also when called eagerly).
    A batch-major sequence runs batch-major where the scan does so (``runs_batch_major``)."""
    ax = time_axis_for(layout, cell.hidden_size, backward, method)
    xs = xs if ax else layout.to_scan(xs)  # (T, B, D), or (B, T, D) for ax = 1
    if carry is None:
        carry = cell.initial_carry((layout.batch_size,), compute_dtype(xs, params))
    else:
        carry = layout.carry_to_scan(carry)
    carry_T, ys = scan_layer(
        cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll, remat=remat, backward=backward,
        method=method, time_axis=ax,
    )
    return layout.carry_from_scan(carry_T), ys if ax else layout.from_scan(ys)
