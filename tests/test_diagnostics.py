"""``jrnn.diagnostics`` against independent computations: matrix powers and NumPy spectra for linear
cells, autodiff through plain Python loops with explicit perturbations, the hand-written BPTT, and
an optax chain with clipping."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import jrnn
import jrnn.optim
from helpers import make, random_lengths, randomize
from jrnn import diagnostics as dg
from jrnn.losses import get_loss


def cell_and_params(kind, H=4, D=3, activation="tanh", seed=0, scale=0.5):
    cell = make(kind, H, activation)
    key = jax.random.PRNGKey(seed)
    return cell, randomize(cell.init(key, D, jnp.float64), key, scale)


def random_xs(shape, seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float64)


def flat(carry):
    return ravel_pytree(carry)[0]


# --------------------------------------------------------------------------------------------
# jacobian_norms


def test_jacobian_norms_linear_equal_matrix_powers():
    cell, params = cell_and_params("vanilla", H=5, activation="linear", scale=0.6)
    T = 7
    xs = random_xs((T, 3))
    got = dg.jacobian_norms(cell, params, xs)
    w = np.asarray(params.w_h)
    want = [np.linalg.norm(np.linalg.matrix_power(w, T - t), 2) for t in range(T)]
    assert got.shape == (T,)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    batched = dg.jacobian_norms(cell, params, random_xs((2, T, 3)))
    assert batched.shape == (2, T)
    np.testing.assert_allclose(batched, np.stack([want, want]), rtol=1e-12)


@functools.partial(jax.jit, static_argnums=0)
def suffix_jacobians(cell, params, xs, carry0):
    """``(T, n, n)``: ``∂s_T/∂s_t`` for every t, by jacfwd through a Python loop of public cell
    calls with a perturbation ``δ_t`` added to the state entering step t (unbatched)."""
    s0, unravel = ravel_pytree(carry0)
    T, n = xs.shape[0], s0.shape[0]

    def run(deltas):
        carry = carry0
        for t in range(T):
            carry, _ = cell(params, unravel(flat(carry) + deltas[t]), xs[t])
        return flat(carry)

    jac = jax.jacfwd(run)(jnp.zeros((T, n), s0.dtype))  # (n, T, n)
    return jnp.moveaxis(jac, 1, 0)


@pytest.mark.parametrize("kind,part", [("vanilla", "carry"), ("gru", "h"), ("lstm", "carry"), ("lstm", "h"), ("lstm", "c")])
def test_jacobian_norms_match_autodiff(kind, part):
    cell, params = cell_and_params(kind, H=3, scale=0.8)
    T, B = 6, 2
    xs = random_xs((B, T, 3))
    carry0 = randomize(cell.initial_carry((B,), jnp.float64), jax.random.PRNGKey(5))
    got = dg.jacobian_norms(cell, params, xs, carry0, part=part)
    H = cell.hidden_size
    idx = {"carry": slice(None), "h": slice(0, H), "c": slice(H, 2 * H)}[part]
    for b in range(B):
        c0 = jax.tree_util.tree_map(lambda a: a[b], carry0)
        jacs = np.asarray(suffix_jacobians(cell, params, xs[b], c0))
        want = [np.linalg.norm(jacs[t][idx, idx], 2) for t in range(T)]
        np.testing.assert_allclose(got[b], want, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# recurrent_spectrum


@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
def test_recurrent_spectrum_matches_numpy(kind):
    cell, params = cell_and_params(kind, H=5)
    spectra = dg.recurrent_spectrum(cell, params)
    assert tuple(spectra) == dg.GATES[type(cell)]
    w_h = np.asarray(params.w_h)
    for k, (name, spec) in enumerate(spectra.items()):
        block = w_h[:, 5 * k : 5 * (k + 1)]
        eig = np.linalg.eigvals(block)
        sv = np.linalg.svd(block, compute_uv=False)
        np.testing.assert_allclose(np.abs(spec.eigenvalues), np.sort(np.abs(eig))[::-1], rtol=1e-12)
        # the same multiset of eigenvalues: every numpy eigenvalue has a match
        dist = np.abs(np.asarray(spec.eigenvalues)[:, None] - eig[None, :])
        assert dist.min(axis=0).max() < 1e-10
        np.testing.assert_allclose(spec.singular_values, sv, rtol=1e-12)
        np.testing.assert_allclose(spec.spectral_radius, np.abs(eig).max(), rtol=1e-12)
        np.testing.assert_allclose(spec.max_singular_value, np.linalg.norm(block, 2), rtol=1e-12)


def test_recurrent_spectrum_orthogonal_init():
    cell = jrnn.GRUCell(6, recurrent_scale=0.7)
    spectra = dg.recurrent_spectrum(cell, cell.init(jax.random.PRNGKey(0), 2, jnp.float64))
    for spec in spectra.values():
        np.testing.assert_allclose(spec.singular_values, np.full(6, 0.7), rtol=1e-12)
        np.testing.assert_allclose(spec.spectral_radius, 0.7, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# lyapunov_exponents


def linear_cell_with(w_h, D=2):
    H = w_h.shape[0]
    cell = jrnn.VanillaCell(H, activation="linear")
    params = jrnn.VanillaParams(
        w_x=random_xs((D, H), seed=3), w_h=jnp.asarray(w_h, jnp.float64), b=random_xs((H,), seed=4)
    )
    return cell, params


def test_lyapunov_linear_real_eigenvalues():
    rng = np.random.default_rng(0)
    lam = np.array([0.9, -0.6, 0.35, 0.15])
    v = rng.normal(size=(4, 4))
    cell, params = linear_cell_with(v @ np.diag(lam) @ np.linalg.inv(v))
    xs = random_xs((2000, 2))  # the Jacobian of a linear cell does not depend on the input
    got = dg.lyapunov_exponents(cell, params, xs, 4)
    np.testing.assert_allclose(got, np.log(np.abs(lam)), atol=1e-2)
    np.testing.assert_allclose(dg.lyapunov_exponents(cell, params, xs, 2), np.log(np.abs(lam[:2])), atol=1e-2)


def test_lyapunov_linear_random_map_zero_input():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, 5)) / np.sqrt(5)
    cell, params = linear_cell_with(w)
    xs = jnp.zeros((3000, 2), jnp.float64)
    want = np.sort(np.log(np.abs(np.linalg.eigvals(w))))[::-1]
    got = dg.lyapunov_exponents(cell, params, xs, 5, key=jax.random.PRNGKey(3))
    np.testing.assert_allclose(got, want, atol=1e-2)
    batched = dg.lyapunov_exponents(cell, params, jnp.zeros((2, 3000, 2)), 3)
    assert batched.shape == (2, 3)
    np.testing.assert_allclose(batched, np.stack([want[:3]] * 2), atol=1e-2)


@functools.partial(jax.jit, static_argnums=0)
def step_logdets(cell, params, xs, carry):
    """``log |det J_t|`` of every step, by jacfwd of public cell calls in a Python loop."""
    out = []
    for x_t in xs:
        s, unravel = ravel_pytree(carry)
        jac = jax.jacfwd(lambda v: flat(cell(params, unravel(v), x_t)[0]))(s)
        out.append(jnp.linalg.slogdet(jac)[1])
        carry, _ = cell(params, carry, x_t)
    return jnp.stack(out)


@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
def test_lyapunov_sum_is_mean_log_det(kind):
    """With k = n the QR method's sum telescopes into the mean ``log |det J_t|`` exactly."""
    cell, params = cell_and_params(kind, H=3, scale=0.9)
    T = 25
    xs = random_xs((T, 3))
    n = 6 if kind == "lstm" else 3
    got = dg.lyapunov_exponents(cell, params, xs, n)
    assert np.all(np.diff(np.asarray(got)) <= 0)
    logdets = np.asarray(step_logdets(cell, params, xs, cell.initial_carry((), jnp.float64)))
    np.testing.assert_allclose(np.sum(got), np.mean(logdets), rtol=1e-10)
    # burn_in drops the first steps from the average
    got_late = dg.lyapunov_exponents(cell, params, xs, n, burn_in=5)
    np.testing.assert_allclose(np.sum(got_late), np.mean(logdets[5:]), rtol=1e-10)


# --------------------------------------------------------------------------------------------
# hidden_grads / hidden_grad_norms against autodiff through a Python loop


def loop_network(model, params, xs, lengths, eps):
    """``RNN.apply`` as a plain Python loop of public cell calls (batch-major ``xs (B, T, D)``),
    with ``eps[l][d][t]`` (carry-shaped, ``(B, H)``) added to the state after step t."""
    B, T, _ = xs.shape
    valid = jnp.ones((B, T), bool) if lengths is None else jnp.arange(T)[None, :] < lengths[:, None]
    h = xs
    for layer, p in enumerate(params.layers):
        directions = p if model.bidirectional else (p,)
        outs = []
        for d, p_d in enumerate(directions):
            carry = model.cell.initial_carry((B,), jnp.float64)
            ys = [None] * T
            order = range(T - 1, -1, -1) if d == 1 else range(T)
            for t in order:
                new, _ = model.cell(p_d, carry, h[:, t])
                new = jax.tree_util.tree_map(jnp.add, new, eps[layer][d][t])
                m = valid[:, t][:, None]
                carry = jax.tree_util.tree_map(lambda a, b: jnp.where(m, a, b), new, carry)
                y = new.h if isinstance(new, jrnn.LSTMCarry) else new
                ys[t] = jnp.where(m, y, 0.0)
            outs.append(jnp.stack(ys, axis=1))
        h = jnp.concatenate(outs, axis=-1)
    if params.readout is not None:
        h = jnp.where(valid[..., None], h @ params.readout.w + params.readout.b[None, None, :], 0.0)
    return h


@functools.partial(jax.jit, static_argnums=(0, 4))
def loop_hidden_grads(model, params, xs, targets, loss, lengths):
    B, T, _ = xs.shape
    dirs = 2 if model.bidirectional else 1
    zero = model.cell.initial_carry((B,), jnp.float64)
    eps = [[[zero] * T for _ in range(dirs)] for _ in range(model.num_layers)]
    fn = lambda e: get_loss(loss).loss(loop_network(model, params, xs, lengths, e), targets, lengths)  # noqa: E731
    value, g = jax.value_and_grad(fn)(eps)
    # -> per layer and direction, carry-shaped with leaves (B, T, H)
    stacked = [[jax.tree_util.tree_map(lambda *a: jnp.stack(a, axis=1), *g[l][d]) for d in range(dirs)]
               for l in range(model.num_layers)]
    return value, stacked


def make_targets(loss, every_step, B, T, O, seed=9):
    key = jax.random.PRNGKey(seed)
    if loss == "mse":
        return jax.random.normal(key, (B, T, O) if every_step else (B, O), jnp.float64)
    return jax.random.randint(key, (B, T) if every_step else (B,), 0, O)


CASES = [
    # kind, num_layers, bidirectional, readout, loss, every_step, with_lengths
    ("vanilla", 1, False, False, "mse", True, False),
    ("vanilla", 2, False, True, "mse", False, True),
    ("lstm", 2, False, True, "cross_entropy", True, True),
    ("lstm", 1, True, False, "mse", False, False),
    ("gru", 2, True, True, "mse", True, True),
    ("gru", 1, False, True, "cross_entropy", False, False),
    ("lstm", 2, True, True, "cross_entropy", False, True),
]


@pytest.mark.parametrize("kind,num_layers,bidirectional,readout,loss,every_step,with_lengths", CASES)
def test_hidden_grads_match_loop_autodiff(kind, num_layers, bidirectional, readout, loss, every_step, with_lengths):
    B, T, D, H = 3, 5, 2, 3
    O = 3 if readout else H * (2 if bidirectional else 1)
    model = jrnn.RNN(make(kind, H), num_layers=num_layers, bidirectional=bidirectional,
                     output_size=O if readout else None)
    key = jax.random.PRNGKey(2)
    params = randomize(model.init(key, D, jnp.float64), key, 0.7)
    xs = random_xs((B, T, D))
    targets = make_targets(loss, every_step, B, T, O)
    lengths = random_lengths(np.random.default_rng(4), B, T) if with_lengths else None

    value, grads = dg.hidden_grads(model, params, xs, targets, loss=loss, seq_lengths=lengths)
    want_value, want = loop_hidden_grads(model, params, xs, targets, loss, lengths)
    ys, _ = jax.jit(lambda p, x, n: model.apply(p, x, seq_lengths=n))(params, xs, lengths)
    np.testing.assert_allclose(value, get_loss(loss).loss(ys, targets, lengths), rtol=1e-12)
    np.testing.assert_allclose(value, want_value, rtol=1e-12)

    norms = dg.hidden_grad_norms(model, params, xs, targets, loss=loss, seq_lengths=lengths)
    assert norms.shape == ((num_layers, 2, T) if bidirectional else (num_layers, T))
    for layer in range(num_layers):
        got_layer = grads[layer] if bidirectional else (grads[layer],)
        for d in range(2 if bidirectional else 1):
            got, ref = got_layer[d], want[layer][d]
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
                assert a.shape == (B, T, H)
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
            h_ref = ref.h if kind == "lstm" else ref
            want_norm = np.sqrt(np.sum(np.asarray(h_ref) ** 2, axis=(0, 2)))
            got_norm = norms[layer, d] if bidirectional else norms[layer]
            np.testing.assert_allclose(got_norm, want_norm, rtol=1e-10, atol=1e-14)
    if with_lengths:  # padded steps carry no gradient
        pad = np.arange(T)[None, :] >= np.asarray(lengths)[:, None]
        g0 = grads[0][0] if bidirectional else grads[0]
        g0 = g0.h if kind == "lstm" else g0
        assert np.all(np.asarray(g0)[pad] == 0)


def test_hidden_grads_flow_through_time():
    """A loss on the last step only still reaches every earlier state (the recurrence path)."""
    model = jrnn.RNN(jrnn.VanillaCell(4), num_layers=2, output_size=1)
    key = jax.random.PRNGKey(0)
    params = randomize(model.init(key, 2, jnp.float64), key, 0.6)
    xs = random_xs((2, 8, 2))
    norms = np.asarray(dg.hidden_grad_norms(model, params, xs, random_xs((2, 1), seed=3)))
    assert norms.shape == (2, 8)
    assert np.all(norms > 0)


@pytest.mark.parametrize("part", ["h", "c", "carry"])
def test_hidden_grad_norms_lstm_parts_and_unbatched(part):
    model = jrnn.RNN(jrnn.LSTMCell(3), num_layers=2, output_size=2)
    key = jax.random.PRNGKey(1)
    params = randomize(model.init(key, 2, jnp.float64), key, 0.6)
    xs, targets = random_xs((5, 2)), random_xs((5, 2), seed=8)
    got = dg.hidden_grad_norms(model, params, xs, targets, part=part)
    _, want = loop_hidden_grads(model, params, xs[None], targets[None], "mse", None)
    for layer in range(2):
        g = want[layer][0]
        sq = {"h": g.h ** 2, "c": g.c ** 2, "carry": np.concatenate([g.h ** 2, g.c ** 2], -1)}[part]
        np.testing.assert_allclose(got[layer], np.sqrt(np.sum(sq, axis=(0, 2))), rtol=1e-10)
    _, grads = dg.hidden_grads(model, params, xs, targets)
    assert grads[0].h.shape == (5, 3) and grads[0].c.shape == (5, 3)


# --------------------------------------------------------------------------------------------
# hidden_grads against the hand-written BPTT


@functools.partial(jax.jit, static_argnums=0)
def bptt_state_grad(cell, params, h_in, d_ys, lengths, t):
    """``dL/ds_t`` of one layer from ``jrnn.bptt.unroll_vjp`` and forward unrolls only: the carry
    after step t seeds a run over the steps after t (shifted to the front, lengths cut to
    match, so every t has the same shapes); its ``d_carry0`` plus the output's own cotangent."""
    from jrnn import bptt

    B, T = h_in.shape[:2]
    carry_t, _ = jrnn.unroll(cell, params, h_in, seq_lengths=jnp.minimum(lengths, t + 1))
    rest = jnp.clip(lengths - t - 1, 0, None)  # steps after t (0 when t is the last valid one)
    shift = lambda a: jnp.roll(a, -(t + 1), axis=1)  # noqa: E731
    _, _, d_future = bptt.unroll_vjp(cell, params, shift(h_in), carry_t, shift(d_ys), None, seq_lengths=rest)
    d_y_t = d_ys[:, t]
    if isinstance(cell, jrnn.LSTMCell):
        d_t = jrnn.LSTMCarry(d_future.h + d_y_t, d_future.c)
    else:
        d_t = d_future + d_y_t
    m = (t < lengths)[:, None]
    return jax.tree_util.tree_map(lambda a: jnp.where(m, a, 0.0), d_t)


def bptt_hidden_grads(model, params, xs, targets, lengths):
    """Per-step ``dL/ds_t`` of a unidirectional stack, by the hand-written derivatives alone:
    the loss's closed form, the readout's transpose, and ``unroll_vjp`` layer by layer."""
    bptt = pytest.importorskip("jrnn.bptt")
    cell = model.cell
    T = xs.shape[1]
    layer_inputs = [xs]
    for p in params.layers:
        _, ys = jrnn.unroll(cell, p, layer_inputs[-1], seq_lengths=lengths)
        layer_inputs.append(ys)
    preds = layer_inputs[-1] @ params.readout.w + params.readout.b[None, None, :]
    _, d_preds = get_loss("mse").value_and_grad(preds, targets, lengths)
    d_ys = d_preds @ params.readout.w.T  # the readout's backward (padded steps have d_preds = 0)
    out = [None] * model.num_layers
    for layer in reversed(range(model.num_layers)):
        p, h_in = params.layers[layer], layer_inputs[layer]
        per_step = [bptt_state_grad(cell, p, h_in, d_ys, lengths, jnp.int32(t)) for t in range(T)]
        out[layer] = jax.tree_util.tree_map(lambda *a: jnp.stack(a, axis=1), *per_step)
        _, d_ys, _ = bptt.unroll_vjp(cell, p, h_in, None, d_ys, None, seq_lengths=lengths)
    return out


@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
def test_hidden_grads_match_hand_bptt(kind):
    B, T, D, H = 3, 5, 2, 3
    model = jrnn.RNN(make(kind, H), num_layers=2, output_size=2)
    key = jax.random.PRNGKey(6)
    params = randomize(model.init(key, D, jnp.float64), key, 0.7)
    xs = random_xs((B, T, D))
    targets = random_xs((B, T, 2), seed=2)
    lengths = jnp.asarray([5, 2, 4], jnp.int32)
    _, got = dg.hidden_grads(model, params, xs, targets, seq_lengths=lengths)
    want = bptt_hidden_grads(model, params, xs, targets, lengths)
    for layer in range(2):
        for a, b in zip(jax.tree_util.tree_leaves(got[layer]), jax.tree_util.tree_leaves(want[layer])):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------
# The recorder inside an optax chain


def radii_numpy(params):
    out = []
    for p in params.layers:
        for d in (p if isinstance(p, tuple) and not hasattr(p, "_fields") else (p,)):
            w = np.asarray(d.w_h)
            H = w.shape[0]
            out += [np.abs(np.linalg.eigvals(w[:, k * H : (k + 1) * H])).max() for k in range(w.shape[1] // H)]
    return np.array(out)


def test_recorder_in_chain_with_clipping():
    model = jrnn.RNN(jrnn.LSTMCell(3), num_layers=2, bidirectional=True)
    key = jax.random.PRNGKey(0)
    params = randomize(model.init(key, 2, jnp.float64), key, 0.5)
    clip, lr, steps, history = 1.0, 0.05, 9, 4
    scales = np.array([0.1, 3.0, 0.5, 2.0, 0.05, 1.5, 0.2, 4.0, 0.3])
    base = randomize(params, jax.random.PRNGKey(1), 1.0)
    grads = [jax.tree_util.tree_map(lambda g, s=s: s * g / optax.tree.norm(base), base) for s in scales]

    tx = optax.chain(dg.gradient_recorder(clip, history=history), optax.clip_by_global_norm(clip), optax.sgd(lr))
    plain = optax.chain(optax.clip_by_global_norm(clip), optax.sgd(lr))
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *grads)

    @jax.jit
    def train(params, opt_state, stacked):
        def body(carry, g):
            p, s = carry
            updates, s = tx.update(g, s, p)
            return (optax.apply_updates(p, updates), s), None

        (params, opt_state), _ = jax.lax.scan(body, (params, opt_state), stacked)
        return params, opt_state

    final, opt_state = train(params, tx.init(params), stacked)

    # the same run by hand: norms, clip decisions and radii at the params each gradient met
    p, s_plain, norms, fired, radii = params, plain.init(params), [], [], []
    for g in grads:
        n = float(np.sqrt(sum(np.sum(np.asarray(a) ** 2) for a in jax.tree_util.tree_leaves(g))))
        norms.append(n)
        fired.append(n >= clip)
        radii.append(radii_numpy(p))
        u, s_plain = plain.update(g, s_plain, p)
        p = optax.apply_updates(p, u)
    # passing through the recorder leaves the updates unchanged
    for a, b in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-12)

    state = dg.recorder_state(opt_state)
    assert int(state.count) == steps
    rec = dg.recorded(opt_state)
    np.testing.assert_array_equal(rec.step, np.arange(steps - history, steps))
    np.testing.assert_allclose(rec.grad_norm, norms[-history:], rtol=1e-12)
    np.testing.assert_array_equal(rec.clipped, fired[-history:])
    assert rec.clipped.any() and not rec.clipped.all()
    labels = dg.recorder_labels(params)
    assert len(labels) == 16 and labels[1] == "layers[0][0].w_h:f" and labels[-1] == "layers[1][1].w_h:o"
    assert rec.spectral_radius.shape == (history, 16)
    np.testing.assert_allclose(rec.spectral_radius, np.stack(radii[-history:]), rtol=1e-10)


def test_recorder_before_make_optimizer_partial_history():
    cell, params = cell_and_params("gru", H=3)
    tx = optax.chain(dg.gradient_recorder(0.5, history=10),
                     jrnn.optim.make_optimizer("adam", 1e-2, clip_norm=0.5))
    state = tx.init(params)
    g = randomize(params, jax.random.PRNGKey(3), 0.3)
    update = jax.jit(tx.update)
    norms = []
    for k in range(3):
        gk = jax.tree_util.tree_map(lambda a, k=k: a * (k + 0.5), g)
        norms.append(float(optax.tree.norm(gk)))
        _, state = update(gk, state, params)
    rec = dg.recorded(state)
    np.testing.assert_array_equal(rec.step, [0, 1, 2])
    np.testing.assert_allclose(rec.grad_norm, norms, rtol=1e-12)
    np.testing.assert_array_equal(rec.clipped, np.array(norms) >= 0.5)
    assert dg.recorder_labels(params) == ["w_h:r", "w_h:z", "w_h:n"]
    want = [np.abs(np.linalg.eigvals(np.asarray(params.w_h)[:, 3 * k : 3 * k + 3])).max() for k in range(3)]
    np.testing.assert_allclose(rec.spectral_radius, np.stack([want] * 3), rtol=1e-10)


def test_recorder_with_train_step():
    """Inside ``jrnn.train.make_train_step``: the recorder's log matches the step's own metrics."""
    train = pytest.importorskip("jrnn.train")
    model = jrnn.RNN(jrnn.VanillaCell(4), num_layers=1, output_size=1)
    key = jax.random.PRNGKey(0)
    params = randomize(model.init(key, 2, jnp.float64), key, 0.8)
    clip = 3.0
    tx = optax.chain(dg.gradient_recorder(clip, history=8), jrnn.optim.make_optimizer("sgd", 0.5, clip_norm=clip))
    step = train.make_train_step(model, tx)
    opt_state = tx.init(params)
    norms, fired, radii = [], [], []
    for k in range(5):
        xs = random_xs((3, 6, 2), seed=10 + k)
        targets = (0.1 + 2.0 * (k % 2)) * random_xs((3, 6, 1), seed=20 + k)
        radii.append(radii_numpy(params))
        params, opt_state, metrics = step(params, opt_state, xs, targets)
        norms.append(float(metrics["grad_norm"]))
        fired.append(float(metrics["grad_norm"]) >= clip)
    assert any(fired) and not all(fired), norms
    rec = dg.recorded(opt_state)
    np.testing.assert_allclose(rec.grad_norm, norms, rtol=1e-12)
    np.testing.assert_array_equal(rec.clipped, fired)
    np.testing.assert_allclose(rec.spectral_radius, np.stack(radii), rtol=1e-10)


def test_recorder_without_params():
    params = {"w": jnp.ones((2,))}
    tx = dg.gradient_recorder(history=2, spectral_radius=False)
    state = tx.init(params)
    _, state = tx.update({"w": jnp.array([3.0, 4.0])}, state)
    rec = dg.recorded(state)
    np.testing.assert_allclose(rec.grad_norm, [5.0])
    assert not rec.clipped.any() and rec.spectral_radius.shape == (1, 0)
    cell, p = cell_and_params("vanilla")
    tx = dg.gradient_recorder(1.0)
    with pytest.raises(ValueError, match="needs the params"):
        tx.update(p, tx.init(p))


# --------------------------------------------------------------------------------------------
# Errors


def test_errors():
    cell, params = cell_and_params("vanilla", H=3)
    xs = random_xs((4, 3))
    with pytest.raises(ValueError, match="k must be"):
        dg.lyapunov_exponents(cell, params, xs, 4)
    with pytest.raises(ValueError, match="burn_in"):
        dg.lyapunov_exponents(cell, params, xs, 2, burn_in=4)
    with pytest.raises(ValueError, match="part"):
        dg.jacobian_norms(cell, params, xs, part="c")
    with pytest.raises(ValueError, match="input_size"):
        dg.jacobian_norms(cell, params, random_xs((4, 2)))
    with pytest.raises(TypeError, match="model must be"):
        dg.hidden_grad_norms(cell, params, xs, xs)
    with pytest.raises(ValueError, match="history"):
        dg.gradient_recorder(history=0)
    with pytest.raises(ValueError, match="clip_norm"):
        dg.gradient_recorder(clip_norm=-1.0)
    with pytest.raises(ValueError, match="RecorderState"):
        dg.recorder_state(optax.sgd(0.1).init(params))
