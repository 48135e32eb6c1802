"""jrnn.metrics: every metric against a NumPy loop over the scored steps, every layout (every step,
last step, one output per sequence), masking by seq_lengths, exact aggregation over batches, the
name table and its errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jrnn import losses, metrics

B, T, K, O = 6, 5, 4, 3


def _scored(lengths, every: bool, steps: int = T):
    """The (b, t) pairs that are scored, written as a loop (the losses' rule)."""
    pairs = []
    for b in range(B):
        L = steps if lengths is None else int(lengths[b])
        if every:
            pairs += [(b, t) for t in range(L)]
        elif L > 0:
            pairs.append((b, L - 1))
    return pairs


def np_reference(name, preds, targets, lengths, k=5):
    """The metric by a plain loop in float64."""
    preds, targets = np.asarray(preds, np.float64), np.asarray(targets)
    if preds.ndim == 2:  # one output per sequence: a sequence scored when its length is > 0
        keep = [b for b in range(len(preds)) if lengths is None or lengths[b] > 0]
        pairs, p_at, y_at = keep, (lambda b: preds[b]), (lambda b: targets[b])
    else:
        every = targets.ndim == (2 if name.endswith("accuracy") else 3)
        pairs = _scored(lengths, every)
        p_at = lambda bt: preds[bt]  # noqa: E731
        y_at = (lambda bt: targets[bt]) if every else (lambda bt: targets[bt[0]])  # noqa: E731
    if not pairs:
        return 0.0
    values = []
    for i in pairs:
        p, y = p_at(i), y_at(i)
        if name == "accuracy":
            values.append(float(np.argmax(p) == y))
        elif name.startswith("top"):
            values.append(float(np.sum(p > p[y]) < k))
        elif name in ("mse", "rmse"):
            values.extend(((p - y) ** 2).tolist())
        else:
            values.extend(np.abs(p - y).tolist())
    mean = float(np.mean(values))
    return np.sqrt(mean) if name == "rmse" else mean


def data(kind, layout, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, T + 1, size=B)
    lengths[0], lengths[1] = T, 0
    C = K if kind == "labels" else O
    preds = rng.standard_normal((B, C) if layout == "sequence" else (B, T, C))
    if kind == "labels":
        shape = (B, T) if layout == "every" else (B,)
        targets = rng.integers(0, K, size=shape)
        # make some predictions right, so that accuracies are neither 0 nor 1
        if layout == "every":
            targets[:, ::2] = preds[:, ::2].argmax(-1)
        else:
            targets[::2] = (preds if layout == "sequence" else preds[:, -1]).argmax(-1)[::2]
    else:
        targets = rng.standard_normal({"every": (B, T, O), "last": (B, O), "sequence": (B, O)}[layout])
    return preds, targets, lengths


CASES = [(name, layout) for name in ("accuracy", "top_2_accuracy", "mse", "mae", "rmse")
         for layout in ("every", "last", "sequence")]


@pytest.mark.parametrize("name,layout", CASES)
@pytest.mark.parametrize("masked", [False, True])
def test_metric_equals_a_numpy_loop(name, layout, masked):
    kind = "labels" if name.endswith("accuracy") else "values"
    preds, targets, lengths = data(kind, layout)
    lengths = lengths if masked else None
    metric = metrics.get_metric(name)
    got = metric(jnp.asarray(preds), jnp.asarray(targets), None if lengths is None else jnp.asarray(lengths))
    want = np_reference(name.replace("top_2_accuracy", "top_accuracy"), preds, targets, lengths, k=2)
    np.testing.assert_allclose(float(got), want, rtol=1e-12, atol=1e-15)
    jitted = jax.jit(lambda p, y, L: metric(p, y, L))(preds, targets, lengths)
    np.testing.assert_allclose(float(jitted), want, rtol=1e-12, atol=1e-15)


def test_functions_match_the_table_and_the_losses():
    preds, targets, lengths = data("values", "every", seed=3)
    np.testing.assert_allclose(metrics.mse(preds, targets, lengths), losses.mse(preds, targets, lengths), rtol=1e-13)
    np.testing.assert_allclose(metrics.rmse(preds, targets, lengths) ** 2, metrics.mse(preds, targets, lengths),
                               rtol=1e-13)  # fmt: skip
    logits, labels, lengths = data("labels", "last", seed=4)
    np.testing.assert_allclose(metrics.top_k_accuracy(logits, labels, lengths, k=2),
                               metrics.get_metric("top_2_accuracy")(logits, labels, lengths))  # fmt: skip
    np.testing.assert_allclose(metrics.top_k_accuracy(logits, labels, lengths, k=K), 1.0)
    assert set(metrics.METRICS) == {"accuracy", "top_5_accuracy", "mse", "mae", "rmse"}
    assert metrics.METRICS["accuracy"].higher_is_better and not metrics.METRICS["rmse"].higher_is_better


def test_parts_aggregate_exactly_over_batches():
    """Summing (total, count) over two halves gives the metric of the whole set, RMSE included
    (not a mean of per-batch roots)."""
    preds, targets, lengths = data("values", "every", seed=5)
    for name in ("mse", "mae", "rmse"):
        m = metrics.get_metric(name)
        halves = [m.parts(preds[i:i + 3], targets[i:i + 3], lengths[i:i + 3]) for i in (0, 3)]
        total, count = (sum(h[j] for h in halves) for j in (0, 1))
        np.testing.assert_allclose(m.finish(total, count), m(preds, targets, lengths), rtol=1e-13)
    logits, labels, lengths = data("labels", "every", seed=6)
    m = metrics.get_metric("accuracy")
    halves = [m.parts(logits[i:i + 3], labels[i:i + 3], lengths[i:i + 3]) for i in (0, 3)]
    np.testing.assert_allclose(sum(h[0] for h in halves) / sum(h[1] for h in halves), m(logits, labels, lengths))


def test_unscored_targets_are_never_read_and_nothing_scored_is_zero():
    logits, labels, lengths = data("labels", "every", seed=7)
    bad = labels.copy()
    for b in range(B):
        bad[b, lengths[b]:] = -7  # padding may hold anything
    assert float(metrics.accuracy(logits, bad, lengths)) == float(metrics.accuracy(logits, labels, lengths))
    preds, targets, lengths = data("values", "every", seed=8)
    nan = targets.copy()
    for b in range(B):
        nan[b, lengths[b]:] = np.nan
    assert np.isfinite(float(metrics.mae(preds, nan, lengths)))
    zeros = np.zeros((B,), np.int32)
    assert float(metrics.rmse(preds, targets, zeros)) == 0.0 and float(metrics.accuracy(logits, labels, zeros)) == 0.0


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: metrics.accuracy(np.zeros((B, T, K)), np.zeros((B, T), np.float32)), TypeError, "labels must be integers"),
        (lambda: metrics.accuracy(np.zeros((B, T, K)), np.zeros((B, T + 1), np.int32)), ValueError,
         r"labels must be \(B, T\) = \(6, 5\) .*got shape \(6, 6\)"),
        (lambda: metrics.mse(np.zeros((B, O)), np.zeros((B, T, O))), ValueError,
         r"targets must be \(B, O\) = \(6, 3\) for preds of shape \(6, 3\) \(one output per sequence\)"),
        (lambda: metrics.mse(np.zeros((B,)), np.zeros((B,))), ValueError, r"preds must be \(B, T, O\)"),
        (lambda: metrics.accuracy(np.zeros((B, T, K)), np.full((B, T), K)), ValueError, r"class indices in \[0, K\)"),
        (lambda: metrics.mae(np.zeros((B, T, O)), np.zeros((B, O)), np.full((B,), T + 1)), ValueError, "seq_lengths"),
        (lambda: metrics.top_k_accuracy(np.zeros((B, T, K)), np.zeros((B,), np.int32), k=0), ValueError,
         "k must be a positive int"),
        (lambda: metrics.get_metric("f1"), ValueError, r"metric must be one of \['accuracy', 'mae', 'mse', 'rmse', "
                                                       r"'top_5_accuracy'\] or 'top_<k>_accuracy', got 'f1'"),
        (lambda: metrics.get_metric(3), TypeError, "metric must be a metric name"),
    ],
)
def test_errors_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
