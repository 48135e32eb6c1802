"""Recurrent cells as pure functions over parameter pytrees.

A cell is a frozen, hashable dataclass (so it can be a static argument under ``jit``) that knows
how to make parameters and carries and how to take one step::

    params = cell.init(key, input_size)                 # a params NamedTuple
    carry = cell.initial_carry(batch_shape=(B,))        # zeros
    carry, y_t = cell(params, carry, x_t)               # x_t: (*batch, D) -> y_t: (*batch, H)

Weights are stored ``(in, out)``, so a layer computes ``x @ w + b``. Every step is split in two so
that ``unroll`` can hoist the input projection of all time steps into one matrix product before the
loop (cuDNN's first trick)::

    xp_t = cell.project_inputs(params, x_t)             # x_t @ w_x + b: (*batch, G·H)
    carry, y_t = cell.step(params, carry, xp_t)         # the recurrent product and gate arithmetic

Conventions (PyTorch / cuDNN gate order)::

    Vanilla  h' = act(x w_x + h w_h + b)
    LSTM     [i f g o] = x w_x + h w_h + b
             c' = σ(f)·c + σ(i)·tanh(g);   h' = σ(o)·tanh(c')
    GRU      [r z n]: r = σ(x w_xr + b_xr + h w_hr + b_hr),  z likewise,
             n = tanh(x w_xn + b_xn + r·(h w_hn + b_hn));   h' = (1 − z)·n + z·h

The LSTM forget bias lives in the initial ``b`` (``forget_bias``), never in the forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class VanillaParams(NamedTuple):
    """Elman RNN parameters: ``w_x (D, H)``, ``w_h (H, H)``, ``b (H,)``."""

    w_x: Array
    w_h: Array
    b: Array


class LSTMParams(NamedTuple):
    """LSTM parameters, gate blocks ``i, f, g, o``: ``w_x (D, 4H)``, ``w_h (H, 4H)``, ``b (4H,)``."""

    w_x: Array
    w_h: Array
    b: Array


class GRUParams(NamedTuple):
    """GRU parameters (reset-after form), blocks ``r, z, n``: ``w_x (D, 3H)``, ``w_h (H, 3H)``,
    ``b_x (3H,)``, ``b_h (3H,)``."""

    w_x: Array
    w_h: Array
    b_x: Array
    b_h: Array


class LSTMCarry(NamedTuple):
    """The LSTM state: the output ``h`` and the cell memory ``c``, each ``(*batch, H)``."""

    h: Array
    c: Array


# --------------------------------------------------------------------------------------------
# Activations and initializers: small tables, looked up by name.

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda a: a,
}


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


# --------------------------------------------------------------------------------------------
# Validation helpers (static shapes only, so they run at trace time before XLA sees anything).


def _check_choice(argument: str, value: Any, table) -> None:
    if not isinstance(value, str) or value not in table:
        raise ValueError(f"{argument} must be one of {sorted(table)}, got {value!r}")


def _check_positive_int(argument: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{argument} must be a positive int, got {value!r}")


def _check_dtype(argument: str, dtype) -> jnp.dtype:
    try:
        dtype = jnp.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{argument} must be a floating dtype, got {dtype!r}") from e
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{argument} must be a floating dtype, got {dtype}")
    return dtype


def _shape(x) -> tuple[int, ...] | None:
    return tuple(x.shape) if hasattr(x, "shape") else None


# --------------------------------------------------------------------------------------------
# Cells


@dataclasses.dataclass(frozen=True)
class Cell:
    """Base class: fields shared by every cell, and the generic step / validation code."""

    hidden_size: int
    recurrent_init: str = "orthogonal"
    recurrent_scale: float = 1.0

    num_blocks = 1  # gate blocks in w_x / w_h (a class attribute, not a field)
    params_type = VanillaParams

    def __post_init__(self):
        _check_positive_int("hidden_size", self.hidden_size)
        _check_choice("recurrent_init", self.recurrent_init, RECURRENT_INITS)
        if not isinstance(self.recurrent_scale, (int, float)) or not math.isfinite(self.recurrent_scale):
            raise ValueError(f"recurrent_scale must be a finite number, got {self.recurrent_scale!r}")

    # -- construction ------------------------------------------------------------------------
    def init(self, key, input_size: int, dtype=jnp.float32):
        """Initial parameters: Glorot-uniform ``w_x``, ``w_h`` from ``recurrent_init`` with gain
        ``recurrent_scale``, zero biases (LSTM: ``forget_bias`` in the f block)."""
        _check_positive_int("input_size", input_size)
        dtype = _check_dtype("dtype", dtype)
        if not (isinstance(key, jax.Array) and key.shape in ((), (2,))):
            raise TypeError(f"key must be a jax.random key, got {type(key).__name__} {_shape(key)}")
        return self._init(key, input_size, dtype)

    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        """The zero carry for inputs of leading shape ``batch_shape``."""
        if isinstance(batch_shape, (int, np.integer)):
            batch_shape = (int(batch_shape),)
        dtype = _check_dtype("dtype", dtype)
        h = jnp.zeros((*tuple(batch_shape), self.hidden_size), dtype)
        return self._carry_from_zeros(h)

    def _carry_from_zeros(self, h):
        return h

    # -- the step, split for hoisting --------------------------------------------------------
    def project_inputs(self, params, x):
        """``x @ w_x + b``: the part of a step that does not depend on the carry."""
        return x @ params.w_x + params.b

    def step(self, params, carry, xp_t):
        """One step from a projected input ``xp_t`` (see ``project_inputs``)."""
        raise NotImplementedError

    def __call__(self, params, carry, x_t):
        """One step: ``(params, carry, x_t) -> (carry, y_t)``; ``x_t`` is ``(*batch, D)``."""
        self.check_params(params)
        self.check_input(params, x_t, "x_t")
        self.check_carry(carry, _shape(x_t)[:-1], "carry")
        return self.step(params, carry, self.project_inputs(params, x_t))

    def output(self, carry):
        """The output ``y`` a carry stands for (``h``)."""
        return carry

    # -- validation --------------------------------------------------------------------------
    @property
    def gate_size(self) -> int:
        return self.num_blocks * self.hidden_size

    def input_size_of(self, params) -> int:
        return params.w_x.shape[0]

    def check_params(self, params) -> None:
        name = type(self).__name__
        if not isinstance(params, self.params_type):
            raise TypeError(
                f"params for {name} must be {self.params_type.__name__}, got {type(params).__name__}"
            )
        H, G = self.hidden_size, self.gate_size
        w_x_shape = _shape(params.w_x)
        if w_x_shape is None or len(w_x_shape) != 2 or w_x_shape[1] != G:
            raise ValueError(f"params.w_x for {name}(hidden_size={H}) must be (D, {G}), got {w_x_shape}")
        expected = {"w_h": (H, G), "b": (G,), "b_x": (G,), "b_h": (G,)}
        for field in params._fields[1:]:
            got = _shape(getattr(params, field))
            if got != expected[field]:
                raise ValueError(
                    f"params.{field} for {name}(hidden_size={H}) must be {expected[field]}, got {got}"
                )

    def check_input(self, params, x, argument: str) -> None:
        shape = _shape(x)
        if shape is None or len(shape) < 1:
            raise ValueError(f"{argument} must be an array (*batch, input_size), got {shape}")
        D = self.input_size_of(params)
        if shape[-1] != D:
            raise ValueError(f"{argument} must have input_size {D} in its last axis, got shape {shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{argument} must be floating point, got dtype {x.dtype}")

    def check_carry(self, carry, batch_shape, argument: str) -> None:
        expected = jax.eval_shape(lambda: self.initial_carry(batch_shape))
        got_def = jax.tree_util.tree_structure(carry)
        want_def = jax.tree_util.tree_structure(expected)
        if got_def != want_def:
            raise TypeError(
                f"{argument} for {type(self).__name__} must be structured like {want_def}, got {got_def}"
            )
        for got, want in zip(jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves(expected)):
            if _shape(got) != want.shape:
                raise ValueError(
                    f"{argument} for {type(self).__name__} must have shape {want.shape} "
                    f"(batch {tuple(batch_shape)}, hidden_size {self.hidden_size}), got {_shape(got)}"
                )


@dataclasses.dataclass(frozen=True)
class VanillaCell(Cell):
    """Elman RNN cell: ``h' = act(x @ w_x + h @ w_h + b)``, output ``h'``.

    ``activation`` is ``"tanh"`` (default), ``"relu"``, ``"sigmoid"`` or ``"linear"``; the linear
    cell with ``H = 1`` is the AR-like model ``y_t = u·y_{t-1} + m·x_t + B``.
    """

    activation: str = "tanh"

    num_blocks = 1
    params_type = VanillaParams

    def __post_init__(self):
        super().__post_init__()
        _check_choice("activation", self.activation, ACTIVATIONS)

    def _init(self, key, input_size, dtype):
        k_x, k_h = jax.random.split(key)
        H = self.hidden_size
        return VanillaParams(
            w_x=glorot_uniform(k_x, input_size, H, dtype),
            w_h=recurrent_matrix(k_h, H, 1, self.recurrent_init, self.recurrent_scale, dtype),
            b=jnp.zeros((H,), dtype),
        )

    def step(self, params, h_tm1, xp_t):
        h = ACTIVATIONS[self.activation](xp_t + h_tm1 @ params.w_h)
        return h, h


@dataclasses.dataclass(frozen=True)
class LSTMCell(Cell):
    """LSTM cell (Hochreiter & Schmidhuber 1997, with forget gate), gates ``i, f, g, o``::

        i, f, g, o = split(x @ w_x + h @ w_h + b, 4)
        c' = σ(f)·c + σ(i)·tanh(g)
        h' = σ(o)·tanh(c')

    The carry is ``LSTMCarry(h, c)``; the output is ``h'``. ``forget_bias`` is written into the f
    block of the initial ``b`` only.
    """

    forget_bias: float = 1.0

    num_blocks = 4
    params_type = LSTMParams

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

    def step(self, params, carry, xp_t):
        h_tm1, c_tm1 = carry
        a = xp_t + h_tm1 @ params.w_h  # (*batch, 4H)
        i, f, g, o = jnp.split(a, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c_tm1 + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return LSTMCarry(h, c), h

    def output(self, carry):
        return carry.h


@dataclasses.dataclass(frozen=True)
class GRUCell(Cell):
    """GRU cell in PyTorch's reset-after form, blocks ``r, z, n``::

        r = σ(x w_xr + b_xr + h w_hr + b_hr);   z = σ(x w_xz + b_xz + h w_hz + b_hz)
        n = tanh(x w_xn + b_xn + r·(h w_hn + b_hn))
        h' = (1 − z)·n + z·h
    """

    num_blocks = 3
    params_type = GRUParams

    def _init(self, key, input_size, dtype):
        k_x, k_h = jax.random.split(key)
        H = self.hidden_size
        return GRUParams(
            w_x=glorot_uniform(k_x, input_size, 3 * H, dtype),
            w_h=recurrent_matrix(k_h, H, 3, self.recurrent_init, self.recurrent_scale, dtype),
            b_x=jnp.zeros((3 * H,), dtype),
            b_h=jnp.zeros((3 * H,), dtype),
        )

    def project_inputs(self, params, x):
        return x @ params.w_x + params.b_x

    def step(self, params, h_tm1, xp_t):
        hp = h_tm1 @ params.w_h + params.b_h  # (*batch, 3H)
        x_r, x_z, x_n = jnp.split(xp_t, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(hp, 3, axis=-1)
        r = jax.nn.sigmoid(x_r + h_r)
        z = jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        h = (1.0 - z) * n + z * h_tm1
        return h, h


CELLS = {"vanilla": VanillaCell, "rnn": VanillaCell, "lstm": LSTMCell, "gru": GRUCell}


def make_cell(name: str, hidden_size: int, **kwargs) -> Cell:
    """Build a cell by name: ``"vanilla"`` (alias ``"rnn"``), ``"lstm"`` or ``"gru"``."""
    _check_choice("cell", name, CELLS)
    return CELLS[name](hidden_size, **kwargs)
