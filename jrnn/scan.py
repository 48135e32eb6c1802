"""Every scan of one recurrent layer over a sequence, for any cell (through the ``Cell`` interface).

Everything here is already validated and time-major: ``xs (T, B, D)``, ``lengths (B,) int32`` or
None, carries ``(B, ·)`` per leaf in the compute dtype; except that the hand-written backward
also runs batch-major sequences ``(B, T, ·)`` as they are (``time_axis=1``: every sequence-long
array batch-major, masks still ``(T, B)``), which ``RNN.apply`` and ``unroll`` use from
``BATCH_MAJOR_MIN_ELEMENTS`` on (``runs_batch_major``). Legend: ``T`` steps, ``B`` batch, ``D``
input features, ``H`` hidden units, ``G`` gate width.

- ``scan_autodiff``: the plain scan of ``cell.step``, differentiated by JAX.
- ``forward`` / ``backward``: the fast hand-written backward (the shape of cuDNN's and oneDNN's RNN
  kernels), cell-agnostic drivers around ``cell.forward_step``, ``cell.backward_step`` and
  ``cell.param_grads``.
- ``scan_bptt``: the ``jax.custom_vjp`` of one layer whose backward rule is ``backward``, which
  ``unroll(..., backward="bptt")`` and ``RNN.apply(..., backward="bptt")`` run.
- ``scan_layer``: the dispatch on ``backward``.

The fast forward projects the inputs of every step with one GEMM before the loop
(``xs @ w_x``, ``(T, B, G)``; the bias joins in the loop, which saves a second buffer); the loop
does the recurrent product and the gate arithmetic, and writes each step's residuals (the gate
activations: LSTM ``[i f g o]``, GRU ``[r z n]`` and ``hp_n``) back over that step's row of the
projection, in place (the projection of step t is dead once step t has run), so they cost no
memory beyond it (the *reserve*, as cuDNN calls it). It also emits the carry after each step
(zero at padded steps). The vanilla cell has no residuals: its slope comes from its output, and
its carries are written over the spent rows of the projection instead.

The fast backward is a reverse loop whose state is ``d_carry``; per step it calls the cell's step
backward (elementwise gate derivatives and one ``(B, G) @ (G, H)`` product into the previous
carry) and writes the step's pre-activation gradients over the step's row of the reserve (the
vanilla cell: over the step's spent row of ``d_ys``). After
the loop the weight gradients ``Σ_t x_tᵀ d_a_t``, ``Σ_t h_{t-1}ᵀ d_a_t`` and the input gradient
are single GEMMs over ``T·B`` rows. With ``remat`` only the carries are kept, and the backward
recomputes the residuals chunk by chunk (two GEMMs per chunk) just before its loop reaches them.

On a CPU, both loops of a plain LSTM or GRU run natively (``jrnn.kernels.native``: C++ through
XLA's FFI, the same reserve, carries and pre-activation gradients), when nothing they lack is asked
for: no mask, truncation or recurrent dropout, float32 or float64 (``native.applies``).
``_loop_forward`` and ``_scan_reverse`` are the ``lax.scan`` loops they replace, and the reference
they are tested on.

Dropout inside a layer (``RNN(input_dropout=, recurrent_dropout=)``) comes as a ``LayerDropout``
of two multipliers, the same at every step: ``x (B, D)`` scales the inputs once, before the one
projection GEMM (exact, since the mask does not change over time), and ``h (B, R)`` is the cell's
``h_scale`` (``jrnn.cells.base``), passed to every ``forward_step`` and ``backward_step``. The
backward scales the input gradient by ``x`` and gives ``param_grads`` the inputs and the entering
``h`` as the products saw them. Without dropout (None) no step does any extra work.

Memory, in units of one ``(T, B, H)`` array, for the LSTM: the reserve 4, the carries 2, the
materialized ``h_{t-1}`` 1, plus the incoming ``d_ys``; with ``remat`` the carries 2 plus one
chunk. Autodiff of the same scan keeps about 3x more (``benchmarks/bptt_memory.py``).
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import parallel
from jrnn._checks import fail
from jrnn.cells.base import Cell, add_bias
from jrnn.cells.gru import GRUCell
from jrnn.kernels import KERNELS, native
from jrnn.parallel import METHODS, Method

Array = jax.Array

Backward = Literal["autodiff", "bptt", "cudnn", "pallas"]
BACKWARDS: tuple[str, ...] = ("autodiff", "bptt", *KERNELS)
"""The backward passes of ``backward=``: JAX's autodiff of the scan, the hand-written BPTT, or a
fused GPU layer that runs forward and backward itself (``jrnn.kernels``: cuDNN's LSTM, or jrnn's
Pallas kernels)."""

HOIST_MAX_BYTES = 1 << 20
"""``scan_autodiff`` hoists the input projection out of the loop only while the projected
sequence ``(T, B, G)`` takes at most this many bytes (about a core's L2 cache). Measured on a
2-core CPU (``benchmarks/NOTES.md``, section 8): projecting inside the loop made an LSTM's
training gradient 1.2-2.2x faster and its inference 1.8-1.9x faster at (B, T, D, H) =
(32, 100, 32, 128), (64, 200, 64, 256), (128, 50, 128, 512); at tiny latency-bound steps such
as (1, 1000, 1, 32), which stay hoisted, the two were equal."""

BATCH_MAJOR_MIN_ELEMENTS = 1 << 20
"""A batch-major network runs batch-major from this many elements ``B·T·H`` of a layer's output
(``runs_batch_major``). Measured on a 2-core CPU (``benchmarks/NOTES.md``, section 14): at
(B, T, D, H) = (64, 200, 64, 256) and (128, 50, 128, 512) (3.3 M elements) the vanilla cell's
training gradient took 0.84-0.89x its time-major time, the LSTM's and GRU's 0.94-0.99x; at
(32, 100, 32, 128) (0.4 M) the strided rows made the LSTM's and GRU's loops 2-3 % slower, and the
transposes they save are small there."""

REMAT_CHUNK_ELEMENTS = 1 << 20
"""Under ``remat`` the backward recomputes the residuals chunk by chunk; a chunk holds at most
about this many ``(steps, B, G)`` elements (4 MiB in float32), enough for efficient GEMMs, and at
most an eighth of the sequence, so that a few chunks' temporaries stay well below the reserve
they replace."""


def _row(a: Array, t, ax: int = 0) -> Array:
    """Row ``t`` of ``a`` along its time axis ``ax`` (0: time-major ``(T, B, ·)``, 1: batch-major
    ``(B, T, ·)``), without that axis."""
    return jax.lax.dynamic_index_in_dim(a, t, ax, keepdims=False)


def _put(a: Array, row: Array, t, ax: int = 0) -> Array:
    """``a`` with row ``t`` along its time axis ``ax`` replaced by ``row``."""
    return jax.lax.dynamic_update_index_in_dim(a, row, t, ax)


def _steps(a: Array, s, n: int, ax: int = 0) -> Array:
    """Steps ``[s, s + n)`` of ``a`` along its time axis ``ax``."""
    return jax.lax.dynamic_slice_in_dim(a, s, n, axis=ax)


def _drop_axis(shape: tuple, ax: int) -> tuple:
    """``shape`` without its time axis ``ax``: the shape of one step's row."""
    return shape[:ax] + shape[ax + 1 :]


def _with_steps(shape: tuple, n: int, ax: int) -> tuple:
    """A row's ``shape`` with a time axis of ``n`` steps inserted at ``ax``."""
    return shape[:ax] + (n,) + shape[ax:]


# --------------------------------------------------------------------------------------------
# Small shared pieces


class LayerDropout(NamedTuple):
    """The dropout multipliers (mask divided by the keep probability) of one direction of one
    layer, the same at every step; either may be None (that dropout is off)."""

    x: Array | None  # (B, D): multiplies every step's input x_t
    h: Array | None  # (B, R): multiplies h_{t-1} where it enters the recurrent products (h_scale)


def _scales(dropout: LayerDropout | None) -> tuple:
    """``(x_scale, h_scale)``, each None when off."""
    return (None, None) if dropout is None else (dropout.x, dropout.h)


def _times(a: Array, scale: Array | None, ax: int = 0) -> Array:
    """``a (T, B, ·)`` (``(B, T, ·)`` for ``ax = 1``) times a per-sequence ``scale (B, ·)``, the
    same at every step (None: ``a``)."""
    return a if scale is None else a * jnp.expand_dims(scale, ax)


def compute_dtype(xs, params):
    """The dtype a layer computes in: that of ``xs`` promoted with every parameter's."""
    return jnp.result_type(xs.dtype, *(a.dtype for a in jax.tree_util.tree_leaves(params)))


def cast_tree(tree, dtype):
    """Every leaf of ``tree`` as an array of ``dtype``."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)


def cast_like(tree, like):
    """Cast every leaf of ``tree`` to the dtype of the matching leaf of ``like``."""
    return jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, jnp.result_type(b)), tree, like)


def tree_where(m: Array, a, b):
    """``where(m, a, b)`` leaf by leaf; ``m`` broadcasts against each leaf (e.g. ``(B, 1)``)."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(m, x, y), a, b)


def tree_zeros_like(tree):
    """Zeros shaped like every leaf of ``tree``."""
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def step_mask(steps: Array | None, num_steps: int) -> Array | None:
    """``(T, B)`` booleans, True where step t of sequence b is run; None when every step is.

    ``steps`` is what the scans take: None, lengths ``(B,)`` ints (step t runs when
    ``t < lengths[b]``, the fast path) or a ``(T, B)`` boolean mask (any pattern of steps).
    """
    if steps is None:
        return None
    if steps.ndim == 2:
        return steps
    return jnp.arange(num_steps)[:, None] < steps[None, :]


def zero_skipped(xs: Array, steps: Array | None, ax: int = 0) -> Array:
    """``xs (T, B, D)`` with the steps that do not run (``step_mask``) set to zero. Their outputs
    are discarded anyway, but a NaN or an infinity there would still reach the weight gradients
    through the input projection (``0·NaN``); padding is never read, as PyTorch's packed
    sequences never read it. ``ax = 1``: ``xs`` is batch-major ``(B, T, D)``."""
    valid = step_mask(steps, xs.shape[ax])
    if valid is None:
        return xs
    return jnp.where(_in_layout(valid, ax)[..., None], xs, jnp.zeros_like(xs))


def _in_layout(m: Array, ax: int) -> Array:
    """A time-major ``(T, B, ...)`` mask laid out like the arrays of time axis ``ax``."""
    return m if ax == 0 else jnp.swapaxes(m, 0, 1)


def is_general_mask(steps) -> bool:
    """Whether ``steps`` is a ``(T, B)`` mask (gaps allowed) rather than lengths."""
    return steps is not None and steps.ndim == 2


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


def _valid_before(valid: Array | None, reverse: bool) -> Array | None:
    """``(T, B)``: whether the step processed before step t lies inside its sequence."""
    if valid is None:
        return None
    false = jnp.zeros_like(valid[:1])
    return jnp.concatenate([valid[1:], false]) if reverse else jnp.concatenate([false, valid[:-1]])


def entering(states: Array, first: Array, valid: Array | None, reverse: bool, ax: int = 0) -> Array:
    """The carry that entered each step, from the per-step carries after it.

    ``states (T, B, H)`` holds the carry after each step, zero at padded steps; ``first (B, H)``
    is the initial carry. The step processed before step t is ``t - 1`` (``t + 1`` when
    ``reverse``); when that step is padded (or t is the first processed) the carry entering t is
    still the initial carry, since padded steps leave the carry unchanged and the valid steps of
    a sequence are processed first (forward) or come right after its padding (reverse).
    ``ax = 1``: ``states`` is batch-major ``(B, T, H)`` (``valid`` stays ``(T, B)``).
    """
    T = states.shape[ax]
    first = jnp.expand_dims(first, ax)
    if reverse:
        shifted = jnp.concatenate([jax.lax.slice_in_dim(states, 1, T, axis=ax), first], axis=ax)
    else:
        shifted = jnp.concatenate([first, jax.lax.slice_in_dim(states, 0, T - 1, axis=ax)], axis=ax)
    if valid is None:
        return shifted
    return jnp.where(_in_layout(_valid_before(valid, reverse), ax)[..., None], shifted, first)


def _entering_source(valid: Array, reverse: bool) -> Array:
    """``(T, B)`` ints: the step whose carry enters step t under a general mask, the last run step
    before t in processing order, or ``-1`` / ``T`` (forward / reverse) for the initial carry."""
    T = valid.shape[0]
    t = jnp.broadcast_to(jnp.arange(T)[:, None], valid.shape)
    if reverse:
        first_at_or_after = jax.lax.cummin(jnp.where(valid, t, T), axis=0, reverse=True)
        return jnp.concatenate([first_at_or_after[1:], jnp.full_like(t[:1], T)])
    last_at_or_before = jax.lax.cummax(jnp.where(valid, t, -1), axis=0)
    return jnp.concatenate([jnp.full_like(t[:1], -1), last_at_or_before[:-1]])


def _gather_entering(states: Array, first: Array, source: Array, ax: int = 0) -> Array:
    """The carries entering the steps of ``source (n, B)`` (``_entering_source``), read from the
    stored carries ``states (T, B, H)``: ``(n, B, H)`` (batch-major for ``ax = 1``)."""
    T = states.shape[ax]
    source = _in_layout(source, ax)
    rows = jnp.take_along_axis(states, jnp.clip(source, 0, T - 1)[..., None], axis=ax)
    has = (source >= 0) & (source <= T - 1)
    return jnp.where(has[..., None], rows, jnp.expand_dims(first, ax))


def _entering_row(states, first, t, before_t, reverse, ax=0):
    """The carry entering step t, read from the stored carries (see ``entering``)."""
    T = states.shape[ax]
    row = _row(states, jnp.clip(t + 1 if reverse else t - 1, 0, T - 1), ax)
    has = (t < T - 1) if reverse else (t > 0)
    if before_t is not None:
        has = jnp.logical_and(has, before_t)[:, None]
    return jnp.where(has, row, first)


def _entering_rows(states, first, s, n, before, reverse, ax=0):
    """The carries entering steps ``[s, s + n)``, gathered from the stored carries."""
    T = states.shape[ax]
    idx = s + jnp.arange(n) + (1 if reverse else -1)
    rows = jnp.take(states, jnp.clip(idx, 0, T - 1), axis=ax)  # (n, B, H), (B, n, H) for ax = 1
    has = ((idx >= 0) & (idx <= T - 1))[:, None]
    if before is not None:
        has = has & _steps(before, s, n)
    return jnp.where(_in_layout(has, ax)[..., None], rows, jnp.expand_dims(first, ax))


def _masked(m, new, old):
    """A padded step keeps the carry (``new`` where ``m``, else ``old``) and outputs zeros."""
    carry = tree_where(m, new, old)
    return carry, jax.tree_util.tree_map(lambda a: jnp.where(m, a, jnp.zeros_like(a)), carry)


def _rows(bufs, t, ax=0):
    return tuple(_row(b, t, ax) for b in bufs)


def _write_then_read(bufs, rows, t, t_next, ax=0):
    """Write ``rows`` over row t of ``bufs`` (tuples), then read row ``t_next`` of the result.

    Reading the next step's row *after* the write makes the write the only use of the old
    buffer, so XLA updates it in place; reading row t in the step itself would let XLA fuse
    the read into consumers scheduled after the write, and it would copy the whole buffer at
    every step to keep them correct.
    """
    bufs = tuple(_put(b, r, t, ax) for b, r in zip(bufs, rows))
    return bufs, _rows(bufs, jnp.clip(t_next, 0, bufs[0].shape[ax] - 1), ax)


def _next(reverse):
    """The step the forward loop visits after step t."""
    return (lambda t: t - 1) if reverse else (lambda t: t + 1)


def _against(reverse):
    """The step the reverse loop visits after step t."""
    return (lambda t: t + 1) if reverse else (lambda t: t - 1)


# --------------------------------------------------------------------------------------------
# The autodiff scan


def scan_autodiff(cell: Cell, params, xs: Array, carry, lengths, *, reverse=False, unroll=1, remat=False,
                  dropout: LayerDropout | None = None):  # fmt: skip
    """The scan of ``cell.step``; returns ``(carry_T, ys (T, B, H))``, differentiated by JAX.

    A short sequence gets the input projection of every step as one GEMM before the loop; a longer
    one (past ``HOIST_MAX_BYTES``) projects each step's input inside the loop instead. With
    ``lengths`` a padded step leaves its carry unchanged and outputs zeros. ``dropout`` scales the
    inputs and the recurrent ``h`` (``LayerDropout``).
    """
    T, B = xs.shape[:2]
    x_scale, h_scale = _scales(dropout)
    xs = _times(xs, x_scale)  # input dropout: one mask per sequence
    if T * B * cell.gate_size * jnp.dtype(xs.dtype).itemsize <= HOIST_MAX_BYTES:
        xs = cell.project_inputs(params, xs)  # (T, B, G): one GEMM for all steps

        def project(x_t):
            return x_t

    else:

        def project(x_t):
            return cell.project_inputs(params, x_t)  # (B, G), inside the loop

    if lengths is None:

        def body(carry, x_t):
            return cell.step(params, carry, project(x_t), h_scale)

        seq = xs
    else:

        def body(carry, inputs):
            x_t, m_t = inputs
            new, y = cell.step(params, carry, project(x_t), h_scale)
            m = m_t[:, None]
            new = tree_where(m, new, carry)
            return new, jnp.where(m, y, jnp.zeros_like(y))

        seq = (xs, step_mask(lengths, T))

    if remat:
        body = jax.checkpoint(body)
    return jax.lax.scan(body, carry, seq, reverse=reverse, unroll=unroll)


# --------------------------------------------------------------------------------------------
# The fast hand-written backward: forward


class Residuals(NamedTuple):
    """What the forward keeps for the backward: ``states`` (the carry after each step, zero at
    padded steps) and ``reserve`` (the per-step residuals, or None when they are recomputed)."""

    states: Any
    reserve: Any


def _reserve_layout(cell, params, carry0, xw, ax=0):
    """``(treedef, widths, overlay)`` of a step's residuals: their tree, each leaf's last-axis
    width, and whether the first one overwrites the projection (same width ``G``). ``xw`` is the
    projection (or its shape), time axis ``ax``."""
    shapes = jax.eval_shape(
        lambda p, c, x: cell.forward_step(p, c, add_bias(x, cell.input_bias(p)))[1],
        params, carry0, jax.ShapeDtypeStruct(_drop_axis(xw.shape, ax), xw.dtype),
    )  # fmt: skip
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    widths = tuple(leaf.shape[-1] for leaf in leaves)
    return treedef, widths, bool(widths) and widths[0] == xw.shape[-1]


def has_residuals(cell: Cell, params, xs: Array, carry0, ax: int = 0) -> bool:
    """Whether the cell's step keeps residuals (so ``remat`` has something to recompute)."""
    xw = jax.eval_shape(lambda x, w: x @ w, xs, params.w_x)  # its shape only: no product traced
    return bool(_reserve_layout(cell, params, carry0, xw, ax)[1])


def _run_forward(cell, params, xs, carry0, m, reverse, unroll, h_scale=None, ax=0):
    """The forward loop over ``xs (n, B, D)`` (``(B, n, D)`` for ``ax = 1``; already scaled by input
    dropout); ``(carry_T, states, reserve)``, ``reserve`` None for a cell without residuals. The
    stored carries and the reserve are laid out like ``xs``."""
    xw = xs @ params.w_x  # (n, B, G): one GEMM for all steps; the bias joins in the loop
    loops = lambda xw: _loop_forward(cell, params, xw, carry0, m, reverse, unroll, h_scale, ax)  # noqa: E731
    if m is None and h_scale is None and native.applies(cell, xw.dtype):
        return native.run_on_cpu(lambda xw: _native_forward(cell, params, xw, carry0, reverse, ax), loops, xw)
    return loops(xw)


def _native_forward(cell, params, xw, carry0, reverse, ax):
    """``_loop_forward`` of a plain LSTM or GRU by the native loop (``jrnn.kernels.native``)."""
    if isinstance(cell, GRUCell):
        b_h = jnp.zeros_like(params.b_x) if params.b_h is None else params.b_h
        rzn, hp_n, hs, h_T = native.gru_forward(xw, params.b_x, b_h, params.w_h, carry0.astype(xw.dtype),
                                                reverse=reverse, time_axis=ax)  # fmt: skip
        return h_T, hs, (rzn, hp_n)
    h0, c0 = (a.astype(xw.dtype) for a in carry0)
    gates, hs, cs, h_T, c_T = native.lstm_forward(xw, params.b, params.w_h, h0, c0, reverse=reverse, time_axis=ax)
    return type(carry0)(h_T, c_T), type(carry0)(hs, cs), gates


def _loop_forward(cell, params, xw, carry0, m, reverse, unroll, h_scale=None, ax=0):
    """The forward loop of ``_run_forward`` over the input projection ``xw (n, B, G)``."""
    n = xw.shape[ax]
    bias = cell.input_bias(params)
    treedef, widths, overlay = _reserve_layout(cell, params, carry0, xw, ax)
    carry_leaves, carry_def = jax.tree_util.tree_flatten(carry0)
    t_next = _next(reverse)
    first = n - 1 if reverse else 0

    def store(out):
        """The carries of one step, as the rows to write into ``states``."""
        return tuple(jax.tree_util.tree_leaves(out))

    if not widths and len(carry_leaves) == 1 and carry_leaves[0].shape == _drop_axis(xw.shape, ax) \
            and carry_leaves[0].dtype == xw.dtype:  # fmt: skip
        # no residuals, and the carry has the projection's width (the vanilla cell): each step's
        # carry is written over its spent row of the projection, which becomes the stored carries

        def step(state, inputs):
            carry, bufs, rows = state
            t, m_t = inputs
            new, _ = cell.forward_step(params, carry, add_bias(rows[0], bias), h_scale)
            carry, out = (new, new) if m_t is None else _masked(m_t[:, None], new, carry)
            bufs, rows = _write_then_read(bufs, store(out), t, t_next(t), ax)
            return (carry, bufs, rows), None

        state0 = (carry0, (xw,), _rows((xw,), first, ax))
        (carry_T, bufs, _), _ = jax.lax.scan(step, state0, (jnp.arange(n), m), reverse=reverse, unroll=unroll)
        return carry_T, jax.tree_util.tree_unflatten(carry_def, list(bufs)), None

    # the stored carries: one (n, B, ·) buffer per carry leaf, written row by row
    states = tuple(jnp.zeros(_with_steps(c.shape, n, ax), c.dtype) for c in carry_leaves)
    if not widths:  # no residuals and another carry: the projection is read row by row

        def step(state, inputs):
            carry, states = state
            t, m_t = inputs
            new, _ = cell.forward_step(params, carry, add_bias(_row(xw, t, ax), bias), h_scale)
            carry, out = (new, new) if m_t is None else _masked(m_t[:, None], new, carry)
            return (carry, tuple(_put(s, r, t, ax) for s, r in zip(states, store(out)))), None

        (carry_T, states), _ = jax.lax.scan(step, (carry0, states), (jnp.arange(n), m), reverse=reverse,
                                            unroll=unroll)  # fmt: skip
        return carry_T, jax.tree_util.tree_unflatten(carry_def, list(states)), None

    # the reserve: the projection's buffer (overwritten by the first residual when it fits) and
    # one (n, B, width) buffer for each further residual
    extra = widths[1:] if overlay else widths
    bufs = (xw, *(jnp.zeros(xw.shape[:-1] + (w,), xw.dtype) for w in extra))

    def step(state, inputs):
        carry, bufs, rows, states = state
        t, m_t = inputs
        new, res = cell.forward_step(params, carry, add_bias(rows[0], bias), h_scale)
        res = tuple(jax.tree_util.tree_leaves(res))
        if overlay:
            bufs, rows = _write_then_read(bufs, res, t, t_next(t), ax)
        else:
            written, rows_next = _write_then_read(bufs[1:], res, t, t_next(t), ax)
            bufs = (bufs[0], *written)
            rows = (_row(bufs[0], jnp.clip(t_next(t), 0, n - 1), ax), *rows_next)
        carry, out = (new, new) if m_t is None else _masked(m_t[:, None], new, carry)
        states = tuple(_put(s, r, t, ax) for s, r in zip(states, store(out)))
        return (carry, bufs, rows, states), None

    state0 = (carry0, bufs, _rows(bufs, first, ax), states)
    (carry_T, bufs, _, states), _ = jax.lax.scan(step, state0, (jnp.arange(n), m), reverse=reverse, unroll=unroll)
    reserve = jax.tree_util.tree_unflatten(treedef, list(bufs if overlay else bufs[1:]))
    return carry_T, jax.tree_util.tree_unflatten(carry_def, list(states)), reserve


def forward(cell, params, xs, carry0, lengths, *, reverse=False, unroll=1, keep="reserve", remat_chunk=None,
            dropout: LayerDropout | None = None, time_axis: int = 0):  # fmt: skip
    """Run one layer; return ``(carry_T, ys, residuals)``.

    ``keep`` is ``"reserve"`` (residuals and carries, for ``backward``), ``"carries"`` (carries
    only; the backward recomputes) or ``"none"`` (inference: ``residuals`` is None). With
    ``"carries"`` the input projection is done chunk by chunk too (``remat_chunk`` steps, as in
    ``backward``), so that no ``(T, B, G)`` array exists at any point. ``dropout`` scales the
    inputs and the recurrent ``h`` (``LayerDropout``); ``backward`` takes the same.
    ``time_axis=1``: ``xs`` is batch-major ``(B, T, D)``, and so are ``ys`` and every stored
    array (``lengths`` and masks stay as they are); the loops then read and write strided rows,
    and no transpose is needed on either side of the layer.
    """
    ax = time_axis
    T = xs.shape[ax]
    valid = step_mask(lengths, T)
    x_scale, h_scale = _scales(dropout)
    xs = _times(xs, x_scale, ax)  # input dropout: one mask per sequence, before the projection
    if keep == "carries" and has_residuals(cell, params, xs, carry0, ax):
        size = _chunk_size(remat_chunk, T, _batch(xs, ax), cell.gate_size)
        carry_T, states = _chunked_forward(cell, params, xs, carry0, valid, reverse, unroll, size, h_scale, ax)
        return carry_T, cell.output(states), Residuals(states, None)
    carry_T, states, reserve = _run_forward(cell, params, xs, carry0, valid, reverse, unroll, h_scale, ax)
    if keep == "none":
        return carry_T, cell.output(states), None
    return carry_T, cell.output(states), Residuals(states, reserve if keep == "reserve" else None)


def _batch(xs: Array, ax: int) -> int:
    """The batch size of ``xs`` with time axis ``ax``."""
    return xs.shape[1 - ax]


def _chunked_forward(cell, params, xs, carry0, valid, reverse, unroll, size, h_scale, ax=0):
    """``_run_forward`` over chunks of ``size`` steps; the carries go into ``(T, B, ·)`` buffers."""
    T = xs.shape[ax]
    count, rest = divmod(T, size)
    states = jax.tree_util.tree_map(lambda c: jnp.zeros(_with_steps(c.shape, T, ax), c.dtype), carry0)

    def chunk(s, n, acc):
        carry, states = acc
        m = None if valid is None else _steps(valid, s, n)
        carry, part, _ = _run_forward(cell, params, _steps(xs, s, n, ax), carry, m, reverse, unroll, h_scale, ax)
        put = lambda buf, p: jax.lax.dynamic_update_slice_in_dim(buf, p, s, axis=ax)  # noqa: E731
        return carry, jax.tree_util.tree_map(put, states, part)

    return _over_chunks(chunk, (carry0, states), T, size, count, rest, first_to_last=not reverse)


def _over_chunks(chunk, acc, T, size, count, rest, *, first_to_last):
    """Apply ``chunk(start, steps, acc)`` to ``[0, size), [size, 2·size), ...`` and the partial
    ``[count·size, T)``, in increasing or decreasing order."""

    def full(acc):
        if not count:
            return acc
        starts = jnp.arange(count) * size
        step = lambda acc, s: (chunk(s, size, acc), None)  # noqa: E731
        acc, _ = jax.lax.scan(step, acc, starts, reverse=not first_to_last)
        return acc

    if rest and not first_to_last:
        acc = chunk(count * size, rest, acc)
    acc = full(acc)
    if rest and first_to_last:
        acc = chunk(count * size, rest, acc)
    return acc


# --------------------------------------------------------------------------------------------
# The fast hand-written backward: backward


def remat_chunk_steps(num_steps: int, batch: int, gate_size: int) -> int:
    """Steps per recomputed chunk: ``min(REMAT_CHUNK_ELEMENTS / (B·G), ⌈T / 8⌉)``, at least 1."""
    by_size = REMAT_CHUNK_ELEMENTS // max(1, batch * gate_size)
    return max(1, min(by_size, -(-num_steps // 8)))


def _chunk_size(requested, num_steps, batch, gate_size) -> int:
    size = requested or remat_chunk_steps(num_steps, batch, gate_size)
    return max(1, min(int(size), num_steps))


class _Segment(NamedTuple):
    """A run of consecutive steps for the reverse loop (the whole sequence, or one chunk)."""

    xs: Array  # (n, B, D)
    d_ys: Array  # (n, B, H)
    valid: Array | None  # (n, B) step inside its sequence
    before: Array | None  # (n, B) the step processed before it is inside its sequence
    cuts: Array | None  # (n,) truncation: cut the gradient into the carry entering the step
    states: Any  # carries after each step, (n, B, ·) per leaf
    prev: list  # per carry leaf: the carries entering each step (n, B, ·), or None = read from states
    first: Any  # the carry entering the segment's first processed step when none is stored


def _reverse_loop(cell, params, seg: _Segment, reserve, d_carry_T, reverse, unroll, h_scale=None, ax=0):
    """The reverse loop over a segment whose residuals are in ``reserve`` (None: the cell keeps
    none); returns ``(d_carry0, d_pre)``, ``d_pre`` written over the reserve when it fits (over
    the spent rows of ``d_ys`` for a cell without residuals whose ``d_pre`` has their shape). Every
    array of the segment has its time axis at ``ax``."""
    loops = lambda: _scan_reverse(cell, params, seg, reserve, d_carry_T, reverse, unroll, h_scale, ax)  # noqa: E731
    if seg.valid is None and seg.cuts is None and h_scale is None and native.applies(cell, seg.d_ys.dtype):
        return native.run_on_cpu(lambda: _native_reverse(cell, params, seg, reserve, d_carry_T, reverse, ax), loops)
    return loops()


def _native_reverse(cell, params, seg: _Segment, reserve, d_carry_T, reverse, ax):
    """``_scan_reverse`` of a plain LSTM or GRU by the native loop (``jrnn.kernels.native``)."""
    if isinstance(cell, GRUCell):
        rzn, hp_n = reserve
        n = rzn.shape[ax]
        h_prev = seg.prev[0]  # the carries entering each step, when the segment has them
        h_first = seg.first if h_prev is None else _row(h_prev, n - 1 if reverse else 0, ax)
        d_h_T, h_first = (a.astype(rzn.dtype) for a in (d_carry_T, h_first))
        d_hp, d_a_n, d_h0 = native.gru_backward(rzn, hp_n, seg.states, h_first, seg.d_ys, d_h_T, params.w_h,
                                                reverse=reverse, time_axis=ax)  # fmt: skip
        return d_h0, (d_hp, d_a_n)
    gates = reserve
    n = gates.shape[ax]
    c_prev = seg.prev[1]  # the cell states entering each step, when the segment has them
    c_first = seg.first.c if c_prev is None else _row(c_prev, n - 1 if reverse else 0, ax)
    d_h_T, d_c_T, c_first = (a.astype(gates.dtype) for a in (*d_carry_T, c_first))
    d_a, d_h0, d_c0 = native.lstm_backward(gates, seg.states.c, c_first, seg.d_ys, d_h_T, d_c_T, params.w_h,
                                           reverse=reverse, time_axis=ax)  # fmt: skip
    return type(d_carry_T)(d_h0, d_c0), d_a


def _scan_reverse(cell, params, seg: _Segment, reserve, d_carry_T, reverse, unroll, h_scale=None, ax=0):
    """``_reverse_loop`` as ``lax.scan`` loops over the cell's ``backward_step``."""
    st_leaves, carry_def = jax.tree_util.tree_flatten(seg.states)
    first_leaves = jax.tree_util.tree_leaves(seg.first)
    res_leaves, res_def = jax.tree_util.tree_flatten(reserve)
    bufs = tuple(res_leaves)
    n = st_leaves[0].shape[ax]
    t_next = _against(reverse)
    last = 0 if reverse else n - 1  # the first step the reverse loop visits

    def step_backward(d_carry, rows, t, m_t, before_t, cut_t, d_y_t):
        carry = jax.tree_util.tree_unflatten(carry_def, [_row(s, t, ax) for s in st_leaves])
        carry_tm1 = jax.tree_util.tree_unflatten(
            carry_def,
            [
                _entering_row(s, f, t, before_t, reverse, ax) if p is None else _row(p, t, ax)
                for s, f, p in zip(st_leaves, first_leaves, seg.prev)
            ],
        )
        d_new = cell.add_to_output(d_carry, d_y_t)  # y_t = h_t: the output's cotangent joins
        if m_t is not None:
            d_new = tree_where(m_t[:, None], d_new, tree_zeros_like(d_new))  # padded: no gradient in
        res = jax.tree_util.tree_unflatten(res_def, list(rows))
        d_pre, d_carry_tm1 = cell.backward_step(params, res, carry_tm1, carry, d_new, h_scale)
        if m_t is not None:
            d_carry_tm1 = tree_where(m_t[:, None], d_carry_tm1, d_carry)  # padded: carry_t = carry_tm1
        if cut_t is not None:
            d_carry_tm1 = tree_where(cut_t, tree_zeros_like(d_carry_tm1), d_carry_tm1)  # truncation
        return d_carry_tm1, d_pre

    inputs = (jnp.arange(n), seg.valid, seg.before, seg.cuts)
    pre_def = _in_place_layout(cell, params, seg, reserve, bufs, ax)
    if pre_def is not None:  # d_pre over the spent residuals, in place

        def step(state, inputs):
            d_carry, bufs, rows = state
            t = inputs[0]
            d_carry_tm1, d_pre = step_backward(d_carry, rows, *inputs, _row(seg.d_ys, t, ax))
            bufs, rows = _write_then_read(bufs, tuple(jax.tree_util.tree_leaves(d_pre)), t, t_next(t), ax)
            return (d_carry_tm1, bufs, rows), None

        state0 = (d_carry_T, bufs, _rows(bufs, last, ax))
        (d_carry0, bufs, _), _ = jax.lax.scan(step, state0, inputs, reverse=not reverse, unroll=unroll)
        return d_carry0, jax.tree_util.tree_unflatten(pre_def, list(bufs))

    if not bufs and _pre_fits(cell, params, seg, ax):  # d_pre over the spent rows of d_ys, in place

        def step(state, inputs):
            d_carry, d_ys, rows = state
            t = inputs[0]
            d_carry_tm1, d_pre = step_backward(d_carry, (), *inputs, rows[0])
            d_ys, rows = _write_then_read(d_ys, (d_pre,), t, t_next(t), ax)
            return (d_carry_tm1, d_ys, rows), None

        state0 = (d_carry_T, (seg.d_ys,), _rows((seg.d_ys,), last, ax))
        (d_carry0, (d_pre,), _), _ = jax.lax.scan(step, state0, inputs, reverse=not reverse, unroll=unroll)
        return d_carry0, d_pre

    # d_pre into buffers of its own, laid out like the segment
    leaves, pre_def = _pre_shapes(cell, params, seg, reserve, ax)
    pre = tuple(jnp.zeros(_with_steps(a.shape, n, ax), a.dtype) for a in leaves)

    def step(state, inputs):
        d_carry, pre = state
        t = inputs[0]
        d_carry_tm1, d_pre = step_backward(d_carry, _rows(bufs, t, ax), *inputs, _row(seg.d_ys, t, ax))
        pre = tuple(_put(b, r, t, ax) for b, r in zip(pre, jax.tree_util.tree_leaves(d_pre)))
        return (d_carry_tm1, pre), None

    (d_carry0, pre), _ = jax.lax.scan(step, (d_carry_T, pre), inputs, reverse=not reverse, unroll=unroll)
    return d_carry0, jax.tree_util.tree_unflatten(pre_def, list(pre))


def _one_step(tree, ax):
    """The shapes of one step's row of every leaf of ``tree`` (time axis ``ax``)."""
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(_drop_axis(a.shape, ax), a.dtype), tree)


def _pre_shapes(cell, params, seg, reserve, ax=0):
    """``(leaves, treedef)`` of one step's ``d_pre``, as shapes."""
    shapes = jax.eval_shape(
        lambda p, r, c: cell.backward_step(p, r, c, c, c)[0], params, _one_step(reserve, ax), _one_step(seg.states, ax)
    )  # fmt: skip
    return jax.tree_util.tree_flatten(shapes)


def _pre_fits(cell, params, seg, ax=0) -> bool:
    """Whether a step's ``d_pre`` of a cell without residuals is one array shaped like a row of
    ``d_ys`` (the vanilla cell), so that it can be written over the spent rows of ``d_ys``."""
    leaves, _ = _pre_shapes(cell, params, seg, None, ax)
    row = _one_step(seg.d_ys, ax)
    return len(leaves) == 1 and leaves[0].shape == row.shape and leaves[0].dtype == row.dtype


def _in_place_layout(cell, params, seg, reserve, bufs, ax=0):
    """The tree of a step's ``d_pre`` when it has the reserve's layout (so it can be written over
    it), else None."""
    if not bufs:
        return None
    leaves, treedef = _pre_shapes(cell, params, seg, reserve, ax)
    same = len(leaves) == len(bufs) and all(p.shape == _drop_axis(b.shape, ax) for p, b in zip(leaves, bufs))
    return treedef if same else None


def backward(
    cell,
    params,
    xs,
    carry0,
    lengths,
    residuals,
    d_ys,
    d_carry_T,
    *,
    reverse=False,
    unroll=1,
    cuts=None,
    need_d_xs=True,
    remat_chunk=None,
    dropout: LayerDropout | None = None,
    time_axis: int = 0,
):
    """The backward of ``forward``: ``(d_params, d_xs, d_carry0)``.

    ``residuals`` is what ``forward`` kept; ``d_ys (T, B, H)`` and ``d_carry_T`` are the
    cotangents of the outputs and of the final carry. ``cuts`` (``(T,)`` booleans, see
    ``truncation_cuts``) zero the gradient into the carry entering those steps.
    ``need_d_xs=False`` skips the input-gradient GEMM (``d_xs`` is then None). ``dropout`` is
    the forward's: ``d_xs`` comes back through the input mask, and the weight gradients read the
    scaled inputs and the scaled entering ``h``. ``time_axis`` is the forward's: 1 for batch-major
    ``xs (B, T, D)``, ``d_ys`` and residuals; ``d_xs`` then comes back batch-major too.

    When the residuals hold no reserve (``keep="carries"``) they are recomputed chunk by chunk,
    ``remat_chunk`` steps at a time (default ``remat_chunk_steps``): per chunk, two GEMMs rebuild
    them, the reverse loop runs over it, and its weight gradients are added up; the peak memory is
    then the stored carries plus one chunk.
    """
    ax = time_axis
    T = xs.shape[ax]
    valid = step_mask(lengths, T)
    before = _valid_before(valid, reverse)
    # a general mask (gaps): the carry entering a step comes from the last run step before it
    source = _entering_source(valid, reverse) if is_general_mask(lengths) else None
    cuts = None if cuts is None else jnp.asarray(cuts)
    states, reserve = residuals
    num_leaves = len(jax.tree_util.tree_leaves(carry0))
    x_scale, h_scale = _scales(dropout)
    xs = _times(xs, x_scale, ax)  # the inputs as the projection saw them
    if reserve is not None or not has_residuals(cell, params, xs, carry0, ax):
        # the whole sequence as one segment; the h entering each step is materialized for the
        # d_w_h GEMM, the other carry parts (the LSTM's c) are read from the stored carries
        if source is None:
            h_prev = entering(cell.output(states), cell.output(carry0), valid, reverse, ax)
            prev = [h_prev] + [None] * (num_leaves - 1)
        else:
            prev = [_gather_entering(st, c0, source, ax) for st, c0 in
                    zip(jax.tree_util.tree_leaves(states), jax.tree_util.tree_leaves(carry0))]  # fmt: skip
            h_prev = prev[0]
        seg = _Segment(xs, d_ys, valid, before, cuts, states, prev, carry0)
        d_carry0, d_pre = _reverse_loop(cell, params, seg, reserve, d_carry_T, reverse, unroll, h_scale, ax)
        d_params = cell.param_grads(params, xs, _times(h_prev, h_scale, ax), d_pre)  # h as w_h saw it
        d_xs = _times(cell.input_grads(params, d_pre), x_scale, ax) if need_d_xs else None  # xs · x_scale
        return d_params, d_xs, d_carry0

    size = _chunk_size(remat_chunk, T, _batch(xs, ax), cell.gate_size)
    count, rest = divmod(T, size)

    def chunk(s, n, acc):
        """Recompute and run steps ``[s, s + n)``, adding their gradients to ``acc``."""
        d_carry, d_params, d_xs = acc
        sl = lambda a: None if a is None else _steps(a, s, n, ax)  # noqa: E731  (time axis ax)
        sl_t = lambda a: None if a is None else _steps(a, s, n)  # noqa: E731  (masks: time-major)
        if source is None:
            entering_rows = lambda st, c0: _entering_rows(st, c0, s, n, before, reverse, ax)  # noqa: E731
        else:
            entering_rows = lambda st, c0: _gather_entering(st, c0, sl_t(source), ax)  # noqa: E731
        prev = jax.tree_util.tree_map(entering_rows, states, carry0)
        part = jax.tree_util.tree_map(sl, states)
        seg = _Segment(sl(xs), sl(d_ys), sl_t(valid), sl_t(before), sl_t(cuts), part, jax.tree_util.tree_leaves(prev),
                       carry0)  # fmt: skip
        h_scale_n = None if h_scale is None else jnp.expand_dims(h_scale, ax)  # the same for the chunk's n steps
        _, recomputed = cell.forward_step(params, prev, cell.project_inputs(params, seg.xs), h_scale_n)  # two GEMMs
        d_carry, d_pre = _reverse_loop(cell, params, seg, recomputed, d_carry, reverse, unroll, h_scale, ax)
        d_part = cell.param_grads(params, seg.xs, _times(cell.output(prev), h_scale, ax), d_pre)
        d_params = jax.tree_util.tree_map(jnp.add, d_params, d_part)
        if need_d_xs:
            d_x = _times(cell.input_grads(params, d_pre), x_scale, ax)  # xs · x_scale
            d_xs = jax.lax.dynamic_update_slice_in_dim(d_xs, d_x, s, axis=ax)
        return d_carry, d_params, d_xs

    d_xs = jnp.zeros_like(xs) if need_d_xs else None
    acc = (d_carry_T, tree_zeros_like(params), d_xs)
    # against the forward: a forward layer's backward starts with the last chunk
    d_carry0, d_params, d_xs = _over_chunks(chunk, acc, T, size, count, rest, first_to_last=reverse)
    return d_params, d_xs, d_carry0


# --------------------------------------------------------------------------------------------
# The custom rule behind backward="bptt"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 6, 7, 8, 9))
def _scan_bptt(cell, params, xs, carry, lengths, dropout, reverse, unroll, remat, time_axis):
    carry_T, ys, _ = forward(cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll, keep="none",
                             dropout=dropout, time_axis=time_axis)  # fmt: skip
    return carry_T, ys


def _scan_bptt_fwd(cell, params, xs, carry, lengths, dropout, reverse, unroll, remat, time_axis):
    keep = "carries" if remat else "reserve"
    carry_T, ys, kept = forward(cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll, keep=keep,
                                dropout=dropout, time_axis=time_axis)  # fmt: skip
    return (carry_T, ys), (params, xs, carry, lengths, dropout, kept)


def _scan_bptt_bwd(cell, reverse, unroll, remat, time_axis, residuals, cotangents):
    params, xs, carry, lengths, dropout, kept = residuals
    d_carry_T, d_ys = cotangents
    d_params, d_xs, d_carry0 = backward(cell, params, xs, carry, lengths, kept, d_ys, d_carry_T, reverse=reverse,
                                        unroll=unroll, dropout=dropout, time_axis=time_axis)  # fmt: skip
    # lengths are integers, and the dropout masks are constants: no cotangent
    d_dropout = None if dropout is None else tree_zeros_like(dropout)
    return cast_like(d_params, params), d_xs.astype(xs.dtype), cast_like(d_carry0, carry), None, d_dropout


_scan_bptt.defvjp(_scan_bptt_fwd, _scan_bptt_bwd)


def scan_bptt(cell, params, xs, carry, lengths, *, reverse=False, unroll=1, remat=False,
              dropout: LayerDropout | None = None, time_axis: int = 0):  # fmt: skip
    """One layer differentiated by the hand-written fast backward: ``(carry_T, ys (T, B, H))``,
    the same values as ``scan_autodiff``.

    Between the forward and the backward it keeps the residuals and the per-step carries; with
    ``remat=True`` only the carries, and the backward recomputes the residuals chunk by chunk.
    ``unroll`` is ``lax.scan``'s, in both loops. ``dropout`` (``LayerDropout``) is applied by the
    hand-written forward and backward both. ``time_axis=1``: ``xs`` and ``ys`` are batch-major
    ``(B, T, ·)`` (``forward``).
    """
    dtype = compute_dtype(xs, params)
    if any(a.dtype != dtype for a in jax.tree_util.tree_leaves(params)):
        params = cast_tree(params, dtype)
    xs = xs.astype(dtype)
    if dropout is not None:
        dropout = LayerDropout(*(None if a is None else a.astype(dtype) for a in dropout))
    return _scan_bptt(cell, params, xs, carry, lengths, dropout, bool(reverse), int(unroll), bool(remat),
                      int(time_axis))


SCANS = {"autodiff": scan_autodiff, "bptt": scan_bptt, **KERNELS}
"""``backward -> scan``: how ``scan_layer`` runs and differentiates one layer."""


def _scans_batch_major(backward: str, method: str) -> bool:
    """Whether the scan of ``backward`` and ``method`` can run a batch-major sequence as it is:
    the hand-written backward, whose loops read and write rows along either axis."""
    return backward == "bptt" and method == "sequential"


def runs_batch_major(backward: str, method: str, num_elements: int) -> bool:
    """Whether ``RNN.apply`` and ``unroll`` run a batch-major sequence ``(B, T, ·)`` batch-major
    through their layers (``time_axis=1``), given ``num_elements = B·T·H`` of one layer's output.

    Only the hand-written backward can (its loops then read and write strided rows), and it does
    from ``BATCH_MAJOR_MIN_ELEMENTS`` on: there the inputs, outputs and their cotangents are never
    transposed, which XLA's CPU fusions around a user's loss make costly (``benchmarks/NOTES.md``,
    section 14); below, the strided rows cost the loops more than the small transposes save."""
    return _scans_batch_major(backward, method) and num_elements >= BATCH_MAJOR_MIN_ELEMENTS


def time_axis_for(layout, hidden_size: int, backward: str, method: str) -> int:
    """The time axis the layers run a validated sequence of ``layout`` (``jrnn._checks.Layout``)
    in: 1 for a batch-major one as it is (``runs_batch_major``), else 0 (time-major, after
    ``layout.to_scan``)."""
    size = layout.batch_size * layout.num_steps * hidden_size
    return int(layout.batched and not layout.time_major and runs_batch_major(backward, method, size))


def scan_layer(cell, params, xs, carry, lengths, *, reverse=False, unroll=1, remat=False, backward="autodiff",
               method="sequential", dropout: LayerDropout | None = None, time_axis: int = 0):  # fmt: skip
    """One layer with the chosen backward (validated inputs, time-major ``(T, B, ·)`` or, with
    ``time_axis=1``, batch-major ``(B, T, ·)``): ``(carry_T, ys)`` with ``ys`` laid out like ``xs``.
    Batch-major inputs are transposed for the scans that run time-major (all but the hand-written
    backward's).

    ``method="sequential"`` runs the scans above; ``"newton"``, ``"quasi_newton"`` and ``"elk"``
    solve the trajectory in parallel over time (``jrnn.parallel.solve_layer``, default options),
    differentiated by its adjoint, which ``backward`` then solves (``unroll`` and ``remat`` do
    not apply). ``dropout`` (``LayerDropout``) scales the inputs and the recurrent ``h``; the
    parallel methods take input dropout only (``RNN.apply`` refuses recurrent dropout there).
    """
    if time_axis and not _scans_batch_major(backward, method):
        carry_T, ys = scan_layer(cell, params, jnp.swapaxes(xs, 0, 1), carry, lengths, reverse=reverse, unroll=unroll,
                                 remat=remat, backward=backward, method=method, dropout=dropout)  # fmt: skip
        return carry_T, jnp.swapaxes(ys, 0, 1)
    if method != "sequential" and backward in KERNELS:
        fail(f"method with backward={backward!r}", "'sequential' (the fused layer runs the scan itself)", repr(method))
    if method == "sequential" and backward in KERNELS:
        x_scale, h_scale = _scales(dropout)
        if h_scale is not None:
            fail(f"recurrent_dropout with backward={backward!r}", "0 (the fused layer has no recurrent mask; "
                 "use backward='bptt' or 'autodiff')", "a rate above 0")  # fmt: skip
        xs = _times(zero_skipped(xs, lengths), x_scale)  # input dropout, before the fused layer
        return SCANS[backward](cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll, remat=remat)
    if method == "sequential":
        xs = zero_skipped(xs, lengths, time_axis)  # the parallel solve zeroes its own padding
        options = {"time_axis": time_axis} if time_axis else {}
        return SCANS[backward](cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll, remat=remat,
                               dropout=dropout, **options)  # fmt: skip
    x_scale, h_scale = _scales(dropout)
    assert h_scale is None, "recurrent dropout needs method='sequential'"
    xs = _times(xs, x_scale)  # input dropout, before the solve
    carry_T, ys, _ = parallel.solve_layer(cell, params, xs, carry, lengths, method=method, reverse=reverse,
                                          backward=backward)  # fmt: skip
    return carry_T, ys
