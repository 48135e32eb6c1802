"""``unroll_vjp``: the hand-written backward of ``jrnn.unroll`` for one layer, in the fast form
(``jrnn.scan``) or the per-step reference (``jrnn.bptt.reference``)."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from jrnn import scan
from jrnn._checks import check_choice, check_seq_lengths, check_sequence, check_truncation, fail, shape_of
from jrnn.bptt import reference
from jrnn.cells.base import check_cell
from jrnn.scan import cast_like, cast_tree, compute_dtype, truncation_cuts
from jrnn.unroll import prepare_carry

Array = jax.Array

Form = Literal["fast", "reference"]
FORMS: tuple[str, ...] = ("fast", "reference")
"""The forms of ``unroll_vjp``: the fast driver of ``jrnn.scan`` and the per-step reference."""


def layer_vjp(
    cell, params, xs, carry0, lengths, d_ys, d_carry_T, *, reverse=False, truncation=None, form="fast",
    remat=False,
):  # fmt: skip
    """Time-major, validated: forward then backward of one layer; ``(d_params, d_xs, d_carry0)``.

    Computes in the compute dtype of ``xs`` and ``params``; the cotangents come back in the
    dtypes of ``params``, ``xs`` and ``carry0``.
    """
    dtype = compute_dtype(xs, params)
    p, x, c0 = cast_tree(params, dtype), xs.astype(dtype), cast_tree(carry0, dtype)
    d_ys, d_carry_T = d_ys.astype(dtype), cast_tree(d_carry_T, dtype)
    if form == "reference":
        d_params, d_xs, d_carry0 = reference.layer_vjp(
            cell, p, x, c0, lengths, d_ys, d_carry_T, reverse=reverse, truncation=truncation
        )
    else:
        keep = "carries" if remat else "reserve"
        _, _, residuals = scan.forward(cell, p, x, c0, lengths, reverse=reverse, keep=keep)
        cuts = truncation_cuts(xs.shape[0], truncation, reverse)
        d_params, d_xs, d_carry0 = scan.backward(
            cell, p, x, c0, lengths, residuals, d_ys, d_carry_T, reverse=reverse, cuts=cuts
        )
    return cast_like(d_params, params), d_xs.astype(xs.dtype), cast_like(d_carry0, carry0)


def unroll_vjp(
    cell,
    params,
    xs,
    carry,
    d_ys,
    d_carry_T,
    *,
    seq_lengths=None,
    reverse: bool = False,
    truncation: int | None = None,
    time_major: bool = False,
    form: Form = "fast",
    remat: bool = False,
):
    """The hand-written backward of ``jrnn.unroll``: input cotangents from output cotangents.

    For ``carry_T, ys = unroll(cell, params, xs, carry, seq_lengths=..., reverse=...)`` returns
    ``(d_params, d_xs, d_carry0)``: the cotangents of ``params``, ``xs`` and ``carry`` given those
    of ``ys`` (``d_ys``) and of ``carry_T`` (``d_carry_T``). The forward runs again inside.

    Args:
      cell, params, xs, carry, seq_lengths, reverse, time_major: as for ``jrnn.unroll``
        (``xs (B, T, D)``, ``(T, B, D)`` when time-major, or unbatched ``(T, D)``; ``carry``
        None means zeros).
      d_ys: laid out like ``ys`` (``(B, T, H)``, ...); None means zeros.
      d_carry_T: structured like the carry; None means zeros.
      truncation: None, or ``k`` to cut the gradient through the carry at every k-th step
        boundary (the state still flows forward). The boundaries sit between positions
        ``jk - 1`` and ``jk`` for a forward layer and for a reverse one alike (see
        ``jrnn.bptt.truncation_cuts``): equal to autodiff with ``stop_gradient`` on the carry
        entering those steps. ``d_carry0`` is the gradient into the first chunk.
      form: ``"fast"`` (hoisted GEMMs, ``jrnn.scan``) or ``"reference"`` (per step,
        ``jrnn.bptt.reference``); both give the same numbers.
      remat: the fast form keeps only the per-step carries and recomputes the gate activations
        chunk by chunk (``jrnn.scan``): a fraction of the memory for about 40% more GEMM work.

    Returns:
      ``(d_params, d_xs, d_carry0)`` like ``params``, ``xs`` and the carry.
    """
    check_cell(cell)
    cell.check_params(params)
    check_choice("form", form, FORMS)
    truncation = check_truncation(truncation)
    layout = check_sequence(xs, cell.input_size_of(params), time_major=time_major)
    lengths = check_seq_lengths(seq_lengths, layout.batch_size if layout.batched else None, layout.num_steps)
    dtype = compute_dtype(xs, params)
    carry = prepare_carry(cell, carry, layout.batch_shape, dtype)
    if d_carry_T is None:
        d_carry_T = cell.initial_carry(layout.batch_shape, dtype)
    else:
        d_carry_T = prepare_carry(cell, d_carry_T, layout.batch_shape, dtype, "d_carry_T")
    ys_shape = layout.shape(cell.output_size)
    if d_ys is None:
        d_ys = jnp.zeros(ys_shape, dtype)
    elif shape_of(d_ys) != ys_shape:
        fail("d_ys", f"of the shape of ys, {ys_shape}", shape_of(d_ys))

    d_params, d_xs, d_carry0 = layer_vjp(
        cell, params, layout.to_scan(xs), layout.carry_to_scan(carry), lengths, layout.to_scan(d_ys),
        layout.carry_to_scan(d_carry_T), reverse=reverse, truncation=truncation, form=form, remat=remat,
    )  # fmt: skip
    return d_params, layout.from_scan(d_xs), layout.carry_from_scan(d_carry0)
