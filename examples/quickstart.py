"""Quickstart: a 3-layer LSTM forward pass, then a few hundred Adam steps on a toy task.

Run with ``python examples/quickstart.py``.
"""

import jax
import jax.numpy as jnp
import optax

import jrnn

key = jax.random.PRNGKey(0)
k_p, k_x = jax.random.split(key)

# A 3-layer LSTM with a per-step linear readout.
model = jrnn.RNN(cell=jrnn.LSTMCell(64), num_layers=3, output_size=1)
params = model.init(k_p, input_size=2)
xs = jax.random.normal(k_x, (32, 100, 2))  # (B, T, D)
ys, carries = jax.jit(model.apply)(params, xs)
print("3-layer LSTM forward:", xs.shape, "->", ys.shape, "| carries:", len(carries), "layers")

# Train it to output the running mean of the first input channel.
targets = jnp.cumsum(xs[..., :1], axis=1) / jnp.arange(1, 101)[None, :, None]
optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))
opt_state = optimizer.init(params)


@jax.jit
def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, xs)[0] - targets) ** 2))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


for step in range(201):
    params, opt_state, loss = train_step(params, opt_state)
    if step % 50 == 0:
        print(f"step {step:4d}  mse {float(loss):.5f}")
