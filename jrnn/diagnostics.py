"""Gradient-flow diagnostics: how gradients and perturbations travel through time.

Notation: a layer's state after step ``t`` is ``s_t`` (``h_t`` for the vanilla and GRU cells, the
pair ``(h_t, c_t)`` for the LSTM), ``s_t = F_t(s_{t-1})`` with ``F_t`` the cell step at input
``x_t``, and ``J_t = ∂s_t/∂s_{t-1}`` the step Jacobian. Weights are stored ``(in, out)``, so a
linear vanilla cell maps ``h ↦ h @ w_h`` and its step Jacobian is ``w_hᵀ``.

::

    hidden_grad_norms(model, params, xs, targets)   ‖dL/dh_t‖ per layer and step
    hidden_grads(model, params, xs, targets)        the cotangents dL/ds_t themselves
    jacobian_norms(cell, params, xs)                ‖∂s_T/∂s_t‖₂ for every t
    recurrent_spectrum(cell, params)                eigen- and singular values of each w_h block
    lyapunov_exponents(cell, params, xs, k)         the k largest, by the QR method
    gradient_recorder(clip_norm)                    an optax transform logging gradient norm,
                                                    clipping and spectral radius per update

``dL/ds_t`` is the *total* derivative of the loss with respect to the state after step ``t``: the
direct path through this step's output plus every path through later steps and layers. It is
computed as ``∂L/∂ε_t`` at ``ε = 0`` for a perturbation added to the state inside the recurrence,
``s_t = F_t(s_{t-1}) + ε_t``, so that ``ε_t`` reaches both this step's output and the next step.
(A perturbation added to the output sequence after the scan would only see the direct path.)
These are the cotangents a hand-written BPTT carries backward (``d_h``, and ``d_c`` for the LSTM,
the output's cotangent included).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jrnn._checks import check_choice, check_float, check_int, check_seq_lengths, check_sequence, fail
from jrnn.cells import Cell, cell_types, check_cell
from jrnn.losses import get_loss
from jrnn.network import RNN, readout, stack
from jrnn.scan import compute_dtype, step_mask, tree_where, zero_skipped
from jrnn.unroll import prepare_carry

Array = jax.Array

__all__ = [
    "GATES",
    "Record",
    "RecorderState",
    "Spectrum",
    "gradient_recorder",
    "hidden_grad_norms",
    "hidden_grads",
    "jacobian_norms",
    "lyapunov_exponents",
    "recorded",
    "recorder_labels",
    "recorder_state",
    "recurrent_spectrum",
]

GATES: dict[type, tuple[str, ...]] = {cls: cls.gate_names for cls in cell_types()}
"""``cell type -> names of the (H, H) blocks of w_h``, in storage order (each cell's ``gate_names``)."""

_BLOCK_NAMES: dict[int, tuple[str, ...]] = {}
for _names in GATES.values():
    _BLOCK_NAMES.setdefault(len(_names), _names)

PARTS = ("h", "c", "carry")


# --------------------------------------------------------------------------------------------
# Shared helpers


def _check_model(model: Any) -> None:
    if not isinstance(model, RNN):
        fail("model", "a jrnn.RNN", type(model).__name__, TypeError)


def _check_part(part: Any, cell: Cell) -> str:
    check_choice("part", part, PARTS)
    if part not in ("carry", *cell.carry_parts):
        fail(f"part={part!r}", f"a cell whose carry has a part {part!r}", f"{type(cell).__name__}")
    return part


def _select(tree, part: str):
    """The ``part`` field of a carry-shaped NamedTuple (the LSTM's ``h`` or ``c``), or the tree."""
    if part != "carry" and hasattr(tree, "_fields"):
        return getattr(tree, part)
    return tree


# --------------------------------------------------------------------------------------------
# dL/ds_t: gradients with respect to the hidden states


def _perturbed_layer(cell: Cell, params, xs, carry0, valid, eps, reverse: bool):
    """One layer, time-major, with ``eps`` (carry-shaped, each leaf ``(T, B, H)``) added to the
    state after every valid step: ``s_t = F_t(s_{t-1}) + ε_t``; the output is ``s_t``'s ``h``."""
    xp = cell.project_inputs(params, xs)  # (T, B, G)

    def body(carry, inputs):
        xp_t, e_t, m_t = inputs
        new, _ = cell.step(params, carry, xp_t)
        new = jax.tree_util.tree_map(jnp.add, new, e_t)
        y = cell.output(new)
        if m_t is not None:
            m = m_t[:, None]
            new = tree_where(m, new, carry)  # padded steps keep the carry (and ignore ε)
            y = jnp.where(m, y, jnp.zeros_like(y))
        return new, y

    return jax.lax.scan(body, carry0, (xp, eps, valid), reverse=reverse)


def _perturbed_forward(model: RNN, params, xs, eps, lengths):
    """``RNN.apply`` without dropout, time-major, with ``eps[l]`` added to layer l's states."""
    T, B = xs.shape[:2]
    valid = step_mask(lengths, T)

    def run_layer(layer, direction, p, h, carry, reverse):
        e = eps[layer][direction] if model.bidirectional else eps[layer]
        carry_T, ys = _perturbed_layer(model.cell, p, h, carry, valid, e, reverse)
        return carry_T, ys, None

    carries = model.initial_carries((B,), xs.dtype)
    top, _, _, _ = stack(model, params, zero_skipped(xs, lengths), carries, run_layer, [None] * model.num_layers)
    return readout(params, top, valid)  # (T, B, O)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _hidden_grads(model: RNN, loss: str, params, xs, targets, lengths):
    """Time-major and validated: ``(loss, dL/dε)`` at ``ε = 0``, leaves ``(T, B, H)``."""
    T, B = xs.shape[:2]
    loss_fn = get_loss(loss).loss

    def zeros():
        return model.cell.initial_carry((T, B), xs.dtype)  # each leaf (T, B, H)

    eps0 = tuple((zeros(), zeros()) if model.bidirectional else zeros() for _ in range(model.num_layers))

    def objective(eps):
        ys = _perturbed_forward(model, params, xs, eps, lengths)  # (T, B, O)
        return loss_fn(jnp.swapaxes(ys, 0, 1), targets, lengths)

    return jax.value_and_grad(objective)(eps0)


def hidden_grads(model: RNN, params, xs, targets, *, loss: str = "mse", seq_lengths=None):
    """The loss and its total derivative with respect to every layer's state at every step.

    Args:
      model: an ``RNN`` (its ``dropout`` is not applied: the diagnostics are deterministic).
      params: its ``NetworkParams``.
      xs: ``(B, T, D)`` or unbatched ``(T, D)``.
      targets: as ``jrnn.losses`` expects for ``loss`` (``(B, T, O)`` or ``(B, O)`` for
        ``"mse"``; ``(B, T)`` or ``(B,)`` ints for ``"cross_entropy"``), without the ``B`` axis
        when ``xs`` is unbatched.
      loss: a name of ``jrnn.losses.LOSSES``.
      seq_lengths: ``(B,)`` ints (a scalar when unbatched), as in ``RNN.apply``.

    Returns:
      ``(loss_value, grads)``: ``grads[l]`` is ``dL/ds_t`` for layer l laid out like the carry,
      each leaf ``(B, T, H)`` (``(T, H)`` unbatched): an array for the vanilla and GRU cells, an
      ``LSTMCarry(h, c)`` for the LSTM; a ``(forward, backward)`` pair when bidirectional, both
      aligned with input positions. ``grads[l].h[:, t]`` is ``dL/dh_t``, the output's cotangent
      included; the LSTM's ``c`` entry is ``∂L/∂c_t`` with ``h_t`` held fixed (the state's
      coordinates taken as independent, as the BPTT carries them). Entries at padded steps are 0.
    """
    _check_model(model)
    get_loss(loss)  # validates the name
    layout, lengths, _, dtype = model.check_inputs(params, xs, None, seq_lengths)
    if not layout.batched:
        targets = jnp.asarray(targets)[None]
    value, grads = _hidden_grads(model, loss, params, layout.to_scan(xs.astype(dtype)), targets, lengths)
    return value, jax.tree_util.tree_map(layout.from_scan, grads)  # leaves (B, T, H) or (T, H)


def hidden_grad_norms(
    model: RNN, params, xs, targets, *, loss: str = "mse", seq_lengths=None, part: str = "h"
):
    """``‖dL/dh_t‖`` for every layer and step: the norm over batch and features of the total
    derivative of the loss with respect to layer l's hidden state after step t.

    ``part`` picks the state coordinates: ``"h"`` (default), ``"c"`` (LSTM memory, ``h_t`` held
    fixed) or ``"carry"`` (both together for the LSTM, ``sqrt(‖dL/dh_t‖² + ‖dL/dc_t‖²)``; the
    same as ``"h"`` for the other cells). Arguments as in :func:`hidden_grads`.

    Returns:
      ``(num_layers, T)``, or ``(num_layers, 2, T)`` when bidirectional (index 0 the forward
      direction, 1 the backward one, both by input position). Padded steps of a sequence add 0.
    """
    _check_model(model)
    part = _check_part(part, model.cell)
    _, grads = hidden_grads(model, params, xs, targets, loss=loss, seq_lengths=seq_lengths)
    time_axis = 1 if xs.ndim == 3 else 0

    def norm(g):
        g = _select(g, part)
        sq = sum(jnp.sum(leaf * leaf, axis=-1) for leaf in jax.tree_util.tree_leaves(g))
        return jnp.sqrt(jnp.sum(sq, axis=0) if time_axis == 1 else sq)  # (T,)

    if model.bidirectional:
        return jnp.stack([jnp.stack([norm(f), norm(b)]) for f, b in grads])
    return jnp.stack([norm(g) for g in grads])


# --------------------------------------------------------------------------------------------
# ∂s_T/∂s_t: products of step Jacobians


def _flat_step(cell: Cell, params, carry_like):
    """The cell step as a map of flat state vectors ``(n,) -> (n,)`` (one unbatched sequence)."""
    _, unravel = ravel_pytree(carry_like)

    def f(s, xp_t):
        new, _ = cell.step(params, unravel(s), xp_t)
        return ravel_pytree(new)[0]

    return f


def _prepare_single(cell: Cell, params, xs, carry, name: str):
    """Validate; return ``(batched, xs, carry)`` with xs in the compute dtype."""
    check_cell(cell)
    cell.check_params(params)
    layout = check_sequence(xs, cell.input_size_of(params), name)
    dtype = compute_dtype(xs, params)
    carry = prepare_carry(cell, carry, layout.batch_shape, dtype)
    return layout.batched, xs.astype(dtype), carry


def _part_sizes(cell: Cell) -> list[int]:
    """The sizes of the carry's parts (``cell.carry_parts``), in flattening order."""
    return [leaf.size for leaf in jax.tree_util.tree_leaves(jax.eval_shape(cell.initial_carry))]


def _part_indices(cell: Cell, part: str) -> slice:
    """Where ``part`` sits in the flat state vector (the carry's parts concatenated)."""
    sizes = _part_sizes(cell)
    if part == "carry":
        return slice(0, sum(sizes))
    k = cell.carry_parts.index(part)
    return slice(sum(sizes[:k]), sum(sizes[: k + 1]))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _jacobian_norms_single(cell: Cell, params, xs, carry, part: str):
    xp = cell.project_inputs(params, xs)  # (T, G)
    f = _flat_step(cell, params, carry)
    s0, _ = ravel_pytree(carry)

    def forward(s, xp_t):
        return f(s, xp_t), s

    _, prev = jax.lax.scan(forward, s0, xp)  # (T, n): the state entering each step
    jacs = jax.vmap(jax.jacfwd(f))(prev, xp)  # (T, n, n): J[t] = ∂s_{t+1}/∂s_t

    def back(m, j_t):
        m = m @ j_t
        return m, m

    _, prods = jax.lax.scan(back, jnp.eye(s0.shape[0], dtype=s0.dtype), jacs, reverse=True)
    idx = _part_indices(cell, part)
    prods = prods[:, idx, idx]  # (T, k, k)
    return jnp.linalg.svd(prods, compute_uv=False)[:, 0]


def jacobian_norms(cell: Cell, params, xs, carry=None, *, part: str = "carry"):
    """The spectral norm ``‖∂s_T/∂s_t‖₂`` for ``t = 0, ..., T-1``.

    ``s_0`` is the initial carry and ``s_T`` the carry after the last step, so entry ``t`` is the
    norm of ``J_T ⋯ J_{t+1}`` (``T - t`` step Jacobians); for a linear vanilla cell it is
    ``‖w_h^(T-t)‖₂``. ``part`` picks the block of the Jacobian: ``"carry"`` (default) is the full
    state, ``(h, c)`` concatenated (``2H`` coordinates) for the LSTM; ``"h"`` is ``∂h_T/∂h_t`` and
    ``"c"`` is ``∂c_T/∂c_t`` (LSTM only), each the block of the full-state Jacobian, i.e. with the
    other part of ``s_t`` held fixed. Products of many Jacobians can over- or underflow: prefer
    float64 for long sequences.

    Index ``t`` counts the steps taken before ``s_t``: ``s_{t+1}`` is the state after reading
    ``xs[t]``, so ``jacobian_norms(...)[t + 1]`` concerns the state whose loss gradient is
    ``hidden_grad_norms(...)[..., t]`` (and entry 0 the initial carry).

    Args:
      cell, params: a cell and its params.
      xs: ``(T, D)``, or ``(B, T, D)`` batch-major.
      carry: initial carry (zeros when None), batch shape ``()`` or ``(B,)``.

    Returns:
      ``(T,)``, or ``(B, T)`` for batched ``xs``.
    """
    check_cell(cell)
    part = _check_part(part, cell)
    batched, xs, carry = _prepare_single(cell, params, xs, carry, "xs")
    run = jax.vmap(_jacobian_norms_single, (None, None, 0, 0, None)) if batched else _jacobian_norms_single
    return run(cell, params, xs, carry, part)


# --------------------------------------------------------------------------------------------
# Spectra of the recurrent weights


class Spectrum(NamedTuple):
    """Spectrum of one ``(H, H)`` recurrent block ``W`` (the map ``h ↦ h @ W``).

    ``eigenvalues (H,)`` complex, sorted by decreasing modulus; ``singular_values (H,)``
    decreasing; ``spectral_radius = max |λ|``; ``max_singular_value = ‖W‖₂``.
    """

    eigenvalues: Array
    singular_values: Array
    spectral_radius: Array
    max_singular_value: Array


def _blocks(w_h: Array) -> Array:
    """``(H, G·H) -> (G, H, H)``: the square gate blocks of a recurrent matrix."""
    H, GH = w_h.shape
    return jnp.moveaxis(w_h.reshape(H, GH // H, H), 1, 0)


def _spectral_radius(blocks: Array) -> Array:
    """``(..., H, H) -> (...)``: ``max |λ|`` of each block."""
    return jnp.max(jnp.abs(jnp.linalg.eigvals(blocks)), axis=-1)


def _spectrum(w: Array) -> Spectrum:
    eig = jnp.linalg.eigvals(w)
    eig = eig[jnp.argsort(-jnp.abs(eig))]
    sv = jnp.linalg.svd(w, compute_uv=False)
    return Spectrum(eig, sv, jnp.max(jnp.abs(eig)), sv[0])


def recurrent_spectrum(cell: Cell, params) -> dict[str, Spectrum]:
    """Eigenvalues and singular values of each gate block of ``params.w_h``.

    Returns a dict ``block name -> Spectrum`` in storage order: ``{"w_h"}`` for the vanilla cell,
    ``{"i", "f", "g", "o"}`` for the LSTM, ``{"r", "z", "n"}`` for the GRU (``GATES``). Block
    ``k`` is ``w_h[:, k·H:(k+1)·H]``, the recurrent matrix of that gate's pre-activation.
    """
    check_cell(cell)
    cell.check_params(params)
    w_h = getattr(params, "w_h", None)
    if w_h is None or w_h.shape[1] != len(cell.gate_names) * w_h.shape[0]:
        got = "no w_h" if w_h is None else f"w_h of shape {tuple(w_h.shape)}"
        fail("cell", "a cell whose recurrent weights are square gate blocks, w_h (H, G·H) (not a "
             "minGRU/minLSTM, which have none, nor an LSTM with proj_size)",
             f"{type(cell).__name__} with {got}")  # fmt: skip
    blocks = _blocks(w_h)
    return {name: _spectrum(blocks[k]) for k, name in enumerate(cell.gate_names)}


# --------------------------------------------------------------------------------------------
# Lyapunov exponents


@functools.partial(jax.jit, static_argnums=(0, 5))
def _lyapunov_single(cell: Cell, params, xs, carry, q0, burn_in: int):
    xp = cell.project_inputs(params, xs)  # (T, G)
    f = _flat_step(cell, params, carry)
    s0, _ = ravel_pytree(carry)

    def body(state, xp_t):
        s, q = state
        s_new, jvp = jax.linearize(lambda v: f(v, xp_t), s)
        jq = jax.vmap(jvp, in_axes=1, out_axes=1)(q)  # (n, k): J_t applied to the frame
        q, r = jnp.linalg.qr(jq)
        return (s_new, q), jnp.log(jnp.abs(jnp.diagonal(r)))

    _, logs = jax.lax.scan(body, (s0, q0), xp)  # (T, k)
    exponents = jnp.mean(logs[burn_in:], axis=0)
    return -jnp.sort(-exponents)


def lyapunov_exponents(cell: Cell, params, xs, k: int, carry=None, *, key=None, burn_in: int = 0):
    """The ``k`` largest Lyapunov exponents of the state trajectory driven by ``xs``, in nats
    per step, by the QR method (Benettin et al. 1980; Shimada & Nagashima 1979).

    An orthonormal frame ``Q_0`` (``n × k``, random from ``key``) is pushed through the step
    Jacobians and re-orthonormalized every step, ``J_t Q_{t-1} = Q_t R_t``; the exponents are the
    time averages of ``log |diag R_t|`` over the steps after ``burn_in``, sorted decreasing. The
    state is the full carry (``n = 2H`` for the LSTM, ``(h, c)``; ``n = H`` otherwise). With
    ``k = n`` their sum is the mean ``log |det J_t|``. A zero Jacobian direction (e.g. a dead
    ReLU unit) gives ``-inf``.

    Args:
      cell, params: a cell and its params.
      xs: ``(T, D)``, or ``(B, T, D)`` for one trajectory per sequence.
      k: how many exponents, ``1 <= k <= n``.
      carry: initial carry (zeros when None).
      key: a ``jax.random`` key for the initial frame (``PRNGKey(0)`` when None).
      burn_in: leading steps left out of the average (the frame still aligns during them).

    Returns:
      ``(k,)``, or ``(B, k)`` for batched ``xs``.
    """
    check_cell(cell)
    batched, xs, carry = _prepare_single(cell, params, xs, carry, "xs")
    n = sum(_part_sizes(cell))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        fail("k", f"an int in [1, {n}] (the state size of {type(cell).__name__})", repr(k))
    T = xs.shape[-2]
    check_int("burn_in", burn_in, 0, T - 1)
    key = jax.random.PRNGKey(0) if key is None else key
    q0, _ = jnp.linalg.qr(jax.random.normal(key, (n, int(k)), xs.dtype))
    in_axes = (None, None, 0, 0, None, None)
    run = jax.vmap(_lyapunov_single, in_axes) if batched else _lyapunov_single
    return run(cell, params, xs, carry, q0, int(burn_in))


# --------------------------------------------------------------------------------------------
# A recorder for training: an optax transformation that passes gradients through unchanged


class RecorderState(NamedTuple):
    """What ``gradient_recorder`` keeps: ring buffers of the last ``N = history`` updates.

    ``count`` () int32: updates seen so far; update ``i`` (0-based) is stored at row ``i % N``.
    ``grad_norm (N,)``: global L2 norm of the incoming gradients (before any clipping).
    ``clipped (N,)`` bool: ``not grad_norm < clip_norm``, exactly when
    ``optax.clip_by_global_norm(clip_norm)`` rescales (always False without a ``clip_norm``).
    ``spectral_radius (N, M)``: ``max |λ|`` of each of the ``M`` square blocks of every ``w_h``
    leaf of the params the gradients were taken at (``recorder_labels`` names them).
    Rows not yet written hold NaN (``clipped``: False).
    """

    count: Array
    grad_norm: Array
    clipped: Array
    spectral_radius: Array


class Record(NamedTuple):
    """The recorded updates in chronological order (NumPy arrays, the last ``min(count, N)``):
    ``step (n,)`` update index, ``grad_norm (n,)``, ``clipped (n,)``, ``spectral_radius (n, M)``."""

    step: np.ndarray
    grad_norm: np.ndarray
    clipped: np.ndarray
    spectral_radius: np.ndarray


def _recurrent_leaves(params) -> list[tuple[str, Array]]:
    """``(path, w_h)`` for every 2-D leaf reached through a field named ``w_h``."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    found = []
    for path, leaf in leaves:
        last = path[-1] if path else None
        if isinstance(last, jax.tree_util.GetAttrKey) and last.name == "w_h" and jnp.ndim(leaf) == 2:
            H, GH = jnp.shape(leaf)
            if GH % H == 0:
                found.append((jax.tree_util.keystr(path), leaf))
    return found


def recorder_labels(params) -> list[str]:
    """Names of the ``M`` columns of ``RecorderState.spectral_radius`` for these params, e.g.
    ``"layers[0].w_h:f"`` or ``"layers[1][1].w_h:z"`` (bidirectional layer 1, backward)."""
    labels = []
    for path, w in _recurrent_leaves(params):
        H, GH = jnp.shape(w)
        names = _BLOCK_NAMES.get(GH // H) or tuple(str(k) for k in range(GH // H))
        labels.extend(f"{path.lstrip('.')}:{name}" for name in names)
    return labels


def _all_radii(params, dtype) -> Array:
    radii = [_spectral_radius(_blocks(w)) for _, w in _recurrent_leaves(params)]
    return jnp.concatenate(radii).astype(dtype) if radii else jnp.zeros((0,), dtype)


def gradient_recorder(clip_norm: float | None = None, *, history: int = 1000, spectral_radius: bool = True):
    """An optax transformation that logs, per update, the global gradient norm, whether clipping
    at ``clip_norm`` fired, and the spectral radius of every recurrent weight block, into its
    state; the gradients pass through unchanged.

    Put it first in the chain, so that it sees the raw gradients and the clip decision matches
    ``optax.clip_by_global_norm`` (or ``jrnn.optim.make_optimizer(..., clip_norm=...)``) after it::

        tx = optax.chain(gradient_recorder(clip_norm=1.0, history=500),
                         jrnn.optim.make_optimizer("sgd", 0.1, clip_norm=1.0))
        opt_state = tx.init(params)
        updates, opt_state = tx.update(grads, opt_state, params)   # params needed for the radius
        ...                                      # after a jitted loop of any length:
        rec = recorded(recorder_state(opt_state))  # rec.grad_norm, rec.clipped, ...

    Everything lives in fixed-size arrays (ring buffers of ``history`` rows, see
    ``RecorderState``), so it works under ``jit``, ``lax.scan`` and ``fori_loop``.

    Args:
      clip_norm: the clipping threshold to test against (None: never counted as clipped).
      history: rows of the ring buffers (the last ``history`` updates are kept).
      spectral_radius: log ``max |λ|`` of the recurrent blocks; needs ``params`` in ``update``
        (set False to record without params, then ``M = 0``).

    Returns:
      an ``optax.GradientTransformationExtraArgs`` with state ``RecorderState``.
    """
    check_int("history", history)
    check_float("clip_norm", clip_norm, 0.0, low_open=True, allow_none=True)
    N = int(history)

    def init_fn(params):
        leaves = jax.tree_util.tree_leaves(params)
        dtype = jnp.result_type(*leaves, jnp.float32) if leaves else jnp.float32
        M = len(recorder_labels(params)) if spectral_radius else 0
        return RecorderState(
            count=jnp.zeros((), jnp.int32),
            grad_norm=jnp.full((N,), jnp.nan, dtype),
            clipped=jnp.zeros((N,), bool),
            spectral_radius=jnp.full((N, M), jnp.nan, dtype),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        dtype = state.grad_norm.dtype
        g_norm = optax.tree.norm(updates)
        clipped = jnp.bool_(False) if clip_norm is None else jnp.logical_not(g_norm < clip_norm)
        row = state.count % N
        radii = state.spectral_radius[row]
        if state.spectral_radius.shape[1]:
            if params is None:
                raise ValueError(
                    "gradient_recorder(spectral_radius=True) needs the params: call "
                    "update(grads, opt_state, params), or pass spectral_radius=False"
                )
            radii = _all_radii(params, dtype)
        new = RecorderState(
            count=state.count + 1,
            grad_norm=state.grad_norm.at[row].set(g_norm.astype(dtype)),
            clipped=state.clipped.at[row].set(clipped),
            spectral_radius=state.spectral_radius.at[row].set(radii),
        )
        return updates, new

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def recorder_state(opt_state) -> RecorderState:
    """The (first) ``RecorderState`` inside an optimizer state, however deeply chained."""
    found = [
        s
        for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, RecorderState))
        if isinstance(s, RecorderState)
    ]
    if not found:
        raise ValueError("opt_state must hold a RecorderState (gradient_recorder in the chain), got none")
    return found[0]


def recorded(state: RecorderState) -> Record:
    """The updates kept in ``state``, oldest first, as NumPy arrays (host side, not jittable)."""
    if not isinstance(state, RecorderState):
        state = recorder_state(state)
    count = int(state.count)
    N = state.grad_norm.shape[0]
    steps = np.arange(max(count - N, 0), count)
    rows = steps % N
    return Record(
        step=steps,
        grad_norm=np.asarray(state.grad_norm)[rows],
        clipped=np.asarray(state.clipped)[rows],
        spectral_radius=np.asarray(state.spectral_radius)[rows],
    )
