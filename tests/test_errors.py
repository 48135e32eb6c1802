"""Bad input gets a ValueError/TypeError naming the argument, the expectation and what was given."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jrnn
from helpers import make

KEY = jax.random.PRNGKey(0)


def lstm_setup(B=2, T=5, D=3, H=4):
    cell = jrnn.LSTMCell(H)
    return cell, cell.init(KEY, D), jnp.ones((B, T, D))


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: jrnn.VanillaCell(4, activation="softsign"), r"activation must be one of .*'softsign'"),
        (lambda: jrnn.LSTMCell(4, recurrent_init="xavier"), r"recurrent_init must be one of .*'xavier'"),
        (lambda: jrnn.GRUCell(0), r"hidden_size must be a positive int, got 0"),
        (lambda: jrnn.GRUCell(2.5), r"hidden_size must be a positive int, got 2.5"),
        (lambda: jrnn.LSTMCell(4, recurrent_scale=float("nan")), r"recurrent_scale must be a finite number"),
        (lambda: jrnn.RNN(jrnn.LSTMCell(4), num_layers=0), r"num_layers must be a positive int, got 0"),
        (lambda: jrnn.RNN(jrnn.LSTMCell(4), dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
        (lambda: jrnn.RNN(jrnn.LSTMCell(4), output_size=0), r"output_size must be None or a positive int, got 0"),
    ],
)
def test_bad_specs(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_cell_type_and_init_arguments():
    with pytest.raises(TypeError, match="cell must be a jrnn cell"):
        jrnn.RNN("lstm")
    with pytest.raises(ValueError, match="input_size must be a positive int, got -1"):
        jrnn.LSTMCell(3).init(KEY, -1)
    with pytest.raises(TypeError, match="dtype must be a floating dtype, got int32"):
        jrnn.LSTMCell(3).init(KEY, 2, jnp.int32)
    with pytest.raises(TypeError, match="key must be a jax.random key"):
        jrnn.LSTMCell(3).init(3, 2)


def test_unroll_input_errors():
    cell, p, xs = lstm_setup()
    with pytest.raises(ValueError, match=r"xs must be \(B, T, D\) or unbatched \(T, D\), got shape \(2, 5, 3, 1\)"):
        jrnn.unroll(cell, p, xs[..., None])
    with pytest.raises(ValueError, match=r"xs must be an array with input_size 3 in its last axis, got shape \(2, 5, 7\)"):
        jrnn.unroll(cell, p, jnp.ones((2, 5, 7)))
    with pytest.raises(TypeError, match="xs must be floating point, got dtype int32"):
        jrnn.unroll(cell, p, jnp.ones((2, 5, 3), jnp.int32))
    with pytest.raises(ValueError, match="at least one time step"):
        jrnn.unroll(cell, p, jnp.ones((2, 0, 3)))
    with pytest.raises(ValueError, match=r"seq_lengths must be of shape \(2,\) .*got \(3,\)"):
        jrnn.unroll(cell, p, xs, seq_lengths=jnp.array([1, 2, 3]))
    with pytest.raises(TypeError, match="seq_lengths must be integers, got dtype float"):
        jrnn.unroll(cell, p, xs, seq_lengths=jnp.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"seq_lengths must be in \[0, 5\].*got values in \[2, 6\]"):
        jrnn.unroll(cell, p, xs, seq_lengths=jnp.array([2, 6]))
    with pytest.raises(ValueError, match=r"seq_lengths must be in \[0, 5\].*\[-1, 3\]"):
        jrnn.unroll(cell, p, xs, seq_lengths=np.array([-1, 3]))
    with pytest.raises(ValueError, match="backward must be one of"):
        jrnn.unroll(cell, p, xs, backward="magic")
    with pytest.raises(ValueError, match="unroll must be a positive int, got 0"):
        jrnn.unroll(cell, p, xs, unroll=0)
    with pytest.raises(TypeError, match="cell must be a jrnn cell"):
        jrnn.unroll(object(), p, xs)


def test_unroll_params_and_carry_errors():
    cell, p, xs = lstm_setup()
    with pytest.raises(TypeError, match="params for LSTMCell must be LSTMParams, got GRUParams"):
        jrnn.unroll(cell, jrnn.GRUCell(4).init(KEY, 3), xs)
    with pytest.raises(ValueError, match=r"params.w_h for LSTMCell\(hidden_size=4\) must be \(4, 16\), got \(4, 12\)"):
        jrnn.unroll(cell, p._replace(w_h=jnp.ones((4, 12))), xs)
    with pytest.raises(ValueError, match=r"params.w_x for LSTMCell\(hidden_size=4\) must be \(D, 16\)"):
        jrnn.unroll(cell, p._replace(w_x=jnp.ones((3, 12))), xs)
    with pytest.raises(TypeError, match="carry for LSTMCell must be structured like"):
        jrnn.unroll(cell, p, xs, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"carry for LSTMCell must be of shape \(2, 4\) .*got \(3, 4\)"):
        jrnn.unroll(cell, p, xs, jrnn.LSTMCarry(jnp.zeros((3, 4)), jnp.zeros((3, 4))))


def test_errors_raise_under_jit_before_xla():
    cell, p, xs = lstm_setup()
    with pytest.raises(ValueError, match="xs must be an array with input_size 3"):
        jax.jit(lambda p, xs: jrnn.unroll(cell, p, xs))(p, jnp.ones((2, 5, 4)))
    with pytest.raises(ValueError, match=r"seq_lengths must be of shape \(2,\)"):
        jax.jit(lambda p, xs, n: jrnn.unroll(cell, p, xs, seq_lengths=n))(p, xs, jnp.array([1, 2, 3]))


def test_network_errors():
    model = jrnn.RNN(jrnn.GRUCell(4), num_layers=2, bidirectional=True, output_size=2)
    params = model.init(KEY, 3)
    xs = jnp.ones((2, 5, 3))
    with pytest.raises(TypeError, match="params must be NetworkParams"):
        model.apply(params.layers, xs)
    with pytest.raises(ValueError, match="params.layers must be a tuple of num_layers=2 entries, got 1"):
        model.apply(params._replace(layers=params.layers[:1]), xs)
    with pytest.raises(TypeError, match=r"params.layers\[1\] must be a \(forward, backward\) pair"):
        model.apply(params._replace(layers=(params.layers[0], params.layers[1][0])), xs)
    with pytest.raises(ValueError, match="params.readout must be None"):
        jrnn.RNN(jrnn.GRUCell(4), num_layers=2, bidirectional=True).apply(params, xs)
    with pytest.raises(ValueError, match=r"params.readout.w must be \(8, 2\), got \(4, 2\)"):
        model.apply(params._replace(readout=jrnn.Readout(jnp.ones((4, 2)), jnp.ones(2))), xs)
    with pytest.raises(ValueError, match=r"xs must be an array with input_size 3 in its last axis, got shape \(2, 5, 6\)"):
        model.apply(params, jnp.ones((2, 5, 6)))
    with pytest.raises(TypeError, match="carries must be a tuple with num_layers=2 entries, got 1"):
        model.apply(params, xs, (jnp.zeros((2, 4)),))
    with pytest.raises(TypeError, match=r"carries\[0\] must be a \(forward, backward\) pair"):
        model.apply(params, xs, (jnp.zeros((2, 4)), jnp.zeros((2, 4))))
    good = model.initial_carries((2,))
    bad = (good[0], (good[1][0], jnp.zeros((5, 4))))
    with pytest.raises(ValueError, match=r"carries\[1\]\[1\] for GRUCell must be of shape \(2, 4\)"):
        model.apply(params, xs, bad)
    with pytest.raises(ValueError, match=r"seq_lengths must be of shape \(2,\)"):
        model.apply(params, xs, seq_lengths=jnp.array([5]))


@settings(max_examples=15, deadline=None)
@given(
    kind=st.sampled_from(["vanilla", "lstm", "gru"]),
    B=st.integers(1, 4),
    T=st.integers(1, 7),
    D=st.integers(1, 5),
    H=st.integers(1, 6),
    bidirectional=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes(kind, B, T, D, H, bidirectional, seed):
    """Any valid shape runs and gives outputs of the documented shapes; padded steps are zero."""
    model = jrnn.RNN(make(kind, H), num_layers=2, bidirectional=bidirectional, output_size=2)
    k_p, k_x, k_l = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = model.init(k_p, D)
    xs = jax.random.normal(k_x, (B, T, D))
    lengths = jax.random.randint(k_l, (B,), 0, T + 1)
    ys, carries = model.apply(params, xs, seq_lengths=lengths)
    assert ys.shape == (B, T, 2)
    assert len(carries) == 2
    assert np.all(np.isfinite(ys))
    pad = np.arange(T)[None, :] >= np.asarray(lengths)[:, None]
    np.testing.assert_array_equal(np.asarray(ys)[pad], 0.0)


# ----------------------------------------------------------------------------------------------
# Losses, tasks and datasets speak the same dialect
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argument, call, error",
    [
        ("preds", lambda: jrnn.losses.mse(jnp.ones((2, 3)), jnp.ones((2, 3))), ValueError),
        ("targets", lambda: jrnn.losses.mse(jnp.ones((2, 3, 1)), jnp.ones((3, 1))), ValueError),
        ("targets", lambda: jrnn.losses.mse(jnp.ones((2, 3, 1)), jnp.ones((2, 1), bool)), TypeError),
        ("logits", lambda: jrnn.losses.cross_entropy(jnp.ones((2, 3, 4), jnp.int32), jnp.zeros((2,), jnp.int32)),
         TypeError),
        ("labels", lambda: jrnn.losses.cross_entropy(jnp.ones((2, 3, 4)), jnp.ones((2, 3))), TypeError),
        ("labels", lambda: jax.jit(jrnn.losses.cross_entropy)(jnp.ones((2, 3, 4)), jnp.zeros((2, 4), jnp.int32)),
         ValueError),
        ("labels", lambda: jrnn.losses.cross_entropy(jnp.ones((2, 3, 4)), jnp.array([0, 4])), ValueError),
        ("seq_lengths", lambda: jrnn.losses.mse(jnp.ones((2, 3, 1)), jnp.ones((2, 1)), jnp.array([1, 4])),
         ValueError),
        ("loss", lambda: jrnn.losses.get_loss("hinge"), ValueError),
        ("key", lambda: jrnn.tasks.adding(0, 4, 10), TypeError),
        ("batch_size", lambda: jrnn.tasks.copy_memory(KEY, 0, 5), ValueError),
        ("seq_len", lambda: jrnn.tasks.temporal_order(KEY, 4, 3), ValueError),
        ("trigger_prob", lambda: jrnn.tasks.timing(KEY, 4, trigger_prob=2.0), ValueError),
        ("series", lambda: jrnn.datasets.windows(np.zeros((3, 2, 2)), 1), ValueError),
        ("series", lambda: jrnn.datasets.windows(np.arange(5.0), 4), ValueError),
        ("window", lambda: jrnn.datasets.windows(np.arange(10.0), 0), ValueError),
        ("val_fraction", lambda: jrnn.datasets.windows(np.arange(10.0), 2, val_fraction=1.5), ValueError),
        ("symbol", lambda: jrnn.datasets.stock("TSLA"), ValueError),
    ],
)
def test_losses_tasks_datasets_errors_name_argument_expectation_and_value(argument, call, error):
    """``{argument} must be {expected}, got {given}``, raised before XLA (also under jit)."""
    # (no ``$``: under jit JAX appends a note on traceback filtering after a newline)
    with pytest.raises(error, match=rf"^{argument} must be [^\n]+, got [^\n]+"):
        call()
