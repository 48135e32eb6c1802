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

from jrnn._checks import Layout, check_choice, check_int, check_seq_lengths, check_sequence
from jrnn.cells.base import Cell, check_cell
from jrnn.scan import BACKWARDS, Backward, compute_dtype, scan_layer

Array = jax.Array

__all__ = ["BACKWARDS", "check_options", "prepare_carry", "unroll"]


def check_options(*, backward: Any, unroll: Any) -> None:
    """``backward`` in ``BACKWARDS`` and ``unroll`` a positive int."""
    check_choice("backward", backward, BACKWARDS)
    check_int("unroll", unroll)


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
    reverse: bool = False,
    time_major: bool = False,
    unroll: int = 1,
    remat: bool = False,
    backward: Backward = "autodiff",
):
    """Run ``cell`` over a sequence.

    Args:
      cell: a jrnn cell (``VanillaCell``, ``LSTMCell``, ``GRUCell``, ...).
      params: the cell's params NamedTuple.
      xs: ``(B, T, D)`` (``(T, B, D)`` with ``time_major=True``) or unbatched ``(T, D)``.
      carry: initial carry (zeros when None), batch shape ``(B,)`` (``()`` when unbatched).
      seq_lengths: ``(B,)`` ints; steps ``t >= seq_lengths[b]`` leave the carry unchanged and give
        zero outputs, so ``carry_T`` is each sequence's carry after its last valid step.
      reverse: run from the last valid step back to the first (outputs stay aligned with inputs).
      time_major: ``xs`` and ``ys`` are ``(T, B, ·)``.
      unroll: steps per scan iteration (``lax.scan``'s ``unroll``).
      remat: recompute each step in the backward pass instead of storing its intermediates.
      backward: ``"autodiff"`` (JAX) or ``"bptt"`` (the hand-written backward of ``jrnn.scan``).

    Returns:
      ``(carry_T, ys)`` with ``ys`` laid out like ``xs`` and ``H`` features.
    """
    check_cell(cell)
    check_options(backward=backward, unroll=unroll)
    cell.check_params(params)
    layout = check_sequence(xs, cell.input_size_of(params), time_major=time_major)
    lengths = check_seq_lengths(seq_lengths, layout.batch_size if layout.batched else None, layout.num_steps)
    if carry is not None:
        carry = prepare_carry(cell, carry, layout.batch_shape, compute_dtype(xs, params))
    return _unroll(
        cell, params, xs, carry, lengths,
        layout=layout, reverse=bool(reverse), unroll=int(unroll), remat=bool(remat), backward=backward,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("cell", "layout", "reverse", "unroll", "remat", "backward"))
def _unroll(cell, params, xs, carry, lengths, *, layout: Layout, reverse, unroll, remat, backward):
    """``unroll`` after validation, compiled once per spec and shape (also when called eagerly)."""
    xs = layout.to_scan(xs)  # (T, B, D)
    if carry is None:
        carry = cell.initial_carry((xs.shape[1],), compute_dtype(xs, params))
    else:
        carry = layout.carry_to_scan(carry)
    carry_T, ys = scan_layer(
        cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll, remat=remat, backward=backward
    )
    return layout.carry_from_scan(carry_T), layout.from_scan(ys)
