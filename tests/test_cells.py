"""Each cell against explicit per-gate formulas; initializers; dtypes; jit/vmap/grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jrnn
import reference as ref
from helpers import make, randomize


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "linear"])
@pytest.mark.parametrize("batch_shape", [(), (1,), (3,), (2, 3)])
def test_vanilla_step_matches_formula(activation, batch_shape):
    cell = jrnn.VanillaCell(5, activation=activation)
    k_p, k_x, k_h = jax.random.split(jax.random.PRNGKey(0), 3)
    p = randomize(cell.init(k_p, 4, jnp.float64), k_p)
    x = jax.random.normal(k_x, (*batch_shape, 4), jnp.float64)
    h = jax.random.normal(k_h, (*batch_shape, 5), jnp.float64)
    carry, y = cell(p, h, x)
    want = ref.vanilla_step(p, np.asarray(h), np.asarray(x), activation)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(carry, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_shape", [(), (1,), (3,), (2, 3)])
def test_lstm_step_matches_formula(batch_shape):
    cell = jrnn.LSTMCell(5)
    k_p, k_x, k_h, k_c = jax.random.split(jax.random.PRNGKey(1), 4)
    p = randomize(cell.init(k_p, 4, jnp.float64), k_p)
    x = jax.random.normal(k_x, (*batch_shape, 4), jnp.float64)
    h = jax.random.normal(k_h, (*batch_shape, 5), jnp.float64)
    c = jax.random.normal(k_c, (*batch_shape, 5), jnp.float64)
    carry, y = cell(p, jrnn.LSTMCarry(h, c), x)
    want_h, want_c = ref.lstm_step(p, np.asarray(h), np.asarray(c), np.asarray(x))
    assert isinstance(carry, jrnn.LSTMCarry)
    np.testing.assert_allclose(carry.h, want_h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(carry.c, want_c, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, want_h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_shape", [(), (1,), (3,), (2, 3)])
def test_gru_step_matches_formula(batch_shape):
    cell = jrnn.GRUCell(5)
    k_p, k_x, k_h = jax.random.split(jax.random.PRNGKey(2), 3)
    p = randomize(cell.init(k_p, 4, jnp.float64), k_p)
    x = jax.random.normal(k_x, (*batch_shape, 4), jnp.float64)
    h = jax.random.normal(k_h, (*batch_shape, 5), jnp.float64)
    carry, y = cell(p, h, x)
    want = ref.gru_step(p, np.asarray(h), np.asarray(x))
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(carry, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
def test_param_shapes_and_types(kind):
    cell = make(kind, 7)
    p = cell.init(jax.random.PRNGKey(0), 3)
    G = {"vanilla": 1, "lstm": 4, "gru": 3}[kind] * 7
    assert type(p) is {"vanilla": jrnn.VanillaParams, "lstm": jrnn.LSTMParams, "gru": jrnn.GRUParams}[kind]
    assert p.w_x.shape == (3, G) and p.w_h.shape == (7, G)
    for name in p._fields[2:]:
        assert getattr(p, name) is None or getattr(p, name).shape == (G,)  # None: an option's field


def test_lstm_forget_bias_lives_in_b():
    H = 6
    p = jrnn.LSTMCell(H, forget_bias=2.5).init(jax.random.PRNGKey(0), 3)
    np.testing.assert_array_equal(p.b[H : 2 * H], 2.5)
    np.testing.assert_array_equal(np.delete(np.asarray(p.b), np.s_[H : 2 * H]), 0.0)
    # The forward pass adds nothing: with b = 0 the forget gate sees exactly x w_x + h w_h.
    p0 = p._replace(b=jnp.zeros_like(p.b))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
    c0 = jax.random.normal(jax.random.PRNGKey(2), (2, H))
    (h, c), _ = jrnn.LSTMCell(H, forget_bias=2.5)(p0, jrnn.LSTMCarry(jnp.zeros((2, H)), c0), x)
    want_h, want_c = ref.lstm_step(p0, np.zeros((2, H)), np.asarray(c0), np.asarray(x))
    np.testing.assert_allclose(c, want_c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("init", ["orthogonal", "identity", "normal", "uniform"])
@pytest.mark.parametrize("scale", [0.5, 1.0, 1.5])
def test_recurrent_init(init, scale):
    H = 32
    p = jrnn.LSTMCell(H, recurrent_init=init, recurrent_scale=scale).init(jax.random.PRNGKey(3), 4, jnp.float64)
    blocks = np.split(np.asarray(p.w_h), 4, axis=1)
    assert not np.allclose(blocks[0], blocks[1]) or init == "identity"
    for w in blocks:
        if init == "orthogonal":
            np.testing.assert_allclose(w.T @ w, scale**2 * np.eye(H), atol=1e-10)
        elif init == "identity":
            np.testing.assert_allclose(w, scale * np.eye(H))
        elif init == "normal":
            assert abs(w.std() - scale / np.sqrt(H)) < 0.15 * scale / np.sqrt(H)
        else:
            assert np.abs(w).max() <= scale / np.sqrt(H) + 1e-12
            assert np.abs(w).max() > 0.9 * scale / np.sqrt(H)
    bound = np.sqrt(6.0 / (4 + 4 * H))  # Glorot-uniform input weights
    assert np.abs(np.asarray(p.w_x)).max() <= bound


def test_orthogonal_spectral_radius_is_scale():
    p = jrnn.VanillaCell(16, recurrent_scale=1.3).init(jax.random.PRNGKey(4), 2, jnp.float64)
    assert np.max(np.abs(np.linalg.eigvals(np.asarray(p.w_h)))) == pytest.approx(1.3, rel=1e-9)


@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
def test_dtypes_carry_keeps_computation_dtype(kind, dtype):
    cell = make(kind, 4)
    p = cell.init(jax.random.PRNGKey(0), 3, dtype)
    assert all(a.dtype == dtype for a in jax.tree_util.tree_leaves(p))
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3)).astype(dtype)
    carry, ys = jrnn.unroll(cell, p, xs)
    assert ys.dtype == dtype
    assert all(a.dtype == dtype for a in jax.tree_util.tree_leaves(carry))
    # and the values follow the float64 computation within the dtype's precision
    p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), p)
    _, ys64 = jrnn.unroll(cell, p64, xs.astype(jnp.float64))
    tol = {jnp.float32: 1e-5, jnp.float64: 1e-12, jnp.bfloat16: 5e-2}[dtype]
    np.testing.assert_allclose(np.asarray(ys, np.float64), ys64, atol=tol)


@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
def test_jit_vmap_grad_of_a_step(kind):
    cell = make(kind, 3)
    k_p, k_x = jax.random.split(jax.random.PRNGKey(5))
    p = randomize(cell.init(k_p, 2, jnp.float64), k_p)
    xs = jax.random.normal(k_x, (4, 2), jnp.float64)
    carry = cell.initial_carry((4,), jnp.float64)
    _, y = cell(p, carry, xs)
    _, y_jit = jax.jit(cell)(p, carry, xs)
    _, y_vmap = jax.vmap(cell, in_axes=(None, 0, 0))(p, carry, xs)
    np.testing.assert_allclose(y_jit, y, rtol=1e-13)
    np.testing.assert_allclose(y_vmap, y, rtol=1e-13)
    loss = lambda p: jnp.sum(cell(p, carry, xs)[1] ** 2)  # noqa: E731
    check_grads(loss, (p,), order=2, modes=["rev"], eps=1e-4)


def test_cells_are_hashable_static_specs():
    a, b = jrnn.LSTMCell(8, forget_bias=1.0), jrnn.LSTMCell(8, forget_bias=1.0)
    assert a == b and hash(a) == hash(b)
    assert jrnn.VanillaCell(8, activation="relu") != jrnn.VanillaCell(8)
    with pytest.raises(Exception):
        a.hidden_size = 3


def test_make_cell():
    assert jrnn.make_cell("lstm", 4) == jrnn.LSTMCell(4)
    assert jrnn.make_cell("vanilla", 4, activation="relu") == jrnn.VanillaCell(4, activation="relu")
    with pytest.raises(ValueError, match="cell must be one of"):
        jrnn.make_cell("transformer", 4)
