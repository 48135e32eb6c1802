"""Fuzzing the public entry points: random shapes, dtypes, lengths, masks, NaN placement and bad
types. Every call either returns finite results of the right shape or raises ``ValueError`` /
``TypeError`` naming the argument at fault; no other exception escapes (no XLA traceback, no
``IndexError`` from deep inside)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import jrnn  # noqa: E402

CELLS = {
    "vanilla": lambda h: jrnn.VanillaCell(h),
    "lstm": lambda h: jrnn.LSTMCell(h),
    "gru": lambda h: jrnn.GRUCell(h),
    "mingru": lambda h: jrnn.MinGRUCell(h),
    "minlstm": lambda h: jrnn.MinLSTMCell(h),
}
ARGUMENTS = ("xs", "params", "carry", "carries", "seq_lengths", "mask", "targets", "labels", "preds",
             "logits", "input_size", "reverse", "time_major", "backward", "method", "dropout_key")
BROKEN = ["nothing", "ndim", "features", "lengths_range", "lengths_shape", "lengths_dtype", "mask_shape",
          "mask_dtype", "xs_type", "xs_int", "carry"]
"""What a drawn problem gets wrong (each test runs every kind, hypothesis draws the rest)."""


def fuzz(examples: int):
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip


def assert_names_an_argument(err: Exception) -> None:
    message = str(err)
    assert any(re.search(rf"\b{name}\b", message) for name in ARGUMENTS), f"{type(err).__name__}: {message}"


@st.composite
def problems(draw, broken: str):
    """A cell, its params, and inputs that are valid, or broken in one drawn way."""
    kind = draw(st.sampled_from(sorted(CELLS)))
    hidden, size = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    batch, steps = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from([jnp.float32, jnp.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    xs = rng.standard_normal((batch, steps, size))
    lengths = rng.integers(0, steps + 1, batch)
    use = draw(st.sampled_from(["none", "lengths", "mask"]))
    mask = rng.random((batch, steps)) < 0.6
    valid = np.ones((batch, steps), bool)
    if use == "lengths":
        valid = np.arange(steps)[None] < lengths[:, None]
    elif use == "mask":
        valid = mask
    if draw(st.booleans()):  # NaN and inf where nothing runs: must never be read
        xs = np.where(valid[..., None], xs, np.nan)
        xs[~valid, 0] = np.inf
    kwargs = {}
    if use == "lengths":
        kwargs["seq_lengths"] = jnp.asarray(lengths)
    elif use == "mask":
        kwargs["mask"] = jnp.asarray(mask)
    xs = jnp.asarray(xs, dtype)
    carry = None
    if broken == "ndim":  # (T, D) is an unbatched sequence, (B, T, D, 1) nothing
        xs = xs[..., None]
    elif broken == "features":
        xs = jnp.concatenate([xs, xs], axis=-1)
    elif broken == "lengths_range":
        kwargs.pop("mask", None)
        kwargs["seq_lengths"] = jnp.asarray(lengths + steps + 1)
    elif broken == "lengths_shape":
        kwargs.pop("mask", None)
        kwargs["seq_lengths"] = jnp.asarray(np.append(lengths, 1))
    elif broken == "lengths_dtype":
        kwargs.pop("mask", None)
        kwargs["seq_lengths"] = jnp.asarray(lengths, jnp.float32)
    elif broken == "mask_shape":
        kwargs.pop("seq_lengths", None)
        kwargs["mask"] = jnp.asarray(mask[:, :-1] if steps > 1 else mask[:0])
    elif broken == "mask_dtype":
        kwargs.pop("seq_lengths", None)
        kwargs["mask"] = "yes"
    elif broken == "xs_type":
        xs = draw(st.sampled_from([None, "sequence", 3.0, [[1.0, 2.0]]]))
    elif broken == "xs_int":
        xs = jnp.ones((batch, steps, size), jnp.int32)
    elif broken == "carry":
        carry = draw(st.sampled_from(["carry", jnp.zeros((batch + 1, hidden), dtype), (1, 2, 3)]))
    cell = CELLS[kind](hidden)
    params = cell.init(jax.random.PRNGKey(0), size, dtype)
    return kind, cell, params, xs, carry, kwargs, (batch, steps, hidden, size, dtype), broken, valid


@pytest.mark.parametrize("broken", BROKEN)
def test_unroll_returns_finite_outputs_or_names_the_argument(broken):
    @fuzz(12 if broken == "nothing" else 4)
    @given(problems(broken), st.booleans(), st.sampled_from(["autodiff", "bptt"]))
    def check(problem, reverse, backward):
        _check_unroll(problem, reverse, backward)

    check()


def _check_unroll(problem, reverse, backward):
    kind, cell, params, xs, carry, kwargs, (batch, steps, hidden, _, _), broken, valid = problem
    event(f"{broken}, {'NaN in padding' if not np.all(np.isfinite(np.asarray(xs, float))) else 'finite'}"
          if hasattr(xs, "shape") else broken)
    try:
        carry_T, ys = jrnn.unroll(cell, params, xs, carry, reverse=reverse, backward=backward, **kwargs)
    except (ValueError, TypeError) as err:
        assert_names_an_argument(err)
        return
    assert broken == "nothing", f"{broken} input was accepted"
    assert ys.shape == (batch, steps, hidden)
    assert np.all(np.isfinite(np.asarray(ys)))
    assert all(np.all(np.isfinite(np.asarray(c))) for c in jax.tree_util.tree_leaves(carry_T))
    # steps that do not run give zeros
    np.testing.assert_array_equal(np.asarray(ys)[~valid], 0)


@pytest.mark.parametrize("broken", BROKEN)
def test_network_loss_and_gradient_are_finite_or_name_the_argument(broken):
    @fuzz(6 if broken == "nothing" else 2)
    @given(problems(broken), st.integers(1, 2), st.booleans(), st.sampled_from(["mse", "cross_entropy"]))
    def check(problem, layers, bidirectional, loss):
        _check_network(problem, layers, bidirectional, loss)

    check()


def _check_network(problem, layers, bidirectional, loss):
    kind, cell, _, xs, carry, kwargs, (batch, steps, hidden, size, dtype), broken, valid = problem
    model = jrnn.RNN(cell, num_layers=layers, bidirectional=bidirectional, output_size=2)
    params = model.init(jax.random.PRNGKey(1), size, dtype)
    rng = np.random.default_rng(0)
    if loss == "mse":
        targets = jnp.asarray(rng.standard_normal((batch, steps, 2)), dtype)
    else:
        targets = jnp.asarray(rng.integers(0, 2, (batch, steps)))
    lengths = kwargs.get("seq_lengths")
    loss_fn = jrnn.losses.get_loss(loss).loss

    def objective(p):
        ys, _ = model.apply(p, xs, None if carry is None else carry, seq_lengths=lengths, mask=kwargs.get("mask"))
        return loss_fn(ys, targets, None if kwargs.get("mask") is not None else lengths)

    try:
        value, grads = jax.value_and_grad(objective)(params)
    except (ValueError, TypeError) as err:
        assert_names_an_argument(err)
        return
    assert broken == "nothing", f"{broken} input was accepted"
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))


@fuzz(40)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.sampled_from([jnp.float16, jnp.float32, jnp.float64]),
       st.sampled_from(["fine", "targets_shape", "lengths_range", "labels_range", "labels_float", "preds_rank"]))
def test_losses_are_finite_or_name_the_argument(batch, steps, out, dtype, broken):
    rng = np.random.default_rng(batch * 100 + steps * 10 + out)
    preds = jnp.asarray(rng.standard_normal((batch, steps, out)), dtype)
    targets = jnp.asarray(rng.standard_normal((batch, steps, out)), dtype)
    labels = jnp.asarray(rng.integers(0, out, (batch, steps)))
    lengths = jnp.asarray(rng.integers(0, steps + 1, batch))
    if broken == "targets_shape":
        targets = targets[:, :, :0] if out > 1 else targets[None]
    elif broken == "lengths_range":
        lengths = lengths - steps - 1
    elif broken == "labels_range":
        labels = labels + out
        lengths = None
    elif broken == "labels_float":
        labels = labels.astype(jnp.float32)
    elif broken == "preds_rank":
        preds = preds[0]
    for fn, args in ((jrnn.losses.mse, (preds, targets, lengths)), (jrnn.losses.cross_entropy, (preds, labels, lengths)),
                     (jrnn.losses.mse_value_and_grad, (preds, targets, lengths)),
                     (jrnn.losses.cross_entropy_value_and_grad, (preds, labels, lengths))):  # fmt: skip
        try:
            result = fn(*args)
        except (ValueError, TypeError) as err:
            assert_names_an_argument(err)
            continue
        for leaf in jax.tree_util.tree_leaves(result):
            assert np.all(np.isfinite(np.asarray(leaf, np.float64))), (fn.__name__, broken)
