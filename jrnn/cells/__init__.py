"""Recurrent cells as pure functions over parameter pytrees, one file per cell.

A cell is a frozen, hashable dataclass (so it can be a static argument under ``jit``) that knows
how to make parameters and carries and how to take one step::

    params = cell.init(key, input_size)                 # a params NamedTuple
    carry = cell.initial_carry(batch_shape=(B,))        # zeros
    carry, y_t = cell(params, carry, x_t)               # x_t: (*batch, D) -> y_t: (*batch, H)

Weights are stored ``(in, out)``, so a layer computes ``x @ w + b``. Every step is split in two so
that the scans can hoist the input projection of all time steps into one matrix product before the
loop (cuDNN's first trick)::

    xp_t = cell.project_inputs(params, x_t)             # x_t @ w_x + b: (*batch, G)
    carry, y_t = cell.step(params, carry, xp_t)         # the recurrent product and gate arithmetic

``jrnn.cells.base.Cell`` documents the interface (``forward_step``, ``backward_step``,
``param_grads``); ``vanilla.py``, ``lstm.py`` and ``gru.py`` implement it. Adding a cell is one
new file and one line in ``CELLS`` below.
"""

from jrnn._checks import check_choice
from jrnn.cells.base import Cell, check_cell
from jrnn.cells.gru import GRUCell, GRUParams
from jrnn.cells.init import RECURRENT_INITS, glorot_uniform, recurrent_matrix
from jrnn.cells.lstm import LSTMCarry, LSTMCell, LSTMParams
from jrnn.cells.mingru import MinGRUCell, MinGRUParams
from jrnn.cells.minlstm import MinLSTMCell, MinLSTMParams
from jrnn.cells.vanilla import ACTIVATION_SLOPES, ACTIVATIONS, VanillaCell, VanillaParams

CELLS: dict[str, type[Cell]] = {
    "vanilla": VanillaCell,
    "rnn": VanillaCell,
    "lstm": LSTMCell,
    "gru": GRUCell,
    "mingru": MinGRUCell,
    "minlstm": MinLSTMCell,
}
"""The registry: ``name -> cell class``, for ``make_cell`` and the ``jrnn`` command."""


def cell_types() -> tuple[type[Cell], ...]:
    """Every registered cell class, once each, in registry order."""
    return tuple(dict.fromkeys(CELLS.values()))


def make_cell(name: str, hidden_size: int, **kwargs) -> Cell:
    """Build a cell by its registry name (``"vanilla"``, alias ``"rnn"``, ``"lstm"``, ``"gru"``)."""
    check_choice("cell", name, CELLS)
    return CELLS[name](hidden_size, **kwargs)


__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_SLOPES",
    "CELLS",
    "Cell",
    "GRUCell",
    "GRUParams",
    "LSTMCarry",
    "LSTMCell",
    "LSTMParams",
    "MinGRUCell",
    "MinGRUParams",
    "MinLSTMCell",
    "MinLSTMParams",
    "RECURRENT_INITS",
    "VanillaCell",
    "VanillaParams",
    "cell_types",
    "check_cell",
    "glorot_uniform",
    "make_cell",
    "recurrent_matrix",
]
