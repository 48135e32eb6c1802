"""The hand-written BPTT (``jrnn.bptt``) as a gradient triangle, in float64 on random inputs.

hand BPTT == ``jax.value_and_grad`` of the autodiff network and loss (relative error < 1e-8), and
autodiff == finite differences (``jax.test_util.check_grads``), across cells, activations, layers,
bidirectional, lengths, reverse, readout, loss, dropout and truncation; the fast form == the
per-step reference; ``backward="bptt"`` == autodiff under ``jit`` and ``vmap``; truncation ==
autodiff with ``stop_gradient`` on the carries, chunk by chunk.
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jrnn
from jrnn import bptt, losses

F64 = jnp.float64

CELLS = {
    "tanh": lambda H: jrnn.VanillaCell(H, activation="tanh"),
    "relu": lambda H: jrnn.VanillaCell(H, activation="relu"),
    "sigmoid": lambda H: jrnn.VanillaCell(H, activation="sigmoid"),
    "linear": lambda H: jrnn.VanillaCell(H, activation="linear"),
    "lstm": jrnn.LSTMCell,
    "gru": jrnn.GRUCell,
}


# ---------------------------------------------------------------------------------------------
# helpers


def randomize(tree, key, scale=0.5, dtype=F64):
    """Every leaf replaced by N(0, scale²) draws (biases included): nothing is zero or one."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    return jax.tree_util.tree_unflatten(
        treedef, [scale * jax.random.normal(k, jnp.shape(a), dtype) for k, a in zip(keys, leaves)]
    )


def rel_err(got, want):
    """The largest per-leaf ``‖got - want‖ / ‖want‖`` (absolute where ``want`` is all zero)."""
    got_l, want_l = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    errs = []
    for g, w in zip(got_l, want_l):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        scale = np.linalg.norm(w)
        errs.append(np.linalg.norm(g - w) / (scale if scale > 0 else 1.0))
    return max(errs)


def lengths_for(B, T, seed=3):
    """Random lengths in [0, T], the first at T and (for B > 2) one of 0."""
    rng = np.random.default_rng(seed)
    L = rng.integers(1, T + 1, size=B)
    L[0] = T
    if B > 2:
        L[-1] = 0
    return jnp.asarray(L, jnp.int32)


# jitted entry points (one compilation per case instead of op-by-op dispatch)
hand_vjp = jax.jit(bptt.unroll_vjp, static_argnums=0, static_argnames=("reverse", "truncation", "time_major", "form"))
hand_value_and_grad = jax.jit(bptt.value_and_grad, static_argnums=0, static_argnames=("loss", "truncation"))


def layer_setup(kind, B, T, D, H, seed=0, dtype=F64):
    cell = CELLS[kind](H)
    k_p, k_x, k_c, k_y, k_t = jax.random.split(jax.random.PRNGKey(seed), 5)
    params = randomize(cell.init(k_p, D, dtype), k_p, dtype=dtype)
    xs = jax.random.normal(k_x, (B, T, D), dtype)
    carry = randomize(cell.initial_carry((B,), dtype), k_c, dtype=dtype)
    d_ys = jax.random.normal(k_y, (B, T, H), dtype)
    d_carry_T = randomize(carry, k_t, dtype=dtype)
    return cell, params, xs, carry, d_ys, d_carry_T


def chunked_unroll(cell, params, xs, carry, lengths, k, reverse, backward="autodiff"):
    """Autodiff truncation: ``unroll`` over chunks of k positions, ``stop_gradient`` on the carry
    passed between chunks (in processing order: later chunks first when ``reverse``)."""
    T = xs.shape[1]
    if k is None:
        return jrnn.unroll(cell, params, xs, carry, seq_lengths=lengths, reverse=reverse, backward=backward)
    starts = list(range(0, T, k))
    outs = {}
    for j, s in enumerate(starts[::-1] if reverse else starts):
        if j > 0:
            carry = jax.lax.stop_gradient(carry)
        n = min(k, T - s)
        chunk_lengths = None if lengths is None else jnp.clip(lengths - s, 0, n).astype(jnp.int32)
        carry, outs[s] = jrnn.unroll(
            cell, params, xs[:, s : s + n], carry, seq_lengths=chunk_lengths, reverse=reverse, backward=backward
        )
    return carry, jnp.concatenate([outs[s] for s in starts], axis=1)


def stop_gradient_unroll(cell, params, xs, carry, lengths, k, reverse):
    """Autodiff truncation in one scan: ``stop_gradient`` on the carry entering every step that
    begins a chunk of k positions (t = k, 2k, ...; reverse: the carry coming from t = k, 2k, ...)."""
    T = xs.shape[1]
    xs_t = jnp.swapaxes(xs, 0, 1)
    mask = jnp.ones((T, xs.shape[0]), bool) if lengths is None else jnp.arange(T)[:, None] < lengths[None, :]
    t = np.arange(T)
    cut = ((t + 1) % k == 0) & (t < T - 1) if reverse else (t % k == 0) & (t > 0)

    def body(carry, inputs):
        x_t, m_t, cut_t = inputs
        carry = jax.tree_util.tree_map(lambda a: jnp.where(cut_t, jax.lax.stop_gradient(a), a), carry)
        new, y = cell(params, carry, x_t)
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(m_t[:, None], a, b), new, carry)
        return new, jnp.where(m_t[:, None], y, 0.0)

    carry_T, ys = jax.lax.scan(body, carry, (xs_t, mask, jnp.asarray(cut)), reverse=reverse)
    return carry_T, jnp.swapaxes(ys, 0, 1)


def dropout_masks(model, key, B):
    """``RNN.apply``'s masks, drawn independently of ``jrnn.bptt``."""
    if key is None or model.dropout == 0.0:
        return None
    keys = jax.random.split(key, model.num_layers)
    keep = 1.0 - model.dropout
    return [jax.random.bernoulli(keys[l], keep, (B, model.top_size)) / keep for l in range(model.num_layers - 1)]


def autodiff_network(model, params, xs, lengths, k, dropout_key):
    """The network by autodiff with ``stop_gradient`` on every layer's carry at the truncation
    boundaries (both directions); ``k=None`` is ``model.apply`` itself."""
    if k is None:
        return model.apply(params, xs, seq_lengths=lengths, dropout_key=dropout_key)[0]
    masks = dropout_masks(model, dropout_key, xs.shape[0])
    h = xs
    for layer, p in enumerate(params.layers):
        dirs = p if model.bidirectional else (p,)
        outs = [
            stop_gradient_unroll(model.cell, pd, h, model.cell.initial_carry((h.shape[0],), h.dtype), lengths, k, d == 1)[1]
            for d, pd in enumerate(dirs)
        ]
        h = jnp.concatenate(outs, axis=-1)
        if masks is not None and layer < model.num_layers - 1:
            h = h * masks[layer][:, None, :].astype(h.dtype)
    if params.readout is not None:
        h = h @ params.readout.w + params.readout.b[None, None, :]
        if lengths is not None:
            h = jnp.where((jnp.arange(xs.shape[1])[None, :] < lengths[:, None])[..., None], h, 0.0)
    return h


def make_targets(loss, every_step, B, T, O, key):
    if loss == "mse":
        return jax.random.normal(key, (B, T, O) if every_step else (B, O), F64)
    return jax.random.randint(key, (B, T) if every_step else (B,), 0, O)


# ---------------------------------------------------------------------------------------------
# the module is free of autodiff

FORBIDDEN = re.compile(
    r"\b(grad|vjp|jvp|linearize|jacrev|jacfwd|hessian|custom_jvp)\b"
    r"|jax\.value_and_grad|jax\.remat|jax\.checkpoint|lax\.stop_gradient",
    re.IGNORECASE,
)


def bptt_sources():
    root = pathlib.Path(bptt.__file__).parent
    files = sorted(root.glob("*.py")) if root.name == "bptt" else [pathlib.Path(bptt.__file__)]
    assert files
    return files


def test_module_uses_no_autodiff():
    for path in bptt_sources():
        text = path.read_text()
        hits = [(i + 1, line) for i, line in enumerate(text.splitlines()) if FORBIDDEN.search(line)]
        assert not hits, f"{path.name} names autodiff: {hits}"
        # the only hook into JAX's differentiation is jax.custom_vjp with a hand-written rule
        for m in re.finditer(r"jax\.(\w+)", text):
            assert m.group(1) not in {"grad", "vjp", "jvp", "linearize", "jacrev", "jacfwd", "hessian"}


# ---------------------------------------------------------------------------------------------
# one step


@pytest.mark.parametrize("kind", list(CELLS))
def test_step_backward_matches_autodiff(kind):
    cell, params, xs, carry, d_ys, d_carry = layer_setup(kind, B=3, T=1, D=2, H=4, seed=11)
    x_t = xs[:, 0]
    new, y, cache = jax.jit(bptt.step_forward, static_argnums=0)(cell, params, carry, x_t)
    want_new, want_y = cell(params, carry, x_t)
    assert rel_err(new, want_new) < 1e-14 and rel_err(y, want_y) < 1e-14

    # d_carry includes the output's cotangent (y is the carry's h)
    def f(params, carry, x_t):
        return cell(params, carry, x_t)[0]

    want_dp, want_dc, want_dx = jax.jit(lambda *a: jax.vjp(f, *a)[1](d_carry))(params, carry, x_t)
    d_x, d_c, d_p = jax.jit(bptt.step_backward, static_argnums=0)(cell, params, cache, d_carry)
    assert rel_err((d_p, d_c, d_x), (want_dp, want_dc, want_dx)) < 1e-12


# ---------------------------------------------------------------------------------------------
# one layer: unroll_vjp (fast and per-step reference) against autodiff

LAYER_OPTIONS = [
    # (B, T, D, H, lengths, reverse, truncation)
    (3, 6, 2, 4, False, False, None),
    (3, 7, 2, 3, True, True, 3),
    (4, 7, 3, 3, True, False, 2),
    (2, 5, 2, 3, False, True, None),
    (1, 1, 1, 1, False, False, None),
    (1, 4, 1, 1, True, True, 1),
]
# every option for LSTM and GRU; the vanilla activations share one code path, so they split the rest
LAYER_CASES = [(kind, *o) for kind in ("lstm", "gru") for o in LAYER_OPTIONS]
LAYER_CASES += [("tanh", *LAYER_OPTIONS[i]) for i in (0, 1, 3, 5)]
LAYER_CASES += [(kind, *LAYER_OPTIONS[i]) for kind, i in (("relu", 1), ("sigmoid", 2), ("linear", 4))]


@pytest.mark.parametrize("kind,B,T,D,H,with_lengths,reverse,truncation", LAYER_CASES)
def test_unroll_vjp_matches_autodiff(kind, B, T, D, H, with_lengths, reverse, truncation):
    cell, params, xs, carry, d_ys, d_carry_T = layer_setup(kind, B, T, D, H, seed=T + H)
    lengths = lengths_for(B, T) if with_lengths else None

    @jax.jit
    def autodiff(params, xs, carry, d_ys, d_carry_T):
        if truncation is None:
            f = lambda p, x, c: jrnn.unroll(cell, p, x, c, seq_lengths=lengths, reverse=reverse)  # noqa: E731
        else:
            f = lambda p, x, c: stop_gradient_unroll(cell, p, x, c, lengths, truncation, reverse)  # noqa: E731
        _, pullback = jax.vjp(f, params, xs, carry)
        return pullback((d_carry_T, d_ys))

    @jax.jit
    def hand(params, xs, carry, d_ys, d_carry_T):
        kw = dict(seq_lengths=lengths, reverse=reverse, truncation=truncation)
        fast = hand_vjp(cell, params, xs, carry, d_ys, d_carry_T, **kw)
        reference = hand_vjp(cell, params, xs, carry, d_ys, d_carry_T, form="reference", **kw)
        return fast, reference

    want = autodiff(params, xs, carry, d_ys, d_carry_T)
    fast, reference = hand(params, xs, carry, d_ys, d_carry_T)
    assert rel_err(fast, want) < 1e-10
    assert rel_err(reference, want) < 1e-10
    assert rel_err(fast, reference) < 1e-12  # the fast form is the reference, reorganized


@pytest.mark.parametrize("kind", ["lstm", "gru", "tanh"])
def test_unroll_vjp_layouts_and_defaults(kind):
    cell, params, xs, carry, d_ys, d_carry_T = layer_setup(kind, B=2, T=5, D=2, H=3, seed=4)
    base = hand_vjp(cell, params, xs, carry, d_ys, d_carry_T)
    # time-major
    tm = hand_vjp(cell, params, jnp.swapaxes(xs, 0, 1), carry, jnp.swapaxes(d_ys, 0, 1), d_carry_T, time_major=True)
    assert rel_err((tm[0], jnp.swapaxes(tm[1], 0, 1), tm[2]), base) < 1e-13
    # an unbatched sequence is one row of the batch
    row = lambda t: jax.tree_util.tree_map(lambda a: a[1], t)  # noqa: E731
    one = hand_vjp(cell, params, xs[1], row(carry), d_ys[1], row(d_carry_T))
    two = hand_vjp(cell, params, xs[1:2], jax.tree_util.tree_map(lambda a: a[1:2], carry), d_ys[1:2],
                          jax.tree_util.tree_map(lambda a: a[1:2], d_carry_T))  # fmt: skip
    assert rel_err(one, (two[0], two[1][0], row(two[2]))) < 1e-13
    # None means zeros for the carry and both cotangents
    zeros = jax.tree_util.tree_map(jnp.zeros_like, carry)
    got = hand_vjp(cell, params, xs, None, None, None)
    want = hand_vjp(cell, params, xs, zeros, jnp.zeros_like(d_ys), zeros)
    assert rel_err(got, want) == 0.0


@pytest.mark.parametrize("reverse", [False, True])
def test_truncation_equals_chunked_unroll(reverse):
    """The chunk-by-chunk definition: ``unroll`` on chunks of k positions, ``stop_gradient`` on the
    carry passed between them (a reverse layer visits the chunks last to first)."""
    cell, params, xs, carry, d_ys, d_carry_T = layer_setup("lstm", B=3, T=8, D=2, H=3, seed=8)
    lengths = jnp.array([8, 5, 0], jnp.int32)
    k = 3
    f = lambda p, x, c: chunked_unroll(cell, p, x, c, lengths, k, reverse)  # noqa: E731
    out, want = jax.jit(lambda *a: (f(*a), jax.vjp(f, *a)[1]((d_carry_T, d_ys))))(params, xs, carry)
    got = hand_vjp(cell, params, xs, carry, d_ys, d_carry_T, seq_lengths=lengths, reverse=reverse, truncation=k)
    assert rel_err(got, want) < 1e-10
    # the one-scan reference used elsewhere is the same thing
    g = lambda p, x, c: stop_gradient_unroll(cell, p, x, c, lengths, k, reverse)  # noqa: E731
    out2, want2 = jax.jit(lambda *a: (g(*a), jax.vjp(g, *a)[1]((d_carry_T, d_ys))))(params, xs, carry)
    assert rel_err(out2, out) < 1e-14 and rel_err(want2, want) < 1e-12


@pytest.mark.parametrize("kind,reverse", [("lstm", False), ("lstm", True), ("gru", True)])
def test_remat_chunks_equal_the_stored_reserve(kind, reverse):
    """``remat``: recomputing the gate activations chunk by chunk (chunks of 1 step, of 3 steps with
    a partial last chunk, one chunk) gives the gradients of the stored reserve."""
    from jrnn import scan as fast

    cell, params, xs, carry, d_ys, d_carry_T = layer_setup(kind, B=3, T=7, D=2, H=3, seed=12)
    lengths = jnp.array([7, 4, 0], jnp.int32)
    cuts = bptt.truncation_cuts(7, 3, reverse)
    tm = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731

    @jax.jit
    def run(params, xs, carry, d_ys, d_carry_T):
        xs, d_ys = tm(xs), tm(d_ys)
        _, _, kept = fast.forward(cell, params, xs, carry, lengths, reverse=reverse)
        carries_only = fast.Residuals(kept.states, None)
        kw = dict(reverse=reverse, cuts=cuts)
        full = fast.backward(cell, params, xs, carry, lengths, kept, d_ys, d_carry_T, **kw)
        chunked = [
            fast.backward(cell, params, xs, carry, lengths, carries_only, d_ys, d_carry_T, remat_chunk=c, **kw)
            for c in (1, 3, 7)
        ]
        return full, chunked

    full, chunked = run(params, xs, carry, d_ys, d_carry_T)
    for got in chunked:
        assert rel_err(got, full) < 1e-12


def test_truncation_boundaries():
    np.testing.assert_array_equal(bptt.truncation_cuts(7, 3), [0, 0, 0, 1, 0, 0, 1])
    # reverse: the carry entering position t comes from t + 1; cut where t + 1 is a multiple of k
    np.testing.assert_array_equal(bptt.truncation_cuts(7, 3, reverse=True), [0, 0, 1, 0, 0, 1, 0])
    assert bptt.truncation_cuts(5, None) is None
    assert not bptt.truncation_cuts(5, 5).any() and not bptt.truncation_cuts(5, 9, reverse=True).any()


@pytest.mark.parametrize("reverse", [False, True])
def test_truncation_is_local_to_chunks(reverse):
    """With truncation k, the gradient of step s's output reaches only inputs of its own chunk,
    for forward and reverse layers alike (chunks [0, k), [k, 2k), ...)."""
    cell, params, xs, carry, _, _ = layer_setup("lstm", B=1, T=7, D=2, H=3, seed=9)
    k, s = 3, 4  # position 4 lies in chunk [3, 6)
    d_ys = jnp.zeros((1, 7, 3), F64).at[0, s].set(1.0)
    _, d_xs, d_c0 = hand_vjp(cell, params, xs, carry, d_ys, None, reverse=reverse, truncation=k)
    touched = np.abs(np.asarray(d_xs[0])).sum(-1) > 0
    want = np.zeros(7, bool)
    if reverse:
        want[s:6] = True  # y_4 reads positions 4, 5 of its chunk (6 is the next chunk)
    else:
        want[3 : s + 1] = True  # y_4 reads positions 3, 4 of its chunk
    np.testing.assert_array_equal(touched, want)
    assert all(float(jnp.abs(a).max()) == 0.0 for a in jax.tree_util.tree_leaves(d_c0))
    # without truncation the gradient reaches every earlier (reverse: later) step and the carry
    _, d_xs, d_c0 = hand_vjp(cell, params, xs, carry, d_ys, None, reverse=reverse)
    touched = np.abs(np.asarray(d_xs[0])).sum(-1) > 0
    np.testing.assert_array_equal(touched, np.arange(7) >= s if reverse else np.arange(7) <= s)
    assert all(float(jnp.abs(a).max()) > 0.0 for a in jax.tree_util.tree_leaves(d_c0))


def test_truncation_at_least_T_is_full_bptt():
    cell, params, xs, carry, d_ys, d_carry_T = layer_setup("gru", B=2, T=5, D=2, H=3, seed=2)
    for rev in (False, True):
        full = hand_vjp(cell, params, xs, carry, d_ys, d_carry_T, reverse=rev)
        for k in (5, 8):
            assert rel_err(hand_vjp(cell, params, xs, carry, d_ys, d_carry_T, reverse=rev, truncation=k), full) == 0.0


# ---------------------------------------------------------------------------------------------
# the network: the triangle

# (kind, layers, bidirectional, lengths, output_size, loss, every_step, truncation, dropout, B, T, H)
NETWORK_CASES = [
    ("tanh", 1, False, False, None, "mse", True, None, 0.0, 3, 5, 3),
    ("tanh", 2, True, True, 2, "cross_entropy", False, 2, 0.3, 3, 6, 2),
    ("relu", 2, False, True, 2, "mse", False, None, 0.0, 3, 5, 3),
    ("relu", 1, True, False, None, "cross_entropy", True, None, 0.0, 2, 5, 2),
    ("sigmoid", 1, False, True, 3, "cross_entropy", True, 2, 0.0, 3, 5, 3),
    ("sigmoid", 2, True, False, 1, "mse", True, None, 0.5, 2, 4, 2),
    ("linear", 2, False, False, 2, "mse", True, 2, 0.3, 3, 5, 2),
    ("linear", 1, True, True, None, "mse", False, None, 0.0, 3, 4, 1),
    ("lstm", 1, False, False, 2, "mse", True, None, 0.0, 2, 6, 3),
    ("lstm", 2, True, True, 3, "cross_entropy", True, 2, 0.3, 3, 7, 2),
    ("lstm", 2, False, True, None, "mse", False, 3, 0.0, 3, 6, 2),
    ("lstm", 1, False, False, 1, "mse", True, None, 0.0, 1, 1, 1),
    ("gru", 1, True, True, 2, "mse", True, None, 0.0, 3, 5, 3),
    ("gru", 2, False, False, 3, "cross_entropy", False, 2, 0.3, 2, 6, 2),
    ("gru", 2, True, True, None, "cross_entropy", True, 1, 0.0, 3, 4, 2),
    ("gru", 1, False, True, 1, "mse", False, 4, 0.0, 1, 5, 1),
]
FD_CASES = {0, 3, 5, 8, 12}  # finite differences (untruncated cases: each cell kind, both losses)


def network_setup(kind, layers, bidirectional, with_lengths, output_size, loss, every_step, dropout, B, T, H, seed):
    model = jrnn.RNN(CELLS[kind](H), num_layers=layers, bidirectional=bidirectional, output_size=output_size, dropout=dropout)
    k_p, k_r, k_x, k_t, k_d = jax.random.split(jax.random.PRNGKey(seed), 5)
    D = 2
    params = randomize(model.init(k_p, D, F64), k_r)
    xs = jax.random.normal(k_x, (B, T, D), F64)
    lengths = lengths_for(B, T, seed) if with_lengths else None
    targets = make_targets(loss, every_step, B, T, model.out_size, k_t)
    key = k_d if dropout > 0 else None
    return model, params, xs, lengths, targets, key


@pytest.mark.parametrize("case", range(len(NETWORK_CASES)))
def test_network_gradient_triangle(case):
    kind, layers, bidir, with_lengths, out, loss, every, trunc, dropout, B, T, H = NETWORK_CASES[case]
    model, params, xs, lengths, targets, key = network_setup(
        kind, layers, bidir, with_lengths, out, loss, every, dropout, B, T, H, seed=case
    )
    loss_fn = losses.get_loss(loss).loss

    def autodiff_loss(params):
        return loss_fn(autodiff_network(model, params, xs, lengths, trunc, key), targets, lengths)

    want_loss, want = jax.jit(jax.value_and_grad(autodiff_loss))(params)
    got_loss, got = jax.jit(
        lambda p: bptt.value_and_grad(
            model, p, xs, targets, loss=loss, seq_lengths=lengths, truncation=trunc, dropout_key=key
        )
    )(params)
    assert abs(float(got_loss - want_loss)) <= 1e-12 * abs(float(want_loss))
    assert rel_err(got, want) < 1e-8
    if trunc is None and case in FD_CASES:
        # autodiff against finite differences (truncated gradients are not the loss's derivative)
        check_grads(jax.jit(autodiff_loss), (params,), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)
        # and the hand gradient directly, along a random direction
        v = randomize(params, jax.random.PRNGKey(99), scale=1.0)
        eps = 1e-6
        f = jax.jit(autodiff_loss)
        shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, params, v)  # noqa: E731
        fd = (f(shift(eps)) - f(shift(-eps))) / (2 * eps)
        dot = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(v)))
        assert abs(float(fd - dot)) <= 1e-6 * max(1.0, abs(float(dot)))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_network_truncation_equals_chunked_apply(kind):
    """The literal definition: ``apply`` chunk by chunk, ``stop_gradient(carries)`` passed on."""
    model = jrnn.RNN(CELLS[kind](3), num_layers=2, output_size=2)
    params = randomize(model.init(jax.random.PRNGKey(0), 2, F64), jax.random.PRNGKey(1))
    B, T, k = 3, 8, 3
    xs = jax.random.normal(jax.random.PRNGKey(2), (B, T, 2), F64)
    lengths = jnp.array([8, 4, 6], jnp.int32)
    targets = jax.random.normal(jax.random.PRNGKey(3), (B, T, 2), F64)

    def chunked_loss(params):
        carries, outs = None, []
        for s in range(0, T, k):
            n = min(k, T - s)
            if carries is not None:
                carries = jax.lax.stop_gradient(carries)
            ys, carries = model.apply(params, xs[:, s : s + n], carries, seq_lengths=jnp.clip(lengths - s, 0, n))
            outs.append(ys)
        return losses.mse(jnp.concatenate(outs, axis=1), targets, lengths)

    want_loss, want = jax.jit(jax.value_and_grad(chunked_loss))(params)
    got_loss, got = hand_value_and_grad(model, params, xs, targets, seq_lengths=lengths, truncation=k)
    assert abs(float(got_loss - want_loss)) < 1e-13
    assert rel_err(got, want) < 1e-10
    full_loss, full = hand_value_and_grad(model, params, xs, targets, seq_lengths=lengths)
    assert float(full_loss) == float(got_loss) and rel_err(got, full) > 1e-6  # same loss, cut gradient


def test_network_initial_carries():
    model = jrnn.RNN(jrnn.LSTMCell(3), num_layers=2, bidirectional=True, output_size=2)
    params = randomize(model.init(jax.random.PRNGKey(0), 2, F64), jax.random.PRNGKey(1))
    xs = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 2), F64)
    targets = jax.random.normal(jax.random.PRNGKey(3), (2, 2), F64)
    carries = randomize(model.initial_carries((2,), F64), jax.random.PRNGKey(4))
    want = jax.jit(jax.value_and_grad(lambda p: losses.mse(model.apply(p, xs, carries)[0], targets)))(params)
    got = hand_value_and_grad(model, params, xs, targets, carries=carries)
    assert rel_err(got, want) < 1e-10


# ---------------------------------------------------------------------------------------------
# backward="bptt": the custom rule behind unroll and apply


@pytest.mark.parametrize(
    "kind,with_lengths,reverse",
    [("lstm", False, False), ("lstm", True, True), ("gru", True, False), ("gru", False, True),
     ("tanh", True, True), ("relu", False, False)],
)  # fmt: skip
def test_backward_bptt_unroll_under_jit(kind, with_lengths, reverse):
    cell, params, xs, carry, d_ys, d_carry_T = layer_setup(kind, B=3, T=6, D=2, H=3, seed=5)
    lengths = lengths_for(3, 6) if with_lengths else None

    def loss(params, xs, carry, backward, **kw):
        carry_T, ys = jrnn.unroll(cell, params, xs, carry, seq_lengths=lengths, reverse=reverse, backward=backward, **kw)
        return jnp.vdot(ys, d_ys) + sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(carry_T),
                                                                         jax.tree_util.tree_leaves(d_carry_T)))  # fmt: skip

    grad = lambda **kw: jax.jit(jax.grad(lambda *a: loss(*a, **kw), argnums=(0, 1, 2)))  # noqa: E731
    want = grad(backward="autodiff")(params, xs, carry)
    got = grad(backward="bptt")(params, xs, carry)
    assert rel_err(got, want) < 1e-10
    # unroll and remat are accepted and change nothing
    got2 = grad(backward="bptt", unroll=2, remat=True)(params, xs, carry)
    assert rel_err(got2, want) < 1e-10
    # forward values are the same
    out_a = jrnn.unroll(cell, params, xs, carry, seq_lengths=lengths, reverse=reverse)
    out_b = jrnn.unroll(cell, params, xs, carry, seq_lengths=lengths, reverse=reverse, backward="bptt")
    assert rel_err(out_b, out_a) < 1e-14


def test_backward_bptt_lengths_cotangent_is_float0():
    cell, params, xs, carry, d_ys, d_carry_T = layer_setup("lstm", B=3, T=5, D=2, H=3, seed=6)
    lengths = jnp.array([5, 2, 0], jnp.int32)
    f = lambda p, x, L, backward: jrnn.unroll(cell, p, x, carry, seq_lengths=L, backward=backward)  # noqa: E731
    pull = lambda backward: jax.jit(  # noqa: E731
        lambda p, x, L: jax.vjp(lambda p, x, L: f(p, x, L, backward), p, x, L)[1]((d_carry_T, d_ys))
    )
    got, want = pull("bptt")(params, xs, lengths), pull("autodiff")(params, xs, lengths)
    assert got[2].dtype == jax.dtypes.float0
    assert rel_err(got[:2], want[:2]) < 1e-10


def test_backward_bptt_under_vmap():
    cell, params, xs, carry, d_ys, _ = layer_setup("gru", B=3, T=5, D=2, H=3, seed=7)
    xs4 = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 5, 2), F64)  # 4 independent batches
    lengths4 = jnp.array([[5, 2, 1], [3, 3, 3], [0, 5, 4], [1, 1, 5]], jnp.int32)

    def per_batch(backward):
        def loss(params, xs, lengths):
            _, ys = jrnn.unroll(cell, params, xs, seq_lengths=lengths, reverse=True, backward=backward)
            return jnp.vdot(ys, d_ys)

        return jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, 0, 0)))

    want = per_batch("autodiff")(params, xs4, lengths4)
    got = per_batch("bptt")(params, xs4, lengths4)
    assert rel_err(got, want) < 1e-10
    # and vmap outside grad
    f = lambda backward: jax.jit(jax.grad(lambda p: jax.vmap(  # noqa: E731
        lambda x: jnp.sum(jrnn.unroll(cell, p, x, backward=backward)[1] ** 2))(xs4).sum()))
    assert rel_err(f("bptt")(params), f("autodiff")(params)) < 1e-10


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_backward_bptt_network_bidirectional(kind):
    model = jrnn.RNN(CELLS[kind](3), num_layers=2, bidirectional=True, output_size=2, dropout=0.25)
    params = randomize(model.init(jax.random.PRNGKey(0), 2, F64), jax.random.PRNGKey(1))
    xs = jax.random.normal(jax.random.PRNGKey(2), (3, 6, 2), F64)
    lengths = jnp.array([6, 3, 1], jnp.int32)
    targets = jax.random.normal(jax.random.PRNGKey(3), (3, 6, 2), F64)
    key = jax.random.PRNGKey(4)

    def loss(params, xs, backward):
        ys, _ = model.apply(params, xs, seq_lengths=lengths, dropout_key=key, backward=backward)
        return losses.mse(ys, targets, lengths)

    want = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(params, xs, "autodiff")
    got = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(params, xs, "bptt")
    assert rel_err(got, want) < 1e-10
    hand = hand_value_and_grad(model, params, xs, targets, seq_lengths=lengths, dropout_key=key)[1]
    assert rel_err(hand, want[0]) < 1e-10


BATCH_MAJOR_CELLS = {  # every layout of a step: no residuals, a reserve over the projection or
    # beside it, a two-leaf carry, a projected h, residuals recomputed under remat
    "tanh": lambda: jrnn.VanillaCell(3),
    "lstm": lambda: jrnn.LSTMCell(3),
    "lstm-proj-peepholes": lambda: jrnn.LSTMCell(4, proj_size=2, peepholes=True),
    "gru": lambda: jrnn.GRUCell(3),
    "gru-reset-before": lambda: jrnn.GRUCell(3, reset_after=False),
    "gru-layer-norm": lambda: jrnn.GRUCell(3, layer_norm=True),
    "mingru": lambda: jrnn.MinGRUCell(3),
    "minlstm": lambda: jrnn.MinLSTMCell(3),
}


def _transposes_3d(jaxpr) -> list:
    """The shapes of every 3-D ``transpose`` in a closed jaxpr, its sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "transpose" and eqn.invars[0].aval.ndim == 3:
            found.append(eqn.invars[0].aval.shape)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _transposes_3d(sub)
    return found


@pytest.fixture
def batch_major_always(monkeypatch):
    """Run batch-major sequences batch-major at any size (``jrnn.scan.BATCH_MAJOR_MIN_ELEMENTS``),
    with nothing compiled under the default threshold reused."""
    monkeypatch.setattr(jrnn.scan, "BATCH_MAJOR_MIN_ELEMENTS", 0)
    jax.clear_caches()
    yield
    jax.clear_caches()


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("kind", list(BATCH_MAJOR_CELLS))
def test_batch_major_network_bptt_equals_autodiff_and_time_major(kind, remat, batch_major_always):
    """``RNN.apply(backward="bptt")`` runs a batch-major ``(B, T, D)`` sequence batch-major through
    every layer (``jrnn.scan.runs_batch_major``): values and gradients equal autodiff's and those of
    the time-major path, with a general mask (gaps), dropout of every kind and a readout."""
    cell = BATCH_MAJOR_CELLS[kind]()
    recurrent = 0.0 if kind.startswith("min") else 0.2
    model = jrnn.RNN(cell, num_layers=2, bidirectional=True, output_size=2, dropout=0.25, input_dropout=0.2,
                     recurrent_dropout=recurrent)  # fmt: skip
    params = randomize(model.init(jax.random.PRNGKey(0), 2, F64), jax.random.PRNGKey(1))
    B, T = 3, 7
    xs = jax.random.normal(jax.random.PRNGKey(2), (B, T, 2), F64)
    mask = jnp.array([[1, 1, 0, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]], bool)  # gaps, left padding
    targets = jax.random.normal(jax.random.PRNGKey(3), (B, T, 2), F64)
    key = jax.random.PRNGKey(4)

    def loss(params, xs, backward, time_major=False):
        inputs, m = (jnp.swapaxes(xs, 0, 1), mask.T) if time_major else (xs, mask)
        ys, carries = model.apply(params, inputs, mask=m, dropout_key=key, backward=backward, remat=remat,
                                  time_major=time_major)  # fmt: skip
        ys = jnp.swapaxes(ys, 0, 1) if time_major else ys
        carry_term = sum(jnp.sum(jnp.sin(c)) for c in jax.tree_util.tree_leaves(carries))
        return jnp.sum((ys - targets) ** 2 * jnp.cos(ys)) + carry_term

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=(2, 3))
    want_value, want = grad(params, xs, "autodiff")
    got_value, got = grad(params, xs, "bptt")
    tm_value, tm = grad(params, xs, "bptt", True)
    np.testing.assert_allclose(float(got_value), float(want_value), rtol=1e-12)
    np.testing.assert_allclose(float(tm_value), float(want_value), rtol=1e-12)
    assert rel_err(got, want) < 1e-10
    assert rel_err(tm, want) < 1e-10
    # the batch-major path transposes no sequence
    jaxpr = jax.make_jaxpr(lambda p, x: grad(p, x, "bptt"))(params, xs).jaxpr
    assert _transposes_3d(jaxpr) == []


@pytest.mark.parametrize("kind", ["tanh", "lstm", "gru"])
def test_batch_major_unroll_bptt_equals_autodiff(kind, batch_major_always):
    """``jrnn.unroll(backward="bptt")`` on a batch-major sequence, run batch-major: the gradients of
    autodiff, with lengths, a gap mask, reverse and remat."""
    cell = CELLS[kind](3)
    params = randomize(cell.init(jax.random.PRNGKey(0), 2, F64), jax.random.PRNGKey(1))
    xs = jax.random.normal(jax.random.PRNGKey(2), (3, 6, 2), F64)
    mask = jnp.array([[1, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 1], [0, 0, 1, 1, 1, 1]], bool)
    for reverse in (False, True):
        for remat in (False, True):

            def loss(p, xs, backward):
                carry, ys = jrnn.unroll(cell, p, xs, seq_lengths=jnp.array([6, 5, 4]), mask=mask, reverse=reverse,
                                        remat=remat, backward=backward)  # fmt: skip
                return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree_util.tree_leaves(carry))

            want = jax.grad(loss, argnums=(0, 1))(params, xs, "autodiff")
            got = jax.grad(loss, argnums=(0, 1))(params, xs, "bptt")
            assert rel_err(got, want) < 1e-10
            jaxpr = jax.make_jaxpr(lambda p, x: jax.grad(loss, argnums=(0, 1))(p, x, "bptt"))(params, xs).jaxpr
            assert _transposes_3d(jaxpr) == []


def test_batch_major_path_is_taken_by_the_sequential_hand_bptt_from_its_threshold():
    """The hand-written backward runs a batch-major sequence batch-major from
    ``BATCH_MAJOR_MIN_ELEMENTS`` elements (``B·T·H``) of a layer's output on; below it, and for
    autodiff, a pooled head or a parallel method, ``xs`` is transposed once at the entry."""
    H, D = 16, 2
    T_big = jrnn.scan.BATCH_MAJOR_MIN_ELEMENTS // (4 * H)  # B = 4
    model = jrnn.RNN(jrnn.LSTMCell(H), num_layers=2)
    params = model.init(jax.random.PRNGKey(0), D)

    def transposes(model, backward, T, method="sequential"):
        xs = jnp.ones((4, T, D))
        f = lambda p: jnp.sum(model.apply(p, xs, backward=backward, method=method)[0])  # noqa: E731
        return _transposes_3d(jax.make_jaxpr(jax.grad(f))(params).jaxpr)

    def unroll_transposes(T):
        xs = jnp.ones((4, T, D))
        f = lambda p: jnp.sum(jrnn.unroll(model.cell, p, xs, backward="bptt")[1])  # noqa: E731
        return _transposes_3d(jax.make_jaxpr(jax.grad(f))(params.layers[0]).jaxpr)

    size = 4 * T_big * H
    assert jrnn.scan.runs_batch_major("bptt", "sequential", size)
    assert not jrnn.scan.runs_batch_major("bptt", "sequential", size - 1)
    assert not jrnn.scan.runs_batch_major("autodiff", "sequential", size)
    assert not jrnn.scan.runs_batch_major("bptt", "newton", size)
    assert transposes(model, "bptt", T_big) == []
    assert unroll_transposes(T_big) == []
    assert (4, T_big - 1, D) in transposes(model, "bptt", T_big - 1)
    assert (4, T_big - 1, D) in unroll_transposes(T_big - 1)
    assert (4, T_big, D) in transposes(model, "autodiff", T_big)
    assert (4, T_big, D) in transposes(model, "bptt", T_big, method="quasi_newton")
    pooled = jrnn.RNN(jrnn.LSTMCell(H), num_layers=2, pool="mean")
    assert (4, T_big, D) in transposes(pooled, "bptt", T_big)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_float32_agrees_with_autodiff(kind):
    model = jrnn.RNN(CELLS[kind](16), num_layers=2, output_size=3)
    params = model.init(jax.random.PRNGKey(0), 4, jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(1), (8, 40, 4), jnp.float32)
    lengths = jnp.array([40, 31, 12, 40, 5, 33, 20, 1], jnp.int32)
    targets = jax.random.normal(jax.random.PRNGKey(2), (8, 40, 3), jnp.float32)

    def loss(params, backward):
        return losses.mse(model.apply(params, xs, seq_lengths=lengths, backward=backward)[0], targets, lengths)

    want = jax.jit(jax.grad(loss), static_argnums=1)(params, "autodiff")
    hand = jax.jit(lambda p: hand_value_and_grad(model, p, xs, targets, seq_lengths=lengths))(params)[1]
    custom = jax.jit(jax.grad(loss), static_argnums=1)(params, "bptt")
    for got in (hand, custom):
        assert jax.tree_util.tree_leaves(got)[0].dtype == jnp.float32
        assert rel_err(got, want) < 1e-4


def test_mixed_dtypes_return_cotangents_in_input_dtypes():
    cell = jrnn.LSTMCell(3)
    params = randomize(cell.init(jax.random.PRNGKey(0), 2, jnp.float32), jax.random.PRNGKey(1), dtype=jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 2), F64)  # computes in float64
    d_params, d_xs, d_c0 = hand_vjp(cell, params, xs, None, jnp.ones((2, 4, 3), F64), None)
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(d_params))
    assert d_xs.dtype == F64 and d_c0.h.dtype == F64
    g = jax.jit(jax.grad(lambda p, x: jnp.sum(jrnn.unroll(cell, p, x, backward="bptt")[1]), argnums=(0, 1)))(params, xs)
    want = jax.jit(jax.grad(lambda p, x: jnp.sum(jrnn.unroll(cell, p, x)[1]), argnums=(0, 1)))(params, xs)
    assert rel_err(g, want) < 1e-6


# ---------------------------------------------------------------------------------------------
# errors


def test_errors_name_the_argument():
    cell, params, xs, carry, d_ys, d_carry_T = layer_setup("lstm", B=2, T=4, D=2, H=3)
    with pytest.raises(ValueError, match="truncation"):
        bptt.unroll_vjp(cell, params, xs, carry, d_ys, d_carry_T, truncation=0)
    with pytest.raises(ValueError, match="form"):
        bptt.unroll_vjp(cell, params, xs, carry, d_ys, d_carry_T, form="slow")
    with pytest.raises(ValueError, match="d_ys"):
        bptt.unroll_vjp(cell, params, xs, carry, d_ys[:, :3], d_carry_T)
    with pytest.raises(TypeError, match="d_carry_T"):
        bptt.unroll_vjp(cell, params, xs, carry, d_ys, d_carry_T.h)
    with pytest.raises(ValueError, match="seq_lengths"):
        bptt.unroll_vjp(cell, params, xs, carry, d_ys, d_carry_T, seq_lengths=jnp.array([5, 1]))
    model = jrnn.RNN(cell, output_size=2)
    p = model.init(jax.random.PRNGKey(0), 2, F64)
    targets = jnp.zeros((2, 4, 2), F64)
    with pytest.raises(ValueError, match="loss"):
        bptt.value_and_grad(model, p, xs, targets, loss="hinge")
    with pytest.raises(TypeError, match="model"):
        bptt.value_and_grad(cell, p, xs, targets)
    with pytest.raises(ValueError, match="xs"):
        bptt.value_and_grad(model, p, xs[0], targets)
    with pytest.raises(ValueError, match="truncation"):
        bptt.value_and_grad(model, p, xs, targets, truncation=-2)


@pytest.mark.parametrize("kind", ["lstm", "gru", "tanh"])
def test_public_remat_gives_autodiffs_gradients(kind):
    """``remat=True`` on ``unroll_vjp`` and ``value_and_grad`` (carries kept, gate activations
    recomputed chunk by chunk): autodiff's numbers, with lengths, reverse and truncation."""
    cell, params, xs, carry, d_ys, d_carry_T = layer_setup(kind, B=3, T=9, D=2, H=4, seed=31)
    lengths = jnp.array([9, 5, 0], jnp.int32)
    for reverse, truncation in ((False, None), (True, 4)):
        f = lambda p, x, c: stop_gradient_unroll(cell, p, x, c, lengths, truncation or 9, reverse)  # noqa: E731
        want = jax.vjp(f, params, xs, carry)[1]((d_carry_T, d_ys))
        kw = dict(seq_lengths=lengths, reverse=reverse, truncation=truncation, remat=True)
        got = jax.jit(lambda *a: bptt.unroll_vjp(cell, *a, **kw))(params, xs, carry, d_ys, d_carry_T)
        assert rel_err(got, want) < 1e-10

    model = jrnn.RNN(CELLS[kind](4), num_layers=2, bidirectional=True, output_size=2)
    params = randomize(model.init(jax.random.PRNGKey(5), 2, F64), jax.random.PRNGKey(6))
    xs = jax.random.normal(jax.random.PRNGKey(7), (3, 9, 2), F64)
    targets = jax.random.normal(jax.random.PRNGKey(8), (3, 9, 2), F64)

    def autodiff_loss(params):
        return losses.mse(model.apply(params, xs, seq_lengths=lengths)[0], targets, lengths)

    want_loss, want = jax.value_and_grad(autodiff_loss)(params)
    got_loss, got = bptt.value_and_grad(model, params, xs, targets, seq_lengths=lengths, remat=True)
    assert abs(float(got_loss - want_loss)) <= 1e-12 * abs(float(want_loss))
    assert rel_err(got, want) < 1e-10
