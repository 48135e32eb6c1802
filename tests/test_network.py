"""``RNN.apply`` against a plain NumPy loop for every option; streaming; dropout; readout."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
import reference as ref
from helpers import make, random_lengths, randomize


def build(kind, num_layers, bidirectional, output_size=None, activation="tanh", dropout=0.0, B=3, T=6, D=3, H=4, seed=0):
    model = jrnn.RNN(make(kind, H, activation), num_layers=num_layers, bidirectional=bidirectional,
                     output_size=output_size, dropout=dropout)
    k_p, k_x = jax.random.split(jax.random.PRNGKey(seed))
    params = randomize(model.init(k_p, D, jnp.float64), k_p)
    xs = jax.random.normal(k_x, (B, T, D), jnp.float64)
    return model, params, xs


def random_carries(model, B, seed=7):
    carries = model.initial_carries((B,), jnp.float64)
    return randomize(carries, jax.random.PRNGKey(seed))


def check_finals(kind, model, carries, finals):
    flat = [c for layer in carries for c in (layer if model.bidirectional else (layer,))]
    assert len(flat) == len(finals)
    for c, (h, cc) in zip(flat, finals):
        if kind == "lstm":
            np.testing.assert_allclose(c.h, h, rtol=1e-11, atol=1e-12)
            np.testing.assert_allclose(c.c, cc, rtol=1e-11, atol=1e-12)
        else:
            np.testing.assert_allclose(c, h, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, False), (1, True), (3, True)])
@pytest.mark.parametrize("with_lengths,readout", list(itertools.product([False, True], [False, True])))
def test_apply_matches_loop(kind, num_layers, bidirectional, with_lengths, readout):
    model, params, xs = build(kind, num_layers, bidirectional, output_size=2 if readout else None)
    lengths = random_lengths(np.random.default_rng(3), 3, 6) if with_lengths else None
    carries = random_carries(model, 3)
    ys, carries_T = model.apply(params, xs, carries, seq_lengths=lengths)
    want, finals = ref.network(kind, params, xs, lengths, bidirectional, carries=carries)
    assert ys.shape == (3, 6, model.out_size)
    np.testing.assert_allclose(ys, want, rtol=1e-11, atol=1e-12)
    check_finals(kind, model, carries_T, finals)


def test_relu_network_and_time_major():
    model, params, xs = build("vanilla", 2, True, output_size=3, activation="relu")
    lengths = jnp.array([6, 4, 1], jnp.int32)
    ys, _ = model.apply(params, xs, seq_lengths=lengths)
    want, _ = ref.network("vanilla", params, xs, lengths, True, activation="relu")
    np.testing.assert_allclose(ys, want, rtol=1e-11, atol=1e-12)
    ys_tm, _ = model.apply(params, jnp.swapaxes(xs, 0, 1), seq_lengths=lengths, time_major=True)
    np.testing.assert_allclose(jnp.swapaxes(ys_tm, 0, 1), ys, rtol=1e-13, atol=1e-14)
    ys_u, _ = model.apply(params, xs, seq_lengths=lengths, unroll=3, remat=True)
    np.testing.assert_allclose(ys_u, ys, rtol=1e-13, atol=1e-14)


def test_unbatched_input():
    model, params, xs = build("lstm", 2, True, output_size=2)
    ys, carries = model.apply(params, xs)
    ys1, carries1 = model.apply(params, xs[2])
    np.testing.assert_allclose(ys1, ys[2], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(carries1[1][0].h, carries[1][0].h[2], rtol=1e-12, atol=1e-13)
    ys2, _ = model.apply(params, xs[2], carries1)  # unbatched carries are accepted back
    assert ys2.shape == ys1.shape


@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
def test_streaming_in_chunks_equals_whole_sequence(kind):
    model, params, xs = build(kind, 3, False, output_size=2, T=10)
    ys, carries = model.apply(params, xs)
    ys_a, c_a = model.apply(params, xs[:, :4])
    ys_b, c_b = model.apply(params, xs[:, 4:], c_a)
    np.testing.assert_allclose(jnp.concatenate([ys_a, ys_b], axis=1), ys, rtol=1e-12, atol=1e-13)
    for a, b in zip(jax.tree_util.tree_leaves(c_b), jax.tree_util.tree_leaves(carries)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_padded_steps_output_zero_with_readout():
    model, params, xs = build("gru", 2, True, output_size=3)
    lengths = jnp.array([6, 2, 0], jnp.int32)
    ys, _ = model.apply(params, xs, seq_lengths=lengths)
    np.testing.assert_array_equal(ys[1, 2:], 0.0)
    np.testing.assert_array_equal(ys[2], 0.0)
    assert np.all(ys[1, :2] != 0.0)
    # and valid steps do not depend on what the padding holds
    xs_junk = xs.at[1, 2:].set(100.0)
    ys_junk, _ = model.apply(params, xs_junk, seq_lengths=lengths)
    np.testing.assert_array_equal(ys_junk, ys)


def test_dropout_masks_between_layers_are_variational():
    model, params, xs = build("vanilla", 3, False, dropout=0.5, B=4, T=5, H=8)
    key = jax.random.PRNGKey(42)
    ys_nokey, _ = model.apply(params, xs)
    ys_plain, _ = jrnn.RNN(model.cell, num_layers=3).apply(params, xs)
    np.testing.assert_array_equal(ys_nokey, ys_plain)  # no key, no dropout
    ys, _ = model.apply(params, xs, dropout_key=key)
    ys_again, _ = model.apply(params, xs, dropout_key=key)
    np.testing.assert_array_equal(ys, ys_again)
    assert not np.allclose(ys, ys_plain)
    # masks: one (B, H) mask per layer but the last, drawn from split(dropout_key, num_layers)
    keys = jax.random.split(key, 3)
    masks = [np.asarray(jax.random.bernoulli(keys[l], 0.5, (4, 8)), np.float64) / 0.5 for l in range(2)]
    want, _ = ref.network("vanilla", params, xs, masks=masks)
    np.testing.assert_allclose(ys, want, rtol=1e-11, atol=1e-12)
    # a dropped unit is dropped at every step: the second layer sees zeros in that column throughout
    assert 0.2 < (masks[0] == 0).mean() < 0.8


def test_dropout_rate_statistics():
    model = jrnn.RNN(jrnn.VanillaCell(64, activation="linear"), num_layers=2, dropout=0.25)
    params = model.init(jax.random.PRNGKey(0), 2, jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (256, 3, 2), jnp.float64)
    # make layer 2 an identity map of its input so its output reveals layer 1's mask
    p2 = jrnn.VanillaParams(jnp.eye(64), jnp.zeros((64, 64)), jnp.zeros(64))
    params = params._replace(layers=(params.layers[0], p2))
    ys, _ = model.apply(params, xs, dropout_key=jax.random.PRNGKey(5))
    ys_nd, _ = model.apply(params, xs)
    dropped = np.isclose(np.asarray(ys), 0.0) & ~np.isclose(np.asarray(ys_nd), 0.0)
    assert 0.22 < dropped.mean() < 0.28
    kept = ~dropped
    np.testing.assert_allclose(np.asarray(ys)[kept], np.asarray(ys_nd)[kept] / 0.75, rtol=1e-12)
    assert np.all(dropped == dropped[:, :1, :])  # same mask at every step of a sequence


def test_init_structure():
    model = jrnn.RNN(jrnn.LSTMCell(5), num_layers=2, bidirectional=True, output_size=3)
    params = model.init(jax.random.PRNGKey(0), 7)
    assert isinstance(params, jrnn.NetworkParams) and len(params.layers) == 2
    fwd, bwd = params.layers[0]
    assert fwd.w_x.shape == (7, 20) and bwd.w_x.shape == (7, 20)
    assert not np.allclose(fwd.w_x, bwd.w_x)
    assert params.layers[1][0].w_x.shape == (10, 20)
    assert isinstance(params.readout, jrnn.Readout)
    assert params.readout.w.shape == (10, 3) and params.readout.b.shape == (3,)
    assert jrnn.RNN(jrnn.GRUCell(4)).init(jax.random.PRNGKey(0), 2).readout is None


def test_jit_vmap_grad_through_apply():
    model, params, xs = build("lstm", 2, True, output_size=1, B=2, T=4)
    lengths = jnp.array([4, 2], jnp.int32)
    loss = lambda p, xs: jnp.sum(model.apply(p, xs, seq_lengths=lengths)[0] ** 2)  # noqa: E731
    g = jax.grad(loss)(params, xs)
    g_jit = jax.jit(jax.grad(loss))(params, xs)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_jit)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
    from jax.test_util import check_grads

    check_grads(loss, (params, xs), order=1, modes=["rev"], eps=1e-5)
    per_seq = jax.vmap(lambda x: model.apply(params, x)[0])(xs)
    np.testing.assert_allclose(per_seq, model.apply(params, xs)[0], rtol=1e-12, atol=1e-13)


def test_model_is_static_under_jit():
    model, params, xs = build("gru", 1, False)
    f = jax.jit(lambda model, p, xs: model.apply(p, xs)[0], static_argnums=0)
    np.testing.assert_allclose(f(model, params, xs), model.apply(params, xs)[0], rtol=1e-13)
    assert hash(model) == hash(jrnn.RNN(jrnn.GRUCell(4)))
