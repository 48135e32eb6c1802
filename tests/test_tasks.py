"""Tests for jrnn.tasks: shapes, determinism, targets recomputed in NumPy, empirical baselines."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrnn import tasks
from jrnn.losses import cross_entropy

KEY = jax.random.key(0)

TASKS = {
    "sine": (tasks.sine, (3, 7), ((3, 7, 1), jnp.float32), ((3, 7, 1), jnp.float32)),
    "timing": (tasks.timing, (3, 40), ((3, 40, 2), jnp.float32), ((3, 40, 1), jnp.float32)),
    "adding": (tasks.adding, (3, 9), ((3, 9, 2), jnp.float32), ((3, 1), jnp.float32)),
    "copy_memory": (tasks.copy_memory, (3, 5), ((3, 25, 10), jnp.float32), ((3, 25), jnp.int32)),
    "temporal_order": (tasks.temporal_order, (3, 20), ((3, 20, 8), jnp.float32),
                       ((3,), jnp.int32)),
}


# ----------------------------------------------------------------------------------------------
# Shapes, dtypes, determinism, jit
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TASKS))
def test_shapes_and_dtypes(name):
    fn, args, (xs_shape, xs_dtype), (y_shape, y_dtype) = TASKS[name]
    xs, targets = fn(KEY, *args)
    assert xs.shape == xs_shape and xs.dtype == xs_dtype
    assert targets.shape == y_shape and targets.dtype == y_dtype


@pytest.mark.parametrize("name", sorted(TASKS))
def test_batch_of_one(name):
    fn, args, (xs_shape, _), (y_shape, _) = TASKS[name]
    xs, targets = fn(KEY, 1, *args[1:])
    assert xs.shape == (1,) + xs_shape[1:] and targets.shape == (1,) + y_shape[1:]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_deterministic_per_key(name):
    fn, args, _, _ = TASKS[name]
    xs_a, y_a = fn(jax.random.key(7), *args)
    xs_b, y_b = fn(jax.random.key(7), *args)
    xs_c, y_c = fn(jax.random.key(8), *args)
    np.testing.assert_array_equal(xs_a, xs_b)
    np.testing.assert_array_equal(y_a, y_b)
    assert not (np.array_equal(xs_a, xs_c) and np.array_equal(y_a, y_c))


def test_legacy_raw_key_works():
    xs_raw, targets_raw = tasks.adding(jax.random.PRNGKey(7), 3, 9)
    xs_typed, targets_typed = tasks.adding(jax.random.wrap_key_data(jax.random.PRNGKey(7)), 3, 9)
    np.testing.assert_array_equal(xs_raw, xs_typed)
    np.testing.assert_array_equal(targets_raw, targets_typed)


@pytest.mark.parametrize("name", ["copy_memory", "timing"])
def test_jit_with_static_sizes(name):
    fn, args, _, _ = TASKS[name]
    jitted = jax.jit(fn, static_argnums=tuple(range(1, 1 + len(args))))
    for eager, compiled in zip(fn(KEY, *args), jitted(KEY, *args)):
        np.testing.assert_allclose(compiled, eager, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# sine
# ----------------------------------------------------------------------------------------------


def sine_numpy(t):
    return np.sin(np.pi * t / 3) + np.cos(np.pi * t / 3) + np.sin(np.pi * t / 1.5)


def test_sine_targets_are_next_values():
    xs, targets = tasks.sine(KEY, 3, 7)
    np.testing.assert_array_equal(targets[:, :-1], xs[:, 1:])


@pytest.fixture(scope="module")
def sine_batches():
    """The same phases with and without noise: (noisy, clean) inputs and targets."""
    key = jax.random.key(3)
    return tasks.sine(key, 2048, 50), tasks.sine(key, 2048, 50, noise=0.0)


def test_sine_clean_sequences_follow_the_seed_curve(sine_batches):
    _, (xs, targets) = sine_batches
    values = np.concatenate([xs[:5, :, 0], targets[:5, -1:, 0]], axis=1).astype(np.float64)
    # Recover each sequence's start phase by a fine grid search, then compare every sample.
    grid = np.arange(0.0, tasks.SINE_PERIOD, 1e-4)
    times = grid[:, None] + tasks.SINE_SAMPLE_GAP * np.arange(values.shape[1])[None, :]
    curves = sine_numpy(times)                                            # (G, T+1)
    for row in values:
        best = np.argmin(np.sum((curves - row[None, :]) ** 2, axis=1))
        np.testing.assert_allclose(row, curves[best], atol=1e-3)


def test_sine_noise_is_uniform_in_the_band(sine_batches):
    (noisy, _), (clean, _) = sine_batches
    eps = np.asarray(noisy - clean)
    assert np.all(np.abs(eps) <= tasks.SINE_NOISE + 1e-6)
    assert np.var(eps) == pytest.approx(tasks.SINE_NOISE_FLOOR_MSE, rel=0.05)
    assert np.mean(np.abs(eps) > tasks.SINE_NOISE / 2) == pytest.approx(0.5, abs=0.02)


def test_sine_baseline_of_predicting_zero(sine_batches):
    (_, targets), _ = sine_batches
    assert float(np.mean(np.asarray(targets) ** 2)) == pytest.approx(tasks.SINE_BASELINE_MSE,
                                                                     rel=0.05)


def test_sine_series_is_the_seed_recipe():
    key = jax.random.key(5)
    clean = tasks.sine_series(key, 300, noise=0.0, start=1.25)
    expected = sine_numpy(1.25 + tasks.SINE_SAMPLE_GAP * np.arange(300))
    np.testing.assert_allclose(clean, expected, atol=2e-5)
    noisy = tasks.sine_series(key, 300, start=1.25)
    assert noisy.shape == (300,) and noisy.dtype == jnp.float32
    assert 0 < np.max(np.abs(noisy - clean)) <= tasks.SINE_NOISE + 1e-6


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------


def timing_targets_numpy(xs):
    """0.5 for 10·u2 steps from each trigger on (the trigger step included), else 0."""
    batch, steps, _ = xs.shape
    targets = np.zeros((batch, steps))
    for b in range(batch):
        for t in np.flatnonzero(xs[b, :, 0] == 1.0):
            duration = int(round(tasks.TIMING_SCALE * xs[b, t, 1]))
            targets[b, t:t + duration] = 0.5
    return targets


@pytest.fixture(scope="module")
def timing_batch():
    return tasks.timing(jax.random.key(9), 64, 2000, trigger_prob=0.1)


def test_timing_targets_recomputed(timing_batch):
    xs, targets = timing_batch
    xs = np.asarray(xs)
    assert np.sum(xs[:, :, 0]) > 1000                             # many triggers were drawn
    np.testing.assert_array_equal(targets[:, :, 0], timing_targets_numpy(xs))


def test_timing_input_encoding(timing_batch):
    xs, _ = timing_batch
    u1, u2 = np.asarray(xs[:, :, 0]), np.asarray(xs[:, :, 1])
    assert set(np.unique(u1)) == {0.0, 1.0}
    # u2 is non-zero exactly at triggers, and takes the values 0.1, ..., 1.0.
    np.testing.assert_array_equal(u2 != 0, u1 == 1)
    np.testing.assert_allclose(np.unique(u2[u1 == 1]), np.arange(1, 11) / 10, rtol=1e-6)
    # No trigger while a pulse is running.
    for b in range(u1.shape[0]):
        triggers = np.flatnonzero(u1[b])
        durations = np.round(10 * u2[b, triggers]).astype(int)
        assert np.all(triggers[1:] >= triggers[:-1] + durations[:-1])


@pytest.mark.parametrize("p", [0.05, 0.1])
def test_timing_baseline(p):
    _, targets = tasks.timing(jax.random.key(11), 64, 2000, trigger_prob=p)
    y = np.asarray(targets, np.float64)
    best_constant_mse = np.mean((y - y.mean()) ** 2)
    assert best_constant_mse == pytest.approx(tasks.timing_baseline_mse(p), rel=0.05)


def test_timing_baseline_value():
    assert tasks.timing_baseline_mse(0.05) == pytest.approx(0.0435, abs=1e-4)


# ----------------------------------------------------------------------------------------------
# adding
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adding_batch():
    return tasks.adding(jax.random.key(12), 20000, 20)


@pytest.mark.parametrize("odd", [False, True])
def test_adding_targets_recomputed(adding_batch, odd):
    xs, targets = tasks.adding(jax.random.key(12), 3, 9) if odd else adding_batch
    seq_len = xs.shape[1]
    values, markers = np.asarray(xs[:32, :, 0]), np.asarray(xs[:32, :, 1])
    assert np.all((values >= 0) & (values < 1))
    for b in range(values.shape[0]):
        marked = np.flatnonzero(markers[b])
        assert len(marked) == 2 and np.all(markers[b][markers[b] != 1] == 0)
        assert marked[0] < seq_len // 2 <= marked[1]
        assert targets[b, 0] == pytest.approx(values[b, marked[0]] + values[b, marked[1]],
                                              rel=1e-6)


def test_adding_marker_positions_cover_both_halves(adding_batch):
    xs, _ = adding_batch
    frequencies = np.asarray(xs[:, :, 1]).mean(axis=0)
    np.testing.assert_allclose(frequencies, 1 / 10, atol=0.01)   # uniform within each half


def test_adding_baseline_of_predicting_one(adding_batch):
    _, targets = adding_batch
    mse = float(np.mean((np.asarray(targets) - 1.0) ** 2))
    assert tasks.ADDING_BASELINE_MSE == pytest.approx(0.1667, abs=1e-4)
    assert mse == pytest.approx(tasks.ADDING_BASELINE_MSE, abs=0.01)


# ----------------------------------------------------------------------------------------------
# copy memory
# ----------------------------------------------------------------------------------------------


# Batch sizes match the other copy-memory tests so that each shape compiles once.
@pytest.mark.parametrize("batch, lag, num_symbols, copy_len",
                         [(4000, 1, 4, 5), (16, 30, 8, 10), (6, 20, 3, 1)])
def test_copy_memory_layout(batch, lag, num_symbols, copy_len):
    xs, targets = tasks.copy_memory(jax.random.key(15), batch, lag, num_symbols, copy_len)
    total = lag + 2 * copy_len
    assert xs.shape == (batch, total, num_symbols + 2) and targets.shape == (batch, total)
    xs, targets = np.asarray(xs[:6]), np.asarray(targets[:6])
    np.testing.assert_array_equal(xs.sum(axis=-1), 1.0)          # one-hot
    inputs = xs.argmax(axis=-1)
    blank, delimiter = num_symbols, num_symbols + 1
    for b in range(6):
        symbols = inputs[b, :copy_len]
        assert np.all(symbols < num_symbols)
        expected_inputs = np.concatenate(
            [symbols, [blank] * (lag - 1), [delimiter], [blank] * copy_len])
        expected_targets = np.concatenate([[blank] * (lag + copy_len), symbols])
        np.testing.assert_array_equal(inputs[b], expected_inputs)
        np.testing.assert_array_equal(targets[b], expected_targets)


def test_copy_memory_baseline_formula_and_memoryless_strategy():
    lag = 30
    assert tasks.copy_memory_baseline(lag) == pytest.approx(10 * math.log(8) / (lag + 20))
    _, targets = tasks.copy_memory(jax.random.key(16), 16, lag)
    # Memoryless strategy: certain blank for lag + 10 steps, uniform over symbols for the last 10.
    total, classes = lag + 20, 10
    log_probs = np.full((total, classes), -1e9)
    log_probs[: lag + 10, 8] = 0.0
    log_probs[lag + 10:, :8] = -math.log(8)
    logits = jnp.asarray(np.broadcast_to(log_probs, (16, total, classes)), jnp.float32)
    loss = float(cross_entropy(logits, targets))
    assert loss == pytest.approx(tasks.copy_memory_baseline(lag), rel=1e-5)


def test_copy_memory_symbols_are_uniform():
    _, targets = tasks.copy_memory(jax.random.key(17), 4000, 1, num_symbols=4, copy_len=5)
    counts = np.bincount(np.asarray(targets[:, -5:]).ravel(), minlength=5)
    assert counts[4] == 0
    np.testing.assert_allclose(counts[:4] / counts.sum(), 0.25, atol=0.02)


# ----------------------------------------------------------------------------------------------
# temporal order
# ----------------------------------------------------------------------------------------------


def temporal_order_numpy(symbols):
    """The class from the positions of X and Y, found independently of the generator."""
    x, y = tasks.TEMPORAL_ORDER_SYMBOLS.index("X"), tasks.TEMPORAL_ORDER_SYMBOLS.index("Y")
    relevant = [s for s in symbols if s in (x, y)]
    assert len(relevant) == 2
    return {(x, x): 0, (x, y): 1, (y, x): 2, (y, y): 3}[tuple(relevant)]


@pytest.fixture(scope="module")
def temporal_order_batch():
    return tasks.temporal_order(jax.random.key(19), 4000, 100)


@pytest.mark.parametrize("seq_len", [10, 37, 100])
def test_temporal_order_recomputed(temporal_order_batch, seq_len):
    if seq_len == 100:
        xs, labels = temporal_order_batch
    else:
        xs, labels = tasks.temporal_order(jax.random.key(18), 64, seq_len)
    xs = np.asarray(xs[:64])
    np.testing.assert_array_equal(xs.sum(axis=-1), 1.0)
    symbols = xs.argmax(axis=-1)
    names = tasks.TEMPORAL_ORDER_SYMBOLS
    assert np.all(symbols[:, 0] == names.index("B"))
    assert np.all(symbols[:, -1] == names.index("E"))
    for b in range(64):
        assert labels[b] == temporal_order_numpy(symbols[b])
        positions = np.flatnonzero(symbols[b] >= names.index("X"))
        assert seq_len // 10 <= positions[0] <= seq_len // 5
        assert seq_len // 2 <= positions[1] <= 6 * seq_len // 10
        middle = np.delete(symbols[b, 1:-1], positions - 1)
        assert np.all(middle < 4)                                 # distractors a, b, c, d


def test_temporal_order_paper_positions_and_baseline(temporal_order_batch):
    xs, labels = temporal_order_batch
    symbols = np.asarray(xs).argmax(axis=-1)
    positions = np.argwhere(symbols >= 6)[:, 1].reshape(4000, 2)
    assert set(np.unique(positions[:, 0])) == set(range(10, 21))
    assert set(np.unique(positions[:, 1])) == set(range(50, 61))
    frequencies = np.bincount(np.asarray(labels), minlength=4) / 4000
    np.testing.assert_allclose(frequencies, 0.25, atol=0.03)
    # Guessing the class frequencies scores ln 4 and 25 %.
    entropy = -np.sum(frequencies * np.log(frequencies))
    assert entropy == pytest.approx(tasks.TEMPORAL_ORDER_BASELINE_CE, abs=0.01)
    assert np.max(frequencies) == pytest.approx(tasks.TEMPORAL_ORDER_BASELINE_ACCURACY, abs=0.03)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda: tasks.adding(0, 4, 10), TypeError, r"key must be a jax.random key, got int"),
        (lambda: tasks.adding(jax.random.split(KEY, 3), 4, 10), TypeError,
         r"key must be a jax.random key, got .*\(3,\)"),
        (lambda: tasks.adding(np.zeros(2, np.float32), 4, 10), TypeError,
         r"key must be a jax.random key, got ndarray \(2,\)"),
        (lambda: tasks.adding(KEY, 0, 10), ValueError, r"batch_size must be a positive int, "
                                                       r"got 0"),
        (lambda: tasks.adding(KEY, 4.0, 10), ValueError, r"batch_size must be .* got 4.0"),
        (lambda: tasks.adding(KEY, True, 10), ValueError, r"batch_size must be .* got True"),
        (lambda: tasks.adding(KEY, 4, 1), ValueError, r"seq_len must be an int >= 2, got 1"),
        (lambda: tasks.sine(KEY, 4, 0), ValueError, r"seq_len must be a positive int, got 0"),
        (lambda: tasks.sine(KEY, 4, noise=-0.1), ValueError, r"noise must be .*>= 0, got -0.1"),
        (lambda: tasks.sine(KEY, 4, sample_gap=0.0), ValueError,
         r"sample_gap must be .*> 0, got 0.0"),
        (lambda: tasks.sine_series(KEY, -5), ValueError, r"length must be a positive int, got -5"),
        (lambda: tasks.sine_series(KEY, 5, start=float("inf")), ValueError,
         r"start must be a finite number, got inf"),
        (lambda: tasks.timing(KEY, 4, trigger_prob=0.0), ValueError,
         r"trigger_prob must be a number in \(0, 1\], got 0.0"),
        (lambda: tasks.timing(KEY, 4, trigger_prob=1.5), ValueError,
         r"trigger_prob must be .* got 1.5"),
        (lambda: tasks.timing_baseline_mse(0.0), ValueError, r"trigger_prob must be .* got 0.0"),
        (lambda: tasks.copy_memory(KEY, 4, 0), ValueError, r"lag must be a positive int, got 0"),
        (lambda: tasks.copy_memory(KEY, 4, 5, num_symbols=0), ValueError,
         r"num_symbols must be .* got 0"),
        (lambda: tasks.copy_memory(KEY, 4, 5, copy_len=-1), ValueError,
         r"copy_len must be .* got -1"),
        (lambda: tasks.copy_memory_baseline(0), ValueError, r"lag must be .* got 0"),
        (lambda: tasks.temporal_order(KEY, 4, 9), ValueError, r"seq_len must be an int >= 10, "
                                                              r"got 9"),
    ],
)
def test_errors(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
