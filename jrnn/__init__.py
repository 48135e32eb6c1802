"""jrnn: recurrent neural networks in JAX.

Functional cells (``VanillaCell``, ``LSTMCell``, ``GRUCell``) over parameter NamedTuples, unrolled
with ``jax.lax.scan`` (``unroll``), stacked and bidirectional networks (``RNN``), a hand-written
backpropagation through time (``jrnn.bptt``), training with optax (``jrnn.optim``, ``jrnn.train``)
and gradient-flow diagnostics (``jrnn.diagnostics``).

``import jrnn`` gives every public submodule. The light ones are imported here; ``jrnn.nnx``
(Flax NNX) and ``jrnn.interop`` load on first use.
"""

import importlib

from jrnn.cells import (
    Cell,
    GRUCell,
    GRUParams,
    LSTMCarry,
    LSTMCell,
    LSTMParams,
    MinGRUCell,
    MinLSTMCell,
    VanillaCell,
    VanillaParams,
    make_cell,
)
from jrnn.network import RNN, NetworkParams, Readout
from jrnn.unroll import unroll

from jrnn import bptt, datasets, diagnostics, kernels, losses, metrics, optim, parallel, scan, tasks, train  # noqa: E402

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it

_LAZY = ("interop", "nnx")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"jrnn.{name}")
    raise AttributeError(f"module 'jrnn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Cell",
    "GRUCell",
    "GRUParams",
    "LSTMCarry",
    "LSTMCell",
    "LSTMParams",
    "MinGRUCell",
    "MinLSTMCell",
    "NetworkParams",
    "RNN",
    "Readout",
    "VanillaCell",
    "VanillaParams",
    "make_cell",
    "unroll",
]
