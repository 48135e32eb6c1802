"""Synthetic sequence tasks: the seed's two problems and the memory benchmarks of the literature.

Every task is a pure function ``(key, batch_size, ...) -> (xs, targets)`` of an explicit
``jax.random`` key, returning batch-major arrays: ``xs`` is float32 ``(B, T, D)``; regression
targets are float32, classification labels int32. The integer arguments are Python ints, so a
task can be jit-compiled with them static, e.g. ``jax.jit(adding, static_argnums=(1, 2))``;
each task is also compiled internally, once per combination of sizes.

Each task documents the loss of the best input-blind predictor, the "chance" baseline that a
model must beat to show it has learned anything:

- ``sine``: ``xs (B, T, 1)``, ``targets (B, T, 1)`` the next value; :data:`SINE_BASELINE_MSE`.
- ``timing``: ``xs (B, T, 2)``, ``targets (B, T, 1)`` in {0, 0.5}; :func:`timing_baseline_mse`.
- ``adding``: ``xs (B, T, 2)``, ``targets (B, 1)`` the sum of the two marked values;
  :data:`ADDING_BASELINE_MSE`.
- ``copy_memory``: ``xs (B, T, K + 2)`` one-hot, ``targets (B, T)`` int labels at every step;
  :func:`copy_memory_baseline`.
- ``temporal_order``: ``xs (B, T, 8)`` one-hot, ``labels (B,)`` int, scored at the last step;
  :data:`TEMPORAL_ORDER_BASELINE_CE`.

Targets of shape ``(B, T, ·)`` / ``(B, T)`` are scored at every step and ``(B, ·)`` / ``(B,)`` at
the last step, which is what :mod:`jrnn.losses` expects.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jrnn._checks import check_float, check_int, check_key

__all__ = [
    "ADDING_BASELINE_MSE",
    "SINE_BASELINE_MSE",
    "SINE_NOISE",
    "SINE_NOISE_FLOOR_MSE",
    "SINE_PERIOD",
    "SINE_SAMPLE_GAP",
    "TEMPORAL_ORDER_BASELINE_ACCURACY",
    "TEMPORAL_ORDER_BASELINE_CE",
    "TEMPORAL_ORDER_SYMBOLS",
    "TIMING_SCALE",
    "adding",
    "copy_memory",
    "copy_memory_baseline",
    "sine",
    "sine_curve",
    "sine_series",
    "temporal_order",
    "timing",
    "timing_baseline_mse",
]


# ----------------------------------------------------------------------------------------------
# The seed's sum of sines and cosines
# ----------------------------------------------------------------------------------------------

SINE_SAMPLE_GAP = 0.01
"""Time between samples, as in the seed's data recipe."""

SINE_NOISE = 0.05
"""Half-width of the seed's uniform noise ``U(-0.05, 0.05)``."""

SINE_PERIOD = 6.0
"""Period of :func:`sine_curve` in time units (``sin(πt/3)`` has period 6, ``sin(πt/1.5)`` 3)."""

SINE_NOISE_FLOOR_MSE = SINE_NOISE**2 / 3
"""The noise variance ``noise² / 3 ≈ 8.3e-4``: the lowest MSE a next-step predictor can reach."""

SINE_BASELINE_MSE = 1.5 + SINE_NOISE_FLOOR_MSE
"""MSE of predicting the series mean 0: ``E[sine_curve(t)²] + noise²/3 = 3/2 + noise²/3``."""


def sine_curve(t):
    r"""The seed's clean signal ``f(t) = sin(πt/3) + cos(πt/3) + sin(πt/1.5)``.

    Over a period its mean is 0 and its mean square 3/2 (the three terms are orthogonal).

    Args:
      t: times, an array of any shape (or a number).

    Returns:
      ``f(t)``, with the shape of ``t``.
    """
    return jnp.sin(jnp.pi * t / 3) + jnp.cos(jnp.pi * t / 3) + jnp.sin(jnp.pi * t / 1.5)


def sine_series(key, length: int, *, noise: float = SINE_NOISE,
                sample_gap: float = SINE_SAMPLE_GAP, start: float = 0.0) -> jax.Array:
    r"""One long noisy series ``x_k = f(start + k·gap) + ε_k``, ``ε_k ~ U(-noise, noise)``.

    This is the seed's data recipe: :func:`sine_curve` sampled every ``sample_gap`` time units
    with independent uniform noise. Cut it into windows with :func:`jrnn.datasets.windows`
    (``window=10`` reproduces the seed's "10 past values predict the next" setup, with the
    validation part strictly later in time).

    Args:
      key: a PRNG key.
      length: the number of samples.
      noise: half-width of the uniform noise (0 for the clean curve).
      sample_gap: time between samples, ``> 0``.
      start: time of the first sample.

    Returns:
      float32 ``(length,)``.
    """
    key = check_key("key", key)
    length = check_int("length", length)
    noise = check_float("noise", noise, 0.0)
    sample_gap = check_float("sample_gap", sample_gap, 0.0, low_open=True)
    start = check_float("start", start)
    return _sine_series(key, length, noise, sample_gap, start)


@functools.partial(jax.jit, static_argnums=1)
def _sine_series(key, length, noise, sample_gap, start):
    t = start + sample_gap * jnp.arange(length, dtype=jnp.float32)
    eps = jax.random.uniform(key, (length,), jnp.float32, -noise, noise)
    return sine_curve(t) + eps


def sine(key, batch_size: int, seq_len: int = 50, *, noise: float = SINE_NOISE,
         sample_gap: float = SINE_SAMPLE_GAP) -> tuple[jax.Array, jax.Array]:
    r"""Next-step prediction of the seed's noisy sum of sines and cosines.

    Each sequence ``b`` is a stretch of ``seq_len + 1`` consecutive samples
    ``v_k = f(t_b + k·gap) + ε_k`` of the series of :func:`sine_series`, starting at a uniformly
    random phase ``t_b ~ U[0, SINE_PERIOD)``; the input at step ``k`` is ``v_k`` and its target
    the next sample ``v_{k+1}``, so every step is scored and ``targets[:, :-1] == xs[:, 1:]``.
    The seed's own setup (a window of 10 values predicting the value after it) is
    ``seq_len=10`` scored on the last step: ``targets[:, -1]``.

    Baselines: predicting 0 (the mean) gives :data:`SINE_BASELINE_MSE` ``≈ 1.5008``; the noise
    floor is :data:`SINE_NOISE_FLOOR_MSE` ``≈ 8.3e-4`` (at the seed's ``noise=0.05``).

    Args:
      key: a PRNG key.
      batch_size: ``B``.
      seq_len: ``T``, the number of input steps.
      noise: half-width of the uniform noise (0 for the clean curve).
      sample_gap: time between samples.

    Returns:
      ``xs`` float32 ``(B, T, 1)`` and ``targets`` float32 ``(B, T, 1)``.
    """
    key = check_key("key", key)
    batch_size = check_int("batch_size", batch_size)
    seq_len = check_int("seq_len", seq_len)
    noise = check_float("noise", noise, 0.0)
    sample_gap = check_float("sample_gap", sample_gap, 0.0, low_open=True)
    return _sine(key, batch_size, seq_len, noise, sample_gap)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _sine(key, batch_size, seq_len, noise, sample_gap):
    k_start, k_noise = jax.random.split(key)
    start = jax.random.uniform(k_start, (batch_size, 1), jnp.float32, 0.0, SINE_PERIOD)
    t = start + sample_gap * jnp.arange(seq_len + 1, dtype=jnp.float32)[None, :]   # (B, T+1)
    eps = jax.random.uniform(k_noise, t.shape, jnp.float32, -noise, noise)
    values = (sine_curve(t) + eps)[:, :, None]                                       # (B, T+1, 1)
    return values[:, :-1], values[:, 1:]


# ----------------------------------------------------------------------------------------------
# The seed's timing task
# ----------------------------------------------------------------------------------------------

TIMING_SCALE = 10
"""A trigger with duration value ``u2`` holds the target at 0.5 for ``TIMING_SCALE · u2`` steps."""

_TIMING_MAX_DURATION = 10


def timing_baseline_mse(trigger_prob: float = 0.05) -> float:
    r"""MSE of the best constant prediction for :func:`timing`, in the long-sequence limit.

    Pulses last ``D ~ U{1..10}`` steps (mean 5.5) and idle stretches ``W`` steps with
    ``E[W] = (1 - p)/p``, so the target is 0.5 for a fraction ``φ = 5.5 / (5.5 + (1 - p)/p)`` of
    the steps; the best constant ``0.5 φ`` leaves ``MSE = φ (1 - φ) / 4`` (0.0435 at
    ``p = 0.05``). Sequences start idle, so short ones sit slightly below this.

    Args:
      trigger_prob: the ``trigger_prob`` of :func:`timing`, in ``(0, 1]``.

    Returns:
      The baseline MSE, a Python float.
    """
    p = check_float("trigger_prob", trigger_prob, 0.0, 1.0, low_open=True)
    mean_duration = (_TIMING_MAX_DURATION + 1) / 2
    on = mean_duration / (mean_duration + (1 - p) / p)
    return on * (1 - on) / 4


def timing(key, batch_size: int, seq_len: int = 200, *,
           trigger_prob: float = 0.05) -> tuple[jax.Array, jax.Array]:
    r"""The seed's timing task: hold an output for a duration given at a trigger.

    Input channel 0 is the trigger pulse ``u1`` (1 at a trigger step, else 0) and channel 1 the
    duration value ``u2``, non-zero only at trigger steps, where it is drawn uniformly from
    ``{0.1, 0.2, ..., 1.0}``. The target is 0.5 from the trigger step on for ``10·u2`` steps
    (so 1 to 10 steps, the trigger step included) and 0 otherwise. A trigger fires with
    probability ``trigger_prob`` at each step where no pulse is running, so pulses never overlap,
    though one may start right after another ends. The model has to detect the trigger, store
    ``u2`` and count.

    Baseline: :func:`timing_baseline_mse` (best constant prediction).

    Args:
      key: a PRNG key.
      batch_size: ``B``.
      seq_len: ``T``.
      trigger_prob: per-step probability of a trigger while idle, in ``(0, 1]``.

    Returns:
      ``xs`` float32 ``(B, T, 2)`` = ``(u1, u2)`` and ``targets`` float32 ``(B, T, 1)``.
    """
    key = check_key("key", key)
    batch_size = check_int("batch_size", batch_size)
    seq_len = check_int("seq_len", seq_len)
    trigger_prob = check_float("trigger_prob", trigger_prob, 0.0, 1.0, low_open=True)
    return _timing(key, batch_size, seq_len, trigger_prob)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _timing(key, batch_size, seq_len, trigger_prob):
    k_fire, k_duration = jax.random.split(key)
    wants_to_fire = jax.random.uniform(k_fire, (seq_len, batch_size)) < trigger_prob   # (T, B)
    durations = jax.random.randint(
        k_duration, (seq_len, batch_size), 1, _TIMING_MAX_DURATION + 1, jnp.int32
    )

    def step(remaining, inputs):
        wants, duration = inputs
        fire = wants & (remaining == 0)
        remaining = jnp.where(fire, duration, remaining)
        u1 = fire.astype(jnp.float32)
        u2 = jnp.where(fire, duration.astype(jnp.float32) / TIMING_SCALE, 0.0)
        target = jnp.where(remaining > 0, 0.5, 0.0).astype(jnp.float32)
        return jnp.maximum(remaining - 1, 0), (u1, u2, target)

    idle = jnp.zeros((batch_size,), jnp.int32)
    _, (u1, u2, target) = jax.lax.scan(step, idle, (wants_to_fire, durations))   # each (T, B)
    xs = jnp.stack([u1, u2], axis=-1).transpose(1, 0, 2)                         # (B, T, 2)
    return xs, target.T[:, :, None]                                              # (B, T, 1)


# ----------------------------------------------------------------------------------------------
# Adding problem
# ----------------------------------------------------------------------------------------------

ADDING_BASELINE_MSE = 1 / 6
"""MSE of always predicting 1: the variance of a sum of two ``U[0, 1]`` values, 2/12 ≈ 0.167."""


def adding(key, batch_size: int, seq_len: int = 100) -> tuple[jax.Array, jax.Array]:
    r"""The adding problem (Hochreiter & Schmidhuber, 1997), in the form of Le et al. (2015).

    Channel 0 holds values ``v_t ~ U[0, 1]``; channel 1 is a marker with exactly two ones, one at
    a uniform position in the first half ``[0, ⌊T/2⌋)`` and one in the second half
    ``[⌊T/2⌋, T)``. The target, scored at the last step, is the sum of the two marked values.

    Baseline: predicting 1 (the mean) gives ``Var = 1/6`` = :data:`ADDING_BASELINE_MSE`.

    Args:
      key: a PRNG key.
      batch_size: ``B``.
      seq_len: ``T >= 2``.

    Returns:
      ``xs`` float32 ``(B, T, 2)`` and ``targets`` float32 ``(B, 1)``.
    """
    key = check_key("key", key)
    batch_size = check_int("batch_size", batch_size)
    seq_len = check_int("seq_len", seq_len, minimum=2)
    return _adding(key, batch_size, seq_len)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _adding(key, batch_size, seq_len):
    k_values, k_first, k_second = jax.random.split(key, 3)
    half = seq_len // 2
    values = jax.random.uniform(k_values, (batch_size, seq_len), jnp.float32)
    first = jax.random.randint(k_first, (batch_size, 1), 0, half, jnp.int32)
    second = jax.random.randint(k_second, (batch_size, 1), half, seq_len, jnp.int32)
    t = jnp.arange(seq_len, dtype=jnp.int32)[None, :]                               # (1, T)
    markers = ((t == first) | (t == second)).astype(jnp.float32)                    # (B, T)
    targets = jnp.sum(values * markers, axis=1, keepdims=True)                      # (B, 1)
    return jnp.stack([values, markers], axis=-1), targets


# ----------------------------------------------------------------------------------------------
# Copy memory
# ----------------------------------------------------------------------------------------------


def copy_memory_baseline(lag: int, num_symbols: int = 8, copy_len: int = 10) -> float:
    r"""Cross-entropy of the memoryless strategy for :func:`copy_memory`.

    Predict the blank for the first ``lag + copy_len`` steps (no loss) and a uniform symbol for
    the last ``copy_len``: ``copy_len · ln(num_symbols) / (lag + 2·copy_len)``, i.e.
    ``10 ln 8 / (T + 20)`` in Arjovsky et al. (2016).

    Args:
      lag: ``T``, as in :func:`copy_memory`.
      num_symbols: ``K``.
      copy_len: the number of symbols to copy.

    Returns:
      The baseline cross-entropy per step, a Python float.
    """
    lag = check_int("lag", lag)
    num_symbols = check_int("num_symbols", num_symbols)
    copy_len = check_int("copy_len", copy_len)
    return copy_len * math.log(num_symbols) / (lag + 2 * copy_len)


def copy_memory(key, batch_size: int, lag: int, num_symbols: int = 8,
                copy_len: int = 10) -> tuple[jax.Array, jax.Array]:
    r"""The copy memory task (Arjovsky, Shah & Bengio, 2016).

    With ``K = num_symbols`` symbols ``0..K-1``, the blank ``K`` and the delimiter ``K + 1``, a
    sequence of ``T_total = lag + 2·copy_len`` steps reads (``T = lag``)::

        input:   s_1 .. s_copy_len | blank × (T - 1) | delimiter | blank × copy_len
        target:  blank × (T + copy_len)                         | s_1 .. s_copy_len

    with ``s_i`` uniform over the ``K`` symbols. The model must reproduce the first
    ``copy_len`` symbols, in order, right after the delimiter, ``T + copy_len`` steps later.

    Baseline: :func:`copy_memory_baseline` (``10 ln 8 / (T + 20)`` by default).

    Args:
      key: a PRNG key.
      batch_size: ``B``.
      lag: ``T``, the number of steps from the last input symbol to the delimiter.
      num_symbols: ``K``, the alphabet size.
      copy_len: the number of symbols to copy.

    Returns:
      ``xs`` float32 one-hot ``(B, T_total, K + 2)`` and ``targets`` int32 labels
      ``(B, T_total)``, scored at every step.
    """
    key = check_key("key", key)
    batch_size = check_int("batch_size", batch_size)
    lag = check_int("lag", lag)
    num_symbols = check_int("num_symbols", num_symbols)
    copy_len = check_int("copy_len", copy_len)
    return _copy_memory(key, batch_size, lag, num_symbols, copy_len)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _copy_memory(key, batch_size, lag, num_symbols, copy_len):
    blank, delimiter = num_symbols, num_symbols + 1
    symbols = jax.random.randint(key, (batch_size, copy_len), 0, num_symbols, jnp.int32)

    def fill(value, steps):
        return jnp.full((batch_size, steps), value, jnp.int32)

    inputs = jnp.concatenate(
        [symbols, fill(blank, lag - 1), fill(delimiter, 1), fill(blank, copy_len)], axis=1
    )
    targets = jnp.concatenate([fill(blank, lag + copy_len), symbols], axis=1)
    xs = jax.nn.one_hot(inputs, num_symbols + 2, dtype=jnp.float32)
    return xs, targets


# ----------------------------------------------------------------------------------------------
# Temporal order
# ----------------------------------------------------------------------------------------------

TEMPORAL_ORDER_SYMBOLS = ("a", "b", "c", "d", "B", "E", "X", "Y")
"""Input channels of :func:`temporal_order`: distractors a-d, start B, end E, relevant X and Y."""

TEMPORAL_ORDER_BASELINE_CE = math.log(4)
"""Cross-entropy of guessing among the 4 classes: ``ln 4 ≈ 1.386``."""

TEMPORAL_ORDER_BASELINE_ACCURACY = 0.25
"""Accuracy of guessing among the 4 classes."""

_DISTRACTORS, _START, _END, _X = 4, 4, 5, 6


def temporal_order(key, batch_size: int, seq_len: int = 100) -> tuple[jax.Array, jax.Array]:
    r"""The temporal order problem (Hochreiter & Schmidhuber, 1997, task 6a).

    A sequence starts with ``B`` and ends with ``E``; every other step holds a distractor drawn
    uniformly from ``a, b, c, d``, except two steps ``t1 ∈ [⌊T/10⌋, ⌊T/5⌋]`` and
    ``t2 ∈ [⌊T/2⌋, ⌊6T/10⌋]`` (``[10, 20]`` and ``[50, 60]`` for ``T = 100``, as in the
    paper) holding ``X`` or ``Y``. The class, to be given at the last step, is the order of
    the two: ``XX -> 0``, ``XY -> 1``, ``YX -> 2``, ``YY -> 3``.

    Baseline: :data:`TEMPORAL_ORDER_BASELINE_CE` ``= ln 4`` and
    :data:`TEMPORAL_ORDER_BASELINE_ACCURACY` ``= 1/4``.

    Args:
      key: a PRNG key.
      batch_size: ``B``.
      seq_len: ``T >= 10``.

    Returns:
      ``xs`` float32 one-hot ``(B, T, 8)`` over :data:`TEMPORAL_ORDER_SYMBOLS` and ``labels``
      int32 ``(B,)``.
    """
    key = check_key("key", key)
    batch_size = check_int("batch_size", batch_size)
    seq_len = check_int("seq_len", seq_len, minimum=10)
    return _temporal_order(key, batch_size, seq_len)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _temporal_order(key, batch_size, seq_len):
    k_noise, k_t1, k_t2, k_which = jax.random.split(key, 4)
    symbols = jax.random.randint(k_noise, (batch_size, seq_len), 0, _DISTRACTORS, jnp.int32)
    t = jnp.arange(seq_len, dtype=jnp.int32)[None, :]                               # (1, T)
    t1 = jax.random.randint(k_t1, (batch_size, 1), seq_len // 10, seq_len // 5 + 1, jnp.int32)
    t2 = jax.random.randint(
        k_t2, (batch_size, 1), seq_len // 2, 6 * seq_len // 10 + 1, jnp.int32
    )
    which = jax.random.randint(k_which, (batch_size, 2), 0, 2, jnp.int32)          # 0 X, 1 Y
    symbols = jnp.where(t == t1, _X + which[:, :1], symbols)
    symbols = jnp.where(t == t2, _X + which[:, 1:], symbols)
    symbols = jnp.where(t == 0, _START, symbols)
    symbols = jnp.where(t == seq_len - 1, _END, symbols)
    labels = 2 * which[:, 0] + which[:, 1]
    xs = jax.nn.one_hot(symbols, len(TEMPORAL_ORDER_SYMBOLS), dtype=jnp.float32)
    return xs, labels
