"""``backward="pallas"``: one recurrent layer as two fused Pallas kernels, forward and backward.

The forward kernel runs every step of the sequence in one launch: it loads the recurrent
parameters (every field but ``w_x``) once, keeps them on chip across steps when they fit (see
below), and per step reads the
projected input ``xp_t`` (``xs @ w_x + b``, one GEMM for all steps before the kernel), calls the
cell's own ``forward_step`` (the gate maths written once, in ``jrnn/cells``) and writes the carry
after the step and the step's residuals. The backward kernel is the reverse loop of the
hand-written BPTT (``jrnn.scan``'s fast backward, section 4 of the design): per step the cell's
``backward_step`` from the cotangent of the carry to the pre-activation gradients ``d_pre`` and the
carry's cotangent before the step. After it the weight gradients and the input gradient are single
GEMMs over ``T·B`` rows (``cell.param_grads``, ``cell.input_grads``). The two kernels are tied
together by a ``jax.custom_vjp``: reverse mode only, like ``backward="bptt"``.

Each kernel runs as a grid over blocks of ``BATCH_BLOCK`` sequences (independent, so the
instances can run on separate multiprocessors); each instance loops over all ``T`` steps.

Shapes (time-major): ``xp (T, B, G)``, carries ``(B, ·)`` per leaf, the stored carries and
residuals ``(T, B, ·)``. A padded step (``t >= lengths[b]``) keeps the carry (the stored carry is
the one carried through) and gets no gradient; ``reverse`` visits ``T-1, ..., 0``, so each sequence
is read backwards from its own last valid step, as ``unroll`` defines.

Cells: ``VanillaCell`` (any activation), ``LSTMCell`` and ``GRUCell`` without options; a ``(T, B)``
mask and ``remat`` are refused. Any float dtype (the cell's maths runs in the layer's dtype, as
``unroll``'s does). The steps are the cells' own ``forward_step`` / ``backward_step``, except the
LSTM's, a line-for-line copy that keeps its four gate blocks apart (Triton's lowering cannot
concatenate them); the tests hold it equal to the cell.

Where it runs: on a GPU the kernels compile through Pallas' Triton backend (its refs stay in the
GPU's memory; each step loads and stores its own rows). Triton needs power-of-2 array sizes: the
batch and hidden sizes must be powers of 2, and a GRU (gate width ``3H``) runs in the interpreter
only; this is checked before lowering. Recurrent parameters up to ``HOLD_MAX_BYTES`` are held in
registers across steps, larger ones re-read each step from the caches. Anywhere, the same kernels
run in Pallas' interpreter when the environment variable ``JRNN_PALLAS_INTERPRET`` is ``1`` when
the layer is traced (slow: for tests, and for checking the kernels on a CPU). Without a GPU and
without it, the layer raises a ``ValueError`` saying so.

Status: outputs and gradients are tested in the interpreter (float32 and float64, against
``unroll`` with autodiff and the hand-written BPTT), and both kernels are lowered to Triton for
CUDA in the tests (``jax.export``, no GPU needed). They have not yet been compiled to GPU code
or run on a GPU, and no GPU time has been measured.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from jrnn._checks import fail
from jrnn.cells.gru import GRUCell
from jrnn.cells.lstm import LSTMCarry, LSTMCell
from jrnn.cells.vanilla import VanillaCell
from jrnn.kernels._common import check_common, compute_dtype, full_lengths, on_gpu, valid_steps

Array = jax.Array

INTERPRET_ENV = "JRNN_PALLAS_INTERPRET"
"""Set to ``1``: run the kernels in Pallas' interpreter (any backend)."""

CELLS = (VanillaCell, LSTMCell, GRUCell)
"""The cells the fused kernels run (without options)."""

_flatten = jax.tree_util.tree_flatten
_unflatten = jax.tree_util.tree_unflatten
_leaves = jax.tree_util.tree_leaves


def interpret_default() -> bool:
    """Whether ``JRNN_PALLAS_INTERPRET`` asks for Pallas' interpreter."""
    return os.environ.get(INTERPRET_ENV, "").strip() not in ("", "0")


def check_pallas(cell, lengths, remat: bool, interpret: bool) -> None:
    """ValueError unless the fused kernels can run this layer (module docstring)."""
    check_common("pallas", cell, lengths, remat, CELLS)
    if not interpret and not on_gpu():
        fail("backward='pallas'", f"run on a GPU (its kernels compile for GPUs; {INTERPRET_ENV}=1 runs them "
             "in Pallas' interpreter on any backend, slowly)", f"JAX backend {jax.default_backend()!r}")  # fmt: skip


HOLD_MAX_BYTES = 64 << 10
"""The kernels load the recurrent parameters once and hold them on chip (registers) across steps
while they take at most this many bytes (``w_h`` of an LSTM with ``H = 64`` in float32); larger
ones are read again at every step, from the GPU's caches. A guess, not yet tuned on a GPU."""


def _hold(p_leaves) -> bool:
    return sum(a.size * a.dtype.itemsize for a in p_leaves) <= HOLD_MAX_BYTES


def _is_power_of_2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def check_triton(cell, batch_size: int, dtype) -> None:
    """ValueError unless Pallas' Triton lowering can compile the kernels: it needs every array a
    kernel touches to have a power-of-2 size, so the batch and hidden sizes must be powers of 2,
    and a GRU (gate width 3H) never qualifies; a float64 matrix product needs 16 rows and columns."""
    if isinstance(cell, GRUCell):
        fail("the cell for backward='pallas' on a GPU", "a VanillaCell or LSTMCell (a GRU's gate width 3H is "
             f"never a power of 2, which Pallas' Triton lowering needs; {INTERPRET_ENV}=1 runs it in the "
             "interpreter)", "GRUCell")  # fmt: skip
    for name, n in (("batch size", batch_size), ("hidden_size", cell.hidden_size)):
        if not _is_power_of_2(n):
            fail(f"the {name} for backward='pallas' on a GPU", "a power of 2 (Pallas' Triton lowering needs "
                 f"power-of-2 array sizes; {INTERPRET_ENV}=1 runs any size in the interpreter)", n)  # fmt: skip
        if jnp.dtype(dtype) == jnp.float64 and n < 16:
            fail(f"the {name} for backward='pallas' on a GPU in float64", "at least 16 (Triton's float64 "
                 "matrix product)", n)  # fmt: skip


def _compiler_params(interpret: bool):
    """Pallas' Triton backend on a GPU: its refs stay in the GPU's memory and each step loads and
    stores its own rows (the Mosaic GPU backend would stage whole sequences in shared memory)."""
    if interpret:
        return None
    from jax.experimental.pallas import triton as pl_triton

    return pl_triton.CompilerParams(num_warps=4, num_stages=1)


def _lstm_forward_step(params, carry_tm1, xp_t):
    """``LSTMCell.forward_step`` without options, line for line, but with the gate activations
    kept as four ``(B, H)`` residuals: Pallas' Triton lowering concatenates nothing wider than
    ``(..., 1)``. The tests hold the two equal."""
    h_tm1, c_tm1 = carry_tm1
    a = xp_t + h_tm1 @ params.w_h  # (B, 4H) pre-activations
    a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(a_i), jax.nn.sigmoid(a_f), jnp.tanh(a_g), jax.nn.sigmoid(a_o)
    c = f * c_tm1 + i * g
    h = o * jnp.tanh(c)
    return LSTMCarry(h, c), (i, f, g, o)


def _lstm_backward_step(params, gates, carry_tm1, carry, d_carry):
    """``LSTMCell.backward_step`` without options, line for line, with ``d_a`` as four blocks."""
    i, f, g, o = gates
    d_h, d_c = d_carry
    tanh_c = jnp.tanh(carry.c)
    d_c = d_c + d_h * o * (1.0 - tanh_c * tanh_c)  # h = o * tanh(c): backprop into c
    d_a = (
        d_c * g * i * (1.0 - i),  # c = ... + i * g,  i = σ(a_i)
        d_c * carry_tm1.c * f * (1.0 - f),  # c = f * c_tm1 + ...,  f = σ(a_f)
        d_c * i * (1.0 - g * g),  # c = ... + i * g,  g = tanh(a_g)
        d_h * tanh_c * o * (1.0 - o),  # h = o * tanh(c),  o = σ(a_o)
    )
    w_blocks = jnp.split(params.w_h, 4, axis=-1)  # (H, H) each
    d_h_tm1 = sum(d @ w.T for d, w in zip(d_a, w_blocks))  # a = xp + h_tm1 @ w_h: backprop into h
    return d_a, LSTMCarry(d_h_tm1, d_c * f)  # c = f * c_tm1 + ...: backprop into c_tm1


def _lstm_pre(d_a):
    return jnp.concatenate(d_a, axis=-1)  # (T, B, 4H), the cell's d_pre, outside the kernel


def _steps(cell):
    """``(forward_step, backward_step, to_cell_pre)`` for the kernels: the cell's own step pair,
    but for the LSTM the Triton-friendly copy above, whose ``d_pre`` ``to_cell_pre`` turns into
    the cell's layout for ``param_grads``."""
    if isinstance(cell, LSTMCell):
        return _lstm_forward_step, _lstm_backward_step, _lstm_pre
    return cell.forward_step, cell.backward_step, lambda d_pre: d_pre


BATCH_BLOCK = 16
"""Rows of the batch one kernel instance runs: each kernel launches ``B / BATCH_BLOCK`` instances
(a grid over the batch; independent sequences, so each can run on its own multiprocessor)."""


def _batch_block(batch_size: int) -> int:
    """The rows per instance: ``BATCH_BLOCK`` or fewer, dividing the batch."""
    rows = min(batch_size, BATCH_BLOCK)
    while batch_size % rows:
        rows -= 1
    return rows


def _call(kernel, args, arg_axes, out_shape, out_axes, batch_size, interpret):
    """``pallas_call`` over a grid of batch blocks: each array is cut along its batch axis
    (``arg_axes`` / ``out_axes``: the axis, or None for the parameters, which every instance
    reads whole)."""
    from jax.experimental import pallas as pl

    rows = _batch_block(batch_size)

    def spec(shape, axis):
        block = tuple(rows if k == axis else d for k, d in enumerate(shape))
        return pl.BlockSpec(block, lambda b: tuple(b if k == axis else 0 for k in range(len(shape))))

    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(batch_size // rows,),
        in_specs=[spec(a.shape, ax) for a, ax in zip(args, arg_axes)],
        out_specs=[spec(o.shape, ax) for o, ax in zip(out_shape, out_axes)],
        interpret=interpret,
        compiler_params=_compiler_params(interpret),
    )(*args)


def _kernel_params(params):
    """The fields the kernels read: every one but ``w_x`` (its GEMM runs outside)."""
    return params._replace(w_x=None)


def _forward(cell, params, xs, carry0, lengths, reverse, interpret, keep):
    """The forward kernel: ``(states, residuals)``, the carry after every step ``(T, B, ·)`` per
    leaf and, when ``keep``, the step residuals ``(T, B, ·)`` per leaf (else None)."""

    xp = cell.project_inputs(params, xs)  # (T, B, G): one GEMM for every step
    T = xp.shape[0]
    kp = _kernel_params(params)
    p_leaves, p_def = _flatten(kp)
    c_leaves, c_def = _flatten(carry0)
    forward_step = _steps(cell)[0]
    res_shapes = jax.eval_shape(lambda p, c, x: forward_step(p, c, x)[1], kp, carry0, xp[0])
    r_shapes, r_def = _flatten(res_shapes)
    nP, nC = len(p_leaves), len(c_leaves)
    hold = _hold(p_leaves)
    seq = lambda a: jax.ShapeDtypeStruct((T, *a.shape), a.dtype)  # noqa: E731
    out_shape = [seq(c) for c in c_leaves] + ([seq(r) for r in r_shapes] if keep else [])

    def kernel(xp_ref, n_ref, *refs):
        p_refs, c0_refs, s_refs, r_refs = refs[:nP], refs[nP : nP + nC], refs[nP + nC : nP + 2 * nC], refs[nP + 2 * nC :]
        held = _unflatten(p_def, [r[...] for r in p_refs]) if hold else None  # on chip for every step
        n = n_ref[...]  # (rows, 1): this instance's block of the batch

        def body(s, carry):
            t = T - 1 - s if reverse else s
            p = held if hold else _unflatten(p_def, [r[...] for r in p_refs])  # read again (from cache)
            new, res = forward_step(p, _unflatten(c_def, carry), xp_ref[t])
            m = t < n  # (B, 1): the step runs
            new = [jnp.where(m, a, b) for a, b in zip(_leaves(new), carry)]  # a padded step keeps the carry
            for ref, a in zip(s_refs, new):
                ref[t] = a
            for ref, a in zip(r_refs, _leaves(res)):
                ref[t] = a
            return new

        jax.lax.fori_loop(0, T, body, [r[...] for r in c0_refs])

    args = [xp, lengths[:, None], *p_leaves, *c_leaves]
    arg_axes = [1, 0] + [None] * nP + [0] * nC
    outs = _call(kernel, args, arg_axes, out_shape, [1] * len(out_shape), xp.shape[1], interpret)
    states = _unflatten(c_def, outs[:nC])
    return states, (_unflatten(r_def, outs[nC:]) if keep else None)


def _backward(cell, params, residuals, states, carry0, d_states, lengths, reverse, interpret):
    """The backward kernel: ``(d_pre, d_carry0)``, the pre-activation gradients ``(T, B, ·)``
    (zero at padded steps) and the cotangent of the initial carry."""

    kp = _kernel_params(params)
    p_leaves, p_def = _flatten(kp)
    r_leaves, r_def = _flatten(residuals)
    s_leaves, c_def = _flatten(states)
    c0_leaves = _leaves(carry0)
    ds_leaves = _leaves(d_states)
    T = s_leaves[0].shape[0]
    one = lambda leaves: [jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in leaves]  # noqa: E731
    backward_step = _steps(cell)[1]
    pre_shapes = jax.eval_shape(
        lambda p, r, c: backward_step(p, _unflatten(r_def, r), c, c, c)[0], kp, one(r_leaves), carry0
    )
    pre_leaves, pre_def = _flatten(pre_shapes)
    nP, nR, nC, nD = len(p_leaves), len(r_leaves), len(s_leaves), len(pre_leaves)
    hold = _hold(p_leaves)
    out_shape = [jax.ShapeDtypeStruct((T, *a.shape), a.dtype) for a in pre_leaves]
    out_shape += [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in c0_leaves]

    def kernel(n_ref, *refs):
        at = 0
        groups = []
        for size in (nP, nR, nC, nC, nC, nD, nC):  # params, residuals, states, carry0, d_states, d_pre, d_carry0
            groups.append(refs[at : at + size])
            at += size
        p_refs, r_refs, s_refs, c0_refs, ds_refs, dpre_refs, dc0_refs = groups
        held = _unflatten(p_def, [r[...] for r in p_refs]) if hold else None
        c0 = [r[...] for r in c0_refs]
        n = n_ref[...]  # (rows, 1): this instance's block of the batch

        def body(s, d_carry):
            p = held if hold else _unflatten(p_def, [r[...] for r in p_refs])
            t = s if reverse else T - 1 - s  # against the forward
            t_prev = t + 1 if reverse else t - 1  # the step the forward ran before t
            has = (t_prev >= 0) & (t_prev <= T - 1)
            t_read = jnp.clip(t_prev, 0, T - 1)
            carry_tm1 = [jnp.where(has, ref[t_read], c) for ref, c in zip(s_refs, c0)]
            carry_t = [ref[t] for ref in s_refs]
            d_new = [d + ref[t] for d, ref in zip(d_carry, ds_refs)]  # the stored carry's own cotangent joins
            res = _unflatten(r_def, [ref[t] for ref in r_refs])
            d_pre, d_tm1 = backward_step(
                p, res, _unflatten(c_def, carry_tm1), _unflatten(c_def, carry_t), _unflatten(c_def, d_new)
            )
            m = t < n  # (B, 1)
            for ref, a in zip(dpre_refs, _leaves(d_pre)):
                ref[t] = jnp.where(m, a, jnp.zeros_like(a))  # a padded step: no gradient in
            return [jnp.where(m, a, b) for a, b in zip(_leaves(d_tm1), d_new)]  # padded: carry_t = carry_tm1

        d0 = jax.lax.fori_loop(0, T, body, [jnp.zeros_like(c) for c in c0])
        for ref, a in zip(dc0_refs, d0):
            ref[...] = a

    args = [lengths[:, None], *p_leaves, *r_leaves, *s_leaves, *c0_leaves, *ds_leaves]
    arg_axes = [0] + [None] * nP + [1] * nR + [1] * nC + [0] * nC + [1] * nC
    outs = _call(kernel, args, arg_axes, out_shape, [1] * nD + [0] * nC, lengths.shape[0], interpret)
    return _unflatten(pre_def, outs[:nD]), _unflatten(c_def, outs[nD:])


def _entering_h(cell, states, carry0, reverse):
    """``h_{t-1}``: the output part of the carry entering each step ``(T, B, H)``."""
    hs, h0 = cell.output(states), cell.output(carry0)
    if reverse:
        return jnp.concatenate([hs[1:], h0[None]], axis=0)
    return jnp.concatenate([h0[None], hs[:-1]], axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5, 6))
def _fused(cell, params, xs, carry0, lengths, reverse, interpret):
    return _forward(cell, params, xs, carry0, lengths, reverse, interpret, keep=False)[0]


def _fused_fwd(cell, params, xs, carry0, lengths, reverse, interpret):
    states, residuals = _forward(cell, params, xs, carry0, lengths, reverse, interpret, keep=True)
    return states, (params, xs, carry0, lengths, states, residuals)


def _fused_bwd(cell, reverse, interpret, saved, d_states):
    params, xs, carry0, lengths, states, residuals = saved
    d_pre, d_carry0 = _backward(cell, params, residuals, states, carry0, d_states, lengths, reverse, interpret)
    d_pre = _steps(cell)[2](d_pre)
    d_params = cell.param_grads(params, xs, _entering_h(cell, states, carry0, reverse), d_pre)  # GEMMs over T·B
    d_params = jax.tree_util.tree_map(lambda d, p: d.astype(p.dtype), d_params, params)
    d_xs = cell.input_grads(params, d_pre).astype(xs.dtype)
    return d_params, d_xs, d_carry0, None  # lengths are integers: no cotangent


_fused.defvjp(_fused_fwd, _fused_bwd)


def scan_pallas(cell, params, xs, carry, lengths, *, reverse=False, unroll=1, remat=False, interpret=None):
    """One layer by the fused Pallas kernels (time-major, validated inputs): ``(carry_T, ys)``,
    the values of ``jrnn.scan.scan_autodiff`` and, in reverse mode, the gradients of the
    hand-written backward. ``interpret`` None reads ``JRNN_PALLAS_INTERPRET``; ``unroll`` does
    not apply (the kernel's loop is not unrolled)."""
    interpret = interpret_default() if interpret is None else bool(interpret)
    check_pallas(cell, lengths, remat, interpret)
    dtype = compute_dtype(xs, params)
    if not interpret:
        check_triton(cell, xs.shape[1], dtype)
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    xs = xs.astype(dtype)
    T, B = xs.shape[:2]
    n = full_lengths(lengths, T, B)
    states = _fused(cell, params, xs, carry, n, bool(reverse), interpret)
    h = cell.output(states)
    ys = jnp.where(valid_steps(n, T)[..., None], h, jnp.zeros_like(h))
    last = 0 if reverse else T - 1  # the carry after the last processed step
    carry_T = jax.tree_util.tree_map(lambda a: a[last], states)
    return carry_T, ys
