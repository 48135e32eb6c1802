"""Parallel-in-time evaluation (``method=`` in ``unroll``/``apply``, ``jrnn.parallel.solve``): outputs
equal the sequential scan, gradients equal autodiff through the sequential scan, in float64 on
random inputs; the minGRU / minLSTM cells' log-space scan equals their sequential step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import parallel

B, T, D, H = 3, 12, 2, 3
LENGTHS = jnp.array([12, 5, 0])


def randomize(tree, key, scale=0.4):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [scale * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)]
    )


def setup(kind, dtype=jnp.float64, seed=0):
    cell = {"vanilla": jrnn.VanillaCell, "lstm": jrnn.LSTMCell, "gru": jrnn.GRUCell,
            "mingru": jrnn.MinGRUCell, "minlstm": jrnn.MinLSTMCell}[kind](H)
    params = randomize(cell.init(jax.random.PRNGKey(seed), D, dtype), jax.random.PRNGKey(seed + 1))
    xs = jax.random.normal(jax.random.PRNGKey(seed + 2), (B, T, D), dtype)
    return cell, params, xs


def close(a, b, tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("method", ["newton", "quasi_newton", "elk"])
@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
def test_parallel_outputs_equal_sequential_float64(kind, method, reverse):
    cell, params, xs = setup(kind)
    want = jrnn.unroll(cell, params, xs, seq_lengths=LENGTHS, reverse=reverse)
    result = parallel.solve(cell, params, xs, method=method, seq_lengths=LENGTHS, reverse=reverse, max_iter=4 * T)
    assert bool(result.info.converged) and not bool(result.info.fell_back)
    close((result.carry_T, result.ys), want, 1e-10)
    got = jrnn.unroll(cell, params, xs, seq_lengths=LENGTHS, reverse=reverse, method=method)
    close(got, want, 1e-10)  # converged, or recomputed by the sequential fallback


def test_parallel_float32_within_1e_5():
    cell, params, xs = setup("gru", jnp.float32)
    want = jrnn.unroll(cell, params, xs, seq_lengths=LENGTHS)
    close(jrnn.unroll(cell, params, xs, seq_lengths=LENGTHS, method="newton"), want, 1e-5)


@pytest.mark.parametrize("backward", ["autodiff", "bptt"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_adjoint_gradients_equal_autodiff_of_the_sequential_scan(kind, backward):
    cell, params, xs = setup(kind, seed=3)

    def objective(p, xs, method, backward):
        carry, ys = jrnn.unroll(cell, p, xs, seq_lengths=LENGTHS, method=method, backward=backward)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c ** 2) for c in jax.tree_util.tree_leaves(carry))

    want = jax.grad(objective, argnums=(0, 1))(params, xs, "sequential", "autodiff")
    hand = jax.grad(objective, argnums=(0, 1))(params, xs, "sequential", "bptt")
    got = jax.grad(objective, argnums=(0, 1))(params, xs, "newton", backward)
    close(got, want, 1e-9)
    close(hand, want, 1e-9)


def test_non_convergence_falls_back_to_the_sequential_scan():
    cell, params, xs = setup("gru")
    result = parallel.solve(cell, params, xs, method="newton", max_iter=1)
    assert not bool(result.info.converged) and bool(result.info.fell_back)
    close((result.carry_T, result.ys), jrnn.unroll(cell, params, xs), 1e-12)
    nan = parallel.solve(cell, params, xs, method="newton", max_iter=1, on_failure="nan")
    assert bool(jnp.all(jnp.isnan(nan.ys)))


def test_stacked_bidirectional_network_with_method():
    cell, _, xs = setup("lstm")
    model = jrnn.RNN(cell, num_layers=2, bidirectional=True, output_size=2)
    params = randomize(model.init(jax.random.PRNGKey(4), D, jnp.float64), jax.random.PRNGKey(5))
    want, _ = model.apply(params, xs, seq_lengths=LENGTHS)
    got, _ = model.apply(params, xs, seq_lengths=LENGTHS, method="quasi_newton")
    close(got, want, 1e-10)


@pytest.mark.parametrize("kind", ["mingru", "minlstm"])
def test_min_cells_parallel_scan_equals_sequential_step(kind):
    cell, params, xs = setup(kind, seed=6)
    want = jrnn.unroll(cell, params, xs, seq_lengths=LENGTHS)
    # the step as a streaming loop, one call at a time
    carry = cell.initial_carry((B,), jnp.float64)
    for t in range(4):
        carry, y = cell(params, carry, xs[:, t])
        np.testing.assert_allclose(np.asarray(y[0]), np.asarray(want[1][0, t]), rtol=1e-12)
    result = parallel.solve(cell, params, xs, method="newton", seq_lengths=LENGTHS)
    assert int(result.info.iterations) == 1
    close((result.carry_T, result.ys), want, 1e-10)

    def objective(p, method, backward):
        return jnp.sum(jnp.tanh(jrnn.unroll(cell, p, xs, seq_lengths=LENGTHS, method=method, backward=backward)[1]))

    ref = jax.grad(objective)(params, "sequential", "autodiff")
    close(jax.grad(objective)(params, "sequential", "bptt"), ref, 1e-9)
    close(jax.grad(objective)(params, "newton", "autodiff"), ref, 1e-9)


def test_method_errors():
    cell, params, xs = setup("gru")
    with pytest.raises(ValueError, match="method must be one of"):
        jrnn.unroll(cell, params, xs, method="deer")
