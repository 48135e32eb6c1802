"""The GRU cell, blocks ``r, z, n``: PyTorch's reset-after form (the default), the reset-before form
of Cho et al. (2014), and layer normalization (Ba, Kiros & Hinton 2016)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from jrnn._checks import check_bool, fail
from jrnn.cells.base import (
    Cell,
    add_bias,
    check_keras_activations,
    batch_sum,
    flax_dense,
    layer_norm,
    layer_norm_backward,
    outer_sum,
    recurrent,
    scale,
    sigmoid_slope,
    tanh_slope,
)
from jrnn.cells.init import glorot_uniform, recurrent_matrix, torch_uniform

Array = jax.Array

sigmoid = jax.nn.sigmoid


class GRUParams(NamedTuple):
    """GRU parameters, blocks ``r, z, n``: ``w_x (D, 3H)``, ``w_h (H, 3H)``, ``b_x (3H,)`` and

    - ``b_h (3H,)``, the recurrent bias of the reset-after form (``reset_after=True``, the default);
      None in the reset-before form, which has one bias per gate block, ``b_x``;
    - ``gamma_x (3H,)``, ``gamma_h (3H,)``: the layer-norm gains of the input and recurrent
      pre-activations (``layer_norm=True``), else None.
    """

    w_x: Array
    w_h: Array
    b_x: Array
    b_h: Array | None = None
    gamma_x: Array | None = None
    gamma_h: Array | None = None


@dataclasses.dataclass(frozen=True)
class GRUCell(Cell):
    """GRU cell, blocks ``r, z, n``. By default PyTorch's (and cuDNN's, Flax's, Keras'
    ``reset_after=True``) reset-after form::

        xp = x w_x + b_x,  hp = h w_h + b_h         (each split into r, z, n blocks)
        r = σ(xp_r + hp_r);   z = σ(xp_z + hp_z)
        n = tanh(xp_n + r·hp_n)
        h' = (1 − z)·n + z·h

    The step's residuals are ``([r z n] (*batch, 3H), hp_n (*batch, H))``; its pre-activation
    gradients are ``(d_hp (*batch, 3H), d_xp_n (*batch, H))`` (``d_xp`` shares the r and z blocks
    with ``d_hp``).

    ``reset_after=False``: the reset-before form of Cho et al. (2014) and Keras'
    ``reset_after=False``, the reset gate applied to ``h`` before the product, with one bias per
    gate block (``b_x``; ``b_h`` is None)::

        xp = x w_x + b_x
        r = σ(xp_r + h w_hr);   z = σ(xp_z + h w_hz)
        n = tanh(xp_n + (r·h) w_hn)
        h' = (1 − z)·n + z·h

    Its residuals are ``([r z n] (*batch, 3H), r·h (*batch, H))``, and its pre-activation gradients
    ``(d_a (*batch, 3H), r·h)`` take their place.

    ``layer_norm=True`` (Ba, Kiros & Hinton 2016; reset-after form only): the input and recurrent
    pre-activations are normalized separately over their 3H features, with gains, before their
    biases join::

        xp = LN(x w_x)·gamma_x + b_x,  hp = LN(h w_h)·gamma_h + b_h

    with ``LN(v) = (v − mean(v)) / sqrt(var(v) + 1e-5)`` over the last axis; the rest is as above.

    Recurrent dropout (``RNN(recurrent_dropout=p)``, Gal & Ghahramani 2016, as Keras' GRU) scales
    ``h`` where it enters the recurrent products only, ``h w_h -> (h·m_h) w_h`` (and
    ``(r·h) w_hn -> (r·h·m_h) w_hn`` in the reset-before form), with ``m_h`` the sequence's mask
    divided by ``1 − p``; the interpolation ``z·h`` keeps the unmasked ``h``.
    """

    reset_after: bool = True
    layer_norm: bool = False

    params_type: ClassVar[type] = GRUParams
    gate_names: ClassVar[tuple[str, ...]] = ("r", "z", "n")

    def __post_init__(self):
        super().__post_init__()
        check_bool("reset_after", self.reset_after)
        check_bool("layer_norm", self.layer_norm)
        if self.layer_norm and not self.reset_after:
            fail("layer_norm", "False with reset_after=False (layer norm is written for the reset-after form)", True)

    def param_shapes(self, input_size: int) -> dict:
        H, G = self.hidden_size, self.gate_size
        ln = self.layer_norm
        return {
            "w_x": (input_size, G),
            "w_h": (H, G),
            "b_x": (G,),
            "b_h": (G,) if self.reset_after else None,
            "gamma_x": (G,) if ln else None,
            "gamma_h": (G,) if ln else None,
        }

    # -- construction ------------------------------------------------------------------------
    def _options_init(self, dtype) -> dict:
        G = self.gate_size
        return {"gamma_x": jnp.ones((G,), dtype), "gamma_h": jnp.ones((G,), dtype)} if self.layer_norm else {}

    def _init(self, key, input_size, dtype):
        k_x, k_h = jax.random.split(key)
        H = self.hidden_size
        return GRUParams(
            w_x=glorot_uniform(k_x, input_size, 3 * H, dtype),
            w_h=recurrent_matrix(k_h, H, 3, self.recurrent_init, self.recurrent_scale, dtype),
            b_x=jnp.zeros((3 * H,), dtype),
            b_h=jnp.zeros((3 * H,), dtype) if self.reset_after else None,
            **self._options_init(dtype),
        )

    def _init_torch(self, key, input_size, dtype):
        """PyTorch's draws: every weight and bias U(±1/√H) (the one bias of the reset-before form
        too); layer-norm gains one."""
        H, G = self.hidden_size, self.gate_size
        k_ih, k_hh, k_bi, k_bh = jax.random.split(key, 4)
        draw = lambda k, shape: torch_uniform(k, shape, H, dtype)  # noqa: E731
        return GRUParams(
            w_x=draw(k_ih, (G, input_size)).T,
            w_h=draw(k_hh, (G, H)).T,
            b_x=draw(k_bi, (G,)),
            b_h=draw(k_bh, (G,)) if self.reset_after else None,
            **self._options_init(dtype),
        )

    @property
    def _plain(self) -> bool:
        """The defaults: the reset gate after the product (PyTorch's GRU), no layer norm."""
        return self.reset_after and not self.layer_norm

    # -- the maths ---------------------------------------------------------------------------
    def input_bias(self, params):
        """``b_x``; zeros with layer norm, where ``b_x`` joins after the normalization."""
        return jnp.zeros_like(params.b_x) if self.layer_norm else params.b_x

    def forward_step(self, params, h_tm1, xp_t, h_scale=None):
        if not self.reset_after:
            return self._forward_reset_before(params, h_tm1, xp_t, h_scale)
        hw = recurrent(h_tm1, h_scale) @ params.w_h  # (*batch, 3H) recurrent product
        if self.layer_norm:
            y_x, s_x = layer_norm(xp_t)  # xp_t = x w_x (input_bias is zero)
            y_h, s_h = layer_norm(hw)
            xp_t = add_bias(scale(y_x, params.gamma_x), params.b_x)
            hp = add_bias(scale(y_h, params.gamma_h), params.b_h)
        else:
            hp = add_bias(hw, params.b_h)  # (*batch, 3H) recurrent part
        x_r, x_z, x_n = jnp.split(xp_t, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(hp, 3, axis=-1)
        r = sigmoid(x_r + h_r)  # reset gate
        z = sigmoid(x_z + h_z)  # update gate
        n = jnp.tanh(x_n + r * h_n)  # candidate
        h = (1.0 - z) * n + z * h_tm1
        residuals = (jnp.concatenate([r, z, n], axis=-1), h_n)
        if self.layer_norm:
            residuals += (y_x, y_h, jnp.concatenate([s_x, s_h], axis=-1))
        return h, residuals

    def backward_step(self, params, residuals, h_tm1, h, d_h, h_scale=None):
        if not self.reset_after:
            return self._backward_reset_before(params, residuals, h_tm1, h, d_h, h_scale)
        rzn, h_n = residuals[:2]
        r, z, n = jnp.split(rzn, 3, axis=-1)
        d_a_n = d_h * (1.0 - z) * tanh_slope(n)  # h = (1 - z) * n + ...,  n = tanh(x_n + r * h_n)
        d_a_z = d_h * (h_tm1 - n) * sigmoid_slope(z)  # h = ... + z * h_tm1,  z = σ(x_z + h_z)
        d_a_r = d_a_n * h_n * sigmoid_slope(r)  # n = tanh(x_n + r * h_n),  r = σ(x_r + h_r)
        d_hp = jnp.concatenate([d_a_r, d_a_z, d_a_n * r], axis=-1)  # hp = h_tm1 @ w_h + b_h
        if not self.layer_norm:
            d_h_tm1 = d_h * z + recurrent(d_hp @ params.w_h.T, h_scale)  # h = ... + z * h_tm1, and through hp
            return (d_hp, d_a_n), d_h_tm1
        y_x, y_h, s = residuals[2:]
        s_x, s_h = jnp.split(s, 2, axis=-1)
        d_xp = self._d_xp((d_hp, d_a_n))
        d_xw = layer_norm_backward(scale(d_xp, params.gamma_x), y_x, s_x)  # xp = LN(xw) * gamma_x + b_x
        d_hw = layer_norm_backward(scale(d_hp, params.gamma_h), y_h, s_h)  # hp = LN(hw) * gamma_h + b_h
        d_h_tm1 = d_h * z + recurrent(d_hw @ params.w_h.T, h_scale)  # h = ... + z * h_tm1, and through hw
        return (d_hp, d_a_n, d_xw, d_hw, d_xp * y_x, d_hp * y_h), d_h_tm1

    def _forward_reset_before(self, params, h_tm1, xp_t, h_scale):
        H = self.hidden_size
        x_r, x_z, x_n = jnp.split(xp_t, 3, axis=-1)
        h_rec = recurrent(h_tm1, h_scale)  # h as it enters the recurrent products
        h_r, h_z = jnp.split(h_rec @ params.w_h[:, : 2 * H], 2, axis=-1)
        r = sigmoid(x_r + h_r)  # reset gate
        z = sigmoid(x_z + h_z)  # update gate
        rh = r * h_rec  # the reset applied before the product
        n = jnp.tanh(x_n + rh @ params.w_h[:, 2 * H :])  # candidate
        h = (1.0 - z) * n + z * h_tm1
        return h, (jnp.concatenate([r, z, n], axis=-1), rh)

    def _backward_reset_before(self, params, residuals, h_tm1, h, d_h, h_scale):
        H = self.hidden_size
        rzn, rh = residuals
        r, z, n = jnp.split(rzn, 3, axis=-1)
        h_rec = recurrent(h_tm1, h_scale)  # h as it entered the recurrent products
        d_a_n = d_h * (1.0 - z) * tanh_slope(n)  # h = (1 - z) * n + ...,  n = tanh(x_n + rh @ w_hn)
        d_a_z = d_h * (h_tm1 - n) * sigmoid_slope(z)  # h = ... + z * h_tm1,  z = σ(x_z + h_rec w_hz)
        d_rh = d_a_n @ params.w_h[:, 2 * H :].T  # n = tanh(x_n + rh @ w_hn): backprop into rh
        d_a_r = d_rh * h_rec * sigmoid_slope(r)  # rh = r * h_rec,  r = σ(x_r + h_rec w_hr)
        d_a_rz = jnp.concatenate([d_a_r, d_a_z], axis=-1)
        d_h_rec = d_rh * r + d_a_rz @ params.w_h[:, : 2 * H].T  # through rh and h_rec w_h[rz]
        d_h_tm1 = d_h * z + recurrent(d_h_rec, h_scale)  # through z·h_tm1, and h_rec = h_tm1 · h_scale
        return (jnp.concatenate([d_a_rz, d_a_n], axis=-1), rh), d_h_tm1

    def _d_xp(self, d_pre):
        d_hp, d_a_n = d_pre[:2]
        H = self.hidden_size
        return jnp.concatenate([d_hp[..., : 2 * H], d_a_n], axis=-1)  # r and z see x and h alike

    def param_grads(self, params, xs, h_prev, d_pre):
        if not self.reset_after:
            d_a, rh = d_pre
            H = self.hidden_size
            return GRUParams(
                w_x=outer_sum(xs, d_a),  # xp = xs @ w_x + b_x
                w_h=jnp.concatenate(  # h_prev @ w_h[rz] and rh @ w_h[n]
                    [outer_sum(h_prev, d_a[..., : 2 * H]), outer_sum(rh, d_a[..., 2 * H :])], axis=1
                ),
                b_x=batch_sum(d_a),
            )
        d_hp, d_xp = d_pre[0], self._d_xp(d_pre)
        if not self.layer_norm:
            return GRUParams(
                w_x=outer_sum(xs, d_xp),  # xp = xs @ w_x + b_x
                w_h=outer_sum(h_prev, d_hp),  # hp = h_prev @ w_h + b_h
                b_x=batch_sum(d_xp),
                b_h=batch_sum(d_hp),
            )
        d_xw, d_hw, d_gamma_x, d_gamma_h = d_pre[2:]
        return GRUParams(
            w_x=outer_sum(xs, d_xw),  # xw = xs @ w_x
            w_h=outer_sum(h_prev, d_hw),  # hw = h_prev @ w_h
            b_x=batch_sum(d_xp),  # xp = LN(xw) * gamma_x + b_x
            b_h=batch_sum(d_hp),  # hp = LN(hw) * gamma_h + b_h
            gamma_x=batch_sum(d_gamma_x),
            gamma_h=batch_sum(d_gamma_h),
        )

    def input_grads(self, params, d_pre):
        if not self.reset_after:
            return d_pre[0] @ params.w_x.T  # xp = xs @ w_x + ...: backprop into x
        d_x = d_pre[2] if self.layer_norm else self._d_xp(d_pre)
        return d_x @ params.w_x.T  # xp = xs @ w_x + ...: backprop into x

    # -- interop: PyTorch --------------------------------------------------------------------
    @property
    def torch_mode(self) -> str:
        """PyTorch's ``mode`` of the matching module: ``"GRU"`` (``torch.nn.GRU``)."""
        if not self.reset_after or self.layer_norm:
            fail("model.cell", "a GRUCell with reset_after=True and layer_norm=False for torch.nn.GRU", repr(self))
        return "GRU"

    def from_torch_weights(self, w_ih, w_hh, b_ih, b_hh):
        zeros = jnp.zeros((w_ih.shape[0],), w_ih.dtype)
        b_ih, b_hh = (zeros if b is None else b for b in (b_ih, b_hh))
        return GRUParams(w_x=w_ih.T, w_h=w_hh.T, b_x=b_ih, b_h=b_hh)

    def to_torch_weights(self, params):
        return params.w_x.T, params.w_h.T, params.b_x, params.b_h

    @classmethod
    def from_torch_mode(cls, mode: str, hidden_size: int):
        return cls(hidden_size) if mode == "GRU" else None

    # -- interop: Flax -------------------------------------------------------------------------
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
        if not self.reset_after or self.layer_norm:
            fail("cell", "a GRUCell with reset_after=True and layer_norm=False for Flax's nn.GRUCell", repr(self))
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

    # -- interop: Keras ------------------------------------------------------------------------
    keras_layer: ClassVar[str] = "GRU"

    @classmethod
    def from_keras_config(cls, config):
        """``keras.layers.GRU`` (either ``reset_after``) with ``activation="tanh"`` and
        ``recurrent_activation="sigmoid"``. Keras orders the blocks ``z, r, h``, jrnn ``r, z, n``:
        the first two blocks swap places in every weight. Keras' ``bias`` is ``(2, 3H)`` with
        ``reset_after=True`` (rows ``b_x``, ``b_h``) and ``(3H,)`` without (``b_x``)."""
        check_keras_activations(config, "GRU")
        return cls(config["units"], reset_after=bool(config.get("reset_after", True)))

    def keras_config(self):
        if self.layer_norm:
            fail("cell", "a GRUCell with layer_norm=False for Keras (keras.layers.GRU has no layer norm)", repr(self))
        return {
            "units": self.hidden_size, "activation": "tanh", "recurrent_activation": "sigmoid",
            "reset_after": bool(self.reset_after),
        }  # fmt: skip

    @staticmethod
    def _swap_rz(a):
        """Blocks ``r, z, n`` <-> ``z, r, n`` along the last axis (its own inverse)."""
        first, second, third = jnp.split(a, 3, axis=-1)
        return jnp.concatenate([second, first, third], axis=-1)

    def from_keras_weights(self, kernel, recurrent_kernel, bias):
        zeros = jnp.zeros((kernel.shape[1],), kernel.dtype)
        if bias is None:
            b_x, b_h = zeros, zeros
        elif self.reset_after:
            b_x, b_h = bias[0], bias[1]
        else:
            b_x, b_h = bias, None
        b_h = self._swap_rz(b_h) if self.reset_after else None
        return GRUParams(self._swap_rz(kernel), self._swap_rz(recurrent_kernel), self._swap_rz(b_x), b_h)

    def keras_weights(self, params, use_bias: bool = True):
        weights = [self._swap_rz(params.w_x), self._swap_rz(params.w_h)]
        if use_bias:
            b_x = self._swap_rz(params.b_x)
            weights.append(jnp.stack([b_x, self._swap_rz(params.b_h)]) if self.reset_after else b_x)
        return weights

    def keras_biases(self, params):
        return (params.b_x, params.b_h) if self.reset_after else (params.b_x,)
