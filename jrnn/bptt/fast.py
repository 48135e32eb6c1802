"""The fast form of the hand-written backward (the shape of cuDNN's and oneDNN's RNN kernels).

Forward (``forward``):

- the input projection of every step is one GEMM before the loop, ``xp = xs @ w_x + b``
  ``(T, B, G)``;
- the loop does the recurrent product and the gate arithmetic, and writes each step's gate
  activations back over that step's row of ``xp`` (in place: the projection of step t is dead
  once step t has run), so the activations of all steps cost no memory beyond ``xp``'s;
- it emits the carry after each step (zero at padded steps).

What the backward keeps (the *reserve*, as cuDNN calls it): the gate activations in the ``xp``
buffer (LSTM: ``i, f, g, o``; GRU: ``r, z, n`` plus ``h_n = h w_hn + b_hn`` in a ``(T, B, H)``
buffer), and the per-step carries (``h`` = the outputs; LSTM also ``c``). The vanilla cell keeps
only ``h``: its slope comes from its output, ``tanh' = 1 - h²``. With ``remat=True`` only the
carries are kept and the backward recomputes the gate activations first, in one batched pass
(two GEMMs over ``T·B`` rows: ``xs @ w_x + h_prev @ w_h``).

Backward (``backward``):

- a reverse loop (``lax.scan``) whose state is ``d_carry``; per step it does the elementwise gate
  derivatives and one ``(B, G) @ (G, H)`` product into the previous carry, and writes the step's
  pre-activation gradients ``d_a`` over the step's row of the reserve (in place again);
- after the loop, ``d_w_x = Σ_t x_tᵀ d_a_t``, ``d_w_h = Σ_t h_{t-1}ᵀ d_a_t``, ``d_b = Σ d_a`` and
  ``d_xs = d_a @ w_xᵀ`` are single GEMMs (or sums) over ``T·B`` rows.

Everything here is time-major (``xs (T, B, D)``) and already validated.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jrnn.bptt.common import batch_sum, entering, outer_sum, tree_where, tree_zeros_like, valid_steps
from jrnn.bptt.steps import ACTIVATION_SLOPES
from jrnn.cells import ACTIVATIONS, GRUCell, GRUParams, LSTMCarry, LSTMCell, LSTMParams, VanillaCell, VanillaParams

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


def _entering_row(states, first, t, before_t, reverse):
    """The carry that entered step t, read from the stored carries (see ``common.entering``)."""
    T = states.shape[0]
    s = jnp.clip(t + 1 if reverse else t - 1, 0, T - 1)
    row = _row(states, s, keepdims=False)
    has = (t < T - 1) if reverse else (t > 0)
    if before_t is not None:
        has = jnp.logical_and(has, before_t)[:, None]
    return jnp.where(has, row, first)


# --------------------------------------------------------------------------------------------
# Forward


def forward(cell, params, xs, carry0, lengths, *, reverse=False, unroll=1, keep="reserve"):
    """Run one layer; return ``(carry_T, ys, residuals)``.

    ``keep`` is ``"reserve"`` (gate activations and carries, for ``backward``), ``"carries"``
    (carries only; the backward recomputes) or ``"none"`` (inference: ``residuals`` is None).
    """
    T = xs.shape[0]
    valid = valid_steps(lengths, T)
    t, m, _ = _steps(T, valid, reverse)
    carry_T, ys, states, reserve = _FORWARD[type(cell)](cell, params, xs, carry0, t, m, reverse, unroll)
    if keep == "none":
        return carry_T, ys, None
    return carry_T, ys, Residuals(states, reserve if keep == "reserve" else None)


def _vanilla_forward(cell, params, xs, h0, t, m, reverse, unroll):
    xp = cell.project_inputs(params, xs)  # (T, B, H): one GEMM for all steps
    act = ACTIVATIONS[cell.activation]

    def step(h_tm1, inputs):
        xp_t, m_t = inputs
        h = act(xp_t + h_tm1 @ params.w_h)
        return (h, h) if m_t is None else _masked(m_t[:, None], h, h_tm1)

    h_T, hs = jax.lax.scan(step, h0, (xp, m), reverse=reverse, unroll=unroll)
    return h_T, hs, hs, None


def _lstm_forward(cell, params, xs, carry0, t, m, reverse, unroll):
    buf = cell.project_inputs(params, xs)  # (T, B, 4H): one GEMM; becomes the reserve

    def step(state, inputs):
        (h_tm1, c_tm1), buf = state
        t, m_t = inputs
        a = _row(buf, t, keepdims=False) + h_tm1 @ params.w_h  # (B, 4H)
        a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
        i, f, g, o = sigmoid(a_i), sigmoid(a_f), jnp.tanh(a_g), sigmoid(a_o)
        c = f * c_tm1 + i * g
        h = o * jnp.tanh(c)
        buf = _put(buf, jnp.concatenate([i, f, g, o], axis=-1), t, 0)  # keep the activations
        new = LSTMCarry(h, c)
        carry, out = (new, new) if m_t is None else _masked(m_t[:, None], new, LSTMCarry(h_tm1, c_tm1))
        return (carry, buf), out

    (carry_T, buf), states = jax.lax.scan(step, (carry0, buf), (t, m), reverse=reverse, unroll=unroll)
    return carry_T, states.h, states, buf


def _gru_forward(cell, params, xs, h0, t, m, reverse, unroll):
    H = cell.hidden_size
    buf = cell.project_inputs(params, xs)  # (T, B, 3H): one GEMM; becomes r, z, n
    buf_n = jnp.zeros(xs.shape[:2] + (H,), buf.dtype)  # (T, B, H): h_n of every step

    def step(state, inputs):
        h_tm1, buf, buf_n = state
        t, m_t = inputs
        x_r, x_z, x_n = jnp.split(_row(buf, t, keepdims=False), 3, axis=-1)
        hp = h_tm1 @ params.w_h + params.b_h  # (B, 3H)
        h_r, h_z, h_n = jnp.split(hp, 3, axis=-1)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        h = (1.0 - z) * n + z * h_tm1
        buf = _put(buf, jnp.concatenate([r, z, n], axis=-1), t, 0)
        buf_n = _put(buf_n, h_n, t, 0)
        h, out = (h, h) if m_t is None else _masked(m_t[:, None], h, h_tm1)
        return (h, buf, buf_n), out

    (h_T, buf, buf_n), hs = jax.lax.scan(step, (h0, buf, buf_n), (t, m), reverse=reverse, unroll=unroll)
    return h_T, hs, hs, (buf, buf_n)


_FORWARD = {VanillaCell: _vanilla_forward, LSTMCell: _lstm_forward, GRUCell: _gru_forward}


# --------------------------------------------------------------------------------------------
# Recompute (remat): the reserve from the stored carries, in one batched pass


def _lstm_recompute(cell, params, xs, states, prev):
    a = cell.project_inputs(params, xs) + prev.h @ params.w_h  # (T, B, 4H): two GEMMs, all steps
    a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
    return jnp.concatenate([sigmoid(a_i), sigmoid(a_f), jnp.tanh(a_g), sigmoid(a_o)], axis=-1)


def _gru_recompute(cell, params, xs, states, h_prev):
    x_r, x_z, x_n = jnp.split(cell.project_inputs(params, xs), 3, axis=-1)
    h_r, h_z, h_n = jnp.split(h_prev @ params.w_h + params.b_h, 3, axis=-1)
    r = sigmoid(x_r + h_r)
    z = sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    return jnp.concatenate([r, z, n], axis=-1), h_n


# --------------------------------------------------------------------------------------------
# Backward


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


def backward(
    cell, params, xs, carry0, lengths, residuals, d_ys, d_carry_T, *, reverse=False, unroll=1, cuts=None, need_d_xs=True
):
    """The backward of ``forward``: ``(d_params, d_xs, d_carry0)``.

    ``residuals`` is what ``forward`` kept; ``d_ys (T, B, H)`` and ``d_carry_T`` are the
    cotangents of the outputs and of the final carry. ``cuts`` (``(T,)`` booleans, see
    ``common.truncation_cuts``) zero the gradient into the carry entering those steps.
    ``need_d_xs=False`` skips the input-gradient GEMM (``d_xs`` is then None).
    """
    T = xs.shape[0]
    valid = valid_steps(lengths, T)
    steps = (*_steps(T, valid, reverse), None if cuts is None else jnp.asarray(cuts))
    return _BACKWARD[type(cell)](
        cell, params, xs, carry0, valid, residuals, d_ys, d_carry_T, steps, reverse, unroll, need_d_xs
    )


def _vanilla_backward(cell, params, xs, h0, valid, residuals, d_ys, d_h_T, steps, reverse, unroll, need_d_xs):
    hs = residuals.states
    slope = ACTIVATION_SLOPES[cell.activation]
    _, m, _, cuts = steps

    def step(d_h, inputs):
        h, d_y_t, m_t, cut_t = inputs
        d_new = _start(cell, d_h, d_y_t, m_t)
        d_a = d_new * slope(h)  # h = act(a)
        d_h_tm1 = d_a @ params.w_h.T  # a = xp + h_tm1 @ w_h
        return _finish(d_h, d_h_tm1, m_t, cut_t), d_a

    d_h0, d_a = jax.lax.scan(step, d_h_T, (hs, d_ys, m, cuts), reverse=not reverse, unroll=unroll)
    h_prev = entering(hs, h0, valid, reverse)
    d_params = VanillaParams(
        w_x=outer_sum(xs, d_a),  # xp = xs @ w_x + b
        w_h=outer_sum(h_prev, d_a),  # a = xp + h_tm1 @ w_h
        b=batch_sum(d_a),
    )
    return d_params, (d_a @ params.w_x.T if need_d_xs else None), d_h0


def _lstm_backward(cell, params, xs, carry0, valid, residuals, d_ys, d_carry_T, steps, reverse, unroll, need_d_xs):
    states, buf = residuals
    if buf is None:  # remat: recompute the activations of all steps at once
        prev = jax.tree_util.tree_map(lambda s, c0: entering(s, c0, valid, reverse), states, carry0)
        buf = _lstm_recompute(cell, params, xs, states, prev)
    cs = states.c

    t_next = (lambda t: t + 1) if reverse else (lambda t: t - 1)  # the loop runs against the forward

    def step(state, inputs):
        d_carry, buf, gates = state
        t, m_t, before_t, cut_t, d_y_t = inputs
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = _row(cs, t, keepdims=False)
        c_tm1 = _entering_row(cs, carry0.c, t, before_t, reverse)
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

    t, m, before, cuts = steps
    first = _row(buf, 0 if reverse else xs.shape[0] - 1, keepdims=False)
    (d_carry0, d_a, _), _ = jax.lax.scan(
        step, (d_carry_T, buf, first), (t, m, before, cuts, d_ys), reverse=not reverse, unroll=unroll
    )
    h_prev = entering(states.h, carry0.h, valid, reverse)
    d_params = LSTMParams(w_x=outer_sum(xs, d_a), w_h=outer_sum(h_prev, d_a), b=batch_sum(d_a))
    return d_params, (d_a @ params.w_x.T if need_d_xs else None), d_carry0


def _gru_backward(cell, params, xs, h0, valid, residuals, d_ys, d_h_T, steps, reverse, unroll, need_d_xs):
    hs, reserve = residuals
    if reserve is None:  # remat
        reserve = _gru_recompute(cell, params, xs, hs, entering(hs, h0, valid, reverse))
    buf, buf_n = reserve  # (T, B, 3H) r, z, n and (T, B, H) h_n

    t_next = (lambda t: t + 1) if reverse else (lambda t: t - 1)  # the loop runs against the forward

    def step(state, inputs):
        d_h, bufs, (rzn, h_n) = state
        t, m_t, before_t, cut_t, d_y_t = inputs
        r, z, n = jnp.split(rzn, 3, axis=-1)
        h_tm1 = _entering_row(hs, h0, t, before_t, reverse)
        d_new = _start(cell, d_h, d_y_t, m_t)
        d_a_n = d_new * (1.0 - z) * (1.0 - n * n)  # h = (1 - z) * n + ...,  n = tanh(x_n + r * h_n)
        d_a_z = d_new * (h_tm1 - n) * z * (1.0 - z)  # h = ... + z * h_tm1,  z = sigmoid(x_z + h_z)
        d_a_r = d_a_n * h_n * r * (1.0 - r)  # n = tanh(x_n + r * h_n),  r = sigmoid(x_r + h_r)
        d_hp = jnp.concatenate([d_a_r, d_a_z, d_a_n * r], axis=-1)  # hp = h_tm1 @ w_h + b_h
        d_h_tm1 = d_new * z + d_hp @ params.w_h.T  # h = ... + z * h_tm1, and through hp
        bufs, rows = _write_then_read(bufs, (d_hp, d_a_n), t, t_next(t))  # over the spent activations
        return (_finish(d_h, d_h_tm1, m_t, cut_t), bufs, rows), None

    t, m, before, cuts = steps
    first = _rows((buf, buf_n), 0 if reverse else xs.shape[0] - 1)
    (d_h0, (d_hp, d_a_n), _), _ = jax.lax.scan(
        step, (d_h_T, (buf, buf_n), first), (t, m, before, cuts, d_ys), reverse=not reverse, unroll=unroll
    )
    H = cell.hidden_size
    d_xp = jnp.concatenate([d_hp[..., : 2 * H], d_a_n], axis=-1)  # r and z see x and h alike
    h_prev = entering(hs, h0, valid, reverse)
    d_params = GRUParams(
        w_x=outer_sum(xs, d_xp),  # xp = xs @ w_x + b_x
        w_h=outer_sum(h_prev, d_hp),  # hp = h_tm1 @ w_h + b_h
        b_x=batch_sum(d_xp),
        b_h=batch_sum(d_hp),
    )
    return d_params, (d_xp @ params.w_x.T if need_d_xs else None), d_h0


_BACKWARD = {VanillaCell: _vanilla_backward, LSTMCell: _lstm_backward, GRUCell: _gru_backward}
