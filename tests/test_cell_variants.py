"""The cell options: GRU reset-before (``reset_after=False``), LSTM projection (``proj_size``),
peepholes and layer normalization (LSTM and GRU).

For each: the forward against a NumPy loop written here from the equations (and the projection
against ``torch.nn.LSTM(proj_size=P)``), and the gradient triangle in float64 on random
parameters, carries and inputs, with ``seq_lengths`` holding 0 and T: the hand-written backward
(fast, per-step reference and ``remat``) equals ``jax.vjp`` of the autodiff scan to ~1e-10, and
autodiff equals central finite differences. Keras' side is in ``test_keras.py``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from helpers import randomize

B, T, D, H, P = 3, 5, 2, 4, 2
LENGTHS = np.array([T, 0, 3])

# name -> (cell, reverse of its single-layer checks; the network checks run both directions)
CASES = {
    "lstm_proj": (jrnn.LSTMCell(H, proj_size=P), False),
    "lstm_peepholes": (jrnn.LSTMCell(H, peepholes=True), True),
    "lstm_layer_norm": (jrnn.LSTMCell(H, layer_norm=True), False),
    "lstm_all": (jrnn.LSTMCell(H, proj_size=P, peepholes=True, layer_norm=True), True),
    "gru_reset_before": (jrnn.GRUCell(H, reset_after=False), True),
    "gru_layer_norm": (jrnn.GRUCell(H, layer_norm=True), False),
}
NETWORK_CASES = ["lstm_all", "gru_reset_before", "gru_layer_norm"]


def setup(cell, seed=0):
    k_p, k_c, k_x, k_d, k_e = jax.random.split(jax.random.PRNGKey(seed), 5)
    params = randomize(cell.init(k_p, D, jnp.float64), k_p)
    carry = randomize(cell.initial_carry((B,), jnp.float64), k_c)
    xs = jax.random.normal(k_x, (B, T, D), jnp.float64)
    d_ys = jax.random.normal(k_d, (B, T, cell.output_size), jnp.float64)
    d_carry = randomize(carry, k_e)
    return params, carry, xs, d_ys, d_carry


# --------------------------------------------------------------------------------------------
# NumPy references, from the equations of the cells' docstrings


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _ln(v):
    mu = v.mean(-1, keepdims=True)
    return (v - mu) / np.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + 1e-5)


def np_lstm_step(cell, p, carry, x):
    h, c = carry
    if cell.layer_norm:
        a = _ln(x @ p.w_x) * p.gamma_x + _ln(h @ p.w_h) * p.gamma_h + p.b
    else:
        a = x @ p.w_x + h @ p.w_h + p.b
    a_i, a_f, a_g, a_o = np.split(a, 4, axis=-1)
    if cell.peepholes:
        w_ci, w_cf, w_co = np.split(p.w_c, 3)
        a_i, a_f = a_i + w_ci * c, a_f + w_cf * c  # from the entering cell state
    c_new = _sigmoid(a_f) * c + _sigmoid(a_i) * np.tanh(a_g)
    if cell.peepholes:
        a_o = a_o + w_co * c_new  # from the new one
    u = _ln(c_new) * p.gamma_c + p.beta_c if cell.layer_norm else c_new
    h_new = _sigmoid(a_o) * np.tanh(u)
    if cell.proj_size:
        h_new = h_new @ p.w_hr
    return h_new, c_new


def np_gru_step(cell, p, carry, x):
    (h,) = carry
    n_h = cell.hidden_size
    blk = lambda w, k: w[..., k * n_h : (k + 1) * n_h]  # noqa: E731
    if not cell.reset_after:  # Cho et al.: the reset gate before the product, one bias per block
        r = _sigmoid(x @ blk(p.w_x, 0) + blk(p.b_x, 0) + h @ blk(p.w_h, 0))
        z = _sigmoid(x @ blk(p.w_x, 1) + blk(p.b_x, 1) + h @ blk(p.w_h, 1))
        n = np.tanh(x @ blk(p.w_x, 2) + blk(p.b_x, 2) + (r * h) @ blk(p.w_h, 2))
    else:
        xp = (_ln(x @ p.w_x) * p.gamma_x if cell.layer_norm else x @ p.w_x) + p.b_x
        hp = (_ln(h @ p.w_h) * p.gamma_h if cell.layer_norm else h @ p.w_h) + p.b_h
        r = _sigmoid(blk(xp, 0) + blk(hp, 0))
        z = _sigmoid(blk(xp, 1) + blk(hp, 1))
        n = np.tanh(blk(xp, 2) + r * blk(hp, 2))
    return ((1.0 - z) * n + z * h,)


def np_layer(cell, params, xs, carry, lengths, reverse):
    """One layer by a Python loop per sequence: ``(ys, final carry leaves)``; padded steps keep
    the carry and give zeros, and a reverse layer reads each sequence from its last valid step."""
    step = np_lstm_step if isinstance(cell, jrnn.LSTMCell) else np_gru_step
    p = type(params)(*(None if a is None else np.asarray(a) for a in params))
    xs = np.asarray(xs)
    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(carry)]
    ys = np.zeros((B, T, cell.output_size))
    finals = [np.zeros_like(a) for a in leaves]
    for b in range(B):
        state = tuple(a[b] for a in leaves)
        steps = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in steps:
            state = step(cell, p, state, xs[b, t])
            ys[b, t] = state[0]
        for k, a in enumerate(state):
            finals[k][b] = a
    return ys, finals


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run(cell, reverse, params, carry, xs):
    return jrnn.unroll(cell, params, xs, carry, seq_lengths=jnp.asarray(LENGTHS), reverse=reverse)


@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_numpy(name):
    cell, reverse = CASES[name]
    params, carry, xs, *_ = setup(cell)
    carry_T, ys = _run(cell, reverse, params, carry, xs)
    want_ys, want_finals = np_layer(cell, params, xs, carry, LENGTHS, reverse)
    np.testing.assert_allclose(np.asarray(ys), want_ys, rtol=1e-12, atol=1e-12)
    for got, want in zip(jax.tree_util.tree_leaves(carry_T), want_finals, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)
    step_carry, y = cell(params, carry, xs[:, 0])  # one step through __call__
    np.testing.assert_allclose(np.asarray(y), np_layer(cell, params, xs[:, :1], carry, [1] * B, False)[0][:, 0],
                               rtol=1e-12, atol=1e-12)  # fmt: skip


# --------------------------------------------------------------------------------------------
# The gradient triangle


@functools.partial(jax.jit, static_argnums=(0, 1))
def _all_vjps(cell, reverse, params, carry, xs, d_ys, d_carry):
    """``jax.vjp`` of the autodiff scan, and the hand-written backward in its three forms."""
    lengths = jnp.asarray(LENGTHS)

    def run(p, x, c):
        return jrnn.unroll(cell, p, x, c, seq_lengths=lengths, reverse=reverse, backward="autodiff")

    (_, _), vjp = jax.vjp(run, params, xs, carry)
    out = {"autodiff": vjp((d_carry, d_ys))}
    for form, remat in (("fast", False), ("reference", False), ("fast", True)):
        out[f"{form}{'_remat' if remat else ''}"] = jrnn.bptt.unroll_vjp(
            cell, params, xs, carry, d_ys, d_carry, seq_lengths=lengths, reverse=reverse, form=form, remat=remat
        )
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_triangle(name):
    cell, reverse = CASES[name]
    params, carry, xs, d_ys, d_carry = setup(cell, seed=1)
    grads = _all_vjps(cell, reverse, params, carry, xs, d_ys, d_carry)
    want = grads.pop("autodiff")
    assert jax.tree_util.tree_structure(want[0]) == jax.tree_util.tree_structure(params)  # no extra leaves
    for form, got in grads.items():
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want), form
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-10, atol=1e-10, err_msg=form)
    # the padded sequence (length 0) gets no input gradient; its carry's cotangent passes through
    np.testing.assert_array_equal(np.asarray(want[1][1]), 0.0)

    # autodiff = central finite differences, on two entries of every parameter (options' included)
    def loss(p):  # <ys, d_ys> + <carry_T, d_carry>, whose gradient the vjps above are
        out = jax.tree_util.tree_leaves(_run(cell, reverse, p, carry, xs))
        cot = jax.tree_util.tree_leaves((d_carry, d_ys))
        return sum(float(np.sum(np.asarray(a) * np.asarray(b))) for a, b in zip(out, cot, strict=True))

    rng = np.random.default_rng(0)
    eps = 1e-6
    for field in params._fields:
        value = getattr(params, field)
        if value is None:
            continue
        for _ in range(2):
            idx = tuple(int(rng.integers(n)) for n in value.shape)
            up = params._replace(**{field: value.at[idx].add(eps)})
            down = params._replace(**{field: value.at[idx].add(-eps)})
            fd = (loss(up) - loss(down)) / (2 * eps)
            assert fd == pytest.approx(float(getattr(want[0], field)[idx]), rel=1e-6, abs=1e-8), (field, idx)


@pytest.mark.parametrize("name", NETWORK_CASES)
def test_bidirectional_network_bptt_equals_autodiff(name):
    cell, _ = CASES[name]
    model = jrnn.RNN(cell, num_layers=2, bidirectional=True)
    k_p, k_x, k_w = jax.random.split(jax.random.PRNGKey(2), 3)
    params = randomize(model.init(k_p, D, jnp.float64), k_p)
    xs = jax.random.normal(k_x, (B, T, D), jnp.float64)
    w = jax.random.normal(k_w, (B, T, model.top_size), jnp.float64)
    lengths = jnp.asarray(LENGTHS)

    @jax.jit
    def grads(p):
        def loss(p, backward):
            remat = backward == "bptt" and name == "lstm_all"  # remat through jax.custom_vjp once
            ys, carries = model.apply(p, xs, seq_lengths=lengths, backward=backward, remat=remat)
            last = sum(jnp.sum(jnp.tanh(a)) for a in jax.tree_util.tree_leaves(carries))
            return jnp.sum(ys * w) + last

        return jax.grad(loss)(p, "autodiff"), jax.grad(loss)(p, "bptt")  # bptt: jax.custom_vjp

    want, got = grads(params)
    for g, v in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(v), rtol=1e-10, atol=1e-10)
    assert model.top_size == 2 * cell.output_size


# --------------------------------------------------------------------------------------------
# Parameters, carries, presets and errors


def test_default_params_are_unchanged():
    k = jax.random.PRNGKey(0)
    lstm, gru = jrnn.LSTMCell(H).init(k, D), jrnn.GRUCell(H).init(k, D)
    assert len(jax.tree_util.tree_leaves(lstm)) == 3 and len(jax.tree_util.tree_leaves(gru)) == 4
    lstm3 = jrnn.LSTMParams(lstm.w_x, lstm.w_h, lstm.b)  # the three-field constructor still works
    gru4 = jrnn.GRUParams(gru.w_x, gru.w_h, gru.b_x, gru.b_h)
    assert lstm3 == lstm and gru4 == gru
    xs = jnp.ones((1, 2, D))
    jrnn.unroll(jrnn.LSTMCell(H), lstm3, xs)
    jrnn.unroll(jrnn.GRUCell(H), gru4, xs)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("init", ["default", "torch", "keras"])
def test_init_shapes_and_carry(name, init):
    cell, _ = CASES[name]
    p = cell.init(jax.random.PRNGKey(0), D, jnp.float64, init=init)
    cell.check_params(p)
    for field, shape in cell.param_shapes(D).items():
        assert (getattr(p, field) is None) == (shape is None), field
    carry = cell.initial_carry((B,), jnp.float64)
    assert cell.output(carry).shape == (B, cell.output_size)
    if isinstance(cell, jrnn.LSTMCell):
        assert carry.c.shape == (B, H)
        assert p.w_h.shape == (cell.output_size, 4 * H)
    if init == "keras":  # orthonormal rows over the whole (R, G) matrix
        w_h = np.asarray(p.w_h)
        np.testing.assert_allclose(w_h @ w_h.T, np.eye(w_h.shape[0]), atol=1e-10)
    if cell.layer_norm:  # gains start at one in every preset
        np.testing.assert_array_equal(np.asarray(p.gamma_x), 1.0)


def test_option_errors():
    with pytest.raises(ValueError, match=r"proj_size must be an int in \[1, 3\]"):
        jrnn.LSTMCell(4, proj_size=4)
    with pytest.raises(ValueError, match="proj_size"):
        jrnn.LSTMCell(4, proj_size=-1)
    with pytest.raises(TypeError, match="peepholes"):
        jrnn.LSTMCell(4, peepholes="yes")
    with pytest.raises(ValueError, match="layer_norm must be False with reset_after=False"):
        jrnn.GRUCell(4, reset_after=False, layer_norm=True)

    k = jax.random.PRNGKey(0)
    plain = jrnn.LSTMCell(H).init(k, D)
    with pytest.raises(ValueError, match=r"params.w_hr for LSTMCell\(hidden_size=4\) must be \(4, 2\), got None"):
        jrnn.LSTMCell(H, proj_size=P).check_params(plain._replace(w_h=jnp.zeros((P, 4 * H))))
    with pytest.raises(ValueError, match=r"params.w_c .* must be None"):
        jrnn.LSTMCell(H).check_params(jrnn.LSTMCell(H, peepholes=True).init(k, D))
    with pytest.raises(ValueError, match=r"params.b_h .* must be None"):
        jrnn.GRUCell(H, reset_after=False).check_params(jrnn.GRUCell(H).init(k, D))
    with pytest.raises(ValueError, match=r"params.w_h .* must be \(2, 16\)"):
        jrnn.LSTMCell(H, proj_size=P).check_params(plain._replace(w_hr=jnp.zeros((H, P))))

    from jrnn import interop

    no_torch = (jrnn.LSTMCell(H, peepholes=True), jrnn.LSTMCell(H, layer_norm=True), jrnn.GRUCell(H, reset_after=False))
    for cell in no_torch:
        model = jrnn.RNN(cell)
        with pytest.raises(ValueError, match="model.cell must be"):
            interop.torch_state_dict(model, model.init(k, D))
    for cell in (jrnn.LSTMCell(H, proj_size=P), jrnn.GRUCell(H, layer_norm=True)):
        with pytest.raises(ValueError, match="cell must be"):
            interop.to_flax(cell, cell.init(k, D))


# --------------------------------------------------------------------------------------------
# The projection against PyTorch


def test_projection_matches_torch():
    torch = pytest.importorskip("torch")
    from jrnn import interop

    torch.manual_seed(0)
    module = torch.nn.LSTM(D, H, num_layers=2, bidirectional=True, batch_first=True, proj_size=P,
                           dtype=torch.float64)  # fmt: skip
    model, params = interop.from_torch(module)
    assert model.cell == jrnn.LSTMCell(H, proj_size=P) and model.top_size == 2 * P
    xs = np.random.default_rng(0).standard_normal((B, T, D))
    h_0 = torch.randn(4, B, P, dtype=torch.float64)
    c_0 = torch.randn(4, B, H, dtype=torch.float64)
    with torch.no_grad():
        want, (h_n, c_n) = module(torch.from_numpy(xs), (h_0, c_0))
    carries = interop.carries_from_torch(model, (h_0, c_0))
    ys, finals = model.apply(params, jnp.asarray(xs), carries, backward="bptt")
    np.testing.assert_allclose(np.asarray(ys), want.numpy(), rtol=1e-9, atol=1e-9)
    got_h, got_c = interop.carries_to_torch(model, finals)
    np.testing.assert_allclose(got_h.numpy(), h_n.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got_c.numpy(), c_n.numpy(), rtol=1e-9, atol=1e-9)

    back = interop.to_torch(model, params).state_dict()  # and back: the same weights, weight_hr included
    for name, value in module.state_dict().items():
        if name.startswith("weight"):
            np.testing.assert_array_equal(back[name].numpy(), value.numpy(), err_msg=name)
        elif name.startswith("bias_ih"):  # b = bias_ih + bias_hh goes back whole into bias_ih
            hh = name.replace("bias_ih", "bias_hh")
            np.testing.assert_allclose(back[name].numpy(), (value + module.state_dict()[hh]).numpy(), rtol=1e-15)

    fresh = jrnn.RNN(jrnn.LSTMCell(H, proj_size=P), num_layers=2)  # a jrnn-initialized model loads
    interop.to_torch(fresh, fresh.init(jax.random.PRNGKey(0), D, init="torch"))
