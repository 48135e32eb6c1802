"""The LSTM cell (Hochreiter & Schmidhuber 1997, with forget gate), gates ``i, f, g, o``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from jrnn._checks import fail
from jrnn.cells.base import Cell, flax_dense, sigmoid_slope, tanh_slope
from jrnn.cells.init import glorot_uniform, recurrent_matrix

Array = jax.Array

sigmoid = jax.nn.sigmoid


class LSTMParams(NamedTuple):
    """LSTM parameters, gate blocks ``i, f, g, o``: ``w_x (D, 4H)``, ``w_h (H, 4H)``, ``b (4H,)``."""

    w_x: Array
    w_h: Array
    b: Array


class LSTMCarry(NamedTuple):
    """The LSTM state: the output ``h`` and the cell memory ``c``, each ``(*batch, H)``."""

    h: Array
    c: Array


@dataclasses.dataclass(frozen=True)
class LSTMCell(Cell):
    """LSTM cell, gates ``i, f, g, o`` (PyTorch and cuDNN order)::

        i, f, g, o = σ(a_i), σ(a_f), tanh(a_g), σ(a_o)   where [a_i a_f a_g a_o] = x w_x + h w_h + b
        c' = f·c + i·g
        h' = o·tanh(c')

    The carry is ``LSTMCarry(h, c)``; the output is ``h'``. ``forget_bias`` is written into the f
    block of the initial ``b`` only, never added in the forward pass. The step's residuals are the
    gate activations ``[i f g o]`` ``(*batch, 4H)``.
    """

    forget_bias: float = 1.0

    params_type: ClassVar[type] = LSTMParams
    gate_names: ClassVar[tuple[str, ...]] = ("i", "f", "g", "o")
    carry_parts: ClassVar[tuple[str, ...]] = ("h", "c")
    torch_mode: ClassVar[str] = "LSTM"

    def _init(self, key, input_size, dtype):
        k_x, k_h = jax.random.split(key)
        H = self.hidden_size
        b = jnp.zeros((4 * H,), dtype).at[H : 2 * H].set(self.forget_bias)
        return LSTMParams(
            w_x=glorot_uniform(k_x, input_size, 4 * H, dtype),
            w_h=recurrent_matrix(k_h, H, 4, self.recurrent_init, self.recurrent_scale, dtype),
            b=b,
        )

    def _carry_from_zeros(self, h):
        return LSTMCarry(h, h)

    def forward_step(self, params, carry_tm1, xp_t):
        h_tm1, c_tm1 = carry_tm1
        a = xp_t + h_tm1 @ params.w_h  # (*batch, 4H) pre-activations
        a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
        i, f, g, o = sigmoid(a_i), sigmoid(a_f), jnp.tanh(a_g), sigmoid(a_o)
        c = f * c_tm1 + i * g
        h = o * jnp.tanh(c)
        return LSTMCarry(h, c), jnp.concatenate([i, f, g, o], axis=-1)

    def backward_step(self, params, gates, carry_tm1, carry, d_carry):
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        d_h, d_c = d_carry  # d_c: what flows back from the next step into c
        tanh_c = jnp.tanh(carry.c)
        d_c = d_c + d_h * o * tanh_slope(tanh_c)  # h = o * tanh(c): backprop into c
        d_a = jnp.concatenate(
            [
                d_c * g * sigmoid_slope(i),  # c = ... + i * g,  i = σ(a_i)
                d_c * carry_tm1.c * sigmoid_slope(f),  # c = f * c_tm1 + ...,  f = σ(a_f)
                d_c * i * tanh_slope(g),  # c = ... + i * g,  g = tanh(a_g)
                d_h * tanh_c * sigmoid_slope(o),  # h = o * tanh(c),  o = σ(a_o)
            ],
            axis=-1,
        )
        d_carry_tm1 = LSTMCarry(
            d_a @ params.w_h.T,  # a = xp + h_tm1 @ w_h: backprop into h
            d_c * f,  # c = f * c_tm1 + ...: backprop into the previous cell state
        )
        return d_a, d_carry_tm1

    @classmethod
    def from_torch_mode(cls, mode: str, hidden_size: int):
        return cls(hidden_size) if mode == "LSTM" else None

    flax_kind: ClassVar[str] = "lstm"
    flax_keys: ClassVar[dict] = {
        **{f"i{g}": ("kernel",) for g in "ifgo"},
        **{f"h{g}": ("kernel", "bias") for g in "ifgo"},
    }

    @classmethod
    def from_flax_tree(cls, tree, hidden_size, activation=None):
        """``nn.LSTMCell`` / ``nn.OptimizedLSTMCell``: ``w_x = [ii|if|ig|io].kernel``,
        ``w_h = [hi|hf|hg|ho].kernel``, ``b = [hi|hf|hg|ho].bias``."""
        if activation is not None:
            fail("activation", "None (it applies to SimpleCell only) for kind='lstm'", repr(activation))
        cat = lambda prefix, leaf, axis: jnp.concatenate(  # noqa: E731
            [jnp.asarray(tree[f"{prefix}{g}"][leaf]) for g in "ifgo"], axis=axis
        )
        return cls(hidden_size), LSTMParams(cat("i", "kernel", 1), cat("h", "kernel", 1), cat("h", "bias", 0))

    def to_flax_tree(self, params):
        blocks = lambda a: jnp.split(a, 4, axis=-1)  # noqa: E731
        tree = {}
        for g, wx, wh, bias in zip("ifgo", blocks(params.w_x), blocks(params.w_h), blocks(params.b)):
            tree[f"i{g}"] = flax_dense(wx)
            tree[f"h{g}"] = flax_dense(wh, bias)
        return tree

    def carry_from_flax(self, carry):
        """Flax's LSTM carry is ``(c, h)``; jrnn's ``LSTMCarry(h, c)``."""
        if not (isinstance(carry, (tuple, list)) and len(carry) == 2):
            fail("carry for an LSTM", "Flax's (c, h) pair", type(carry).__name__, TypeError)
        c, h = carry
        return LSTMCarry(jnp.asarray(h), jnp.asarray(c))

    def carry_to_flax(self, carry):
        if not isinstance(carry, LSTMCarry):
            fail("carry for an LSTMCell", "LSTMCarry(h, c)", type(carry).__name__, TypeError)
        return (carry.c, carry.h)
