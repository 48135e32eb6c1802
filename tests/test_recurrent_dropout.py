"""``RNN(input_dropout=, recurrent_dropout=)``: one mask per sequence on each layer's input and on
the ``h`` entering its recurrent products (Gal & Ghahramani 2016).

The forward is checked against an independent NumPy loop that applies the same masks, written from
the equations (the GRU's ``z·h`` and the LSTM's ``c`` unmasked); the masks follow the documented
key derivation (checked against ``jax.random`` directly). Gradients: the hand-written backward
equals autodiff, and autodiff equals finite differences, with every dropout on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jrnn
from jrnn import bptt
from jrnn.network import LAYER_DROPOUT_STREAM, dropout_scales, layer_dropout_scales

from helpers import randomize


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


# --------------------------------------------------------------------------------------------
# The NumPy reference: one step of each cell with the recurrent mask m_h at the recurrent
# products only, written from the cells' equations, one gate block at a time.


def _np(a):
    return None if a is None else np.asarray(a, np.float64)


def _blocks(w, n):
    return np.split(_np(w), n, axis=-1)


def vanilla_step(cell, p, carry, x, m_h):
    h = carry
    return np.tanh(x @ _np(p.w_x) + (h * m_h) @ _np(p.w_h) + _np(p.b))


def lstm_step(cell, p, carry, x, m_h):
    h, c = carry
    wx_i, wx_f, wx_g, wx_o = _blocks(p.w_x, 4)
    wh_i, wh_f, wh_g, wh_o = _blocks(p.w_h, 4)
    b_i, b_f, b_g, b_o = _blocks(p.b, 4)
    hm = h * m_h  # the recurrent input: masked h (the projected one with proj_size)
    a_i = x @ wx_i + hm @ wh_i + b_i
    a_f = x @ wx_f + hm @ wh_f + b_f
    a_g = x @ wx_g + hm @ wh_g + b_g
    a_o = x @ wx_o + hm @ wh_o + b_o
    if cell.peepholes:
        w_ci, w_cf, w_co = np.split(_np(p.w_c), 3)
        a_i = a_i + w_ci * c  # the entering, unmasked cell state
        a_f = a_f + w_cf * c
    i, f, g = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g)
    c_new = f * c + i * g
    if cell.peepholes:
        a_o = a_o + w_co * c_new
    m = sigmoid(a_o) * np.tanh(c_new)
    h_new = m @ _np(p.w_hr) if cell.proj_size else m
    return h_new, c_new


def gru_step(cell, p, carry, x, m_h):
    h = carry
    wx_r, wx_z, wx_n = _blocks(p.w_x, 3)
    wh_r, wh_z, wh_n = _blocks(p.w_h, 3)
    bx_r, bx_z, bx_n = _blocks(p.b_x, 3)
    hm = h * m_h
    if cell.reset_after:
        bh_r, bh_z, bh_n = _blocks(p.b_h, 3)
        r = sigmoid(x @ wx_r + bx_r + hm @ wh_r + bh_r)
        z = sigmoid(x @ wx_z + bx_z + hm @ wh_z + bh_z)
        n = np.tanh(x @ wx_n + bx_n + r * (hm @ wh_n + bh_n))
    else:
        r = sigmoid(x @ wx_r + bx_r + hm @ wh_r)
        z = sigmoid(x @ wx_z + bx_z + hm @ wh_z)
        n = np.tanh(x @ wx_n + bx_n + (r * hm) @ wh_n)
    return (1.0 - z) * n + z * h  # the interpolation reads the unmasked h


STEPS = {jrnn.VanillaCell: vanilla_step, jrnn.LSTMCell: lstm_step, jrnn.GRUCell: gru_step}


def ref_layer(cell, p, xs, lengths, reverse, m_x, m_h):
    """One direction over batch-major ``xs (B, T, D)`` with one input mask ``m_x (B, D)`` and one
    recurrent mask ``m_h (B, R)`` per sequence (ones when off); zero outputs past each length."""
    B, T, _ = xs.shape
    R, H = cell.output_size, cell.hidden_size
    step = STEPS[type(cell)]
    ys = np.zeros((B, T, R))
    for b in range(B):
        carry = (np.zeros(R), np.zeros(H)) if isinstance(cell, jrnn.LSTMCell) else np.zeros(R)
        L = int(lengths[b])
        for t in (range(L - 1, -1, -1) if reverse else range(L)):
            carry = step(cell, p, carry, xs[b, t] * m_x[b], m_h[b])
            ys[b, t] = carry[0] if isinstance(carry, tuple) else carry
    return ys


def ref_network(model, params, xs, lengths, drops, scales):
    """The stacked, bidirectional network with the given per-layer/direction masks."""
    h = np.asarray(xs, np.float64)
    B, T, _ = h.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    for layer, lp in enumerate(params.layers):
        dirs = lp if model.bidirectional else (lp,)
        outs = []
        for d, pd in enumerate(dirs):
            drop = drops[layer][d]
            m_x = np.ones((B, h.shape[-1])) if drop is None or drop.x is None else _np(drop.x)
            m_h = np.ones((B, model.cell.output_size)) if drop is None or drop.h is None else _np(drop.h)
            outs.append(ref_layer(model.cell, pd, h, lengths, d == 1, m_x, m_h))
        h = np.concatenate(outs, axis=-1)
        if scales[layer] is not None:
            h = h * _np(scales[layer])[:, None, :]
    if params.readout is not None:
        h = h @ _np(params.readout.w) + _np(params.readout.b)
        h = h * (np.arange(T)[None, :] < lengths[:, None])[..., None]
    return h


# --------------------------------------------------------------------------------------------

CELLS = {
    "vanilla": lambda: jrnn.VanillaCell(4),
    "lstm": lambda: jrnn.LSTMCell(4),
    "lstm_proj": lambda: jrnn.LSTMCell(4, proj_size=3),
    "lstm_peep": lambda: jrnn.LSTMCell(4, peepholes=True),
    "lstm_all": lambda: jrnn.LSTMCell(4, proj_size=2, peepholes=True, layer_norm=True),
    "gru": lambda: jrnn.GRUCell(4),
    "gru_reset_before": lambda: jrnn.GRUCell(4, reset_after=False),
    "gru_ln": lambda: jrnn.GRUCell(4, layer_norm=True),
}
REFERENCE_CELLS = [k for k in CELLS if k not in ("lstm_all", "gru_ln")]  # the NumPy loop has no layer norm
GRADIENT_CELLS = [k for k in CELLS if k not in ("lstm_proj", "lstm_peep")]  # lstm_all has both options

KEY = jax.random.PRNGKey(11)
LENGTHS = jnp.asarray([6, 2, 5, 1], jnp.int32)  # for T = 6


def lengths_for(T):
    return jnp.asarray([T, 2, T - 1, 1], jnp.int32)


def setup(kind, *, num_layers=2, bidirectional=True, output_size=2, dropout=0.25, input_dropout=0.3,
          recurrent_dropout=0.4, B=4, T=6, D=3, seed=0):  # fmt: skip
    model = jrnn.RNN(CELLS[kind](), num_layers=num_layers, bidirectional=bidirectional, output_size=output_size,
                     dropout=dropout, input_dropout=input_dropout, recurrent_dropout=recurrent_dropout)  # fmt: skip
    k_p, k_x, k_t = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = randomize(model.init(k_p, D, jnp.float64), k_p)
    xs = jax.random.normal(k_x, (B, T, D), jnp.float64)
    targets = jax.random.normal(k_t, (B, T, model.out_size), jnp.float64)
    return model, params, xs, targets


def masks_of(model, key, B, D):
    return layer_dropout_scales(model, key, B, D, jnp.float64), dropout_scales(model, key, B, jnp.float64)


# --------------------------------------------------------------------------------------------
# Forward against the NumPy loop


@pytest.mark.parametrize("kind", REFERENCE_CELLS)
def test_forward_matches_numpy_loop(kind):
    model, params, xs, _ = setup(kind)
    drops, scales = masks_of(model, KEY, *xs.shape[::2])
    ys, _ = model.apply(params, xs, seq_lengths=LENGTHS, dropout_key=KEY)
    want = ref_network(model, params, xs, LENGTHS, drops, scales)
    np.testing.assert_allclose(ys, want, rtol=1e-10, atol=1e-12)
    # the masks did something: without them the reference differs
    plain = ref_network(model, params, xs, LENGTHS, [(None, None)] * 2, scales)
    assert np.max(np.abs(plain - want)) > 1e-3


@pytest.mark.parametrize("kind", ["lstm", "gru_reset_before"])
def test_forward_unidirectional_single_layer_without_lengths(kind):
    model, params, xs, _ = setup(kind, num_layers=1, bidirectional=False, output_size=None, dropout=0.0)
    drops, scales = masks_of(model, KEY, *xs.shape[::2])
    want = ref_network(model, params, xs, None, drops, scales)
    for backward in ("autodiff", "bptt"):
        ys, _ = model.apply(params, xs, dropout_key=KEY, backward=backward)
        np.testing.assert_allclose(ys, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("input_dropout, recurrent_dropout", [(0.5, 0.0), (0.0, 0.5)])
def test_one_kind_alone(input_dropout, recurrent_dropout):
    model, params, xs, _ = setup("gru", input_dropout=input_dropout, recurrent_dropout=recurrent_dropout)
    drops, scales = masks_of(model, KEY, *xs.shape[::2])
    assert all((d.x is None) == (input_dropout == 0) and (d.h is None) == (recurrent_dropout == 0)
               for layer in drops for d in layer)  # fmt: skip
    ys, _ = model.apply(params, xs, seq_lengths=LENGTHS, dropout_key=KEY)
    np.testing.assert_allclose(ys, ref_network(model, params, xs, LENGTHS, drops, scales), rtol=1e-10, atol=1e-12)


def test_masks_follow_the_documented_derivation():
    model, params, xs, _ = setup("lstm_proj", input_dropout=0.3, recurrent_dropout=0.6)
    B, _, D = xs.shape
    drops = layer_dropout_scales(model, KEY, B, D, jnp.float64)
    keys = jax.random.split(jax.random.fold_in(KEY, LAYER_DROPOUT_STREAM), (2, 2, 2))
    for layer in range(2):
        for d in range(2):
            size = D if layer == 0 else model.top_size
            m_x = np.asarray(jax.random.bernoulli(keys[layer, d, 0], 0.7, (B, size)), np.float64) / 0.7
            m_h = np.asarray(jax.random.bernoulli(keys[layer, d, 1], 0.4, (B, 3)), np.float64) / 0.4  # R = proj_size
            np.testing.assert_array_equal(drops[layer][d].x, m_x)
            np.testing.assert_array_equal(drops[layer][d].h, m_h)
    # the masks between layers are those of before (split(dropout_key, num_layers)), untouched
    keep = 0.75
    want = np.asarray(jax.random.bernoulli(jax.random.split(KEY, 2)[0], keep, (B, model.top_size)), np.float64) / keep
    np.testing.assert_array_equal(dropout_scales(model, KEY, B, jnp.float64)[0], want)


# --------------------------------------------------------------------------------------------
# Gradients: hand-written backward == autodiff == finite differences


def mse(ys, targets, lengths):
    return jrnn.losses.mse(ys, targets, lengths)


hand_value_and_grad = jax.jit(bptt.value_and_grad, static_argnums=0, static_argnames=("remat",))


def max_diff(a, b):
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in pairs)


def assert_matches_finite_differences(f, params, grads, eps=1e-6):
    """``<grads, v>`` equals the central difference of ``f`` along a random direction ``v``."""
    v = randomize(params, jax.random.PRNGKey(99), scale=1.0)
    shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, params, v)  # noqa: E731
    fd = (f(shift(eps)) - f(shift(-eps))) / (2 * eps)
    dot = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(v)))
    assert abs(float(fd - dot)) <= 1e-6 * max(1.0, abs(float(dot)))
    assert abs(float(dot)) > 1e-3  # a direction the loss depends on


def network_loss(model, xs, targets, lengths, key):
    def loss(p, backward="autodiff", remat=False):
        ys, _ = model.apply(p, xs, seq_lengths=lengths, dropout_key=key, backward=backward, remat=remat)
        return mse(ys, targets, lengths)

    return loss


@pytest.mark.parametrize("kind", GRADIENT_CELLS)
def test_gradient_triangle(kind):
    """Stacked, bidirectional, seq_lengths, all three dropouts: the hand-written backward (through
    ``apply(backward="bptt")`` and ``jrnn.bptt.value_and_grad``) equals autodiff, and autodiff
    equals finite differences."""
    model, params, xs, targets = setup(kind, T=5)
    lengths = lengths_for(5)
    loss = network_loss(model, xs, targets, lengths, KEY)
    value, g_auto = jax.jit(jax.value_and_grad(loss))(params)
    v_bptt, g_bptt = jax.jit(jax.value_and_grad(lambda p: loss(p, "bptt")))(params)
    v_hand, g_hand = hand_value_and_grad(model, params, xs, targets, seq_lengths=lengths, dropout_key=KEY)
    np.testing.assert_allclose(v_bptt, value, rtol=1e-12)
    np.testing.assert_allclose(v_hand, value, rtol=1e-12)
    assert max_diff(g_bptt, g_auto) < 1e-11
    assert max_diff(g_hand, g_auto) < 1e-11
    assert_matches_finite_differences(jax.jit(loss), params, g_auto)


@pytest.mark.parametrize("kind", ["lstm_all", "gru_reset_before"])
def test_remat_gradients_with_dropout(kind):
    """``remat``: the backward recomputes the residuals chunk by chunk with the same masks."""
    model, params, xs, targets = setup(kind, T=5)
    lengths = lengths_for(5)
    loss = network_loss(model, xs, targets, lengths, KEY)
    g_auto = jax.jit(jax.grad(loss))(params)
    g_remat = jax.jit(jax.grad(lambda p: loss(p, "bptt", True)))(params)
    _, g_hand = hand_value_and_grad(model, params, xs, targets, seq_lengths=lengths, dropout_key=KEY, remat=True)
    assert max_diff(g_remat, g_auto) < 1e-11
    assert max_diff(g_hand, g_auto) < 1e-11


@pytest.mark.parametrize("kind", ["lstm_proj", "gru_reset_before"])
def test_gradient_of_inputs_and_carries(kind):
    """The input mask reaches ``d_xs`` and the recurrent mask ``d_carry0`` in the hand backward."""
    model, params, xs, targets = setup(kind, T=4, num_layers=1, bidirectional=False, output_size=None, dropout=0.0)
    lengths = lengths_for(4)
    carries = jrnn.RNN(model.cell).initial_carries((4,), jnp.float64)
    carries = randomize(carries, jax.random.PRNGKey(3))

    def loss(xs, carries, backward):
        ys, out = model.apply(params, xs, carries, seq_lengths=lengths, dropout_key=KEY, backward=backward)
        return jnp.sum(ys * targets[..., : ys.shape[-1]]) + jnp.sum(jax.tree_util.tree_leaves(out)[0] ** 2)

    g_auto = jax.grad(loss, argnums=(0, 1))(xs, carries, "autodiff")
    g_bptt = jax.grad(loss, argnums=(0, 1))(xs, carries, "bptt")
    for a, b in zip(jax.tree_util.tree_leaves(g_bptt), jax.tree_util.tree_leaves(g_auto)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    check_grads(lambda x, c: loss(x, c, "bptt"), (xs, carries), order=1, modes=["rev"], eps=1e-6, atol=1e-6,
                rtol=1e-6)  # fmt: skip
    # inputs dropped by the mask get no gradient at any step
    m_x = np.asarray(layer_dropout_scales(model, KEY, 4, 3, jnp.float64)[0][0].x)
    d_xs = np.asarray(g_bptt[0])
    assert (m_x == 0).any()
    np.testing.assert_array_equal(d_xs[np.broadcast_to((m_x == 0)[:, None, :], d_xs.shape)], 0.0)


def test_truncation_past_the_sequence_is_full_bptt_with_dropout():
    """``truncation`` and the masks compose: with ``k >= T`` the truncated hand backward (cut
    bookkeeping on) gives the untruncated gradient, masks included."""
    model, params, xs, targets = setup("lstm", num_layers=1, bidirectional=False, T=6, dropout=0.0)
    _, g_full = bptt.value_and_grad(model, params, xs, targets, seq_lengths=LENGTHS, dropout_key=KEY)
    _, g_cut = bptt.value_and_grad(model, params, xs, targets, seq_lengths=LENGTHS, dropout_key=KEY, truncation=6)
    for a, b in zip(jax.tree_util.tree_leaves(g_full), jax.tree_util.tree_leaves(g_cut)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)  # k >= T: full BPTT


# --------------------------------------------------------------------------------------------
# The masks: one per sequence, off without a key, different keys, statistics


def test_mask_is_the_same_at_every_step():
    """A linear cell that copies its carry (``w_h = I``, no input) shows the recurrent mask as
    ``h_t = h_0 · m_h^t``; one that copies its input (``w_x = I``, ``w_h = 0``) shows the input
    mask as ``y_t = x_t · m_x``. A mask redrawn per step would give other powers and patterns."""
    H, B, T = 16, 8, 5
    model = jrnn.RNN(jrnn.VanillaCell(H, activation="linear"), input_dropout=0.5, recurrent_dropout=0.5)
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, H), jnp.float64)
    h0 = jax.random.normal(jax.random.PRNGKey(2), (B, H), jnp.float64)
    drop = layer_dropout_scales(model, KEY, B, H, jnp.float64)[0][0]
    m_x, m_h = np.asarray(drop.x), np.asarray(drop.h)
    assert 0 < (m_h == 0).sum() < m_h.size and 0 < (m_x == 0).sum() < m_x.size

    copy_carry = jrnn.NetworkParams((jrnn.VanillaParams(jnp.zeros((H, H)), jnp.eye(H), jnp.zeros(H)),), None)
    ys, _ = model.apply(copy_carry, xs, (h0,), dropout_key=KEY)
    want = np.stack([np.asarray(h0) * m_h ** (t + 1) for t in range(T)], axis=1)
    np.testing.assert_allclose(ys, want, rtol=1e-12, atol=0)

    copy_input = jrnn.NetworkParams((jrnn.VanillaParams(jnp.eye(H), jnp.zeros((H, H)), jnp.zeros(H)),), None)
    for backward in ("autodiff", "bptt"):
        ys, _ = model.apply(copy_input, xs, dropout_key=KEY, backward=backward)
        np.testing.assert_allclose(ys, np.asarray(xs) * m_x[:, None, :], rtol=1e-12, atol=0)


def test_no_key_means_no_dropout_and_zero_rates_with_a_key_too():
    model, params, xs, _ = setup("lstm_peep")
    plain = jrnn.RNN(model.cell, num_layers=2, bidirectional=True, output_size=2)
    want, _ = plain.apply(params, xs, seq_lengths=LENGTHS)
    for backward in ("autodiff", "bptt"):
        got, _ = model.apply(params, xs, seq_lengths=LENGTHS, backward=backward)  # rates > 0, no key
        np.testing.assert_array_equal(got, want)
        got, _ = plain.apply(params, xs, seq_lengths=LENGTHS, dropout_key=KEY, backward=backward)  # rates 0, key
        np.testing.assert_array_equal(got, want)
    assert all(d is None for layer in layer_dropout_scales(plain, KEY, 4, 3, jnp.float64) for d in layer)
    assert all(d is None for layer in layer_dropout_scales(model, None, 4, 3, jnp.float64) for d in layer)


def test_different_keys_and_layers_differ():
    model, params, xs, _ = setup("gru")
    a, _ = model.apply(params, xs, dropout_key=jax.random.PRNGKey(1))
    b, _ = model.apply(params, xs, dropout_key=jax.random.PRNGKey(2))
    again, _ = model.apply(params, xs, dropout_key=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, again)
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) > 1e-3
    model = jrnn.RNN(jrnn.GRUCell(64), num_layers=2, bidirectional=True, input_dropout=0.5, recurrent_dropout=0.5)
    drops = layer_dropout_scales(model, KEY, 32, 128, jnp.float64)
    masks = [np.asarray(m) for layer in drops for d in layer for m in d]  # 8 masks of (32, 128) or (32, 64)
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            if masks[i].shape == masks[j].shape:
                assert not np.array_equal(masks[i], masks[j]), (i, j)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_rate_statistics(rate):
    model = jrnn.RNN(jrnn.LSTMCell(256), input_dropout=rate, recurrent_dropout=rate)
    drop = layer_dropout_scales(model, KEY, 1024, 256, jnp.float32)[0][0]
    for m in (np.asarray(drop.x), np.asarray(drop.h)):
        assert m.shape == (1024, 256) and m.dtype == np.float32
        n = m.size
        assert abs((m == 0).mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
        np.testing.assert_allclose(m[m != 0], 1.0 / (1.0 - rate), rtol=1e-6)  # inverted dropout


# --------------------------------------------------------------------------------------------
# Other paths: min cells, parallel methods, jit, training


@pytest.mark.parametrize("cell", [jrnn.MinGRUCell(4), jrnn.MinLSTMCell(4)])
def test_min_cells_take_input_dropout_and_refuse_recurrent_dropout(cell):
    with pytest.raises(ValueError, match=r"recurrent_dropout must be 0.0 for Min\w+Cell .* got 0.2"):
        jrnn.RNN(cell, recurrent_dropout=0.2)
    model = jrnn.RNN(cell, input_dropout=0.5)
    params = randomize(model.init(KEY, 3, jnp.float64), KEY)
    xs = jax.random.normal(jax.random.PRNGKey(4), (4, 6, 3), jnp.float64)
    m_x = layer_dropout_scales(model, KEY, 4, 3, jnp.float64)[0][0].x
    want, _ = jrnn.RNN(cell).apply(params, xs * m_x[:, None, :], seq_lengths=LENGTHS)
    for method in ("sequential", "newton"):
        got, _ = model.apply(params, xs, seq_lengths=LENGTHS, dropout_key=KEY, method=method)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_parallel_methods_refuse_recurrent_dropout_with_a_key():
    model, params, xs, _ = setup("gru", num_layers=1, bidirectional=False, output_size=None, dropout=0.0)
    with pytest.raises(ValueError, match=r"recurrent_dropout must be 0.0 with method='newton'.*got 0.4"):
        model.apply(params, xs, dropout_key=KEY, method="newton")
    got, _ = model.apply(params, xs, method="newton")  # no key: inference, no dropout
    want, _ = model.apply(params, xs)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_jitted_training_step_draws_masks_from_its_key():
    model, params, xs, targets = setup("lstm", T=4)

    @jax.jit
    def step(p, key):
        loss = lambda p: mse(model.apply(p, xs, dropout_key=key, backward="bptt")[0], targets, None)  # noqa: E731
        return jax.value_and_grad(loss)(p)

    v1, g1 = step(params, jax.random.PRNGKey(1))
    v2, _ = step(params, jax.random.PRNGKey(2))
    v1_again, g1_again = step(params, jax.random.PRNGKey(1))
    assert float(v1) != float(v2)
    np.testing.assert_array_equal(v1, v1_again)
    v_hand, g_hand = bptt.value_and_grad(model, params, xs, targets, dropout_key=jax.random.PRNGKey(1))
    np.testing.assert_allclose(v_hand, v1, rtol=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(g_hand), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


def test_nnx_module_carries_the_rates():
    """``jrnn.nnx.RNN`` with recurrent dropout alone: on in train mode (the functional model's
    masks for the same key, a typed key), off in eval mode; ``from_params`` keeps both rates."""
    from flax import nnx

    import jrnn.nnx as jnnx

    rnn = jnnx.RNN(jrnn.LSTMCell(4), 3, num_layers=2, input_dropout=0.2, recurrent_dropout=0.5,
                   param_dtype=jnp.float64, rngs=nnx.Rngs(0, dropout=1))  # fmt: skip
    assert (rnn.spec.input_dropout, rnn.spec.recurrent_dropout) == (0.2, 0.5)
    xs = jax.random.normal(jax.random.PRNGKey(5), (4, 6, 3), jnp.float64)
    key = jax.random.key(7)
    want, _ = rnn.spec.apply(rnn.params, xs, dropout_key=key)
    np.testing.assert_array_equal(rnn(xs, rngs=key)[0], want)
    plain, _ = rnn.spec.apply(rnn.params, xs)
    assert np.max(np.abs(np.asarray(rnn(xs)[0]) - np.asarray(plain))) > 1e-3  # its own stream: dropout on
    rnn.eval()
    np.testing.assert_array_equal(rnn(xs)[0], plain)
    again = jnnx.RNN.from_params(rnn.spec, rnn.params, rngs=nnx.Rngs(0))
    assert again.spec == rnn.spec


def test_fit_uses_a_key_for_recurrent_dropout_alone():
    """``fit`` draws a fresh key per step when only ``recurrent_dropout`` is on: with a learning
    rate too small to change the parameters, the losses of the same batch differ from step to step through the masks."""
    model = jrnn.RNN(jrnn.GRUCell(4), output_size=1, recurrent_dropout=0.3)
    params = randomize(model.init(KEY, 2, jnp.float64), KEY)
    xs = jax.random.normal(jax.random.PRNGKey(1), (8, 5, 2), jnp.float64)
    ys = jax.random.normal(jax.random.PRNGKey(2), (8, 5, 1), jnp.float64)
    optimizer = jrnn.optim.make_optimizer("sgd", 1e-30)  # no visible update
    result = jrnn.train.fit(model, params, optimizer, (xs, ys), steps=3, loss="mse", batch_size=8, shuffle=False,
                            progress=False, log_every=1, key=KEY)  # fmt: skip
    losses = result.history["train"]["loss"]
    assert len(losses) == 3 and len(set(losses)) == 3


# --------------------------------------------------------------------------------------------
# Errors


BAD_RATES = [(-0.1, ValueError), (1.0, ValueError), (1.5, ValueError), (float("nan"), ValueError),
             ("0.5", (TypeError, ValueError)), (None, (TypeError, ValueError)), (True, (TypeError, ValueError))]


@pytest.mark.parametrize("name", ["input_dropout", "recurrent_dropout"])
@pytest.mark.parametrize("value, error", BAD_RATES)
def test_bad_rates(name, value, error):
    with pytest.raises(error, match=rf"{name} must be a number in \[0, 1\), got {value!r}".replace("(", r"\(")):
        jrnn.RNN(jrnn.LSTMCell(4), **{name: value})
