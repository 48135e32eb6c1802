"""Initializers: small tables looked up by name, shared by every cell.

Input weights are Glorot-uniform; the recurrent matrix ``(H, G)`` is one ``(H, H)`` block per gate
from ``RECURRENT_INITS[recurrent_init]`` with the gain ``recurrent_scale``.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp

Array = jax.Array

RecurrentInit = Literal["orthogonal", "identity", "normal", "uniform"]


def _work_dtype(dtype):
    """Sample in at least float32 (bfloat16 QR and uniform draws are too coarse), float64 if asked."""
    return jnp.promote_types(dtype, jnp.float32)


def _orthogonal(key, n, scale, dtype):
    a = jax.random.normal(key, (n, n), _work_dtype(dtype))
    q, r = jnp.linalg.qr(a)
    q = q * jnp.sign(jnp.diagonal(r))[None, :]  # Haar-uniform (Mezzadri 2007)
    return (scale * q).astype(dtype)


def _identity(key, n, scale, dtype):
    del key
    return (scale * jnp.eye(n)).astype(dtype)


def _normal(key, n, scale, dtype):
    return (scale / math.sqrt(n) * jax.random.normal(key, (n, n), _work_dtype(dtype))).astype(dtype)


def _uniform(key, n, scale, dtype):
    bound = scale / math.sqrt(n)
    return jax.random.uniform(key, (n, n), _work_dtype(dtype), -bound, bound).astype(dtype)


RECURRENT_INITS: dict[str, Callable[..., Array]] = {
    "orthogonal": _orthogonal,
    "identity": _identity,
    "normal": _normal,
    "uniform": _uniform,
}
"""``name -> f(key, H, scale, dtype) -> (H, H)``; one block per gate, concatenated along columns."""


def glorot_uniform(key, fan_in: int, fan_out: int, dtype=jnp.float32) -> Array:
    """Glorot/Xavier uniform ``(fan_in, fan_out)``: ``U(±sqrt(6 / (fan_in + fan_out)))``."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, (fan_in, fan_out), _work_dtype(dtype), -bound, bound).astype(dtype)


def recurrent_matrix(key, hidden_size: int, num_blocks: int, init: str, scale: float, dtype) -> Array:
    """``(H, num_blocks·H)``: one ``(H, H)`` block per gate from ``RECURRENT_INITS[init]``."""
    keys = jax.random.split(key, num_blocks)
    blocks = [RECURRENT_INITS[init](k, hidden_size, scale, dtype) for k in keys]
    return jnp.concatenate(blocks, axis=1)


def orthogonal_full(key, rows: int, cols: int, dtype) -> Array:
    """A ``(rows, cols)`` matrix with orthonormal rows or columns (whichever are fewer), Keras'
    ``Orthogonal`` initializer over the whole matrix (not per gate block)."""
    a = jax.random.normal(key, (max(rows, cols), min(rows, cols)), _work_dtype(dtype))
    q, r = jnp.linalg.qr(a)
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    return (q.T if rows < cols else q).astype(dtype)


def torch_uniform(key, shape, hidden_size: int, dtype) -> Array:
    """PyTorch's recurrent-layer default: ``U(±1/sqrt(hidden_size))``."""
    bound = 1.0 / math.sqrt(hidden_size)
    return jax.random.uniform(key, shape, _work_dtype(dtype), -bound, bound).astype(dtype)


InitPreset = Literal["default", "torch", "keras"]
INIT_PRESETS = ("default", "torch", "keras")
"""``init=`` presets of ``Cell.init`` / ``RNN.init``:

- ``"default"``: Glorot-uniform ``w_x``, ``w_h`` per gate block from ``recurrent_init`` with the
  gain ``recurrent_scale``, zero biases (the LSTM's ``forget_bias`` in its f block);
- ``"torch"``: every weight and bias ``U(±1/√H)`` as ``torch.nn.RNN/LSTM/GRU`` draw them (PyTorch's
  ``bias_ih`` and ``bias_hh`` each, so a summed bias ``b`` is their sum; no forget bias);
- ``"keras"``: Keras' defaults: Glorot-uniform ``w_x``, ``w_h`` orthogonal as a whole matrix, zero
  biases with the LSTM's unit forget bias (its ``forget_bias``, 1.0 by default)."""
