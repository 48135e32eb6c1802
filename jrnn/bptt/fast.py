"""The fast form of the hand-written backward (the shape of cuDNN's and oneDNN's RNN kernels).

Forward (``forward``):

- the input projection of every step is one GEMM before the loop, ``xs @ w_x`` ``(T, B, G)``
  (the bias is added in the loop, which saves a second ``(T, B, G)`` buffer);
- the loop does the recurrent product and the gate arithmetic, and writes each step's gate
  activations back over that step's row of the projection (in place: the projection of step t
  is dead once step t has run), so the activations of all steps cost no memory beyond it; the
  loop carries the row it reads next (see ``_write_then_read``);
- it emits the carry after each step (zero at padded steps).

What the backward keeps (the *reserve*, as cuDNN calls it): the gate activations in the
projection's buffer (LSTM: ``i, f, g, o``; GRU: ``r, z, n`` plus ``h_n = h w_hn + b_hn`` in a ``(T, B, H)``
buffer), and the per-step carries (``h`` = the outputs; LSTM also ``c``). The vanilla cell keeps
only ``h``: its slope comes from its output, ``tanh' = 1 - h²``. With ``remat=True`` only the
carries are kept, and the backward recomputes the gate activations chunk by chunk (two GEMMs
per chunk of steps, ``xs @ w_x + h_prev @ w_h``) just before its reverse loop reaches them.

Backward (``backward``):

- a reverse loop (``lax.scan``) whose state is ``d_carry``; per step it does the elementwise gate
  derivatives and one ``(B, G) @ (G, H)`` product into the previous carry, and writes the step's
  pre-activation gradients ``d_a`` over the step's row of the reserve (in place again);
- after the loop, ``d_w_x = Σ_t x_tᵀ d_a_t``, ``d_w_h = Σ_t h_{t-1}ᵀ d_a_t``, ``d_b = Σ d_a`` and
  ``d_xs = d_a @ w_xᵀ`` are single GEMMs (or sums) over ``T·B`` rows (under ``remat``, one per
  chunk, added up).

Memory, in units of one ``(T, B, H)`` array, for the LSTM: the reserve 4, the carries 2, the
materialized ``h_{t-1}`` 1, plus the incoming ``d_ys``; with ``remat`` the carries 2 plus one
chunk. Autodiff of the same scan keeps about 3x more (``benchmarks/bptt_memory.py``).

Everything here is time-major (``xs (T, B, D)``) and already validated.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jrnn.bptt.common import batch_sum, entering, outer_sum, tree_where, tree_zeros_like, valid_steps
from jrnn.bptt.steps import ACTIVATION_SLOPES
from jrnn.cells import (
    ACTIVATIONS,
    GRUCell,
    GRUParams,
    LSTMCarry,
    LSTMCell,
    LSTMParams,
    VanillaCell,
    VanillaParams,
)

Array = jax.Array

sigmoid = jax.nn.sigmoid
_row = jax.lax.dynamic_index_in_dim
_put = jax.lax.dynamic_update_index_in_dim


def _rows(bufs, t):
    return jax.tree_util.tree_map(lambda b: _row(b, t, keepdims=False), bufs)


def _write_then_read(bufs, rows, t, t_next):
    """Write ``rows`` over row t of ``bufs``, then read row ``t_next`` of the result.

    Reading the next step's row *after* the write makes the write the only use of the old
    buffer, so XLA updates it in place; reading row t in the step itself would let XLA fuse
    the read into consumers scheduled after the write, and it would copy the whole buffer at
    every step to keep them correct.
    """
    bufs = jax.tree_util.tree_map(lambda b, r: _put(b, r, t, 0), bufs, rows)
    T = jax.tree_util.tree_leaves(bufs)[0].shape[0]
    return bufs, _rows(bufs, jnp.clip(t_next, 0, T - 1))


class Residuals(NamedTuple):
    """What the forward keeps for the backward: ``states`` (the carry after each step, zero at
    padded steps) and ``reserve`` (the gate activations, or None when they are recomputed)."""

    states: Any
    reserve: Any


def _masked(m, new, old):
    """A padded step keeps the carry (``new`` where ``m``, else ``old``) and outputs zeros."""
    carry = tree_where(m, new, old)
    return carry, jax.tree_util.tree_map(lambda a: jnp.where(m, a, jnp.zeros_like(a)), carry)


def _steps(T, valid, reverse):
    """Scanned alongside the loop: the step index and, when masked, the validity of the step and
    of the step processed before it."""
    t = jnp.arange(T)
    if valid is None:
        return t, None, None
    false = jnp.zeros_like(valid[:1])
    before = jnp.concatenate([valid[1:], false]) if reverse else jnp.concatenate([false, valid[:-1]])
    return t, valid, before


# --------------------------------------------------------------------------------------------
# Forward


def forward(cell, params, xs, carry0, lengths, *, reverse=False, unroll=1, keep="reserve", remat_chunk=None):
    """Run one layer; return ``(carry_T, ys, residuals)``.

    ``keep`` is ``"reserve"`` (gate activations and carries, for ``backward``), ``"carries"``
    (carries only; the backward recomputes) or ``"none"`` (inference: ``residuals`` is None).
    With ``"carries"`` the input projection is done chunk by chunk too (``remat_chunk`` steps,
    as in ``backward``), so that no ``(T, B, G)`` array exists at any point.
    """
    T = xs.shape[0]
    valid = valid_steps(lengths, T)
    run = _FORWARD[type(cell)]
    if keep == "carries" and type(cell) in _RECOMPUTED:
        size = _chunk_size(remat_chunk, T, xs.shape[1], cell.gate_size)
        carry_T, states = _chunked_forward(cell, params, xs, carry0, valid, reverse, unroll, size, run)
        return carry_T, cell.output(states), Residuals(states, None)
    t, m, _ = _steps(T, valid, reverse)
    carry_T, ys, states, reserve = run(cell, params, xs, carry0, t, m, reverse, unroll)
    if keep == "none":
        return carry_T, ys, None
    return carry_T, ys, Residuals(states, reserve if keep == "reserve" else None)


def _chunked_forward(cell, params, xs, carry0, valid, reverse, unroll, size, run):
    """``run`` over chunks of ``size`` steps; the per-step carries go into ``(T, B, H)`` buffers."""
    T, B = xs.shape[:2]
    count, rest = divmod(T, size)
    zeros = jnp.zeros((T, B, cell.hidden_size), xs.dtype)
    states = jax.tree_util.tree_map(lambda _: zeros, carry0)

    def chunk(s, n, acc):
        carry, states = acc
        sl = lambda a: None if a is None else jax.lax.dynamic_slice_in_dim(a, s, n, axis=0)  # noqa: E731
        carry, _, part, _ = run(cell, params, sl(xs), carry, jnp.arange(n), sl(valid), reverse, unroll)
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


def _vanilla_forward(cell, params, xs, h0, t, m, reverse, unroll):
    xw = xs @ params.w_x  # (T, B, H): one GEMM for all steps (the bias joins in the loop)
    act = ACTIVATIONS[cell.activation]

    def step(h_tm1, inputs):
        xw_t, m_t = inputs
        h = act((xw_t + params.b) + h_tm1 @ params.w_h)
        return (h, h) if m_t is None else _masked(m_t[:, None], h, h_tm1)

    h_T, hs = jax.lax.scan(step, h0, (xw, m), reverse=reverse, unroll=unroll)
    return h_T, hs, hs, None


def _lstm_forward(cell, params, xs, carry0, t, m, reverse, unroll):
    buf = xs @ params.w_x  # (T, B, 4H): one GEMM; becomes the reserve
    t_next = (lambda t: t - 1) if reverse else (lambda t: t + 1)

    def step(state, inputs):
        (h_tm1, c_tm1), buf, xw_t = state
        t, m_t = inputs
        a = (xw_t + params.b) + h_tm1 @ params.w_h  # (B, 4H)
        a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
        i, f, g, o = sigmoid(a_i), sigmoid(a_f), jnp.tanh(a_g), sigmoid(a_o)
        c = f * c_tm1 + i * g
        h = o * jnp.tanh(c)
        buf, xw_next = _write_then_read(buf, jnp.concatenate([i, f, g, o], axis=-1), t, t_next(t))
        new = LSTMCarry(h, c)
        carry, out = (new, new) if m_t is None else _masked(m_t[:, None], new, LSTMCarry(h_tm1, c_tm1))
        return (carry, buf, xw_next), out

    first = _row(buf, xs.shape[0] - 1 if reverse else 0, keepdims=False)
    state0 = (carry0, buf, first)
    (carry_T, buf, _), states = jax.lax.scan(step, state0, (t, m), reverse=reverse, unroll=unroll)
    return carry_T, states.h, states, buf


def _gru_forward(cell, params, xs, h0, t, m, reverse, unroll):
    H = cell.hidden_size
    buf = xs @ params.w_x  # (T, B, 3H): one GEMM; becomes r, z, n
    buf_n = jnp.zeros(xs.shape[:2] + (H,), buf.dtype)  # (T, B, H): h_n of every step
    t_next = (lambda t: t - 1) if reverse else (lambda t: t + 1)

    def step(state, inputs):
        h_tm1, bufs, (xw_t, _) = state
        t, m_t = inputs
        x_r, x_z, x_n = jnp.split(xw_t + params.b_x, 3, axis=-1)
        hp = h_tm1 @ params.w_h + params.b_h  # (B, 3H)
        h_r, h_z, h_n = jnp.split(hp, 3, axis=-1)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        h = (1.0 - z) * n + z * h_tm1
        bufs, rows_next = _write_then_read(bufs, (jnp.concatenate([r, z, n], axis=-1), h_n), t, t_next(t))
        h, out = (h, h) if m_t is None else _masked(m_t[:, None], h, h_tm1)
        return (h, bufs, rows_next), out

    first = _rows((buf, buf_n), xs.shape[0] - 1 if reverse else 0)
    (h_T, bufs, _), hs = jax.lax.scan(step, (h0, (buf, buf_n), first), (t, m), reverse=reverse, unroll=unroll)
    return h_T, hs, hs, bufs


_FORWARD = {VanillaCell: _vanilla_forward, LSTMCell: _lstm_forward, GRUCell: _gru_forward}


# --------------------------------------------------------------------------------------------
# Backward


REMAT_CHUNK_ELEMENTS = 1 << 20
"""Under ``remat`` the backward recomputes the gate activations chunk by chunk; a chunk holds
at most about this many ``(steps, B, G)`` elements (4 MiB in float32), enough for efficient
GEMMs, and at most an eighth of the sequence, so that a few chunks' temporaries stay well
below the reserve they replace."""


def remat_chunk_steps(num_steps: int, batch: int, gate_size: int) -> int:
    """Steps per recomputed chunk: ``min(REMAT_CHUNK_ELEMENTS / (B·G), ⌈T / 8⌉)``, at least 1."""
    by_size = REMAT_CHUNK_ELEMENTS // max(1, batch * gate_size)
    return max(1, min(by_size, -(-num_steps // 8)))


def _chunk_size(requested, num_steps, batch, gate_size) -> int:
    size = requested or remat_chunk_steps(num_steps, batch, gate_size)
    return max(1, min(int(size), num_steps))


def _start(cell, d_carry, d_y_t, m_t):
    """The carry's cotangent with the output's added (``y_t = h_t``); zero at padded steps,
    where the step did not touch the carry."""
    d_new = LSTMCarry(d_carry.h + d_y_t, d_carry.c) if isinstance(cell, LSTMCell) else d_carry + d_y_t
    if m_t is None:
        return d_new
    return tree_where(m_t[:, None], d_new, tree_zeros_like(d_new))


def _finish(d_carry, d_carry_tm1, m_t, cut_t):
    """Padded steps pass the cotangent through (``carry_t = carry_tm1``); truncation cuts it."""
    if m_t is not None:
        d_carry_tm1 = tree_where(m_t[:, None], d_carry_tm1, d_carry)
    if cut_t is not None:
        d_carry_tm1 = tree_where(cut_t, tree_zeros_like(d_carry_tm1), d_carry_tm1)
    return d_carry_tm1


class _Segment(NamedTuple):
    """A run of consecutive steps for the reverse loop (the whole sequence, or one chunk)."""

    xs: Array  # (n, B, D)
    d_ys: Array  # (n, B, H)
    valid: Array | None  # (n, B) step inside its sequence
    before: Array | None  # (n, B) the step processed before it is inside its sequence
    cuts: Array | None  # (n,) truncation: cut the gradient into the carry entering the step
    states: Any  # carries after each step, (n, B, H) per part
    prev: Any  # carries entering each step, (n, B, H) per part (LSTM ``c``: None = read from states)
    first: Any  # the carry entering the segment's first processed step when none is stored


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
):
    """The backward of ``forward``: ``(d_params, d_xs, d_carry0)``.

    ``residuals`` is what ``forward`` kept; ``d_ys (T, B, H)`` and ``d_carry_T`` are the
    cotangents of the outputs and of the final carry. ``cuts`` (``(T,)`` booleans, see
    ``common.truncation_cuts``) zero the gradient into the carry entering those steps.
    ``need_d_xs=False`` skips the input-gradient GEMM (``d_xs`` is then None).

    When the residuals hold no reserve (``keep="carries"``) the gate activations are recomputed
    chunk by chunk, ``remat_chunk`` steps at a time (default ``remat_chunk_steps``): per chunk,
    two GEMMs rebuild its activations, the reverse loop runs over it, and its weight gradients
    are added up; the peak memory is then the stored carries plus one chunk.
    """
    T = xs.shape[0]
    valid = valid_steps(lengths, T)
    before = None
    if valid is not None:
        false = jnp.zeros_like(valid[:1])
        before = jnp.concatenate([valid[1:], false]) if reverse else jnp.concatenate([false, valid[:-1]])
    cuts = None if cuts is None else jnp.asarray(cuts)
    loop, gradients = _CELLS[type(cell)]
    recompute = _RECOMPUTED.get(type(cell))
    states, reserve = residuals
    if reserve is not None or recompute is None:
        # the whole sequence as one segment; the h entering each step is materialized for the
        # d_w_h GEMM, the LSTM's c is read from the stored carries inside the loop
        h_prev = entering(cell.output(states), cell.output(carry0), valid, reverse)
        prev = LSTMCarry(h_prev, None) if isinstance(cell, LSTMCell) else h_prev
        seg = _Segment(xs, d_ys, valid, before, cuts, states, prev, carry0)
        d_carry0, d_pre = loop(cell, params, seg, reserve, d_carry_T, reverse, unroll)
        d_params, d_xs = gradients(cell, params, seg, d_pre, need_d_xs)
        return d_params, d_xs, d_carry0

    size = _chunk_size(remat_chunk, T, xs.shape[1], cell.gate_size)
    count, rest = divmod(T, size)

    def chunk(s, n, acc):
        """Recompute and run steps ``[s, s + n)``, adding their gradients to ``acc``."""
        d_carry, d_params, d_xs = acc
        sl = lambda a: None if a is None else jax.lax.dynamic_slice_in_dim(a, s, n, axis=0)  # noqa: E731
        entering_rows = lambda st, c0: _entering_rows(st, c0, s, n, before, reverse)  # noqa: E731
        prev = jax.tree_util.tree_map(entering_rows, states, carry0)
        part = jax.tree_util.tree_map(sl, states)
        seg = _Segment(sl(xs), sl(d_ys), sl(valid), sl(before), sl(cuts), part, prev, carry0)
        d_carry, d_pre = loop(cell, params, seg, recompute(cell, params, seg), d_carry, reverse, unroll)
        d_params_c, d_xs_c = gradients(cell, params, seg, d_pre, need_d_xs)
        d_params = jax.tree_util.tree_map(jnp.add, d_params, d_params_c)
        if need_d_xs:
            d_xs = jax.lax.dynamic_update_slice_in_dim(d_xs, d_xs_c, s, axis=0)
        return d_carry, d_params, d_xs

    d_xs = jnp.zeros_like(xs) if need_d_xs else None
    acc = (d_carry_T, tree_zeros_like(params), d_xs)
    # against the forward: a forward layer's backward starts with the last chunk
    acc = _over_chunks(chunk, acc, T, size, count, rest, first_to_last=reverse)
    d_carry0, d_params, d_xs = acc
    return d_params, d_xs, d_carry0


def _entering_rows(states, first, s, n, before, reverse):
    """The carries entering steps ``[s, s + n)``, gathered from the stored carries."""
    T = states.shape[0]
    idx = s + jnp.arange(n) + (1 if reverse else -1)
    rows = jnp.take(states, jnp.clip(idx, 0, T - 1), axis=0)  # (n, B, H)
    has = ((idx >= 0) & (idx <= T - 1))[:, None]
    if before is not None:
        has = has & jax.lax.dynamic_slice_in_dim(before, s, n, axis=0)
    return jnp.where(has[..., None], rows, first[None])


def _entering_row(states, first, t, before_t, reverse):
    """The carry entering step t, read from the stored carries (see ``common.entering``)."""
    T = states.shape[0]
    row = _row(states, jnp.clip(t + 1 if reverse else t - 1, 0, T - 1), keepdims=False)
    has = (t < T - 1) if reverse else (t > 0)
    if before_t is not None:
        has = jnp.logical_and(has, before_t)[:, None]
    return jnp.where(has, row, first)


def _against(reverse):
    """The step the reverse loop visits after step t."""
    return (lambda t: t + 1) if reverse else (lambda t: t - 1)


# -- vanilla: no reserve; the slope comes from h -------------------------------------------


def _vanilla_loop(cell, params, seg, reserve, d_h_T, reverse, unroll):
    slope = ACTIVATION_SLOPES[cell.activation]

    def step(d_h, inputs):
        h, d_y_t, m_t, cut_t = inputs
        d_new = _start(cell, d_h, d_y_t, m_t)
        d_a = d_new * slope(h)  # h = act(a)
        d_h_tm1 = d_a @ params.w_h.T  # a = xp + h_tm1 @ w_h
        return _finish(d_h, d_h_tm1, m_t, cut_t), d_a

    inputs = (seg.states, seg.d_ys, seg.valid, seg.cuts)
    return jax.lax.scan(step, d_h_T, inputs, reverse=not reverse, unroll=unroll)


def _vanilla_gradients(cell, params, seg, d_a, need_d_xs):
    d_params = VanillaParams(
        w_x=outer_sum(seg.xs, d_a),  # xp = xs @ w_x + b
        w_h=outer_sum(seg.prev, d_a),  # a = xp + h_tm1 @ w_h
        b=batch_sum(d_a),
    )
    return d_params, (d_a @ params.w_x.T if need_d_xs else None)


# -- LSTM ----------------------------------------------------------------------------------


def _lstm_recompute(cell, params, seg):
    """The gate activations of a segment from its inputs and entering carries: two GEMMs."""
    a = (seg.xs @ params.w_x + params.b) + seg.prev.h @ params.w_h  # (n, B, 4H)
    a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
    return jnp.concatenate([sigmoid(a_i), sigmoid(a_f), jnp.tanh(a_g), sigmoid(a_o)], axis=-1)


def _lstm_loop(cell, params, seg, buf, d_carry_T, reverse, unroll):
    """The reverse loop over a segment whose gate activations are in ``buf`` ``(n, B, 4H)``;
    returns ``(d_carry0, d_a)`` with ``d_a`` written over ``buf``."""
    cs, c_prev = seg.states.c, seg.prev.c
    n = cs.shape[0]
    t_next = _against(reverse)

    def step(state, inputs):
        d_carry, buf, gates = state
        t, m_t, before_t, cut_t, d_y_t = inputs
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = _row(cs, t, keepdims=False)
        if c_prev is None:
            c_tm1 = _entering_row(cs, seg.first.c, t, before_t, reverse)
        else:
            c_tm1 = _row(c_prev, t, keepdims=False)
        d_h, d_c = _start(cell, d_carry, d_y_t, m_t)
        tanh_c = jnp.tanh(c)
        d_c = d_c + d_h * o * (1.0 - tanh_c * tanh_c)  # h = o * tanh(c): backprop into c
        d_a = jnp.concatenate(
            [
                d_c * g * i * (1.0 - i),  # c = ... + i * g,  i = sigmoid(a_i)
                d_c * c_tm1 * f * (1.0 - f),  # c = f * c_tm1 + ...,  f = sigmoid(a_f)
                d_c * i * (1.0 - g * g),  # c = ... + i * g,  g = tanh(a_g)
                d_h * tanh_c * o * (1.0 - o),  # h = o * tanh(c),  o = sigmoid(a_o)
            ],
            axis=-1,
        )
        d_carry_tm1 = LSTMCarry(
            d_a @ params.w_h.T,  # a = xp + h_tm1 @ w_h
            d_c * f,  # c = f * c_tm1 + ...
        )
        buf, gates = _write_then_read(buf, d_a, t, t_next(t))  # d_a over the spent activations
        return (_finish(d_carry, d_carry_tm1, m_t, cut_t), buf, gates), None

    first = _row(buf, 0 if reverse else n - 1, keepdims=False)
    inputs = (jnp.arange(n), seg.valid, seg.before, seg.cuts, seg.d_ys)
    state0 = (d_carry_T, buf, first)
    (d_carry0, d_a, _), _ = jax.lax.scan(step, state0, inputs, reverse=not reverse, unroll=unroll)
    return d_carry0, d_a


def _lstm_gradients(cell, params, seg, d_a, need_d_xs):
    d_params = LSTMParams(
        w_x=outer_sum(seg.xs, d_a),  # a = xs @ w_x + ...
        w_h=outer_sum(seg.prev.h, d_a),  # a = ... + h_tm1 @ w_h
        b=batch_sum(d_a),  # a = ... + b
    )
    return d_params, (d_a @ params.w_x.T if need_d_xs else None)


# -- GRU -----------------------------------------------------------------------------------


def _gru_recompute(cell, params, seg):
    """``r, z, n`` ``(n, B, 3H)`` and ``h_n`` ``(n, B, H)`` of a segment: two GEMMs."""
    x_r, x_z, x_n = jnp.split(seg.xs @ params.w_x + params.b_x, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(seg.prev @ params.w_h + params.b_h, 3, axis=-1)
    r = sigmoid(x_r + h_r)
    z = sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    return jnp.concatenate([r, z, n], axis=-1), h_n


def _gru_loop(cell, params, seg, reserve, d_h_T, reverse, unroll):
    """The reverse loop over a segment whose ``r, z, n`` and ``h_n`` are in ``reserve``; returns
    ``(d_h0, (d_hp, d_a_n))`` written over the reserve."""
    n_steps = seg.states.shape[0]
    t_next = _against(reverse)

    def step(state, inputs):
        d_h, bufs, (rzn, h_n) = state
        t, m_t, cut_t, d_y_t, h_tm1 = inputs
        r, z, n = jnp.split(rzn, 3, axis=-1)
        d_new = _start(cell, d_h, d_y_t, m_t)
        d_a_n = d_new * (1.0 - z) * (1.0 - n * n)  # h = (1 - z) * n + ...,  n = tanh(x_n + r * h_n)
        d_a_z = d_new * (h_tm1 - n) * z * (1.0 - z)  # h = ... + z * h_tm1,  z = sigmoid(x_z + h_z)
        d_a_r = d_a_n * h_n * r * (1.0 - r)  # n = tanh(x_n + r * h_n),  r = sigmoid(x_r + h_r)
        d_hp = jnp.concatenate([d_a_r, d_a_z, d_a_n * r], axis=-1)  # hp = h_tm1 @ w_h + b_h
        d_h_tm1 = d_new * z + d_hp @ params.w_h.T  # h = ... + z * h_tm1, and through hp
        bufs, rows = _write_then_read(bufs, (d_hp, d_a_n), t, t_next(t))  # over the spent activations
        return (_finish(d_h, d_h_tm1, m_t, cut_t), bufs, rows), None

    first = _rows(reserve, 0 if reverse else n_steps - 1)
    inputs = (jnp.arange(n_steps), seg.valid, seg.cuts, seg.d_ys, seg.prev)
    state0 = (d_h_T, reserve, first)
    (d_h0, d_pre, _), _ = jax.lax.scan(step, state0, inputs, reverse=not reverse, unroll=unroll)
    return d_h0, d_pre


def _gru_gradients(cell, params, seg, d_pre, need_d_xs):
    d_hp, d_a_n = d_pre  # (n, B, 3H), (n, B, H)
    H = cell.hidden_size
    d_xp = jnp.concatenate([d_hp[..., : 2 * H], d_a_n], axis=-1)  # r and z see x and h alike
    d_params = GRUParams(
        w_x=outer_sum(seg.xs, d_xp),  # xp = xs @ w_x + b_x
        w_h=outer_sum(seg.prev, d_hp),  # hp = h_tm1 @ w_h + b_h
        b_x=batch_sum(d_xp),
        b_h=batch_sum(d_hp),
    )
    return d_params, (d_xp @ params.w_x.T if need_d_xs else None)


_CELLS = {
    VanillaCell: (_vanilla_loop, _vanilla_gradients),
    LSTMCell: (_lstm_loop, _lstm_gradients),
    GRUCell: (_gru_loop, _gru_gradients),
}
"""``cell type -> (loop, gradients)``: the reverse loop over a segment, the GEMMs after it."""

_RECOMPUTED = {LSTMCell: _lstm_recompute, GRUCell: _gru_recompute}
"""``cell type -> recompute``: the gate activations of a segment (the vanilla cell has none)."""
