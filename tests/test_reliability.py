"""Nothing silently wrong: what padding holds never reaches the results.

A NaN or an infinity at steps that do not run (past ``seq_lengths``, or where ``mask`` is False)
used to make every weight gradient NaN: the outputs there were discarded, but the input
projection multiplied them by zero cotangents (``0·NaN``). Padding is now never read, as
PyTorch's packed sequences never read it; gradients equal those of the same batch with zeros in
the padding, in both backwards, for the network and for one layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import bptt, diagnostics

B, T, D, H, O = 3, 6, 2, 4, 2
LENGTHS = np.array([6, 3, 1])
MASK = np.array([[1, 1, 0, 1, 1, 1], [0, 1, 1, 0, 1, 0], [1, 0, 0, 0, 0, 1]], bool)


def poisoned(valid: np.ndarray):
    """Random inputs with NaN and inf at every step that does not run, and the same with zeros."""
    xs = np.random.default_rng(0).standard_normal((B, T, D))
    bad = np.where(valid[..., None], xs, np.nan)
    bad[~valid, 0] = np.inf
    return jnp.asarray(bad), jnp.asarray(np.where(valid[..., None], xs, 0.0))


def valid_of(lengths=None, mask=None) -> np.ndarray:
    valid = np.ones((B, T), bool)
    if lengths is not None:
        valid &= np.arange(T)[None] < lengths[:, None]
    if mask is not None:
        valid &= mask
    return valid


def assert_same_finite(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.all(np.isfinite(np.asarray(x)))
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backward", ["autodiff", "bptt"])
@pytest.mark.parametrize("kind", ["lengths", "mask"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_nan_in_padding_never_reaches_the_network_gradients(backward, kind, bidirectional):
    model = jrnn.RNN(jrnn.GRUCell(H), num_layers=2, bidirectional=bidirectional, output_size=O)
    params = model.init(jax.random.PRNGKey(0), D, jnp.float64)
    given = {"seq_lengths": jnp.asarray(LENGTHS)} if kind == "lengths" else {"mask": jnp.asarray(MASK)}
    bad, clean = poisoned(valid_of(**({"lengths": LENGTHS} if kind == "lengths" else {"mask": MASK})))

    def loss(p, xs):
        ys, _ = model.apply(p, xs, backward=backward, **given)
        return jnp.sum(ys**2)

    value, grads = jax.value_and_grad(loss)(params, bad)
    assert np.isfinite(float(value))
    assert_same_finite(grads, jax.grad(loss)(params, clean))
    d_xs = jax.grad(loss, argnums=1)(params, bad)
    assert_same_finite(d_xs, jax.grad(loss, argnums=1)(params, clean))


def test_nan_in_padding_never_reaches_the_hand_written_network_gradient_or_the_diagnostics():
    model = jrnn.RNN(jrnn.LSTMCell(H), num_layers=2, output_size=O)
    params = model.init(jax.random.PRNGKey(1), D, jnp.float64)
    bad, clean = poisoned(valid_of(lengths=LENGTHS))
    targets = jnp.asarray(np.random.default_rng(1).standard_normal((B, T, O)))
    lengths = jnp.asarray(LENGTHS)
    got = bptt.value_and_grad(model, params, bad, targets, loss="mse", seq_lengths=lengths)
    want = bptt.value_and_grad(model, params, clean, targets, loss="mse", seq_lengths=lengths)
    assert_same_finite(got, want)
    norms = diagnostics.hidden_grad_norms(model, params, bad, targets, loss="mse", seq_lengths=lengths)
    assert_same_finite(norms, diagnostics.hidden_grad_norms(model, params, clean, targets, loss="mse",
                                                            seq_lengths=lengths))


@pytest.mark.parametrize("method", ["sequential", "newton"])
def test_nan_in_padding_never_reaches_one_layer(method):
    cell = jrnn.LSTMCell(H)
    params = cell.init(jax.random.PRNGKey(2), D, jnp.float64)
    bad, clean = poisoned(valid_of(lengths=LENGTHS))
    lengths = jnp.asarray(LENGTHS)

    def loss(p, xs):
        carry, ys = jrnn.unroll(cell, p, xs, seq_lengths=lengths, method=method)
        return jnp.sum(ys**2) + jnp.sum(carry.c**2)

    assert_same_finite(jax.value_and_grad(loss)(params, bad), jax.value_and_grad(loss)(params, clean))
    if method != "sequential":  # the solver's own entry point reads no padding either
        solved = jrnn.parallel.solve(cell, params, bad, seq_lengths=lengths, method=method)
        assert solved.info.converged
        assert_same_finite(solved.ys, jrnn.parallel.solve(cell, params, clean, seq_lengths=lengths, method=method).ys)


# --------------------------------------------------------------------------------------------
# Clear errors where a deep traceback (or a silent wrong answer) used to come


def test_from_flax_refuses_integer_weights():
    cell = jrnn.GRUCell(H)
    params = cell.init(jax.random.PRNGKey(0), D)
    _, variables = jrnn.interop.to_flax(cell, params)
    tree = {name: dict(leaves) for name, leaves in variables["params"].items()}
    tree["hr"]["kernel"] = jnp.ones((H, H), jnp.int32)
    with pytest.raises(TypeError, match=r"cell_params\['hr'\]\['kernel'\] must be floating point, got dtype int32"):
        jrnn.interop.from_flax(tree, "gru")


@pytest.mark.parametrize("cell", [jrnn.MinGRUCell(H), jrnn.LSTMCell(H, proj_size=2)], ids=["mingru", "lstm_proj"])
def test_recurrent_spectrum_says_which_cells_it_does_not_apply_to(cell):
    params = cell.init(jax.random.PRNGKey(0), D)
    with pytest.raises(ValueError, match=r"cell must be a cell whose recurrent weights are square gate blocks"):
        diagnostics.recurrent_spectrum(cell, params)
    spectrum = diagnostics.recurrent_spectrum(jrnn.LSTMCell(H), jrnn.LSTMCell(H).init(jax.random.PRNGKey(0), D))
    assert list(spectrum) == ["i", "f", "g", "o"]


# ----------------------------------------------------------------------------------------------
# Updates that would overflow the optimizer's state are skipped
# ----------------------------------------------------------------------------------------------


def _linear_loss(params, batch, key):
    return jnp.sum(params["w"] * batch)


def _all_finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(tree)
               if np.issubdtype(np.asarray(leaf).dtype, np.inexact))


def test_an_update_that_would_overflow_the_params_is_skipped():
    # a finite loss and gradient (norm 1e10), but lr * grad = 1e40 overflows float32 params
    optimizer = jrnn.optim.make_optimizer("sgd", 1e30)
    step = jrnn.train.make_train_step(_linear_loss, optimizer)
    params = {"w": jnp.asarray(np.random.default_rng(1).standard_normal(3), jnp.float32)}
    state = optimizer.init(params)
    new_params, new_state, m = step(params, state, jnp.full((3,), 1e10 / np.sqrt(3), jnp.float32))
    assert np.isfinite(float(m["grad_norm"])) and np.isfinite(float(m["loss"]))
    assert not bool(m["finite"]) and int(m["num_nonfinite"]) == 1 and int(m["num_updates"]) == 0
    for a, b in zip(jax.tree_util.tree_leaves((new_params, new_state)), jax.tree_util.tree_leaves((params, state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # training goes on: an ordinary gradient moves the weights
    moved, _, m = step(new_params, new_state, jnp.asarray(np.random.default_rng(2).standard_normal(3) * 1e-31, jnp.float32))
    assert bool(m["finite"]) and int(m["num_updates"]) == 1
    assert not np.array_equal(np.asarray(moved["w"]), np.asarray(params["w"]))


def test_adagrad_accumulator_overflow_is_refused_at_the_step_that_overflows():
    # g² = 1e38 per step: the accumulator overflows float32 at the 4th step (4e38)
    optimizer = jrnn.optim.make_optimizer("adagrad", 1e-2)
    step = jrnn.train.make_train_step(_linear_loss, optimizer)
    params = {"w": jnp.asarray([0.3], jnp.float32)}
    state = optimizer.init(params)
    finite = []
    for _ in range(5):
        params, state, m = step(params, state, jnp.asarray([1e19], jnp.float32))
        finite.append(bool(m["finite"]))
        assert _all_finite((params, state))
    assert finite == [True, True, True, False, False]


# ----------------------------------------------------------------------------------------------
# float16 losses accumulate in float32
# ----------------------------------------------------------------------------------------------


def test_float16_losses_and_metrics_do_not_overflow_when_summing_many_values():
    rng = np.random.default_rng(3)
    preds = rng.uniform(5, 15, (4, 3000, 2))     # squares ~100: a float16 sum of 24 000 overflows
    targets = rng.standard_normal((4, 3000, 2))
    logits, labels = rng.standard_normal((4, 3000, 3)), rng.integers(0, 3, (4, 3000))
    half = lambda a: jnp.asarray(a, jnp.float16)  # noqa: E731
    want_mse = np.mean((preds.astype(np.float16).astype(np.float64) - targets.astype(np.float16)) ** 2)
    for got in (jrnn.losses.mse(half(preds), half(targets)), jrnn.losses.mse_value_and_grad(half(preds), half(targets))[0]):
        assert got.dtype == jnp.float16
        np.testing.assert_allclose(float(got), want_mse, rtol=2e-3)
    ref = jrnn.losses.cross_entropy(jnp.asarray(logits, jnp.float32), labels)
    for got in (jrnn.losses.cross_entropy(half(logits), labels), jrnn.losses.cross_entropy_value_and_grad(half(logits), labels)[0]):
        np.testing.assert_allclose(float(got), float(ref), rtol=2e-3)
    total, count = jrnn.metrics.squared_error_parts(half(preds), half(targets))
    np.testing.assert_allclose(float(total) / float(count), want_mse, rtol=2e-3)


def test_optimizer_state_that_holds_non_finite_values_by_design_still_updates():
    """Only what an update turns non-finite counts: a state with an inf best value or NaN slots
    not yet written (optax's reduce_on_plateau, the gradient recorder) is not a skipped step."""
    import optax

    def mark(tx):
        def init(params):
            return {"best": jnp.asarray(np.inf, jnp.float32), "unwritten": jnp.full((3,), np.nan, jnp.float32),
                    "inner": tx.init(params)}  # fmt: skip

        def update(grads, state, params=None):
            updates, inner = tx.update(grads, state["inner"], params)
            return updates, {**state, "inner": inner}

        return optax.GradientTransformation(init, update)

    optimizer = mark(jrnn.optim.make_optimizer("adam", 1e-2))
    step = jrnn.train.make_train_step(_linear_loss, optimizer)
    params = {"w": jnp.asarray([0.3, -0.2], jnp.float32)}
    new, _, m = step(params, optimizer.init(params), jnp.asarray([1.0, 2.0], jnp.float32))
    assert bool(m["finite"]) and int(m["num_updates"]) == 1
    assert not np.array_equal(np.asarray(new["w"]), np.asarray(params["w"]))
