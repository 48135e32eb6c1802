"""Per-step masks (``mask=`` in ``unroll`` and ``apply``) and bidirectional merge modes
(``RNN(merge=...)``): outputs against a plain per-sequence loop, and both backwards against
autodiff, in float64 on random inputs."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import bptt

B, T, D, H = 4, 7, 3, 5
MASK = np.ones((B, T), bool)
MASK[0, :2] = False  # left padding
MASK[1, 3:5] = False  # a gap
MASK[2, :] = False  # nothing runs
MASK[3, [0, 6]] = False


def randomize(tree, key):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(treedef, [0.5 * jax.random.normal(k, a.shape, a.dtype)
                                                  for k, a in zip(keys, leaves)])


def loop_reference(cell, params, xs, mask, reverse):
    """Each sequence alone, one ``cell`` call per unmasked step, in processing order."""
    ys = np.zeros((B, T, cell.output_size))
    finals = []
    for b in range(B):
        carry = cell.initial_carry((), jnp.float64)
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            if mask[b, t]:
                carry, y = cell(params, carry, xs[b, t])
                ys[b, t] = np.asarray(y)
        finals.append(carry)
    return ys, finals


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
def test_unroll_with_mask_matches_a_loop_over_unmasked_steps(kind, reverse):
    cell = jrnn.make_cell(kind, H)
    params = randomize(cell.init(jax.random.PRNGKey(0), D, jnp.float64), jax.random.PRNGKey(1))
    xs = jax.random.normal(jax.random.PRNGKey(2), (B, T, D), jnp.float64)
    carry_T, ys = jrnn.unroll(cell, params, xs, mask=jnp.asarray(MASK), reverse=reverse)
    want_ys, finals = loop_reference(cell, params, xs, MASK, reverse)
    np.testing.assert_allclose(np.asarray(ys), want_ys, rtol=1e-12, atol=1e-13)
    for b in range(B):
        for got, want in zip(jax.tree_util.tree_leaves(carry_T), jax.tree_util.tree_leaves(finals[b])):
            np.testing.assert_allclose(np.asarray(got[b]), np.asarray(want), rtol=1e-12, atol=1e-13)
    time_major = jrnn.unroll(cell, params, jnp.swapaxes(xs, 0, 1), mask=jnp.asarray(MASK.T), reverse=reverse,
                             time_major=True)[1]
    np.testing.assert_allclose(np.asarray(jnp.swapaxes(time_major, 0, 1)), want_ys, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
def test_masked_gradients_bptt_equals_autodiff(kind, reverse):
    cell = jrnn.make_cell(kind, H)
    params = randomize(cell.init(jax.random.PRNGKey(0), D, jnp.float64), jax.random.PRNGKey(3))
    xs = jax.random.normal(jax.random.PRNGKey(4), (B, T, D), jnp.float64)
    lengths = jnp.array([7, 6, 3, 5])  # combined with the mask

    def objective(p, xs, backward, remat=False):
        carry, ys = jrnn.unroll(cell, p, xs, mask=jnp.asarray(MASK), seq_lengths=lengths, reverse=reverse,
                                backward=backward, remat=remat)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree_util.tree_leaves(carry))

    want = jax.grad(objective, argnums=(0, 1))(params, xs, "autodiff")
    for remat in (False, True):
        got = jax.grad(objective, argnums=(0, 1))(params, xs, "bptt", remat)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


def test_apply_with_mask_and_pooling():
    model = jrnn.RNN(jrnn.GRUCell(H), num_layers=2, bidirectional=True, output_size=2)
    params = randomize(model.init(jax.random.PRNGKey(0), D, jnp.float64), jax.random.PRNGKey(5))
    xs = jax.random.normal(jax.random.PRNGKey(6), (B, T, D), jnp.float64)
    ys, _ = model.apply(params, xs, mask=jnp.asarray(MASK))
    assert np.all(np.asarray(ys)[~MASK] == 0.0)  # masked steps output zeros, readout included
    # dropping the masked steps of a sequence gives the same outputs at its unmasked ones
    b = 1
    kept = np.flatnonzero(MASK[b])
    alone, _ = model.apply(params, xs[b, kept])
    np.testing.assert_allclose(np.asarray(ys[b, kept]), np.asarray(alone), rtol=1e-12, atol=1e-13)
    pooled = jrnn.RNN(model.cell, num_layers=2, bidirectional=True, output_size=2, pool="mean")
    got, _ = pooled.apply(params, xs, mask=jnp.asarray(MASK))
    per_step, _ = jrnn.RNN(model.cell, num_layers=2, bidirectional=True).apply(
        params._replace(readout=None), xs, mask=jnp.asarray(MASK))
    mean = np.stack([np.asarray(per_step[i])[MASK[i]].mean(0) if MASK[i].any() else np.zeros(2 * H)
                     for i in range(B)])
    np.testing.assert_allclose(np.asarray(got), mean @ np.asarray(params.readout.w) + np.asarray(params.readout.b)[None],
                               rtol=1e-12, atol=1e-12)


def test_mask_errors():
    cell = jrnn.GRUCell(3)
    params = cell.init(jax.random.PRNGKey(0), 2)
    xs = jnp.zeros((2, 4, 2))
    with pytest.raises(ValueError, match=r"mask must be of shape \(2, 4\)"):
        jrnn.unroll(cell, params, xs, mask=jnp.ones((4, 2), bool))
    with pytest.raises(TypeError, match="mask must be booleans"):
        jrnn.unroll(cell, params, xs, mask=jnp.ones((2, 4)))


MERGED = {
    "concat": lambda f, b: np.concatenate([f, b], -1),
    "sum": lambda f, b: f + b,
    "mean": lambda f, b: 0.5 * (f + b),
    "mul": lambda f, b: f * b,
}


@pytest.mark.parametrize("merge", list(MERGED))
def test_merge_modes_match_a_numpy_merge_of_the_directions(merge):
    cell = jrnn.LSTMCell(H)
    model = jrnn.RNN(cell, num_layers=2, bidirectional=True, merge=merge)
    params = randomize(model.init(jax.random.PRNGKey(0), D, jnp.float64), jax.random.PRNGKey(7))
    xs = jax.random.normal(jax.random.PRNGKey(8), (B, T, D), jnp.float64)
    lengths = jnp.array([7, 2, 0, 5])
    ys, _ = model.apply(params, xs, seq_lengths=lengths)
    h = xs
    for layer in params.layers:
        f = jrnn.unroll(cell, layer[0], h, seq_lengths=lengths)[1]
        b = jrnn.unroll(cell, layer[1], h, seq_lengths=lengths, reverse=True)[1]
        h = jnp.asarray(MERGED[merge](np.asarray(f), np.asarray(b)))
    np.testing.assert_allclose(np.asarray(ys), np.asarray(h), rtol=1e-12, atol=1e-13)
    assert ys.shape[-1] == model.top_size == (2 * H if merge == "concat" else H)


@pytest.mark.parametrize("pool", [None, "final", "max"])
@pytest.mark.parametrize("merge", list(MERGED))
def test_merge_hand_backward_equals_autodiff(merge, pool):
    model = jrnn.RNN(jrnn.GRUCell(4), num_layers=2, bidirectional=True, merge=merge, output_size=2, pool=pool)
    params = randomize(model.init(jax.random.PRNGKey(0), D, jnp.float64), jax.random.PRNGKey(9))
    xs = jax.random.normal(jax.random.PRNGKey(10), (B, T, D), jnp.float64)
    lengths = jnp.array([7, 3, 1, 5])
    targets = jax.random.normal(jax.random.PRNGKey(11), (B, 2) if pool else (B, T, 2), jnp.float64)
    mse = jrnn.losses.get_loss("mse").loss

    def objective(p):
        ys = model.apply(p, xs, seq_lengths=lengths)[0]
        return mse(ys[:, None], targets) if pool else mse(ys, targets, lengths)

    value, want = jax.value_and_grad(objective)(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got_value, got = bptt.value_and_grad(model, params, xs, targets, seq_lengths=lengths)
    assert float(got_value) == pytest.approx(float(value), rel=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


def test_merge_errors():
    with pytest.raises(ValueError, match="merge must be one of"):
        jrnn.RNN(jrnn.GRUCell(3), bidirectional=True, merge="max")
    with pytest.raises(ValueError, match="merge must be 'concat' for a unidirectional RNN"):
        jrnn.RNN(jrnn.GRUCell(3), merge="sum")
