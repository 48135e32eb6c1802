"""``RNN``: a stacked, optionally bidirectional recurrent network with dropout and a readout.

::

    model = RNN(cell=LSTMCell(64), num_layers=3, bidirectional=False, output_size=None, dropout=0.0)
    params = model.init(key, input_size)           # NetworkParams(layers, readout)
    ys, carries = model.apply(params, xs)          # xs (B, T, D) -> ys (B, T, H·dirs or O)

``params.layers[l]`` is layer l's cell params, or a ``(forward, backward)`` tuple when
bidirectional; a bidirectional layer feeds the next one ``concat([fwd, bwd], -1)``. ``carries`` has
one entry per layer (a ``(fwd, bwd)`` pair when bidirectional); passing it back to ``apply``
continues the sequence. Dropout (between layers, on every layer's output but the last, as PyTorch
does) uses one mask per sequence drawn outside the scan (variational dropout); ``input_dropout``
and ``recurrent_dropout`` (Gal & Ghahramani 2016, Keras' ``dropout`` and ``recurrent_dropout``)
mask each layer's input and the ``h`` entering its recurrent products, one mask per sequence too,
the same at every step (``layer_dropout_scales``); no ``dropout_key`` means no dropout. The readout
is per step, and outputs at padded steps are zero, readout included.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn._checks import (
    Layout,
    check_bool,
    check_choice,
    check_mask,
    check_int,
    check_optional_int,
    check_probability,
    check_seq_lengths,
    check_sequence,
    fail,
    run_steps,
    shape_of,
)
from jrnn.cells import Cell, check_cell, glorot_uniform
from jrnn.cells.base import add_bias
from jrnn.cells.init import InitPreset, torch_uniform
from jrnn.scan import Backward, LayerDropout, compute_dtype, scan_layer, step_mask, time_axis_for
from jrnn.unroll import Method
from jrnn.unroll import check_options, prepare_carry

Array = jax.Array


class Readout(NamedTuple):
    """Per-step linear readout ``y = h @ w + b``: ``w (H_top, O)``, ``b (O,)``."""

    w: Array
    b: Array


class NetworkParams(NamedTuple):
    """``layers``: a tuple with one entry per layer (cell params, or ``(fwd, bwd)``);
    ``readout``: a ``Readout`` or None."""

    layers: tuple
    readout: Readout | None


def directions(model: "RNN", layer_params) -> tuple:
    """A layer's params per direction: ``(p,)``, or ``(forward, backward)`` when bidirectional."""
    return tuple(layer_params) if model.bidirectional else (layer_params,)


def dropout_scales(model: "RNN", dropout_key, batch_size: int, dtype) -> list:
    """The multipliers ``mask / keep`` ``(B, features)`` applied after each layer but the last
    (None where no dropout applies): one mask per sequence, drawn outside the scan (variational
    dropout). ``RNN.apply`` and the hand-written backward both draw them here."""
    if dropout_key is None or model.dropout <= 0.0:
        return [None] * model.num_layers
    keys = jax.random.split(dropout_key, model.num_layers)
    keep = 1.0 - model.dropout
    scales = []
    for layer in range(model.num_layers - 1):
        mask = jax.random.bernoulli(keys[layer], keep, (batch_size, model.top_size))
        scales.append(mask.astype(dtype) / keep)
    return scales + [None]


LAYER_DROPOUT_STREAM = 0x6A726E6E
"""``layer_dropout_scales`` draws from ``jax.random.fold_in(dropout_key, LAYER_DROPOUT_STREAM)``,
a stream apart from the keys ``dropout_scales`` splits off ``dropout_key`` (so the masks between
layers stay what they were without ``input_dropout`` and ``recurrent_dropout``)."""


def layer_dropout_scales(model: "RNN", dropout_key, batch_size: int, input_size: int, dtype) -> tuple:
    """The multipliers ``mask / keep`` of ``input_dropout`` and ``recurrent_dropout`` inside each
    layer: one ``LayerDropout(x, h)`` per direction, a tuple per layer, or None per direction when
    neither applies (no key, or both rates zero). One mask per sequence, the same at every step.

    ``x (B, D_l)`` multiplies layer l's input ``x_t`` before its projection (``D_l`` is
    ``input_size`` for layer 0, ``top_size`` above); ``h (B, R)`` multiplies ``h_{t-1}`` where it
    enters the recurrent products (``R = cell.output_size``); a field is None when its rate is 0.
    Masks are ``jax.random.bernoulli(k, 1 − p, shape)`` with ``k = keys[l, d, 0]`` (input) or
    ``keys[l, d, 1]`` (recurrent) of ``keys = jax.random.split(fold_in(dropout_key,
    LAYER_DROPOUT_STREAM), (num_layers, num_directions, 2))``: independent per layer, direction and
    kind. ``RNN.apply`` and ``jrnn.bptt.value_and_grad`` both draw them here.
    """
    dirs = model.num_directions
    if dropout_key is None or (model.input_dropout <= 0.0 and model.recurrent_dropout <= 0.0):
        return tuple((None,) * dirs for _ in range(model.num_layers))
    keys = jax.random.split(jax.random.fold_in(dropout_key, LAYER_DROPOUT_STREAM), (model.num_layers, dirs, 2))

    def draw(key, rate, size):
        if rate <= 0.0:
            return None
        keep = 1.0 - rate
        return jax.random.bernoulli(key, keep, (batch_size, size)).astype(dtype) / keep

    return tuple(
        tuple(
            LayerDropout(
                x=draw(keys[layer, d, 0], model.input_dropout, model.layer_input_size(layer, input_size)),
                h=draw(keys[layer, d, 1], model.recurrent_dropout, model.cell.output_size),
            )
            for d in range(dirs)
        )
        for layer in range(model.num_layers)
    )


Merge = Literal["concat", "sum", "mean", "mul"]
MERGES = ("concat", "sum", "mean", "mul")


def merge(model: "RNN", outs: list) -> Array:
    """A layer's directions as one output (``model.merge``): ``concat([fwd, bwd], -1)``, their
    sum, mean or elementwise product; a unidirectional layer's output as it is."""
    if len(outs) == 1:
        return outs[0]
    fwd, bwd = outs
    return _MERGES[model.merge][0](fwd, bwd)


def merge_vjp(model: "RNN", d: Array, outs: list) -> list:
    """The hand-written backward of ``merge``: the cotangent of each direction's output."""
    if len(outs) == 1:
        return [d]
    return list(_MERGES[model.merge][1](d, *outs))


def _split_halves(d, fwd, bwd):
    H = fwd.shape[-1]
    return d[..., :H], d[..., H:]  # merged = concat([fwd, bwd])


_MERGES = {
    "concat": (lambda f, b: jnp.concatenate([f, b], axis=-1), _split_halves),
    "sum": (lambda f, b: f + b, lambda d, f, b: (d, d)),
    "mean": (lambda f, b: 0.5 * (f + b), lambda d, f, b: (0.5 * d, 0.5 * d)),
    "mul": (lambda f, b: f * b, lambda d, f, b: (d * b, d * f)),
}
"""``merge -> (forward, hand-written backward)``."""


def stack(model: "RNN", params: "NetworkParams", xs: Array, carries, run_layer, scales, time_axis: int = 0) -> tuple:
    """The one stacking driver: every layer and direction of ``model`` over time-major ``xs``
    (batch-major ``(B, T, ·)`` with ``time_axis=1``, every ``h`` below then too).

    ``run_layer(layer, direction, params, h, carry, reverse) -> (carry_T, ys, kept)`` runs one
    direction of one layer over ``h (T, B, ·)``; a bidirectional layer feeds the next one its
    directions merged (``merge``: ``concat([fwd, bwd], -1)`` by default), and ``scales[l]`` (``dropout_scales``) multiplies layer l's
    output. ``RNN.apply``, the hand-written network backward and the diagnostics all run here.

    Returns:
      ``(top, carries, kept, inputs)``: the top layer's output ``(T, B, H·dirs)``, the final
      carries (one entry per layer, a ``(fwd, bwd)`` pair when bidirectional), and per layer the
      list of what each direction's ``run_layer`` kept and the layer's input.
    """
    h = xs
    new_carries, kept, inputs = [], [], []
    for layer, layer_params in enumerate(params.layers):
        c0s = directions(model, carries[layer])
        inputs.append(h)
        outs, cs, ks = [], [], []
        for d, p in enumerate(directions(model, layer_params)):
            c, y, k = run_layer(layer, d, p, h, c0s[d], d == 1)
            outs.append(y)
            cs.append(c)
            ks.append(k)
        h = merge(model, outs)  # (T, B, top_size)
        new_carries.append(tuple(cs) if model.bidirectional else cs[0])
        kept.append(ks)
        if scales[layer] is not None:
            h = h * jnp.expand_dims(scales[layer], time_axis)  # dropout, one mask per sequence
    return h, tuple(new_carries), kept, inputs


def readout(params: "NetworkParams", top: Array, valid: Array | None) -> Array:
    """The readout ``top @ w + b``: per step ``(T, B, O)``, zero at padded steps (``valid (T, B)``),
    or of pooled features ``(B, P) -> (B, O)`` (``valid`` None); ``top`` itself without a readout."""
    if params.readout is None:
        return top
    ys = add_bias(top @ params.readout.w, params.readout.b)
    if valid is not None:
        ys = jnp.where(valid[..., None], ys, jnp.zeros_like(ys))
    return ys


# --------------------------------------------------------------------------------------------
# Sequence-level heads: pooling the top layer over time, forward and hand-written backward.
# ``top (T, B, F)`` is zero at padded steps; ``finals`` holds the top layer's final carry per
# direction; ``steps`` the scans' steps (None, lengths ``(B,)`` or a ``(T, B)`` mask). Each backward returns ``(d_top (T, B, F), d_finals)`` with
# ``d_finals`` the cotangents of each direction's final output ``h`` (None where not read).

Pool = Literal["final", "last", "mean", "max", "flatten"]
POOLS = ("final", "last", "mean", "max", "flatten")


def _run(top, steps):
    """``(T, B)`` booleans: the steps that ran (all when ``steps`` is None)."""
    valid = step_mask(steps, top.shape[0])
    return jnp.ones(top.shape[:2], bool) if valid is None else valid


def _pool_final(model, top, finals, steps):
    """Each direction's final hidden state, merged (``merge``): the forward one after the last
    run step, the backward one after step 0."""
    return merge(model, [model.cell.output(c) for c in finals])  # (B, top_size)


def _pool_final_vjp(model, d, top, finals, steps):
    return jnp.zeros_like(top), merge_vjp(model, d, [model.cell.output(c) for c in finals])


def _last_index(top, steps):
    T = top.shape[0]
    t = jnp.broadcast_to(jnp.arange(T)[:, None], top.shape[:2])
    last = jnp.max(jnp.where(_run(top, steps), t, -1), axis=0)  # (B,)
    return jnp.clip(last, 0, T - 1), last >= 0


def _pool_last(model, top, finals, steps):
    """The top layer's output at each sequence's last run step (zeros for an empty one)."""
    idx, has = _last_index(top, steps)
    picked = top[idx, jnp.arange(top.shape[1])]  # (B, F)
    return jnp.where(has[:, None], picked, jnp.zeros_like(picked))


def _pool_last_vjp(model, d, top, finals, steps):
    idx, has = _last_index(top, steps)
    d = jnp.where(has[:, None], d, jnp.zeros_like(d))
    return jnp.zeros_like(top).at[idx, jnp.arange(top.shape[1])].set(d), None  # picked = top[idx, b]


def _count(top, steps):
    return jnp.maximum(jnp.sum(_run(top, steps), axis=0), 1).astype(top.dtype)  # (B,)


def _pool_mean(model, top, finals, steps):
    """The mean over each sequence's run steps (zeros for an empty one)."""
    return jnp.sum(top, axis=0) / _count(top, steps)[:, None]  # steps not run are zero in top


def _pool_mean_vjp(model, d, top, finals, steps):
    d_top = jnp.broadcast_to((d / _count(top, steps)[:, None])[None], top.shape)  # mean = Σ_t top / count
    return jnp.where(_run(top, steps)[..., None], d_top, jnp.zeros_like(d_top)), None


def _max_parts(top, steps):
    valid = _run(top, steps)
    masked = jnp.where(valid[..., None], top, jnp.full_like(top, -jnp.inf))
    return masked, jnp.max(masked, axis=0), jnp.any(valid, axis=0)


def _pool_max(model, top, finals, steps):
    """The maximum over each sequence's run steps, feature by feature (zeros for an empty one)."""
    _, peak, has = _max_parts(top, steps)
    return jnp.where(has[:, None], peak, jnp.zeros_like(peak))


def _pool_max_vjp(model, d, top, finals, steps):
    masked, peak, has = _max_parts(top, steps)
    at_peak = (masked == peak[None]).astype(top.dtype)  # (T, B, F); ties share the gradient
    share = at_peak / jnp.maximum(jnp.sum(at_peak, axis=0), 1.0)[None]
    d = jnp.where(has[:, None], d, jnp.zeros_like(d))
    return share * d[None], None  # peak = max_t masked


def _pool_flatten(model, top, finals, lengths):
    """All ``T`` steps of the top layer, concatenated: ``(B, T·F)``."""
    T, B, F = top.shape
    return jnp.swapaxes(top, 0, 1).reshape(B, T * F)


def _pool_flatten_vjp(model, d, top, finals, lengths):
    T, B, F = top.shape
    return jnp.swapaxes(d.reshape(B, T, F), 0, 1), None


_POOLING = {
    "final": (_pool_final, _pool_final_vjp),
    "last": (_pool_last, _pool_last_vjp),
    "mean": (_pool_mean, _pool_mean_vjp),
    "max": (_pool_max, _pool_max_vjp),
    "flatten": (_pool_flatten, _pool_flatten_vjp),
}
"""``pool -> (forward, hand-written backward)``."""


def pool(model: "RNN", top: Array, carries, lengths) -> Array:
    """``model.pool`` applied to the top layer's output ``top (T, B, F)``: ``(B, P)``."""
    finals = directions(model, carries[-1])
    return _POOLING[model.pool][0](model, top, finals, lengths)


def pool_vjp(model: "RNN", d_pooled: Array, top: Array, carries, lengths):
    """The hand-written backward of ``pool``: ``(d_top (T, B, F), d_finals)``, ``d_finals`` a
    list with the cotangent of each direction's final output ``h``, or None."""
    finals = directions(model, carries[-1])
    return _POOLING[model.pool][1](model, d_pooled, top, finals, lengths)


def loss_view(model: "RNN", ys: Array, seq_lengths):
    """``(preds, seq_lengths)`` as ``jrnn.losses`` scores them: per-step outputs as they are; a
    pooled ``(B, O)`` output as a sequence of one step, ``(B, 1, O)``, scored once (targets
    ``(B, O)`` or labels ``(B,)``)."""
    if model.pool is None:
        return ys, seq_lengths
    return ys[:, None], None


@dataclasses.dataclass(frozen=True)
class RNN:
    """A stack of recurrent layers of one cell type. Frozen and hashable, so it can be static.

    Every dropout (``dropout``, ``input_dropout``, ``recurrent_dropout``) is inverted (the kept
    units scale by ``1/(1 − p)``), uses one mask per sequence, is drawn from ``apply``'s
    ``dropout_key`` (``dropout_scales``, ``layer_dropout_scales``) and is off without it; the
    hand-written backward (``backward="bptt"``, ``jrnn.bptt.value_and_grad``) applies the same
    masks.

    Args:
      cell: the cell of every layer (``LSTMCell(64)``, ...).
      num_layers: layers stacked; layer l + 1 reads layer l's output.
      bidirectional: each layer runs a forward and a backward direction and concatenates them.
      output_size: None, or the size of a per-step linear readout on the top layer.
      dropout: between layers, on every layer's output but the last (PyTorch's placement), one
        mask per sequence; applied only when ``apply`` gets a ``dropout_key``.
      pool: None (per-step outputs ``(B, T, ·)``), or a sequence-level head that pools the top
        layer over time into ``(B, P)`` before the readout, so ``apply`` returns ``(B, O)``:
        ``"final"`` each direction's final hidden state (forward after the last valid step,
        backward after step 0), concatenated; ``"last"`` the output at the last valid step;
        ``"mean"`` / ``"max"`` over valid steps; ``"flatten"`` all ``num_steps`` steps
        concatenated (``P = num_steps · H·dirs``). A sequence of length 0 pools to zeros. For a
        bidirectional model prefer ``"final"``: at the last step the backward direction has seen
        one step only.
      num_steps: the fixed sequence length, required by ``pool="flatten"`` (only).
      merge: how a bidirectional layer's two directions become its output (and the next layer's
        input): ``"concat"`` (``(·, 2H)``, PyTorch's), ``"sum"``, ``"mean"`` or ``"mul"``
        (elementwise, ``(·, H)``), as Keras' ``Bidirectional(merge_mode=...)``. ``pool="final"``
        merges the two final states the same way.
      input_dropout: inside every layer, on its input ``x_t`` (Keras' ``dropout``): one mask per
        sequence and direction, the same at every step, applied before the input projection.
      recurrent_dropout: inside every layer, on ``h_{t-1}`` where it enters the recurrent matrix
        products (Keras' ``recurrent_dropout``; Gal & Ghahramani 2016): one mask per sequence and
        direction, the same at every step. Not the LSTM's cell state ``c``, not the GRU's
        interpolation ``z·h``; an LSTM with ``proj_size`` masks the projected ``h``. Cells without
        a recurrent product (minGRU, minLSTM) refuse it, and so do the parallel ``method=`` solvers
        when a ``dropout_key`` is given.
    """

    cell: Cell
    num_layers: int = 1
    bidirectional: bool = False
    output_size: int | None = None
    dropout: float = 0.0
    pool: Pool | None = None
    num_steps: int | None = None
    merge: Merge = "concat"
    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0

    def __post_init__(self):
        check_cell(self.cell)
        check_int("num_layers", self.num_layers)
        check_bool("bidirectional", self.bidirectional)
        check_optional_int("output_size", self.output_size)
        check_probability("dropout", self.dropout)
        check_probability("input_dropout", self.input_dropout)
        check_probability("recurrent_dropout", self.recurrent_dropout)
        if self.recurrent_dropout > 0.0 and not self.cell.recurrent_product:
            fail(
                "recurrent_dropout", f"0.0 for {type(self.cell).__name__} (its gates read the input only: "
                "there is no recurrent product to mask)", repr(self.recurrent_dropout),
            )  # fmt: skip
        if self.pool is not None:
            check_choice("pool", self.pool, POOLS)
        check_choice("merge", self.merge, MERGES)
        if self.merge != "concat" and not self.bidirectional:
            fail("merge", "'concat' for a unidirectional RNN (it merges two directions)", repr(self.merge))
        if self.pool == "flatten":
            check_int("num_steps", self.num_steps)
        elif self.num_steps is not None:
            fail("num_steps", "None unless pool='flatten'", repr(self.num_steps))

    # -- sizes -------------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        """2 when bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def hidden_size(self) -> int:
        """``H``, the cell's hidden size."""
        return self.cell.hidden_size

    @property
    def top_size(self) -> int:
        """Features of a layer's output (its directions merged), the top one's before the readout."""
        return self.cell.output_size * (self.num_directions if self.merge == "concat" else 1)

    @property
    def pooled_size(self) -> int:
        """Features the readout reads: the top layer's, times ``num_steps`` for ``"flatten"``."""
        return self.top_size * (self.num_steps if self.pool == "flatten" else 1)

    @property
    def out_size(self) -> int:
        """Features of ``apply``'s output."""
        return self.output_size if self.output_size is not None else self.pooled_size

    @property
    def has_dropout(self) -> bool:
        """Whether any dropout rate is positive (so that ``apply`` uses a ``dropout_key``)."""
        return self.dropout > 0.0 or self.input_dropout > 0.0 or self.recurrent_dropout > 0.0

    def layer_input_size(self, layer: int, input_size: int) -> int:
        """Features layer ``layer`` reads: ``input_size`` for layer 0, ``top_size`` above it."""
        return input_size if layer == 0 else self.top_size

    def first_cell_params(self, params: NetworkParams):
        """The params of layer 0's (forward) direction."""
        return directions(self, params.layers[0])[0]

    # -- construction ------------------------------------------------------------------------
    def init(self, key, input_size: int, dtype=jnp.float32, *, init: InitPreset = "default") -> NetworkParams:
        """Parameters for inputs with ``input_size`` features; one key split per layer.

        Args:
          key: a ``jax.random`` key.
          input_size: ``D``, the features of the input sequence.
          dtype: a floating dtype.
          init: the cells' preset, ``"default"``, ``"torch"`` or ``"keras"`` (``Cell.init``);
            the readout is Glorot-uniform with a zero bias (``"torch"``: ``U(±1/√P)`` for both, as
            ``torch.nn.Linear``).

        Returns:
          ``NetworkParams(layers, readout)``.
        """
        keys = jax.random.split(key, self.num_layers + 1)
        layers = []
        for layer in range(self.num_layers):
            d_in = self.layer_input_size(layer, input_size)
            if self.bidirectional:
                k_f, k_b = jax.random.split(keys[layer])
                layers.append((self.cell.init(k_f, d_in, dtype, init=init), self.cell.init(k_b, d_in, dtype, init=init)))
            else:
                layers.append(self.cell.init(keys[layer], d_in, dtype, init=init))
        head = None
        if self.output_size is not None and init == "torch":
            k_w, k_b = jax.random.split(keys[-1])
            P, O = self.pooled_size, self.output_size
            head = Readout(w=torch_uniform(k_w, (P, O), P, dtype), b=torch_uniform(k_b, (O,), P, dtype))
        elif self.output_size is not None:
            head = Readout(
                w=glorot_uniform(keys[-1], self.pooled_size, self.output_size, dtype),
                b=jnp.zeros((self.output_size,), dtype),
            )
        return NetworkParams(tuple(layers), head)

    def initial_carries(self, batch_shape=(), dtype=jnp.float32) -> tuple:
        """Zero carries, one entry per layer (a ``(fwd, bwd)`` pair when bidirectional)."""
        one = lambda: self.cell.initial_carry(batch_shape, dtype)  # noqa: E731
        return tuple((one(), one()) if self.bidirectional else one() for _ in range(self.num_layers))

    # -- validation --------------------------------------------------------------------------
    def _check_pair(self, value, argument: str) -> None:
        if self.bidirectional and not (isinstance(value, tuple) and not hasattr(value, "_fields") and len(value) == 2):
            fail(argument, "a (forward, backward) pair for a bidirectional RNN", type(value).__name__, TypeError)

    def check_params(self, params) -> int:
        """Validate ``params`` against this spec; return the input size they expect."""
        if not isinstance(params, NetworkParams):
            fail("params", "NetworkParams(layers, readout)", type(params).__name__, TypeError)
        layers = params.layers
        if not isinstance(layers, (tuple, list)) or len(layers) != self.num_layers:
            got = len(layers) if isinstance(layers, (tuple, list)) else type(layers).__name__
            fail("params.layers", f"a tuple of num_layers={self.num_layers} entries", got)
        input_size = None
        for layer, p in enumerate(layers):
            self._check_pair(p, f"params.layers[{layer}]")
            for d in directions(self, p):
                self.cell.check_params(d)
                d_in = self.cell.input_size_of(d)
                if layer == 0:
                    input_size = d_in if input_size is None else input_size
                    if d_in != input_size:
                        fail("params.layers[0] directions", "of one input size", f"{input_size} and {d_in}")
                elif d_in != self.top_size:
                    fail(
                        f"params.layers[{layer}].w_x",
                        f"of {self.top_size} input rows (the previous layer's output)", d_in,
                    )  # fmt: skip
        head = params.readout
        if self.output_size is None:
            if head is not None:
                fail("params.readout", "None for an RNN with output_size=None", "a Readout")
        else:
            if not isinstance(head, Readout):
                fail("params.readout", "Readout(w, b)", type(head).__name__, TypeError)
            expected = {"w": (self.pooled_size, self.output_size), "b": (self.output_size,)}
            for field, shape in expected.items():
                got = shape_of(getattr(head, field))
                if got != shape:
                    fail(f"params.readout.{field}", str(shape), got)
        return input_size

    def check_carries(self, carries, batch_shape, dtype) -> tuple:
        """Validate ``carries`` (one entry per layer) and cast them to ``dtype``."""
        if not isinstance(carries, (tuple, list)) or len(carries) != self.num_layers:
            got = len(carries) if isinstance(carries, (tuple, list)) else type(carries).__name__
            fail("carries", f"a tuple with num_layers={self.num_layers} entries", got, TypeError)
        out = []
        for layer, c in enumerate(carries):
            self._check_pair(c, f"carries[{layer}]")
            if self.bidirectional:
                out.append(tuple(
                    prepare_carry(self.cell, cd, batch_shape, dtype, f"carries[{layer}][{d}]")
                    for d, cd in enumerate(c)
                ))  # fmt: skip
            else:
                out.append(prepare_carry(self.cell, c, batch_shape, dtype, f"carries[{layer}]"))
        return tuple(out)

    def check_inputs(self, params, xs, carries, seq_lengths, *, time_major: bool = False, mask=None):
        """Validate what ``apply`` takes; return ``(layout, steps, carries, dtype)`` with ``steps``
        what the scans take (None, lengths ``(B,)``, or a time-major ``(T, B)`` mask)."""
        input_size = self.check_params(params)
        layout = check_sequence(xs, input_size, time_major=time_major)
        if self.pool == "flatten" and layout.num_steps != self.num_steps:
            fail("xs", f"a sequence of num_steps={self.num_steps} steps for pool='flatten'", f"{layout.num_steps} steps")
        lengths = check_seq_lengths(seq_lengths, layout.batch_size if layout.batched else None, layout.num_steps)
        steps = run_steps(lengths, check_mask(mask, layout), layout.num_steps)
        dtype = compute_dtype(xs, self.first_cell_params(params))
        if carries is not None:
            carries = self.check_carries(carries, layout.batch_shape, dtype)
        return layout, steps, carries, dtype

    # -- the forward pass --------------------------------------------------------------------
    def apply(
        self,
        params: NetworkParams,
        xs: Array,
        carries=None,
        *,
        seq_lengths=None,
        mask=None,
        dropout_key=None,
        time_major: bool = False,
        unroll: int = 1,
        remat: bool = False,
        backward: Backward = "autodiff",
        method: Method = "sequential",
    ):
        """Run the network over a sequence.

        Args:
          params: this spec's ``NetworkParams``.
          xs: ``(B, T, D)`` (``(T, B, D)`` with ``time_major=True``) or unbatched ``(T, D)``.
          carries: initial carries as ``initial_carries`` makes them (zeros when None); the
            carries returned by an earlier call continue that sequence.
          seq_lengths: ``(B,)`` ints; steps at or past a sequence's length leave its carries
            unchanged and give zero outputs (readout included).
          mask: booleans laid out like ``xs`` without its feature axis, for gaps and left padding
            (Keras' semantics, as in ``jrnn.unroll``): a masked step keeps every layer's carry and
            outputs zeros; the backward direction reads the unmasked steps backwards.
          dropout_key: a ``jax.random`` key for ``dropout``, ``input_dropout`` and
            ``recurrent_dropout`` (None: no dropout).
          time_major: ``xs`` and ``ys`` are ``(T, B, ·)``.
          unroll: steps per scan iteration (``lax.scan``'s ``unroll``).
          remat: recompute per-step intermediates in the backward pass instead of storing them.
          backward: ``"autodiff"`` (JAX) or ``"bptt"`` (the hand-written backward, a
            ``jax.custom_vjp``: reverse mode only; forward mode such as ``jax.jvp`` or
            ``jax.jacfwd`` needs ``"autodiff"``); on a GPU ``"cudnn"`` or ``"pallas"``, fused
            layers that run the forward pass too (``jrnn.kernels``).
          method: ``"sequential"`` or a parallel-in-time solve of each layer (``jrnn.unroll``).

        Returns:
          ``(ys, carries)``: ``ys`` with ``out_size`` features laid out like ``xs`` (with ``pool``:
          ``(B, out_size)``, ``(out_size,)`` unbatched), and the final carries (one entry per
          layer, a ``(fwd, bwd)`` pair when bidirectional).
        """
        check_options(backward=backward, unroll=unroll, method=method)
        layout, steps, carries, _ = self.check_inputs(
            params, xs, carries, seq_lengths, time_major=time_major, mask=mask
        )
        if dropout_key is None or not self.has_dropout:
            dropout_key = None
        if dropout_key is not None and self.recurrent_dropout > 0.0 and method != "sequential":
            fail(
                "recurrent_dropout", f"0.0 with method={method!r} (recurrent dropout needs method='sequential'; "
                "without a dropout_key the parallel methods run)", repr(self.recurrent_dropout),
            )  # fmt: skip
        return _forward(
            self, params, xs, carries, steps, dropout_key,
            layout=layout, unroll=int(unroll), remat=bool(remat), backward=backward, method=method,
        )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("model", "layout", "unroll", "remat", "backward", "method"))
def _forward(model, params, xs, carries, lengths, dropout_key, *, layout: Layout, unroll, remat, backward, method):
    """``RNN.apply`` after validation, compiled once per spec and shape (also when called eagerly).

    A batch-major sequence stays batch-major through the layers where the scans run it so
    (``runs_batch_major``: no transposes of ``xs``, ``ys`` or their cotangents), unless a pooled
    head needs the time-major top layer."""
    ax = 0 if model.pool is not None else time_axis_for(layout, model.cell.hidden_size, backward, method)
    xs = xs if ax else layout.to_scan(xs)  # (T, B, D), or (B, T, D) for ax = 1
    T, B = layout.num_steps, layout.batch_size
    dtype = compute_dtype(xs, model.first_cell_params(params))
    if carries is None:
        carries = model.initial_carries((B,), dtype)
    else:
        carries = layout.carry_to_scan(carries)

    drops = layer_dropout_scales(model, dropout_key, B, xs.shape[-1], dtype)

    def run_layer(layer, direction, p, h, carry, reverse):
        carry_T, ys = scan_layer(model.cell, p, h, carry, lengths, reverse=reverse, unroll=unroll, remat=remat,
                                 backward=backward, method=method, dropout=drops[layer][direction],
                                 time_axis=ax)  # fmt: skip
        return carry_T, ys, None

    scales = dropout_scales(model, dropout_key, B, dtype)
    top, carries_out, _, _ = stack(model, params, xs, carries, run_layer, scales, ax)
    if ax:
        valid = step_mask(lengths, T)
        ys = readout(params, top, None if valid is None else valid.T)  # batch-major already
    elif model.pool is None:
        ys = layout.from_scan(readout(params, top, step_mask(lengths, T)))
    else:
        ys = readout(params, pool(model, top, carries_out, lengths), None)  # (B, O)
        ys = ys if layout.batched else ys[0]
    return ys, layout.carry_from_scan(carries_out)


def warn_last_step_bidirectional(model: RNN, every_step: bool, stacklevel: int = 3) -> None:
    """Warn when a bidirectional model is trained on sequence-level targets read at the last step
    (``pool="last"``, or per-step outputs with last-step targets): there its backward direction
    has seen a single step. ``pool="final"`` reads each direction's final state instead."""
    if model.bidirectional and (model.pool == "last" or (model.pool is None and not every_step)):
        warnings.warn(
            "a bidirectional model scored at the last step only: its backward direction has seen "
            "one step there; pool='final' reads each direction's final state "
            "(jrnn.RNN(..., pool='final'))", UserWarning, stacklevel=stacklevel,
        )
