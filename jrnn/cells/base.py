"""``Cell``: the interface every recurrent cell implements, and the code they all share.

A cell is a frozen, hashable dataclass (static under ``jit``) that owns everything about itself:
its parameter and carry types, its gate maths written once, the hand-written step backward beside
the forward it mirrors, its gate names and its PyTorch / Flax key maps. Everything else in jrnn
(``unroll``, the fast hand-written backward of ``jrnn.scan``, the networks, the diagnostics,
interop) works through this interface only, so adding a cell is one new file and one registry
line in ``jrnn/cells/__init__.py``.

Shapes: ``x (*batch, D)``; carries are pytrees whose leaves are ``(*batch, ·)``, and the output
``y`` is the carry's first leaf (``h``). ``G`` is the gate width ``num_blocks · H``.

A cell implements::

    forward_step(params, carry_tm1, xp_t, h_scale=None) -> (carry, residuals)
        one step from the projected input ``xp_t = x_t @ w_x + b``; ``residuals`` is what the
        step backward needs beyond the carries (None, an array or a tuple of arrays, each
        ``(*batch, ·)``). Any leading axes work, so the same function recomputes the gate
        activations of many steps at once (``(T, B, ·)``).
    backward_step(params, residuals, carry_tm1, carry, d_carry, h_scale=None) -> (d_pre, d_carry_tm1)
        the step backward: from the cotangent of the carry after the step (the output's
        included) to the pre-activation gradients ``d_pre`` and the carry's cotangent before it.
    param_grads(params, xs, h_prev, d_pre) -> d_params
        the weight gradients as sums over every leading axis (one GEMM over ``T·B`` rows in the
        fast form, one step's batch in the reference form); ``h_prev`` is the ``h`` entering each
        step as it enters the recurrent product (times ``h_scale`` under recurrent dropout);
    input_grads(params, d_pre) -> d_xs
        the input cotangent.

The default ``param_grads`` and ``input_grads`` serve cells whose pre-activation is ``a = x w_x + h w_h + b`` with
``d_pre = d_a`` (vanilla, LSTM).

Recurrent dropout (Gal & Ghahramani 2016) is one hook: ``h_scale`` ``(*batch, R)`` (``R`` the size
of ``h``), a dropout mask divided by the keep probability, multiplies ``h_{t-1}`` wherever it enters
a recurrent matrix product, and nowhere else (not in the GRU's ``z·h``, not the LSTM's ``c``).
A cell writes ``recurrent(h_tm1, h_scale)`` at those products in ``forward_step`` and
``recurrent(d, h_scale)`` on the cotangent coming back out of them in ``backward_step``; None (no
dropout) costs nothing. The drivers pass the same ``h_scale`` at every step, and the masked
``h_prev`` to ``param_grads``. A cell without a recurrent product (``recurrent_product = False``:
minGRU, minLSTM) takes no ``h_scale``, and ``RNN`` refuses ``recurrent_dropout`` for it.

A cell's options (the LSTM's ``proj_size``, ``peepholes``, ``layer_norm``; the GRU's
``reset_after``, ``layer_norm``) add fields after the existing ones in its params NamedTuple, None
when the option is off (None is an empty pytree, so default params keep their leaves);
``param_shapes`` gives every field's shape, None for such a field, and ``check_params`` checks
them all. ``layer_norm`` / ``layer_norm_backward`` and ``scale`` (a diagonal weight) are the shared
pieces of their maths.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jrnn._checks import check_choice, check_dtype, check_int, check_key, fail, shape_of
from jrnn.cells.init import INIT_PRESETS, RECURRENT_INITS, InitPreset, orthogonal_full, torch_uniform

Array = jax.Array


def add_bias(a: Array, b: Array) -> Array:
    """``a + b`` with ``b (n,)`` broadcast explicitly over the leading axes of ``a (..., n)``."""
    return a + b.reshape((1,) * (a.ndim - 1) + (-1,))


def batch_sum(a: Array) -> Array:
    """Sum over every leading (batch or time) axis: ``(..., n) -> (n,)``."""
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


def outer_sum(a: Array, b: Array) -> Array:
    """``Σ a_i b_j`` over every leading axis: ``(..., m), (..., n) -> (m, n)``; one GEMM."""
    return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])


def stacks_outer_sums(input_widths, width: int) -> bool:
    """Whether ``outer_sums`` stacks its inputs into one GEMM: where ``d`` (``width`` columns) is at
    least twice as wide as the inputs together (the LSTM with ``H ≥ D``); else the stacked copy
    costs about what the saved passes over ``d`` save (the vanilla cell: ``G = H``)."""
    return width >= 2 * sum(input_widths)


def outer_sums(inputs: tuple, d: Array) -> tuple:
    """``(*[outer_sum(a, d) for a in inputs], batch_sum(d))``.

    Where ``stacks_outer_sums`` says so, as one GEMM ``[a_1, ..., a_k, 1]ᵀ d``: one pass over
    ``d`` (the ``(T·B, G)`` pre-activation gradient, the largest array of a backward) instead of
    one per product and one for the sum, the stacked rows a copy of the (narrower) inputs
    (``benchmarks/NOTES.md``, section 13).
    """
    if not stacks_outer_sums([a.shape[-1] for a in inputs], d.shape[-1]):
        return (*(outer_sum(a, d) for a in inputs), batch_sum(d))
    rows = [a.reshape(-1, a.shape[-1]) for a in inputs]
    d = d.reshape(-1, d.shape[-1])
    stacked = jnp.concatenate([*rows, jnp.ones((d.shape[0], 1), d.dtype)], axis=1).T @ d
    bounds = np.cumsum([r.shape[1] for r in rows])
    return (*jnp.split(stacked[:-1], bounds[:-1], axis=0), stacked[-1])


def sigmoid_slope(s: Array) -> Array:
    """``σ'(a)`` written with ``s = σ(a)``."""
    return s * (1.0 - s)


def tanh_slope(t: Array) -> Array:
    """``tanh'(a)`` written with ``t = tanh(a)``."""
    return 1.0 - t * t


def recurrent(h: Array, h_scale: Array | None) -> Array:
    """``h`` as it enters a recurrent matrix product: ``h·h_scale`` under recurrent dropout, ``h``
    itself without (``h_scale`` None). The same function scales the cotangent coming back out of
    that product."""
    return h if h_scale is None else h * h_scale


def scale(a: Array, w: Array) -> Array:
    """``a * w`` with ``w (n,)`` broadcast explicitly over the leading axes of ``a (..., n)``: a
    diagonal weight (peephole, layer-norm gain)."""
    return a * w.reshape((1,) * (a.ndim - 1) + (-1,))


LAYER_NORM_EPS = 1e-5
"""The ``ε`` of ``layer_norm`` (``torch.nn.LayerNorm``'s default)."""


def layer_norm(a: Array) -> tuple[Array, Array]:
    """Normalize over the last axis, without gain or bias: ``(y, s)`` with
    ``y = (a − mean(a))·s`` and ``s = 1/sqrt(var(a) + ε)`` ``(..., 1)`` (Ba, Kiros & Hinton 2016)."""
    centred = a - jnp.mean(a, axis=-1, keepdims=True)
    s = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + LAYER_NORM_EPS)
    return centred * s, s


def layer_norm_backward(d_y: Array, y: Array, s: Array) -> Array:
    """``d_a`` from ``d_y`` for ``(y, s) = layer_norm(a)``:
    ``d_a = s·(d_y − mean(d_y) − y·mean(d_y·y))``."""
    mean = lambda v: jnp.mean(v, axis=-1, keepdims=True)  # noqa: E731
    return s * (d_y - mean(d_y) - y * mean(d_y * y))


@dataclasses.dataclass(frozen=True)
class Cell:
    """Base class: the fields every cell has, validation, construction and the shared maths.

    Subclasses set ``params_type`` and ``gate_names`` (the names of the ``(H, H)`` blocks of
    ``w_h``, in storage order), and implement ``_init``, ``forward_step`` and ``backward_step``.
    """

    hidden_size: int
    recurrent_init: str = "orthogonal"
    recurrent_scale: float = 1.0

    params_type: ClassVar[type]
    gate_names: ClassVar[tuple[str, ...]] = ("w_h",)
    carry_parts: ClassVar[tuple[str, ...]] = ("h",)
    """The carry's named parts (``("h",)``, or the fields of a carry NamedTuple, ``h`` first)."""
    recurrent_product: ClassVar[bool] = True
    """``h`` enters a recurrent matrix product ``h @ w_h`` (where recurrent dropout's ``h_scale``
    applies); False for cells whose gates read the input only."""

    def __post_init__(self):
        check_int("hidden_size", self.hidden_size)
        check_choice("recurrent_init", self.recurrent_init, RECURRENT_INITS)
        v = self.recurrent_scale
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            fail("recurrent_scale", "a finite number", repr(v))

    # -- sizes -------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        """Gate blocks in ``w_x`` / ``w_h``."""
        return len(self.gate_names)

    @property
    def output_size(self) -> int:
        """Features of the output ``y_t`` (``h``)."""
        return self.hidden_size

    @property
    def gate_size(self) -> int:
        """``G = num_blocks · H``: the width of the input projection."""
        return self.num_blocks * self.hidden_size

    def input_size_of(self, params) -> int:
        """``D``, the input size the params were made for (the rows of ``w_x``)."""
        return params.w_x.shape[0]

    # -- construction ------------------------------------------------------------------------
    def init(self, key, input_size: int, dtype=jnp.float32, *, init: InitPreset = "default"):
        """Initial parameters.

        Args:
          key: a ``jax.random`` key.
          input_size: ``D``, the features of ``x_t``.
          dtype: a floating dtype.
          init: ``"default"`` (Glorot-uniform ``w_x``, ``w_h`` per gate block from
            ``recurrent_init`` with gain ``recurrent_scale``, zero biases, the LSTM's
            ``forget_bias`` in its f block), ``"torch"`` (PyTorch's ``U(±1/√H)`` for every weight
            and bias) or ``"keras"`` (Keras' defaults); see ``jrnn.cells.init.INIT_PRESETS``. For a
            cell with no recurrent matrix (``MinGRUCell``, ``MinLSTMCell``) ``"torch"`` draws every
            leaf ``U(±1/√H)`` and ``"keras"`` is the default.

        Returns:
          the cell's params NamedTuple.
        """
        check_int("input_size", input_size)
        dtype = check_dtype("dtype", dtype)
        check_key("key", key)
        check_choice("init", init, INIT_PRESETS)
        if init != "default" and (self.recurrent_init, self.recurrent_scale) != ("orthogonal", 1.0):
            fail(
                f"init={init!r}", "used with the default recurrent_init and recurrent_scale (the preset sets them)",
                f"recurrent_init={self.recurrent_init!r}, recurrent_scale={self.recurrent_scale!r}",
            )  # fmt: skip
        if init == "torch":
            return self._init_torch(key, input_size, dtype)
        params = self._init(key, input_size, dtype)
        shapes = self.param_shapes(input_size)
        if init == "keras" and "w_h" in shapes:  # the same, but w_h orthogonal as a whole matrix
            rows = shapes["w_h"][0]  # H (an LSTM's proj_size P with a projection)
            params = params._replace(w_h=orthogonal_full(jax.random.fold_in(key, 1), rows, self.gate_size, dtype))
        return params

    def _init_torch(self, key, input_size: int, dtype):
        """PyTorch's draws in PyTorch's layout, converted by the cell's own PyTorch map."""
        H, G = self.hidden_size, self.gate_size
        k_ih, k_hh, k_bi, k_bh = jax.random.split(key, 4)
        # no PyTorch counterpart (the base class's from_torch_mode): every leaf U(±1/√H)
        if type(self).from_torch_mode.__func__ is Cell.from_torch_mode.__func__:
            keys = jax.random.split(key, len(self.params_type._fields))
            shapes = self.param_shapes(input_size)
            return self.params_type(*(
                None if shapes.get(f) is None else torch_uniform(k, shapes[f], H, dtype)  # None: an option's field
                for k, f in zip(keys, self.params_type._fields)
            ))  # fmt: skip
        return self.from_torch_weights(
            torch_uniform(k_ih, (G, input_size), H, dtype), torch_uniform(k_hh, (G, H), H, dtype),
            torch_uniform(k_bi, (G,), H, dtype), torch_uniform(k_bh, (G,), H, dtype),
        )  # fmt: skip

    def _init(self, key, input_size: int, dtype):
        raise NotImplementedError

    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        """The zero carry for inputs of leading shape ``batch_shape`` (an int or a tuple)."""
        if isinstance(batch_shape, (int, np.integer)):
            batch_shape = (batch_shape,)
        dtype = check_dtype("dtype", dtype)
        h = jnp.zeros((*tuple(batch_shape), self.hidden_size), dtype)
        return self._carry_from_zeros(h)

    def _carry_from_zeros(self, h):
        return h

    # -- the maths ---------------------------------------------------------------------------
    def input_bias(self, params) -> Array:
        """The bias added to ``x @ w_x`` (``b``; the GRU's ``b_x``)."""
        return params.b

    def project_inputs(self, params, x: Array) -> Array:
        """``x @ w_x + b``: the part of a step that does not depend on the carry, ``(..., G)``."""
        return add_bias(x @ params.w_x, self.input_bias(params))

    def forward_step(self, params, carry_tm1, xp_t, h_scale=None):
        """One step from a projected input: ``(carry, residuals)`` (module docstring); ``h_scale``
        the recurrent dropout multiplier of ``h_tm1`` or None."""
        raise NotImplementedError

    def backward_step(self, params, residuals, carry_tm1, carry, d_carry, h_scale=None):
        """The step backward: ``(d_pre, d_carry_tm1)`` (module docstring), with the ``h_scale`` of
        the forward step."""
        raise NotImplementedError

    def param_grads(self, params, xs: Array, h_prev: Array, d_pre):
        """``d_params`` for ``a = xs @ w_x + h_prev @ w_h + b`` from ``d_pre = d_a``, summed over
        every leading axis."""
        w_x, w_h, b = outer_sums((xs, h_prev), d_pre)  # a = xs @ w_x + h_prev @ w_h + b
        return self.params_type(w_x=w_x, w_h=w_h, b=b)

    def input_grads(self, params, d_pre) -> Array:
        """``d_xs`` from ``d_pre = d_a``: ``a = xs @ w_x + ...``, backprop into x."""
        return d_pre @ params.w_x.T

    def step(self, params, carry, xp_t, h_scale=None):
        """One step from a projected input ``xp_t`` (see ``project_inputs``): ``(carry, y_t)``;
        ``h_scale`` the recurrent dropout multiplier of the entering ``h``, or None."""
        carry, _ = self.forward_step(params, carry, xp_t, h_scale)
        return carry, self.output(carry)

    def __call__(self, params, carry, x_t):
        """One step: ``(params, carry, x_t) -> (carry, y_t)``; ``x_t`` is ``(*batch, D)``."""
        self.check_params(params)
        self.check_input(params, x_t, "x_t")
        self.check_carry(carry, shape_of(x_t)[:-1], "carry")
        return self.step(params, carry, self.project_inputs(params, x_t))

    # -- the carry's output part -------------------------------------------------------------
    @staticmethod
    def output(carry) -> Array:
        """The output ``y`` a carry stands for: its first leaf, ``h``."""
        return jax.tree_util.tree_leaves(carry)[0]

    @staticmethod
    def add_to_output(carry, y: Array):
        """``carry`` with ``y`` added to its output part (the output's cotangent joining the
        carry's, since ``y_t = h_t``)."""
        leaves, treedef = jax.tree_util.tree_flatten(carry)
        return jax.tree_util.tree_unflatten(treedef, [leaves[0] + y, *leaves[1:]])

    # -- validation --------------------------------------------------------------------------
    def param_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        """``field -> shape`` of this cell's params for inputs of ``input_size`` features."""
        H, G = self.hidden_size, self.gate_size
        shapes = {"w_x": (input_size, G), "w_h": (H, G)}
        for field in self.params_type._fields[2:]:
            shapes[field] = (G,)
        return shapes

    def check_params(self, params) -> None:
        """TypeError / ValueError unless ``params`` fit this cell."""
        name = f"{type(self).__name__}(hidden_size={self.hidden_size})"
        if not isinstance(params, self.params_type):
            fail(f"params for {type(self).__name__}", self.params_type.__name__, type(params).__name__, TypeError)
        w_x = shape_of(params.w_x)
        if w_x is None or len(w_x) != 2 or w_x[1] != self.gate_size:
            fail(f"params.w_x for {name}", f"(D, {self.gate_size})", w_x)
        for field, expected in self.param_shapes(w_x[0]).items():
            got = shape_of(getattr(params, field))
            if got != expected:
                fail(f"params.{field} for {name}", str(expected), got)

    def check_input(self, params, x, argument: str) -> None:
        """Raise unless ``x`` is a floating ``(*batch, D)`` array for these params."""
        shape = shape_of(x)
        if shape is None or len(shape) < 1:
            fail(argument, "an array (*batch, input_size)", shape)
        D = self.input_size_of(params)
        if shape[-1] != D:
            fail(argument, f"an array with input_size {D} in its last axis", f"shape {shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            fail(argument, "floating point", f"dtype {x.dtype}", TypeError)

    def check_carry(self, carry, batch_shape, argument: str) -> None:
        """Raise unless ``carry`` has the structure and shapes of ``initial_carry(batch_shape)``."""
        expected = jax.eval_shape(lambda: self.initial_carry(batch_shape))
        got_def = jax.tree_util.tree_structure(carry)
        want_def = jax.tree_util.tree_structure(expected)
        if got_def != want_def:
            fail(f"{argument} for {type(self).__name__}", f"structured like {want_def}", got_def, TypeError)
        for got, want in zip(jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves(expected)):
            if shape_of(got) != want.shape:
                fail(
                    f"{argument} for {type(self).__name__}",
                    f"of shape {want.shape} (batch {tuple(batch_shape)}, hidden_size {self.hidden_size})",
                    shape_of(got),
                )

    # -- interop: PyTorch's nn.RNN / nn.LSTM / nn.GRU layout ---------------------------------
    torch_mode: ClassVar[str | None] = None
    """``mode`` of the ``torch.nn.RNNBase`` this cell maps to, or None."""

    def from_torch_weights(self, w_ih, w_hh, b_ih, b_hh):
        """Params from one PyTorch layer direction's ``weight_ih (G, D)``, ``weight_hh (G, H)``
        and biases ``(G,)`` (None without bias); the gate blocks are in the same order."""
        zeros = jnp.zeros((w_ih.shape[0],), w_ih.dtype)
        b_ih, b_hh = (zeros if b is None else b for b in (b_ih, b_hh))
        return self.params_type(w_x=w_ih.T, w_h=w_hh.T, b=b_ih + b_hh)

    def to_torch_weights(self, params):
        """``(weight_ih, weight_hh, bias_ih, bias_hh)``; the sum ``b`` goes into ``bias_ih``."""
        return params.w_x.T, params.w_h.T, params.b, jnp.zeros_like(params.b)

    @classmethod
    def from_torch_mode(cls, mode: str, hidden_size: int):
        """The cell a ``torch.nn.RNNBase`` of ``mode`` converts to, or None."""
        return None

    def torch_extra_weights(self, params) -> dict:
        """PyTorch weights beyond ``weight_ih``, ``weight_hh`` and the biases, by name without the
        layer suffix (an LSTM with ``proj_size``: ``{"weight_hr": w_hr.T}``); ``from_torch_weights``
        takes them back as keyword arguments."""
        return {}

    # -- interop: Flax linen cells -----------------------------------------------------------
    flax_kind: ClassVar[str | None] = None
    """The name of the flax.linen cell this cell maps to (``jrnn.interop.from_flax``), or None."""
    flax_keys: ClassVar[dict[str, tuple[str, ...]]] = {}
    """``{Dense name: its leaves}``: the flax.linen cell's parameter tree (input Dense names
    start with ``i``, recurrent ones with ``h``)."""

    @classmethod
    def from_flax_tree(cls, tree, hidden_size: int, activation=None):
        """``(cell, params)`` from a flax.linen cell's (validated) parameter tree."""
        raise NotImplementedError

    def to_flax_tree(self, params) -> dict:
        """The flax.linen cell's parameter tree computing what ``params`` compute."""
        raise NotImplementedError

    def carry_from_flax(self, carry):
        """A flax.linen cell's carry as this cell's."""
        return jnp.asarray(carry)

    def carry_to_flax(self, carry):
        """This cell's carry as the flax.linen cell's."""
        return carry


    # -- interop: Keras 3 recurrent layers (SimpleRNN, LSTM, GRU) --------------------------------
    keras_layer: ClassVar[str | None] = None
    """The name of the ``keras.layers`` recurrent layer this cell maps to (``jrnn.interop.from_keras``),
    or None."""

    @classmethod
    def from_keras_config(cls, config: dict) -> "Cell":
        """The cell for a Keras layer's ``get_config()`` (``units``, activation names, ...).

        The default serves cells whose only option is an ``activation`` field (the Elman cell)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        options = {"activation": config["activation"]} if "activation" in fields else {}
        return cls(config["units"], **options)

    def keras_config(self) -> dict:
        """The Keras layer's constructor arguments computing what this cell computes."""
        config = {"units": self.hidden_size}
        if hasattr(self, "activation"):
            config["activation"] = self.activation
        return config

    def from_keras_weights(self, kernel, recurrent_kernel, bias):
        """Params from a Keras cell's ``kernel (D, G)``, ``recurrent_kernel (H, G)`` and ``bias``
        (None for ``use_bias=False``). The default is the identity map of ``a = x w_x + h w_h + b``
        with the gate blocks in the same order (SimpleRNN; LSTM, whose ``i, f, c, o`` are jrnn's
        ``i, f, g, o``)."""
        b = jnp.zeros((kernel.shape[1],), kernel.dtype) if bias is None else bias
        return self.params_type(w_x=kernel, w_h=recurrent_kernel, b=b)

    def keras_weights(self, params, use_bias: bool = True) -> list:
        """The Keras cell's weights ``[kernel, recurrent_kernel, bias]`` (no bias when
        ``use_bias=False``)."""
        return [params.w_x, params.w_h, params.b] if use_bias else [params.w_x, params.w_h]

    def keras_biases(self, params) -> tuple:
        """The bias leaves that ``use_bias=False`` requires to be zero."""
        return (params.b,)


def check_keras_activations(config: dict, layer: str) -> None:
    """A Keras LSTM / GRU converts only with its default activations (tanh, sigmoid gates)."""
    for name, expected in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        if config.get(name) != expected:
            fail(f"layer.{name}", f"{expected!r} for a Keras {layer} to convert", repr(config.get(name)))


def flax_dense(kernel, bias=None) -> dict:
    """One flax.linen ``Dense``'s parameters."""
    return {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}


def check_cell(cell: Any, argument: str = "cell") -> None:
    """TypeError unless ``cell`` is a jrnn cell."""
    if not isinstance(cell, Cell):
        fail(argument, "a jrnn cell (a jrnn.Cell such as LSTMCell)", type(cell).__name__, TypeError)
