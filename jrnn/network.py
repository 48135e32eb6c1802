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

from jrnn.cells import Cell, glorot_uniform
from jrnn.unroll import (
    check_cell,
    check_options,
    check_seq_lengths,
    check_sequence,
    compute_dtype,
    prepare_carry,
    scan_layer,
    step_mask,
)

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


@dataclasses.dataclass(frozen=True)
class RNN:
    """A stack of recurrent layers of one cell type. Frozen and hashable, so it can be static."""

    cell: Cell
    num_layers: int = 1
    bidirectional: bool = False
    output_size: int | None = None
    dropout: float = 0.0

    def __post_init__(self):
        check_cell(self.cell)
        n = self.num_layers
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"num_layers must be a positive int, got {n!r}")
        if not isinstance(self.bidirectional, (bool, np.bool_)):
            raise TypeError(f"bidirectional must be a bool, got {self.bidirectional!r}")
        o = self.output_size
        if o is not None and (isinstance(o, bool) or not isinstance(o, (int, np.integer)) or o < 1):
            raise ValueError(f"output_size must be None or a positive int, got {o!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {self.dropout!r}")

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
        return self.num_directions * self.cell.hidden_size

    @property
    def out_size(self) -> int:
        """Features of ``apply``'s output."""
        return self.output_size if self.output_size is not None else self.top_size

    def layer_input_size(self, layer: int, input_size: int) -> int:
        return input_size if layer == 0 else self.top_size

    # -- construction ------------------------------------------------------------------------
    def init(self, key, input_size: int, dtype=jnp.float32) -> NetworkParams:
        """Parameters for inputs with ``input_size`` features; one key split per layer."""
        keys = jax.random.split(key, self.num_layers + 1)
        layers = []
        for layer in range(self.num_layers):
            d_in = self.layer_input_size(layer, input_size)
            if self.bidirectional:
                k_f, k_b = jax.random.split(keys[layer])
                layers.append((self.cell.init(k_f, d_in, dtype), self.cell.init(k_b, d_in, dtype)))
            else:
                layers.append(self.cell.init(keys[layer], d_in, dtype))
        readout = None
        if self.output_size is not None:
            readout = Readout(
                w=glorot_uniform(keys[-1], self.top_size, self.output_size, dtype),
                b=jnp.zeros((self.output_size,), dtype),
            )
        return NetworkParams(tuple(layers), readout)

    def initial_carries(self, batch_shape=(), dtype=jnp.float32) -> tuple:
        """Zero carries, one entry per layer (a ``(fwd, bwd)`` pair when bidirectional)."""
        one = lambda: self.cell.initial_carry(batch_shape, dtype)  # noqa: E731
        return tuple((one(), one()) if self.bidirectional else one() for _ in range(self.num_layers))

    # -- validation --------------------------------------------------------------------------
    def check_params(self, params) -> int:
        """Validate ``params`` against this spec; return the input size they expect."""
        if not isinstance(params, NetworkParams):
            raise TypeError(f"params must be NetworkParams(layers, readout), got {type(params).__name__}")
        layers = params.layers
        if not isinstance(layers, (tuple, list)) or len(layers) != self.num_layers:
            got = len(layers) if isinstance(layers, (tuple, list)) else type(layers).__name__
            raise ValueError(f"params.layers must hold num_layers={self.num_layers} entries, got {got}")
        input_size = None
        for layer, p in enumerate(layers):
            directions = p if self.bidirectional else (p,)
            if self.bidirectional and not (isinstance(p, tuple) and not hasattr(p, "_fields") and len(p) == 2):
                raise TypeError(
                    f"params.layers[{layer}] must be a (forward, backward) tuple for a bidirectional RNN, "
                    f"got {type(p).__name__}"
                )
            for d in directions:
                self.cell.check_params(d)
                d_in = self.cell.input_size_of(d)
                if layer == 0:
                    input_size = d_in if input_size is None else input_size
                    if d_in != input_size:
                        raise ValueError(f"params.layers[0] directions disagree on input size: {input_size} vs {d_in}")
                elif d_in != self.top_size:
                    raise ValueError(
                        f"params.layers[{layer}].w_x must have {self.top_size} input rows "
                        f"(the previous layer's output), got {d_in}"
                    )
        readout = params.readout
        if self.output_size is None:
            if readout is not None:
                raise ValueError("params.readout must be None for an RNN with output_size=None, got a Readout")
        else:
            expected = {"w": (self.top_size, self.output_size), "b": (self.output_size,)}
            if not isinstance(readout, Readout):
                raise TypeError(f"params.readout must be Readout(w, b), got {type(readout).__name__}")
            for field, shape in expected.items():
                got = tuple(getattr(readout, field).shape)
                if got != shape:
                    raise ValueError(f"params.readout.{field} must be {shape}, got {got}")
        return input_size

    def check_carries(self, carries, batch_shape, dtype) -> tuple:
        if not isinstance(carries, (tuple, list)) or len(carries) != self.num_layers:
            got = len(carries) if isinstance(carries, (tuple, list)) else type(carries).__name__
            raise TypeError(f"carries must be a tuple with num_layers={self.num_layers} entries, got {got}")
        out = []
        for layer, c in enumerate(carries):
            if self.bidirectional:
                if not (isinstance(c, tuple) and not hasattr(c, "_fields") and len(c) == 2):
                    raise TypeError(
                        f"carries[{layer}] must be a (forward, backward) pair for a bidirectional RNN, "
                        f"got {type(c).__name__}"
                    )
                out.append(
                    tuple(
                        prepare_carry(self.cell, cd, batch_shape, dtype, f"carries[{layer}][{d}]")
                        for d, cd in enumerate(c)
                    )
                )
            else:
                out.append(prepare_carry(self.cell, c, batch_shape, dtype, f"carries[{layer}]"))
        return tuple(out)

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
        backward: str = "autodiff",
    ):
        """Run the network over ``xs`` ``(B, T, D)`` (``(T, B, D)`` with ``time_major``, or ``(T, D)``).

        Returns ``(ys, carries)``: ``ys`` with ``out_size`` features laid out like ``xs``, and the
        final carries (one entry per layer).
        """
        check_options(backward=backward, unroll=unroll)
        input_size = self.check_params(params)
        ndim = check_sequence(xs, input_size, time_major=time_major)
        batched = ndim == 3
        B = (xs.shape[1] if time_major else xs.shape[0]) if batched else 1
        T = xs.shape[0 if (time_major or not batched) else 1]
        lengths = check_seq_lengths(seq_lengths, B if batched else None, T)
        first = params.layers[0][0] if self.bidirectional else params.layers[0]
        dtype = compute_dtype(xs, first)
        if carries is not None:
            carries = self.check_carries(carries, (B,) if batched else (), dtype)
        if dropout_key is None or self.dropout == 0.0:
            dropout_key = None
        return _forward(
            self, params, xs, carries, lengths, dropout_key,
            batched=batched, time_major=time_major, unroll=unroll, remat=remat, backward=backward,
        )


@functools.partial(jax.jit, static_argnames=("model", "batched", "time_major", "unroll", "remat", "backward"))
def _forward(model, params, xs, carries, lengths, dropout_key, *, batched, time_major, unroll, remat, backward):
    """``RNN.apply`` after validation, compiled once per spec and shape (also when called eagerly)."""
    if not batched:
        xs = xs[:, None, :]
        if carries is not None:
            carries = jax.tree_util.tree_map(lambda a: a[None], carries)
    elif not time_major:
        xs = jnp.swapaxes(xs, 0, 1)  # (T, B, D)
    T, B = xs.shape[:2]
    if carries is None:
        first = params.layers[0][0] if model.bidirectional else params.layers[0]
        carries = model.initial_carries((B,), compute_dtype(xs, first))
    if dropout_key is not None:
        keys = jax.random.split(dropout_key, model.num_layers)

    def run(p, h, c, rev):
        return scan_layer(model.cell, p, h, c, lengths, reverse=rev, unroll=unroll, remat=remat, backward=backward)

    h = xs
    new_carries = []
    for layer, p in enumerate(params.layers):
        if model.bidirectional:
            c_f, y_f = run(p[0], h, carries[layer][0], False)
            c_b, y_b = run(p[1], h, carries[layer][1], True)
            h = jnp.concatenate([y_f, y_b], axis=-1)  # (T, B, 2H)
            new_carries.append((c_f, c_b))
        else:
            c, h = run(p, h, carries[layer], False)
            new_carries.append(c)
        if layer < model.num_layers - 1 and dropout_key is not None:
            keep = 1.0 - model.dropout
            mask = jax.random.bernoulli(keys[layer], keep, (B, h.shape[-1]))  # one mask per sequence
            h = h * (mask.astype(h.dtype) / keep)[None]

    ys = h
    if params.readout is not None:
        ys = ys @ params.readout.w + params.readout.b  # (T, B, O)
        if lengths is not None:
            ys = jnp.where(step_mask(lengths, T)[..., None], ys, jnp.zeros_like(ys))

    carries_out = tuple(new_carries)
    if not batched:
        return ys[:, 0], jax.tree_util.tree_map(lambda a: a[0], carries_out)
    if not time_major:
        ys = jnp.swapaxes(ys, 0, 1)
    return ys, carries_out
