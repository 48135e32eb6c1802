"""The Elman (vanilla) cell: ``h' = act(x @ w_x + h @ w_h + b)``, output ``h'``."""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp

from jrnn._checks import check_choice, fail
from jrnn.cells.base import Cell, flax_dense, recurrent
from jrnn.cells.init import glorot_uniform, recurrent_matrix

Array = jax.Array

Activation = Literal["tanh", "relu", "sigmoid", "linear"]


class VanillaParams(NamedTuple):
    """Elman RNN parameters: ``w_x (D, H)``, ``w_h (H, H)``, ``b (H,)``."""

    w_x: Array
    w_h: Array
    b: Array


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda a: a,
}
"""``name -> act``: the activations of ``VanillaCell(activation=name)``."""

ACTIVATION_SLOPES: dict[str, Callable[[Array], Array]] = {
    "tanh": lambda h: 1.0 - h * h,  # h = tanh(a)
    "relu": lambda h: (h > 0).astype(h.dtype),  # h = max(a, 0); slope 0 at a = 0, as jax.nn.relu
    "sigmoid": lambda h: h * (1.0 - h),  # h = σ(a)
    "linear": lambda h: jnp.ones_like(h),  # h = a
}
"""``name -> slope(h)``: the activation's derivative ``act'(a)`` written with its output ``h = act(a)``."""


@dataclasses.dataclass(frozen=True)
class VanillaCell(Cell):
    """Elman RNN cell: ``h' = act(x @ w_x + h @ w_h + b)``, output ``h'``.

    ``activation`` is ``"tanh"`` (default), ``"relu"``, ``"sigmoid"`` or ``"linear"``; the linear
    cell with ``H = 1`` is the AR-like model ``y_t = u·y_{t-1} + m·x_t + B``. The step backward
    needs no residuals: the activation's slope is written with its output ``h'``.

    Under recurrent dropout (``RNN(recurrent_dropout=p)``) ``h' = act(x w_x + (h·m_h) w_h + b)``
    with ``m_h`` the sequence's mask divided by ``1 − p``.
    """

    activation: Activation = "tanh"

    params_type: ClassVar[type] = VanillaParams
    gate_names: ClassVar[tuple[str, ...]] = ("w_h",)

    def __post_init__(self):
        super().__post_init__()
        check_choice("activation", self.activation, ACTIVATIONS)

    def _init(self, key, input_size, dtype):
        k_x, k_h = jax.random.split(key)
        H = self.hidden_size
        return VanillaParams(
            w_x=glorot_uniform(k_x, input_size, H, dtype),
            w_h=recurrent_matrix(k_h, H, 1, self.recurrent_init, self.recurrent_scale, dtype),
            b=jnp.zeros((H,), dtype),
        )

    def forward_step(self, params, h_tm1, xp_t, h_scale=None):
        h = ACTIVATIONS[self.activation](xp_t + recurrent(h_tm1, h_scale) @ params.w_h)  # a = xp + h_tm1 @ w_h
        return h, None

    def backward_step(self, params, residuals, h_tm1, h, d_h, h_scale=None):
        d_a = d_h * ACTIVATION_SLOPES[self.activation](h)  # h = act(a): backprop through the nonlinearity
        d_h_tm1 = recurrent(d_a @ params.w_h.T, h_scale)  # a = xp + h_tm1 @ w_h: backprop into h
        return d_a, d_h_tm1

    # -- interop ---------------------------------------------------------------------------
    @property
    def torch_mode(self) -> str:
        """PyTorch's ``mode`` of the matching ``torch.nn.RNN``: ``"RNN_TANH"`` or ``"RNN_RELU"``."""
        if self.activation not in ("tanh", "relu"):
            fail("model.cell.activation", "'tanh' or 'relu' for torch.nn.RNN", repr(self.activation))
        return "RNN_TANH" if self.activation == "tanh" else "RNN_RELU"

    @classmethod
    def from_torch_mode(cls, mode: str, hidden_size: int):
        if mode in ("RNN_TANH", "RNN_RELU"):
            return cls(hidden_size, activation="tanh" if mode == "RNN_TANH" else "relu")
        return None

    flax_kind: ClassVar[str] = "simple"
    flax_keys: ClassVar[dict] = {"i": ("kernel", "bias"), "h": ("kernel",)}

    @classmethod
    def from_flax_tree(cls, tree, hidden_size, activation=None):
        """``nn.SimpleCell``: ``w_x = i.kernel``, ``w_h = h.kernel``, ``b = i.bias``."""
        k = lambda name: jnp.asarray(tree[name]["kernel"])  # noqa: E731
        cell = cls(hidden_size, activation="tanh" if activation is None else activation)
        return cell, VanillaParams(k("i"), k("h"), jnp.asarray(tree["i"]["bias"]))

    def to_flax_tree(self, params):
        return {"i": flax_dense(params.w_x, params.b), "h": flax_dense(params.w_h)}
