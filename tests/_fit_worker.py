"""Subprocess worker for tests/test_train.py: runs ``jrnn.train.fit`` and saves the result.

    python tests/_fit_worker.py resume OUT.npz [--checkpoint-dir DIR] [--data tuple|callable]
    python tests/_fit_worker.py parallel OUT.npz
    python tests/_fit_worker.py multihost OUT.npz --process-id I --port PORT --checkpoint-dir DIR

``resume``: a small LSTM on the adding-style regression below, with checkpoints every few steps
when ``--checkpoint-dir`` is given (the test kills it with SIGKILL and starts it again).
``parallel``: the same fit on all devices and on the first device only (run it with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``), both saved.
``multihost``: one of two processes joined by ``jax.distributed.initialize`` on localhost (run
each with two CPU devices); the fit spans all four devices of both processes, then process 0
repeats it on one local device. Process 0 saves both.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from jrnn.optim import make_optimizer
from jrnn.train import fit


def problem(key, n, steps, hidden, dtype=jnp.float32):
    """Random inputs whose targets are a running sum of the first input feature."""
    k_x, k_p = jax.random.split(key)
    xs = jax.random.normal(k_x, (n, steps, 2), dtype)
    targets = jnp.cumsum(xs[..., :1], axis=1) / jnp.sqrt(jnp.arange(1, steps + 1, dtype=dtype))[:, None]
    lengths = jnp.asarray(np.random.default_rng(0).integers(steps // 2, steps + 1, size=n), jnp.int32)
    model = jrnn.RNN(jrnn.LSTMCell(hidden), num_layers=2, output_size=1, dropout=0.1)
    params = model.init(k_p, 2, dtype)
    return model, params, (xs, targets, lengths)


def leaves(tree) -> dict:
    return {f"leaf{i}": np.asarray(a) for i, a in enumerate(jax.tree_util.tree_leaves(tree))}


def run_resume(args):
    model, params, data = problem(jax.random.PRNGKey(0), 64, 24, 16)
    if args.data == "callable":
        xs_all, ys_all, lengths_all = data

        def data(key):  # a random minibatch of 16, drawn from the step's key
            idx = jax.random.choice(key, xs_all.shape[0], (16,), replace=False)
            return xs_all[idx], ys_all[idx], lengths_all[idx]

        batch_size = None
    else:
        batch_size = 16
    optimizer = make_optimizer("adam", 3e-3, clip_norm=1.0)  # its clip state is checkpointed too
    result = fit(
        model, params, optimizer, data, steps=args.steps, batch_size=batch_size, truncation=8,
        checkpoint_dir=args.checkpoint_dir, checkpoint_every=7, log_path=args.log, progress=False,
        key=jax.random.PRNGKey(42),
    )
    np.savez(args.out, step=result.step, history=json.dumps(result.history), **leaves(result.params),
             **{f"opt_{k}": v for k, v in leaves(result.opt_state).items()})


def parallel_fit(devices, checkpoint_dir=None):
    jax.config.update("jax_enable_x64", True)
    model, params, data = problem(jax.random.PRNGKey(1), 32, 12, 8, jnp.float64)
    optimizer = make_optimizer("adam", 1e-2, clip_norm=1.0)
    return fit(model, params, optimizer, data, steps=6, batch_size=16, truncation=5, eval_data=data,
               eval_every=3, progress=False, key=jax.random.PRNGKey(3), devices=devices,
               checkpoint_dir=checkpoint_dir, checkpoint_every=2)


def local_leaves(tree) -> dict:
    """Leaves of replicated global arrays, read from this process's first copy."""
    leaves = jax.tree_util.tree_leaves(tree)
    return {f"leaf{i}": np.asarray(a.addressable_data(0)) for i, a in enumerate(leaves)}


def run_parallel(args):
    out = {"num_devices": len(jax.devices())}
    for name, devices in (("all", jax.devices()), ("one", jax.devices()[:1])):
        result = parallel_fit(devices)
        out.update({f"{name}_{k}": v for k, v in local_leaves(result.params).items()})
        out[f"{name}_devices"] = len(result.params.readout.w.sharding.device_set)
        out[f"{name}_eval"] = np.asarray(result.history["eval"]["loss"])
    np.savez(args.out, **out)


def run_multihost(args):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{args.port}", num_processes=2,
                               process_id=args.process_id)
    out = {"num_devices": len(jax.devices()), "num_processes": jax.process_count()}
    result = parallel_fit(jax.devices(), args.checkpoint_dir)
    out.update({f"all_{k}": v for k, v in local_leaves(result.params).items()})
    out["all_devices"] = len(result.params.readout.w.sharding.device_set)
    out["all_eval"] = np.asarray(result.history["eval"]["loss"])
    if args.process_id == 0:
        result = parallel_fit(jax.local_devices()[:1])
        out.update({f"one_{k}": v for k, v in local_leaves(result.params).items()})
        out["one_eval"] = np.asarray(result.history["eval"]["loss"])
        np.savez(args.out, **out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["resume", "parallel", "multihost"])
    parser.add_argument("out")
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--log")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--data", choices=["tuple", "callable"], default="tuple")
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    {"resume": run_resume, "parallel": run_parallel, "multihost": run_multihost}[args.mode](args)
