"""``unroll`` against a plain loop (NumPy, per-gate formulas) for every option."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
import reference as ref
from helpers import make, random_lengths, randomize

CASES = [
    ("vanilla", "tanh"),
    ("vanilla", "relu"),
    ("vanilla", "sigmoid"),
    ("vanilla", "linear"),
    ("lstm", None),
    ("gru", None),
]


def setup(kind, activation, B=3, T=6, D=2, H=4, seed=0):
    cell = make(kind, H, activation or "tanh")
    k_p, k_x, k_h, k_c = jax.random.split(jax.random.PRNGKey(seed), 4)
    p = randomize(cell.init(k_p, D, jnp.float64), k_p)
    xs = jax.random.normal(k_x, (B, T, D), jnp.float64)
    h0 = 0.5 * jax.random.normal(k_h, (B, H), jnp.float64)
    c0 = 0.5 * jax.random.normal(k_c, (B, H), jnp.float64)
    carry = jrnn.LSTMCarry(h0, c0) if kind == "lstm" else h0
    return cell, p, xs, carry, h0, (c0 if kind == "lstm" else None)


def final_h(carry):
    return carry.h if isinstance(carry, jrnn.LSTMCarry) else carry


@pytest.mark.parametrize("kind,activation", CASES)
@pytest.mark.parametrize("with_lengths,reverse", list(itertools.product([False, True], [False, True])))
def test_unroll_matches_loop(kind, activation, with_lengths, reverse):
    cell, p, xs, carry, h0, c0 = setup(kind, activation)
    lengths = random_lengths(np.random.default_rng(1), 3, 6) if with_lengths else None
    carry_T, ys = jrnn.unroll(cell, p, xs, carry, seq_lengths=lengths, reverse=reverse)
    want_ys, want_h, want_c = ref.layer(kind, p, xs, h0, c0, lengths, reverse, activation or "tanh")
    np.testing.assert_allclose(ys, want_ys, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(final_h(carry_T), want_h, rtol=1e-11, atol=1e-12)
    if kind == "lstm":
        np.testing.assert_allclose(carry_T.c, want_c, rtol=1e-11, atol=1e-12)


def test_zero_length_sequence_keeps_initial_carry_and_outputs_zeros():
    cell, p, xs, carry, h0, c0 = setup("lstm", None)
    lengths = jnp.array([6, 0, 2], jnp.int32)
    for reverse in (False, True):
        carry_T, ys = jrnn.unroll(cell, p, xs, carry, seq_lengths=lengths, reverse=reverse)
        np.testing.assert_array_equal(carry_T.h[1], h0[1])
        np.testing.assert_array_equal(carry_T.c[1], c0[1])
        np.testing.assert_array_equal(ys[1], 0.0)
        np.testing.assert_array_equal(ys[2, 2:], 0.0)
        assert np.all(np.abs(ys[2, :2]) > 0)


@pytest.mark.parametrize("kind,activation", [("vanilla", "tanh"), ("lstm", None), ("gru", None)])
def test_time_major_unbatched_unroll_remat_agree(kind, activation):
    cell, p, xs, carry, h0, c0 = setup(kind, activation, T=7)
    lengths = jnp.array([7, 3, 5], jnp.int32)
    base_c, base = jrnn.unroll(cell, p, xs, carry, seq_lengths=lengths)
    tm_c, tm = jrnn.unroll(cell, p, jnp.swapaxes(xs, 0, 1), carry, seq_lengths=lengths, time_major=True)
    np.testing.assert_allclose(jnp.swapaxes(tm, 0, 1), base, rtol=1e-13, atol=1e-14)
    for k in (2, 3, 7):
        _, ys_k = jrnn.unroll(cell, p, xs, carry, seq_lengths=lengths, unroll=k)
        np.testing.assert_allclose(ys_k, base, rtol=1e-13, atol=1e-14)
    _, ys_r = jrnn.unroll(cell, p, xs, carry, seq_lengths=lengths, remat=True)
    np.testing.assert_allclose(ys_r, base, rtol=1e-13, atol=1e-14)
    # an unbatched sequence equals the corresponding row of the batch
    one = jax.tree_util.tree_map(lambda a: a[1], carry)
    c1, ys1 = jrnn.unroll(cell, p, xs[1], one)
    want_ys, want_h, _ = ref.layer(kind, p, xs[1:2], h0[1:2], None if c0 is None else c0[1:2], None, False, activation or "tanh")
    np.testing.assert_allclose(ys1, want_ys[0], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(final_h(c1), want_h[0], rtol=1e-11, atol=1e-12)


def test_default_carry_is_zeros():
    cell, p, xs, carry, h0, c0 = setup("gru", None)
    c_none, ys_none = jrnn.unroll(cell, p, xs)
    c_zero, ys_zero = jrnn.unroll(cell, p, xs, cell.initial_carry((3,), jnp.float64))
    np.testing.assert_array_equal(ys_none, ys_zero)
    want, _, _ = ref.layer("gru", p, xs, np.zeros((3, 4)))
    np.testing.assert_allclose(ys_none, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
def test_grads_agree_across_remat_unroll_and_finite_differences(kind):
    cell, p, xs, carry, _, _ = setup(kind, "tanh", B=2, T=5)
    lengths = jnp.array([5, 3], jnp.int32)
    w = jax.random.normal(jax.random.PRNGKey(9), (2, 5, 4), jnp.float64)

    def loss(p, xs, carry, **kw):
        c, ys = jrnn.unroll(cell, p, xs, carry, seq_lengths=lengths, **kw)
        return jnp.sum(w * ys) + jnp.sum(final_h(c) ** 2)

    g = jax.grad(loss, argnums=(0, 1, 2))(p, xs, carry)
    for kw in ({"remat": True}, {"unroll": 2}, {"reverse": False, "time_major": False}):
        g2 = jax.grad(lambda *a: loss(*a, **kw), argnums=(0, 1, 2))(p, xs, carry)
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g2)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    from jax.test_util import check_grads

    check_grads(lambda p, xs: loss(p, xs, carry), (p, xs), order=1, modes=["rev"], eps=1e-5)


def test_jit_and_vmap():
    cell, p, xs, carry, _, _ = setup("lstm", None)
    lengths = jnp.array([6, 2, 4], jnp.int32)
    f = lambda p, xs, carry, lengths: jrnn.unroll(cell, p, xs, carry, seq_lengths=lengths)  # noqa: E731
    c, ys = f(p, xs, carry, lengths)
    c_j, ys_j = jax.jit(f)(p, xs, carry, lengths)
    np.testing.assert_allclose(ys_j, ys, rtol=1e-13, atol=1e-14)
    # vmap over an outer axis of independent batches
    xs2 = jnp.stack([xs, 2 * xs])
    carry2 = jax.tree_util.tree_map(lambda a: jnp.stack([a, -a]), carry)
    c_v, ys_v = jax.vmap(f, in_axes=(None, 0, 0, None))(p, xs2, carry2, lengths)
    c_1, ys_1 = f(p, 2 * xs, jax.tree_util.tree_map(lambda a: -a, carry), lengths)
    np.testing.assert_allclose(ys_v[0], ys, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(ys_v[1], ys_1, rtol=1e-13, atol=1e-14)


def _eqns(jaxpr):
    """Every equation of a jaxpr, descending into nested jit calls (not into scan bodies)."""
    for e in jaxpr.eqns:
        if e.primitive.name in ("pjit", "jit"):
            yield from _eqns(e.params["jaxpr"].jaxpr)
        else:
            yield e


def test_hoisted_projection_single_matmul_with_w_x():
    """The input projection is outside the loop: the scan body has no product with w_x."""
    cell, p, xs, carry, _, _ = setup("lstm", None)
    jaxpr = jax.make_jaxpr(lambda p, xs: jrnn.unroll(cell, p, xs))(p, xs)
    scans = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "scan"]
    assert len(scans) == 1
    body = scans[0].params["jaxpr"].jaxpr
    dots = [e for e in body.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 1  # only h @ w_h
    assert dots[0].invars[1].aval.shape == (4, 16)


# --------------------------------------------------------------------------------------------
# Both input-projection paths of scan_autodiff (hoisted before the loop, or inside it past
# HOIST_MAX_BYTES) give the same numbers


@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_projection_inside_the_loop_matches_hoisted(kind, reverse, monkeypatch):
    import importlib

    scan_module = importlib.import_module("jrnn.scan")
    cell = jrnn.make_cell(kind, 5)
    params = randomize(cell.init(jax.random.PRNGKey(0), 3, dtype=jnp.float64), jax.random.PRNGKey(2))
    xs = jnp.asarray(np.random.default_rng(1).standard_normal((4, 9, 3)))
    lengths = jnp.asarray([9, 0, 4, 7])

    def loss(p, xs):
        carry, ys = jrnn.unroll(cell, p, xs, seq_lengths=lengths, reverse=reverse)
        return jnp.sum(ys**2) + sum(jnp.sum(c**2) for c in jax.tree_util.tree_leaves(carry))

    hoisted_dot = f"f64[9,4,{cell.gate_size}] = dot_general"  # (T, B, D) @ (D, G) before the loop
    assert hoisted_dot in str(jax.make_jaxpr(loss)(params, xs))
    hoisted = jax.value_and_grad(loss, argnums=(0, 1))(params, xs)
    monkeypatch.setattr(scan_module, "HOIST_MAX_BYTES", 0)
    jax.clear_caches()
    assert hoisted_dot not in str(jax.make_jaxpr(loss)(params, xs))
    inside = jax.value_and_grad(loss, argnums=(0, 1))(params, xs)
    jax.clear_caches()
    for a, b in zip(jax.tree_util.tree_leaves(inside), jax.tree_util.tree_leaves(hoisted), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
