"""jrnn.nnx.RNN: the NNX module against the functional RNN, training with nnx.Optimizer, dropout
modes, and nnx.jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jrnn
import jrnn.nnx as jnnx
from helpers import randomize

B, T, D, H = 3, 5, 4, 6


def max_err(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def inputs(seed=0):
    return jax.random.normal(jax.random.key(seed), (B, T, D), jnp.float64)


CONFIGS = {
    "lstm_bidir_readout": dict(cell=jrnn.LSTMCell(H, recurrent_init="normal"), num_layers=2, bidirectional=True, output_size=2),
    "gru": dict(cell=jrnn.GRUCell(H, recurrent_init="normal"), num_layers=1),
    "vanilla_relu_2": dict(cell=jrnn.VanillaCell(H, activation="relu", recurrent_init="normal"), num_layers=2),
    # sequence-level heads: pooled over time, the directions merged other than by concat
    "gru_bidir_mean_sum": dict(cell=jrnn.GRUCell(H, recurrent_init="normal"), bidirectional=True, pool="mean",
                               merge="sum", output_size=2),
    "lstm_flatten": dict(cell=jrnn.LSTMCell(H, recurrent_init="normal"), pool="flatten", num_steps=T, output_size=3),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_functional_apply(name):
    cfg = CONFIGS[name]
    rnn = jnnx.RNN(input_size=D, param_dtype=jnp.float64, rngs=nnx.Rngs(0), **cfg)
    model = rnn.spec
    assert model == jrnn.RNN(**cfg)
    params = rnn.params
    assert isinstance(params, jrnn.NetworkParams)
    assert all(a.dtype == jnp.float64 for a in jax.tree_util.tree_leaves(params))
    assert model.check_params(params) == D

    xs = inputs()
    lengths = jnp.array([T, 2, 4], jnp.int32)
    carries = randomize(rnn.initial_carries((B,)), jax.random.key(5), scale=1.0)
    ys, c = rnn(xs, carries, seq_lengths=lengths)
    ys_ref, c_ref = model.apply(params, xs, carries, seq_lengths=lengths)
    assert max_err((ys, c), (ys_ref, c_ref)) == 0.0


def test_structure_and_gradients():
    rnn = jnnx.RNN(input_size=D, param_dtype=jnp.float64, rngs=nnx.Rngs(0), **CONFIGS["lstm_bidir_readout"])
    model, params, xs = rnn.spec, rnn.params, inputs()
    ys_tm, _ = rnn(jnp.swapaxes(xs, 0, 1), time_major=True)
    assert max_err(jnp.swapaxes(ys_tm, 0, 1), model.apply(params, xs)[0]) < 1e-12

    # the nnx.Param leaves sit where NetworkParams has its arrays
    state = nnx.state(rnn, nnx.Param)
    assert len(jax.tree_util.tree_leaves(state)) == len(jax.tree_util.tree_leaves(params))
    assert np.array_equal(np.asarray(state["layers"][1][0]["w_x"][...]), np.asarray(params.layers[1][0].w_x))
    assert np.array_equal(np.asarray(state["readout"]["w"][...]), np.asarray(params.readout.w))

    # the gradient through the module is jax.grad through the functional model
    loss = lambda ys: jnp.sum(jnp.sin(ys))  # noqa: E731
    grads = nnx.grad(lambda m: loss(m(xs)[0]))(rnn)
    d_params = jax.grad(lambda p: loss(model.apply(p, xs)[0]))(params)
    d_ours = rnn.network_params(grads)
    assert jax.tree_util.tree_structure(d_ours) == jax.tree_util.tree_structure(d_params)
    assert max_err(d_ours, d_params) < 1e-12
    assert max_err(rnn.network_params(nnx.state(rnn)), params) == 0.0


def test_from_params_and_set_params():
    model = jrnn.RNN(jrnn.GRUCell(H, recurrent_init="normal"), num_layers=2, bidirectional=True, output_size=3)
    params = randomize(model.init(jax.random.key(0), D, jnp.float64), jax.random.key(1))
    rnn = jnnx.RNN.from_params(model, params)
    assert rnn.spec == model and rnn.input_size == D
    assert jax.tree_util.tree_structure(rnn.params) == jax.tree_util.tree_structure(params)
    assert max_err(rnn.network_params(), params) == 0.0
    xs = inputs()
    assert max_err(rnn(xs), model.apply(params, xs)) == 0.0

    # a sequence-level head keeps its pooling and merge through from_params
    pooled = jrnn.RNN(jrnn.LSTMCell(H), bidirectional=True, pool="max", merge="mean", output_size=2)
    pooled_params = randomize(pooled.init(jax.random.key(3), D, jnp.float64), jax.random.key(4))
    head = jnnx.RNN.from_params(pooled, pooled_params)
    assert head.spec == pooled
    ys, _ = head(inputs())
    assert ys.shape == (B, 2)
    assert max_err(ys, pooled.apply(pooled_params, inputs())[0]) == 0.0

    other = randomize(params, jax.random.key(2))
    rnn.set_params(other)
    assert max_err(rnn.params, other) == 0.0

    # from PyTorch to NNX in two lines
    torch = pytest.importorskip("torch")
    from jrnn import interop

    torch.manual_seed(0)
    module = torch.nn.LSTM(D, H, num_layers=2, batch_first=True).double()
    rnn = jnnx.RNN.from_params(*interop.from_torch(module))
    x = torch.randn(B, T, D, dtype=torch.float64)
    ys, _ = rnn(jnp.asarray(x.numpy()))
    assert float(np.max(np.abs(np.asarray(ys) - module(x)[0].detach().numpy()))) < 1e-9


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras' own
def test_a_keras_layer_without_sequences_becomes_a_pooled_module():
    """``from_keras`` turns ``return_sequences=False`` into ``pool="final"``; the module keeps it."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "jax")  # as tests/test_keras.py, before keras loads
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip(f"keras runs on {keras.backend.backend()} here, not jax")
    from jrnn import interop

    layer = keras.layers.LSTM(H, return_sequences=False)
    x = np.asarray(jax.random.normal(jax.random.key(7), (B, T, D)), np.float32)
    with jax.numpy_rank_promotion("allow"):  # Keras' own ops broadcast implicitly (conftest raises)
        expected = np.asarray(layer(x))
    rnn = jnnx.RNN.from_params(*interop.from_keras(layer))
    assert rnn.spec.pool == "final"
    ys, _ = rnn(jnp.asarray(x))
    assert ys.shape == (B, H)
    assert float(np.max(np.abs(np.asarray(ys) - expected))) < 1e-5


def test_mask_and_method_reach_apply():
    rnn = jnnx.RNN(jrnn.GRUCell(H, recurrent_init="normal"), D, num_layers=2, param_dtype=jnp.float64,
                   rngs=nnx.Rngs(0))
    model, params, xs = rnn.spec, rnn.params, inputs()
    mask = jnp.array([[True, False, True, True, False], [True] * T, [False, True, True, False, True]])
    ys, c = rnn(xs, mask=mask)
    ys_ref, c_ref = model.apply(params, xs, mask=mask)
    assert max_err((ys, c), (ys_ref, c_ref)) == 0.0
    assert max_err(ys, model.apply(params, xs)[0]) > 1e-3  # the mask changed the outputs
    ys_newton, _ = rnn(xs, method="newton")
    assert max_err(ys_newton, model.apply(params, xs, method="newton")[0]) == 0.0
    assert max_err(ys_newton, model.apply(params, xs)[0]) < 1e-8  # Newton converges to the sequential outputs


class Regressor(nnx.Module):
    """An NNX model with jrnn inside: recurrent encoder, dropout, linear head on the last step."""

    def __init__(self, rngs):
        self.rnn = jnnx.RNN(jrnn.LSTMCell(H), D, num_layers=2, dropout=0.2, param_dtype=jnp.float64, rngs=rngs)
        self.head = nnx.Linear(H, 1, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, xs):
        ys, _ = self.rnn(xs)
        return self.head(ys[:, -1])[:, 0]


def test_optimizer_reduces_loss_under_nnx_jit():
    key_x, key_y = jax.random.split(jax.random.key(0))
    xs = jax.random.normal(key_x, (16, T, D), jnp.float64)
    targets = jnp.tanh(xs[:, :, 0].sum(1)) + 0.1 * jax.random.normal(key_y, (16,), jnp.float64)
    model = Regressor(nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    def loss_fn(model):
        return jnp.mean((model(xs) - targets) ** 2)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def eval_loss(model):
        return loss_fn(model)

    model.eval()
    before = float(eval_loss(model))
    model.train()
    for _ in range(25):
        train_step(model, optimizer)
    model.eval()
    after = float(eval_loss(model))
    assert after < 0.5 * before, (before, after)
    assert int(optimizer.step[...]) == 25


def test_dropout_modes():
    rnn = jnnx.RNN(jrnn.GRUCell(H), D, num_layers=2, dropout=0.5, param_dtype=jnp.float64, rngs=nnx.Rngs(0, dropout=1))
    xs = inputs()
    reference, _ = rnn.spec.apply(rnn.params, xs)

    assert rnn.deterministic is False  # nnx.Dropout's default: on until eval()
    y1, _ = rnn(xs)
    y2, _ = rnn(xs)
    assert max_err(y1, reference) > 1e-3 and max_err(y1, y2) > 1e-3  # a fresh mask per call
    assert max_err(rnn(xs, deterministic=True)[0], reference) == 0.0

    key = jax.random.key(7)
    assert max_err(rnn(xs, rngs=key)[0], rnn.spec.apply(rnn.params, xs, dropout_key=key)[0]) == 0.0

    rnn.eval()
    assert rnn.deterministic is True
    assert max_err(rnn(xs)[0], reference) == 0.0
    assert max_err(rnn(xs, deterministic=False, rngs=key)[0], rnn.spec.apply(rnn.params, xs, dropout_key=key)[0]) == 0.0
    rnn.train()
    assert max_err(rnn(xs)[0], reference) > 1e-3
    view = nnx.view(rnn, deterministic=True)
    assert max_err(view(xs)[0], reference) == 0.0


def test_nnx_jit():
    rnn = jnnx.RNN(jrnn.LSTMCell(H), D, dropout=0.5, num_layers=2, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    xs = inputs()

    @nnx.jit
    def forward(rnn, xs):
        return rnn(xs)[0]

    rnn.eval()
    assert max_err(forward(rnn, xs), rnn.spec.apply(rnn.params, xs)[0]) < 1e-12
    rnn.train()
    y1, y2 = forward(rnn, xs), forward(rnn, xs)  # the rng stream advances across jitted calls
    assert max_err(y1, y2) > 1e-3


def test_errors():
    cell = jrnn.LSTMCell(H)
    with pytest.raises(TypeError, match="rngs must be an nnx.Rngs to initialize"):
        jnnx.RNN(cell, D)
    with pytest.raises(TypeError, match="cell must be a jrnn cell"):
        jnnx.RNN("lstm", D, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_size must be a positive int"):
        jnnx.RNN(cell, 0, rngs=nnx.Rngs(0))
    model = jrnn.RNN(cell, dropout=0.3)
    params = model.init(jax.random.key(0), D)
    with pytest.raises(ValueError, match=r"input_size must be 4 \(what params expect\)"):
        jnnx.RNN(cell, D + 1, dropout=0.3, params=params)
    with pytest.raises(TypeError, match="model must be a jrnn.RNN"):
        jnnx.RNN.from_params(cell, params)
    rnn = jnnx.RNN.from_params(model, params)  # no rngs: fine in eval mode, an error in train mode
    xs = jnp.zeros((B, T, D)) + 0.5
    with pytest.raises(ValueError, match="needs an nnx.Rngs"):
        rnn(xs)
    rnn.eval()
    rnn(xs)
    with pytest.raises(ValueError, match="xs must be an array with input_size 4"):
        rnn(jnp.zeros((B, T, D + 1)))
    with pytest.raises(TypeError, match="rngs must be an nnx.Rngs, nnx.RngStream or a jax.random key"):
        rnn(xs, deterministic=False, rngs=3)
