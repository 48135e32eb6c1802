"""The plain LSTM's and GRU's recurrent loops of ``backward="bptt"`` run natively on a CPU.

XLA runs a small step's recurrent product on one thread and its gate arithmetic as a row of
separate fusions (``benchmarks/NOTES.md``, section 13), which no arrangement of the loops within
XLA overcame for the LSTM at small batch. ``lstm.cc`` (next to this file) writes the two loops of
``jrnn.scan`` for the plain LSTM and the plain GRU as XLA FFI handlers: each step's product split
by hidden units over XLA's intra-op threads, the gates computed on the product's tile (sections 15
and 16). They do the maths of ``LSTMCell.forward_step`` / ``backward_step`` (and ``GRUCell``'s)
inside ``jrnn.scan``'s ``lax.scan`` loops (with their own vectorized ``exp``; float64 results agree
to about 1e-15), which stay the reference and the path on every other device, cell, option and
dtype.

``pip install`` compiles the library (``setup.py``: AVX2 and FMA, checked before use); without a
C++17 compiler the install goes on without it and ``available()`` is False. ``jrnn.scan`` uses it
on a CPU for an ``LSTMCell`` without options or a ``GRUCell`` with its defaults (the reset gate
after the product, no layer norm) in float32 (hidden size a multiple of 16) or float64 (a multiple
of 8), with no mask (``lengths``), no truncation and no recurrent dropout
(``applies``). The environment variable ``JRNN_NATIVE=0``, read when a layer is traced, turns it
off; ``JRNN_NATIVE_THREADS=N`` caps the threads a call uses (default: XLA's intra-op threads).
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import jax
import numpy as np

from jrnn._checks import fail
from jrnn.cells.gru import GRUCell
from jrnn.cells.lstm import LSTMCell

LIBRARY = "liblstm_cpu.so.1"
"""The compiled library next to this file (``setup.py`` names it: not an importable module)."""

HIDDEN_MULTIPLE = {np.dtype(np.float32): 16, np.dtype(np.float64): 8}
"""The dtypes the loops take, and the multiple their hidden size must be (two vectors of units)."""

_TARGETS = {
    "jrnn_lstm_forward": "JrnnLstmForward",
    "jrnn_lstm_backward": "JrnnLstmBackward",
    "jrnn_gru_forward": "JrnnGruForward",
    "jrnn_gru_backward": "JrnnGruBackward",
}


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled library with its handlers registered with XLA for the CPU, or None."""
    path = Path(__file__).parent / LIBRARY
    if not path.is_file():
        return None
    try:
        lib = ctypes.CDLL(str(path))
        if not lib.JrnnCpuSupported():  # built for AVX2 and FMA, which this CPU lacks
            return None
        for name, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except (OSError, AttributeError):  # built for another machine: the pure-JAX loops
        return None
    return lib if _runs() else None


def _runs() -> bool:
    """One small call through XLA, on the CPU: a library built against another jaxlib's FFI than
    the one running fails here instead of in a user's first gradient."""
    try:
        cpu = jax.devices("cpu")[0]
        with jax.default_device(cpu), jax.ensure_compile_time_eval():
            z = np.zeros((1, 16), np.float32)
            out = _forward_call(np.zeros((1, 1, 64), np.float32), np.zeros(64, np.float32),
                                np.zeros((16, 64), np.float32), z, z, False, 0)
            return bool(np.allclose(np.asarray(out[0])[0, 0, :16], 0.5))  # σ(0): the input gate
    except Exception:  # noqa: BLE001  (any failure means: not usable here)
        return False


def available() -> bool:
    """Whether the native loops were built and load (``pip install`` on a machine with a C++17
    compiler)."""
    return _library() is not None


def enabled() -> bool:
    """``available()`` and not turned off by ``JRNN_NATIVE=0``."""
    return os.environ.get("JRNN_NATIVE", "1") != "0" and available()


def applies(cell, dtype) -> bool:
    """Whether the native loops run this layer when the scan has no mask, truncation or
    recurrent dropout: an ``LSTMCell`` without options or a ``GRUCell`` with ``reset_after=True``
    and no layer norm, a dtype of ``HIDDEN_MULTIPLE`` (float32: hidden size a multiple of 16;
    float64: of 8), and ``enabled()``. On a device other than the CPU the pure-JAX loops run
    (``run_on_cpu``)."""
    multiple = HIDDEN_MULTIPLE.get(np.dtype(dtype))
    return (
        type(cell) in (LSTMCell, GRUCell)
        and cell._plain
        and multiple is not None
        and cell.hidden_size % multiple == 0
        and enabled()
    )


def run_on_cpu(native, reference, *args):
    """``native(*args)`` when the computation is lowered for the CPU, else ``reference(*args)``."""
    return jax.lax.platform_dependent(*args, cpu=native, default=reference)


def _require() -> None:
    if _library() is None:
        raise RuntimeError("jrnn's native loops are not built (jrnn.kernels.native.available() is False): "
                           "reinstall jrnn with a C++17 compiler on the PATH")


def _dims(name: str, seq, time_axis: int, gates: int = 4) -> tuple[int, int, int, np.dtype]:
    """``(n, B, H, dtype)`` of the sequence ``seq (n, B, gates·H)`` (``(B, n, gates·H)`` for
    ``time_axis=1``), after checking that the native loops take it."""
    if time_axis not in (0, 1):
        fail("time_axis", "0 or 1", repr(time_axis))
    dtype = np.dtype(seq.dtype)
    if dtype not in HIDDEN_MULTIPLE:
        fail(f"{name}.dtype", "float32 or float64", str(dtype), TypeError)
    shape = tuple(seq.shape)
    if len(shape) != 3 or shape[2] % gates:
        fail(f"{name}.shape", f"(n, B, {gates}H) (time_axis=0) or (B, n, {gates}H) (time_axis=1)", shape)
    n, B = (shape[0], shape[1]) if time_axis == 0 else (shape[1], shape[0])
    H, multiple = shape[2] // gates, HIDDEN_MULTIPLE[dtype]
    if H % multiple:
        fail(f"the hidden size of {name} (its last axis / {gates})", f"a multiple of {multiple} in {dtype}", H)
    return n, B, H, dtype


def _check_like(dtype, seq_name: str, **arrays) -> None:
    """Each ``name=(array, shape)`` has that shape and the sequence's dtype."""
    for name, (array, shape) in arrays.items():
        if tuple(array.shape) != shape:
            fail(f"{name}.shape", str(shape), tuple(array.shape))
        if np.dtype(array.dtype) != dtype:
            fail(f"{name}.dtype", f"{dtype} (that of {seq_name})", str(np.dtype(array.dtype)), TypeError)


def lstm_forward(xw, b, w_h, h0, c0, *, reverse: bool, time_axis: int):
    """The forward loop: ``(gates, hs, cs, h_T, c_T)`` from the projection ``xw`` (no bias; time
    axis ``time_axis``), ``b``, ``w_h`` and the carry entering the first step, all of one dtype.
    A shape or dtype the loops do not take raises a ``ValueError`` or ``TypeError`` naming the
    argument."""
    _require()
    n, B, H, dtype = _dims("xw", xw, time_axis)
    _check_like(dtype, "xw", b=(b, (4 * H,)), w_h=(w_h, (H, 4 * H)), h0=(h0, (B, H)), c0=(c0, (B, H)))
    return _forward_call(xw, b, w_h, h0, c0, reverse, time_axis)


def _forward_call(xw, b, w_h, h0, c0, reverse, time_axis):
    """The forward handler's call, unchecked (the load check's own call comes here)."""
    seq_h = jax.ShapeDtypeStruct(xw.shape[:-1] + (w_h.shape[0],), xw.dtype)
    carry = jax.ShapeDtypeStruct(h0.shape, xw.dtype)
    call = jax.ffi.ffi_call(
        "jrnn_lstm_forward",
        (jax.ShapeDtypeStruct(xw.shape, xw.dtype), seq_h, seq_h, carry, carry),
        vmap_method="sequential",
    )
    return call(xw, b, w_h, h0, c0, reverse=bool(reverse), batch_major=bool(time_axis))


def lstm_backward(gates, cs, c_first, d_ys, d_h_T, d_c_T, w_h, *, reverse: bool, time_axis: int):
    """The reverse loop: ``(d_a, d_h0, d_c0)`` from the forward's ``gates`` and cell states ``cs``,
    the cell state entering its first step, the outputs' cotangents ``d_ys`` and the last carry's,
    all of one dtype; ``d_a`` is written over ``gates``. A shape or dtype the loops do not take
    raises a ``ValueError`` or ``TypeError`` naming the argument."""
    _require()
    n, B, H, dtype = _dims("gates", gates, time_axis)
    seq = (n, B, H) if time_axis == 0 else (B, n, H)
    _check_like(dtype, "gates", cs=(cs, seq), c_first=(c_first, (B, H)), d_ys=(d_ys, seq), d_h_T=(d_h_T, (B, H)),
                d_c_T=(d_c_T, (B, H)), w_h=(w_h, (H, 4 * H)))  # fmt: skip
    carry = jax.ShapeDtypeStruct(d_h_T.shape, gates.dtype)
    call = jax.ffi.ffi_call(
        "jrnn_lstm_backward",
        (jax.ShapeDtypeStruct(gates.shape, gates.dtype), carry, carry),
        input_output_aliases={0: 0},
        vmap_method="sequential",
    )
    return call(gates, cs, c_first, d_ys, d_h_T, d_c_T, w_h, reverse=bool(reverse), batch_major=bool(time_axis))


def gru_forward(xw, b_x, b_h, w_h, h0, *, reverse: bool, time_axis: int):
    """The GRU's forward loop: ``(rzn, hp_n, hs, h_T)`` (the reserve ``[r z n]`` and ``hp_n``, the
    carries after each step, the last carry) from the projection ``xw`` (no bias; time axis
    ``time_axis``), the biases ``b_x`` and ``b_h``, ``w_h`` and the carry entering the first step,
    all of one dtype. A shape or dtype the loops do not take raises a ``ValueError`` or
    ``TypeError`` naming the argument."""
    _require()
    n, B, H, dtype = _dims("xw", xw, time_axis, gates=3)
    _check_like(dtype, "xw", b_x=(b_x, (3 * H,)), b_h=(b_h, (3 * H,)), w_h=(w_h, (H, 3 * H)), h0=(h0, (B, H)))
    seq_h = jax.ShapeDtypeStruct(xw.shape[:-1] + (H,), xw.dtype)
    call = jax.ffi.ffi_call(
        "jrnn_gru_forward",
        (jax.ShapeDtypeStruct(xw.shape, xw.dtype), seq_h, seq_h, jax.ShapeDtypeStruct((B, H), xw.dtype)),
        vmap_method="sequential",
    )
    return call(xw, b_x, b_h, w_h, h0, reverse=bool(reverse), batch_major=bool(time_axis))


def gru_backward(rzn, hp_n, hs, h_first, d_ys, d_h_T, w_h, *, reverse: bool, time_axis: int):
    """The GRU's reverse loop: ``(d_hp, d_a_n, d_h0)`` (``GRUCell.backward_step``'s pre-activation
    gradients, written over ``rzn`` and ``hp_n``, and the first carry's cotangent) from the
    forward's reserve, its carries after each step ``hs``, the carry entering its first step, the
    outputs' cotangents ``d_ys`` and the last carry's, all of one dtype. A shape or dtype the loops
    do not take raises a ``ValueError`` or ``TypeError`` naming the argument."""
    _require()
    n, B, H, dtype = _dims("rzn", rzn, time_axis, gates=3)
    seq = (n, B, H) if time_axis == 0 else (B, n, H)
    _check_like(dtype, "rzn", hp_n=(hp_n, seq), hs=(hs, seq), h_first=(h_first, (B, H)), d_ys=(d_ys, seq),
                d_h_T=(d_h_T, (B, H)), w_h=(w_h, (H, 3 * H)))  # fmt: skip
    call = jax.ffi.ffi_call(
        "jrnn_gru_backward",
        (jax.ShapeDtypeStruct(rzn.shape, rzn.dtype), jax.ShapeDtypeStruct(hp_n.shape, rzn.dtype),
         jax.ShapeDtypeStruct((B, H), rzn.dtype)),  # fmt: skip
        input_output_aliases={0: 0, 1: 1},
        vmap_method="sequential",
    )
    return call(rzn, hp_n, hs, h_first, d_ys, d_h_T, w_h, reverse=bool(reverse), batch_major=bool(time_axis))


__all__ = [
    "HIDDEN_MULTIPLE", "applies", "available", "enabled", "gru_backward", "gru_forward", "lstm_backward",
    "lstm_forward", "run_on_cpu",
]  # fmt: skip
