"""The LSTM cell (Hochreiter & Schmidhuber 1997, with forget gate), gates ``i, f, g, o``, and its
options: a projection of the output (PyTorch's ``proj_size``), peepholes (Gers & Schmidhuber 2000)
and layer normalization (Ba, Kiros & Hinton 2016)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from jrnn._checks import check_bool, check_int, fail
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


class LSTMParams(NamedTuple):
    """LSTM parameters, gate blocks ``i, f, g, o``: ``w_x (D, 4H)``, ``w_h (R, 4H)``, ``b (4H,)``
    (``R = P`` with a projection, else ``H``). The options' fields are None unless the option is
    on (None is an empty pytree, so a plain LSTM's params have three leaves):

    - ``w_hr (H, P)``: the output projection (``proj_size=P``; PyTorch's ``weight_hr.T``);
    - ``w_c (3H,)``: the peephole weights, blocks ``i, f, o`` (``peepholes=True``);
    - ``gamma_x (4H,)``, ``gamma_h (4H,)``, ``gamma_c (H,)``, ``beta_c (H,)``: the layer-norm gains of
      the input and recurrent pre-activations, and the gain and bias of the cell state
      (``layer_norm=True``).
    """

    w_x: Array
    w_h: Array
    b: Array
    w_hr: Array | None = None
    w_c: Array | None = None
    gamma_x: Array | None = None
    gamma_h: Array | None = None
    gamma_c: Array | None = None
    beta_c: Array | None = None


class LSTMCarry(NamedTuple):
    """The LSTM state: the output ``h (*batch, R)`` and the cell memory ``c (*batch, H)`` (``R = P``
    with a projection, else ``H``)."""

    h: Array
    c: Array


class _Residuals(NamedTuple):
    """A step's residuals with options on (a plain LSTM keeps the gates ``[i f g o]`` alone)."""

    gates: Array  # [i f g o] (*batch, 4H)
    m: Array | None = None  # o·tanh(s) before the projection (*batch, H)
    y_x: Array | None = None  # LN(x w_x) (*batch, 4H)
    y_h: Array | None = None  # LN(h w_h) (*batch, 4H)
    y_c: Array | None = None  # LN(c) (*batch, H)
    s: Array | None = None  # the three inverse standard deviations (*batch, 3)


class _Pre(NamedTuple):
    """A step's pre-activation gradients with options on (a plain LSTM's are ``d_a`` alone)."""

    d_a: Array  # of the gate pre-activations a (*batch, 4H)
    d_ax: Array | None = None  # layer norm: of x w_x (*batch, 4H) (else d_a)
    d_ah: Array | None = None  # layer norm: of h w_h (*batch, 4H) (else d_a)
    diag: LSTMParams | None = None  # per-step terms of the diagonal params, summed over steps
    m: Array | None = None  # projection: o·tanh(s) (*batch, H)
    d_y: Array | None = None  # projection: the cotangent of h = m w_hr (*batch, P)


@dataclasses.dataclass(frozen=True)
class LSTMCell(Cell):
    """LSTM cell, gates ``i, f, g, o`` (PyTorch and cuDNN order)::

        i, f, g, o = σ(a_i), σ(a_f), tanh(a_g), σ(a_o)   where [a_i a_f a_g a_o] = x w_x + h w_h + b
        c' = f·c + i·g
        h' = o·tanh(c')

    The carry is ``LSTMCarry(h, c)``; the output is ``h'``. ``forget_bias`` is written into the f
    block of the initial ``b`` only, never added in the forward pass. The step's residuals are the
    gate activations ``[i f g o]`` ``(*batch, 4H)``.

    Options (any combination; each adds fields to ``LSTMParams``, see there):

    - ``proj_size=P`` (``0 < P < H``; PyTorch's ``proj_size``): ``h' = (o·tanh(c')) w_hr`` with
      ``w_hr (H, P)``; ``h`` of size P feeds the recurrence (``w_h (P, 4H)``) and is the output, while
      ``c`` keeps H units;
    - ``peepholes=True`` (Gers & Schmidhuber 2000): diagonal weights ``w_c = [w_ci w_cf w_co]`` from the
      cell state into the gates, ``a_i += w_ci·c``, ``a_f += w_cf·c`` (the entering state) and
      ``a_o += w_co·c'`` (the new one);
    - ``layer_norm=True`` (Ba, Kiros & Hinton 2016): the input and recurrent pre-activations are
      normalized separately over their 4H features, and the cell state over its H, before the
      output nonlinearity::

          a = LN(x w_x)·gamma_x + LN(h w_h)·gamma_h + b         (+ the peephole terms)
          h' = o·tanh(LN(c')·gamma_c + beta_c)                 (then the projection)

      ``LN(v) = (v − mean(v)) / sqrt(var(v) + 1e-5)`` over the last axis. The paper's separate
      biases of the two normalized pre-activations are folded into ``b``; the carry's ``c'`` is
      not normalized.

    Recurrent dropout (``RNN(recurrent_dropout=p)``, Gal & Ghahramani 2016) scales the entering
    ``h`` in the recurrent product only, ``h w_h -> (h·m_h) w_h``, with ``m_h`` the sequence's
    mask divided by ``1 − p`` (of size P with a projection); ``c`` is never masked.

    Written out with every option::

        a = [LN](x w_x)[·gamma_x] + [LN](h w_h)[·gamma_h] + b
        i = σ(a_i [+ w_ci·c]),  f = σ(a_f [+ w_cf·c]),  g = tanh(a_g)
        c' = f·c + i·g
        o = σ(a_o [+ w_co·c'])
        h' = (o·tanh([LN](c')[·gamma_c + beta_c])) [w_hr]
    """

    forget_bias: float = 1.0
    proj_size: int = 0
    peepholes: bool = False
    layer_norm: bool = False

    params_type: ClassVar[type] = LSTMParams
    gate_names: ClassVar[tuple[str, ...]] = ("i", "f", "g", "o")
    carry_parts: ClassVar[tuple[str, ...]] = ("h", "c")

    def __post_init__(self):
        super().__post_init__()
        if self.proj_size != 0:
            check_int("proj_size", self.proj_size, 1, self.hidden_size - 1)
        check_bool("peepholes", self.peepholes)
        check_bool("layer_norm", self.layer_norm)

    @property
    def _plain(self) -> bool:
        """No option on: the cell of the module docstring's first three lines."""
        return not (self.proj_size or self.peepholes or self.layer_norm)

    @property
    def output_size(self) -> int:
        """Features of the output ``h``: ``proj_size`` with a projection, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    def param_shapes(self, input_size: int) -> dict:
        H, G, R, P = self.hidden_size, self.gate_size, self.output_size, self.proj_size
        ln = self.layer_norm
        return {
            "w_x": (input_size, G),
            "w_h": (R, G),
            "b": (G,),
            "w_hr": (H, P) if P else None,
            "w_c": (3 * H,) if self.peepholes else None,
            "gamma_x": (G,) if ln else None,
            "gamma_h": (G,) if ln else None,
            "gamma_c": (H,) if ln else None,
            "beta_c": (H,) if ln else None,
        }

    # -- construction ------------------------------------------------------------------------
    def _options_init(self, key, dtype, draw=None) -> dict:
        """The options' fields: ``w_hr`` Glorot-uniform (``draw`` given: ``draw(key, shape)``),
        peepholes zero (``draw``: drawn), gains one, ``beta_c`` zero."""
        H, P = self.hidden_size, self.proj_size
        k_r, k_c = jax.random.fold_in(key, 2), jax.random.fold_in(key, 3)
        fields = {}
        if P:
            fields["w_hr"] = glorot_uniform(k_r, H, P, dtype) if draw is None else draw(k_r, (H, P))
        if self.peepholes:
            fields["w_c"] = jnp.zeros((3 * H,), dtype) if draw is None else draw(k_c, (3 * H,))
        if self.layer_norm:
            fields.update(
                gamma_x=jnp.ones((4 * H,), dtype), gamma_h=jnp.ones((4 * H,), dtype),
                gamma_c=jnp.ones((H,), dtype), beta_c=jnp.zeros((H,), dtype),
            )  # fmt: skip
        return fields

    def _init(self, key, input_size, dtype):
        k_x, k_h = jax.random.split(key)
        H = self.hidden_size
        b = jnp.zeros((4 * H,), dtype).at[H : 2 * H].set(self.forget_bias)
        w_h = recurrent_matrix(k_h, H, 4, self.recurrent_init, self.recurrent_scale, dtype)
        return LSTMParams(
            w_x=glorot_uniform(k_x, input_size, 4 * H, dtype),
            w_h=w_h[: self.output_size],  # with a projection, the first P rows of each block
            b=b,
            **self._options_init(key, dtype),
        )

    def _init_torch(self, key, input_size, dtype):
        """PyTorch's draws (``weight_hr`` included), every option's weight U(±1/√H) too; gains one."""
        H, G, R = self.hidden_size, self.gate_size, self.output_size
        k_ih, k_hh, k_bi, k_bh = jax.random.split(key, 4)
        draw = lambda k, shape: torch_uniform(k, shape, H, dtype)  # noqa: E731
        params = LSTMParams(
            w_x=draw(k_ih, (G, input_size)).T, w_h=draw(k_hh, (G, R)).T, b=draw(k_bi, (G,)) + draw(k_bh, (G,)),
        )  # fmt: skip
        return params._replace(**self._options_init(key, dtype, draw))

    def _carry_from_zeros(self, h):
        c = h
        if self.proj_size:
            h = jnp.zeros((*h.shape[:-1], self.proj_size), h.dtype)
        return LSTMCarry(h, c)

    # -- the maths ---------------------------------------------------------------------------
    def input_bias(self, params):
        """``b``; zeros with layer norm, where ``b`` joins after the normalization."""
        return jnp.zeros_like(params.b) if self.layer_norm else params.b

    def forward_step(self, params, carry_tm1, xp_t, h_scale=None):
        h_tm1, c_tm1 = carry_tm1
        if self._plain:
            a = xp_t + recurrent(h_tm1, h_scale) @ params.w_h  # (*batch, 4H) pre-activations
            a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
            i, f, g, o = sigmoid(a_i), sigmoid(a_f), jnp.tanh(a_g), sigmoid(a_o)
            c = f * c_tm1 + i * g
            h = o * jnp.tanh(c)
            return LSTMCarry(h, c), jnp.concatenate([i, f, g, o], axis=-1)
        return self._forward_options(params, recurrent(h_tm1, h_scale), c_tm1, xp_t)

    def backward_step(self, params, residuals, carry_tm1, carry, d_carry, h_scale=None):
        if not self._plain:
            return self._backward_options(params, residuals, carry_tm1, carry, d_carry, h_scale)
        gates = residuals
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
            recurrent(d_a @ params.w_h.T, h_scale),  # a = xp + h_tm1 @ w_h: backprop into h
            d_c * f,  # c = f * c_tm1 + ...: backprop into the previous cell state
        )
        return d_a, d_carry_tm1

    def _forward_options(self, params, h_tm1, c_tm1, xp_t):
        """The step with options on; residuals ``_Residuals``. ``h_tm1`` as it enters the recurrent
        product (its only use), so recurrent dropout has already scaled it."""
        hw = h_tm1 @ params.w_h  # (*batch, 4H)
        y_x = y_h = y_c = s = None
        if self.layer_norm:
            y_x, s_x = layer_norm(xp_t)  # xp_t = x w_x (input_bias is zero)
            y_h, s_h = layer_norm(hw)
            a = add_bias(scale(y_x, params.gamma_x) + scale(y_h, params.gamma_h), params.b)
        else:
            a = xp_t + hw  # xp_t = x w_x + b
        a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
        if self.peepholes:
            w_ci, w_cf, w_co = jnp.split(params.w_c, 3)
            a_i = a_i + scale(c_tm1, w_ci)
            a_f = a_f + scale(c_tm1, w_cf)
        i, f, g = sigmoid(a_i), sigmoid(a_f), jnp.tanh(a_g)
        c = f * c_tm1 + i * g
        if self.peepholes:
            a_o = a_o + scale(c, w_co)
        o = sigmoid(a_o)
        if self.layer_norm:
            y_c, s_c = layer_norm(c)
            m = o * jnp.tanh(add_bias(scale(y_c, params.gamma_c), params.beta_c))
            s = jnp.concatenate([s_x, s_h, s_c], axis=-1)  # (*batch, 3)
        else:
            m = o * jnp.tanh(c)
        h = m @ params.w_hr if self.proj_size else m
        gates = jnp.concatenate([i, f, g, o], axis=-1)
        residuals = _Residuals(gates, m if self.proj_size else None, y_x, y_h, y_c, s)
        return LSTMCarry(h, c), residuals

    def _backward_options(self, params, res, carry_tm1, carry, d_carry, h_scale):
        """The step backward of ``_forward_options``, line by line from the end."""
        i, f, g, o = jnp.split(res.gates, 4, axis=-1)
        c_tm1, c = carry_tm1.c, carry.c
        d_h, d_c = d_carry
        diag = {}
        d_m = d_h @ params.w_hr.T if self.proj_size else d_h  # h = m @ w_hr: backprop into m
        if self.layer_norm:
            s_x, s_h, s_c = jnp.split(res.s, 3, axis=-1)
            u = add_bias(scale(res.y_c, params.gamma_c), params.beta_c)
        else:
            u = c
        tanh_u = jnp.tanh(u)
        d_a_o = d_m * tanh_u * sigmoid_slope(o)  # m = o * tanh(u),  o = σ(a_o)
        d_u = d_m * o * tanh_slope(tanh_u)  # m = o * tanh(u): backprop into u
        if self.layer_norm:  # u = LN(c) * gamma_c + beta_c
            diag.update(gamma_c=d_u * res.y_c, beta_c=d_u)
            d_c = d_c + layer_norm_backward(scale(d_u, params.gamma_c), res.y_c, s_c)
        else:  # u = c
            d_c = d_c + d_u
        if self.peepholes:
            w_ci, w_cf, w_co = jnp.split(params.w_c, 3)
            d_c = d_c + scale(d_a_o, w_co)  # a_o += w_co * c: backprop into c
        d_a_i = d_c * g * sigmoid_slope(i)  # c = ... + i * g,  i = σ(a_i)
        d_a_f = d_c * c_tm1 * sigmoid_slope(f)  # c = f * c_tm1 + ...,  f = σ(a_f)
        d_a_g = d_c * i * tanh_slope(g)  # c = ... + i * g,  g = tanh(a_g)
        d_c_tm1 = d_c * f  # c = f * c_tm1 + ...: backprop into the previous cell state
        if self.peepholes:  # a_i += w_ci * c_tm1, a_f += w_cf * c_tm1, a_o += w_co * c
            d_c_tm1 = d_c_tm1 + scale(d_a_i, w_ci) + scale(d_a_f, w_cf)
            diag["w_c"] = jnp.concatenate([d_a_i * c_tm1, d_a_f * c_tm1, d_a_o * c], axis=-1)
        d_a = jnp.concatenate([d_a_i, d_a_f, d_a_g, d_a_o], axis=-1)
        d_ax = d_ah = None
        if self.layer_norm:  # a = LN(x w_x) * gamma_x + LN(h w_h) * gamma_h + b
            diag.update(gamma_x=d_a * res.y_x, gamma_h=d_a * res.y_h)
            d_ax = layer_norm_backward(scale(d_a, params.gamma_x), res.y_x, s_x)
            d_ah = layer_norm_backward(scale(d_a, params.gamma_h), res.y_h, s_h)
        d_h_tm1 = recurrent((d_a if d_ah is None else d_ah) @ params.w_h.T, h_scale)  # hw = h_tm1 @ w_h: into h
        none = LSTMParams(None, None, None)
        pre = _Pre(d_a, d_ax, d_ah, none._replace(**diag), res.m, d_h if self.proj_size else None)
        return pre, LSTMCarry(d_h_tm1, d_c_tm1)

    def param_grads(self, params, xs, h_prev, d_pre):
        if self._plain:
            return super().param_grads(params, xs, h_prev, d_pre)
        d_ax = d_pre.d_a if d_pre.d_ax is None else d_pre.d_ax
        d_ah = d_pre.d_a if d_pre.d_ah is None else d_pre.d_ah
        grads = jax.tree_util.tree_map(batch_sum, d_pre.diag)  # the diagonal params: Σ over steps
        return grads._replace(
            w_x=outer_sum(xs, d_ax),  # xp = xs @ w_x
            w_h=outer_sum(h_prev, d_ah),  # hw = h_prev @ w_h
            b=batch_sum(d_pre.d_a),  # a = ... + b
            w_hr=outer_sum(d_pre.m, d_pre.d_y) if self.proj_size else None,  # h = m @ w_hr
        )

    def input_grads(self, params, d_pre):
        if self._plain:
            return super().input_grads(params, d_pre)
        d_ax = d_pre.d_a if d_pre.d_ax is None else d_pre.d_ax
        return d_ax @ params.w_x.T  # xp = xs @ w_x + ...: backprop into x

    # -- interop: PyTorch --------------------------------------------------------------------
    @property
    def torch_mode(self) -> str:
        """PyTorch's ``mode`` of the matching module: ``"LSTM"`` (``torch.nn.LSTM``)."""
        if self.peepholes or self.layer_norm:
            fail("model.cell", "an LSTMCell without peepholes or layer_norm for torch.nn.LSTM", repr(self))
        return "LSTM"

    @classmethod
    def from_torch_mode(cls, mode: str, hidden_size: int):
        return cls(hidden_size) if mode == "LSTM" else None

    def from_torch_weights(self, w_ih, w_hh, b_ih, b_hh, weight_hr=None):
        """``w_x = weight_ih.T``, ``w_h = weight_hh.T``, ``b = bias_ih + bias_hh`` and, with a
        projection, ``w_hr = weight_hr.T``."""
        params = super().from_torch_weights(w_ih, w_hh, b_ih, b_hh)
        if self.proj_size:
            if weight_hr is None:
                fail(f"weight_hr for an LSTMCell with proj_size={self.proj_size}", "given", None)
            params = params._replace(w_hr=weight_hr.T)
        return params

    def torch_extra_weights(self, params) -> dict:
        return {"weight_hr": params.w_hr.T} if self.proj_size else {}

    # -- interop: Flax -------------------------------------------------------------------------
    flax_kind: ClassVar[str] = "lstm"
    flax_keys: ClassVar[dict] = {
        **{f"i{g}": ("kernel",) for g in "ifgo"},
        **{f"h{g}": ("kernel", "bias") for g in "ifgo"},
    }

    def _check_no_options(self, peer: str) -> None:
        if not self._plain:
            fail("cell", f"an LSTMCell without proj_size, peepholes or layer_norm for {peer}", repr(self))

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
        self._check_no_options("Flax (nn.LSTMCell has no projection, peepholes or layer norm)")
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

    # -- interop: Keras ------------------------------------------------------------------------
    keras_layer: ClassVar[str] = "LSTM"

    @classmethod
    def from_keras_config(cls, config):
        """``keras.layers.LSTM`` with ``activation="tanh"``, ``recurrent_activation="sigmoid"``;
        Keras' gate order ``i, f, c, o`` is jrnn's ``i, f, g, o``, so the weights map as they are:
        ``w_x = kernel``, ``w_h = recurrent_kernel``, ``b = bias``."""
        check_keras_activations(config, "LSTM")
        return cls(config["units"])

    def keras_config(self):
        self._check_no_options("Keras (keras.layers.LSTM has no projection, peepholes or layer norm)")
        return {"units": self.hidden_size, "activation": "tanh", "recurrent_activation": "sigmoid"}
