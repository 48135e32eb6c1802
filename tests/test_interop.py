"""jrnn vs Flax linen's recurrent cells with converted parameters, in float64."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import interop
from helpers import randomize

TOL = 1e-9
B, T, D, H = 3, 6, 4, 5

FLAX_CELLS = {
    "simple_tanh": lambda: nn.SimpleCell(H, param_dtype=jnp.float64),
    "simple_relu": lambda: nn.SimpleCell(H, activation_fn=nn.relu, param_dtype=jnp.float64),
    "simple_sigmoid": lambda: nn.SimpleCell(H, activation_fn=nn.sigmoid, param_dtype=jnp.float64),
    "lstm": lambda: nn.LSTMCell(H, param_dtype=jnp.float64),
    "optimized_lstm": lambda: nn.OptimizedLSTMCell(H, param_dtype=jnp.float64),
    "gru": lambda: nn.GRUCell(H, param_dtype=jnp.float64),
}
EXPECTED = {
    "simple_tanh": (jrnn.VanillaCell, "tanh"),
    "simple_relu": (jrnn.VanillaCell, "relu"),
    "simple_sigmoid": (jrnn.VanillaCell, "sigmoid"),
    "lstm": (jrnn.LSTMCell, None),
    "optimized_lstm": (jrnn.LSTMCell, None),
    "gru": (jrnn.GRUCell, None),
}


def flax_setup(name, seed=0):
    """A Flax cell, random float64 variables (every leaf non-zero), inputs and an initial carry."""
    cell = FLAX_CELLS[name]()
    k_init, k_p, k_x, k_c = jax.random.split(jax.random.key(seed), 4)
    xs = jax.random.normal(k_x, (B, T, D), jnp.float64)
    carry = cell.initialize_carry(k_init, xs[:, 0].shape)
    variables = cell.init(k_init, carry, xs[:, 0])
    variables = randomize(variables, k_p, scale=0.6)
    carry = randomize(carry, k_c, scale=1.0)
    return cell, variables, xs, carry


def max_err(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize("name", sorted(FLAX_CELLS))
def test_flax_rnn_matches_unroll(name):
    flax_cell, variables, xs, flax_carry = flax_setup(name)
    cell, params = interop.from_flax(variables, kind=flax_cell)
    cls, activation = EXPECTED[name]
    assert type(cell) is cls and cell.hidden_size == H
    if activation is not None:
        assert cell.activation == activation
    assert all(a.dtype == jnp.float64 for a in jax.tree_util.tree_leaves(params))

    rnn = nn.RNN(flax_cell, return_carry=True)
    rnn_vars = {"params": {"cell": variables["params"]}}
    carry_f, ys_f = rnn.apply(rnn_vars, xs, initial_carry=flax_carry)
    carry_j, ys_j = jrnn.unroll(cell, params, xs, interop.carry_from_flax(cell, flax_carry))
    assert max_err(ys_j, ys_f) < TOL
    assert max_err(interop.carry_to_flax(cell, carry_j), carry_f) < TOL

    # variable lengths: Flax returns the carry of each sequence's last valid step, as jrnn does
    lengths = jnp.array([T, 2, 4], jnp.int32)
    carry_f, ys_f = rnn.apply(rnn_vars, xs, initial_carry=flax_carry, seq_lengths=lengths)
    carry_j, ys_j = jrnn.unroll(cell, params, xs, interop.carry_from_flax(cell, flax_carry), seq_lengths=lengths)
    assert max_err(interop.carry_to_flax(cell, carry_j), carry_f) < TOL
    for b, n in enumerate(np.asarray(lengths)):
        assert max_err(ys_j[b, :n], ys_f[b, :n]) < TOL
        assert np.all(np.asarray(ys_j[b, n:]) == 0.0)


@pytest.mark.parametrize("name", sorted(FLAX_CELLS))
def test_single_step(name):
    flax_cell, variables, xs, flax_carry = flax_setup(name, seed=1)
    cell, params = interop.from_flax(variables, kind=flax_cell)
    carry_f, y_f = flax_cell.apply(variables, flax_carry, xs[:, 0])
    carry_j, y_j = cell(params, interop.carry_from_flax(cell, flax_carry), xs[:, 0])
    assert max_err(y_j, y_f) < TOL
    assert max_err(interop.carry_to_flax(cell, carry_j), carry_f) < TOL


def test_kind_inference_and_wrappers():
    for name in ("simple_tanh", "lstm", "gru"):
        flax_cell, variables, _, _ = flax_setup(name)
        by_instance = interop.from_flax(variables, kind=flax_cell)
        for kwargs in ({}, {"kind": type(flax_cell)}):
            for tree in (variables, variables["params"], {"params": {"cell": variables["params"]}}):
                cell, params = interop.from_flax(tree, **kwargs)
                assert cell == by_instance[0]
                assert max_err(params, by_instance[1]) == 0.0
    _, variables, _, _ = flax_setup("simple_relu")
    assert interop.from_flax(variables, kind="simple", activation="relu")[0].activation == "relu"
    assert interop.from_flax(variables)[0].activation == "tanh"  # not detectable from the tree
    assert type(interop.from_flax(flax_setup("lstm")[1], kind="optimized_lstm")[0]) is jrnn.LSTMCell


def test_flax_gru_formula():
    """Flax's GRU is the reset-after form with h' = (1 − z)·n + z·h, written out here."""
    flax_cell, variables, xs, h = flax_setup("gru")
    p = variables["params"]
    x = xs[:, 0]
    dense = lambda name, a: a @ p[name]["kernel"] + (p[name]["bias"][None] if "bias" in p[name] else 0.0)  # noqa: E731
    r = jax.nn.sigmoid(dense("ir", x) + dense("hr", h))
    z = jax.nn.sigmoid(dense("iz", x) + dense("hz", h))
    n = jnp.tanh(dense("in", x) + r * dense("hn", h))
    expected = (1.0 - z) * n + z * h
    _, y = flax_cell.apply(variables, h, x)
    assert max_err(y, expected) < TOL


@pytest.mark.parametrize("kind", ["vanilla_tanh", "vanilla_relu", "lstm", "lstm_optimized", "gru"])
def test_to_flax(kind):
    base, _, variant = kind.partition("_")
    if base == "vanilla":
        cell = jrnn.VanillaCell(H, activation=variant, recurrent_init="normal")
    elif base == "lstm":
        cell = jrnn.LSTMCell(H, recurrent_init="normal")
    else:
        cell = jrnn.GRUCell(H, recurrent_init="normal")
    params = randomize(cell.init(jax.random.key(0), D, jnp.float64), jax.random.key(1))  # b_h non-zero
    flax_cell, variables = interop.to_flax(cell, params, optimized=variant == "optimized")
    expected_cls = {"vanilla": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell if variant else nn.LSTMCell, "gru": nn.GRUCell}
    assert type(flax_cell) is expected_cls[base]

    xs = jax.random.normal(jax.random.key(2), (B, T, D), jnp.float64)
    carry = randomize(cell.initial_carry((B,), jnp.float64), jax.random.key(3), scale=1.0)
    carry_f, ys_f = nn.RNN(flax_cell, return_carry=True).apply(
        {"params": {"cell": variables["params"]}}, xs, initial_carry=interop.carry_to_flax(cell, carry)
    )
    carry_j, ys_j = jrnn.unroll(cell, params, xs, carry)
    assert max_err(ys_j, ys_f) < TOL
    assert max_err(carry_j, interop.carry_from_flax(cell, carry_f)) < TOL

    # round trips: Flax -> jrnn -> Flax is exact; jrnn -> Flax -> jrnn is exact but for the GRU,
    # whose b_hr, b_hz move into Flax's input biases (the same function)
    cell2, params2 = interop.from_flax(variables, kind=flax_cell)
    assert cell2.hidden_size == H
    _, variables2 = interop.to_flax(cell2, params2)
    assert jax.tree_util.tree_structure(variables2) == jax.tree_util.tree_structure(variables)
    assert max_err(variables2, variables) == 0.0
    if base == "gru":
        assert max_err(params2.b_x, params.b_x + jnp.concatenate([params.b_h[: 2 * H], jnp.zeros(H)])) < 1e-15
        assert max_err(params2.b_h[2 * H :], params.b_h[2 * H :]) == 0.0
    else:
        assert max_err(params2, params) == 0.0


def test_errors():
    _, variables, _, _ = flax_setup("lstm")
    with pytest.raises(ValueError, match="kind must be one of"):
        interop.from_flax(variables, kind="transformer")
    with pytest.raises(ValueError, match=r"cell_params for kind='gru' must have keys"):
        interop.from_flax(variables, kind="gru")
    with pytest.raises(ValueError, match=r"activation must be None \(it applies to SimpleCell only\)"):
        interop.from_flax(variables, activation="relu")
    broken = {"params": {k: v for k, v in variables["params"].items() if k != "hf"}}
    with pytest.raises(ValueError, match="cell_params must be the parameters of a flax.linen"):
        interop.from_flax(broken)
    with pytest.raises(TypeError, match="cell_params must be a Flax parameter dict"):
        interop.from_flax([1, 2])
    with pytest.raises(TypeError, match="kind must be a name or a flax.linen"):
        interop.from_flax(variables, kind=nn.Dense(3))
    _, simple, _, _ = flax_setup("simple_relu")
    with pytest.raises(ValueError, match="residual=True"):
        interop.from_flax(simple, kind=nn.SimpleCell(H, residual=True))
    with pytest.raises(ValueError, match="contradicts"):
        interop.from_flax(simple, kind=nn.SimpleCell(H, activation_fn=nn.relu), activation="tanh")
    with pytest.raises(ValueError, match="gate_fn=sigmoid and activation_fn=tanh"):
        interop.from_flax(variables, kind=nn.LSTMCell(H, activation_fn=nn.relu))
    bad_shape = jax.tree_util.tree_map(lambda a: a, variables)
    bad_shape["params"]["hi"]["bias"] = jnp.zeros(H + 1)
    with pytest.raises(ValueError, match=r"cell_params\['hi'\]\['bias'\] must be \(5,\)"):
        interop.from_flax(bad_shape)
    bad_shape = jax.tree_util.tree_map(lambda a: a, variables)
    bad_shape["params"]["io"]["kernel"] = jnp.zeros((D + 1, H))
    with pytest.raises(ValueError, match=r"cell_params\['io'\]\['kernel'\] must be \(4, 5\) like the other gates"):
        interop.from_flax(bad_shape)
    with pytest.raises(ValueError, match="kind.features must match the parameters' hidden size 5"):
        interop.from_flax(variables, kind=nn.LSTMCell(H + 1))

    cell = jrnn.VanillaCell(H, activation="linear")
    with pytest.raises(ValueError, match="cell.activation must be 'tanh', 'relu' or 'sigmoid'"):
        interop.to_flax(cell, cell.init(jax.random.key(0), D))
    with pytest.raises(TypeError, match="cell must be a jrnn"):
        interop.to_flax(jrnn.RNN(jrnn.GRUCell(H)), None)
    with pytest.raises(TypeError, match=r"Flax's \(c, h\) pair"):
        interop.carry_from_flax(jrnn.LSTMCell(H), jnp.zeros((B, H)))
