"""``init="torch"`` and ``init="keras"``: the distributions PyTorch's and Keras' recurrent layers
draw, checked on large draws (bounds, moments, orthogonality), and the preset errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn

H, D = 64, 48


@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
def test_torch_preset_is_uniform_in_one_over_sqrt_h(kind):
    cell = jrnn.make_cell(kind, H)
    p = cell.init(jax.random.PRNGKey(0), D, jnp.float64, init="torch")
    bound = 1.0 / math.sqrt(H)
    for name in ("w_x", "w_h"):
        w = np.asarray(getattr(p, name))
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
        assert abs(w.mean()) < 0.05 * bound
        assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)  # U(-a, a) has std a/√3
    if kind == "gru":  # b_x = bias_ih, b_h = bias_hh, each U(±1/√H)
        for b in (p.b_x, p.b_h):
            assert np.abs(np.asarray(b)).max() <= bound
    else:  # b = bias_ih + bias_hh: a sum of two uniforms, so up to 2/√H and std √2·a/√3
        b = np.asarray(p.b)
        assert np.abs(b).max() <= 2 * bound and np.abs(b).max() > bound
        assert b.std() == pytest.approx(math.sqrt(2) * bound / math.sqrt(3), rel=0.25)


def test_torch_preset_matches_pytorchs_own_ranges():
    """The same bounds PyTorch's own modules draw in (read from a freshly built module)."""
    torch = pytest.importorskip("torch")
    module = torch.nn.LSTM(D, H)
    got = max(float(p.detach().abs().max()) for p in module.parameters())
    assert got <= 1.0 / math.sqrt(H)
    cell = jrnn.LSTMCell(H)
    p = cell.init(jax.random.PRNGKey(1), D, init="torch")
    assert float(jnp.abs(p.w_h).max()) == pytest.approx(got, rel=0.05)


@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
def test_keras_preset(kind):
    cell = jrnn.make_cell(kind, H)
    p = cell.init(jax.random.PRNGKey(0), D, jnp.float64, init="keras")
    w_h = np.asarray(p.w_h)  # (H, G): orthonormal rows, as Keras' Orthogonal over the whole matrix
    np.testing.assert_allclose(w_h @ w_h.T, np.eye(H), atol=1e-10)
    if cell.num_blocks > 1:  # not per gate block: a block alone is not orthogonal
        assert not np.allclose(w_h[:, :H] @ w_h[:, :H].T, np.eye(H), atol=1e-3)
    glorot = math.sqrt(6.0 / (D + cell.gate_size))
    assert np.abs(np.asarray(p.w_x)).max() <= glorot
    if kind == "lstm":  # unit forget bias, zeros elsewhere
        want = np.zeros(4 * H)
        want[H : 2 * H] = 1.0
        np.testing.assert_array_equal(np.asarray(p.b), want)
    else:
        for b in jax.tree_util.tree_leaves(p[2:]):  # the options' None fields have no leaves
            np.testing.assert_array_equal(np.asarray(b), 0.0)


@pytest.mark.parametrize("kind", ["mingru", "minlstm"])
def test_presets_of_the_cells_without_a_recurrent_matrix(kind):
    """No PyTorch or Keras counterpart: "torch" draws every leaf U(±1/√H), "keras" is the default."""
    cell = jrnn.make_cell(kind, H)
    key = jax.random.PRNGKey(0)
    torch_like = cell.init(key, D, jnp.float64, init="torch")
    bound = 1.0 / math.sqrt(H)
    for leaf in (torch_like.w_x, torch_like.b):
        a = np.asarray(leaf)
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound
        assert a.std() == pytest.approx(bound / math.sqrt(3), rel=0.15)
    keras_like = cell.init(key, D, jnp.float64, init="keras")
    default = cell.init(key, D, jnp.float64)
    for got, want in zip(keras_like, default):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(default.b), 0.0)
    model = jrnn.RNN(cell, num_layers=2, output_size=1)  # and through the network
    assert model.check_params(model.init(key, D, init="torch")) == D


def test_network_presets_and_torch_readout():
    model = jrnn.RNN(jrnn.GRUCell(8), num_layers=2, bidirectional=True, output_size=3)
    p = model.init(jax.random.PRNGKey(0), 5, init="torch")
    bound = 1.0 / math.sqrt(8)
    for layer in p.layers:
        for d in layer:
            assert all(float(jnp.abs(a).max()) <= bound for a in jax.tree_util.tree_leaves(d))
    assert float(jnp.abs(p.readout.w).max()) <= 1.0 / math.sqrt(16)  # torch.nn.Linear: U(±1/√in)
    assert float(jnp.abs(p.readout.b).max()) > 0  # Linear's bias is drawn too
    default = model.init(jax.random.PRNGKey(0), 5)
    np.testing.assert_array_equal(np.asarray(default.readout.b), 0.0)


def test_preset_errors():
    with pytest.raises(ValueError, match="init must be one of"):
        jrnn.LSTMCell(4).init(jax.random.PRNGKey(0), 3, init="flax")
    with pytest.raises(ValueError, match="init='torch' must be used with the default recurrent_init"):
        jrnn.LSTMCell(4, recurrent_init="identity").init(jax.random.PRNGKey(0), 3, init="torch")
