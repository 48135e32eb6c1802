"""Weight conversion between jrnn and PyTorch / Flax linen.

PyTorch (``torch.nn.RNN``, ``torch.nn.LSTM``, ``torch.nn.GRU``)::

    model, params = from_torch(module)             # -> (jrnn.RNN, NetworkParams)
    module = to_torch(model, params)               # -> a torch module with the same weights
    carries = carries_from_torch(model, h_0)       # h_0 (L·dirs, B, H), or (h_0, c_0) for an LSTM
    h_n = carries_to_torch(model, carries)         # and back

PyTorch stores weights ``(out, in)`` and computes ``x W_ih^T + b_ih + h W_hh^T + b_hh``; jrnn stores
them ``(in, out)``. Gate blocks are in the same order on both sides (``i, f, g, o`` and ``r, z, n``),
so per layer and direction::

    w_x = weight_ih.T             w_h = weight_hh.T
    Vanilla, LSTM:  b = bias_ih + bias_hh          (back: bias_ih = b, bias_hh = 0)
    GRU:            b_x = bias_ih, b_h = bias_hh   (both kept: b_hn sits inside r·(h w_hn + b_hn))
    LSTM with proj_size=P:  also w_hr = weight_hr.T (H, P), and w_h (P, 4H)

Layer ``l``'s backward direction is PyTorch's ``*_l{l}_reverse``, and PyTorch's ``h_n[l·dirs + d]``
is ``carries[l]`` (``carries[l][d]`` when bidirectional). PyTorch packed sequences
(``pack_padded_sequence(xs, lengths, enforce_sorted=False)``) correspond to ``seq_lengths=lengths``.

Flax linen (``nn.SimpleCell``, ``nn.LSTMCell``, ``nn.OptimizedLSTMCell``, ``nn.GRUCell``)::

    cell, params = from_flax(variables)            # kind and hidden size read from the tree
    flax_cell, variables = to_flax(cell, params)   # -> (linen cell, {"params": ...})
    carry = carry_from_flax(cell, flax_carry)      # Flax's LSTM carry is (c, h); ours is (h, c)
    flax_carry = carry_to_flax(cell, carry)

Flax keeps one ``Dense`` per gate, kernels already ``(in, out)``: ``w_x`` is the column-wise
concatenation of the input kernels, ``w_h`` of the recurrent ones, in gate order.

Keras 3 (``keras.layers.SimpleRNN``, ``LSTM``, ``GRU``, ``Bidirectional``)::

    model, params = from_keras(layer)              # a built layer (or a list of stacked ones)
    layer = to_keras(model, params)                # a built layer with the same weights

Keras stores ``kernel (D, G)``, ``recurrent_kernel (H, G)`` and ``bias``, already ``(in, out)``.
SimpleRNN and LSTM (gates ``i, f, c, o`` = jrnn's ``i, f, g, o``) map as they are; Keras' GRU
orders its blocks ``z, r, h``, so the first two blocks swap, and its ``bias`` is ``(2, 3H)``
(``b_x``, ``b_h``) with ``reset_after=True``, ``(3H,)`` (``b_x``, jrnn's reset-before form) without.

These functions convert eagerly (outside ``jit``); ``torch`` and ``keras`` are imported only when
a PyTorch or Keras function is called.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jrnn.cells import Cell, cell_types
from jrnn.network import RNN, NetworkParams, directions

Array = jax.Array

__all__ = [
    "carries_from_torch",
    "carries_to_torch",
    "carry_from_flax",
    "carry_to_flax",
    "from_flax",
    "from_keras",
    "from_torch",
    "to_flax",
    "to_keras",
    "to_torch",
    "torch_state_dict",
]


# --------------------------------------------------------------------------------------------
# Array conversion between torch and JAX (bfloat16 has no NumPy bridge in torch, so it goes
# through float32, which holds every bfloat16 value exactly).


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is an optional dependency
        raise ImportError("jrnn.interop's PyTorch functions need torch (pip install 'jrnn[peers]')") from e
    return torch


def _is_tensor(x) -> bool:
    torch = _torch()
    return isinstance(x, torch.Tensor)


def _to_jax(t) -> Array:
    """A torch tensor (any device, any floating dtype) or array-like as a JAX array."""
    if not _is_tensor(t):
        return jnp.asarray(t)
    torch = _torch()
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return jnp.asarray(t.float().numpy(), jnp.bfloat16)
    return jnp.asarray(t.numpy())


def _torch_dtype(dtype):
    torch = _torch()
    table = {
        jnp.dtype(jnp.float64): torch.float64,
        jnp.dtype(jnp.float32): torch.float32,
        jnp.dtype(jnp.float16): torch.float16,
        jnp.dtype(jnp.bfloat16): torch.bfloat16,
    }
    dtype = jnp.dtype(dtype)
    if dtype not in table:
        raise TypeError(f"params must be float64, float32, float16 or bfloat16 for PyTorch, got dtype {dtype}")
    return table[dtype]


def _as_torch_dtype(dtype):
    """``None``, a torch dtype, or a NumPy/JAX floating dtype as a torch dtype (or None)."""
    torch = _torch()
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _torch_dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype must be a torch or JAX floating dtype, got {dtype!r}") from e


def _to_tensor(a, dtype=None):
    """A JAX / NumPy array as a (writable, CPU) torch tensor, cast to torch ``dtype`` if given."""
    torch = _torch()
    a = jnp.asarray(a)
    target = _torch_dtype(a.dtype) if dtype is None else dtype
    if a.dtype == jnp.bfloat16:
        return torch.from_numpy(np.array(a, np.float32)).to(target)
    return torch.from_numpy(np.array(a)).to(target)


# --------------------------------------------------------------------------------------------
# PyTorch


def _torch_classes():
    torch = _torch()
    return {"RNN_TANH": torch.nn.RNN, "RNN_RELU": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}


def _cell_for_torch_mode(mode: str, hidden_size: int) -> Cell:
    """The registered cell that a ``torch.nn.RNNBase`` of ``mode`` converts to."""
    for cls in cell_types():
        cell = cls.from_torch_mode(mode, hidden_size)
        if cell is not None:
            return cell
    raise ValueError(f"module.mode must be a mode a jrnn cell converts from, got {mode!r}")  # pragma: no cover


def _suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction == 1 else "")


def from_torch(module) -> tuple[RNN, NetworkParams]:
    """Convert a ``torch.nn.RNN`` (tanh or relu), ``torch.nn.LSTM`` or ``torch.nn.GRU``.

    Any ``num_layers``, ``bidirectional``, ``batch_first`` (a calling convention only: pass
    ``time_major=not batch_first`` to ``apply`` to feed the same layout) and ``dropout`` (carried
    over to ``RNN(dropout=...)``; PyTorch's masks are per step, jrnn's per sequence, so only the
    deterministic forward pass matches). A module with ``bias=False`` gives zero biases. An
    ``nn.LSTM`` with ``proj_size=P`` gives ``LSTMCell(H, proj_size=P)`` with ``w_hr = weight_hr.T``.

    The parameters keep the module's dtype: a float64 module gives float64 params (which needs
    ``jax_enable_x64``; without it JAX stores float32).

    Returns:
      ``(model, params)``: a ``jrnn.RNN`` spec (default cell initializer settings, which only
      matter for a later ``model.init``) and its ``NetworkParams`` (``readout=None``).

    Raises:
      TypeError: ``module`` is not one of the three modules.
    """
    torch = _torch()
    if not isinstance(module, (torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU)):
        raise TypeError(
            f"module must be a torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU, got {type(module).__name__}"
        )
    if not 0.0 <= module.dropout < 1.0:
        raise ValueError(f"module.dropout must be in [0, 1) for jrnn.RNN, got {module.dropout!r}")
    cell = _cell_for_torch_mode(module.mode, module.hidden_size)
    proj_size = getattr(module, "proj_size", 0)
    if proj_size:  # only nn.LSTM has one
        cell = dataclasses.replace(cell, proj_size=proj_size)
    model = RNN(
        cell=cell,
        num_layers=module.num_layers,
        bidirectional=bool(module.bidirectional),
        dropout=float(module.dropout),
    )
    weights = {name: _to_jax(p) for name, p in module.named_parameters()}
    layers = []
    for layer in range(module.num_layers):
        directions = []
        for d in range(model.num_directions):
            s = _suffix(layer, d)
            extra = {name: weights[name + s] for name in ("weight_hr",) if name + s in weights}
            directions.append(cell.from_torch_weights(
                weights["weight_ih" + s], weights["weight_hh" + s],
                weights.get("bias_ih" + s), weights.get("bias_hh" + s), **extra,
            ))  # fmt: skip
        layers.append(tuple(directions) if model.bidirectional else directions[0])
    return model, NetworkParams(tuple(layers), None)


def _torch_mode(model: RNN) -> str:
    mode = model.cell.torch_mode
    if mode is None:
        raise TypeError(f"model.cell must be a cell with a torch.nn counterpart, got {type(model.cell).__name__}")
    return mode


def _check_model(model, params) -> int:
    """Validate a ``(model, params)`` pair for PyTorch; return the input size."""
    if not isinstance(model, RNN):
        raise TypeError(f"model must be a jrnn.RNN, got {type(model).__name__}")
    _torch_mode(model)
    if model.output_size is not None:
        raise ValueError(
            f"model.output_size must be None for PyTorch (torch.nn.RNN/LSTM/GRU have no readout), got "
            f"{model.output_size}; convert params.readout to torch.nn.Linear(weight=w.T, bias=b) apart"
        )
    if model.pool is not None or model.merge != "concat":
        raise ValueError(
            "model must have pool=None and merge='concat' for PyTorch (its recurrent modules return "
            f"per-step outputs with the directions concatenated), got pool={model.pool!r}, merge={model.merge!r}"
        )
    return model.check_params(params)


def torch_state_dict(model: RNN, params: NetworkParams, *, bias: bool = True, dtype=None) -> dict:
    """``params`` as a PyTorch state dict (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...).

    Load it with ``module.load_state_dict(...)`` into a module of matching shape. Vanilla and LSTM
    biases go whole into ``bias_ih``, with zeros in ``bias_hh``. With ``bias=False`` the biases are
    left out (for a ``bias=False`` module); they must then be zero. ``dtype`` is a torch dtype
    (default: the params' own).
    """
    _check_model(model, params)
    dtype = _as_torch_dtype(dtype)
    if not isinstance(bias, (bool, np.bool_)):
        raise TypeError(f"bias must be a bool, got {bias!r}")
    state = {}
    for layer, layer_params in enumerate(params.layers):
        for d, p in enumerate(directions(model, layer_params)):
            s = _suffix(layer, d)
            w_ih, w_hh, b_ih, b_hh = model.cell.to_torch_weights(p)
            state["weight_ih" + s] = _to_tensor(w_ih, dtype)
            state["weight_hh" + s] = _to_tensor(w_hh, dtype)
            for name, w in model.cell.torch_extra_weights(p).items():  # weight_hr with proj_size
                state[name + s] = _to_tensor(w, dtype)
            if bias:
                state["bias_ih" + s] = _to_tensor(b_ih, dtype)
                state["bias_hh" + s] = _to_tensor(b_hh, dtype)
            else:
                for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
                    if np.any(np.asarray(b, np.float64) != 0.0):
                        raise ValueError(
                            f"params.layers[{layer}] (direction {d}) {name} must be zero for bias=False, "
                            f"got max |b| = {float(jnp.abs(b).max())}"
                        )
    return state


def to_torch(model: RNN, params: NetworkParams, *, batch_first: bool = True, bias: bool = True, dtype=None):
    """Build the PyTorch module that computes what ``model.apply(params, ·)`` computes.

    A ``VanillaCell`` (tanh or relu) gives ``torch.nn.RNN``, an ``LSTMCell`` ``torch.nn.LSTM`` and a
    ``GRUCell`` ``torch.nn.GRU``, with the same ``num_layers``, ``bidirectional`` and ``dropout``.

    Args:
      model: a ``jrnn.RNN`` with ``output_size=None`` (PyTorch's recurrent modules have no readout).
      params: its ``NetworkParams``.
      batch_first: the module's layout (``True``: ``(B, T, D)``, jrnn's default).
      bias: ``True`` (default) builds a module with biases: Vanilla and LSTM put the whole ``b`` into
        ``bias_ih`` and zeros into ``bias_hh``, GRU copies ``b_x``/``b_h``. So a module converted
        from ``bias=False`` comes back with ``bias=True`` and zero biases (same outputs). ``False``
        builds a ``bias=False`` module and requires the biases in ``params`` to be zero.
      dtype: the module's torch dtype (default: the params' dtype, e.g. float64 -> torch.float64).

    Returns:
      a CPU ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` in training mode (``module.eval()`` disables its
      dropout).
    """
    input_size = _check_model(model, params)
    if not isinstance(batch_first, (bool, np.bool_)):
        raise TypeError(f"batch_first must be a bool, got {batch_first!r}")
    first = model.first_cell_params(params)
    dtype = _torch_dtype(first.w_h.dtype) if dtype is None else _as_torch_dtype(dtype)
    state = torch_state_dict(model, params, bias=bias, dtype=dtype)
    mode = _torch_mode(model)
    torch_cls = _torch_classes()[mode]
    kwargs = {"nonlinearity": "tanh" if mode == "RNN_TANH" else "relu"} if mode.startswith("RNN") else {}
    if getattr(model.cell, "proj_size", 0):
        kwargs["proj_size"] = model.cell.proj_size
    with warnings.catch_warnings():  # torch warns about dropout with num_layers=1; jrnn allows it
        warnings.filterwarnings("ignore", message=".*dropout.*", category=UserWarning)
        module = torch_cls(
            input_size,
            model.hidden_size,
            num_layers=model.num_layers,
            bias=bool(bias),
            batch_first=bool(batch_first),
            dropout=float(model.dropout),
            bidirectional=bool(model.bidirectional),
            dtype=dtype,
            **kwargs,
        )
    module.load_state_dict(state)
    return module


def _check_torch_state(model: RNN, h, argument: str, size: int) -> Array:
    h = _to_jax(h)
    L = model.num_layers * model.num_directions
    H = size
    if h.ndim not in (2, 3) or h.shape[0] != L or h.shape[-1] != H:
        what = "hidden_size" if size == model.hidden_size else "proj_size"
        raise ValueError(
            f"{argument} must be (num_layers·directions={L}, B, {what}={H}) or unbatched ({L}, {H}), "
            f"got shape {tuple(h.shape)}"
        )
    return h


def carries_from_torch(model: RNN, h_0) -> tuple:
    """PyTorch's initial/final state as jrnn carries (one entry per layer).

    ``h_0`` is ``(num_layers·directions, B, H)`` (or unbatched ``(num_layers·directions, H)``), a
    ``(h_0, c_0)`` pair for an LSTM; torch tensors or arrays. Entry ``l·directions + d`` becomes
    ``carries[l]`` (``carries[l][d]`` when bidirectional), an ``LSTMCarry(h, c)`` for an LSTM.
    """
    if not isinstance(model, RNN):
        raise TypeError(f"model must be a jrnn.RNN, got {type(model).__name__}")
    parts = model.cell.carry_parts  # PyTorch's state tuple, (h_0, c_0) for an LSTM, in this order
    sizes = [a.shape[-1] for a in jax.tree_util.tree_leaves(model.cell.initial_carry())]  # h: P with proj_size
    if len(parts) > 1:
        if not (isinstance(h_0, (tuple, list)) and len(h_0) == len(parts)):
            names = ", ".join(f"{p}_0" for p in parts)
            raise TypeError(f"h_0 for a {type(model.cell).__name__} must be a ({names}) tuple, got {type(h_0).__name__}")
        states = [
            _check_torch_state(model, a, f"h_0[{k}] ({p}_0)", n) for k, (a, p, n) in enumerate(zip(h_0, parts, sizes))
        ]
        if any(a.shape[:-1] != states[0].shape[:-1] for a in states):
            raise ValueError(f"h_0's parts must have the same shape, got {[tuple(a.shape) for a in states]}")
    else:
        if isinstance(h_0, (tuple, list)):
            raise TypeError(f"h_0 for a {type(model.cell).__name__} must be one tensor, got a {type(h_0).__name__}")
        states = [_check_torch_state(model, h_0, "h_0", sizes[0])]
    treedef = jax.tree_util.tree_structure(model.cell.initial_carry())
    carries = []
    dirs = model.num_directions
    for layer in range(model.num_layers):
        one = [jax.tree_util.tree_unflatten(treedef, [a[layer * dirs + d] for a in states]) for d in range(dirs)]
        carries.append(tuple(one) if model.bidirectional else one[0])
    return tuple(carries)


def carries_to_torch(model: RNN, carries, *, dtype=None):
    """jrnn carries as PyTorch's ``h_n`` ``(num_layers·directions, B, H)`` (``(h_n, c_n)`` for an
    LSTM), torch tensors of the carries' dtype unless ``dtype`` (a torch dtype) is given."""
    if not isinstance(model, RNN):
        raise TypeError(f"model must be a jrnn.RNN, got {type(model).__name__}")
    if not isinstance(carries, (tuple, list)) or len(carries) != model.num_layers:
        got = len(carries) if isinstance(carries, (tuple, list)) else type(carries).__name__
        raise TypeError(f"carries must be a tuple with num_layers={model.num_layers} entries, got {got}")
    flat = []
    for layer, c in enumerate(carries):
        if model.bidirectional and not (isinstance(c, tuple) and not hasattr(c, "_fields") and len(c) == 2):
            raise TypeError(
                f"carries[{layer}] must be a (forward, backward) pair for a bidirectional RNN, got {type(c).__name__}"
            )
        for d, cd in enumerate(c if model.bidirectional else (c,)):
            where = f"carries[{layer}]" + (f"[{d}]" if model.bidirectional else "")
            shape = jnp.shape(model.cell.output(cd))
            model.cell.check_carry(cd, shape[:-1], where)
            flat.append(jax.tree_util.tree_leaves(cd))
    dtype = _as_torch_dtype(dtype)
    states = [_to_tensor(jnp.stack(part), dtype) for part in zip(*flat)]  # one per carry part
    return tuple(states) if len(states) > 1 else states[0]


# --------------------------------------------------------------------------------------------
# Flax linen

def _flax_classes() -> dict[str, type[Cell]]:
    """``kind -> jrnn cell class`` for every registered cell with a flax.linen counterpart."""
    return {cls.flax_kind: cls for cls in cell_types() if cls.flax_kind is not None}


_FLAX_KIND_NAMES = {
    "simple": "simple",
    "simplecell": "simple",
    "lstm": "lstm",
    "lstmcell": "lstm",
    "optimized_lstm": "lstm",
    "optimizedlstmcell": "lstm",
    "gru": "gru",
    "grucell": "gru",
}


def _flax_activations():
    return {jnp.tanh: "tanh", jax.nn.relu: "relu", jax.nn.sigmoid: "sigmoid"}


def _flax_cell_classes():
    import flax.linen as nn

    return {nn.SimpleCell: "simple", nn.LSTMCell: "lstm", nn.OptimizedLSTMCell: "lstm", nn.GRUCell: "gru"}


def _unwrap_flax(cell_params) -> Mapping:
    if not isinstance(cell_params, Mapping):
        raise TypeError(f"cell_params must be a Flax parameter dict, got {type(cell_params).__name__}")
    tree = cell_params
    if set(tree) == {"params"}:
        tree = tree["params"]
    if isinstance(tree, Mapping) and set(tree) == {"cell"}:  # the variables of nn.RNN(cell)
        tree = tree["cell"]
    if not isinstance(tree, Mapping):
        raise TypeError(f"cell_params['params'] must be a dict, got {type(tree).__name__}")
    return tree


def _flax_kind_from(kind, activation):
    """Resolve ``kind`` (a name, a linen cell class or instance) into ``(kind, activation)``."""
    if kind is None or isinstance(kind, str):
        if kind is not None:
            key = kind.lower()
            if key not in _FLAX_KIND_NAMES:
                raise ValueError(f"kind must be one of {sorted(set(_FLAX_KIND_NAMES))} or a flax.linen cell, got {kind!r}")
            kind = _FLAX_KIND_NAMES[key]
        return kind, activation
    classes = _flax_cell_classes()
    cls = kind if isinstance(kind, type) else type(kind)
    if cls not in classes:
        raise TypeError(
            "kind must be a name or a flax.linen SimpleCell, LSTMCell, OptimizedLSTMCell or GRUCell, "
            f"got {cls.__name__}"
        )
    name = classes[cls]
    if isinstance(kind, type):
        return name, activation
    acts = _flax_activations()
    act_fn = getattr(kind, "activation_fn", jnp.tanh)
    if name == "simple":
        if getattr(kind, "residual", False):
            raise ValueError("kind must be a SimpleCell with residual=False (residual=True has no jrnn counterpart), got residual=True")
        detected = acts.get(act_fn)
        if detected is None:
            raise ValueError(
                f"kind.activation_fn must be tanh, relu or sigmoid to convert, got {getattr(act_fn, '__name__', act_fn)!r}"
            )
        if activation is not None and activation != detected:
            raise ValueError(f"activation must match the cell's activation_fn ({detected!r}), got {activation!r}, which contradicts it")
        return name, detected
    if act_fn is not jnp.tanh or getattr(kind, "gate_fn", jax.nn.sigmoid) is not jax.nn.sigmoid:
        raise ValueError(f"kind must be a {cls.__name__} with gate_fn=sigmoid and activation_fn=tanh to convert, got other functions")
    return name, activation


def _infer_flax_kind(tree: Mapping) -> str:
    for kind, cls in _flax_classes().items():
        if set(tree) == set(cls.flax_keys):
            return kind
    raise ValueError(
        "cell_params must be the parameters of a flax.linen SimpleCell (keys i, h), LSTMCell or "
        "OptimizedLSTMCell (ii..io, hi..ho) or GRUCell (ir, iz, in, hr, hz, hn), got keys "
        f"{sorted(tree)}"
    )


def _check_flax_tree(tree: Mapping, kind: str) -> None:
    layout = _flax_classes()[kind].flax_keys
    if set(tree) != set(layout):
        raise ValueError(f"cell_params for kind={kind!r} must have keys {sorted(layout)}, got {sorted(tree)}")
    H = D = None
    for name, leaves in layout.items():  # input Dense names start with "i", recurrent ones with "h"
        sub = tree[name]
        if not isinstance(sub, Mapping) or set(sub) != set(leaves):
            got = sorted(sub) if isinstance(sub, Mapping) else type(sub).__name__
            raise ValueError(f"cell_params[{name!r}] must have leaves {sorted(leaves)}, got {got}")
        k = jnp.shape(sub["kernel"])
        if len(k) != 2:
            raise ValueError(f"cell_params[{name!r}]['kernel'] must be 2-D (in, out), got shape {k}")
        H = k[1] if H is None else H
        if name.startswith("i"):
            D = k[0] if D is None else D
        expected = (H if name.startswith("h") else D, H)
        if k != expected:
            raise ValueError(f"cell_params[{name!r}]['kernel'] must be {expected} like the other gates, got {k}")
        if "bias" in leaves and jnp.shape(sub["bias"]) != (H,):
            raise ValueError(f"cell_params[{name!r}]['bias'] must be ({H},), got {jnp.shape(sub['bias'])}")
        for leaf in leaves:
            dtype = jnp.result_type(sub[leaf])
            if not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(f"cell_params[{name!r}][{leaf!r}] must be floating point, got dtype {dtype}")


def from_flax(cell_params, kind=None, *, activation: str | None = None) -> tuple[Cell, Any]:
    """Convert the parameters of a Flax linen recurrent cell.

    Args:
      cell_params: ``cell.init(...)``'s variables ``{"params": {...}}``, the inner dict, or the
        variables of ``nn.RNN(cell)`` (``{"params": {"cell": {...}}}``).
      kind: ``None`` (read from the tree's keys), a name (``"simple"``, ``"lstm"``,
        ``"optimized_lstm"``, ``"gru"``), or the linen cell (class or instance). An instance also
        gives a ``SimpleCell``'s activation and is checked for settings jrnn cannot express
        (``residual=True``, other gate or output activations).
      activation: a ``SimpleCell``'s activation when it cannot be read from ``kind``
        (``"tanh"``, Flax's default, when not given).

    Returns:
      ``(cell, params)``: a ``VanillaCell``/``LSTMCell``/``GRUCell`` of the right hidden size and
      its params. The mapping (gate order ``i, f, g, o`` and ``r, z, n`` on both sides)::

        SimpleCell  w_x = i.kernel, w_h = h.kernel, b = i.bias
        LSTMCell    w_x = [ii|if|ig|io].kernel, w_h = [hi|hf|hg|ho].kernel, b = [hi|hf|hg|ho].bias
        GRUCell     w_x = [ir|iz|in].kernel, w_h = [hr|hz|hn].kernel,
                    b_x = [ir|iz|in].bias, b_h = [0 | 0 | hn.bias]

      ``nn.OptimizedLSTMCell`` has the same parameter tree as ``nn.LSTMCell``. Flax's GRU is the
      same reset-after cell as jrnn's: ``n = tanh(x W_in + b_in + r·(h W_hn + b_hn))``,
      ``h' = (1 − z)·n + z·h``. Flax's LSTM carry is ``(c, h)``, jrnn's ``LSTMCarry(h, c)``: see
      ``carry_from_flax`` / ``carry_to_flax``.
    """
    tree = _unwrap_flax(cell_params)
    features = getattr(kind, "features", None) if not isinstance(kind, (str, type)) else None
    kind, activation = _flax_kind_from(kind, activation)
    if kind is None:
        kind = _infer_flax_kind(tree)
    _check_flax_tree(tree, kind)
    recurrent = next(name for name in _flax_classes()[kind].flax_keys if name.startswith("h"))
    H = jnp.shape(tree[recurrent]["kernel"])[1]
    if features is not None and features != H:
        raise ValueError(f"kind.features must match the parameters' hidden size {H}, got features={features}")
    return _flax_classes()[kind].from_flax_tree(tree, H, activation)


def to_flax(cell: Cell, params, *, optimized: bool = False):
    """The Flax linen cell and variables that compute what ``cell`` computes with ``params``.

    Returns ``(flax_cell, {"params": {...}})`` with ``flax_cell`` one of ``nn.SimpleCell`` (tanh,
    relu or sigmoid), ``nn.LSTMCell`` (``nn.OptimizedLSTMCell`` with ``optimized=True``) or
    ``nn.GRUCell``, with ``param_dtype`` the params' dtype. Flax's GRU has no ``b_hr``/``b_hz``, so
    they are folded into its input biases (``ir.bias = b_xr + b_hr``, likewise z): the function is
    the same, and ``from_flax`` then gives those sums in ``b_x`` and zeros in ``b_h[:2H]``.
    """
    import flax.linen as nn

    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a jrnn VanillaCell, LSTMCell or GRUCell, got {type(cell).__name__}")
    cell.check_params(params)
    H = cell.hidden_size
    dtype = params.w_h.dtype
    if cell.flax_kind == "simple":
        acts = {v: k for k, v in _flax_activations().items()}
        if cell.activation not in acts:
            raise ValueError(
                f"cell.activation must be 'tanh', 'relu' or 'sigmoid' for nn.SimpleCell, got {cell.activation!r}"
            )
        flax_cell = nn.SimpleCell(features=H, activation_fn=acts[cell.activation], param_dtype=dtype)
    elif cell.flax_kind == "lstm":
        flax_cell = (nn.OptimizedLSTMCell if optimized else nn.LSTMCell)(features=H, param_dtype=dtype)
    elif cell.flax_kind == "gru":
        flax_cell = nn.GRUCell(features=H, param_dtype=dtype)
    else:
        raise TypeError(f"cell must be a jrnn cell with a flax.linen counterpart, got {type(cell).__name__}")
    return flax_cell, {"params": cell.to_flax_tree(params)}


def carry_from_flax(cell: Cell, carry):
    """A Flax linen cell's carry as jrnn's: an LSTM's ``(c, h)`` becomes ``LSTMCarry(h, c)``;
    other cells' carry ``h`` is the same on both sides."""
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a jrnn cell, got {type(cell).__name__}")
    return cell.carry_from_flax(carry)


def carry_to_flax(cell: Cell, carry):
    """jrnn's carry as a Flax linen cell's: ``LSTMCarry(h, c)`` becomes ``(c, h)``."""
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a jrnn cell, got {type(cell).__name__}")
    return cell.carry_to_flax(carry)


# --------------------------------------------------------------------------------------------
# Keras 3


def _keras():
    try:
        import keras
    except ImportError as e:  # pragma: no cover - keras is an optional dependency
        raise ImportError("jrnn.interop's Keras functions need keras 3 (pip install keras)") from e
    return keras


def _keras_scope():
    """Keras' own code (initializers, weight assignment) broadcasts implicitly: allow it there
    even where ``jax_numpy_rank_promotion="raise"`` is set."""
    return jax.numpy_rank_promotion("allow")


def _keras_cells() -> dict[str, type[Cell]]:
    """``Keras layer name -> jrnn cell class`` for every registered cell with a Keras counterpart."""
    from jrnn.cells import VanillaCell

    table = {cls.keras_layer: cls for cls in cell_types() if cls.keras_layer is not None}
    table.setdefault("SimpleRNN", VanillaCell)  # the Elman cell is Keras' SimpleRNN
    return table


_KERAS_MERGES = {"concat": "concat", "sum": "sum", "ave": "mean", "mul": "mul"}
"""Keras' ``Bidirectional(merge_mode=...)`` -> ``jrnn.RNN(merge=...)``."""


def _keras_layer_kind(keras, layer, argument: str) -> tuple[type[Cell], Any]:
    """``(cell class, keras class)`` of a plain Keras recurrent layer."""
    for name, cls in _keras_cells().items():
        keras_cls = getattr(keras.layers, name)
        if isinstance(layer, keras_cls):
            return cls, keras_cls
    raise TypeError(
        f"{argument} must be a keras.layers.SimpleRNN, LSTM, GRU or a Bidirectional of one, got {type(layer).__name__}"
    )


def _from_keras_one(keras, layer, argument: str):
    """``(cell, [params per direction], bidirectional, merge, return_sequences, input_size)``."""
    bidirectional = isinstance(layer, keras.layers.Bidirectional)
    if bidirectional:
        if layer.merge_mode not in _KERAS_MERGES:
            raise ValueError(
                f"{argument}.merge_mode must be one of {sorted(_KERAS_MERGES)} (jrnn merges the two directions "
                f"into one output), got {layer.merge_mode!r}"
            )
        parts = [
            (layer.forward_layer, f"{argument}.forward_layer"),
            (layer.backward_layer, f"{argument}.backward_layer"),
        ]
    else:
        parts = [(layer, argument)]
    cells, params = [], []
    for part, where in parts:
        cls, _ = _keras_layer_kind(keras, part, where)
        if not part.built or not part.weights:
            raise ValueError(f"{where} must be built (call it once or layer.build(input_shape)), got an unbuilt layer")
        config = part.get_config()
        if part.go_backwards != (part is not parts[0][0]):
            raise ValueError(
                f"{where}.go_backwards must be {part is not parts[0][0]} (a reverse direction is a Bidirectional's "
                f"backward layer), got {part.go_backwards}"
            )
        cell = cls.from_keras_config(config)
        with _keras_scope():
            weights = [jnp.asarray(w) for w in part.get_weights()]
        kernel, recurrent_kernel = weights[:2]
        bias = weights[2] if config.get("use_bias", True) else None
        params.append(cell.from_keras_weights(kernel, recurrent_kernel, bias))
        cells.append(cell)
    if any(c != cells[0] for c in cells):
        raise ValueError(f"{argument}'s two directions must be the same kind of cell, got {cells[0]} and {cells[1]}")
    return_sequences = bool(parts[-1][0].return_sequences)
    if bidirectional and bool(parts[0][0].return_sequences) != return_sequences:
        raise ValueError(f"{argument}'s two directions must agree on return_sequences")
    merge = _KERAS_MERGES[layer.merge_mode] if bidirectional else "concat"
    return cells[0], params, bidirectional, merge, return_sequences, cells[0].input_size_of(params[0])


def from_keras(layer) -> tuple[RNN, NetworkParams]:
    """Convert a built Keras 3 ``SimpleRNN``, ``LSTM``, ``GRU`` or ``Bidirectional`` of one.

    ``layer`` may also be a list (or a ``keras.Sequential``) of such layers stacked, with the same
    cell and directions; they become the layers of one ``jrnn.RNN``. The Keras layer's
    ``return_sequences=False`` (the last output only) becomes ``RNN(pool="final")`` (each
    direction's final state, merged); ``Bidirectional(merge_mode=...)`` becomes
    ``RNN(merge=...)`` (``"ave"`` is ``"mean"``). Keras' ``dropout`` and ``recurrent_dropout``
    act in training only and are not carried over: the deterministic forward pass matches.

    The weights (``kernel``, ``recurrent_kernel``, ``bias``, already ``(in, out)``) map as the module
    docstring says; ``use_bias=False`` gives zero biases. The parameters keep the layer's dtype.

    Returns:
      ``(model, params)``: a ``jrnn.RNN`` (``output_size=None``) and its ``NetworkParams``.

    Raises:
      TypeError: ``layer`` is not one of these layers.
      ValueError: an unbuilt layer, activations other than Keras' defaults for LSTM and GRU, a
        ``go_backwards`` layer outside a ``Bidirectional``, ``merge_mode=None``, or stacked layers
        that differ or do not return sequences into the next one.
    """
    keras = _keras()
    if isinstance(layer, keras.Sequential):
        layer = list(layer.layers)
    stack = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not stack:
        raise ValueError("layer must be a Keras recurrent layer or a non-empty list of them, got an empty list")
    many = len(stack) > 1
    converted = [_from_keras_one(keras, one, f"layer[{k}]" if many else "layer") for k, one in enumerate(stack)]
    cell, _, bidirectional, merge, return_sequences, _ = converted[0]
    for k, (c, _, bi, m, seq, d_in) in enumerate(converted):
        if (c, bi, m) != (cell, bidirectional, merge):
            raise ValueError(
                f"layer[{k}] must have the cell and directions of layer[0] to stack, got {c}, bidirectional={bi}"
            )
        if k < len(converted) - 1 and not seq:
            raise ValueError(f"layer[{k}].return_sequences must be True to feed the next layer, got False")
    model = RNN(
        cell=cell, num_layers=len(stack), bidirectional=bidirectional,
        pool=None if converted[-1][4] else "final", **({"merge": merge} if merge != "concat" else {}),
    )  # fmt: skip
    layers = tuple(tuple(p) if bidirectional else p[0] for _, p, *_ in converted)
    params = NetworkParams(layers, None)
    model.check_params(params)
    return model, params


def to_keras(model: RNN, params: NetworkParams, *, use_bias: bool = True):
    """Build Keras 3 layers that compute what ``model.apply(params, ·)`` computes.

    A ``VanillaCell`` gives ``keras.layers.SimpleRNN`` (same activation), an ``LSTMCell``
    ``keras.layers.LSTM`` and a ``GRUCell`` ``keras.layers.GRU`` (same ``reset_after``), wrapped in
    ``keras.layers.Bidirectional`` (``merge_mode`` from ``model.merge``) when bidirectional. Each
    layer is built for inputs ``(batch, time, features)`` with the params' dtype and returns the
    whole sequence (``return_sequences=True``), or its final states with ``pool="final"``.

    Args:
      model: a ``jrnn.RNN`` with ``output_size=None`` and ``pool`` None or ``"final"``.
      params: its ``NetworkParams``.
      use_bias: ``False`` builds ``use_bias=False`` layers and requires the biases to be zero.

    Returns:
      the layer when ``model.num_layers == 1``, else a list of layers to stack in order.

    Raises:
      TypeError: ``model`` is not a ``jrnn.RNN`` or its cell has no Keras counterpart.
      ValueError: a readout, another pooling, cell options Keras lacks (LSTM ``proj_size``,
        ``peepholes``, ``layer_norm``), or non-zero biases with ``use_bias=False``.
    """
    keras = _keras()
    if not isinstance(model, RNN):
        raise TypeError(f"model must be a jrnn.RNN, got {type(model).__name__}")
    if model.output_size is not None:
        raise ValueError(
            f"model.output_size must be None for Keras (convert params.readout to keras.layers.Dense apart), "
            f"got {model.output_size}"
        )
    if model.pool not in (None, "final"):
        raise ValueError(f"model.pool must be None or 'final' for Keras (return_sequences), got {model.pool!r}")
    if not isinstance(use_bias, (bool, np.bool_)):
        raise TypeError(f"use_bias must be a bool, got {use_bias!r}")
    names = {cls: name for name, cls in _keras_cells().items()}
    if type(model.cell) not in names:
        raise TypeError(f"model.cell must be a cell with a Keras counterpart, got {type(model.cell).__name__}")
    input_size = model.check_params(params)
    merge = getattr(model, "merge", "concat")
    keras_merge = {v: k for k, v in _KERAS_MERGES.items()}[merge]
    config = model.cell.keras_config()  # raises for options Keras lacks
    dtype = str(jnp.dtype(model.first_cell_params(params).w_h.dtype))
    keras_cls = getattr(keras.layers, names[type(model.cell)])
    options = {"use_bias": bool(use_bias), "dtype": dtype}
    out = []
    with _keras_scope():
        for layer, layer_params in enumerate(params.layers):
            sequences = model.pool is None or layer < model.num_layers - 1
            d_in = model.layer_input_size(layer, input_size)
            out.append(_to_keras_layer(keras, keras_cls, model, layer, layer_params, d_in,
                                       {**config, **options, "return_sequences": sequences}, keras_merge))  # fmt: skip
    return out[0] if model.num_layers == 1 else out


def _to_keras_layer(keras, keras_cls, model, layer, layer_params, d_in, kwargs, keras_merge):
    """Layer ``layer`` as one built Keras layer (a ``Bidirectional`` of two when bidirectional)."""
    pairs = list(enumerate(directions(model, layer_params)))
    if not kwargs["use_bias"]:
        for d, p in pairs:
            for b in model.cell.keras_biases(p):
                if np.any(np.asarray(b, np.float64) != 0.0):
                    raise ValueError(
                        f"params.layers[{layer}] (direction {d}) biases must be zero for use_bias=False, "
                        f"got max |b| = {float(jnp.abs(b).max())}"
                    )
    if model.bidirectional:
        built = keras.layers.Bidirectional(keras_cls(**kwargs), merge_mode=keras_merge, dtype=kwargs["dtype"])
        built.build((None, None, d_in))
        targets = [built.forward_layer, built.backward_layer]
    else:
        built = keras_cls(**kwargs)
        built.build((None, None, d_in))
        targets = [built]
    for target, (_, p) in zip(targets, pairs):
        target.set_weights([np.asarray(w) for w in model.cell.keras_weights(p, use_bias=kwargs["use_bias"])])
    return built
