"""The GRU cell in PyTorch's reset-after form, blocks ``r, z, n``."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from jrnn._checks import fail
from jrnn.cells.base import Cell, add_bias, flax_dense, batch_sum, outer_sum, sigmoid_slope, tanh_slope
from jrnn.cells.init import glorot_uniform, recurrent_matrix

Array = jax.Array

sigmoid = jax.nn.sigmoid


class GRUParams(NamedTuple):
    """GRU parameters (reset-after form), blocks ``r, z, n``: ``w_x (D, 3H)``, ``w_h (H, 3H)``,
    ``b_x (3H,)``, ``b_h (3H,)``."""

    w_x: Array
    w_h: Array
    b_x: Array
    b_h: Array


@dataclasses.dataclass(frozen=True)
class GRUCell(Cell):
    """GRU cell in PyTorch's reset-after form, blocks ``r, z, n``::

        xp = x w_x + b_x,  hp = h w_h + b_h         (each split into r, z, n blocks)
        r = σ(xp_r + hp_r);   z = σ(xp_z + hp_z)
        n = tanh(xp_n + r·hp_n)
        h' = (1 − z)·n + z·h

    The step's residuals are ``([r z n] (*batch, 3H), hp_n (*batch, H))``; its pre-activation
    gradients are ``(d_hp (*batch, 3H), d_xp_n (*batch, H))`` (``d_xp`` shares the r and z blocks
    with ``d_hp``).
    """

    params_type: ClassVar[type] = GRUParams
    gate_names: ClassVar[tuple[str, ...]] = ("r", "z", "n")
    torch_mode: ClassVar[str] = "GRU"

    def _init(self, key, input_size, dtype):
        k_x, k_h = jax.random.split(key)
        H = self.hidden_size
        return GRUParams(
            w_x=glorot_uniform(k_x, input_size, 3 * H, dtype),
            w_h=recurrent_matrix(k_h, H, 3, self.recurrent_init, self.recurrent_scale, dtype),
            b_x=jnp.zeros((3 * H,), dtype),
            b_h=jnp.zeros((3 * H,), dtype),
        )

    def input_bias(self, params):
        return params.b_x

    def forward_step(self, params, h_tm1, xp_t):
        hp = add_bias(h_tm1 @ params.w_h, params.b_h)  # (*batch, 3H) recurrent part
        x_r, x_z, x_n = jnp.split(xp_t, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(hp, 3, axis=-1)
        r = sigmoid(x_r + h_r)  # reset gate
        z = sigmoid(x_z + h_z)  # update gate
        n = jnp.tanh(x_n + r * h_n)  # candidate
        h = (1.0 - z) * n + z * h_tm1
        return h, (jnp.concatenate([r, z, n], axis=-1), h_n)

    def backward_step(self, params, residuals, h_tm1, h, d_h):
        rzn, h_n = residuals
        r, z, n = jnp.split(rzn, 3, axis=-1)
        d_a_n = d_h * (1.0 - z) * tanh_slope(n)  # h = (1 - z) * n + ...,  n = tanh(x_n + r * h_n)
        d_a_z = d_h * (h_tm1 - n) * sigmoid_slope(z)  # h = ... + z * h_tm1,  z = σ(x_z + h_z)
        d_a_r = d_a_n * h_n * sigmoid_slope(r)  # n = tanh(x_n + r * h_n),  r = σ(x_r + h_r)
        d_hp = jnp.concatenate([d_a_r, d_a_z, d_a_n * r], axis=-1)  # hp = h_tm1 @ w_h + b_h
        d_h_tm1 = d_h * z + d_hp @ params.w_h.T  # h = ... + z * h_tm1, and through hp
        return (d_hp, d_a_n), d_h_tm1

    def _d_xp(self, d_pre):
        d_hp, d_a_n = d_pre
        H = self.hidden_size
        return jnp.concatenate([d_hp[..., : 2 * H], d_a_n], axis=-1)  # r and z see x and h alike

    def param_grads(self, params, xs, h_prev, d_pre):
        d_hp, d_xp = d_pre[0], self._d_xp(d_pre)
        return GRUParams(
            w_x=outer_sum(xs, d_xp),  # xp = xs @ w_x + b_x
            w_h=outer_sum(h_prev, d_hp),  # hp = h_prev @ w_h + b_h
            b_x=batch_sum(d_xp),
            b_h=batch_sum(d_hp),
        )

    def input_grads(self, params, d_pre):
        return self._d_xp(d_pre) @ params.w_x.T  # xp = xs @ w_x + ...: backprop into x

    # -- interop ---------------------------------------------------------------------------
    def from_torch_weights(self, w_ih, w_hh, b_ih, b_hh):
        zeros = jnp.zeros((w_ih.shape[0],), w_ih.dtype)
        b_ih, b_hh = (zeros if b is None else b for b in (b_ih, b_hh))
        return GRUParams(w_x=w_ih.T, w_h=w_hh.T, b_x=b_ih, b_h=b_hh)

    def to_torch_weights(self, params):
        return params.w_x.T, params.w_h.T, params.b_x, params.b_h

    @classmethod
    def from_torch_mode(cls, mode: str, hidden_size: int):
        return cls(hidden_size) if mode == "GRU" else None

    flax_kind: ClassVar[str] = "gru"
    flax_keys: ClassVar[dict] = {
        **{f"i{g}": ("kernel", "bias") for g in "rzn"},
        "hr": ("kernel",),
        "hz": ("kernel",),
        "hn": ("kernel", "bias"),
    }

    @classmethod
    def from_flax_tree(cls, tree, hidden_size, activation=None):
        """``nn.GRUCell`` (the same reset-after cell): ``w_x = [ir|iz|in].kernel``,
        ``w_h = [hr|hz|hn].kernel``, ``b_x = [ir|iz|in].bias``, ``b_h = [0 | 0 | hn.bias]``."""
        if activation is not None:
            fail("activation", "None (it applies to SimpleCell only) for kind='gru'", repr(activation))
        k = lambda name: jnp.asarray(tree[name]["kernel"])  # noqa: E731
        w_x = jnp.concatenate([k(f"i{g}") for g in "rzn"], axis=1)  # (D, 3H)
        w_h = jnp.concatenate([k(f"h{g}") for g in "rzn"], axis=1)  # (H, 3H)
        b_x = jnp.concatenate([jnp.asarray(tree[f"i{g}"]["bias"]) for g in "rzn"])
        b_hn = jnp.asarray(tree["hn"]["bias"])
        b_h = jnp.concatenate([jnp.zeros((2 * hidden_size,), b_hn.dtype), b_hn])  # Flax has no b_hr, b_hz
        return cls(hidden_size), GRUParams(w_x, w_h, b_x, b_h)

    def to_flax_tree(self, params):
        """Flax's GRU has no ``b_hr``/``b_hz``: they are folded into its input biases."""
        wx, wh = jnp.split(params.w_x, 3, axis=-1), jnp.split(params.w_h, 3, axis=-1)
        bx, bh = jnp.split(params.b_x, 3), jnp.split(params.b_h, 3)
        return {
            "ir": flax_dense(wx[0], bx[0] + bh[0]),
            "iz": flax_dense(wx[1], bx[1] + bh[1]),
            "in": flax_dense(wx[2], bx[2]),
            "hr": flax_dense(wh[0]),
            "hz": flax_dense(wh[1]),
            "hn": flax_dense(wh[2], bh[2]),
        }
