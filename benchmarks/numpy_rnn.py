"""A from-scratch NumPy RNN with hand-written BPTT, in the style of the project's seed.

Each cell has a step forward that returns ``(next state, cache)`` and a step backward that
returns ``dx, dprev_h, (dprev_c,) dWx, dWh, db``; a layer loops over time forward, then backward
accumulating the weight gradients step by step, as the seed does (no hoisted input projection, no
batched weight gradient). Weights use jrnn's layout (``x @ Wx + b``, gates ``i, f, g, o`` and
``r, z, n``), so jrnn parameters convert by ``np.asarray``. This is a peer for the speed
benchmark, not library code.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------------------------
# Vanilla: h' = tanh(x Wx + h Wh + b)


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    z = np.matmul(x, Wx) + np.matmul(prev_h, Wh) + b
    next_h = np.tanh(z)
    dtanh = 1.0 - next_h * next_h
    cache = (x, prev_h, Wx, Wh, dtanh)
    return next_h, cache


def rnn_step_backward(dnext_h, cache):
    x, prev_h, Wx, Wh, dtanh = cache
    dz = dnext_h * dtanh  # backprop through tanh
    dx = np.matmul(dz, Wx.T)
    dprev_h = np.matmul(dz, Wh.T)
    dWx = np.matmul(x.T, dz)
    dWh = np.matmul(prev_h.T, dz)
    db = np.sum(dz, axis=0)
    return dx, dprev_h, dWx, dWh, db


# --------------------------------------------------------------------------------------------
# LSTM: [i f g o] = x Wx + h Wh + b;  c' = σ(f)c + σ(i)tanh(g);  h' = σ(o)tanh(c')


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    H = prev_h.shape[1]
    a = np.matmul(x, Wx) + np.matmul(prev_h, Wh) + b
    i = sigmoid(a[:, :H])
    f = sigmoid(a[:, H : 2 * H])
    g = np.tanh(a[:, 2 * H : 3 * H])
    o = sigmoid(a[:, 3 * H :])
    next_c = f * prev_c + i * g
    tanh_c = np.tanh(next_c)
    next_h = o * tanh_c
    cache = (x, prev_h, prev_c, Wx, Wh, i, f, g, o, tanh_c)
    return next_h, next_c, cache


def lstm_step_backward(dnext_h, dnext_c, cache):
    x, prev_h, prev_c, Wx, Wh, i, f, g, o, tanh_c = cache
    do = dnext_h * tanh_c  # backprop into o from h' = o·tanh(c')
    dc = dnext_c + dnext_h * o * (1.0 - tanh_c * tanh_c)  # backprop into c' through tanh
    di = dc * g  # c' = f·c + i·g
    dg = dc * i
    df = dc * prev_c
    dprev_c = dc * f
    da = np.concatenate(
        [di * i * (1.0 - i), df * f * (1.0 - f), dg * (1.0 - g * g), do * o * (1.0 - o)], axis=1
    )  # backprop through the gate nonlinearities
    dx = np.matmul(da, Wx.T)
    dprev_h = np.matmul(da, Wh.T)
    dWx = np.matmul(x.T, da)
    dWh = np.matmul(prev_h.T, da)
    db = np.sum(da, axis=0)
    return dx, dprev_h, dprev_c, dWx, dWh, db


# --------------------------------------------------------------------------------------------
# GRU (reset-after): r, z = σ(x Wx + bx + h Wh + bh);  n = tanh(x Wxn + bxn + r(h Whn + bhn))


def gru_step_forward(x, prev_h, Wx, Wh, bx, bh):
    H = prev_h.shape[1]
    xp = np.matmul(x, Wx) + bx
    hp = np.matmul(prev_h, Wh) + bh
    r = sigmoid(xp[:, :H] + hp[:, :H])
    z = sigmoid(xp[:, H : 2 * H] + hp[:, H : 2 * H])
    hn = hp[:, 2 * H :]
    n = np.tanh(xp[:, 2 * H :] + r * hn)
    next_h = (1.0 - z) * n + z * prev_h
    cache = (x, prev_h, Wx, Wh, r, z, n, hn)
    return next_h, cache


def gru_step_backward(dnext_h, cache):
    x, prev_h, Wx, Wh, r, z, n, hn = cache
    dn = dnext_h * (1.0 - z)  # h' = (1 - z)·n + z·h
    dz = dnext_h * (prev_h - n)
    dprev_h = dnext_h * z
    dan = dn * (1.0 - n * n)  # backprop through tanh
    dr = dan * hn
    dhn = dan * r
    dar = dr * r * (1.0 - r)  # backprop through the sigmoids
    daz = dz * z * (1.0 - z)
    dxp = np.concatenate([dar, daz, dan], axis=1)
    dhp = np.concatenate([dar, daz, dhn], axis=1)
    dx = np.matmul(dxp, Wx.T)
    dprev_h = dprev_h + np.matmul(dhp, Wh.T)
    dWx = np.matmul(x.T, dxp)
    dWh = np.matmul(prev_h.T, dhp)
    dbx = np.sum(dxp, axis=0)
    dbh = np.sum(dhp, axis=0)
    return dx, dprev_h, dWx, dWh, dbx, dbh


# --------------------------------------------------------------------------------------------
# Layers and the network


def layer_forward(kind, params, xs, reverse=False):
    """``xs (B, T, D)`` -> ``hs (B, T, H)`` and the per-step caches."""
    B, T, _ = xs.shape
    H = params[1].shape[0]
    h = np.zeros((B, H), xs.dtype)
    c = np.zeros((B, H), xs.dtype)
    hs = np.empty((B, T, H), xs.dtype)
    caches = [None] * T
    for t in reversed(range(T)) if reverse else range(T):
        if kind == "lstm":
            h, c, caches[t] = lstm_step_forward(xs[:, t], h, c, *params)
        elif kind == "gru":
            h, caches[t] = gru_step_forward(xs[:, t], h, *params)
        else:
            h, caches[t] = rnn_step_forward(xs[:, t], h, *params)
        hs[:, t] = h
    return hs, caches


def layer_backward(kind, params, caches, dhs, reverse=False):
    """BPTT through one layer: ``dhs (B, T, H)`` -> ``dxs (B, T, D)`` and the parameter grads."""
    B, T, H = dhs.shape
    D = params[0].shape[0]
    grads = [np.zeros_like(p) for p in params]
    dxs = np.empty((B, T, D), dhs.dtype)
    dh_next = np.zeros((B, H), dhs.dtype)
    dc_next = np.zeros((B, H), dhs.dtype)
    for t in range(T) if reverse else reversed(range(T)):
        dh = dhs[:, t] + dh_next
        if kind == "lstm":
            dx, dh_next, dc_next, *dps = lstm_step_backward(dh, dc_next, caches[t])
        elif kind == "gru":
            dx, dh_next, *dps = gru_step_backward(dh, caches[t])
        else:
            dx, dh_next, *dps = rnn_step_backward(dh, caches[t])
        dxs[:, t] = dx
        for g, d in zip(grads, dps):
            g += d
    return dxs, grads


def network_forward(kind, layers, xs, bidirectional=False):
    """``layers``: per layer a params tuple, or ``(fwd, bwd)`` tuples when bidirectional."""
    h = xs
    caches = []
    for params in layers:
        if bidirectional:
            h_f, c_f = layer_forward(kind, params[0], h)
            h_b, c_b = layer_forward(kind, params[1], h, reverse=True)
            caches.append((c_f, c_b))
            h = np.concatenate([h_f, h_b], axis=-1)
        else:
            h, c = layer_forward(kind, params, h)
            caches.append(c)
    return h, caches


def network_backward(kind, layers, caches, dys, bidirectional=False):
    """Gradients for ``layers`` (same nesting) from ``dys``, the loss gradient at the top output."""
    grads = [None] * len(layers)
    d = dys
    for layer in reversed(range(len(layers))):
        params = layers[layer]
        if bidirectional:
            H = params[0][1].shape[0]
            dx_f, g_f = layer_backward(kind, params[0], caches[layer][0], d[..., :H])
            dx_b, g_b = layer_backward(kind, params[1], caches[layer][1], d[..., H:], reverse=True)
            grads[layer] = (g_f, g_b)
            d = dx_f + dx_b
        else:
            d, grads[layer] = layer_backward(kind, params, caches[layer], d)
    return grads


def mse_value_and_grad(kind, layers, xs, target, bidirectional=False):
    """``mean((ys - target)^2)`` and its gradient for every weight, by hand BPTT."""
    ys, caches = network_forward(kind, layers, xs, bidirectional)
    diff = ys - target
    loss = float(np.mean(diff * diff))
    dys = (2.0 / diff.size) * diff  # backprop through the mean of squares
    return loss, network_backward(kind, layers, caches, dys.astype(ys.dtype), bidirectional)
