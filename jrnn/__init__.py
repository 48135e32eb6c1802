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

# Submodules, so that ``import jrnn`` is enough for ``jrnn.optim.make_optimizer`` and friends.
# Optional peers (torch, statsmodels, ...) are imported only when a function needs them.
from jrnn import datasets, diagnostics, interop, losses, nnx, optim, tasks, train  # noqa: E402

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
