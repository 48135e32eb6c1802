"""The readable reference: one step forward that caches what the backward needs, one step backward
that mirrors it line by line (min-char-rnn's form), and a layer that runs them step by step.

For every cell::

    carry, y_t, cache = step_forward(cell, params, carry_tm1, x_t)
    d_x_t, d_carry_tm1, d_params_t = step_backward(cell, params, cache, d_carry)

``d_carry`` is the cotangent of the carry after the step, the output's included (``y_t`` is the
carry's ``h``, so the caller adds ``d_y_t`` into ``d_h``). ``d_params_t`` holds this step's
``d_w_x, d_w_h, d_b`` (GRU: ``d_b_x, d_b_h``) summed over the batch; the layer sums them over
time. Each backward line names, in its comment, the forward line it inverts. Cotangents carry a
``d_`` prefix. ``x_t`` is ``(*batch, D)`` and the carry ``(*batch, H)``.

Activation derivatives are written in terms of the activation's output, so the backward reuses
the forward's values: ``tanh' = 1 - tanh²``, ``σ' = σ (1 - σ)``, ``relu' = [h > 0]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jrnn.bptt.common import (
    batch_sum,
    outer_sum,
    tree_cast_like,
    tree_where,
    tree_zeros_like,
    truncation_cuts,
    valid_steps,
)
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

ACTIVATION_SLOPES = {
    "tanh": lambda h: 1.0 - h * h,  # h = tanh(a)
    "relu": lambda h: (h > 0).astype(h.dtype),  # h = max(a, 0); slope 0 at a = 0, as jax.nn.relu
    "sigmoid": lambda h: h * (1.0 - h),  # h = σ(a)
    "linear": lambda h: jnp.ones_like(h),  # h = a
}
"""``name -> slope(h)``: the activation's derivative ``act'(a)`` written with its output ``h = act(a)``."""


# --------------------------------------------------------------------------------------------
# Vanilla (Elman) cell


def vanilla_step_forward(cell: VanillaCell, params: VanillaParams, h_tm1, x_t):
    """``h = act(x_t @ w_x + h_tm1 @ w_h + b)``; the cache keeps ``x_t, h_tm1, h``."""
    a = x_t @ params.w_x + h_tm1 @ params.w_h + params.b  # (*batch, H) pre-activation
    h = ACTIVATIONS[cell.activation](a)
    return h, h, (x_t, h_tm1, h)


def vanilla_step_backward(cell: VanillaCell, params: VanillaParams, cache, d_h):
    x_t, h_tm1, h = cache
    d_a = d_h * ACTIVATION_SLOPES[cell.activation](h)  # h = act(a): backprop through the nonlinearity
    d_b = batch_sum(d_a)  # a = ... + b
    d_w_h = outer_sum(h_tm1, d_a)  # a = ... + h_tm1 @ w_h
    d_h_tm1 = d_a @ params.w_h.T  # a = ... + h_tm1 @ w_h: backprop into h
    d_w_x = outer_sum(x_t, d_a)  # a = x_t @ w_x + ...
    d_x = d_a @ params.w_x.T  # a = x_t @ w_x + ...: backprop into x
    return d_x, d_h_tm1, VanillaParams(d_w_x, d_w_h, d_b)


# --------------------------------------------------------------------------------------------
# LSTM cell, gates i, f, g, o


def lstm_step_forward(cell: LSTMCell, params: LSTMParams, carry_tm1, x_t):
    """One LSTM step; the cache keeps the inputs, the gate activations and ``tanh(c)``."""
    h_tm1, c_tm1 = carry_tm1
    a = x_t @ params.w_x + h_tm1 @ params.w_h + params.b  # (*batch, 4H) pre-activations
    a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
    i = sigmoid(a_i)  # input gate
    f = sigmoid(a_f)  # forget gate
    g = jnp.tanh(a_g)  # candidate
    o = sigmoid(a_o)  # output gate
    c = f * c_tm1 + i * g
    tanh_c = jnp.tanh(c)
    h = o * tanh_c
    return LSTMCarry(h, c), h, (x_t, h_tm1, c_tm1, i, f, g, o, tanh_c)


def lstm_step_backward(cell: LSTMCell, params: LSTMParams, cache, d_carry):
    x_t, h_tm1, c_tm1, i, f, g, o, tanh_c = cache
    d_h, d_c = d_carry  # d_c: what flows back from the next step into c
    d_o = d_h * tanh_c  # h = o * tanh_c
    d_tanh_c = d_h * o  # h = o * tanh_c
    d_c = d_c + d_tanh_c * (1.0 - tanh_c * tanh_c)  # tanh_c = tanh(c): backprop into c
    d_f = d_c * c_tm1  # c = f * c_tm1 + ...
    d_c_tm1 = d_c * f  # c = f * c_tm1 + ...: backprop into the previous cell state
    d_i = d_c * g  # c = ... + i * g
    d_g = d_c * i  # c = ... + i * g
    d_a_o = d_o * o * (1.0 - o)  # o = sigmoid(a_o)
    d_a_g = d_g * (1.0 - g * g)  # g = tanh(a_g)
    d_a_f = d_f * f * (1.0 - f)  # f = sigmoid(a_f)
    d_a_i = d_i * i * (1.0 - i)  # i = sigmoid(a_i)
    d_a = jnp.concatenate([d_a_i, d_a_f, d_a_g, d_a_o], axis=-1)  # a_i, a_f, a_g, a_o = split(a)
    d_b = batch_sum(d_a)  # a = ... + b
    d_w_h = outer_sum(h_tm1, d_a)  # a = ... + h_tm1 @ w_h + ...
    d_h_tm1 = d_a @ params.w_h.T  # a = ... + h_tm1 @ w_h + ...: backprop into h
    d_w_x = outer_sum(x_t, d_a)  # a = x_t @ w_x + ...
    d_x = d_a @ params.w_x.T  # a = x_t @ w_x + ...: backprop into x
    return d_x, LSTMCarry(d_h_tm1, d_c_tm1), LSTMParams(d_w_x, d_w_h, d_b)


# --------------------------------------------------------------------------------------------
# GRU cell (reset-after form), blocks r, z, n


def gru_step_forward(cell: GRUCell, params: GRUParams, h_tm1, x_t):
    """One GRU step; the cache keeps the inputs, the gates and ``h_tm1 @ w_hn + b_hn``."""
    xp = x_t @ params.w_x + params.b_x  # (*batch, 3H) input part
    hp = h_tm1 @ params.w_h + params.b_h  # (*batch, 3H) recurrent part
    x_r, x_z, x_n = jnp.split(xp, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(hp, 3, axis=-1)
    r = sigmoid(x_r + h_r)  # reset gate
    z = sigmoid(x_z + h_z)  # update gate
    n = jnp.tanh(x_n + r * h_n)  # candidate
    h = (1.0 - z) * n + z * h_tm1
    return h, h, (x_t, h_tm1, r, z, n, h_n)


def gru_step_backward(cell: GRUCell, params: GRUParams, cache, d_h):
    x_t, h_tm1, r, z, n, h_n = cache
    d_n = d_h * (1.0 - z)  # h = (1 - z) * n + ...
    d_z = d_h * (h_tm1 - n)  # h = (1 - z) * n + z * h_tm1
    d_h_tm1 = d_h * z  # h = ... + z * h_tm1: backprop into h, the direct path
    d_a_n = d_n * (1.0 - n * n)  # n = tanh(x_n + r * h_n)
    d_r = d_a_n * h_n  # n = tanh(x_n + r * h_n)
    d_h_n = d_a_n * r  # n = tanh(x_n + r * h_n)
    d_x_n = d_a_n  # n = tanh(x_n + r * h_n)
    d_a_z = d_z * z * (1.0 - z)  # z = sigmoid(x_z + h_z)
    d_a_r = d_r * r * (1.0 - r)  # r = sigmoid(x_r + h_r)
    d_hp = jnp.concatenate([d_a_r, d_a_z, d_h_n], axis=-1)  # h_r, h_z, h_n = split(hp)
    d_xp = jnp.concatenate([d_a_r, d_a_z, d_x_n], axis=-1)  # x_r, x_z, x_n = split(xp)
    d_b_h = batch_sum(d_hp)  # hp = ... + b_h
    d_w_h = outer_sum(h_tm1, d_hp)  # hp = h_tm1 @ w_h + ...
    d_h_tm1 = d_h_tm1 + d_hp @ params.w_h.T  # hp = h_tm1 @ w_h + ...: backprop into h, through the gates
    d_b_x = batch_sum(d_xp)  # xp = ... + b_x
    d_w_x = outer_sum(x_t, d_xp)  # xp = x_t @ w_x + ...
    d_x = d_xp @ params.w_x.T  # xp = x_t @ w_x + ...: backprop into x
    return d_x, d_h_tm1, GRUParams(d_w_x, d_w_h, d_b_x, d_b_h)


STEPS = {
    VanillaCell: (vanilla_step_forward, vanilla_step_backward),
    LSTMCell: (lstm_step_forward, lstm_step_backward),
    GRUCell: (gru_step_forward, gru_step_backward),
}
"""``cell type -> (step_forward, step_backward)``."""


def step_forward(cell, params, carry_tm1, x_t):
    """``(carry, y_t, cache)``: one step of ``cell`` keeping what ``step_backward`` needs."""
    return STEPS[type(cell)][0](cell, params, carry_tm1, x_t)


def step_backward(cell, params, cache, d_carry):
    """``(d_x_t, d_carry_tm1, d_params_t)`` from the cache of ``step_forward`` and the carry's
    cotangent (the output's included)."""
    return STEPS[type(cell)][1](cell, params, cache, d_carry)


# --------------------------------------------------------------------------------------------
# A layer, step by step


def _add_output(cell, d_carry, d_y):
    """The output is the carry's ``h``: its cotangent joins the one flowing back through the carry."""
    if isinstance(cell, LSTMCell):
        return LSTMCarry(d_carry.h + d_y, d_carry.c)
    return d_carry + d_y


def layer_vjp(cell, params, xs, carry0, lengths, d_ys, d_carry_T, *, reverse=False, truncation=None):
    """The per-step reference for one layer, time-major: ``xs (T, B, D)``, ``d_ys (T, B, H)``.

    The forward scan keeps every step's cache; the backward scan walks the steps in the opposite
    order, calls ``step_backward`` and sums ``d_params`` over time in its carry. A padded step
    (``t >= lengths[b]``) left the carry unchanged and output zero, so its cotangent passes
    straight through it. ``truncation=k`` zeroes the gradient into the carry at the boundaries of
    ``common.truncation_cuts``. Returns ``(d_params, d_xs, d_carry0)``.
    """
    T = xs.shape[0]
    valid = valid_steps(lengths, T)
    cuts = truncation_cuts(T, truncation, reverse)
    forward, backward = STEPS[type(cell)]

    def step(carry, inputs):
        x_t, m_t = inputs
        new, _, cache = forward(cell, params, carry, x_t)
        if m_t is not None:
            new = tree_where(m_t[:, None], new, carry)  # a padded step keeps the carry
        return new, cache

    _, caches = jax.lax.scan(step, carry0, (xs, valid), reverse=reverse)

    def back_step(acc, inputs):
        d_carry, d_params = acc
        cache, d_y_t, m_t, cut_t = inputs
        d_new = _add_output(cell, d_carry, d_y_t)
        if m_t is not None:
            m = m_t[:, None]
            d_new = tree_where(m, d_new, tree_zeros_like(d_new))  # padded: no gradient into the cell
        d_x_t, d_carry_tm1, d_params_t = backward(cell, params, cache, d_new)
        if m_t is not None:
            d_carry_tm1 = tree_where(m, d_carry_tm1, d_carry)  # padded: carry_t = carry_tm1
        if cut_t is not None:
            d_carry_tm1 = tree_where(cut_t, tree_zeros_like(d_carry_tm1), d_carry_tm1)  # truncation
        d_params = jax.tree_util.tree_map(jnp.add, d_params, d_params_t)  # gradients summed over time
        return (d_carry_tm1, d_params), d_x_t

    acc0 = (d_carry_T, tree_zeros_like(params))
    inputs = (caches, d_ys, valid, None if cuts is None else jnp.asarray(cuts))
    (d_carry0, d_params), d_xs = jax.lax.scan(back_step, acc0, inputs, reverse=not reverse)
    return tree_cast_like(d_params, params), d_xs, d_carry0
