"""``unroll``: one recurrent layer over a sequence with ``jax.lax.scan``.

A short sequence gets the input projection of every step as one matrix product before the loop
(``(T, B, D) @ (D, G)``), so the scan body does only the recurrent product and the gate
arithmetic; a longer one projects each step's input inside the loop instead (``HOIST_MAX_BYTES``:
under autodiff a hoisted projection is stored with its stacked cotangent, and past cache size
that memory traffic costs more than the per-step product saves). With ``seq_lengths`` a
step at or past a sequence's length leaves its carry unchanged and outputs zeros; with
``reverse=True`` the scan runs from the last position down, so each sequence is read backwards
from its own last valid step (PyTorch's packed-sequence semantics) and outputs stay aligned with
input positions.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jrnn.cells import Cell

Array = jax.Array

BACKWARDS = ("autodiff", "bptt")

HOIST_MAX_BYTES = 1 << 20
"""``scan_autodiff`` hoists the input projection out of the loop only while the projected
sequence ``(T, B, G)`` takes at most this many bytes (about a core's L2 cache). Measured on a
2-core CPU (``benchmarks/NOTES.md``, section 8): projecting inside the loop made an LSTM's
training gradient 1.2-2.2x faster and its inference 1.8-1.9x faster at (B, T, D, H) =
(32, 100, 32, 128), (64, 200, 64, 256), (128, 50, 128, 512); at tiny latency-bound steps such
as (1, 1000, 1, 32), which stay hoisted, the two were equal."""


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_cell(cell: Any) -> None:
    if not isinstance(cell, Cell):
        raise TypeError(
            f"cell must be a jrnn cell (VanillaCell, LSTMCell or GRUCell), got {type(cell).__name__}"
        )


def check_options(*, backward: str, unroll: Any) -> None:
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {list(BACKWARDS)}, got {backward!r}")
    if isinstance(unroll, bool) or not isinstance(unroll, (int, np.integer)) or unroll < 1:
        raise ValueError(f"unroll must be a positive int, got {unroll!r}")


def check_sequence(xs: Any, input_size: int, argument: str = "xs", *, time_major: bool = False):
    """Validate a sequence ``(B, T, D)`` / ``(T, B, D)`` / unbatched ``(T, D)``; return its ndim."""
    shape = getattr(xs, "shape", None)
    layout = "(T, B, D)" if time_major else "(B, T, D)"
    if shape is None or len(shape) not in (2, 3):
        raise ValueError(f"{argument} must be {layout} or unbatched (T, D), got shape {shape}")
    if shape[-1] != input_size:
        raise ValueError(
            f"{argument} must have input_size {input_size} in its last axis, got shape {tuple(shape)}"
        )
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"{argument} must be floating point, got dtype {xs.dtype}")
    if shape[-2 if len(shape) == 2 else (0 if time_major else 1)] == 0:
        raise ValueError(f"{argument} must have at least one time step, got shape {tuple(shape)}")
    return len(shape)


def check_seq_lengths(seq_lengths: Any, batch_size: int | None, num_steps: int):
    """Validate ``seq_lengths`` (``(B,)`` ints in ``[0, T]``; a scalar when unbatched)."""
    if seq_lengths is None:
        return None
    expected = () if batch_size is None else (batch_size,)
    shape = getattr(seq_lengths, "shape", None)
    if shape is None:
        seq_lengths = np.asarray(seq_lengths)
        shape = seq_lengths.shape
    if tuple(shape) != expected:
        raise ValueError(f"seq_lengths must have shape {expected} (one length per sequence), got {tuple(shape)}")
    if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
        raise TypeError(f"seq_lengths must be integers, got dtype {seq_lengths.dtype}")
    if _is_concrete(seq_lengths):
        values = np.asarray(seq_lengths)
        if values.size and (values.min() < 0 or values.max() > num_steps):
            raise ValueError(
                f"seq_lengths must lie in [0, {num_steps}] (the number of time steps), "
                f"got values in [{values.min()}, {values.max()}]"
            )
    return jnp.asarray(seq_lengths, jnp.int32).reshape(-1)


def compute_dtype(xs, params):
    return jnp.result_type(xs.dtype, params.w_h.dtype)


def prepare_carry(cell: Cell, carry, batch_shape, dtype, argument: str = "carry"):
    """Zeros when ``carry`` is None; otherwise validate it and cast it to the compute dtype."""
    if carry is None:
        return cell.initial_carry(batch_shape, dtype)
    cell.check_carry(carry, batch_shape, argument)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), carry)


def step_mask(lengths: Array, num_steps: int) -> Array:
    """``(T, B)`` booleans: True where step t is inside sequence b."""
    return jnp.arange(num_steps)[:, None] < lengths[None, :]


def scan_autodiff(cell: Cell, params, xs: Array, carry, lengths, *, reverse=False, unroll=1, remat=False):
    """The scan itself, time-major and already validated: ``xs (T, B, D)``, ``lengths (B,)|None``.

    Returns ``(carry_T, ys (T, B, H))``; differentiated by JAX autodiff.
    """
    T, B = xs.shape[:2]
    if T * B * cell.gate_size * jnp.dtype(xs.dtype).itemsize <= HOIST_MAX_BYTES:
        xs = cell.project_inputs(params, xs)  # (T, B, G): one GEMM for all steps

        def project(x_t):
            return x_t

    else:

        def project(x_t):
            return cell.project_inputs(params, x_t)  # (B, G), inside the loop

    if lengths is None:

        def body(carry, x_t):
            return cell.step(params, carry, project(x_t))

        seq = xs
    else:

        def body(carry, inputs):
            x_t, m_t = inputs
            new, y = cell.step(params, carry, project(x_t))
            m = m_t[:, None]
            new = jax.tree_util.tree_map(lambda a, b: jnp.where(m, a, b), new, carry)
            return new, jnp.where(m, y, jnp.zeros_like(y))

        seq = (xs, step_mask(lengths, T))

    if remat:
        body = jax.checkpoint(body)
    return jax.lax.scan(body, carry, seq, reverse=reverse, unroll=unroll)


def scan_layer(cell, params, xs, carry, lengths, *, reverse=False, unroll=1, remat=False, backward="autodiff"):
    """Dispatch to the chosen backward implementation (time-major, validated inputs)."""
    if backward == "bptt":
        from jrnn import bptt  # the hand-written backward, wired through jax.custom_vjp

        return bptt.scan_layer(cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll, remat=remat)
    return scan_autodiff(cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll, remat=remat)


def unroll(
    cell: Cell,
    params,
    xs: Array,
    carry=None,
    *,
    seq_lengths=None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int = 1,
    remat: bool = False,
    backward: str = "autodiff",
):
    """Run ``cell`` over a sequence.

    Args:
      cell: a ``VanillaCell``, ``LSTMCell`` or ``GRUCell``.
      params: the cell's params NamedTuple.
      xs: ``(B, T, D)`` (``(T, B, D)`` with ``time_major=True``) or unbatched ``(T, D)``.
      carry: initial carry (zeros when None), batch shape ``(B,)`` (``()`` when unbatched).
      seq_lengths: ``(B,)`` ints; steps ``t >= seq_lengths[b]`` leave the carry unchanged and give
        zero outputs, so ``carry_T`` is each sequence's carry after its last valid step.
      reverse: run from the last valid step back to the first (outputs stay aligned with inputs).
      time_major: ``xs`` and ``ys`` are ``(T, B, ·)``.
      unroll: steps per scan iteration (``lax.scan``'s ``unroll``).
      remat: recompute each step in the backward pass instead of storing its intermediates.
      backward: ``"autodiff"`` (JAX) or ``"bptt"`` (the hand-written backward of ``jrnn.bptt``).

    Returns:
      ``(carry_T, ys)`` with ``ys`` laid out like ``xs`` and ``H`` features.
    """
    check_cell(cell)
    check_options(backward=backward, unroll=unroll)
    cell.check_params(params)
    ndim = check_sequence(xs, cell.input_size_of(params), time_major=time_major)
    batched = ndim == 3
    B = (xs.shape[1] if time_major else xs.shape[0]) if batched else 1
    T = xs.shape[0 if (time_major or not batched) else 1]
    lengths = check_seq_lengths(seq_lengths, B if batched else None, T)
    if carry is not None:
        carry = prepare_carry(cell, carry, (B,) if batched else (), compute_dtype(xs, params))
    return _unroll(
        cell, params, xs, carry, lengths,
        batched=batched, reverse=reverse, time_major=time_major, unroll=unroll, remat=remat, backward=backward,
    )


@functools.partial(
    jax.jit, static_argnames=("cell", "batched", "reverse", "time_major", "unroll", "remat", "backward")
)
def _unroll(cell, params, xs, carry, lengths, *, batched, reverse, time_major, unroll, remat, backward):
    """``unroll`` after validation, compiled once per spec and shape (also when called eagerly)."""
    if not batched:
        xs = xs[:, None, :]  # (T, 1, D)
    elif not time_major:
        xs = jnp.swapaxes(xs, 0, 1)  # (B, T, D) -> (T, B, D)
    B = xs.shape[1]
    if carry is None:
        carry = cell.initial_carry((B,), compute_dtype(xs, params))
    elif not batched:
        carry = jax.tree_util.tree_map(lambda a: a[None], carry)

    carry_T, ys = scan_layer(
        cell, params, xs, carry, lengths, reverse=reverse, unroll=unroll, remat=remat, backward=backward
    )

    if not batched:
        return jax.tree_util.tree_map(lambda a: a[0], carry_T), ys[:, 0]
    if not time_major:
        ys = jnp.swapaxes(ys, 0, 1)
    return carry_T, ys
