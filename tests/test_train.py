"""jrnn.train: the train step's updates and metrics, fit, truncation, checkpoints, data parallel."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from jrnn.losses import get_loss
from jrnn.optim import clip_state, make_optimizer
from jrnn.train import METRICS, fit, make_train_step
from jrnn.train.data import Minibatches
from jrnn.train.objective import as_objective

HERE = Path(__file__).parent
WORKER = HERE / "_fit_worker.py"
HAVE_BPTT = importlib.util.find_spec("jrnn.bptt") is not None

B, T, D, H, O = 4, 7, 3, 5, 2


def tiny(cell="vanilla", key=0, **kwargs):
    cell = {"vanilla": jrnn.VanillaCell(H), "lstm": jrnn.LSTMCell(H)}[cell]
    model = jrnn.RNN(cell, num_layers=kwargs.pop("num_layers", 1), output_size=O, **kwargs)
    params = model.init(jax.random.PRNGKey(key), D, jnp.float64)
    return model, params


def batch(loss="mse", every=True, key=1, n=B):
    k_x, k_y, k_l = jax.random.split(jax.random.PRNGKey(key), 3)
    xs = jax.random.normal(k_x, (n, T, D), jnp.float64)
    if loss == "mse":
        targets = jax.random.normal(k_y, (n, T, O) if every else (n, O), jnp.float64)
    else:
        targets = jax.random.randint(k_y, (n, T) if every else (n,), 0, O)
    lengths = jax.random.randint(k_l, (n,), 0, T + 1).at[0].set(T).at[1].set(0)
    return xs, targets, lengths


def reference_update(model, optimizer, params, opt_state, xs, targets, lengths, loss="mse", carries=None):
    """One optax update from ``jax.grad`` of the loss, written out plainly."""
    loss_fn = get_loss(loss).loss

    def objective(p):
        ys, carries_out = model.apply(p, xs, carries, seq_lengths=lengths)
        return loss_fn(ys, targets, lengths), carries_out

    (value, carries_out), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value, grads, carries_out


def assert_trees_close(a, b, rtol=1e-10, atol=1e-12):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------------------------
# The train step
# ----------------------------------------------------------------------------------------------

LOSS_CASES = [("mse", True), ("mse", False), ("cross_entropy", True), ("cross_entropy", False)]
BACKWARDS = ["autodiff", pytest.param("bptt", marks=pytest.mark.skipif(not HAVE_BPTT, reason="no jrnn.bptt"))]


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("loss,every", LOSS_CASES, ids=["mse-every", "mse-last", "ce-every", "ce-last"])
def test_step_equals_a_plain_optax_update(loss, every, backward):
    model, params = tiny("lstm" if backward == "bptt" else "vanilla")
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    xs, targets, lengths = batch(loss, every)
    step = make_train_step(model, optimizer, loss=loss, backward=backward)
    new_params, new_state, metrics = step(params, opt_state, xs, targets, lengths)
    want_params, want_state, value, grads, _ = reference_update(
        model, optimizer, params, opt_state, xs, targets, lengths, loss
    )
    assert set(metrics) == set(METRICS)
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-12)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-9)
    assert bool(metrics["finite"]) and int(metrics["num_updates"]) == 1
    assert not bool(metrics["clipped"]) and int(metrics["num_nonfinite"]) == 0
    assert_trees_close(new_params, want_params, rtol=1e-9)
    assert_trees_close(new_state, want_state, rtol=1e-9)


def test_clipped_metric_is_read_from_the_optimizers_clip_state():
    model, params = tiny()
    xs, targets, lengths = batch()
    sgd = optax.sgd(0.1)
    _, _, _, grads, _ = reference_update(model, sgd, params, sgd.init(params), xs, targets, lengths)
    g = float(optax.tree.norm(grads))
    for clip_norm, fired in ((0.5 * g, True), (2.0 * g, False)):
        optimizer = make_optimizer("sgd", 0.1, clip_norm=clip_norm)
        step = make_train_step(model, optimizer)  # clip_norm given once, to the optimizer
        new_params, new_state, metrics = step(params, optimizer.init(params), xs, targets, lengths)
        assert bool(metrics["clipped"]) is fired and int(metrics["num_clipped"]) == int(fired)
        np.testing.assert_allclose(metrics["grad_norm"], g, rtol=1e-10)
        scale = min(1.0, clip_norm / g)
        want = jax.tree_util.tree_map(lambda p, d: p - 0.1 * scale * d, params, grads)
        assert_trees_close(new_params, want, rtol=1e-9)
        recorded = clip_state(new_state)
        assert bool(recorded.clipped) is fired and float(recorded.clip_norm) == clip_norm
        np.testing.assert_allclose(recorded.grad_norm, g, rtol=1e-10)
    # A chain of the user's own, without jrnn's clip state: it clips, but clipped is not reported.
    optimizer = optax.chain(optax.clip_by_global_norm(0.5 * g), optax.sgd(0.1))
    new_params, _, metrics = make_train_step(model, optimizer)(params, optimizer.init(params), xs, targets, lengths)
    assert not bool(metrics["clipped"]) and int(metrics["num_clipped"]) == 0
    np.testing.assert_allclose(metrics["grad_norm"], g, rtol=1e-10)  # still from the gradient
    want = jax.tree_util.tree_map(lambda p, d: p - 0.1 * 0.5 * d, params, grads)
    assert_trees_close(new_params, want, rtol=1e-9)


def test_clip_state_is_found_in_a_nested_chain_and_skipped_updates_keep_it():
    model, params = tiny()
    xs, targets, lengths = batch()
    optimizer = optax.chain(optax.identity(), optax.chain(make_optimizer("adam", 1e-2, clip_norm=1e-6)))
    step = make_train_step(model, optimizer)
    opt_state = optimizer.init(params)
    params, opt_state, metrics = step(params, opt_state, xs, targets, lengths)
    assert bool(metrics["clipped"]) and bool(clip_state(opt_state).clipped)
    bad = xs.at[0, 0, 0].set(jnp.nan)
    new_params, new_state, metrics = step(params, opt_state, bad, targets, lengths.at[0].set(T))
    assert not bool(metrics["finite"]) and int(metrics["num_updates"]) == 0
    assert_trees_equal(new_state, opt_state)  # the skipped update leaves the record as it was
    assert_trees_equal(new_params, params)


def test_deprecated_clip_norm_keyword():
    model, params = tiny()
    data = batch()
    optimizer = make_optimizer("sgd", 0.1, clip_norm=1.0)
    with pytest.warns(DeprecationWarning, match="make_optimizer only"):
        step = make_train_step(model, optimizer, clip_norm=1.0)
    metrics = step(params, optimizer.init(params), *data)[2]
    assert set(metrics) == set(METRICS)
    with pytest.warns(DeprecationWarning, match="make_optimizer only"):
        step = make_train_step(model, optimizer, clip_norm=2.0)
    with pytest.raises(ValueError, match=r"clip_norm must be left out, or the optimizer's own clipping "
                                         r"threshold 1\.0 .*got 2\.0"):
        step(params, optimizer.init(params), *data)
    with pytest.warns(DeprecationWarning, match="fit"):
        same = fit(model, params, optimizer, data, steps=2, progress=False, clip_norm=1.0)
    new = fit(model, params, optimizer, data, steps=2, progress=False)
    assert same.history == new.history
    assert_trees_equal(same.params, new.params)
    for wrong in (2.0, None):
        with pytest.raises(ValueError, match="clip_norm must be left out"):
            fit(model, params, optimizer, data, steps=1, progress=False, clip_norm=wrong)
    with pytest.warns(DeprecationWarning, match="make_optimizer only"):  # no clip state: only warns
        result = fit(model, params, optax.sgd(0.1), data, steps=1, progress=False, clip_norm=1.0)
    assert result.history["train"]["clipped"] == [False]
    with pytest.raises(TypeError, match="unexpected keyword argument 'clip'"):
        fit(model, params, optimizer, data, steps=1, progress=False, clip=1.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'clip'"):
        make_train_step(model, optimizer, clip=1.0)


def test_nonfinite_and_unscored_batches_leave_params_and_state_unchanged():
    model, params = tiny()
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    params, opt_state, _ = make_train_step(model, optimizer)(params, opt_state, *batch())  # count = 1
    step = make_train_step(model, optimizer)
    xs, targets, lengths = batch(key=2)
    for bad_xs, bad_targets, bad_lengths, finite in (
        (xs.at[2, 3, 0].set(jnp.nan), targets, lengths.at[2].set(T), False),
        (xs, targets.at[0, 1, 1].set(jnp.inf), lengths, False),
        (xs, targets, jnp.zeros_like(lengths), True),  # nothing scored: no update, not an error
    ):
        new_params, new_state, metrics = step(params, opt_state, bad_xs, bad_targets, bad_lengths)
        assert_trees_equal(new_params, params)
        assert_trees_equal(new_state, opt_state)
        assert bool(metrics["finite"]) is finite
        assert int(metrics["num_nonfinite"]) == int(not finite) and int(metrics["num_updates"]) == 0


def test_a_finite_gradient_whose_norm_overflows_is_not_applied():
    """Every gradient entry is finite (1e20 in float32) but their sum of squares is not: no
    optimizer could use it (RMSprop's and Adagrad's accumulators would overflow and stall), so the
    update is skipped and counted as non-finite."""

    def loss_fn(params, batch, key):
        return jnp.sum(params["w"] * batch)

    params = {"w": jnp.full((4,), 1e-3, jnp.float32)}
    optimizer = optax.rmsprop(1e-3)
    opt_state = optimizer.init(params)
    step = make_train_step(loss_fn, optimizer)
    new_params, new_state, metrics = step(params, opt_state, jnp.full((4,), 1e20, jnp.float32))
    assert np.isfinite(float(metrics["loss"])) and not np.isfinite(float(metrics["grad_norm"]))
    assert not bool(metrics["finite"]) and int(metrics["num_updates"]) == 0
    assert_trees_equal(new_params, params)
    assert_trees_equal(new_state, opt_state)
    _, _, ok = step(params, opt_state, jnp.full((4,), 1.0, jnp.float32))  # an ordinary batch applies
    assert bool(ok["finite"]) and int(ok["num_updates"]) == 1


def test_a_checkpoint_dir_holding_foreign_integer_folders_is_refused_and_left_alone(tmp_path):
    """orbax takes every integer-named folder for a step: a user's ck/1 would be deleted by the
    cleanup of old steps (and a ck/7 restored as the latest). fit refuses such a directory before
    writing or deleting anything."""
    model, params = tiny()
    xs, targets, _ = batch()
    run = dict(steps=2, checkpoint_every=1, progress=False)
    ck = tmp_path / "ck"
    (ck / "1").mkdir(parents=True)
    (ck / "1" / "important.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"checkpoint_dir must be .* holding '1', which is not a checkpoint"):
        fit(model, params, optax.sgd(0.1), (xs, targets), checkpoint_dir=ck, **run)
    assert (ck / "1" / "important.txt").read_text() == "keep me"
    assert sorted(p.name for p in ck.iterdir()) == ["1"]
    with pytest.raises(ValueError, match="checkpoint_dir must be a non-empty path"):
        fit(model, params, optax.sgd(0.1), (xs, targets), checkpoint_dir="", **run)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="an existing file"):
        fit(model, params, optax.sgd(0.1), (xs, targets), checkpoint_dir=tmp_path / "file", **run)
    # a directory of fit's own checkpoints (and other, non-integer files) is accepted and resumed
    good = tmp_path / "good"
    good.mkdir()
    (good / "notes.txt").write_text("mine")
    first = fit(model, params, optax.sgd(0.1), (xs, targets), checkpoint_dir=good, **run)
    assert {"1", "2"} <= {p.name for p in good.iterdir()}
    more = fit(model, params, optax.sgd(0.1), (xs, targets), checkpoint_dir=good, **dict(run, steps=3))
    assert more.step == 3 and first.step == 2 and (good / "notes.txt").read_text() == "mine"


def test_the_step_checks_lengths_and_labels_before_its_jitted_call():
    """Inside jit the values of seq_lengths and labels cannot be checked: lengths past T used to
    drop a sequence from the loss silently, and a label past out_size gave a NaN counted as a
    non-finite step. The step checks them on the host first, reading only those two arrays."""
    model, params = tiny()
    optimizer = optax.sgd(0.1)
    opt_state = optimizer.init(params)
    xs, targets, _ = batch()
    step = make_train_step(model, optimizer)
    for lengths in ([T + 4, 2], [-1, 2], [T + 1, T + 1]):
        lengths = jnp.asarray(lengths + [T] * (B - 2))
        with pytest.raises(ValueError, match=rf"seq_lengths must be in \[0, {T}\], got values in"):
            step(params, opt_state, xs, targets, lengths)
    ce = make_train_step(model, optimizer, loss="cross_entropy")
    _, labels, _ = batch("cross_entropy")
    with pytest.raises(ValueError, match=rf"targets must be class indices in \[0, {O}\)"):
        ce(params, opt_state, xs, labels.at[0, 0].set(O))
    with pytest.raises(ValueError, match=r"targets must be class indices"):
        ce(params, opt_state, xs, labels.at[1, 2].set(-1))
    # valid batches pass through (a negative label at a padded step is allowed), with the same
    # numbers as the unchecked jitted step, and under an outer jit the step still traces
    lengths = jnp.full((B,), T).at[1].set(2)
    new_params, _, metrics = ce(params, opt_state, xs, labels.at[1, 4].set(-1), lengths)
    assert bool(metrics["finite"]) and int(metrics["num_updates"]) == 1
    traced = jax.jit(lambda p, s, x, y, n: ce(p, s, x, y, n))(params, opt_state, xs, labels.at[1, 4].set(-1), lengths)
    assert_trees_equal(traced[0], new_params)


def test_dropout_key_is_used():
    model, params = tiny(num_layers=2, dropout=0.5)
    optimizer = optax.sgd(0.1)
    step = make_train_step(model, optimizer)
    xs, targets, lengths = batch()
    opt_state = optimizer.init(params)
    losses = [float(step(params, opt_state, xs, targets, lengths, k)[2]["loss"])
              for k in (None, jax.random.PRNGKey(0))]
    assert losses[0] != losses[1]


# ----------------------------------------------------------------------------------------------
# Truncated BPTT
# ----------------------------------------------------------------------------------------------


def manual_truncated_steps(model, optimizer, params, opt_state, xs, targets, lengths, k, loss, every, steps):
    """Truncated BPTT by hand: chunks of k steps (the last one shorter), carries behind
    stop_gradient, one update per chunk that scores something."""
    loss_fn = get_loss(loss).loss

    @jax.jit
    def chunk(params, opt_state, carries, x_c, y_c, local, scored):
        def objective(p):
            ys, carries_out = model.apply(p, x_c, carries, seq_lengths=local)
            return loss_fn(ys, y_c, scored), carries_out

        carries = None if carries is None else jax.lax.stop_gradient(carries)
        (_, carries_out), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, new_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, carries_out

    for _ in range(steps):
        carries = None
        for start in range(0, T, k):
            x_c = xs[:, start:start + k]
            local = jnp.clip(lengths - start, 0, x_c.shape[1])
            if every:
                y_c, scored = targets[:, start:start + k], local
            else:
                ends_here = (lengths > 0) & ((lengths - 1) // k == start // k)
                y_c, scored = targets, jnp.where(ends_here, local, 0)
            new_params, new_state, carries = chunk(params, opt_state, carries, x_c, y_c, local, scored)
            if int(scored.sum()) > 0:
                params, opt_state = new_params, new_state
    return params, opt_state


@pytest.mark.parametrize(
    "loss,every", [("mse", True), ("cross_entropy", False)], ids=["mse-every", "ce-last"]
)
def test_truncated_fit_equals_manual_chunked_steps(loss, every):
    model, params = tiny("lstm", num_layers=2)
    optimizer = optax.adam(5e-2)
    xs, targets, lengths = batch(loss, every)
    k = 3  # T = 7: chunks of 3, 3 and 1 (padded)
    result = fit(model, params, optimizer, (xs, targets, lengths), steps=3, loss=loss, truncation=k,
                 progress=False)
    want_params, want_state = manual_truncated_steps(
        model, optimizer, params, optimizer.init(params), xs, targets, lengths, k, loss, every, 3
    )
    assert_trees_close(result.params, want_params, rtol=1e-9, atol=1e-12)
    assert_trees_close(result.opt_state, want_state, rtol=1e-9, atol=1e-12)
    ends = {int((L - 1) // k) for L in np.asarray(lengths) if L > 0}
    updates = 3 if every else len(ends)
    assert result.history["train"]["num_updates"] == [updates] * 3
    assert result.history["train"]["loss"][-1] < result.history["train"]["loss"][0]  # it trains


def test_truncated_step_counts_clipping_per_chunk():
    model, params = tiny("lstm")
    xs, targets, lengths = batch()
    k = 3  # every-step targets: 3 chunks, each one update
    for clip_norm, num_clipped in ((1e-6, 3), (1e6, 0)):
        optimizer = make_optimizer("adam", 5e-2, clip_norm=clip_norm)
        result = fit(model, params, optimizer, (xs, targets, lengths), steps=2, truncation=k, progress=False)
        assert result.history["train"]["num_clipped"] == [num_clipped] * 2
        assert result.history["train"]["clipped"] == [num_clipped > 0] * 2
        want_params, want_state = manual_truncated_steps(
            model, optimizer, params, optimizer.init(params), xs, targets, lengths, k, "mse", True, 2
        )
        assert_trees_close(result.params, want_params, rtol=1e-9, atol=1e-12)
        assert_trees_close(result.opt_state, want_state, rtol=1e-9, atol=1e-12)


def test_truncation_rejects_bidirectional_and_bad_values():
    model, params = tiny()
    data = batch()
    for bad, error in ((0, ValueError), (-2, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="truncation"):
            fit(model, params, optax.sgd(0.1), data, steps=1, truncation=bad, progress=False)
    bi = jrnn.RNN(jrnn.VanillaCell(H), bidirectional=True, output_size=O)
    with pytest.raises(ValueError, match="bidirectional"):
        make_train_step(bi, optax.sgd(0.1), truncation=3)


# ----------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------

SINE_MAX_VAL_MSE = 0.02  # vs jrnn.tasks.SINE_BASELINE_MSE ≈ 1.5 for predicting the mean


def test_fit_learns_the_sine_task():
    from jrnn import tasks

    model = jrnn.RNN(jrnn.VanillaCell(16), num_layers=2, output_size=1)
    params = model.init(jax.random.PRNGKey(0), 1)
    train = tasks.sine(jax.random.PRNGKey(1), 256, 20)
    val = tasks.sine(jax.random.PRNGKey(2), 128, 20)
    optimizer = make_optimizer("adam", 1e-2, clip_norm=1.0)
    result = fit(model, params, optimizer, train, steps=250, batch_size=32, eval_data=val, eval_every=125,
                 progress=False, key=jax.random.PRNGKey(3))
    assert result.step == 250 and result.history["eval"]["step"] == [125, 250]
    assert result.history["eval"]["loss"][-1] < SINE_MAX_VAL_MSE < tasks.SINE_BASELINE_MSE


def _minibatches(data, batch_size, key, **kwargs):
    model, _ = tiny()
    return Minibatches(data, batch_size, key, objective=as_objective(model, "mse", None), input_size=D, **kwargs)


def test_minibatch_order_is_a_function_of_key_and_step():
    xs, targets, _ = batch(n=10)
    a = _minibatches((xs, targets), 3, jax.random.PRNGKey(5))
    b = _minibatches((xs, targets), 3, jax.random.PRNGKey(5))
    order_a = [a.indices(s) for s in range(7)]
    order_b = [b.indices(s) for s in reversed(range(7))][::-1]  # asked in another order
    for x, y in zip(order_a, order_b):
        np.testing.assert_array_equal(x, y)
    for epoch in range(2):  # 3 batches per epoch, each example at most once
        seen = np.concatenate(order_a[3 * epoch:3 * epoch + 3])
        assert len(set(seen.tolist())) == 9
    assert not np.array_equal(np.concatenate(order_a[:3]), np.concatenate(order_a[3:6]))
    c = _minibatches((xs, targets), 3, jax.random.PRNGKey(6))
    assert any(not np.array_equal(c.indices(s), order_a[s]) for s in range(3))


def test_resume_in_process_equals_an_uninterrupted_run(tmp_path):
    model, params = tiny("lstm", num_layers=2, dropout=0.2)
    optimizer = optax.adam(1e-2)
    xs, targets, lengths = batch(n=8)
    kwargs = dict(batch_size=4, truncation=4, progress=False, key=jax.random.PRNGKey(7))
    whole = fit(model, params, optimizer, (xs, targets, lengths), steps=9, **kwargs)
    first = fit(model, params, optimizer, (xs, targets, lengths), steps=5, checkpoint_dir=tmp_path,
                checkpoint_every=2, **kwargs)
    assert first.step == 5
    saved = sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
    assert saved[-1] == 5  # the final checkpoint
    again = fit(model, params, optimizer, (xs, targets, lengths), steps=9, checkpoint_dir=tmp_path,
                checkpoint_every=2, **kwargs)
    assert again.step == 9
    assert_trees_equal(again.params, whole.params)
    assert_trees_equal(again.opt_state, whole.opt_state)
    assert again.history == whole.history
    done = fit(model, params, optimizer, (xs, targets, lengths), steps=9, checkpoint_dir=tmp_path, **kwargs)
    assert done.step == 9 and done.history == whole.history  # nothing left to do
    assert_trees_equal(done.params, whole.params)


def test_resume_with_evaluation_metrics_and_keep_best_equals_an_uninterrupted_run(tmp_path):
    """The evaluation history, the metrics, the best checkpoint and the early-stopping state all
    survive a resume: the resumed run ends bit for bit where the uninterrupted one does."""
    model, params = tiny("lstm")
    optimizer = optax.adam(5e-2)
    data, val = batch("cross_entropy", n=8), batch("cross_entropy", key=5)
    kwargs = dict(loss="cross_entropy", batch_size=4, eval_data=val, eval_every=2, metrics=("accuracy",),
                  early_stopping=jrnn.train.EarlyStopping(patience=100, metric="accuracy"), progress=False,
                  key=jax.random.PRNGKey(3))
    whole = fit(model, params, optimizer, data, steps=9, checkpoint_dir=tmp_path / "whole", keep_best="accuracy",
                **kwargs)
    # the first call ends at a scheduled evaluation (fit also evaluates at its last step, so a
    # call ending elsewhere would add an evaluation the uninterrupted run does not make)
    first = fit(model, params, optimizer, data, steps=4, checkpoint_dir=tmp_path / "run", keep_best="accuracy",
                **kwargs)
    assert first.step == 4
    again = fit(model, params, optimizer, data, steps=9, checkpoint_dir=tmp_path / "run", keep_best="accuracy",
                **kwargs)
    assert again.step == 9 and not again.stopped_early
    assert_trees_equal(again.params, whole.params)
    assert_trees_equal(again.opt_state, whole.opt_state)
    assert again.history == whole.history and len(whole.history["eval"]["accuracy"]) == 5
    assert again.best == whole.best
    best_whole = jrnn.train.restore(tmp_path / "whole", params, optimizer.init(params), step="best")
    best_again = jrnn.train.restore(tmp_path / "run", params, optimizer.init(params), step="best")
    assert best_whole[2] == best_again[2] == whole.best["step"]
    assert_trees_equal(best_again[0], best_whole[0])


def test_resume_with_callable_data(tmp_path):
    model, params = tiny()
    optimizer = optax.sgd(0.05)

    def data(key):
        xs, targets, lengths = batch(key=int(jax.random.randint(key, (), 0, 1000)))
        return xs, targets, lengths

    kwargs = dict(progress=False, key=jax.random.PRNGKey(8))
    whole = fit(model, params, optimizer, data, steps=6, **kwargs)
    fit(model, params, optimizer, data, steps=4, checkpoint_dir=tmp_path, checkpoint_every=3, **kwargs)
    again = fit(model, params, optimizer, data, steps=6, checkpoint_dir=tmp_path, **kwargs)
    assert_trees_equal(again.params, whole.params)


def test_nonfinite_steps_are_skipped_counted_and_logged(tmp_path, capsys):
    model, params = tiny()
    optimizer = optax.adam(1e-2)
    calls = []

    def data(key):
        xs, targets, lengths = batch(key=len(calls))
        calls.append(key)
        if len(calls) == 3:
            xs = xs.at[0, 0, 0].set(jnp.nan)
        return xs, targets, lengths

    log = tmp_path / "log.jsonl"
    evaluation = batch(key=99)
    result = fit(model, params, optimizer, data, steps=5, eval_data=evaluation, eval_every=2, log_path=log,
                 progress=True)
    train = result.history["train"]
    assert train["finite"] == [True, True, False, True, True]
    assert train["num_nonfinite"] == [0, 0, 1, 0, 0] and train["num_updates"] == [1, 1, 0, 1, 1]
    assert np.isnan(train["loss"][2])
    assert "step/s" in capsys.readouterr().err  # the progress bar's rate

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    evals = [r for r in lines if "eval_loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    assert set(steps[0]) == {"step", "time", "compile_s", *METRICS}  # compilation, apart from step times
    assert steps[0]["compile_s"] > 0 and result.timing["compile_s"] >= steps[0]["compile_s"]
    assert all(set(r) == {"step", "time", *METRICS} for r in steps[1:])
    assert steps[2]["loss"] is None and steps[2]["finite"] is False  # NaN is written as null
    for name in METRICS:
        for record, value in zip(steps, train[name]):
            if record[name] is not None:
                assert record[name] == value
    assert [(r["step"], r["eval_loss"]) for r in evals] == list(zip(result.history["eval"]["step"],
                                                                    result.history["eval"]["loss"]))
    assert result.history["eval"]["step"] == [2, 4, 5]


def test_many_nonfinite_steps_in_a_row_stop_the_run():
    model, params = tiny()
    xs, targets, lengths = batch()
    bad = (xs.at[:, 0].set(jnp.nan), targets, lengths)
    with pytest.raises(FloatingPointError, match=r"3 consecutive steps .*steps 1 to 3"):
        fit(model, params, optax.sgd(0.1), bad, steps=10, max_consecutive_nonfinite=3, progress=False)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(loss="hinge"), ValueError, "loss"),
        (dict(backward="reverse"), ValueError, "backward"),
        (dict(batch_size=9), ValueError, r"batch_size must be at most .*\(4\), got 9"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(data="xs"), TypeError, "data must be a tuple"),
        (dict(data=(1,)), TypeError, "data must be a tuple"),
        (dict(targets=(5, T, O)), ValueError, r"targets .*got shape \(5, 7, 2\)"),
        (dict(targets=(B, T + 1, O)), ValueError, "targets"),
        (dict(xs=(B, T, D + 1)), ValueError, r"D = 3 .*got shape \(4, 7, 4\)"),
        (dict(lengths=(B + 1,)), ValueError, "seq_lengths"),
        (dict(steps=-1), ValueError, "steps"),
        (dict(eval_data=(1, 2)), ValueError, "eval_data"),
        (dict(optimizer="adam"), TypeError, "optimizer"),
        (dict(clip_norm=-1.0), ValueError, "clip_norm"),
        (dict(key=3), TypeError, "key"),
    ],
)
def test_fit_rejects_bad_arguments(change, error, match):
    model, params = tiny()
    xs, targets, lengths = batch()
    shapes = {name: change.pop(name) for name in ("xs", "targets", "lengths") if name in change}
    if "xs" in shapes:
        xs = jnp.zeros(shapes["xs"])
    if "targets" in shapes:
        targets = jnp.zeros(shapes["targets"])
    if "lengths" in shapes:
        lengths = jnp.zeros(shapes["lengths"], jnp.int32)
    kwargs = dict(steps=1, progress=False)
    kwargs.update(change)
    data = kwargs.pop("data", (xs, targets, lengths))
    optimizer = kwargs.pop("optimizer", optax.sgd(0.1))
    with pytest.raises(error, match=match):
        fit(model, params, optimizer, data, **kwargs)


# ----------------------------------------------------------------------------------------------
# Subprocesses: SIGKILL and resume; several devices
# ----------------------------------------------------------------------------------------------


def _env(**extra):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra)
    return env


def _committed(directory: Path) -> list[int]:
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "meta").exists())


@pytest.mark.slow
def test_sigkill_and_resume_ends_with_the_uninterrupted_params(tmp_path):
    steps = "300"
    reference = subprocess.Popen(
        [sys.executable, str(WORKER), "resume", str(tmp_path / "ref.npz"), "--steps", steps], env=_env()
    )
    ckpt = tmp_path / "ckpt"
    log = tmp_path / "log.jsonl"
    victim = subprocess.Popen(
        [sys.executable, str(WORKER), "resume", str(tmp_path / "killed.npz"), "--steps", steps,
         "--checkpoint-dir", str(ckpt), "--log", str(log)], env=_env()
    )
    deadline = time.monotonic() + 240
    while len(_committed(ckpt)) < 2 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # land somewhere between checkpoints (or inside one)
    alive = victim.poll() is None
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert alive, "the worker finished before it could be killed; make it longer"
    assert not (tmp_path / "killed.npz").exists()
    killed_at = _committed(ckpt)[-1]
    assert 0 < killed_at < int(steps)

    resumed = subprocess.run(
        [sys.executable, str(WORKER), "resume", str(tmp_path / "killed.npz"), "--steps", steps,
         "--checkpoint-dir", str(ckpt), "--log", str(log)], env=_env(), timeout=240
    )
    assert resumed.returncode == 0
    assert reference.wait(timeout=240) == 0
    ref, got = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "killed.npz")
    assert int(got["step"]) == int(steps)
    leaves = [k for k in ref.files if k.startswith(("leaf", "opt_"))]
    assert len(leaves) > 10
    for name in leaves:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)  # bitwise
    assert json.loads(str(got["history"])) == json.loads(str(ref["history"]))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, int(steps) + 1))  # lost work trimmed


@pytest.mark.slow
def test_data_parallel_over_four_devices_equals_one_device(tmp_path):
    out = tmp_path / "parallel.npz"
    subprocess.run(
        [sys.executable, str(WORKER), "parallel", str(out)], check=True, timeout=240,
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
    )
    got = np.load(out)
    assert int(got["num_devices"]) == 4
    assert int(got["all_devices"]) == 4 and int(got["one_devices"]) == 1
    _assert_all_equals_one(got)


def _assert_all_equals_one(got):
    names = [n for n in got.files if n.startswith("all_leaf") or n == "all_eval"]
    assert len(names) == 9  # 2 LSTM layers x 3 + readout 2 + the eval losses
    for name in names:
        np.testing.assert_allclose(got[name], got[name.replace("all_", "one_")], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_two_processes_with_jax_distributed_equal_one_device(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = tmp_path / "multihost.npz"
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), "multihost", str(out), "--process-id", str(i),
                          "--port", str(port), "--checkpoint-dir", str(tmp_path / "ckpt")],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    for p in procs:
        output = p.communicate(timeout=240)[0]
        assert p.returncode == 0, output[-3000:]
    got = np.load(out)
    assert int(got["num_processes"]) == 2 and int(got["num_devices"]) == 4 and int(got["all_devices"]) == 4
    _assert_all_equals_one(got)
    assert _committed(tmp_path / "ckpt")[-1] == 6


# ----------------------------------------------------------------------------------------------
# Any loss function over any params pytree
# ----------------------------------------------------------------------------------------------


def model_loss_fn(model, loss="mse"):
    """The loss a jrnn.RNN with a loss name trains, written as a loss function over (xs, targets,
    seq_lengths), with the predictions in aux for the metrics."""
    loss_fn = get_loss(loss).loss

    def fn(params, batch, key):
        xs, targets, lengths = batch
        ys, _ = model.apply(params, xs, seq_lengths=lengths, dropout_key=key)
        return loss_fn(ys, targets, lengths), {"preds": ys}

    return fn


def head_loss_fn(params, batch, key):
    """A head of one's own on jrnn layers: a 2-layer LSTM body without readout, a tanh hidden
    layer and logits, on the last valid step of each sequence; params is a plain dict."""
    xs, labels, lengths = batch
    hs, _ = BODY.apply(params["body"], xs, seq_lengths=lengths)  # (B, T, H)
    last = jnp.take_along_axis(hs, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]  # (B, H)
    z = jnp.tanh(last @ params["w1"] + params["b1"][None, :])
    logits = z @ params["w2"]  # (B, O)
    log_probs = jax.nn.log_softmax(logits)
    value = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))
    return value, {"preds": logits}


BODY = jrnn.RNN(jrnn.LSTMCell(H), num_layers=2)


def head_params(key=0):
    k_body, k1, k2 = jax.random.split(jax.random.PRNGKey(key), 3)
    return {
        "body": BODY.init(k_body, D, jnp.float64),
        "w1": 0.5 * jax.random.normal(k1, (H, 6), jnp.float64),
        "b1": jnp.zeros((6,), jnp.float64),
        "w2": 0.5 * jax.random.normal(k2, (6, O), jnp.float64),
    }


def class_batch(n=8, key=3):
    xs, labels, lengths = batch("cross_entropy", every=False, key=key, n=n)
    return xs, labels, jnp.maximum(lengths, 1)


def test_loss_function_step_equals_a_plain_optax_update():
    params = head_params()
    optimizer = make_optimizer("adam", 1e-2, clip_norm=0.5)
    data = class_batch()
    step = make_train_step(head_loss_fn, optimizer, metrics=("accuracy",))
    new_params, new_state, metrics = step(params, optimizer.init(params), data)
    (value, aux), grads = jax.value_and_grad(head_loss_fn, has_aux=True)(params, data, None)
    updates, want_state = optimizer.update(grads, optimizer.init(params), params)
    assert_trees_close(new_params, optax.apply_updates(params, updates), rtol=1e-10)
    assert_trees_close(new_state, want_state, rtol=1e-10)
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-12)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-10)
    assert bool(metrics["clipped"]) == (float(optax.tree.norm(grads)) >= 0.5)
    want_accuracy = np.mean(np.argmax(np.asarray(aux["preds"]), -1) == np.asarray(data[1]))
    np.testing.assert_allclose(metrics["accuracy"], want_accuracy, rtol=1e-12)
    bad = (data[0].at[0, 0, 0].set(jnp.nan), data[1], data[2])
    same_params, same_state, metrics = step(params, optimizer.init(params), bad)  # the non-finite guard
    assert not bool(metrics["finite"]) and int(metrics["num_nonfinite"]) == 1
    assert_trees_equal(same_params, params)


def test_fit_with_a_loss_function_equals_fit_with_the_model(tmp_path):
    """The same model and loss, once by name and once as a function: the same parameters, the
    same history (metrics included), and the function's run resumes bit for bit."""
    model, params = tiny("lstm", num_layers=2)
    xs, targets, lengths = batch(n=8)
    kwargs = dict(steps=4, batch_size=4, progress=False, key=jax.random.PRNGKey(4), metrics=("mae", "rmse"),
                  eval_data=batch(key=9), eval_every=2, backward=None)
    by_name = fit(model, params, optax.adam(1e-2), (xs, targets, lengths), **{**kwargs, "backward": "autodiff"})
    kwargs.pop("backward")
    by_fn = fit(model_loss_fn(model), params, optax.adam(1e-2), (xs, targets, lengths), **kwargs)
    assert_trees_close(by_fn.params, by_name.params, rtol=1e-9, atol=1e-12)
    for part in ("train", "eval"):
        assert set(by_fn.history[part]) == set(by_name.history[part])
        for column, values in by_name.history[part].items():
            np.testing.assert_allclose(by_fn.history[part][column], values, rtol=1e-9, err_msg=column)
    # the metrics of the training batches: the batch of step 1 under the initial parameters
    first = Minibatches((xs, targets, lengths), 4, None, objective=as_objective(model, None, None), input_size=D)
    first.set_key(jax.random.split(jax.random.PRNGKey(4))[0])
    b_xs, b_y, b_l = first.batch(0)
    ys = np.asarray(model.apply(params, b_xs, seq_lengths=b_l)[0])
    mask = np.arange(T)[None, :] < np.asarray(b_l)[:, None]
    errors = (ys - np.asarray(b_y))[mask]
    np.testing.assert_allclose(by_fn.history["train"]["mae"][0], np.abs(errors).mean(), rtol=1e-10)
    np.testing.assert_allclose(by_fn.history["train"]["rmse"][0], np.sqrt((errors ** 2).mean()), rtol=1e-10)

    half = fit(model_loss_fn(model), params, optax.adam(1e-2), (xs, targets, lengths), checkpoint_dir=tmp_path,
               checkpoint_every=1, **{**kwargs, "steps": 2})
    assert half.step == 2
    again = fit(model_loss_fn(model), params, optax.adam(1e-2), (xs, targets, lengths), checkpoint_dir=tmp_path,
                **kwargs)
    assert_trees_equal(again.params, by_fn.params)
    assert again.history == by_fn.history


def test_fit_trains_a_head_of_ones_own_with_accuracy_and_early_stopping():
    params = head_params()
    train_set, val = class_batch(n=16, key=5), class_batch(n=8, key=6)
    result = fit(head_loss_fn, params, make_optimizer("adam", 3e-2, clip_norm=1.0), train_set, steps=30,
                 batch_size=8, eval_data=val, eval_every=5, metrics=("accuracy",), progress=False)
    train = result.history["train"]
    assert train["loss"][-1] < train["loss"][0] and len(train["accuracy"]) == 30
    assert result.history["eval"]["step"] == [5, 10, 15, 20, 25, 30]
    scores = jrnn.train.evaluate(head_loss_fn, result.params, val, metrics=("accuracy",))
    assert scores["accuracy"] == result.history["eval"]["accuracy"][-1]
    np.testing.assert_allclose(scores["loss"], float(head_loss_fn(result.params, val, None)[0]), rtol=1e-12)
    # patience 1 with an impossible min_delta: the second evaluation does not improve, the run stops
    stopped = fit(head_loss_fn, params, optax.sgd(0.1), train_set, steps=30, batch_size=8, eval_data=val,
                  eval_every=5, progress=False,
                  early_stopping=jrnn.train.EarlyStopping(1, metric="loss", min_delta=1e9))  # fmt: skip
    assert stopped.stopped_early and stopped.step == 10 and stopped.history["eval"]["step"] == [5, 10]
    assert len(stopped.history["train"]["step"]) == 10
    assert stopped.best["value"] == min(stopped.history["eval"]["loss"]) and stopped.best["metric"] == "loss"


def test_truncation_with_a_loss_function_that_exposes_its_carry():
    """Truncated BPTT through a loss function's carry equals the model path (T = 7 = 3 + 3 + 1)."""
    model, params = tiny("lstm", num_layers=2)
    data = batch(n=4)
    loss_fn = get_loss("mse").loss

    def with_carry(params, batch, key, carry):
        xs, targets, lengths = batch
        ys, carry = model.apply(params, xs, carry, seq_lengths=lengths)
        return loss_fn(ys, targets, lengths), {"carry": carry}

    optimizer = optax.adam(5e-2)
    want = fit(model, params, optimizer, data, steps=2, truncation=3, progress=False)
    got = fit(with_carry, params, optimizer, data, steps=2, truncation=3, progress=False)
    assert_trees_close(got.params, want.params, rtol=1e-9, atol=1e-12)
    assert got.history["train"]["num_updates"] == [3, 3]
    with pytest.raises(TypeError, match=r"truncation must be None for a loss function that does not expose its "
                                        r"carry .*loss_fn\(params, batch, key, carry\)"):
        fit(model_loss_fn(model), params, optimizer, data, steps=1, truncation=3, progress=False)

    def no_carry_returned(params, batch, key, carry):
        return with_carry(params, batch, key, carry)[0]

    with pytest.raises(TypeError, match="holding 'carry'"):
        make_train_step(no_carry_returned, optimizer, truncation=3)(params, optimizer.init(params), data)


# ----------------------------------------------------------------------------------------------
# evaluate, predict, data order, univariate data, keep_best
# ----------------------------------------------------------------------------------------------


def test_evaluate_and_predict_over_batches_equal_numpy():
    model, params = tiny("lstm")
    xs, labels, lengths = batch("cross_entropy", every=True, n=10)
    logits = jrnn.train.predict(model, params, xs, seq_lengths=lengths, batch_size=4)  # 4 + 4 + 2
    assert isinstance(logits, np.ndarray)
    np.testing.assert_allclose(logits, model.apply(params, xs, seq_lengths=lengths)[0], rtol=1e-12)
    scores = jrnn.train.evaluate(model, params, (xs, labels, lengths), loss="cross_entropy", batch_size=3,
                                 metrics=("accuracy", "top_2_accuracy"))  # fmt: skip
    mask = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    z, y = logits[mask], np.asarray(labels)[mask]  # the scored steps, (N, O)
    log_probs = z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
    np.testing.assert_allclose(scores["loss"], -log_probs[np.arange(len(y)), y].mean(), rtol=1e-10)
    np.testing.assert_allclose(scores["accuracy"], np.mean(z.argmax(-1) == y), rtol=1e-12)
    assert scores["top_2_accuracy"] == 1.0  # O = 2 classes
    whole = jrnn.train.evaluate(model, params, (xs, labels, lengths), loss="cross_entropy", metrics="accuracy")
    np.testing.assert_allclose(whole["loss"], scores["loss"], rtol=1e-12)


def test_univariate_data_is_an_error_that_suggests_a_feature_axis():
    model = jrnn.RNN(jrnn.VanillaCell(H), output_size=1)
    params = model.init(jax.random.PRNGKey(0), 1, jnp.float64)
    xs = np.random.default_rng(0).standard_normal((6, T))
    targets = np.zeros((6, 1))
    hint = r"xs\[\.\.\., None\], of shape \(6, 7, 1\)\), got shape \(6, 7\)"
    with pytest.raises(ValueError, match=hint):
        fit(model, params, optax.sgd(0.1), (xs, targets), steps=1, progress=False)
    with pytest.raises(ValueError, match=hint):
        jrnn.train.evaluate(model, params, (xs, targets))
    with pytest.raises(ValueError, match=hint):
        jrnn.train.predict(model, params, xs)
    with pytest.raises(ValueError, match=r"xs\[\.\.\., None\]"):
        make_train_step(model, optax.sgd(0.1))(params, optax.sgd(0.1).init(params), jnp.asarray(xs), targets)
    result = fit(model, params, optax.sgd(0.1), (xs[..., None], targets), steps=1, progress=False)
    assert result.step == 1


def test_data_order_in_order_wrapping_and_a_callable_that_receives_the_step():
    xs, targets, _ = batch(n=5)
    ordered = _minibatches((xs, targets), 2, jax.random.PRNGKey(0), shuffle=False)
    assert [ordered.indices(s).tolist() for s in range(4)] == [[0, 1], [2, 3], [4, 0], [1, 2]]
    np.testing.assert_array_equal(ordered.batch(2)[0], np.asarray(xs)[[4, 0]])
    model, params = tiny()
    seen = []

    def data(key, step):
        seen.append(step)
        return batch(key=100 + step)

    fit(model, params, optax.sgd(0.1), data, steps=3, progress=False)
    assert seen == [0, 1, 2]
    a = fit(model, params, optax.sgd(0.1), (xs, targets), steps=3, batch_size=2, shuffle=False, progress=False)
    # the same three batches, taken by hand in order
    p, opt = params, optax.sgd(0.1)
    state = opt.init(p)
    for rows in ([0, 1], [2, 3], [4, 0]):
        p, state, *_ = reference_update(model, opt, p, state, xs[np.array(rows)], targets[np.array(rows)], None)
    assert_trees_close(a.params, p, rtol=1e-10)


def test_keep_best_keeps_the_best_checkpoint_besides_the_latest(tmp_path):
    model, params = tiny()
    optimizer = optax.sgd(0.5)  # large enough that the evaluation loss goes up and down
    data, val = batch(n=4), batch(key=11)
    kwargs = dict(batch_size=2, eval_data=val, eval_every=1, progress=False, key=jax.random.PRNGKey(2))
    result = fit(model, params, optimizer, data, steps=8, checkpoint_dir=tmp_path, checkpoint_every=100,
                 keep_best="loss", **kwargs)
    losses = result.history["eval"]["loss"]
    best_step = int(np.argmin(losses)) + 1
    assert result.best == {"step": best_step, "metric": "loss", "value": min(losses)}
    kept = sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
    assert kept == sorted({best_step, 6, 7, 8})
    best_params, _, step = jrnn.train.restore(tmp_path, params, optimizer.init(params), step="best")
    assert step == best_step
    until_best = fit(model, params, optimizer, data, steps=best_step, **kwargs)
    assert_trees_equal(best_params, until_best.params)
    latest_params, _, step = jrnn.train.restore(tmp_path, params, optimizer.init(params))
    assert step == 8
    assert_trees_equal(latest_params, result.params)
    with pytest.raises(ValueError, match="checkpoint_dir must be given with keep_best"):
        fit(model, params, optimizer, data, steps=1, keep_best=True, **kwargs)
    with pytest.raises(ValueError, match="eval_data must be given with early_stopping"):
        fit(model, params, optimizer, data, steps=1, early_stopping=2, progress=False)
    with pytest.raises(ValueError, match=r"early_stopping.metric must be one of \['accuracy', 'loss'\]"):
        fit(model, params, optimizer, data, steps=1, early_stopping={"patience": 2, "metric": "mae"},
            metrics=["accuracy"], eval_data=val, loss="cross_entropy", progress=False)
    with pytest.raises(ValueError, match=r"metrics must be metrics that fit loss='mse' \('accuracy' is a "
                                         r"classification metric"):
        fit(model, params, optimizer, data, steps=1, metrics=("accuracy",), progress=False)


def test_early_stopping_state_is_read_from_the_history():
    from jrnn.train.stopping import EarlyStopping, best

    def history(values):
        return {"eval": {"step": list(range(1, len(values) + 1)), "loss": values, "accuracy": values}}

    rule = EarlyStopping(2)
    assert not rule.should_stop(history([3.0, 2.0, 2.5]), ())
    assert rule.should_stop(history([3.0, 2.0, 2.5, float("nan")]), ())
    assert not EarlyStopping(2, min_delta=0.4).should_stop(history([3.0, 2.0, 2.5]), ())
    assert EarlyStopping(2, min_delta=0.6).should_stop(history([3.0, 2.5, 2.45]), ())
    assert EarlyStopping(1, metric="accuracy", mode="max").should_stop(history([0.5, 0.7, 0.7]), ())
    assert best(history([0.5, 0.7, 0.7]), "accuracy", True) == {"step": 2, "metric": "accuracy", "value": 0.7}
    for bad, error in ((0, ValueError), (True, TypeError), ({"patience": 2, "mode": "up"}, ValueError)):
        with pytest.raises(error, match="early_stopping"):
            jrnn.train.stopping.check_early_stopping(bad, ())


def test_fit_reports_compile_time_apart_and_reuses_the_compiled_step():
    model, params = tiny()
    data = batch()
    optimizer = optax.sgd(0.01)
    first = fit(model, params, optimizer, data, steps=3, progress=False, log_every=2)
    again = fit(model, params, optimizer, data, steps=3, progress=False)
    assert first.timing["compile_s"] > 0 and first.timing["steps"] == 3 and first.timing["step_s"] > 0
    assert again.timing["compile_s"] < first.timing["compile_s"]  # the step is compiled once per setup
    assert_trees_equal(first.params, again.params)


@pytest.mark.skipif("pool" not in getattr(jrnn.RNN, "__dataclass_fields__", {}), reason="no RNN(pool=...)")
def test_a_pooled_model_trains_and_evaluates_on_one_target_per_sequence():
    model = jrnn.RNN(jrnn.LSTMCell(H), output_size=O, pool="mean")
    params = model.init(jax.random.PRNGKey(0), D, jnp.float64)
    xs, labels, lengths = class_batch(n=8)
    lengths = lengths.at[2].set(0)  # a sequence of length 0 is not scored
    optimizer = optax.sgd(0.1)
    step = make_train_step(model, optimizer, loss="cross_entropy", metrics=("accuracy",))
    new_params, _, metrics = step(params, optimizer.init(params), xs, labels, lengths)
    keep = np.asarray(lengths) > 0

    def reference(p):  # cross-entropy over the scored sequences, written plainly
        log_probs = jax.nn.log_softmax(model.apply(p, xs, seq_lengths=lengths)[0])  # (B, O)
        picked = jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
        return -jnp.sum(jnp.where(jnp.asarray(keep), picked, 0)) / keep.sum()

    value, grads = jax.value_and_grad(reference)(params)
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-10)
    assert_trees_close(new_params, jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads), rtol=1e-9)
    logits = jrnn.train.predict(model, params, xs, seq_lengths=lengths, batch_size=3)
    assert logits.shape == (8, O)
    accuracy = np.mean(logits[keep].argmax(-1) == np.asarray(labels)[keep])
    np.testing.assert_allclose(metrics["accuracy"], accuracy, rtol=1e-12)
    scores = jrnn.train.evaluate(model, params, (xs, labels, lengths), loss="cross_entropy", metrics=("accuracy",),
                                 batch_size=5)  # fmt: skip
    np.testing.assert_allclose(scores["loss"], value, rtol=1e-10)
    np.testing.assert_allclose(scores["accuracy"], accuracy, rtol=1e-12)
    every = jnp.zeros((8, T), jnp.int32)
    with pytest.raises(ValueError, match="pools each sequence into one output"):
        fit(model, params, optimizer, (xs, every, lengths), loss="cross_entropy", steps=1, progress=False)
    with pytest.raises(ValueError, match="truncation must be None for a model that pools"):
        make_train_step(model, optimizer, loss="cross_entropy", truncation=2)
