"""The implementations the benchmarks compare, all built from the same jrnn weights.

A ``Case`` names a cell, a network structure and a shape; ``make_problem`` draws jrnn parameters,
inputs ``xs (B, T, D)`` and targets ``(B, T, dirs·H)`` for it. Each peer builder turns a problem
into a ``Built``: zero-argument callables for one training gradient (loss ``mean((ys - target)²)``
and its gradient for every weight) and for forward-only inference, each blocking until done, plus
checkers that return the loss and gradients in jrnn's layout (``jax.tree_util.tree_leaves`` order
of ``NetworkParams``) so that ``speed.py`` can verify every peer against jrnn before timing it.

Weight conversion (jrnn stores ``(in, out)``; gate blocks ``i, f, g, o`` and ``r, z, n``):

* PyTorch: ``weight_ih = w_x.T``, ``weight_hh = w_h.T``; Vanilla/LSTM ``bias_ih = b``,
  ``bias_hh = 0``; GRU ``bias_ih = b_x``, ``bias_hh = b_h``; an LSTM with ``proj_size``
  ``weight_hr = w_hr.T`` (the only cell option a peer has: the others, and the minimal cells,
  are jrnn's alone, and every other builder raises ``Unavailable`` for them).
* Flax linen: one ``Dense`` per gate, kernels ``(in, out)``: column blocks of ``w_x`` / ``w_h``.
  LSTM biases sit on the recurrent Dense; GRU ``ir``/``iz`` biases hold ``b_x + b_h`` of r and z,
  ``in`` holds ``b_xn`` and ``hn`` holds ``b_hn``.
* Equinox: ``weight_ih = w_x.T``, ``weight_hh = w_h.T``; LSTM ``bias = b``; GRU
  ``bias = b_x + [b_hr, b_hz, 0]``, ``bias_n = b_hn``. Equinox has no vanilla cell.
* NumPy: jrnn's layout as is (``numpy_rnn.py``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import numpy as np

CELL_KINDS = ("vanilla", "lstm", "gru")
"""The cells every peer implements: the speed grid's."""


class Unavailable(Exception):
    """A peer that cannot run a case (missing package, unsupported cell); the message says why."""


@dataclasses.dataclass(frozen=True)
class Case:
    cell: str
    layers: int
    bidirectional: bool
    B: int
    T: int
    D: int
    H: int
    dtype: str = "float32"
    options: tuple[tuple[str, Any], ...] = ()
    """Cell options as ``(name, value)`` pairs, e.g. ``(("proj_size", 64),)``: ``make_cell(cell, H, **options)``."""
    network: tuple[tuple[str, Any], ...] = ()
    """Network options as ``(name, value)`` pairs: ``RNN`` options (``input_dropout``,
    ``recurrent_dropout``, ``merge``), and ``("mask", f)``: a fixed ``(B, T)`` step mask with a
    fraction ``f`` of its steps off, given to ``apply``. With a dropout rate, training passes a
    fixed ``dropout_key`` (the same masks in every call); inference passes none."""

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.B, self.T, self.D, self.H)

    @property
    def structure(self) -> str:
        return f"{self.layers}L{' bi' if self.bidirectional else ''}"

    @property
    def label(self) -> str:
        options = "".join(f" {k}={v}" for k, v in (*self.options, *self.network))
        return f"{self.cell}{options} {self.structure} B={self.B} T={self.T} D={self.D} H={self.H}"

    def asdict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Problem:
    case: Case
    model: Any  # jrnn.RNN
    params: Any  # jrnn.NetworkParams (jax arrays)
    layers_np: list  # per layer: tuple of numpy arrays (fields), or a (fwd, bwd) pair of them
    xs: np.ndarray  # (B, T, D)
    target: np.ndarray  # (B, T, dirs·H)
    train_kwargs: dict = dataclasses.field(default_factory=dict)  # model.apply's mask / dropout_key
    infer_kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Built:
    train: Callable[[], Any]
    infer: Callable[[], Any]
    check_train: Callable[[], tuple[float, list[np.ndarray]]]
    check_infer: Callable[[], np.ndarray]
    compile_s: dict[str, float] = dataclasses.field(default_factory=dict)  # filled on first use
    note: str = ""


def make_problem(case: Case, seed: int = 0) -> Problem:
    import jax
    import jax.numpy as jnp

    import jrnn

    network = dict(case.network)
    mask_off = network.pop("mask", None)
    model = jrnn.RNN(jrnn.make_cell(case.cell, case.H, **dict(case.options)), num_layers=case.layers,
                     bidirectional=case.bidirectional, **network)  # fmt: skip
    k_p, k_x, k_t = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = model.init(k_p, case.D, dtype=jnp.dtype(case.dtype))
    rng = np.random.default_rng(seed)
    dtype = jnp.dtype(case.dtype)  # bfloat16 included (ml_dtypes)
    xs = rng.standard_normal((case.B, case.T, case.D)).astype(dtype)
    target = (0.5 * rng.standard_normal((case.B, case.T, model.top_size))).astype(dtype)

    def to_np(p):
        return tuple(np.asarray(a) for a in p if a is not None)

    layers_np = [tuple(to_np(d) for d in p) if case.bidirectional else to_np(p) for p in params.layers]
    train_kwargs, infer_kwargs = {}, {}
    if mask_off:
        mask = jnp.asarray(np.random.default_rng(seed + 1).random((case.B, case.T)) >= mask_off)
        train_kwargs["mask"] = infer_kwargs["mask"] = mask
    if any(network.get(k, 0) for k in ("input_dropout", "recurrent_dropout", "dropout")):
        train_kwargs["dropout_key"] = jax.random.PRNGKey(seed + 2)
    return Problem(case, model, params, layers_np, xs, target, train_kwargs, infer_kwargs)


def _require_plain(case: Case, kinds: tuple[str, ...], who: str) -> None:
    """``Unavailable`` unless ``case`` is one of ``kinds`` without cell or network options."""
    if case.network:
        raise Unavailable(f"{who} is built here without network options, not {dict(case.network)}")
    if case.cell not in kinds:
        raise Unavailable(f"{who} has no {case.cell} cell here")
    if case.options:
        raise Unavailable(f"{who} is built here for the plain cells only, not {dict(case.options)}")


def _directions(problem: Problem, layer: int) -> list[tuple[np.ndarray, ...]]:
    p = problem.layers_np[layer]
    return list(p) if problem.case.bidirectional else [p]


class _Compiled:
    """``jitted`` bound to fixed arguments, compiled on the first call; the compile time (trace,
    lower and XLA compile) goes to ``times[key]``."""

    def __init__(self, jitted, args, times: dict, key: str):
        self.jitted, self.args, self.times, self.key = jitted, args, times, key
        self.compiled = None

    def __call__(self):
        if self.compiled is None:
            t0 = time.perf_counter()
            self.compiled = self.jitted.lower(*self.args).compile()
            self.times[self.key] = time.perf_counter() - t0
        return self.compiled(*self.args)


# --------------------------------------------------------------------------------------------
# jrnn


FUSED = ("cudnn", "pallas")
"""The ``backward=`` values that also replace the forward pass (``jrnn.kernels``)."""


def build_jrnn(problem: Problem, *, backward: str = "autodiff", unroll: int = 1, remat: bool = False) -> Built:
    """jrnn's ``RNN``; inference runs the plain scan, except for a fused layer (``FUSED``), which
    runs its own forward. A fused layer that cannot run the case (its cell, dtype, a missing GPU)
    is ``Unavailable``, with jrnn's own error as the reason."""
    import jax
    import jax.numpy as jnp

    model = problem.model
    options = dict(backward=backward, unroll=unroll, remat=remat, **problem.train_kwargs)
    infer_options = dict(unroll=unroll, backward=backward) if backward in FUSED else dict(unroll=unroll)
    infer_options.update(problem.infer_kwargs)

    def loss_fn(params, xs, target):
        ys, _ = model.apply(params, xs, **options)
        return jnp.mean((ys - target) ** 2)

    def forward(params, xs):
        return model.apply(params, xs, **infer_options)[0]

    if backward in FUSED:
        try:  # trace once: jrnn raises ValueError for what the fused layer cannot run
            jax.eval_shape(jax.grad(loss_fn), problem.params, problem.xs, problem.target)
        except ValueError as e:
            raise Unavailable(str(e).split("\n")[0]) from e

    params = problem.params
    xs, target = jnp.asarray(problem.xs), jnp.asarray(problem.target)
    compile_s = {}
    grad = _Compiled(jax.jit(jax.value_and_grad(loss_fn)), (params, xs, target), compile_s, "train")
    fwd = _Compiled(jax.jit(forward), (params, xs), compile_s, "infer")

    def check_train():
        loss, grads = grad()
        return float(loss), [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)]

    return Built(
        train=lambda: jax.block_until_ready(grad()),
        infer=lambda: jax.block_until_ready(fwd()),
        check_train=check_train,
        check_infer=lambda: np.asarray(fwd()),
        compile_s=compile_s,
    )


# --------------------------------------------------------------------------------------------
# PyTorch (oneDNN on CPU for LSTM; ATen's per-step kernels for RNN and GRU)


def build_torch(problem: Problem, threads: int | None = None, device: str = "cpu") -> Built:
    """``threads``: PyTorch intra-op threads, set at the start of every call (default: all cores);
    ``device``: ``"cpu"`` or ``"cuda"`` (cuDNN)."""
    try:
        import torch
    except ImportError as e:
        raise Unavailable("torch is not installed") from e
    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("this torch build sees no CUDA device")
    threads = threads or os.cpu_count() or 1
    case = problem.case
    if case.dtype != "float32" and not (device == "cuda" and case.dtype == "bfloat16"):
        raise Unavailable(f"torch peer runs float32 only (bfloat16 too on CUDA), case is {case.dtype}")
    dtype = getattr(torch, case.dtype)
    tensor = lambda a: torch.from_numpy(np.asarray(a, np.float32).copy()).to(dtype)  # noqa: E731 (ml_dtypes bf16 via f32)
    proj_size = dict(case.options).get("proj_size", 0)
    if case.network:
        _require_plain(case, CELL_KINDS, "PyTorch")
    if case.cell == "lstm" and set(dict(case.options)) == {"proj_size"}:
        extra = {"proj_size": proj_size}  # nn.LSTM's projection: weight_hr = w_hr.T
    else:
        _require_plain(case, CELL_KINDS, "PyTorch")
        extra = {}
    cls = {"vanilla": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[case.cell]
    module = cls(case.D, case.H, num_layers=case.layers, bias=True, batch_first=True, bidirectional=case.bidirectional,
                 dtype=dtype, **extra)  # fmt: skip
    suffixes = ["", "_reverse"] if case.bidirectional else [""]
    with torch.no_grad():
        for layer in range(case.layers):
            for suffix, p in zip(suffixes, _directions(problem, layer)):
                get = lambda n: getattr(module, f"{n}_l{layer}{suffix}")  # noqa: B023, E731
                get("weight_ih").copy_(tensor(p[0].T))
                get("weight_hh").copy_(tensor(p[1].T))
                get("bias_ih").copy_(tensor(p[2]))
                if case.cell == "gru":
                    get("bias_hh").copy_(tensor(p[3]))
                else:
                    get("bias_hh").zero_()
                if proj_size:
                    get("weight_hr").copy_(tensor(p[3].T))
    module = module.to(device)
    xs = tensor(problem.xs).to(device)
    target = tensor(problem.target).to(device)
    params = list(module.parameters())
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def train():
        torch.set_num_threads(threads)
        for p in params:
            p.grad = None
        ys, _ = module(xs)
        loss = ((ys - target) ** 2).mean()
        loss.backward()
        sync()
        return loss

    def infer():
        torch.set_num_threads(threads)
        with torch.inference_mode():
            ys = module(xs)[0]
        sync()
        return ys

    def check_train():
        loss = float(train().detach().cpu())
        grads = []
        for layer in range(case.layers):
            for suffix in suffixes:
                get = lambda n: getattr(module, f"{n}_l{layer}{suffix}").grad.float().cpu().numpy()  # noqa: B023, E731
                grads += [get("weight_ih").T, get("weight_hh").T, get("bias_ih")]
                if case.cell == "gru":
                    grads.append(get("bias_hh"))
                if proj_size:
                    grads.append(get("weight_hr").T)
        return loss, grads

    note = f"torch threads {threads}" if device == "cpu" else f"torch on {torch.cuda.get_device_name()}"
    return Built(train, infer, check_train, lambda: infer().float().cpu().numpy(), note=note)


# --------------------------------------------------------------------------------------------
# Flax linen nn.RNN with its cells


_FLAX_GATES = {"vanilla": ("",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}


def _flax_params(kind: str, p) -> dict:
    gates = _FLAX_GATES[kind]
    H = p[1].shape[0]
    blocks = lambda a: [a[..., k * H : (k + 1) * H] for k in range(len(gates))]  # noqa: E731
    wx, wh = blocks(p[0]), blocks(p[1])
    if kind == "vanilla":
        return {"i": {"kernel": p[0], "bias": p[2]}, "h": {"kernel": p[1]}}
    if kind == "lstm":
        b = blocks(p[2])
        out = {f"i{g}": {"kernel": wx[k]} for k, g in enumerate(gates)}
        out |= {f"h{g}": {"kernel": wh[k], "bias": b[k]} for k, g in enumerate(gates)}
        return out
    bx, bh = blocks(p[2]), blocks(p[3])
    return {
        "ir": {"kernel": wx[0], "bias": bx[0] + bh[0]},
        "iz": {"kernel": wx[1], "bias": bx[1] + bh[1]},
        "in": {"kernel": wx[2], "bias": bx[2]},
        "hr": {"kernel": wh[0]},
        "hz": {"kernel": wh[1]},
        "hn": {"kernel": wh[2], "bias": bh[2]},
    }


def _flax_grads_to_jrnn(kind: str, g: dict) -> list[np.ndarray]:
    cat = lambda xs: np.concatenate([np.asarray(x) for x in xs], axis=-1)  # noqa: E731
    if kind == "vanilla":
        return [np.asarray(g["i"]["kernel"]), np.asarray(g["h"]["kernel"]), np.asarray(g["i"]["bias"])]
    if kind == "lstm":
        gates = _FLAX_GATES["lstm"]
        return [
            cat([g[f"i{x}"]["kernel"] for x in gates]),
            cat([g[f"h{x}"]["kernel"] for x in gates]),
            cat([g[f"h{x}"]["bias"] for x in gates]),
        ]
    return [
        cat([g["ir"]["kernel"], g["iz"]["kernel"], g["in"]["kernel"]]),
        cat([g["hr"]["kernel"], g["hz"]["kernel"], g["hn"]["kernel"]]),
        cat([g["ir"]["bias"], g["iz"]["bias"], g["in"]["bias"]]),
        cat([g["ir"]["bias"], g["iz"]["bias"], g["hn"]["bias"]]),
    ]


def build_flax(problem: Problem) -> Built:
    try:
        import flax.linen as nn
    except ImportError as e:
        raise Unavailable("flax is not installed") from e
    import jax
    import jax.numpy as jnp

    case = problem.case
    _require_plain(case, CELL_KINDS, "Flax")
    make = {"vanilla": nn.SimpleCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[case.cell]
    dtype = jnp.dtype(case.dtype)

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, xs):
            h = xs
            for layer in range(case.layers):
                fwd = nn.RNN(make(case.H, dtype=dtype, param_dtype=dtype, name=f"l{layer}f"))
                if case.bidirectional:
                    bwd = nn.RNN(make(case.H, dtype=dtype, param_dtype=dtype, name=f"l{layer}b"))
                    h = nn.Bidirectional(fwd, bwd)(h)
                else:
                    h = fwd(h)
            return h

    module = Stack()
    names = ["f", "b"] if case.bidirectional else ["f"]
    tree = {}
    for layer in range(case.layers):
        for name, p in zip(names, _directions(problem, layer)):
            tree[f"l{layer}{name}"] = _flax_params(case.cell, p)
    variables = {"params": jax.tree_util.tree_map(jnp.asarray, tree)}
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros(problem.xs.shape, dtype))
    if jax.tree_util.tree_structure(shapes) != jax.tree_util.tree_structure(variables):
        raise RuntimeError("flax parameter tree does not match the conversion; flax changed its layout")

    def loss_fn(variables, xs, target):
        return jnp.mean((module.apply(variables, xs) - target) ** 2)

    xs, target = jnp.asarray(problem.xs), jnp.asarray(problem.target)
    compile_s = {}
    grad = _Compiled(jax.jit(jax.value_and_grad(loss_fn)), (variables, xs, target), compile_s, "train")
    fwd = _Compiled(jax.jit(module.apply), (variables, xs), compile_s, "infer")

    def check_train():
        loss, g = grad()
        out = []
        for layer in range(case.layers):
            for name in names:
                out += _flax_grads_to_jrnn(case.cell, g["params"][f"l{layer}{name}"])
        return float(loss), out

    return Built(
        train=lambda: jax.block_until_ready(grad()),
        infer=lambda: jax.block_until_ready(fwd()),
        check_train=check_train,
        check_infer=lambda: np.asarray(fwd()),
        compile_s=compile_s,
    )


# --------------------------------------------------------------------------------------------
# Equinox cells under lax.scan (vmapped over the batch, the idiomatic way)


def build_equinox(problem: Problem) -> Built:
    try:
        import equinox as eqx
    except ImportError as e:
        raise Unavailable("equinox is not installed") from e
    import jax
    import jax.numpy as jnp

    case = problem.case
    if case.cell == "vanilla":
        raise Unavailable("Equinox has no vanilla (Elman) RNN cell")
    _require_plain(case, ("lstm", "gru"), "Equinox")
    dtype = jnp.dtype(case.dtype)
    H = case.H

    def make_cell(p):
        d_in = p[0].shape[0]
        if case.cell == "lstm":
            cell = eqx.nn.LSTMCell(d_in, H, key=jax.random.PRNGKey(0), dtype=dtype)
            return eqx.tree_at(lambda c: (c.weight_ih, c.weight_hh, c.bias), cell, (p[0].T, p[1].T, p[2]))
        cell = eqx.nn.GRUCell(d_in, H, key=jax.random.PRNGKey(0), dtype=dtype)
        bias = p[2] + np.concatenate([p[3][: 2 * H], np.zeros(H, p[3].dtype)])
        return eqx.tree_at(
            lambda c: (c.weight_ih, c.weight_hh, c.bias, c.bias_n), cell, (p[0].T, p[1].T, bias, p[3][2 * H :])
        )

    cells = [tuple(make_cell(p) for p in _directions(problem, layer)) for layer in range(case.layers)]
    cells = jax.tree_util.tree_map(jnp.asarray, cells)

    def run(cell, xs, reverse):  # xs (B, T, D)
        def sequence(x):  # (T, D)
            zeros = jnp.zeros((H,), x.dtype)
            init = (zeros, zeros) if case.cell == "lstm" else zeros

            def step(carry, x_t):
                new = cell(x_t, carry)
                return new, new[0] if case.cell == "lstm" else new

            return jax.lax.scan(step, init, x, reverse=reverse)[1]

        return jax.vmap(sequence)(xs)

    def forward(cells, xs):
        h = xs
        for layer in cells:
            outs = [run(c, h, reverse=d == 1) for d, c in enumerate(layer)]
            h = jnp.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
        return h

    def loss_fn(cells, xs, target):
        return jnp.mean((forward(cells, xs) - target) ** 2)

    xs, target = jnp.asarray(problem.xs), jnp.asarray(problem.target)
    compile_s = {}
    grad = _Compiled(jax.jit(jax.value_and_grad(loss_fn)), (cells, xs, target), compile_s, "train")
    fwd = _Compiled(jax.jit(forward), (cells, xs), compile_s, "infer")

    def check_train():
        loss, g = grad()
        out = []
        for layer in g:
            for c in layer:
                if case.cell == "lstm":
                    out += [np.asarray(c.weight_ih).T, np.asarray(c.weight_hh).T, np.asarray(c.bias)]
                else:
                    bias = np.asarray(c.bias)
                    out += [
                        np.asarray(c.weight_ih).T,
                        np.asarray(c.weight_hh).T,
                        bias,
                        np.concatenate([bias[: 2 * H], np.asarray(c.bias_n)]),
                    ]
        return float(loss), out

    return Built(
        train=lambda: jax.block_until_ready(grad()),
        infer=lambda: jax.block_until_ready(fwd()),
        check_train=check_train,
        check_infer=lambda: np.asarray(fwd()),
        compile_s=compile_s,
    )


# --------------------------------------------------------------------------------------------
# NumPy hand-written BPTT in the seed's style


def _blas_threads_setter(threads: int, required: bool) -> Callable[[], None]:
    """A cheap callable that sets NumPy's BLAS threads; a no-op when that is impossible and not
    ``required`` (otherwise ``Unavailable``)."""
    try:
        from threadpoolctl import ThreadpoolController

        libs = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
    except ImportError:
        libs = []
    if not libs:
        if required:
            raise Unavailable("pinning NumPy's BLAS threads needs threadpoolctl and a known BLAS")
        return lambda: None

    def pin():
        for lib in libs:
            lib.set_num_threads(threads)

    return pin


def build_numpy(problem: Problem, threads: int | None = None) -> Built:
    """``threads``: BLAS threads set at the start of every call (default: all cores)."""
    from benchmarks import numpy_rnn

    case = problem.case
    if case.dtype != "float32":
        raise Unavailable(f"numpy peer runs float32 only, case is {case.dtype}")
    _require_plain(case, CELL_KINDS, "the NumPy hand BPTT")
    layers = problem.layers_np
    pin = _blas_threads_setter(threads or os.cpu_count() or 1, required=threads is not None)

    def train():
        pin()
        return numpy_rnn.mse_value_and_grad(case.cell, layers, problem.xs, problem.target, case.bidirectional)

    def infer():
        pin()
        return numpy_rnn.network_forward(case.cell, layers, problem.xs, case.bidirectional)[0]

    def check_train():
        loss, grads = train()
        flat = []
        for g in grads:
            for d in g if case.bidirectional else [g]:
                flat += list(d)
        return loss, flat

    return Built(train, infer, check_train, infer)


# --------------------------------------------------------------------------------------------
# cuDNN LSTM through jax.experimental.rnn (GPU only)


def cudnn_weights(problem: Problem):
    """Pack jrnn LSTM weights in cuDNN's flat layout (see ``jax.experimental.rnn``'s docstring)."""
    import jax.numpy as jnp

    mats, biases = [], []
    for layer in range(problem.case.layers):
        for p in _directions(problem, layer):
            mats += [p[0].T.reshape(-1), p[1].T.reshape(-1)]
            biases += [p[2], np.zeros_like(p[2])]
    return jnp.asarray(np.concatenate(mats + biases))


def build_cudnn(problem: Problem) -> Built:
    import jax
    import jax.numpy as jnp

    case = problem.case
    if case.cell != "lstm":
        raise Unavailable("jax.experimental.rnn implements the LSTM only")
    _require_plain(case, ("lstm",), "jax.experimental.rnn")
    if jax.default_backend() != "gpu":
        raise Unavailable("jax.experimental.rnn needs a CUDA GPU (cuDNN)")
    if case.dtype != "float32":
        raise Unavailable(f"jax.experimental.rnn's cuDNN LSTM runs float32 only, case is {case.dtype}")
    from jax.experimental import rnn

    dirs = 2 if case.bidirectional else 1
    w = cudnn_weights(problem)
    xs, target = jnp.asarray(problem.xs), jnp.asarray(problem.target)
    zeros = jnp.zeros((dirs * case.layers, case.B, case.H), xs.dtype)
    lengths = jnp.full((case.B,), case.T, jnp.int32)
    kw = dict(input_size=case.D, hidden_size=case.H, num_layers=case.layers, dropout=0.0, bidirectional=case.bidirectional)

    def forward(w, xs):
        return rnn.lstm(xs, zeros, zeros, w, lengths, **kw)[0]

    def loss_fn(w, xs, target):
        return jnp.mean((forward(w, xs) - target) ** 2)

    compile_s = {}
    grad = _Compiled(jax.jit(jax.value_and_grad(loss_fn)), (w, xs, target), compile_s, "train")
    fwd = _Compiled(jax.jit(forward), (w, xs), compile_s, "infer")

    def check_train():
        loss, g = grad()
        W_ih, W_hh, b_ih, _ = rnn.unpack_lstm_weights(g, case.D, case.H, case.layers, case.bidirectional)
        out = []
        for k in range(dirs * case.layers):
            out += [np.asarray(W_ih[k]).T, np.asarray(W_hh[k]).T, np.asarray(b_ih[k])]
        return float(loss), out

    return Built(
        train=lambda: jax.block_until_ready(grad()),
        infer=lambda: jax.block_until_ready(fwd()),
        check_train=check_train,
        check_infer=lambda: np.asarray(fwd()),
        compile_s=compile_s,
    )


def jrnn_bptt_available() -> str | None:
    """None when ``backward="bptt"`` works in this checkout, else the reason it does not."""
    try:
        import jax.numpy as jnp

        import jrnn

        cell = jrnn.VanillaCell(2)
        import jax

        params = cell.init(jax.random.PRNGKey(0), 2)
        jax.grad(lambda p: jrnn.unroll(cell, p, jnp.ones((1, 2, 2)), backward="bptt")[1].sum())(params)
    except Exception as e:  # noqa: BLE001 - report why, do not fail the suite
        return f"{type(e).__name__}: {e}"[:200]
    return None


PEERS: dict[str, Callable[[Problem], Built]] = {
    "jrnn": build_jrnn,
    "jrnn-bptt": lambda problem: build_jrnn(problem, backward="bptt"),
    "torch": build_torch,
    "torch-1t": lambda problem: build_torch(problem, threads=1),
    "torch-cuda": lambda problem: build_torch(problem, device="cuda"),
    "flax": build_flax,
    "equinox": build_equinox,
    "numpy": build_numpy,
    "numpy-1t": lambda problem: build_numpy(problem, threads=1),
    "cudnn": build_cudnn,
    "jrnn-cudnn": lambda problem: build_jrnn(problem, backward="cudnn"),
    "jrnn-pallas": lambda problem: build_jrnn(problem, backward="pallas"),
}
"""``name -> builder``; a builder raises ``Unavailable`` when it cannot run a case."""
