"""Independent NumPy (float64) references for the cells and the network, one gate at a time.

Written from the formulas in DESIGN.md, not from jrnn's code: per-gate weight slices, a plain
Python loop over time, explicit masking and reversal within each sequence's valid length.
"""

from __future__ import annotations

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


NP_ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda a: np.maximum(a, 0.0),
    "sigmoid": sigmoid,
    "linear": lambda a: a,
}


def _np(p):
    """The params' fields as float64 arrays, in order; the options' None fields left out."""
    return tuple(np.asarray(a, np.float64) for a in p if a is not None)


def vanilla_step(p, h, x, activation="tanh"):
    w_x, w_h, b = _np(p)
    return NP_ACTIVATIONS[activation](x @ w_x + h @ w_h + b)


def lstm_step(p, h, c, x):
    w_x, w_h, b = _np(p)
    H = w_h.shape[0]
    blk = lambda k: slice(k * H, (k + 1) * H)  # noqa: E731
    i = sigmoid(x @ w_x[:, blk(0)] + h @ w_h[:, blk(0)] + b[blk(0)])
    f = sigmoid(x @ w_x[:, blk(1)] + h @ w_h[:, blk(1)] + b[blk(1)])
    g = np.tanh(x @ w_x[:, blk(2)] + h @ w_h[:, blk(2)] + b[blk(2)])
    o = sigmoid(x @ w_x[:, blk(3)] + h @ w_h[:, blk(3)] + b[blk(3)])
    c_new = f * c + i * g
    return o * np.tanh(c_new), c_new


def gru_step(p, h, x):
    w_x, w_h, b_x, b_h = _np(p)
    H = w_h.shape[0]
    blk = lambda k: slice(k * H, (k + 1) * H)  # noqa: E731
    r = sigmoid(x @ w_x[:, blk(0)] + b_x[blk(0)] + h @ w_h[:, blk(0)] + b_h[blk(0)])
    z = sigmoid(x @ w_x[:, blk(1)] + b_x[blk(1)] + h @ w_h[:, blk(1)] + b_h[blk(1)])
    n = np.tanh(x @ w_x[:, blk(2)] + b_x[blk(2)] + r * (h @ w_h[:, blk(2)] + b_h[blk(2)]))
    return (1.0 - z) * n + z * h


def layer(kind, p, xs, h0, c0=None, lengths=None, reverse=False, activation="tanh"):
    """One layer over batch-major ``xs (B, T, D)``; returns ``(ys (B, T, H), h_T, c_T)``."""
    xs = np.asarray(xs, np.float64)
    B, T, _ = xs.shape
    H = np.asarray(p.w_h).shape[0]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    ys = np.zeros((B, T, H))
    h_T = np.array(h0, np.float64, copy=True)
    c_T = None if c0 is None else np.array(c0, np.float64, copy=True)
    for b in range(B):
        h = h_T[b].copy()
        c = None if c0 is None else c_T[b].copy()
        L = int(lengths[b])
        order = range(L - 1, -1, -1) if reverse else range(L)
        for t in order:
            x = xs[b, t]
            if kind == "vanilla":
                h = vanilla_step(p, h, x, activation)
            elif kind == "lstm":
                h, c = lstm_step(p, h, c, x)
            else:
                h = gru_step(p, h, x)
            ys[b, t] = h
        h_T[b] = h
        if c is not None:
            c_T[b] = c
    return ys, h_T, c_T


def network(kind, params, xs, lengths=None, bidirectional=False, activation="tanh", carries=None, masks=None):
    """A stacked network; ``carries`` as jrnn's (LSTMCarry or h per direction); ``masks[l]`` a
    ``(B, H_out)`` dropout multiplier after layer l. Returns ``(ys, [(h, c) per direction])``."""
    xs = np.asarray(xs, np.float64)
    B = xs.shape[0]
    h_in = xs
    finals = []
    for l, p in enumerate(params.layers):
        dirs = p if bidirectional else (p,)
        outs = []
        for d, pd in enumerate(dirs):
            H = np.asarray(pd.w_h).shape[0]
            if carries is None:
                h0, c0 = np.zeros((B, H)), (np.zeros((B, H)) if kind == "lstm" else None)
            else:
                cd = carries[l][d] if bidirectional else carries[l]
                h0, c0 = (np.asarray(cd.h), np.asarray(cd.c)) if kind == "lstm" else (np.asarray(cd), None)
            ys, h_T, c_T = layer(kind, pd, h_in, h0, c0, lengths, reverse=(d == 1), activation=activation)
            outs.append(ys)
            finals.append((h_T, c_T))
        h_in = np.concatenate(outs, axis=-1)
        if masks is not None and l < len(params.layers) - 1:
            h_in = h_in * np.asarray(masks[l])[:, None, :]
    ys = h_in
    if params.readout is not None:
        ys = ys @ np.asarray(params.readout.w, np.float64) + np.asarray(params.readout.b, np.float64)
        if lengths is not None:
            T = xs.shape[1]
            ys = ys * (np.arange(T)[None, :] < np.asarray(lengths)[:, None])[..., None]
    return ys, finals
