"""Tests for jrnn.losses: values against NumPy loops, hand derivatives against jax.grad."""

import inspect
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrnn import losses
from jrnn.losses import (
    LOSSES,
    cross_entropy,
    cross_entropy_value_and_grad,
    get_loss,
    mse,
    mse_value_and_grad,
)

SHAPES = [(1, 1, 1), (3, 5, 2), (4, 7, 3)]


@pytest.fixture(autouse=True)
def float64_strict():
    """Float64 for tight tolerances; strict dtype and rank promotion catch silent broadcasting."""
    with jax.enable_x64(True), jax.numpy_dtype_promotion("strict"), \
            jax.numpy_rank_promotion("raise"):
        yield


def seed(*parts):
    """A reproducible seed from test parameters (``hash`` of a str varies between runs)."""
    return zlib.crc32(repr(parts).encode())


def random_lengths(rng, batch, steps, with_lengths):
    if not with_lengths:
        return None
    lengths = rng.integers(1, steps + 1, size=batch)
    lengths[0] = steps
    return lengths.astype(np.int32)


# ----------------------------------------------------------------------------------------------
# NumPy references: explicit loops over every element
# ----------------------------------------------------------------------------------------------


def mse_reference(preds, targets, lengths):
    batch, steps, out = preds.shape
    lengths = [steps] * batch if lengths is None else lengths
    total, count = 0.0, 0
    for b in range(batch):
        if targets.ndim == 3:
            scored = [(t, targets[b, t]) for t in range(lengths[b])]
        else:
            scored = [(lengths[b] - 1, targets[b])] if lengths[b] > 0 else []
        for t, y in scored:
            for o in range(out):
                total += (preds[b, t, o] - y[o]) ** 2
                count += 1
    return total / max(count, 1)


def cross_entropy_reference(logits, labels, lengths):
    batch, steps, _ = logits.shape
    lengths = [steps] * batch if lengths is None else lengths
    total, count = 0.0, 0
    for b in range(batch):
        if labels.ndim == 2:
            scored = [(t, labels[b, t]) for t in range(lengths[b])]
        else:
            scored = [(lengths[b] - 1, labels[b])] if lengths[b] > 0 else []
        for t, y in scored:
            z = logits[b, t]
            total += np.log(np.sum(np.exp(z - z.max()))) + z.max() - z[y]
            count += 1
    return total / max(count, 1)


def mse_inputs(rng, shape, last_step):
    batch, steps, out = shape
    preds = rng.normal(size=shape)
    targets = rng.normal(size=(batch, out) if last_step else shape)
    return preds, targets


def ce_inputs(rng, shape, last_step):
    batch, steps, classes = shape
    logits = 3.0 * rng.normal(size=shape)
    labels = rng.integers(0, classes, size=(batch,) if last_step else (batch, steps))
    return logits, labels.astype(np.int32)


def relative_error(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)


# ----------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("last_step", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_mse_matches_reference(shape, last_step, with_lengths):
    rng = np.random.default_rng(seed((shape, last_step, with_lengths)))
    preds, targets = mse_inputs(rng, shape, last_step)
    lengths = random_lengths(rng, shape[0], shape[1], with_lengths)
    loss = mse(preds, targets, lengths)
    assert loss.dtype == jnp.float64
    np.testing.assert_allclose(loss, mse_reference(preds, targets, lengths), rtol=1e-13)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("last_step", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_cross_entropy_matches_reference(shape, last_step, with_lengths):
    rng = np.random.default_rng(seed((shape, last_step, with_lengths, "ce")))
    logits, labels = ce_inputs(rng, shape, last_step)
    lengths = random_lengths(rng, shape[0], shape[1], with_lengths)
    loss = cross_entropy(logits, labels, lengths)
    np.testing.assert_allclose(loss, cross_entropy_reference(logits, labels, lengths), rtol=1e-13)


def test_padded_steps_are_ignored_even_when_nan():
    rng = np.random.default_rng(0)
    preds, targets = mse_inputs(rng, (3, 6, 2), last_step=False)
    lengths = np.array([6, 2, 4], np.int32)
    clean = mse(preds, targets, lengths)
    for b, length in enumerate(lengths):
        targets[b, length:] = np.nan
        preds[b, length:] = 1e6
    np.testing.assert_allclose(mse(preds, targets, lengths), clean, rtol=1e-14)
    _, d_preds = mse_value_and_grad(preds, targets, lengths)
    assert np.all(np.isfinite(d_preds))

    logits, labels = ce_inputs(rng, (3, 6, 4), last_step=False)
    clean = cross_entropy(logits, labels, lengths)
    for b, length in enumerate(lengths):
        labels[b, length:] = -100          # PyTorch's ignore_index convention
    np.testing.assert_allclose(cross_entropy(logits, labels, lengths), clean, rtol=1e-14)


def test_last_step_uses_each_sequences_last_valid_step():
    rng = np.random.default_rng(1)
    preds, targets = mse_inputs(rng, (3, 5, 2), last_step=True)
    lengths = np.array([5, 1, 3], np.int32)
    picked = preds[np.arange(3), lengths - 1]                      # (B, O)
    expected = np.mean((picked - targets) ** 2)
    np.testing.assert_allclose(mse(preds, targets, lengths), expected, rtol=1e-14)
    # Without seq_lengths the last step is T - 1.
    np.testing.assert_allclose(mse(preds, targets), np.mean((preds[:, -1] - targets) ** 2),
                               rtol=1e-14)


def test_zero_length_sequences_are_not_scored():
    rng = np.random.default_rng(2)
    preds, targets = mse_inputs(rng, (3, 4, 2), last_step=True)
    lengths = np.array([4, 0, 2], np.int32)
    expected = np.mean((preds[[0, 2], [3, 1]] - targets[[0, 2]]) ** 2)
    np.testing.assert_allclose(mse(preds, targets, lengths), expected, rtol=1e-14)
    nothing = np.zeros(3, np.int32)
    loss, d_preds = mse_value_and_grad(preds, targets, nothing)
    assert float(loss) == 0.0 and not np.any(d_preds)
    logits, labels = ce_inputs(rng, (3, 4, 5), last_step=False)
    loss, d_logits = cross_entropy_value_and_grad(logits, labels, nothing)
    assert float(loss) == 0.0 and not np.any(d_logits)


def test_cross_entropy_is_stable_for_huge_logits():
    rng = np.random.default_rng(3)
    logits, labels = ce_inputs(rng, (2, 3, 4), last_step=False)
    big = logits * 1e4
    loss, d_logits = cross_entropy_value_and_grad(big, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(d_logits))
    np.testing.assert_allclose(loss, cross_entropy_reference(big, labels, None), rtol=1e-12)
    with jax.enable_x64(False), jax.numpy_dtype_promotion("standard"):
        small = cross_entropy(jnp.asarray(big, jnp.float32), labels)
        assert small.dtype == jnp.float32 and np.isfinite(small)


# ----------------------------------------------------------------------------------------------
# Hand derivatives against jax.grad
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("last_step", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_mse_hand_gradient_matches_autodiff(shape, last_step, with_lengths):
    rng = np.random.default_rng(seed((shape, last_step, with_lengths, "g")))
    preds, targets = mse_inputs(rng, shape, last_step)
    lengths = random_lengths(rng, shape[0], shape[1], with_lengths)
    loss, d_preds = mse_value_and_grad(preds, targets, lengths)
    assert d_preds.shape == preds.shape
    np.testing.assert_allclose(loss, mse(preds, targets, lengths), rtol=1e-14)
    auto = jax.grad(mse)(jnp.asarray(preds), targets, lengths)
    assert relative_error(d_preds, auto) < 1e-10


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("last_step", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_cross_entropy_hand_gradient_matches_autodiff(shape, last_step, with_lengths):
    rng = np.random.default_rng(seed((shape, last_step, with_lengths, "cg")))
    logits, labels = ce_inputs(rng, shape, last_step)
    lengths = random_lengths(rng, shape[0], shape[1], with_lengths)
    loss, d_logits = cross_entropy_value_and_grad(logits, labels, lengths)
    assert d_logits.shape == logits.shape
    np.testing.assert_allclose(loss, cross_entropy(logits, labels, lengths), rtol=1e-14)
    auto = jax.grad(cross_entropy)(jnp.asarray(logits), labels, lengths)
    assert relative_error(d_logits, auto) < 1e-10


def test_unscored_steps_get_zero_gradient():
    rng = np.random.default_rng(4)
    lengths = np.array([5, 2, 3], np.int32)
    preds, targets = mse_inputs(rng, (3, 5, 2), last_step=True)
    _, d_preds = mse_value_and_grad(preds, targets, lengths)
    nonzero_steps = np.argwhere(np.any(np.asarray(d_preds) != 0, axis=-1))
    np.testing.assert_array_equal(nonzero_steps, [[0, 4], [1, 1], [2, 2]])
    logits, labels = ce_inputs(rng, (3, 5, 4), last_step=False)
    _, d_logits = cross_entropy_value_and_grad(logits, labels, lengths)
    for b, length in enumerate(lengths):
        assert not np.any(d_logits[b, length:])
        assert np.all(np.any(d_logits[b, :length] != 0, axis=-1))


def test_no_automatic_differentiation_in_module():
    source = inspect.getsource(losses)
    banned = re.findall(r"jax\.(?:grad|vjp|jvp|linearize|value_and_grad|custom_vjp|custom_jvp)"
                        r"|from jax import", source)
    assert banned == []


# ----------------------------------------------------------------------------------------------
# jit
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("last_step", [False, True])
def test_jit_matches_eager(name, last_step):
    rng = np.random.default_rng(5)
    shape = (3, 4, 3)
    if name == "mse":
        preds, targets = mse_inputs(rng, shape, last_step)
    else:
        preds, targets = ce_inputs(rng, shape, last_step)
    lengths = random_lengths(rng, shape[0], shape[1], True)
    loss_fn, value_and_grad = get_loss(name)
    np.testing.assert_allclose(jax.jit(loss_fn)(preds, targets, lengths),
                               loss_fn(preds, targets, lengths), rtol=1e-14)
    jit_loss, jit_grad = jax.jit(value_and_grad)(preds, targets, lengths)
    loss, grad = value_and_grad(preds, targets, lengths)
    np.testing.assert_allclose(jit_loss, loss, rtol=1e-14)
    np.testing.assert_allclose(jit_grad, grad, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(jax.jit(loss_fn)(preds, targets), loss_fn(preds, targets),
                               rtol=1e-14)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_get_loss_table_and_unknown_name():
    assert get_loss("mse") == (mse, mse_value_and_grad)
    assert get_loss("cross_entropy") == (cross_entropy, cross_entropy_value_and_grad)
    with pytest.raises(ValueError, match=r"loss must be one of \['cross_entropy', 'mse'\], "
                                         r"got 'mae'"):
        get_loss("mae")


@pytest.mark.parametrize(
    "preds_shape, targets_shape, lengths, error, pattern",
    [
        ((3, 4), (3, 4), None, ValueError, r"preds must be \(B, T, O\), got shape \(3, 4\)"),
        ((3, 4, 2), (5, 2), None, ValueError, r"targets must be .* \(B, O\) = \(3, 2\) .*"
                                              r"got shape \(5, 2\)"),
        ((3, 4, 2), (3, 5, 2), None, ValueError, r"targets must be \(B, T, O\) = \(3, 4, 2\) .*"
                                                 r"got shape \(3, 5, 2\)"),
        ((3, 4, 2), (3,), None, ValueError, r"targets must be .* got shape \(3,\)"),
        ((3, 4, 2), (3, 2), np.array([4, 4], np.int32), ValueError,
         r"seq_lengths must be of shape \(3,\) \(one length per sequence\), got \(2,\)"),
        ((3, 4, 2), (3, 2), np.array([4.0, 4.0, 4.0]), TypeError,
         r"seq_lengths must be integers, got dtype float64"),
        ((3, 4, 2), (3, 2), np.array([4, 5, 1], np.int32), ValueError,
         r"seq_lengths must be in \[0, 4\] \(the number of time steps\), got values in \[1, 5\]"),
    ],
)
def test_mse_errors(preds_shape, targets_shape, lengths, error, pattern):
    rng = np.random.default_rng(6)
    with pytest.raises(error, match=pattern):
        mse(rng.normal(size=preds_shape), rng.normal(size=targets_shape), lengths)
    with pytest.raises(error, match=pattern):
        mse_value_and_grad(rng.normal(size=preds_shape), rng.normal(size=targets_shape), lengths)


def test_dtype_errors():
    rng = np.random.default_rng(7)
    with pytest.raises(TypeError, match=r"preds must be floating point, got dtype int"):
        mse(rng.integers(0, 3, size=(2, 3, 1)), rng.normal(size=(2, 3, 1)))
    with pytest.raises(TypeError, match=r"targets must be real numbers .* got dtype bool"):
        mse(rng.normal(size=(2, 3, 1)), rng.normal(size=(2, 3, 1)) > 0)
    with pytest.raises(TypeError, match=r"labels must be integers \(class indices\), got dtype float64"):
        cross_entropy(rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3)))


@pytest.mark.parametrize(
    "labels, lengths, pattern",
    [
        (np.zeros((2, 4), np.int32), None, r"labels must be \(B, T\) = \(2, 3\) .* "
                                           r"got shape \(2, 4\)"),
        (np.zeros((3,), np.int32), None, r"labels must be .* \(B,\) = \(2,\) .* got shape \(3,\)"),
        (np.zeros((2, 3, 1), np.int32), None, r"labels must be .* got shape \(2, 3, 1\)"),
        (np.array([[0, 1, 4], [0, 1, 2]], np.int32), None,
         r"labels must be class indices in \[0, K\) = \[0, 4\) .* got values in \[0, 4\]"),
        (np.array([[0, -1, 3], [0, 1, 2]], np.int32), np.array([3, 3], np.int32),
         r"labels must be class indices .* got values in \[-1, 3\]"),
    ],
)
def test_cross_entropy_errors(labels, lengths, pattern):
    logits = np.random.default_rng(8).normal(size=(2, 3, 4))
    with pytest.raises(ValueError, match=pattern):
        cross_entropy(logits, labels, lengths)
    with pytest.raises(ValueError, match=pattern):
        cross_entropy_value_and_grad(logits, labels, lengths)


def test_validation_is_static_under_jit():
    rng = np.random.default_rng(9)
    preds, targets = mse_inputs(rng, (2, 3, 1), last_step=False)
    with pytest.raises(ValueError, match=r"seq_lengths must be of shape \(2,\)"):
        jax.jit(mse)(preds, targets, np.array([1, 2, 3], np.int32))
