"""Every scan of one recurrent layer over a sequence, for any cell (through the ``Cell`` interface).

Everything here is time-major and already validated: ``xs (T, B, D)``, ``lengths (B,) int32`` or
None, carries ``(B, ·)`` per leaf in the compute dtype. Legend: ``T`` steps, ``B`` batch, ``D``
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
(zero at padded steps). The vanilla cell has no residuals: its slope comes from its output.

The fast backward is a reverse loop whose state is ``d_carry``; per step it calls the cell's step
backward (elementwise gate derivatives and one ``(B, G) @ (G, H)`` product into the previous
carry) and writes the step's pre-activation gradients over the step's row of the reserve. After
the loop the weight gradients ``Σ_t x_tᵀ d_a_t``, ``Σ_t h_{t-1}ᵀ d_a_t`` and the input gradient
are single GEMMs over ``T·B`` rows. With ``remat`` only the carries are kept, and the backward
recomputes the residuals chunk by chunk (two GEMMs per chunk) just before its loop reaches them.

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
from jrnn.kernels import KERNELS
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

REMAT_CHUNK_ELEMENTS = 1 << 20
"""Under ``remat`` the backward recomputes the residuals chunk by chunk; a chunk holds at most
about this many ``(steps, B, G)`` elements (4 MiB in float32), enough for efficient GEMMs, and at
most an eighth of the sequence, so that a few chunks' temporaries stay well below the reserve
they replace."""

_row = jax.lax.dynamic_index_in_dim
_put = jax.lax.dynamic_update_index_in_dim


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


def _times(a: Array, scale: Array | None) -> Array:
    """``a (T, B, ·)`` times a per-sequence ``scale (B, ·)``, the same at every step (None: ``a``)."""
    return a if scale is None else a * scale[None]


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


def zero_skipped(xs: Array, steps: Array | None) -> Array:
    """``xs (T, B, D)`` with the steps that do not run (``step_mask``) set to zero. Their outputs
    are discarded anyway, but a NaN or an infinity there would still reach the weight gradients
    through the input projection (``0·NaN``); padding is never read, as PyTorch's packed
    sequences never read it."""
    valid = step_mask(steps, xs.shape[0])
    if valid is None:
        return xs
    return jnp.where(valid[..., None], xs, jnp.zeros_like(xs))


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
    return jnp.where(_valid_before(valid, reverse)[..., None], shifted, first[None])


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


def _gather_entering(states: Array, first: Array, source: Array) -> Array:
    """The carries entering the steps of ``source (n, B)`` (``_entering_source``), read from the
    stored carries ``states (T, B, H)``: ``(n, B, H)``."""
    T = states.shape[0]
    rows = jnp.take_along_axis(states, jnp.clip(source, 0, T - 1)[..., None], axis=0)
    has = (source >= 0) & (source <= T - 1)
    return jnp.where(has[..., None], rows, first[None])


def _entering_row(states, first, t, before_t, reverse):
    """The carry entering step t, read from the stored carries (see ``entering``)."""
    T = states.shape[0]
    row = _row(states, jnp.clip(t + 1 if reverse else t - 1, 0, T - 1), keepdims=False)
    has = (t < T - 1) if reverse else (t > 0)
    if before_t is not None:
        has = jnp.logical_and(has, before_t)[:, None]
    return jnp.where(has, row, first)


def _entering_rows(states, first, s, n, before, reverse):
    """The carries entering steps ``[s, s + n)``, gathered from the stored carries."""
    T = states.shape[0]
    idx = s + jnp.arange(n) + (1 if reverse else -1)
    rows = jnp.take(states, jnp.clip(idx, 0, T - 1), axis=0)  # (n, B, H)
    has = ((idx >= 0) & (idx <= T - 1))[:, None]
    if before is not None:
        has = has & jax.lax.dynamic_slice_in_dim(before, s, n, axis=0)
    return jnp.where(has[..., None], rows, first[None])


def _masked(m, new, old):
    """A padded step keeps the carry (``new`` where ``m``, else ``old``) and outputs zeros."""
    carry = tree_where(m, new, old)
    return carry, jax.tree_util.tree_map(lambda a: jnp.where(m, a, jnp.zeros_like(a)), carry)


def _rows(bufs, t):
    return tuple(_row(b, t, keepdims=False) for b in bufs)


def _write_then_read(bufs, rows, t, t_next):
    """Write ``rows`` over row t of ``bufs`` (tuples), then read row ``t_next`` of the result.

    Reading the next step's row *after* the write makes the write the only use of the old
    buffer, so XLA updates it in place; reading row t in the step itself would let XLA fuse
    the read into consumers scheduled after the write, and it would copy the whole buffer at
    every step to keep them correct.
    """
    bufs = tuple(_put(b, r, t, 0) for b, r in zip(bufs, rows))
    return bufs, _rows(bufs, jnp.clip(t_next, 0, bufs[0].shape[0] - 1))


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


def _reserve_layout(cell, params, carry0, xw):
    """``(treedef, widths, overlay)`` of a step's residuals: their tree, each leaf's last-axis
    width, and whether the first one overwrites the projection (same width ``G``)."""
    shapes = jax.eval_shape(
        lambda p, c, x: cell.forward_step(p, c, add_bias(x, cell.input_bias(p)))[1],
        params, carry0, jax.ShapeDtypeStruct(xw.shape[1:], xw.dtype),
    )  # fmt: skip
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    widths = tuple(leaf.shape[-1] for leaf in leaves)
    return treedef, widths, bool(widths) and widths[0] == xw.shape[-1]


def has_residuals(cell: Cell, params, xs: Array, carry0) -> bool:
    """Whether the cell's step keeps residuals (so ``remat`` has something to recompute)."""
    xw = jax.eval_shape(lambda x, w: x[:1] @ w, xs, params.w_x)  # its shape only: no product traced
    return bool(_reserve_layout(cell, params, carry0, xw)[1])


def _run_forward(cell, params, xs, carry0, m, reverse, unroll, h_scale=None):
    """The forward loop over ``xs (n, B, D)`` (already scaled by input dropout); ``(carry_T,
    states, reserve)``, ``reserve`` None for a cell without residuals."""
    n = xs.shape[0]
    xw = xs @ params.w_x  # (n, B, G): one GEMM for all steps; the bias joins in the loop
    bias = cell.input_bias(params)
    treedef, widths, overlay = _reserve_layout(cell, params, carry0, xw)

    if not widths:  # no residuals: the projection is read as a scanned input

        def step(carry, inputs):
            xw_t, m_t = inputs
            new, _ = cell.forward_step(params, carry, add_bias(xw_t, bias), h_scale)
            return (new, new) if m_t is None else _masked(m_t[:, None], new, carry)

        carry_T, states = jax.lax.scan(step, carry0, (xw, m), reverse=reverse, unroll=unroll)
        return carry_T, states, None

    # the reserve: the projection's buffer (overwritten by the first residual when it fits) and
    # one (n, B, width) buffer for each further residual
    extra = widths[1:] if overlay else widths
    bufs = (xw, *(jnp.zeros(xw.shape[:2] + (w,), xw.dtype) for w in extra))
    t_next = _next(reverse)

    def step(state, inputs):
        carry, bufs, rows = state
        t, m_t = inputs
        new, res = cell.forward_step(params, carry, add_bias(rows[0], bias), h_scale)
        res = tuple(jax.tree_util.tree_leaves(res))
        if overlay:
            bufs, rows = _write_then_read(bufs, res, t, t_next(t))
        else:
            written, rows_next = _write_then_read(bufs[1:], res, t, t_next(t))
            bufs = (bufs[0], *written)
            rows = (_row(bufs[0], jnp.clip(t_next(t), 0, n - 1), keepdims=False), *rows_next)
        out = (new, new) if m_t is None else _masked(m_t[:, None], new, carry)
        return (out[0], bufs, rows), out[1]

    state0 = (carry0, bufs, _rows(bufs, n - 1 if reverse else 0))
    (carry_T, bufs, _), states = jax.lax.scan(step, state0, (jnp.arange(n), m), reverse=reverse, unroll=unroll)
    reserve = jax.tree_util.tree_unflatten(treedef, list(bufs if overlay else bufs[1:]))
    return carry_T, states, reserve


def forward(cell, params, xs, carry0, lengths, *, reverse=False, unroll=1, keep="reserve", remat_chunk=None,
            dropout: LayerDropout | None = None):  # fmt: skip
    """Run one layer; return ``(carry_T, ys, residuals)``.

    ``keep`` is ``"reserve"`` (residuals and carries, for ``backward``), ``"carries"`` (carries
    only; the backward recomputes) or ``"none"`` (inference: ``residuals`` is None). With
    ``"carries"`` the input projection is done chunk by chunk too (``remat_chunk`` steps, as in
    ``backward``), so that no ``(T, B, G)`` array exists at any point. ``dropout`` scales the
    inputs and the recurrent ``h`` (``LayerDropout``); ``backward`` takes the same.
    """
    T = xs.shape[0]
    valid = step_mask(lengths, T)
    x_scale, h_scale = _scales(dropout)
    xs = _times(xs, x_scale)  # input dropout: one mask per sequence, before the projection
    if keep == "carries" and has_residuals(cell, params, xs, carry0):
        size = _chunk_size(remat_chunk, T, xs.shape[1], cell.gate_size)
        carry_T, states = _chunked_forward(cell, params, xs, carry0, valid, reverse, unroll, size, h_scale)
        return carry_T, cell.output(states), Residuals(states, None)
    carry_T, states, reserve = _run_forward(cell, params, xs, carry0, valid, reverse, unroll, h_scale)
    if keep == "none":
        return carry_T, cell.output(states), None
    return carry_T, cell.output(states), Residuals(states, reserve if keep == "reserve" else None)


def _chunked_forward(cell, params, xs, carry0, valid, reverse, unroll, size, h_scale):
    """``_run_forward`` over chunks of ``size`` steps; the carries go into ``(T, B, ·)`` buffers."""
    T = xs.shape[0]
    count, rest = divmod(T, size)
    states = jax.tree_util.tree_map(lambda c: jnp.zeros((T, *c.shape), c.dtype), carry0)

    def chunk(s, n, acc):
        carry, states = acc
        sl = lambda a: None if a is None else jax.lax.dynamic_slice_in_dim(a, s, n, axis=0)  # noqa: E731
        carry, part, _ = _run_forward(cell, params, sl(xs), carry, sl(valid), reverse, unroll, h_scale)
        put = lambda buf, p: jax.lax.dynamic_update_slice_in_dim(buf, p, s, axis=0)  # noqa: E731
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


def _reverse_loop(cell, params, seg: _Segment, reserve, d_carry_T, reverse, unroll, h_scale=None):
    """The reverse loop over a segment whose residuals are in ``reserve`` (None: the cell keeps
    none); returns ``(d_carry0, d_pre)``, ``d_pre`` written over the reserve when it fits."""
    st_leaves, carry_def = jax.tree_util.tree_flatten(seg.states)
    first_leaves = jax.tree_util.tree_leaves(seg.first)
    res_leaves, res_def = jax.tree_util.tree_flatten(reserve)
    bufs = tuple(res_leaves)
    n = st_leaves[0].shape[0]
    t_next = _against(reverse)

    def step_backward(d_carry, rows, t, m_t, before_t, cut_t, d_y_t):
        carry = jax.tree_util.tree_unflatten(carry_def, [_row(s, t, keepdims=False) for s in st_leaves])
        carry_tm1 = jax.tree_util.tree_unflatten(
            carry_def,
            [
                _entering_row(s, f, t, before_t, reverse) if p is None else _row(p, t, keepdims=False)
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

    inputs = (jnp.arange(n), seg.valid, seg.before, seg.cuts, seg.d_ys)
    pre_def = _in_place_layout(cell, params, seg, reserve, bufs)
    if pre_def is not None:  # d_pre over the spent residuals, in place

        def step(state, inputs):
            d_carry, bufs, rows = state
            d_carry_tm1, d_pre = step_backward(d_carry, rows, *inputs)
            t = inputs[0]
            bufs, rows = _write_then_read(bufs, tuple(jax.tree_util.tree_leaves(d_pre)), t, t_next(t))
            return (d_carry_tm1, bufs, rows), None

        state0 = (d_carry_T, bufs, _rows(bufs, 0 if reverse else n - 1))
        (d_carry0, bufs, _), _ = jax.lax.scan(step, state0, inputs, reverse=not reverse, unroll=unroll)
        return d_carry0, jax.tree_util.tree_unflatten(pre_def, list(bufs))

    def step(d_carry, inputs):  # d_pre as the loop's output
        return step_backward(d_carry, _rows(bufs, inputs[0]), *inputs)

    return jax.lax.scan(step, d_carry_T, inputs, reverse=not reverse, unroll=unroll)


def _in_place_layout(cell, params, seg, reserve, bufs):
    """The tree of a step's ``d_pre`` when it has the reserve's layout (so it can be written over
    it), else None."""
    if not bufs:
        return None
    one = lambda tree: jax.tree_util.tree_map(lambda a: a[0], tree)  # noqa: E731
    carry = one(seg.states)
    shapes = jax.eval_shape(lambda p, r, c: cell.backward_step(p, r, c, c, c)[0], params, one(reserve), carry)
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    same = len(leaves) == len(bufs) and all(p.shape == b.shape[1:] for p, b in zip(leaves, bufs))
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
):
    """The backward of ``forward``: ``(d_params, d_xs, d_carry0)``.

    ``residuals`` is what ``forward`` kept; ``d_ys (T, B, H)`` and ``d_carry_T`` are the
    cotangents of the outputs and of the final carry. ``cuts`` (``(T,)`` booleans, see
    ``truncation_cuts``) zero the gradient into the carry entering those steps.
    ``need_d_xs=False`` skips the input-gradient GEMM (``d_xs`` is then None). ``dropout`` is
    the forward's: ``d_xs`` comes back through the input mask, and the weight gradients read the
    scaled inputs and the scaled entering ``h``.

    When the residuals hold no reserve (``keep="carries"``) they are recomputed chunk by chunk,
    ``remat_chunk`` steps at a time (default ``remat_chunk_steps``): per chunk, two GEMMs rebuild
    them, the reverse loop runs over it, and its weight gradients are added up; the peak memory is
    then the stored carries plus one chunk.
    """
    T = xs.shape[0]
    valid = step_mask(lengths, T)
    before = _valid_before(valid, reverse)
    # a general mask (gaps): the carry entering a step comes from the last run step before it
    source = _entering_source(valid, reverse) if is_general_mask(lengths) else None
    cuts = None if cuts is None else jnp.asarray(cuts)
    states, reserve = residuals
    num_leaves = len(jax.tree_util.tree_leaves(carry0))
    x_scale, h_scale = _scales(dropout)
    xs = _times(xs, x_scale)  # the inputs as the projection saw them
    if reserve is not None or not has_residuals(cell, params, xs, carry0):
        # the whole sequence as one segment; the h entering each step is materialized for the
        # d_w_h GEMM, the other carry parts (the LSTM's c) are read from the stored carries
        if source is None:
            h_prev = entering(cell.output(states), cell.output(carry0), valid, reverse)
            prev = [h_prev] + [None] * (num_leaves - 1)
        else:
            prev = [_gather_entering(st, c0, source) for st, c0 in
                    zip(jax.tree_util.tree_leaves(states), jax.tree_util.tree_leaves(carry0))]  # fmt: skip
            h_prev = prev[0]
        seg = _Segment(xs, d_ys, valid, before, cuts, states, prev, carry0)
        d_carry0, d_pre = _reverse_loop(cell, params, seg, reserve, d_carry_T, reverse, unroll, h_scale)
        d_params = cell.param_grads(params, xs, _times(h_prev, h_scale), d_pre)  # h as w_h saw it
        d_xs = _times(cell.input_grads(params, d_pre), x_scale) if need_d_xs else None  # xs · x_scale
        return d_params, d_xs, d_carry0

    size = _chunk_size(remat_chunk, T, xs.shape[1], cell.gate_size)
    count, rest = divmod(T, size)

    def chunk(s, n, acc):
        """Recompute and run steps ``[s, s + n)``, adding their gradients to ``acc``."""
        d_carry, d_params, d_xs = acc
        sl = lambda a: None if a is None else jax.lax.dynamic_slice_in_dim(a, s, n, axis=0)  # noqa: E731
        if source is None:
            entering_rows = lambda st, c0: _entering_rows(st, c0, s, n, before, reverse)  # noqa: E731
        else:
            entering_rows = lambda st, c0: _gather_entering(st, c0, sl(source))  # noqa: E731
        prev = jax.tree_util.tree_map(entering_rows, states, carry0)
        part = jax.tree_util.tree_map(sl, states)
        seg = _Segment(sl(xs), sl(d_ys), sl(valid), sl(before), sl(cuts), part, jax.tree_util.tree_leaves(prev), carry0)
        h_scale_n = None if h_scale is None else h_scale[None]  # the same for the chunk's n steps
        _, recomputed = cell.forward_step(params, prev, cell.project_inputs(params, seg.xs), h_scale_n)  # two GEMMs
        d_carry, d_pre = _reverse_loop(cell, params, seg, recomputed, d_carry, reverse, unroll, h_scale)
        d_part = cell.param_grads(params, seg.xs, _times(cell.output(prev), h_scale), d_pre)
        d_params = jax.tree_util.tree_map(jnp.add, d_params, d_part)
        if need_d_xs:
            d_x = _times(cell.input_grads(params, d_pre), x_scale)  # xs · x_scale
            d_xs = jax.lax.dynamic_update_slice_in_dim(d_xs, d_x, s, axis=0)
        return d_carry, d_params, d_xs

    d_xs = jnp.zeros_like(xs) if need_d_xs else None
    acc = (d_carry_T, tree_zeros_like(params), d_xs)
    # against the forward: a forward layer's backward starts with the last chunk
    d_carry0, d_params, d_xs = _over_chunks(chunk, acc, T, size, count, rest, first_to_last=reverse)
    return d_params, d_xs, d_carry0


# --------------------------------------------------------------------------------------------
# The custom rule behind backward="bptt"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 6, 7, 8))
def _scan_bptt(cell, params, xs, carry, lengths, dropout, reverse, unroll, remat):
    carry_T, ys, _ = forward(
        cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll, keep="none", dropout=dropout
    )
    return carry_T, ys


def _scan_bptt_fwd(cell, params, xs, carry, lengths, dropout, reverse, unroll, remat):
    keep = "carries" if remat else "reserve"
    carry_T, ys, kept = forward(
        cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll, keep=keep, dropout=dropout
    )
    return (carry_T, ys), (params, xs, carry, lengths, dropout, kept)


def _scan_bptt_bwd(cell, reverse, unroll, remat, residuals, cotangents):
    params, xs, carry, lengths, dropout, kept = residuals
    d_carry_T, d_ys = cotangents
    d_params, d_xs, d_carry0 = backward(
        cell, params, xs, carry, lengths, kept, d_ys, d_carry_T, reverse=reverse, unroll=unroll, dropout=dropout
    )
    # lengths are integers, and the dropout masks are constants: no cotangent
    d_dropout = None if dropout is None else tree_zeros_like(dropout)
    return cast_like(d_params, params), d_xs.astype(xs.dtype), cast_like(d_carry0, carry), None, d_dropout


_scan_bptt.defvjp(_scan_bptt_fwd, _scan_bptt_bwd)


def scan_bptt(cell, params, xs, carry, lengths, *, reverse=False, unroll=1, remat=False,
              dropout: LayerDropout | None = None):  # fmt: skip
    """One layer differentiated by the hand-written fast backward: ``(carry_T, ys (T, B, H))``,
    the same values as ``scan_autodiff``.

    Between the forward and the backward it keeps the residuals and the per-step carries; with
    ``remat=True`` only the carries, and the backward recomputes the residuals chunk by chunk.
    ``unroll`` is ``lax.scan``'s, in both loops. ``dropout`` (``LayerDropout``) is applied by the
    hand-written forward and backward both.
    """
    dtype = compute_dtype(xs, params)
    if any(a.dtype != dtype for a in jax.tree_util.tree_leaves(params)):
        params = cast_tree(params, dtype)
    xs = xs.astype(dtype)
    if dropout is not None:
        dropout = LayerDropout(*(None if a is None else a.astype(dtype) for a in dropout))
    return _scan_bptt(cell, params, xs, carry, lengths, dropout, bool(reverse), int(unroll), bool(remat))


SCANS = {"autodiff": scan_autodiff, "bptt": scan_bptt, **KERNELS}
"""``backward -> scan``: how ``scan_layer`` runs and differentiates one layer."""


def scan_layer(cell, params, xs, carry, lengths, *, reverse=False, unroll=1, remat=False, backward="autodiff",
               method="sequential", dropout: LayerDropout | None = None):  # fmt: skip
    """One layer with the chosen backward (time-major, validated inputs): ``(carry_T, ys)``.

    ``method="sequential"`` runs the scans above; ``"newton"``, ``"quasi_newton"`` and ``"elk"``
    solve the trajectory in parallel over time (``jrnn.parallel.solve_layer``, default options),
    differentiated by its adjoint, which ``backward`` then solves (``unroll`` and ``remat`` do
    not apply). ``dropout`` (``LayerDropout``) scales the inputs and the recurrent ``h``; the
    parallel methods take input dropout only (``RNN.apply`` refuses recurrent dropout there).
    """
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
        xs = zero_skipped(xs, lengths)  # the parallel solve zeroes its own padding
        return SCANS[backward](cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll, remat=remat,
                               dropout=dropout)  # fmt: skip
    x_scale, h_scale = _scales(dropout)
    assert h_scale is None, "recurrent dropout needs method='sequential'"
    xs = _times(xs, x_scale)  # input dropout, before the solve
    carry_T, ys, _ = parallel.solve_layer(cell, params, xs, carry, lengths, method=method, reverse=reverse,
                                          backward=backward)  # fmt: skip
    return carry_T, ys
