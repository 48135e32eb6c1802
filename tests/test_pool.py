"""Sequence-level heads (``RNN(pool=...)``): the pooled outputs against a NumPy reference, and the
hand-written backward of every pooling against autodiff, in float64 on random inputs."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import bptt

B, T, D, H, O = 4, 6, 3, 5, 2
LENGTHS = np.array([6, 3, 1, 0])


def setup(pool, bidirectional, cell="gru", output_size=O, layers=1, seed=0):
    model = jrnn.RNN(jrnn.make_cell(cell, H), num_layers=layers, bidirectional=bidirectional,
                     output_size=output_size, pool=pool, num_steps=T if pool == "flatten" else None)
    key = jax.random.PRNGKey(seed)
    params = model.init(key, D, jnp.float64)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    params = jax.tree_util.tree_unflatten(
        treedef, [0.5 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)]
    )
    xs = jax.random.normal(jax.random.PRNGKey(seed + 2), (B, T, D), jnp.float64)
    return model, params, xs


def numpy_pool(pool, per_step, finals, lengths):
    """The pooling written from its definition over the per-step outputs ``(B, T, F)``."""
    out = []
    for b in range(per_step.shape[0]):
        L = int(lengths[b])
        steps = per_step[b, :L]
        if pool == "final":
            out.append(np.concatenate([f[b] for f in finals]))
        elif pool == "flatten":
            out.append(per_step[b].reshape(-1))
        elif L == 0:
            out.append(np.zeros(per_step.shape[-1]))
        elif pool == "last":
            out.append(steps[-1])
        elif pool == "mean":
            out.append(steps.mean(axis=0))
        else:
            out.append(steps.max(axis=0))
    return np.stack(out)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pool", ["final", "last", "mean", "max", "flatten"])
def test_pooled_outputs_match_numpy(pool, bidirectional):
    model, params, xs = setup(pool, bidirectional)
    lengths = jnp.asarray(LENGTHS)
    ys, carries = model.apply(params, xs, seq_lengths=lengths)
    assert ys.shape == (B, O)
    per_step_model = jrnn.RNN(model.cell, bidirectional=bidirectional)
    per_step, _ = per_step_model.apply(jrnn.NetworkParams(params.layers, None), xs, seq_lengths=lengths)
    finals = [model.cell.output(c) for c in (carries[-1] if bidirectional else (carries[-1],))]
    pooled = numpy_pool(pool, np.asarray(per_step), [np.asarray(f) for f in finals], LENGTHS)
    want = pooled @ np.asarray(params.readout.w) + np.asarray(params.readout.b)[None]
    np.testing.assert_allclose(np.asarray(ys), want, rtol=1e-12, atol=1e-12)


def test_final_pool_reads_each_directions_final_state():
    """Forward direction: h after the last valid step; backward direction: h after step 0, which
    for a sequence is the backward output at position 0."""
    model, params, xs = setup("final", True, output_size=None)
    lengths = jnp.asarray(LENGTHS)
    ys, _ = model.apply(params, xs, seq_lengths=lengths)
    per_step, _ = jrnn.RNN(model.cell, bidirectional=True).apply(params, xs, seq_lengths=lengths)
    for b, L in enumerate(LENGTHS):
        if L:
            np.testing.assert_allclose(ys[b, :H], per_step[b, L - 1, :H], rtol=1e-12)
            np.testing.assert_allclose(ys[b, H:], per_step[b, 0, H:], rtol=1e-12)
        else:
            np.testing.assert_array_equal(np.asarray(ys[b]), 0.0)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pool", ["final", "last", "mean", "max", "flatten"])
def test_hand_backward_of_every_pool_equals_autodiff(pool, bidirectional, loss):
    cell = "lstm" if bidirectional else "gru"
    model, params, xs = setup(pool, bidirectional, cell=cell, output_size=3 if loss == "cross_entropy" else O, layers=2)
    lengths = jnp.asarray(LENGTHS)
    rng = np.random.default_rng(3)
    targets = (jnp.asarray(rng.integers(0, 3, B)) if loss == "cross_entropy"
               else jnp.asarray(rng.standard_normal((B, O))))
    loss_fn = jrnn.losses.get_loss(loss).loss

    def objective(p, backward):
        ys, _ = model.apply(p, xs, seq_lengths=lengths, backward=backward)
        return loss_fn(ys[:, None], targets)  # one scored step per sequence

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want_value, want = jax.value_and_grad(objective)(params, "autodiff")
        value, grads = bptt.value_and_grad(model, params, xs, targets, loss=loss, seq_lengths=lengths)
        through_custom_vjp = jax.grad(objective)(params, "bptt")
    np.testing.assert_allclose(float(value), float(want_value), rtol=1e-12)
    for got, ref, via in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want),
                             jax.tree_util.tree_leaves(through_custom_vjp), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(via), np.asarray(ref), rtol=1e-9, atol=1e-12)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads.layers))


def test_pooled_gradient_against_finite_differences():
    model, params, xs = setup("mean", True, cell="vanilla")
    targets = jnp.asarray(np.random.default_rng(4).standard_normal((B, O)))
    lengths = jnp.asarray(LENGTHS)
    f = lambda p: bptt.value_and_grad(model, p, xs, targets, seq_lengths=lengths)[0]  # noqa: E731
    _, grads = bptt.value_and_grad(model, params, xs, targets, seq_lengths=lengths)
    w = params.layers[0][1].w_h
    eps = 1e-6
    for idx in [(0, 0), (2, 3), (4, 1)]:
        bump = jnp.zeros_like(w).at[idx].set(eps)
        plus = params._replace(layers=((params.layers[0][0], params.layers[0][1]._replace(w_h=w + bump)),))
        minus = params._replace(layers=((params.layers[0][0], params.layers[0][1]._replace(w_h=w - bump)),))
        fd = (float(f(plus)) - float(f(minus))) / (2 * eps)
        assert fd == pytest.approx(float(grads.layers[0][1].w_h[idx]), rel=1e-6, abs=1e-9)


def test_bidirectional_last_step_training_warns():
    model, params, xs = setup("last", True)
    targets = jnp.zeros((B, O))
    with pytest.warns(UserWarning, match="pool='final'"):
        bptt.value_and_grad(model, params, xs, targets)
    per_step = jrnn.RNN(jrnn.GRUCell(H), bidirectional=True, output_size=O)
    with pytest.warns(UserWarning, match="pool='final'"):
        bptt.value_and_grad(per_step, per_step.init(jax.random.PRNGKey(0), D), xs.astype(jnp.float32), targets)
    final = jrnn.RNN(jrnn.GRUCell(H), bidirectional=True, output_size=O, pool="final")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bptt.value_and_grad(final, final.init(jax.random.PRNGKey(0), D), xs.astype(jnp.float32), targets)


def test_pool_errors():
    with pytest.raises(ValueError, match="pool must be one of"):
        jrnn.RNN(jrnn.GRUCell(4), pool="sum")
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
        jrnn.RNN(jrnn.GRUCell(4), pool="flatten")
    with pytest.raises(ValueError, match="num_steps must be None unless pool='flatten'"):
        jrnn.RNN(jrnn.GRUCell(4), pool="mean", num_steps=5)
    model, params, xs = setup("flatten", False)
    with pytest.raises(ValueError, match=f"xs must be a sequence of num_steps={T} steps"):
        model.apply(params, xs[:, :-1])
    assert params.readout.w.shape == (T * H, O)


def test_unbatched_pooled_output():
    model, params, xs = setup("mean", False)
    ys, _ = model.apply(params, xs[1])
    batched, _ = model.apply(params, xs)
    assert ys.shape == (O,)
    np.testing.assert_allclose(np.asarray(ys), np.asarray(batched[1]), rtol=1e-12)
