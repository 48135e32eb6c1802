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


def test_minibatch_order_is_a_function_of_key_and_step():
    xs, targets, _ = batch(n=10)
    a = Minibatches((xs, targets), 3, jax.random.PRNGKey(5), loss="mse", input_size=D, output_size=O)
    b = Minibatches((xs, targets), 3, jax.random.PRNGKey(5), loss="mse", input_size=D, output_size=O)
    order_a = [a.indices(s) for s in range(7)]
    order_b = [b.indices(s) for s in reversed(range(7))][::-1]  # asked in another order
    for x, y in zip(order_a, order_b):
        np.testing.assert_array_equal(x, y)
    for epoch in range(2):  # 3 batches per epoch, each example at most once
        seen = np.concatenate(order_a[3 * epoch:3 * epoch + 3])
        assert len(set(seen.tolist())) == 9
    assert not np.array_equal(np.concatenate(order_a[:3]), np.concatenate(order_a[3:6]))
    c = Minibatches((xs, targets), 3, jax.random.PRNGKey(6), loss="mse", input_size=D, output_size=O)
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
    assert set(steps[0]) == {"step", "time", *METRICS}
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
