"""jrnn: recurrent neural networks in JAX.

Functional cells (``VanillaCell``, ``LSTMCell``, ``GRUCell``) over parameter NamedTuples, unrolled
with ``jax.lax.scan`` (``unroll``), stacked and bidirectional networks (``RNN``), a hand-written
backpropagation through time (``jrnn.bptt``), training with optax (``jrnn.optim``, ``jrnn.train``)
and gradient-flow diagnostics (``jrnn.diagnostics``).
"""

from jrnn.cells import (
    Cell,
    GRUCell,
    GRUParams,
    LSTMCarry,
    LSTMCell,
    LSTMParams,
    VanillaCell,
    VanillaParams,
    make_cell,
)
from jrnn.network import RNN, NetworkParams, Readout
from jrnn.unroll import unroll

__version__ = "0.1.0"

__all__ = [
    "Cell",
    "GRUCell",
    "GRUParams",
    "LSTMCarry",
    "LSTMCell",
    "LSTMParams",
    "NetworkParams",
    "RNN",
    "Readout",
    "VanillaCell",
    "VanillaParams",
    "make_cell",
    "unroll",
]
