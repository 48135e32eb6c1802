"""One layer: ``unroll_vjp`` (the hand backward of ``jrnn.unroll``) and ``scan_layer``, the
``jax.custom_vjp`` that ``unroll(..., backward="bptt")`` and ``RNN.apply(..., backward="bptt")``
call, so that JAX differentiates anything built on them with the hand-written fast backward.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jrnn.bptt import fast, steps
from jrnn.bptt.common import check_truncation, tree_cast_like, truncation_cuts
from jrnn.unroll import check_cell, check_seq_lengths, check_sequence, compute_dtype, prepare_carry

Array = jax.Array

FORMS = ("fast", "reference")


def _cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)


def layer_vjp(
    cell, params, xs, carry0, lengths, d_ys, d_carry_T, *, reverse=False, truncation=None, form="fast",
    remat=False,
):  # fmt: skip
    """Time-major, validated: forward then backward of one layer; ``(d_params, d_xs, d_carry0)``.

    Computes in the compute dtype of ``xs`` and ``params``; the cotangents come back in the
    dtypes of ``params``, ``xs`` and ``carry0``.
    """
    dtype = compute_dtype(xs, params)
    p, x, c0 = _cast(params, dtype), xs.astype(dtype), _cast(carry0, dtype)
    d_ys, d_carry_T = d_ys.astype(dtype), _cast(d_carry_T, dtype)
    if form == "reference":
        d_params, d_xs, d_carry0 = steps.layer_vjp(
            cell, p, x, c0, lengths, d_ys, d_carry_T, reverse=reverse, truncation=truncation
        )
    else:
        keep = "carries" if remat else "reserve"
        _, _, residuals = fast.forward(cell, p, x, c0, lengths, reverse=reverse, keep=keep)
        cuts = truncation_cuts(xs.shape[0], truncation, reverse)
        d_params, d_xs, d_carry0 = fast.backward(
            cell, p, x, c0, lengths, residuals, d_ys, d_carry_T, reverse=reverse, cuts=cuts
        )
    return tree_cast_like(d_params, params), d_xs.astype(xs.dtype), tree_cast_like(d_carry0, carry0)


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
    form: str = "fast",
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
      form: ``"fast"`` (hoisted GEMMs, ``jrnn.bptt.fast``) or ``"reference"`` (per step,
        ``jrnn.bptt.steps``); both give the same numbers.
      remat: the fast form keeps only the per-step carries and recomputes the gate activations
        chunk by chunk (``jrnn.bptt.fast``): a fraction of the memory for about 40% more GEMM work.

    Returns:
      ``(d_params, d_xs, d_carry0)`` like ``params``, ``xs`` and the carry.
    """
    check_cell(cell)
    cell.check_params(params)
    if form not in FORMS:
        raise ValueError(f"form must be one of {list(FORMS)}, got {form!r}")
    truncation = check_truncation(truncation)
    ndim = check_sequence(xs, cell.input_size_of(params), time_major=time_major)
    batched = ndim == 3
    layout = "(T, B, H)" if time_major else "(B, T, H)"
    if not batched:
        xs, layout = xs[:, None, :], "(T, H)"
    elif not time_major:
        xs = jnp.swapaxes(xs, 0, 1)  # (T, B, D)
    T, B = xs.shape[:2]
    lengths = check_seq_lengths(seq_lengths, B if batched else None, T)
    dtype = compute_dtype(xs, params)
    batch_shape = (B,) if batched else ()
    carry = prepare_carry(cell, carry, batch_shape, dtype)
    if d_carry_T is None:
        d_carry_T = cell.initial_carry(batch_shape, dtype)
    else:
        d_carry_T = prepare_carry(cell, d_carry_T, batch_shape, dtype, "d_carry_T")
    ys_shape = (T, B, cell.hidden_size) if (batched and time_major) else (B, T, cell.hidden_size)
    ys_shape = ys_shape if batched else (T, cell.hidden_size)
    if d_ys is None:
        d_ys = jnp.zeros(ys_shape, dtype)
    elif getattr(d_ys, "shape", None) is None or tuple(d_ys.shape) != ys_shape:
        got = getattr(d_ys, "shape", None)
        raise ValueError(f"d_ys must have the shape of ys, {layout} = {ys_shape}, got {got}")
    if not batched:
        d_ys = d_ys[:, None, :]
        carry, d_carry_T = jax.tree_util.tree_map(lambda a: a[None], (carry, d_carry_T))
    elif not time_major:
        d_ys = jnp.swapaxes(d_ys, 0, 1)

    d_params, d_xs, d_carry0 = layer_vjp(
        cell, params, xs, carry, lengths, d_ys, d_carry_T, reverse=reverse, truncation=truncation, form=form,
        remat=remat,
    )  # fmt: skip
    if not batched:
        return d_params, d_xs[:, 0], jax.tree_util.tree_map(lambda a: a[0], d_carry0)
    if not time_major:
        d_xs = jnp.swapaxes(d_xs, 0, 1)
    return d_params, d_xs, d_carry0


# --------------------------------------------------------------------------------------------
# The custom rule behind backward="bptt"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5, 6, 7))
def _scan_layer(cell, params, xs, carry, lengths, reverse, unroll, remat):
    kw = dict(reverse=reverse, unroll=unroll, keep="none")
    carry_T, ys, _ = fast.forward(cell, params, xs, carry, lengths, **kw)
    return carry_T, ys


def _scan_layer_fwd(cell, params, xs, carry, lengths, reverse, unroll, remat):
    keep = "carries" if remat else "reserve"
    kw = dict(reverse=reverse, unroll=unroll, keep=keep)
    carry_T, ys, kept = fast.forward(cell, params, xs, carry, lengths, **kw)
    return (carry_T, ys), (params, xs, carry, lengths, kept)


def _scan_layer_bwd(cell, reverse, unroll, remat, residuals, cotangents):
    params, xs, carry, lengths, kept = residuals
    d_carry_T, d_ys = cotangents
    d_params, d_xs, d_carry0 = fast.backward(
        cell, params, xs, carry, lengths, kept, d_ys, d_carry_T, reverse=reverse, unroll=unroll
    )
    # lengths are integers: no cotangent (JAX hands back float0 zeros)
    return tree_cast_like(d_params, params), d_xs.astype(xs.dtype), tree_cast_like(d_carry0, carry), None


_scan_layer.defvjp(_scan_layer_fwd, _scan_layer_bwd)


def scan_layer(cell, params, xs, carry, lengths, *, reverse=False, unroll=1, remat=False):
    """One layer, time-major and validated (``xs (T, B, D)``, ``lengths (B,) int32`` or None,
    ``carry`` in the compute dtype), differentiated by the hand-written fast backward.

    Returns ``(carry_T, ys (T, B, H))``, the same values as ``jrnn.unroll.scan_autodiff``.
    Between the forward and the backward it keeps the gate activations and the per-step carries
    (``jrnn.bptt.fast``); with ``remat=True`` only the carries, and the backward recomputes the
    activations chunk by chunk. ``unroll`` is ``lax.scan``'s, in both loops.
    """
    dtype = compute_dtype(xs, params)
    params = _cast(params, dtype) if _needs_cast(params, dtype) else params
    xs = xs.astype(dtype)
    return _scan_layer(cell, params, xs, carry, lengths, bool(reverse), int(unroll), bool(remat))


def _needs_cast(params, dtype) -> bool:
    return any(a.dtype != dtype for a in jax.tree_util.tree_leaves(params))
