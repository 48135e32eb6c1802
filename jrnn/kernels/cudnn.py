"""``backward="cudnn"``: an LSTM layer run by cuDNN, through ``jax.experimental.rnn``.

cuDNN takes one flat weight vector per network. For a stack of pseudo-layers (layer 0 forward,
layer 0 backward when bidirectional, layer 1 forward, ...) it holds every pseudo-layer's
``W_ih (4H, D_l)`` and ``W_hh (4H, H)``, row-major, in that order, then every pseudo-layer's
``b_ih (4H,)`` and ``b_hh (4H,)`` (``jax.experimental.rnn``'s module docstring). Gate blocks are
``i, f, g, o`` as in jrnn, so one ``LSTMParams(w_x (D, 4H), w_h (H, 4H), b (4H,))`` maps as

    W_ih = w_x.T,  W_hh = w_h.T,  b_ih = b,  b_hh = 0

and back as ``w_x = W_ih.T``, ``w_h = W_hh.T``, ``b = b_ih + b_hh`` (``pack_lstm_weights``,
``unpack_lstm_weights``). The packing is plain array code, so the gradient of the flat vector
flows back to jrnn's parameters by autodiff (``d_b = d_b_ih``).

``scan_cudnn`` runs one direction of one layer as a one-layer cuDNN LSTM: a reverse layer is the
forward one over each sequence flipped within its own length, its outputs flipped back. Lengths
of zero (which cuDNN refuses) run one step whose results are then discarded: such a sequence keeps
its initial carry and outputs zeros, as ``unroll`` defines. cuDNN computes the backward itself;
``unroll`` and ``remat`` do not apply (``remat=True`` is refused). Float32 only
(``jax.experimental.rnn`` has no other dtype); matrix products follow JAX's default matmul
precision (TF32 on GPUs that have it unless ``jax_default_matmul_precision="highest"``), as
jrnn's scans on the same GPU do.

Checks, raised as ``ValueError`` when the layer is traced: an ``LSTMCell`` without
``proj_size``, ``peepholes`` or ``layer_norm`` (cuDNN has a projection, but
``jax.experimental.rnn`` does not expose it); ``seq_lengths`` but no ``mask``; float32; a GPU.
GRU and vanilla cells are refused: ``jax.experimental.rnn`` implements the LSTM only.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jrnn._checks import fail
from jrnn.cells.lstm import LSTMCarry, LSTMCell, LSTMParams
from jrnn.kernels._common import check_common, compute_dtype, flip_within, full_lengths, on_gpu, valid_steps

Array = jax.Array


def pack_lstm_weights(layers: Sequence[LSTMParams]) -> Array:
    """cuDNN's flat weight vector for ``layers``, jrnn ``LSTMParams`` in pseudo-layer order
    (layer 0 forward, layer 0 backward when bidirectional, layer 1 forward, ...)."""
    mats, biases = [], []
    for p in layers:
        mats += [p.w_x.T.reshape(-1), p.w_h.T.reshape(-1)]  # W_ih (4H, D), W_hh (4H, H), row-major
        biases += [p.b, jnp.zeros_like(p.b)]  # b_ih = b, b_hh = 0
    return jnp.concatenate(mats + biases)


def pack_network(model, params) -> Array:
    """cuDNN's flat weights for a whole ``jrnn.RNN`` of plain LSTM cells (readout excluded)."""
    layers = []
    for p in params.layers:
        layers += list(p) if model.bidirectional else [p]
    return pack_lstm_weights(layers)


def unpack_lstm_weights(weights: Array, input_size: int, hidden_size: int, num_layers: int = 1,
                        bidirectional: bool = False) -> list[LSTMParams]:  # fmt: skip
    """jrnn ``LSTMParams`` per pseudo-layer from cuDNN's flat weights (``b = b_ih + b_hh``)."""
    from jax.experimental import rnn

    W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers, bidirectional)
    return [LSTMParams(W_ih[k].T, W_hh[k].T, b_ih[k] + b_hh[k]) for k in range(len(W_ih))]


def cudnn_lstm(x, h_0, c_0, weights, seq_lengths, *, input_size, hidden_size, num_layers, bidirectional):
    """``jax.experimental.rnn.lstm`` (cuDNN): ``(y (B, T, dirs·H), h_n, c_n)``."""
    from jax.experimental import rnn

    return rnn.lstm(x, h_0, c_0, weights, seq_lengths, input_size=input_size, hidden_size=hidden_size,
                    num_layers=num_layers, dropout=0.0, bidirectional=bidirectional)  # fmt: skip


def reference_lstm(x, h_0, c_0, weights, seq_lengths, *, input_size, hidden_size, num_layers, bidirectional):
    """The same function through ``jax.experimental.rnn.lstm_ref``, its plain-scan reference,
    which runs anywhere (the stand-in for cuDNN in CPU tests)."""
    from jax.experimental import rnn

    W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers, bidirectional)
    return rnn.lstm_ref(x, h_0, c_0, W_ih, W_hh, b_ih, b_hh, seq_lengths, input_size, hidden_size, num_layers,
                        0.0, bidirectional)  # fmt: skip


IMPLEMENTATION = {"lstm": cudnn_lstm, "needs_gpu": True}
"""What ``scan_cudnn`` calls, and whether it needs a GPU; tests swap in ``reference_lstm``."""


def check_cudnn(cell, dtype, lengths, remat: bool) -> None:
    """ValueError unless cuDNN can run this layer (module docstring)."""
    check_common("cudnn", cell, lengths, remat, (LSTMCell,))
    if IMPLEMENTATION["needs_gpu"] and not on_gpu():
        fail("backward='cudnn'", "run on a CUDA GPU (cuDNN needs a GPU)", f"JAX backend {jax.default_backend()!r}")
    if jnp.dtype(dtype) != jnp.float32:
        fail("the dtype for backward='cudnn'", "float32 (jax.experimental.rnn's cuDNN LSTM has no other)",
             jnp.dtype(dtype).name)  # fmt: skip


def scan_cudnn(cell, params, xs, carry, lengths, *, reverse=False, unroll=1, remat=False):
    """One LSTM layer by cuDNN (time-major, validated inputs): ``(carry_T, ys (T, B, H))``, the
    values of ``jrnn.scan.scan_autodiff`` (module docstring)."""
    dtype = compute_dtype(xs, params)
    check_cudnn(cell, dtype, lengths, remat)
    xs = xs.astype(dtype)
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    T, B, D = xs.shape
    H = cell.hidden_size
    n = full_lengths(lengths, T, B)
    run = jnp.maximum(n, 1)  # cuDNN refuses empty sequences: run one step, discarded below
    x = flip_within(xs, run) if reverse else xs
    y, h_n, c_n = IMPLEMENTATION["lstm"](
        jnp.swapaxes(x, 0, 1), carry.h[None], carry.c[None], pack_lstm_weights([params]), run,
        input_size=D, hidden_size=H, num_layers=1, bidirectional=False,
    )  # fmt: skip
    ys = jnp.swapaxes(y, 0, 1)  # (T, B, H)
    if reverse:
        ys = flip_within(ys, run)
    ys = jnp.where(valid_steps(n, T)[..., None], ys, jnp.zeros_like(ys))
    empty = (n == 0)[:, None]
    carry_T = LSTMCarry(jnp.where(empty, carry.h, h_n[0]), jnp.where(empty, carry.c, c_n[0]))
    return carry_T, ys
