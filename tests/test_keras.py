"""``jrnn.interop.from_keras`` / ``to_keras`` against Keras 3 on its JAX backend: SimpleRNN, LSTM,
GRU (both ``reset_after`` settings), ``use_bias=False``, ``Bidirectional`` and stacks, outputs
compared in float32 on random weights and inputs."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported anywhere

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jrnn  # noqa: E402
from jrnn import interop  # noqa: E402

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras' own
if keras.backend.backend() != "jax":  # pragma: no cover - keras imported earlier with another backend
    pytest.skip("these tests need Keras on its JAX backend", allow_module_level=True)

B, T, D, H = 3, 6, 4, 5
TOL = 2e-6


def keras_allows_broadcasts():
    """Keras' own ops broadcast implicitly; the suite raises on that (conftest) for jrnn's code."""
    return jax.numpy_rank_promotion("allow")


def randomized(layer, seed=0):
    """``layer`` built for ``(B, T, D)`` inputs, every weight drawn N(0, 0.5²)."""
    rng = np.random.default_rng(seed)
    with keras_allows_broadcasts():
        layer.build((None, None, D))
        layer.set_weights([(0.5 * rng.standard_normal(w.shape)).astype(np.float32) for w in layer.get_weights()])
    return layer


def call(layer, xs):
    """``layer(xs)`` in float32 arithmetic: Keras' fused JAX GRU without bias makes float64 zeros
    when x64 is on (conftest) and then fails its own scan's dtype check."""
    with keras_allows_broadcasts(), jax.enable_x64(False):
        return np.asarray(layer(xs))


LAYERS = {
    "simple_rnn_relu": lambda: keras.layers.SimpleRNN(H, activation="relu", return_sequences=True),
    "lstm": lambda: keras.layers.LSTM(H, return_sequences=True),
    "gru_reset_after": lambda: keras.layers.GRU(H, return_sequences=True),
    "gru_reset_before": lambda: keras.layers.GRU(H, reset_after=False, return_sequences=True),
    "lstm_no_bias": lambda: keras.layers.LSTM(H, use_bias=False, return_sequences=True),
    "gru_no_bias": lambda: keras.layers.GRU(H, use_bias=False, return_sequences=True),
    "bidirectional_gru_before": lambda: keras.layers.Bidirectional(
        keras.layers.GRU(H, reset_after=False, return_sequences=True)
    ),
    "bidirectional_lstm_ave": lambda: keras.layers.Bidirectional(
        keras.layers.LSTM(H, return_sequences=True), merge_mode="ave"
    ),
    "bidirectional_rnn_final": lambda: keras.layers.Bidirectional(keras.layers.SimpleRNN(H)),
}


@pytest.fixture(scope="module")
def xs():
    return np.random.default_rng(1).standard_normal((B, T, D)).astype(np.float32)


@pytest.mark.parametrize("name", list(LAYERS))
def test_from_keras_matches_keras(name, xs):
    layer = randomized(LAYERS[name]())
    want = call(layer, xs)
    model, params = interop.from_keras(layer)
    got, _ = model.apply(params, jnp.asarray(xs))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=TOL, atol=TOL)
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(params))

    # and back: a layer of the same class and options with the same weights
    back = interop.to_keras(model, params, use_bias=getattr(layer, "forward_layer", layer).use_bias)
    assert type(back) is type(layer)
    for w_back, w in zip(back.get_weights(), layer.get_weights(), strict=True):
        np.testing.assert_array_equal(w_back, w)


def test_keras_gru_maps_blocks_and_biases():
    """Keras' z, r, h blocks become jrnn's r, z, n; reset_after=True's (2, 3H) bias is (b_x, b_h)."""
    layer = randomized(keras.layers.GRU(H))
    kernel, recurrent, bias = layer.get_weights()
    model, params = interop.from_keras(layer)
    p = params.layers[0]
    np.testing.assert_array_equal(np.asarray(p.w_x[:, :H]), kernel[:, H : 2 * H])  # r
    np.testing.assert_array_equal(np.asarray(p.w_h[:, H : 2 * H]), recurrent[:, :H])  # z
    np.testing.assert_array_equal(np.asarray(p.b_h[2 * H :]), bias[1, 2 * H :])  # n's recurrent bias
    assert model.cell == jrnn.GRUCell(H) and model.pool == "final"  # return_sequences=False
    before = interop.from_keras(randomized(keras.layers.GRU(H, reset_after=False)))[1].layers[0]
    assert before.b_h is None and before.b_x.shape == (3 * H,)


def test_stack_and_to_keras_from_jrnn(xs):
    model = jrnn.RNN(jrnn.GRUCell(H, reset_after=False), num_layers=2, bidirectional=True, merge="sum")
    params = model.init(jax.random.PRNGKey(0), D, init="keras")
    params = jax.tree_util.tree_map(lambda a: a + 0.1, params)  # non-zero biases
    layers = interop.to_keras(model, params)
    assert isinstance(layers, list) and len(layers) == 2 and layers[0].merge_mode == "sum"
    want = call(layers[1], call(layers[0], xs))
    got, _ = model.apply(params, jnp.asarray(xs))
    np.testing.assert_allclose(np.asarray(got), want, rtol=TOL, atol=TOL)
    model_back, params_back = interop.from_keras(layers)
    assert model_back == model
    for a, b in zip(jax.tree_util.tree_leaves(params_back), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_errors():
    with pytest.raises(ValueError, match="must be built"):
        interop.from_keras(keras.layers.LSTM(H))
    with pytest.raises(TypeError, match="layer must be a keras.layers.SimpleRNN, LSTM, GRU"):
        interop.from_keras(randomized(keras.layers.Dense(H)))
    with pytest.raises(ValueError, match="go_backwards must be False"):
        interop.from_keras(randomized(keras.layers.LSTM(H, go_backwards=True)))
    with pytest.raises(ValueError, match="merge_mode must be one of"):
        interop.from_keras(randomized(keras.layers.Bidirectional(keras.layers.LSTM(H), merge_mode=None)))
    with pytest.raises(ValueError, match="layer.activation must be 'tanh'"):
        interop.from_keras(randomized(keras.layers.LSTM(H, activation="relu")))
    with pytest.raises(ValueError, match=r"layer\[0\].return_sequences must be True"):
        interop.from_keras([randomized(keras.layers.GRU(H)), randomized(keras.layers.GRU(H))])

    k = jax.random.PRNGKey(0)
    for cell in (jrnn.LSTMCell(H, proj_size=2), jrnn.LSTMCell(H, peepholes=True), jrnn.GRUCell(H, layer_norm=True)):
        model = jrnn.RNN(cell)
        with pytest.raises(ValueError, match="cell must be"):
            interop.to_keras(model, model.init(k, D))
    model = jrnn.RNN(jrnn.LSTMCell(H))
    params = model.init(k, D)  # forget bias 1
    with pytest.raises(ValueError, match="biases must be zero for use_bias=False"):
        interop.to_keras(model, params, use_bias=False)
    with pytest.raises(ValueError, match="output_size must be None"):
        ro = jrnn.RNN(jrnn.LSTMCell(H), output_size=1)
        interop.to_keras(ro, ro.init(k, D))
