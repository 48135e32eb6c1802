"""``RNN``: a stacked, optionally bidirectional recurrent network with dropout and a readout.

::

    model = RNN(cell=LSTMCell(64), num_layers=3, bidirectional=False, output_size=None, dropout=0.0)
    params = model.init(key, input_size)           # NetworkParams(layers, readout)
    ys, carries = model.apply(params, xs)          # xs (B, T, D) -> ys (B, T, H·dirs or O)

``params.layers[l]`` is layer l's cell params, or a ``(forward, backward)`` tuple when
bidirectional; a bidirectional layer feeds the next one ``concat([fwd, bwd], -1)``. ``carries`` has
one entry per layer (a ``(fwd, bwd)`` pair when bidirectional); passing it back to ``apply``
continues the sequence. Dropout (between layers, on every layer's output but the last, as PyTorch
does) uses one mask per sequence drawn outside the scan (variational dropout); no ``dropout_key``
means no dropout. The readout is per step, and outputs at padded steps are zero, readout included.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn._checks import (
    Layout,
    check_bool,
    check_int,
    check_optional_int,
    check_probability,
    check_seq_lengths,
    check_sequence,
    fail,
    shape_of,
)
from jrnn.cells import Cell, check_cell, glorot_uniform
from jrnn.cells.base import add_bias
from jrnn.scan import Backward, compute_dtype, scan_layer, step_mask
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


def stack(model: "RNN", params: "NetworkParams", xs: Array, carries, run_layer, scales) -> tuple:
    """The one stacking driver: every layer and direction of ``model`` over time-major ``xs``.

    ``run_layer(layer, direction, params, h, carry, reverse) -> (carry_T, ys, kept)`` runs one
    direction of one layer over ``h (T, B, ·)``; a bidirectional layer feeds the next one
    ``concat([fwd, bwd], -1)``, and ``scales[l]`` (``dropout_scales``) multiplies layer l's
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
        h = jnp.concatenate(outs, axis=-1) if model.bidirectional else outs[0]  # (T, B, H·dirs)
        new_carries.append(tuple(cs) if model.bidirectional else cs[0])
        kept.append(ks)
        if scales[layer] is not None:
            h = h * scales[layer][None]  # dropout, one mask per sequence
    return h, tuple(new_carries), kept, inputs


def readout(params: "NetworkParams", top: Array, valid: Array | None) -> Array:
    """The per-step readout ``top @ w + b`` ``(T, B, O)``, zero at padded steps; ``top`` itself
    without a readout."""
    if params.readout is None:
        return top
    ys = add_bias(top @ params.readout.w, params.readout.b)  # (T, B, O)
    if valid is not None:
        ys = jnp.where(valid[..., None], ys, jnp.zeros_like(ys))
    return ys


@dataclasses.dataclass(frozen=True)
class RNN:
    """A stack of recurrent layers of one cell type. Frozen and hashable, so it can be static.

    Args:
      cell: the cell of every layer (``LSTMCell(64)``, ...).
      num_layers: layers stacked; layer l + 1 reads layer l's output.
      bidirectional: each layer runs a forward and a backward direction and concatenates them.
      output_size: None, or the size of a per-step linear readout on the top layer.
      dropout: between layers, on every layer's output but the last (PyTorch's placement), one
        mask per sequence; applied only when ``apply`` gets a ``dropout_key``.
    """

    cell: Cell
    num_layers: int = 1
    bidirectional: bool = False
    output_size: int | None = None
    dropout: float = 0.0

    def __post_init__(self):
        check_cell(self.cell)
        check_int("num_layers", self.num_layers)
        check_bool("bidirectional", self.bidirectional)
        check_optional_int("output_size", self.output_size)
        check_probability("dropout", self.dropout)

    # -- sizes -------------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size

    @property
    def top_size(self) -> int:
        """Features of the top layer's output (before the readout)."""
        return self.num_directions * self.cell.output_size

    @property
    def out_size(self) -> int:
        """Features of ``apply``'s output."""
        return self.output_size if self.output_size is not None else self.top_size

    def layer_input_size(self, layer: int, input_size: int) -> int:
        return input_size if layer == 0 else self.top_size

    def first_cell_params(self, params: NetworkParams):
        """The params of layer 0's (forward) direction."""
        return directions(self, params.layers[0])[0]

    # -- construction ------------------------------------------------------------------------
    def init(self, key, input_size: int, dtype=jnp.float32) -> NetworkParams:
        """Parameters for inputs with ``input_size`` features; one key split per layer.

        Args:
          key: a ``jax.random`` key.
          input_size: ``D``, the features of the input sequence.
          dtype: a floating dtype.

        Returns:
          ``NetworkParams(layers, readout)``.
        """
        keys = jax.random.split(key, self.num_layers + 1)
        layers = []
        for layer in range(self.num_layers):
            d_in = self.layer_input_size(layer, input_size)
            if self.bidirectional:
                k_f, k_b = jax.random.split(keys[layer])
                layers.append((self.cell.init(k_f, d_in, dtype), self.cell.init(k_b, d_in, dtype)))
            else:
                layers.append(self.cell.init(keys[layer], d_in, dtype))
        head = None
        if self.output_size is not None:
            head = Readout(
                w=glorot_uniform(keys[-1], self.top_size, self.output_size, dtype),
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
            expected = {"w": (self.top_size, self.output_size), "b": (self.output_size,)}
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

    def check_inputs(self, params, xs, carries, seq_lengths, *, time_major: bool = False):
        """Validate what ``apply`` takes; return ``(layout, lengths, carries, dtype)``."""
        input_size = self.check_params(params)
        layout = check_sequence(xs, input_size, time_major=time_major)
        lengths = check_seq_lengths(seq_lengths, layout.batch_size if layout.batched else None, layout.num_steps)
        dtype = compute_dtype(xs, self.first_cell_params(params))
        if carries is not None:
            carries = self.check_carries(carries, layout.batch_shape, dtype)
        return layout, lengths, carries, dtype

    # -- the forward pass --------------------------------------------------------------------
    def apply(
        self,
        params: NetworkParams,
        xs: Array,
        carries=None,
        *,
        seq_lengths=None,
        dropout_key=None,
        time_major: bool = False,
        unroll: int = 1,
        remat: bool = False,
        backward: Backward = "autodiff",
    ):
        """Run the network over a sequence.

        Args:
          params: this spec's ``NetworkParams``.
          xs: ``(B, T, D)`` (``(T, B, D)`` with ``time_major=True``) or unbatched ``(T, D)``.
          carries: initial carries as ``initial_carries`` makes them (zeros when None); the
            carries returned by an earlier call continue that sequence.
          seq_lengths: ``(B,)`` ints; steps at or past a sequence's length leave its carries
            unchanged and give zero outputs (readout included).
          dropout_key: a ``jax.random`` key for ``dropout`` (None: no dropout).
          time_major: ``xs`` and ``ys`` are ``(T, B, ·)``.
          unroll: steps per scan iteration (``lax.scan``'s ``unroll``).
          remat: recompute per-step intermediates in the backward pass instead of storing them.
          backward: ``"autodiff"`` (JAX) or ``"bptt"`` (the hand-written backward).

        Returns:
          ``(ys, carries)``: ``ys`` with ``out_size`` features laid out like ``xs``, and the final
          carries (one entry per layer, a ``(fwd, bwd)`` pair when bidirectional).
        """
        check_options(backward=backward, unroll=unroll)
        layout, lengths, carries, _ = self.check_inputs(params, xs, carries, seq_lengths, time_major=time_major)
        if dropout_key is None or self.dropout == 0.0:
            dropout_key = None
        return _forward(
            self, params, xs, carries, lengths, dropout_key,
            layout=layout, unroll=int(unroll), remat=bool(remat), backward=backward,
        )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("model", "layout", "unroll", "remat", "backward"))
def _forward(model, params, xs, carries, lengths, dropout_key, *, layout: Layout, unroll, remat, backward):
    """``RNN.apply`` after validation, compiled once per spec and shape (also when called eagerly)."""
    xs = layout.to_scan(xs)  # (T, B, D)
    T, B = xs.shape[:2]
    dtype = compute_dtype(xs, model.first_cell_params(params))
    if carries is None:
        carries = model.initial_carries((B,), dtype)
    else:
        carries = layout.carry_to_scan(carries)

    def run_layer(layer, direction, p, h, carry, reverse):
        carry_T, ys = scan_layer(model.cell, p, h, carry, lengths, reverse=reverse, unroll=unroll, remat=remat,
                                 backward=backward)  # fmt: skip
        return carry_T, ys, None

    scales = dropout_scales(model, dropout_key, B, dtype)
    top, carries_out, _, _ = stack(model, params, xs, carries, run_layer, scales)
    ys = readout(params, top, step_mask(lengths, T))
    return layout.from_scan(ys), layout.carry_from_scan(carries_out)
