"""Tests for jrnn.optim: clipping, every rule, classic Adagrad, schedules and errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jrnn.optim import (
    OPTIMIZERS,
    ClipByGlobalNormState,
    classic_adagrad,
    clip_by_global_norm,
    clip_state,
    make_optimizer,
    make_schedule,
    scale_by_classic_adagrad,
)


def random_tree(rng, scale=1.0):
    return {
        "w": jnp.asarray(scale * rng.normal(size=(3, 4)), jnp.float32),
        "b": jnp.asarray(scale * rng.normal(size=(4,)), jnp.float32),
    }


def global_norm(tree):
    return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2)
                             for x in jax.tree.leaves(tree))))


def quadratic(curvature, centre):
    """``f(p) = ½ Σ a (p - c)²`` with positive curvatures ``a``; minimum 0 at ``p = c``."""

    def loss(params):
        return sum(0.5 * jnp.sum(a * (p - c) ** 2) for p, a, c in
                   zip(jax.tree.leaves(params), jax.tree.leaves(curvature),
                       jax.tree.leaves(centre)))

    return loss


def apply_steps(optimizer, loss, params, steps):
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params


# ----------------------------------------------------------------------------------------------
# Clipping
# ----------------------------------------------------------------------------------------------


def test_clipping_rescales_a_large_gradient_to_clip_norm():
    rng = np.random.default_rng(0)
    grads = random_tree(rng)
    grads = jax.tree.map(lambda g: g * (100.0 / global_norm(grads)), grads)
    assert global_norm(grads) == pytest.approx(100.0, rel=1e-5)
    optimizer = make_optimizer("sgd", 1.0, clip_norm=2.5)
    updates, _ = optimizer.update(grads, optimizer.init(grads))
    # sgd with lr 1 returns -g: the update is the clipped gradient, same direction, norm 2.5.
    assert global_norm(updates) == pytest.approx(2.5, rel=1e-5)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
        np.testing.assert_allclose(u, -g * (2.5 / 100.0), rtol=1e-5)


def test_clipping_leaves_a_small_gradient_alone():
    rng = np.random.default_rng(1)
    grads = random_tree(rng)
    grads = jax.tree.map(lambda g: g * (0.5 / global_norm(grads)), grads)
    optimizer = make_optimizer("sgd", 1.0, clip_norm=2.5)
    updates, _ = optimizer.update(grads, optimizer.init(grads))
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
        np.testing.assert_allclose(u, -g, rtol=1e-6)


def test_clipping_comes_before_the_rule():
    # With adagrad, clipping after the rule would give a different accumulator.
    rng = np.random.default_rng(2)
    grads = random_tree(rng, scale=50.0)
    ours = make_optimizer("adagrad", 0.1, clip_norm=1.0)
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adagrad(0.1))
    results = []
    for optimizer in (ours, reference):
        state = optimizer.init(grads)
        for _ in range(2):
            updates, state = optimizer.update(grads, state)
        results.append(updates)
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_clip_link_equals_optax_bit_for_bit_and_records_what_it_did(dtype, scale):
    rng = np.random.default_rng(12)
    with jax.enable_x64(True):
        grads = jax.tree.map(lambda g: jnp.asarray(g, dtype), random_tree(rng, scale))
        norm = optax.tree.norm(grads)
        for clip_norm in (0.5, 3.0, float(norm)):
            ours, reference = clip_by_global_norm(clip_norm), optax.clip_by_global_norm(clip_norm)
            updates, state = jax.jit(ours.update)(grads, ours.init(grads))
            want, _ = jax.jit(reference.update)(grads, reference.init(grads))
            for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(want)):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)
            assert isinstance(state, ClipByGlobalNormState) and state.grad_norm.dtype == dtype
            np.testing.assert_allclose(state.grad_norm, norm, rtol=1e-6)
            if clip_norm != float(norm):  # away from the boundary (jit may round the norm apart)
                assert bool(state.clipped) is (not bool(norm < clip_norm))  # optax's rule
            assert state.clip_norm == jnp.asarray(clip_norm, dtype)


def test_clip_link_fires_at_equality_like_optax():
    grads = {"a": jnp.array([3.0, 4.0])}  # global norm exactly 5
    for clip_norm, fired in ((5.0, True), (5.0001, False), (4.9999, True)):
        transform = clip_by_global_norm(clip_norm)
        _, state = transform.update(grads, transform.init(grads))
        assert bool(state.clipped) is fired and float(state.grad_norm) == 5.0
    transform = clip_by_global_norm(1.0)
    _, state = transform.update({"a": jnp.array([jnp.nan, 1.0])}, transform.init(grads))
    assert bool(state.clipped)  # a NaN norm is not below the threshold: optax rescales


def test_clip_state_finds_the_link_in_make_optimizer_chains():
    params = random_tree(np.random.default_rng(13))
    assert clip_state(make_optimizer("adam", 0.1).init(params)) is None
    assert clip_state(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1)).init(params)) is None
    for optimizer in (
        make_optimizer("adam", 0.1, clip_norm=2.0, weight_decay=0.1),
        optax.chain(optax.identity(), make_optimizer("sgd", 0.1, clip_norm=2.0)),
        optax.MultiSteps(make_optimizer("sgd", 0.1, clip_norm=2.0), every_k_schedule=2),
    ):
        state = clip_state(optimizer.init(params))
        assert isinstance(state, ClipByGlobalNormState) and float(state.clip_norm) == 2.0
        assert not bool(state.clipped) and float(state.grad_norm) == 0.0
    with pytest.raises(ValueError, match="clip_norm must be a finite number > 0, got 0"):
        clip_by_global_norm(0)


# ----------------------------------------------------------------------------------------------
# Every rule decreases a quadratic
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"clip_norm": 1.0, "weight_decay": 1e-3},
        {"schedule": "cosine", "decay_steps": 100},
        {"schedule": "warmup_cosine", "warmup_steps": 1, "decay_steps": 50},
    ],
    ids=["plain", "clip+decay", "cosine", "warmup_cosine"],
)
def test_every_rule_decreases_a_quadratic(name, options):
    rng = np.random.default_rng(3)
    curvature = jax.tree.map(lambda x: jnp.abs(x) + 0.5, random_tree(rng))
    loss = quadratic(curvature, random_tree(rng))
    params = random_tree(rng)
    optimizer = make_optimizer(name, 0.05, **options)
    trained = apply_steps(optimizer, loss, params, steps=5)
    assert float(loss(trained)) < float(loss(params))


def test_classic_adagrad_option_decreases_a_quadratic():
    rng = np.random.default_rng(4)
    curvature = jax.tree.map(lambda x: jnp.abs(x) + 0.5, random_tree(rng))
    loss = quadratic(curvature, random_tree(rng))
    params = random_tree(rng)
    trained = apply_steps(make_optimizer("adagrad", 0.1, classic=True), loss, params, steps=5)
    assert float(loss(trained)) < float(loss(params))


@pytest.mark.parametrize(
    "name, kwargs, reference",
    [
        ("momentum", {"momentum": 0.8, "nesterov": True},
         optax.sgd(0.03, momentum=0.8, nesterov=True)),
        ("adagrad", {"initial_accumulator_value": 0.5, "eps": 1e-3},
         optax.adagrad(0.03, initial_accumulator_value=0.5, eps=1e-3)),
        ("rmsprop", {"decay": 0.7, "eps": 1e-4, "centered": True},
         optax.rmsprop(0.03, decay=0.7, eps=1e-4, centered=True)),
        ("adam", {"b1": 0.5, "b2": 0.9, "eps": 1e-3}, optax.adam(0.03, b1=0.5, b2=0.9, eps=1e-3)),
        ("adamw", {"weight_decay": 0.1, "b1": 0.5},
         optax.adamw(0.03, b1=0.5, weight_decay=0.1)),
        ("sgd", {"weight_decay": 0.1},
         optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.03))),
    ],
)
def test_rule_options_reach_optax(name, kwargs, reference):
    rng = np.random.default_rng(5)
    params = random_tree(rng)
    ours = make_optimizer(name, 0.03, **kwargs)
    results = []
    for optimizer in (ours, reference):
        state = optimizer.init(params)
        for k in range(3):
            grads = random_tree(np.random.default_rng(100 + k))
            updates, state = optimizer.update(grads, state, params)
        results.append(updates)
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_weight_decay_adds_lambda_p_before_sgd():
    rng = np.random.default_rng(6)
    params, grads = random_tree(rng), random_tree(rng)
    optimizer = make_optimizer("sgd", 0.5, weight_decay=0.2)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    for u, g, p in zip(*(jax.tree.leaves(t) for t in (updates, grads, params))):
        np.testing.assert_allclose(u, -0.5 * (g + 0.2 * p), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Classic Adagrad against NumPy
# ----------------------------------------------------------------------------------------------


def test_classic_adagrad_matches_numpy_reference():
    rng = np.random.default_rng(7)
    lr, eps = 0.3, 1e-8
    curvature = np.abs(rng.normal(size=(5,))) + 0.5
    centre = rng.normal(size=(5,))
    p_ref = rng.normal(size=(5,))
    with jax.enable_x64(True):
        optimizer = make_optimizer("adagrad", lr, classic=True)
        params = jnp.asarray(p_ref)
        state = optimizer.init(params)
        mem = np.zeros(5)
        for _ in range(6):
            g_ref = curvature * (p_ref - centre)
            mem += g_ref * g_ref
            p_ref = p_ref - lr * g_ref / (np.sqrt(mem) + eps)

            grads = jnp.asarray(curvature) * (params - jnp.asarray(centre))
            updates, state = optimizer.update(grads, state, params)
            params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params, p_ref, rtol=1e-12)
        np.testing.assert_allclose(state[0].sum_of_squares, mem, rtol=1e-12)


def test_classic_adagrad_first_step_is_lr_times_sign():
    # With n = g² after one step, g / (|g| + ε) = sign(g) up to ε: the classic form's signature.
    rng = np.random.default_rng(8)
    grads = random_tree(rng)
    optimizer = classic_adagrad(0.1)
    updates, _ = optimizer.update(grads, optimizer.init(grads))
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
        np.testing.assert_allclose(u, -0.1 * np.sign(g), rtol=1e-5)


def test_scale_by_classic_adagrad_state_and_accumulator():
    rng = np.random.default_rng(9)
    grads = random_tree(rng)
    transform = scale_by_classic_adagrad(eps=0.1, initial_accumulator_value=2.0)
    state = transform.init(grads)
    updates, state = transform.update(grads, state)
    for u, g, n in zip(*(jax.tree.leaves(t) for t in (updates, grads, state.sum_of_squares))):
        np.testing.assert_allclose(n, 2.0 + np.asarray(g) ** 2, rtol=1e-6)
        np.testing.assert_allclose(u, g / (np.sqrt(2.0 + np.asarray(g) ** 2) + 0.1), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule, kwargs, expected",
    [
        (None, {}, {0: 0.2, 500: 0.2}),
        ("constant", {}, {0: 0.2, 7: 0.2}),
        ("cosine", {"decay_steps": 100}, {0: 0.2, 50: 0.1, 100: 0.0, 150: 0.0}),
        ("cosine", {"decay_steps": 100, "alpha": 0.5}, {0: 0.2, 50: 0.15, 100: 0.1}),
        ("exponential", {"decay_steps": 10, "decay_rate": 0.5},
         {0: 0.2, 10: 0.1, 15: 0.2 * 0.5 ** 1.5, 20: 0.05}),
        ("exponential", {"decay_steps": 10, "decay_rate": 0.5, "staircase": True},
         {0: 0.2, 15: 0.1}),
        ("warmup_cosine", {"warmup_steps": 10, "decay_steps": 110},
         {0: 0.0, 5: 0.1, 10: 0.2, 60: 0.1, 110: 0.0}),
    ],
)
def test_schedule_values(schedule, kwargs, expected):
    fn = make_schedule(schedule, 0.2, **kwargs)
    for step, lr in expected.items():
        assert float(fn(step)) == pytest.approx(lr, abs=1e-7), step


def test_schedule_drives_the_step_size_of_the_optimizer():
    rng = np.random.default_rng(10)
    grads = random_tree(rng)
    optimizer = make_optimizer("sgd", 0.2, schedule="exponential", decay_steps=1, decay_rate=0.5)
    state = optimizer.init(grads)
    for k in range(4):
        updates, state = optimizer.update(grads, state)
        for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
            np.testing.assert_allclose(u, -0.2 * 0.5 ** k * np.asarray(g), rtol=1e-6)


def test_callable_schedule_is_passed_through():
    rng = np.random.default_rng(11)
    grads = random_tree(rng)
    schedule = optax.piecewise_constant_schedule(0.3, {2: 0.1})
    assert make_schedule(schedule) is schedule
    optimizer = make_optimizer("sgd", None, schedule=schedule, clip_norm=1e6)
    state = optimizer.init(grads)
    for lr in [0.3, 0.3, 0.03]:
        updates, state = optimizer.update(grads, state)
        np.testing.assert_allclose(updates["w"], -lr * np.asarray(grads["w"]), rtol=1e-6)
    # The optax convention of a callable learning_rate works too.
    optimizer = make_optimizer("adagrad", schedule, classic=True)
    updates, _ = optimizer.update(grads, optimizer.init(grads))
    np.testing.assert_allclose(updates["b"], -0.3 * np.sign(grads["b"]), rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, error, pattern",
    [
        (("adamax", 0.1), {}, ValueError,
         r"name must be one of \['adagrad', 'adam', 'adamw', 'momentum', 'rmsprop', 'sgd'\], "
         r"got 'adamax'"),
        (("adam", 0.1), {"schedule": "linear"}, ValueError,
         r"schedule must be one of \['constant', 'cosine', 'exponential', 'warmup_cosine'\], "
         r"got 'linear'"),
        (("adam", 0.0), {}, ValueError, r"learning_rate must be a finite number > 0, got 0"),
        (("adam", -1e-3), {}, ValueError, r"learning_rate must .* got -0.001"),
        (("adam", math.nan), {}, ValueError, r"learning_rate must .* got nan"),
        (("adam", None), {}, ValueError, r"learning_rate must .* got None"),
        (("adam", 0.1), {"clip_norm": 0.0}, ValueError,
         r"clip_norm must be None or a finite number > 0, got 0.0"),
        (("adam", 0.1), {"clip_norm": -1}, ValueError, r"clip_norm must .* got -1"),
        (("sgd", 0.1), {"weight_decay": -0.1}, ValueError,
         r"weight_decay must be a finite number >= 0, got -0.1"),
        (("sgd", 0.1), {"b1": 0.9}, TypeError,
         r"unexpected keyword argument\(s\) \['b1'\] for name='sgd'"),
        (("adam", 0.1), {"decay_steps": 10}, TypeError,
         r"unexpected keyword argument\(s\) \['decay_steps'\] .* schedule=None"),
        (("adam", 0.1), {"schedule": "cosine"}, TypeError,
         r"schedule 'cosine': missing required keyword argument\(s\) \['decay_steps'\]"),
        (("adam", 0.1), {"schedule": "cosine", "decay_steps": 0}, ValueError,
         r"decay_steps must be a positive int, got 0"),
        (("adam", 0.1), {"schedule": "exponential", "decay_steps": 5, "decay_rate": -0.5},
         ValueError, r"decay_rate must be a finite number > 0, got -0.5"),
        (("adam", 0.1), {"schedule": "warmup_cosine", "warmup_steps": 10, "decay_steps": 10},
         ValueError, r"warmup_steps must be an int in \[0, decay_steps\) = \[0, 10\)"),
        (("adam", 0.1), {"schedule": optax.constant_schedule(0.1)}, ValueError,
         r"learning_rate must be None when schedule is a callable"),
        (("adam", optax.constant_schedule(0.1)), {"schedule": "cosine", "decay_steps": 5},
         ValueError, r"schedule must be None when learning_rate is a callable"),
    ],
)
def test_errors(args, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        make_optimizer(*args, **kwargs)


def test_make_schedule_errors():
    with pytest.raises(TypeError, match=r"schedule 'cosine': unexpected keyword argument\(s\) "
                                        r"\['decay_rate'\]"):
        make_schedule("cosine", 0.1, decay_steps=10, decay_rate=0.5)
    with pytest.raises(ValueError, match=r"schedule must be one of .* got 'step'"):
        make_schedule("step", 0.1)
