"""The minLSTM cell (Feng et al. 2024, "Were RNNs all we needed?"): an LSTM whose gates read the input
only and whose forget and input gates are normalized to sum to one, so that its recurrence is
linear in the carry and a sequence is one exact parallel scan."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from jrnn.cells.base import Cell, batch_sum, outer_sum, sigmoid_slope
from jrnn.cells.init import glorot_uniform
from jrnn.cells.mingru import g, g_slope, log_g

Array = jax.Array

sigmoid = jax.nn.sigmoid
softplus = jax.nn.softplus


class MinLSTMParams(NamedTuple):
    """minLSTM parameters, blocks ``f, i, h``: ``w_x (D, 3H)``, ``b (3H,)``. No recurrent weights."""

    w_x: Array
    b: Array


@dataclasses.dataclass(frozen=True)
class MinLSTMCell(Cell):
    """minLSTM cell (Feng et al. 2024), blocks ``f, i, h``::

        [a_f a_i a_h] = x w_x + b
        f = σ(a_f);   i = σ(a_i);   h̃ = g(a_h)        (g as in the minGRU: positive)
        f' = f / (f + i);   i' = i / (f + i)
        h' = f'·h + i'·h̃

    With ``d = log(i / f) = softplus(−a_f) − softplus(−a_i)`` the normalized gates are
    ``f' = σ(−d)`` and ``i' = σ(d)``, which is how they are computed (no division). The carry is
    ``h`` alone (the minLSTM has no separate cell memory) and the output is ``h'``. As for the
    minGRU, ``h' = a_t·h + b_t`` depends on ``h`` linearly with input-only coefficients, so the
    sequence is one exact associative scan, run in log space by ``jrnn.parallel``
    (``log_coefficients``), and the sequential step gives the same numbers. ``recurrent_init``
    and ``recurrent_scale`` do not apply.

    The step's residuals are its pre-activations ``[a_f a_i a_h]`` ``(*batch, 3H)``; the step
    backward recomputes the gates from them and returns ``d_pre = [d_a_f d_a_i d_a_h]``.
    """

    params_type: ClassVar[type] = MinLSTMParams
    gate_names: ClassVar[tuple[str, ...]] = ("f", "i", "h")
    recurrent_product: ClassVar[bool] = False
    """No ``h @ w_h``: recurrent dropout does not apply (``RNN`` refuses ``recurrent_dropout``)."""
    diagonal_jacobian: ClassVar[bool] = True
    """The step Jacobian ``∂h'/∂h = diag(f')`` is diagonal."""

    def _init(self, key, input_size, dtype):
        G = self.gate_size
        return MinLSTMParams(w_x=glorot_uniform(key, input_size, G, dtype), b=jnp.zeros((G,), dtype))

    def param_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        return {"w_x": (input_size, self.gate_size), "b": (self.gate_size,)}

    def forward_step(self, params, h_tm1, xp_t, h_scale=None):
        assert h_scale is None, "no recurrent product for recurrent dropout to scale"
        a_f, a_i, a_h = jnp.split(xp_t, 3, axis=-1)
        d = softplus(-a_f) - softplus(-a_i)  # log(i / f)
        i_n = sigmoid(d)  # i' = i / (f + i);  f' = 1 - i'
        h_tilde = g(a_h)
        h = h_tm1 + i_n * (h_tilde - h_tm1)  # f' * h_tm1 + i' * h̃
        return h, xp_t

    def backward_step(self, params, pre, h_tm1, h, d_h, h_scale=None):
        a_f, a_i, a_h = jnp.split(pre, 3, axis=-1)
        i_n = sigmoid(softplus(-a_f) - softplus(-a_i))  # recompute i' = σ(d)
        h_tilde = g(a_h)
        d_d = d_h * (h_tilde - h_tm1) * sigmoid_slope(i_n)  # h = h_tm1 + i' * (h̃ - h_tm1),  i' = σ(d)
        d_a_f = -d_d * sigmoid(-a_f)  # d = softplus(-a_f) - ...: softplus'(-a_f) = σ(-a_f) = 1 - f
        d_a_i = d_d * sigmoid(-a_i)  # d = ... - softplus(-a_i)
        d_a_h = d_h * i_n * g_slope(a_h)  # h = ... + i' * h̃,  h̃ = g(a_h)
        d_h_tm1 = d_h * (1.0 - i_n)  # h = f' * h_tm1 + ...: backprop into h
        return jnp.concatenate([d_a_f, d_a_i, d_a_h], axis=-1), d_h_tm1

    def param_grads(self, params, xs, h_prev, d_pre):
        return MinLSTMParams(
            w_x=outer_sum(xs, d_pre),  # [a_f a_i a_h] = xs @ w_x + b
            b=batch_sum(d_pre),
        )

    def log_coefficients(self, params, xp):
        """``(log a, log b)`` of ``h' = a·h + b`` from ``xp (..., 3H)``: ``log f' = −softplus(d)``,
        ``log(i'·h̃) = −softplus(−d) + log g(a_h)``."""
        a_f, a_i, a_h = jnp.split(xp, 3, axis=-1)
        d = softplus(-a_f) - softplus(-a_i)
        return -softplus(d), -softplus(-d) + log_g(a_h)
