"""The native LSTM and GRU loops (``jrnn.kernels.native``, ``lstm.cc``) against the pure-JAX
loops they replace on a CPU, and the whole gradient against autodiff.

Every comparison is in float64 with random inputs, for both cells: the forward loop's carries and
reserve, the reverse loop's pre-activation gradients and carry cotangent, against ``jrnn.scan``'s
``lax.scan`` loops over the cell's ``forward_step`` / ``backward_step`` (the reference); the
gradient of ``RNN.apply`` and ``unroll`` with ``backward="bptt"`` against ``backward="autodiff"``.
Shapes are chosen so that the batch is not a multiple of the kernel's 6-row tiles and the hidden
units split unevenly over two threads. The rules for when the native loops run (plain LSTM or GRU,
CPU, no mask, no truncation, no recurrent dropout, float32/float64, hidden size) are checked on the
compiled computation.
"""

from __future__ import annotations

import os
import platform
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import scan
from jrnn.kernels import native
from tests.helpers import randomize

F64 = jnp.float64

needs_native = pytest.mark.skipif(not native.available(), reason="the native loops are not built here")


def _builds_here() -> bool:
    """A Linux x86-64 machine with AVX2 and a C++ compiler: where ``pip install`` builds the loops."""
    if platform.system() != "Linux" or platform.machine() != "x86_64" or shutil.which("c++") is None:
        return False
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx2 " in flags and " fma " in flags


def test_the_native_loops_are_built_where_they_can_be():
    """``pip install`` compiled ``lstm.cc`` and it loads: on a machine that can build it, a missing
    library means the build failed silently (the extension is optional)."""
    if not _builds_here():
        pytest.skip("not a Linux x86-64 machine with AVX2 and a C++ compiler")
    assert native.available(), f"jrnn/kernels/native/{native.LIBRARY} is missing or does not load: reinstall jrnn"


def _native_calls(fn, *args) -> int:
    """How many native loops the compiled ``fn`` calls."""
    return jax.jit(fn).lower(*args).compile().as_text().count('custom_call_target="jrnn_')


@pytest.fixture
def fresh():
    """Nothing compiled under another setting of the native loops is reused."""
    jax.clear_caches()
    yield
    jax.clear_caches()


def _random(shape, key, dtype=F64, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(key), shape, dtype)


CELLS = {"lstm": jrnn.LSTMCell, "gru": jrnn.GRUCell}


def _layer(kind, dtype, n, B, H, ax):
    """A plain LSTM's or GRU's params, input projection (time axis ``ax``) and carry, all random."""
    cell = CELLS[kind](H)
    params = randomize(cell.init(jax.random.PRNGKey(0), 3, dtype), jax.random.PRNGKey(1), dtype=dtype)
    G = len(cell.gate_names) * H
    shape = (n, B, G) if ax == 0 else (B, n, G)
    return cell, params, _random(shape, 2, dtype), _carry(cell, B, 3, dtype)


def _carry(cell, B, key, dtype=F64):
    """A random carry of ``cell`` for a batch of ``B``."""
    return randomize(cell.initial_carry(B, dtype), jax.random.PRNGKey(key), dtype=dtype)


@needs_native
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("ax", [0, 1])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype,H", [(jnp.float64, 24), (jnp.float32, 48)])
def test_forward_loop_equals_the_scan(dtype, H, reverse, ax, kind):
    n, B = 5, 7
    cell, params, xw, carry = _layer(kind, dtype, n, B, H, ax)
    got = scan._native_forward(cell, params, xw, carry, reverse, ax)
    want = scan._loop_forward(cell, params, xw, carry, None, reverse, 1, None, ax)
    tol = 1e-13 if dtype == jnp.float64 else 2e-6
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=tol, atol=tol)


@needs_native
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("ax", [0, 1])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype,H", [(jnp.float64, 24), (jnp.float32, 48)])
def test_reverse_loop_equals_the_scan(dtype, H, reverse, ax, kind):
    """The pre-activation gradients over the whole sequence and the carry's cotangent at its start,
    for a segment that reads the entering carries from the stored ones and one that is given them
    (remat's chunks)."""
    n, B = 6, 7
    cell, params, xw, carry0 = _layer(kind, dtype, n, B, H, ax)
    _, states, reserve = scan._loop_forward(cell, params, xw, carry0, None, reverse, 1, None, ax)
    d_ys = _random(jax.tree_util.tree_leaves(states)[0].shape, 5, dtype)
    d_carry = _carry(cell, B, 6, dtype)
    entering = [scan.entering(s, c, None, reverse, ax) for s, c in zip(jax.tree_util.tree_leaves(states),
                                                                         jax.tree_util.tree_leaves(carry0))]  # fmt: skip
    tol = 1e-12 if dtype == jnp.float64 else 2e-5
    for prev in ([entering[0], *[None] * (len(entering) - 1)], [None] * len(entering), entering):
        seg = scan._Segment(None, d_ys, None, None, None, states, prev, carry0)
        got = scan._native_reverse(cell, params, seg, reserve, d_carry, reverse, ax)
        want = scan._scan_reverse(cell, params, seg, reserve, d_carry, reverse, 1, None, ax)
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=tol, atol=tol)


@needs_native
@pytest.mark.parametrize("kind", list(CELLS))
def test_the_thread_count_does_not_change_a_number(kind, monkeypatch):
    """Each thread computes whole hidden units, in the same order whatever the count: one thread
    and all of them give the same bits, forward and reverse."""
    n, B, H = 9, 13, 64
    cell, params, xw, carry = _layer(kind, jnp.float32, n, B, H, 0)
    d_ys = _random((n, B, H), 5, jnp.float32)

    def run(xw):
        carry_T, states, reserve = scan._native_forward(cell, params, xw, carry, False, 0)
        prev = [None] * len(jax.tree_util.tree_leaves(carry))
        seg = scan._Segment(None, d_ys, None, None, None, states, prev, carry)
        return carry_T, states, reserve, scan._native_reverse(cell, params, seg, reserve, carry_T, False, 0)

    run = jax.jit(run)
    monkeypatch.setenv("JRNN_NATIVE_THREADS", "1")
    one = jax.block_until_ready(run(xw))
    monkeypatch.setenv("JRNN_NATIVE_THREADS", "2")
    two = jax.block_until_ready(run(xw))
    for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(two)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@needs_native
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("batch_major", [False, True])
def test_network_gradient_equals_autodiff(batch_major, remat, kind, fresh, monkeypatch):
    """Two bidirectional layers and a readout, carries in the loss: ``backward="bptt"`` runs the
    native loops (all four of each layer's directions) and its gradient is autodiff's."""
    if batch_major:
        monkeypatch.setattr(jrnn.scan, "BATCH_MAJOR_MIN_ELEMENTS", 0)  # batch-major layers at any size
    H, B, T, D = 8, 7, 6, 3
    model = jrnn.RNN(CELLS[kind](H), num_layers=2, bidirectional=True, output_size=2)
    params = randomize(model.init(jax.random.PRNGKey(0), D, F64), jax.random.PRNGKey(1))
    xs = _random((B, T, D), 2)
    carry = randomize(model.initial_carries((B,), F64), jax.random.PRNGKey(3))
    targets = _random((B, T, 2), 4)

    def grads(backward):
        def loss(params, carry):
            ys, carry_T = model.apply(params, xs, carry, backward=backward, remat=remat)
            return jnp.sum((ys - targets) ** 2) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree_util.tree_leaves(carry_T))

        return jax.grad(loss, argnums=(0, 1)), (params, carry)

    fn, args = grads("bptt")
    assert _native_calls(fn, *args) == 8  # 2 layers x 2 directions x (forward, reverse)
    got, want = fn(*args), grads("autodiff")[0](*args)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-10, atol=1e-12)


@needs_native
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_unroll_gradient_equals_autodiff(reverse, kind, fresh):
    cell = CELLS[kind](16)
    params = randomize(cell.init(jax.random.PRNGKey(0), 3, F64), jax.random.PRNGKey(1))
    xs = _random((5, 9, 3), 2)  # (B, T, D)
    carry = _carry(cell, 5, 3)

    def loss(backward):
        def f(params, xs, carry):
            carry_T, ys = jrnn.unroll(cell, params, xs, carry, reverse=reverse, backward=backward)
            last = jax.tree_util.tree_leaves(carry_T)[-1]  # the LSTM's cell state, the GRU's h
            return jnp.sum(jnp.tanh(ys) * xs[..., :1]) + jnp.sum(last**2)

        return jax.grad(f, argnums=(0, 1, 2))

    assert _native_calls(loss("bptt"), params, xs, carry) == 2
    got, want = loss("bptt")(params, xs, carry), loss("autodiff")(params, xs, carry)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-10, atol=1e-12)


@needs_native
@pytest.mark.parametrize("kind", list(CELLS))
def test_float32_gradient_close_to_the_pure_loops(kind, fresh, monkeypatch):
    """The training default in float32 (the library's exp and tanh in the kernel): within float32
    rounding of the pure-JAX loops."""
    model = jrnn.RNN(CELLS[kind](32), num_layers=2)
    params = model.init(jax.random.PRNGKey(0), 4)
    xs = _random((6, 20, 4), 2, jnp.float32)
    loss = lambda p: jnp.mean(model.apply(p, xs, backward="bptt")[0] ** 2)  # noqa: E731
    got = jax.grad(loss)(params)
    monkeypatch.setenv("JRNN_NATIVE", "0")
    jax.clear_caches()
    assert _native_calls(jax.grad(loss), params) == 0
    want = jax.grad(loss)(params)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        scale = float(jnp.max(jnp.abs(w)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5 * scale, rtol=0)


@needs_native
def test_vmap_runs_the_loops_once_per_member(fresh):
    """Under ``vmap`` each member runs the native loops in turn: the same gradients as autodiff's."""
    model = jrnn.RNN(jrnn.LSTMCell(8))
    params = randomize(model.init(jax.random.PRNGKey(0), 2, F64), jax.random.PRNGKey(1))
    xs = _random((3, 4, 5, 2), 2)  # three members, each (B, T, D)

    def grad(backward):
        return jax.vmap(jax.grad(lambda p, x: jnp.sum(jnp.sin(model.apply(p, x, backward=backward)[0]))), (None, 0))

    got, want = grad("bptt")(params, xs), grad("autodiff")(params, xs)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-10, atol=1e-12)


@needs_native
@pytest.mark.parametrize(
    "case,native_calls",
    [
        ("plain", 2),
        ("lengths", 0),  # a mask: the pure loops
        ("recurrent_dropout", 0),
        ("peepholes", 0),  # an option on
        ("hidden_12", 0),  # float64 wants a multiple of 8
        ("gru", 2),
        ("gru_reset_before", 0),  # the GRU's options: the pure loops
        ("gru_layer_norm", 0),
        ("vanilla", 0),
        ("off", 0),  # JRNN_NATIVE=0
    ],
)
def test_when_the_native_loops_run(case, native_calls, fresh, monkeypatch):
    H = 12 if case == "hidden_12" else 16
    cell = {
        "peepholes": jrnn.LSTMCell(H, peepholes=True),
        "gru": jrnn.GRUCell(H),
        "gru_reset_before": jrnn.GRUCell(H, reset_after=False),
        "gru_layer_norm": jrnn.GRUCell(H, layer_norm=True),
        "vanilla": jrnn.VanillaCell(H),
    }.get(case, jrnn.LSTMCell(H))
    model = jrnn.RNN(cell, recurrent_dropout=0.3 if case == "recurrent_dropout" else 0.0)
    params = model.init(jax.random.PRNGKey(0), 2, F64)
    xs = _random((3, 5, 2), 1)
    options = {
        "lengths": {"seq_lengths": jnp.array([5, 3, 4])},
        "recurrent_dropout": {"dropout_key": jax.random.PRNGKey(2)},
    }.get(case, {})
    if case == "off":
        monkeypatch.setenv("JRNN_NATIVE", "0")
    loss = lambda p: jnp.sum(model.apply(p, xs, backward="bptt", **options)[0])  # noqa: E731
    assert _native_calls(jax.grad(loss), params) == native_calls


@needs_native
def test_truncated_bptt_runs_the_pure_reverse_loop(fresh):
    """A truncation cuts the gradient into chosen steps, which the native reverse loop does not:
    with one, the forward stays native and the reverse loop is ``lax.scan``'s."""
    cell = jrnn.LSTMCell(16)
    params = cell.init(jax.random.PRNGKey(0), 2, F64)
    xs = _random((8, 3, 2), 1)
    carry = jrnn.LSTMCarry(jnp.zeros((3, 16), F64), jnp.zeros((3, 16), F64))
    d_ys = _random((8, 3, 16), 2)

    def vjp(truncation):
        return lambda p: jrnn.bptt.unroll_vjp(cell, p, xs, carry, d_ys, carry, truncation=truncation,
                                              time_major=True)  # fmt: skip

    assert _native_calls(vjp(None), params) == 2
    assert _native_calls(vjp(3), params) == 1


@needs_native
def test_bad_input_gets_a_clear_error():
    f32, B, n, H = jnp.float32, 3, 4, 16
    xw, b, w_h = jnp.zeros((n, B, 4 * H), f32), jnp.zeros(4 * H, f32), jnp.zeros((H, 4 * H), f32)
    h = jnp.zeros((B, H), f32)

    def forward(xw, h0=h):
        return native.lstm_forward(xw, b, w_h, h0, h, reverse=False, time_axis=0)

    with pytest.raises(TypeError, match=r"xw\.dtype must be float32 or float64, got float16"):
        forward(xw.astype(jnp.float16))
    with pytest.raises(ValueError, match=r"hidden size of xw .* must be a multiple of 16 in float32, got 12"):
        forward(jnp.zeros((n, B, 48), f32))
    with pytest.raises(ValueError, match=r"h0\.shape must be \(3, 16\), got \(2, 16\)"):
        forward(xw, h0=jnp.zeros((2, H), f32))
    with pytest.raises(ValueError, match=r"time_axis must be 0 or 1, got 2"):
        native.lstm_forward(xw, b, w_h, h, h, reverse=False, time_axis=2)
    gates, hs, cs, _, _ = forward(xw)
    with pytest.raises(TypeError, match=r"d_ys\.dtype must be float32 \(that of gates\), got float64"):
        native.lstm_backward(gates, cs, h, hs.astype(jnp.float64), h, h, w_h, reverse=False, time_axis=0)
    # the GRU's: three gates
    xw3, b3, w3 = jnp.zeros((n, B, 3 * H), f32), jnp.zeros(3 * H, f32), jnp.zeros((H, 3 * H), f32)
    with pytest.raises(ValueError, match=r"xw\.shape must be \(n, B, 3H\) .*, got \(4, 3, 50\)"):
        native.gru_forward(jnp.zeros((n, B, 50), f32), b3, b3, w3, h, reverse=False, time_axis=0)
    with pytest.raises(ValueError, match=r"w_h\.shape must be \(16, 48\), got \(16, 64\)"):
        native.gru_forward(xw3, b3, b3, w_h, h, reverse=False, time_axis=0)
    rzn, hp_n, hs, _ = native.gru_forward(xw3, b3, b3, w3, h, reverse=False, time_axis=0)
    with pytest.raises(ValueError, match=r"hp_n\.shape must be \(4, 3, 16\), got \(3, 4, 16\)"):
        native.gru_backward(rzn, jnp.swapaxes(hp_n, 0, 1), hs, h, hs, h, w3, reverse=False, time_axis=0)


@needs_native
def test_other_platforms_lower_the_scan_loops(fresh):
    """Lowered for a GPU (``jax.export``, no GPU needed), the gradient holds no native call: only
    the CPU lowers ``run_on_cpu``'s native branch."""
    from jax import export

    model = jrnn.RNN(jrnn.LSTMCell(16))
    params = model.init(jax.random.PRNGKey(0), 4)
    xs = jnp.zeros((3, 5, 4))
    grad = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, xs, backward="bptt")[0])))
    assert _native_calls(grad, params) == 2
    assert "jrnn_lstm" not in export.export(grad, platforms=["cuda"])(params).mlir_module()
