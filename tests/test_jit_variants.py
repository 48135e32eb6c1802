"""The public entry points, run with and without ``jit`` (chex variants), against plain NumPy loops.

Each reference below is written from the conventions of DESIGN.md section 2 alone, in float64
NumPy with one Python loop per step and per sequence, so that it shares no code with jrnn: weights
``(in, out)``; LSTM gate blocks ``i, f, g, o``; GRU blocks ``r, z, n`` in the reset-after form.
Inputs, parameters and initial carries are random (never ones or zeros), hidden sizes include 1
and sequence lengths include 0, 1 and T. Only the public API is used.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

import jrnn
from jrnn import losses

RTOL = ATOL = 1e-12

CELLS = {
    "vanilla_tanh": lambda hidden_size: jrnn.VanillaCell(hidden_size),
    "vanilla_relu": lambda hidden_size: jrnn.VanillaCell(hidden_size, activation="relu"),
    "lstm": lambda hidden_size: jrnn.LSTMCell(hidden_size),
    "gru": lambda hidden_size: jrnn.GRUCell(hidden_size),
}


# ----------------------------------------------------------------------------------------------
# NumPy references: one step of each cell, on one sequence or any leading batch shape
# ----------------------------------------------------------------------------------------------


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def np_vanilla_step(activation):
    act = {"tanh": np.tanh, "relu": lambda a: np.maximum(a, 0.0)}[activation]

    def step(p, h, x):
        h = act(x @ p.w_x + h @ p.w_h + p.b)
        return h, h

    return step


def np_lstm_step(p, carry, x):
    i, f, g, o = np.split(x @ p.w_x + carry.h @ p.w_h + p.b, 4, axis=-1)
    c = sigmoid(f) * carry.c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    return jrnn.LSTMCarry(h, c), h


def np_gru_step(p, h, x):
    x_r, x_z, x_n = np.split(x @ p.w_x + p.b_x, 3, axis=-1)
    h_r, h_z, h_n = np.split(h @ p.w_h + p.b_h, 3, axis=-1)
    r = sigmoid(x_r + h_r)
    z = sigmoid(x_z + h_z)
    n = np.tanh(x_n + r * h_n)
    h = (1.0 - z) * n + z * h
    return h, h


NP_STEPS = {
    "vanilla_tanh": np_vanilla_step("tanh"),
    "vanilla_relu": np_vanilla_step("relu"),
    "lstm": np_lstm_step,
    "gru": np_gru_step,
}


def np_unroll(step, params, xs, carry, seq_lengths, reverse):
    """Sequence by sequence, step by step: steps at or past ``L_b`` keep the carry and output 0;
    ``reverse`` runs ``t = L_b - 1, ..., 0`` with outputs kept at their input positions."""
    batch, steps, _ = xs.shape
    hidden_size = params.w_h.shape[0]
    ys, carries = np.zeros((batch, steps, hidden_size)), []
    for b in range(batch):
        c = jax.tree_util.tree_map(lambda a: a[b], carry)
        length = int(seq_lengths[b])
        for t in (reversed(range(length)) if reverse else range(length)):
            c, ys[b, t] = step(params, c, xs[b, t])
        carries.append(c)
    return jax.tree_util.tree_map(lambda *a: np.stack(a), *carries), ys


def log_softmax(z):
    m = np.max(z)
    return z - m - np.log(np.sum(np.exp(z - m)))


def scored_steps(length, steps, every_step):
    """The steps a loss scores: every valid one, or only the last valid one."""
    if every_step:
        return range(length)
    return [length - 1] if length > 0 else []


def np_mse(preds, targets, seq_lengths):
    batch, steps, outputs = preds.shape
    total, count = 0.0, 0
    for b in range(batch):
        for t in scored_steps(int(seq_lengths[b]), steps, targets.ndim == 3):
            y = targets[b, t] if targets.ndim == 3 else targets[b]
            total += np.sum((preds[b, t] - y) ** 2)
            count += 1
    return total / (outputs * max(count, 1))


def np_cross_entropy(logits, labels, seq_lengths):
    batch, steps, _ = logits.shape
    total, count = 0.0, 0
    for b in range(batch):
        for t in scored_steps(int(seq_lengths[b]), steps, labels.ndim == 2):
            k = labels[b, t] if labels.ndim == 2 else labels[b]
            total -= log_softmax(logits[b, t])[k]
            count += 1
    return total / max(count, 1)


# ----------------------------------------------------------------------------------------------
# Random float64 inputs
# ----------------------------------------------------------------------------------------------


def random_like(rng, tree, scale=0.6):
    """A tree of the same structure with NumPy float64 N(0, scale²) leaves."""
    return jax.tree_util.tree_map(lambda a: rng.normal(0.0, scale, np.shape(a)), tree)


def setup_cell(kind, hidden_size, input_size, batch_shape, seed=0):
    """``(rng, cell, params, carry)``: the structures of ``cell.init`` and ``cell.initial_carry``
    (shapes only, via ``jax.eval_shape``, which compiles nothing) filled with random NumPy float64
    values, biases and carries included."""
    rng = np.random.default_rng(seed)
    cell = CELLS[kind](hidden_size)
    params = jax.eval_shape(lambda key: cell.init(key, input_size, jnp.float64),
                            jax.random.PRNGKey(seed))
    carry = jax.eval_shape(lambda: cell.initial_carry(batch_shape, jnp.float64))
    return rng, cell, random_like(rng, params), random_like(rng, carry)


def to_jax(tree):
    return jax.tree_util.tree_map(jnp.asarray, tree)


def random_lengths(rng, batch, steps):
    """``(B,)`` lengths holding 0, 1 and T, the rest uniform in ``[0, T]``."""
    fixed = [0, 1, steps]
    lengths = np.concatenate([fixed, rng.integers(0, steps + 1, batch - len(fixed))])
    return rng.permutation(lengths).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


class CellStepTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(
        [
            dict(hidden_size=1, batch_shape=(4,)),
            dict(hidden_size=3, batch_shape=()),
            dict(hidden_size=2, batch_shape=(2, 3)),
        ],
        kind=tuple(CELLS),
    )
    def test_one_step_matches_numpy(self, kind, hidden_size, batch_shape):
        input_size = 2
        rng, cell, params, carry = setup_cell(kind, hidden_size, input_size, batch_shape)
        x_t = rng.normal(size=batch_shape + (input_size,))

        step = self.variant(lambda p, c, x: cell(p, c, x))
        new_carry, y_t = step(to_jax(params), to_jax(carry), jnp.asarray(x_t))

        expected_carry, expected_y = NP_STEPS[kind](params, carry, x_t)
        chex.assert_shape(y_t, batch_shape + (hidden_size,))
        chex.assert_type(y_t, jnp.float64)
        chex.assert_trees_all_equal_shapes(new_carry, expected_carry)
        chex.assert_trees_all_close(y_t, expected_y, rtol=RTOL, atol=ATOL)
        chex.assert_trees_all_close(new_carry, expected_carry, rtol=RTOL, atol=ATOL)


class UnrollTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(
        [dict(hidden_size=1, reverse=True), dict(hidden_size=4, reverse=False)],
        kind=tuple(CELLS),
    )
    def test_unroll_with_seq_lengths_matches_numpy_loop(self, kind, hidden_size, reverse):
        batch, steps, input_size = 5, 6, 3
        rng, cell, params, carry = setup_cell(kind, hidden_size, input_size, (batch,), seed=1)
        xs = rng.normal(size=(batch, steps, input_size))
        seq_lengths = random_lengths(rng, batch, steps)

        run = self.variant(
            lambda p, xs, c, n: jrnn.unroll(cell, p, xs, c, seq_lengths=n, reverse=reverse)
        )
        carry_T, ys = run(to_jax(params), jnp.asarray(xs), to_jax(carry), jnp.asarray(seq_lengths))

        expected_carry, expected_ys = np_unroll(
            NP_STEPS[kind], params, xs, carry, seq_lengths, reverse
        )
        chex.assert_shape(ys, (batch, steps, hidden_size))
        chex.assert_type(ys, jnp.float64)
        chex.assert_trees_all_equal_shapes(carry_T, expected_carry)
        chex.assert_trees_all_close(ys, expected_ys, rtol=RTOL, atol=ATOL)
        chex.assert_trees_all_close(carry_T, expected_carry, rtol=RTOL, atol=ATOL)
        # Padded steps give exactly zero.
        padded = np.arange(steps)[None, :] >= seq_lengths[:, None]
        np.testing.assert_array_equal(np.asarray(ys)[padded], 0.0)


class LossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(every_step=(True, False), outputs=(1, 3))
    def test_mse_matches_numpy(self, every_step, outputs):
        rng = np.random.default_rng(2)
        batch, steps = 5, 4
        preds = rng.normal(size=(batch, steps, outputs))
        targets = rng.normal(size=(batch, steps, outputs) if every_step else (batch, outputs))
        seq_lengths = random_lengths(rng, batch, steps)

        loss = self.variant(losses.mse)(preds, targets, seq_lengths)
        full = self.variant(losses.mse)(preds, targets)

        chex.assert_shape(loss, ())
        chex.assert_type(loss, jnp.float64)
        chex.assert_trees_all_close(loss, np_mse(preds, targets, seq_lengths), rtol=RTOL)
        all_steps = np.full((batch,), steps, np.int32)
        chex.assert_trees_all_close(full, np_mse(preds, targets, all_steps), rtol=RTOL)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(every_step=(True, False), classes=(2, 5))
    def test_cross_entropy_matches_numpy(self, every_step, classes):
        rng = np.random.default_rng(3)
        batch, steps = 5, 4
        logits = rng.normal(0.0, 2.0, size=(batch, steps, classes))
        labels = rng.integers(0, classes, (batch, steps) if every_step else (batch,))
        labels = labels.astype(np.int32)
        seq_lengths = random_lengths(rng, batch, steps)

        loss = self.variant(losses.cross_entropy)(logits, labels, seq_lengths)
        full = self.variant(losses.cross_entropy)(logits, labels)

        chex.assert_shape(loss, ())
        chex.assert_type(loss, jnp.float64)
        chex.assert_trees_all_close(
            loss, np_cross_entropy(logits, labels, seq_lengths), rtol=RTOL
        )
        all_steps = np.full((batch,), steps, np.int32)
        chex.assert_trees_all_close(full, np_cross_entropy(logits, labels, all_steps), rtol=RTOL)
