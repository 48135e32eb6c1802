"""The minGRU cell (Feng et al. 2024, "Were RNNs all we needed?"): a GRU whose gates read the input
only, so that its recurrence is linear in the carry and a sequence is one exact parallel scan."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from jrnn.cells.base import Cell, batch_sum, outer_sum, sigmoid_slope
from jrnn.cells.init import glorot_uniform

Array = jax.Array

sigmoid = jax.nn.sigmoid
softplus = jax.nn.softplus


class MinGRUParams(NamedTuple):
    """minGRU parameters, blocks ``z, h``: ``w_x (D, 2H)``, ``b (2H,)``. No recurrent weights."""

    w_x: Array
    b: Array


def g(a: Array) -> Array:
    """Feng et al.'s positive activation of the candidate: ``a + 1/2`` for ``a >= 0``, ``σ(a)`` below."""
    return jnp.where(a >= 0, a + 0.5, sigmoid(a))


def g_slope(a: Array) -> Array:
    """``g'(a)``: 1 for ``a >= 0`` (as ``jnp.where`` differentiates), ``σ'(a)`` below."""
    return jnp.where(a >= 0, jnp.ones_like(a), sigmoid_slope(sigmoid(a)))


def log_g(a: Array) -> Array:
    """``log g(a)``, computed without forming ``g(a)`` for ``a < 0``."""
    return jnp.where(a >= 0, jnp.log(jnp.maximum(a, 0.0) + 0.5), -softplus(-a))


@dataclasses.dataclass(frozen=True)
class MinGRUCell(Cell):
    """minGRU cell (Feng et al. 2024), blocks ``z, h``::

        [a_z a_h] = x w_x + b
        z = σ(a_z);   h̃ = g(a_h)          g(a) = a + 1/2 (a >= 0), σ(a) (a < 0)
        h' = (1 − z)·h + z·h̃

    Neither gate sees ``h``, so ``h' = a_t·h + b_t`` with ``a_t = 1 − z_t`` and ``b_t = z_t·h̃_t``
    depending on the inputs only: the step Jacobian is ``diag(1 − z_t)`` and the whole sequence is
    one associative scan. ``g`` keeps ``h̃`` positive, so that the scan can run in log space
    (``log_coefficients``, used by ``jrnn.parallel`` for every parallel method: one exact scan,
    no Newton iteration); the sequential step (``method="sequential"``, streaming inference)
    computes the same numbers. ``recurrent_init`` and ``recurrent_scale`` do not apply (there is
    no recurrent matrix); ``w_x`` is Glorot-uniform and ``b`` zero.

    The step's residuals are its pre-activations ``[a_z a_h]`` ``(*batch, 2H)``; the step backward
    recomputes the gates from them (elementwise) and returns ``d_pre = [d_a_z d_a_h]``.
    """

    params_type: ClassVar[type] = MinGRUParams
    gate_names: ClassVar[tuple[str, ...]] = ("z", "h")
    recurrent_product: ClassVar[bool] = False
    """No ``h @ w_h``: recurrent dropout does not apply (``RNN`` refuses ``recurrent_dropout``)."""
    diagonal_jacobian: ClassVar[bool] = True
    """The step Jacobian ``∂h'/∂h`` is diagonal (``jrnn.parallel`` reads it with one tangent)."""

    def _init(self, key, input_size, dtype):
        G = self.gate_size
        return MinGRUParams(w_x=glorot_uniform(key, input_size, G, dtype), b=jnp.zeros((G,), dtype))

    def param_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        return {"w_x": (input_size, self.gate_size), "b": (self.gate_size,)}

    def forward_step(self, params, h_tm1, xp_t, h_scale=None):
        assert h_scale is None, "no recurrent product for recurrent dropout to scale"
        a_z, a_h = jnp.split(xp_t, 2, axis=-1)
        z = sigmoid(a_z)  # update gate, from the input only
        h_tilde = g(a_h)  # candidate, positive
        h = (1.0 - z) * h_tm1 + z * h_tilde
        return h, xp_t

    def backward_step(self, params, pre, h_tm1, h, d_h, h_scale=None):
        a_z, a_h = jnp.split(pre, 2, axis=-1)
        z, h_tilde = sigmoid(a_z), g(a_h)  # recompute the gates
        d_a_z = d_h * (h_tilde - h_tm1) * sigmoid_slope(z)  # h = (1 - z) * h_tm1 + z * h̃,  z = σ(a_z)
        d_a_h = d_h * z * g_slope(a_h)  # h = ... + z * h̃,  h̃ = g(a_h)
        d_h_tm1 = d_h * (1.0 - z)  # h = (1 - z) * h_tm1 + ...: backprop into h
        return jnp.concatenate([d_a_z, d_a_h], axis=-1), d_h_tm1

    def param_grads(self, params, xs, h_prev, d_pre):
        return MinGRUParams(
            w_x=outer_sum(xs, d_pre),  # [a_z a_h] = xs @ w_x + b
            b=batch_sum(d_pre),
        )

    def log_coefficients(self, params, xp):
        """``(log a, log b)`` of ``h' = a·h + b`` from the projected inputs ``xp (..., 2H)``:
        ``log(1 − z) = −softplus(a_z)``, ``log(z·h̃) = −softplus(−a_z) + log g(a_h)``."""
        a_z, a_h = jnp.split(xp, 2, axis=-1)
        return -softplus(a_z), -softplus(-a_z) + log_g(a_h)
