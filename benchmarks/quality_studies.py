"""Quality rows from the studies of notebooks 06 (memory horizon) and 07 (the seeds' experiments).

``run(quick)`` redoes each study with the protocol of its notebook and returns one row (a dict)
per result; ``to_markdown(rows)`` renders them as tables. Every row has

* ``study``: ``memory_horizon``, ``timing``, ``sine``, ``aapl`` or ``sunspots``;
* ``task`` and ``model`` (the cell, or a baseline such as ``AR(9)``);
* ``metric`` and ``value`` (with ``std`` and ``n_seeds`` for trained models);
* ``baselines``: the numbers the value must be read against (chance, AR, persistence...);
* ``criterion`` or ``notes``: how the value was obtained; ``seconds``: wall time of the row's
  training (compilation included).

Protocols (the notebooks explain the choices):

* memory horizon: the cells RNN (tanh), LSTM, GRU, minGRU and minLSTM (``--cells`` adds the
  IRNN and the LSTM/GRU options: GRU reset-before, LSTM peepholes, LSTM and GRU layer-norm),
  one layer of 32 units and a linear readout; adding problem, copy memory and temporal order at
  lags 10, 30, 100 and 300; the same budget for every cell: Adam clipped at global norm 1 with
  two step sizes tried in turn (1e-2 then 1e-3; 3e-4 then 1e-4 for the identity-initialized
  ReLU RNN), at most 3000 steps per run (2000 on copy memory), 3 seeds; the hand-written
  backward (``backward="bptt"``), batch 32 of fresh sequences, the held-out set (512) scored
  every 100 steps and training stopped when solved (adding: MSE < 0.01; temporal order:
  accuracy >= 0.95; copy memory: accuracy on the copied symbols >= 0.99); copy memory also
  counts as *learning* when the held-out cross-entropy at the end of the run is below the
  memoryless baseline 10 ln 8 / (T + 20) (Arjovsky et al. 2016). A lag is solved (learned) when
  2 seeds meet the criterion at one step size; the sweep (second step size, next lag) follows
  "solved" on adding and temporal order and "learning" on copy memory, and skips the larger
  lags once no seed meets it at either step size. Row value: the largest lag solved (copy
  memory: one row for the largest lag learned, one for the largest solved).
* timing: T = 200, one layer of 32, Adam 1e-2, 1500 steps, 3 seeds; held-out MSE.
* sine: 2000 samples, windows of 10 (last 20 % held out), 3 layers of 32; classic Adagrad 1e-2
  or Adam 1e-3, clipped at 1, batch 32, 600 steps, 3 seeds; validation MSE.
* aapl: monthly log returns 2000-2010, first 70 % for training; 12-month windows, 8 units, Adam
  3e-3 full batch, the step count chosen on the last quarter of the training windows, 10 seeds;
  test MSE against the training mean and least-squares AR(1).
* sunspots: yearly 1700-2008, the last 30 years for testing; 20-year windows, 32 units, Adam
  3e-3 batch 32, step count chosen on 1949-1978, 5 seeds; test RMSE against least-squares AR(9).

``quick=True`` shrinks every study to a smoke test (one seed, a few steps, the shortest lag, two
cells, the adding problem only for the memory study): the values are then meaningless.

    python -m benchmarks.quality_studies [--quick] [--only memory_horizon,timing,...] [--cells RNN,minGRU,...]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

import numpy as np

STUDIES = ("memory_horizon", "timing", "sine", "aapl", "sunspots")
CELL_NAMES = ("RNN", "LSTM", "GRU")
QUICK_CELL_NAMES = ("RNN", "LSTM")
"""Quick mode trains two cells only, and the memory study only on the adding problem."""


def _cells(quick: bool) -> tuple[str, ...]:
    return QUICK_CELL_NAMES if quick else CELL_NAMES


def _cell(name: str, hidden: int):
    import jrnn

    return {
        "RNN": lambda: jrnn.VanillaCell(hidden),
        "LSTM": lambda: jrnn.LSTMCell(hidden),
        "GRU": lambda: jrnn.GRUCell(hidden),
    }[name]()


def _predict(model, params, xs) -> np.ndarray:
    import jax.numpy as jnp

    return np.asarray(model.apply(params, jnp.asarray(xs))[0])


def _least_squares(design: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Coefficients of ``ys ≈ [design, 1] @ c``."""
    return np.linalg.lstsq(np.c_[design, np.ones(len(design))], ys, rcond=None)[0]


def _with_intercept(design: np.ndarray) -> np.ndarray:
    return np.c_[design, np.ones(len(design))]


def _row(study, task, model, metric, value, *, std=None, n_seeds=None, baselines=None, seconds=None, **extra):
    row = {"study": study, "task": task, "model": model, "metric": metric, "value": value}
    if std is not None:
        row["std"] = std
    if n_seeds is not None:
        row["n_seeds"] = n_seeds
    row["baselines"] = baselines or {}
    if seconds is not None:
        row["seconds"] = round(seconds, 1)
    row.update(extra)
    return row


# ----------------------------------------------------------------------------------------------
# Notebook 06: memory horizon
# ----------------------------------------------------------------------------------------------

MEMORY_CELLS = ("RNN", "LSTM", "GRU", "minGRU", "minLSTM")
"""The cells notebook 06 sweeps (and this study by default)."""
MEMORY_VARIANTS = ("IRNN", "GRU reset-before", "LSTM peepholes", "LSTM layer-norm", "GRU layer-norm")
"""Further cells ``--cells`` can select, with the same protocol and budget."""
MEMORY_STEP_SIZES = (1e-2, 1e-3)
"""Tried in this order, the same for every cell but the IRNN (whose ReLU units with ``W_h = I``
overflow at these step sizes: it gets 3e-4 then 1e-4, as many tries)."""
MEMORY_LAGS = (10, 30, 100, 300)
MEMORY_MAX_STEPS = {"adding": 3000, "copy_memory": 2000, "temporal_order": 3000}
"""The step cap per run, the same for every cell."""
COPY_SOLVED_ACCURACY = 0.99
MEMORY_CRITERIA = {
    ("adding", "solved"): "held-out MSE < 0.01 (6% of the 0.167 baseline)",
    ("copy_memory", "learning"): "held-out cross-entropy below the memoryless baseline 10 ln 8 / (T + 20) "
                                 "(Arjovsky et al. 2016) at the end of the run",
    ("copy_memory", "solved"): "held-out accuracy on the 10 copied symbols >= 0.99",
    ("temporal_order", "solved"): "held-out accuracy >= 0.95 (chance 0.25)",
}
"""(task, criterion) -> its definition; each pair gives one row per cell."""
SWEEP_CRITERION = {"adding": "solved", "copy_memory": "learning", "temporal_order": "solved"}
"""The criterion that decides whether the second step size is tried and the next lag is run."""


def _memory_cell(name: str, hidden: int):
    import jrnn

    return {
        "RNN": lambda: jrnn.VanillaCell(hidden),
        "IRNN": lambda: jrnn.VanillaCell(hidden, activation="relu", recurrent_init="identity"),
        "LSTM": lambda: jrnn.LSTMCell(hidden),
        "GRU": lambda: jrnn.GRUCell(hidden),
        "minGRU": lambda: jrnn.MinGRUCell(hidden),
        "minLSTM": lambda: jrnn.MinLSTMCell(hidden),
        "GRU reset-before": lambda: jrnn.GRUCell(hidden, reset_after=False),
        "LSTM peepholes": lambda: jrnn.LSTMCell(hidden, peepholes=True),
        "LSTM layer-norm": lambda: jrnn.LSTMCell(hidden, layer_norm=True),
        "GRU layer-norm": lambda: jrnn.GRUCell(hidden, layer_norm=True),
    }[name]()


def _memory_step_sizes(cell_name: str) -> tuple[float, ...]:
    return (3e-4, 1e-4) if cell_name == "IRNN" else MEMORY_STEP_SIZES


def _memory_task(name: str):
    """``(make(key, batch, lag), input_size, output_size, loss, chance(lag), evaluate(ys, targets, lag))``;
    ``evaluate`` returns a dict with ``loss``, ``score``, ``solved`` (and ``learning`` on copy memory)."""
    import jax.numpy as jnp

    from jrnn import losses, tasks

    if name == "adding":
        def evaluate(ys, targets, lag):
            mse = float(losses.mse(ys, targets))
            return {"loss": mse, "score": float(jnp.mean(jnp.abs(ys[:, -1, 0] - targets[:, 0]) < 0.04)),
                    "solved": mse < 0.01}

        return tasks.adding, 2, 1, "mse", lambda lag: tasks.ADDING_BASELINE_MSE, evaluate
    if name == "copy_memory":
        chance = lambda lag: tasks.copy_memory_baseline(lag, 8, 10)  # noqa: E731

        def evaluate(ys, targets, lag):
            loss = float(losses.cross_entropy(ys, targets))
            accuracy = float(jnp.mean(jnp.argmax(ys[:, -10:], -1) == targets[:, -10:]))
            return {"loss": loss, "score": accuracy, "solved": accuracy >= COPY_SOLVED_ACCURACY,
                    "learning": bool(loss < chance(lag))}

        make = lambda key, batch, lag: tasks.copy_memory(key, batch, lag, 8, 10)  # noqa: E731
        return make, 10, 10, "cross_entropy", chance, evaluate

    def evaluate(ys, targets, lag):
        accuracy = float(jnp.mean(jnp.argmax(ys[:, -1], -1) == targets))
        return {"loss": float(losses.cross_entropy(ys, targets)), "score": accuracy, "solved": accuracy >= 0.95}

    return tasks.temporal_order, 8, 4, "cross_entropy", lambda lag: tasks.TEMPORAL_ORDER_BASELINE_CE, evaluate


def memory_horizon(quick: bool, cells: tuple[str, ...] | None = None) -> list[dict]:
    """Notebook 06's sweep; ``cells`` among ``MEMORY_CELLS + MEMORY_VARIANTS`` (default: the
    notebook's, or two of them when ``quick``)."""
    import jax

    import jrnn
    from jrnn import optim
    from jrnn.train import make_train_step

    hidden, batch, n_test = (8, 8, 64) if quick else (32, 32, 512)
    seeds = [0] if quick else [0, 1, 2]
    eval_every = 10 if quick else 100
    need = len(seeds) // 2 + 1
    cells = cells or (QUICK_CELL_NAMES if quick else MEMORY_CELLS)
    unknown = [c for c in cells if c not in MEMORY_CELLS + MEMORY_VARIANTS]
    if unknown:
        raise ValueError(f"cells must be among {MEMORY_CELLS + MEMORY_VARIANTS}, got {unknown}")
    rows = []
    for task in ["adding"] if quick else list(SWEEP_CRITERION):
        make, d_in, d_out, loss, chance, evaluate = _memory_task(task)
        sweep_by = SWEEP_CRITERION[task]
        lags, max_steps = ([10], 20) if quick else (list(MEMORY_LAGS), MEMORY_MAX_STEPS[task])
        for cell_name in cells:
            step_sizes = _memory_step_sizes(cell_name)[:1 if quick else None]
            model = jrnn.RNN(_memory_cell(cell_name, hidden), output_size=d_out)
            predict = jax.jit(lambda p, xs, model=model: model.apply(p, xs)[0])
            trainers = {}
            start = time.perf_counter()
            per_lag = {}
            for lag in lags:
                per_lag[lag] = {}
                for lr in step_sizes:
                    if lr not in trainers:
                        optimizer = optim.make_optimizer("adam", lr, clip_norm=1.0)
                        trainers[lr] = (optimizer, make_train_step(model, optimizer, loss=loss, backward="bptt"))
                    optimizer, step = trainers[lr]
                    outcomes = []
                    for seed in seeds:
                        k_init, k_data, k_test = jax.random.split(jax.random.PRNGKey(seed), 3)
                        params = model.init(k_init, d_in)
                        opt_state = optimizer.init(params)
                        xs_test, targets_test = make(k_test, n_test, lag)
                        result = {"loss": float("nan"), "score": 0.0, "solved": False, "learning": False}
                        for s in range(1, max_steps + 1):
                            xs, targets = make(jax.random.fold_in(k_data, s), batch, lag)
                            params, opt_state, _ = step(params, opt_state, xs, targets)
                            if s % eval_every == 0:
                                result = evaluate(predict(params, xs_test), targets_test, lag)
                                if result["solved"]:
                                    break
                        outcomes.append({"seed": seed, "steps": s, "loss_over_chance": result["loss"] / chance(lag),
                                         "score": result["score"], "solved": result["solved"],
                                         **({"learning": result["learning"]} if "learning" in result else {})})
                    per_lag[lag][str(lr)] = outcomes
                    if sum(o[sweep_by] for o in outcomes) >= need:
                        break
                if not any(o[sweep_by] for outcomes in per_lag[lag].values() for o in outcomes):
                    break
            seconds = time.perf_counter() - start
            for (row_task, criterion), text in MEMORY_CRITERIA.items():
                if row_task != task:
                    continue
                met = [lag for lag, by_lr in per_lag.items()
                       if any(sum(o[criterion] for o in outcomes) >= need for outcomes in by_lr.values())]
                rows.append(_row(
                    "memory_horizon", task, cell_name, f"largest_lag_{criterion}", max(met) if met else None,
                    n_seeds=len(seeds), baselines={"chance_loss_at_largest_lag_tried": chance(max(per_lag))},
                    seconds=seconds,
                    criterion=f"{text}; {criterion} when {need} of {len(seeds)} seeds meet it within {max_steps} "
                              f"steps at one of the step sizes {step_sizes} (batch {batch}, H={hidden}, Adam "
                              f"clipped at 1; the sweep follows '{sweep_by}')",
                    lags_tried=list(per_lag), per_lag={str(k): v for k, v in per_lag.items()},
                ))
    return rows


# ----------------------------------------------------------------------------------------------
# Notebook 07: the seeds' experiments
# ----------------------------------------------------------------------------------------------


def timing(quick: bool) -> list[dict]:
    import jax

    import jrnn
    from jrnn import optim, tasks
    from jrnn.train import fit

    T = 50 if quick else 200
    steps, seeds = (20, [0]) if quick else (1500, [0, 1, 2])
    xs, targets = tasks.timing(jax.random.PRNGKey(1000), 256, T)
    optimizer = optim.make_optimizer("adam", 1e-2, clip_norm=1.0)
    baseline = tasks.timing_baseline_mse()
    rows = []
    for name in _cells(quick):
        model = jrnn.RNN(_cell(name, 32), output_size=1)
        start, scores = time.perf_counter(), []
        for seed in seeds:
            result = fit(model, model.init(jax.random.PRNGKey(seed), 2), optimizer,
                         lambda key: tasks.timing(key, 32, T), steps=steps, key=jax.random.PRNGKey(100 + seed),
                         progress=False)
            scores.append(float(np.mean((_predict(model, result.params, xs) - np.asarray(targets)) ** 2)))
        rows.append(_row("timing", f"timing T={T}", name, "heldout_mse", float(np.mean(scores)),
                         std=float(np.std(scores)), n_seeds=len(seeds), baselines={"best_constant": baseline},
                         seconds=time.perf_counter() - start, notes=f"1 layer of 32, Adam 1e-2, {steps} steps"))
    return rows


def sine(quick: bool) -> list[dict]:
    import jax

    import jrnn
    from jrnn import datasets, optim, tasks
    from jrnn.train import fit

    steps, seeds = (10, [0]) if quick else (600, [0, 1, 2])
    series = np.asarray(tasks.sine_series(jax.random.PRNGKey(0), 2000))
    (xs, ys), (xs_val, ys_val) = datasets.windows(series, 10, val_fraction=0.2)
    ar10 = _least_squares(xs[:, :, 0], ys[:, 0])
    baselines = {
        "mean": float(np.mean(ys_val[:, 0] ** 2)),
        "persistence": float(np.mean((xs_val[:, -1, 0] - ys_val[:, 0]) ** 2)),
        "AR(10)": float(np.mean((_with_intercept(xs_val[:, :, 0]) @ ar10 - ys_val[:, 0]) ** 2)),
        "noise_floor": tasks.SINE_NOISE_FLOOR_MSE,
    }
    optimizers = {
        "Adagrad": optim.make_optimizer("adagrad", 1e-2, classic=True, clip_norm=1.0),
        "Adam": optim.make_optimizer("adam", 1e-3, clip_norm=1.0),
    }
    rows = [_row("sine", "sine next step, window 10", name, "val_mse", value, notes="baseline")
            for name, value in baselines.items()]
    for opt_name, optimizer in optimizers.items():
        for name in _cells(quick):
            model = jrnn.RNN(_cell(name, 32), num_layers=3, output_size=1)
            start, scores = time.perf_counter(), []
            for seed in seeds:
                result = fit(model, model.init(jax.random.PRNGKey(seed), 1), optimizer, (xs, ys), steps=steps,
                             batch_size=32, eval_data=(xs_val, ys_val), eval_every=steps,
                             key=jax.random.PRNGKey(100 + seed), progress=False)
                scores.append(result.history["eval"]["loss"][-1])
            rows.append(_row("sine", "sine next step, window 10", f"{name} ({opt_name})", "val_mse",
                             float(np.mean(scores)), std=float(np.std(scores)), n_seeds=len(seeds),
                             baselines=baselines, seconds=time.perf_counter() - start,
                             notes=f"3 layers of 32, {opt_name}, clipped at 1, batch 32, {steps} steps"))
    return rows


def _choose_steps(model, xs, ys, n_inner, max_steps, seeds, optimizer, eval_every, batch_size=None):
    """Train on the first ``n_inner`` windows, score the rest: the step count of the lowest mean."""
    import jax

    from jrnn.train import fit

    curves = []
    for seed in seeds:
        result = fit(model, model.init(jax.random.PRNGKey(seed), xs.shape[-1]), optimizer, (xs[:n_inner], ys[:n_inner]),
                     steps=max_steps, batch_size=batch_size, eval_data=(xs[n_inner:], ys[n_inner:]),
                     eval_every=eval_every, key=jax.random.PRNGKey(seed), progress=False)
        curves.append(result.history["eval"]["loss"])
    return int(result.history["eval"]["step"][int(np.argmin(np.mean(curves, axis=0)))])


def _trained_forecasts(model, xs_train, ys_train, xs_test, steps, seeds, optimizer, scale, shift, batch_size=None):
    import jax

    from jrnn.train import fit

    predictions = []
    for seed in seeds:
        result = fit(model, model.init(jax.random.PRNGKey(seed), xs_train.shape[-1]), optimizer, (xs_train, ys_train),
                     steps=steps, batch_size=batch_size, key=jax.random.PRNGKey(seed), progress=False)
        predictions.append(_predict(model, result.params, xs_test)[:, -1, 0] * scale + shift)
    return predictions


def aapl(quick: bool) -> list[dict]:
    import jrnn
    from jrnn import datasets, optim

    seeds = [0] if quick else list(range(10))
    max_steps = 20 if quick else 300
    returns = datasets.aapl().log_returns.astype(np.float32)
    lookback, n = 12, len(returns)
    n_train = round(0.7 * n)
    (xs_all, ys_all), _ = datasets.windows(returns, lookback, val_fraction=0.0)
    target = np.arange(lookback, n)
    train, test = target < n_train, target >= n_train
    y_test = returns[target[test]]
    mu, sd = float(returns[:n_train].mean()), float(returns[:n_train].std())
    a_b = _least_squares(returns[:n_train - 1, None], returns[1:n_train])
    mse = lambda pred: float(np.mean((pred - y_test) ** 2))  # noqa: E731
    baselines = {"training_mean": mse(np.full_like(y_test, mu)),
                 "AR(1)": mse(a_b[0] * returns[target[test] - 1] + a_b[1])}
    rows = [_row("aapl", "AAPL monthly log return, one month ahead", name, "test_mse", value,
                 notes="baseline" + (f"; slope {a_b[0]:.3f}" if name == "AR(1)" else ""),
                 r2_vs_training_mean=1 - value / baselines["training_mean"])
            for name, value in baselines.items()]
    xs_std, ys_std = (xs_all - mu) / sd, (ys_all - mu) / sd
    xs_fit, ys_fit = xs_std[train], ys_std[train]
    optimizer = optim.make_optimizer("adam", 3e-3, clip_norm=1.0)
    for name in _cells(quick):
        model = jrnn.RNN(_cell(name, 8), output_size=1)
        start = time.perf_counter()
        steps = _choose_steps(model, xs_fit, ys_fit, round(0.75 * len(xs_fit)), max_steps, seeds, optimizer, 10)
        errors = [mse(p) for p in _trained_forecasts(model, xs_fit, ys_fit, xs_std[test], steps, seeds, optimizer, sd, mu)]
        rows.append(_row("aapl", "AAPL monthly log return, one month ahead", name, "test_mse", float(np.mean(errors)),
                         std=float(np.std(errors)), n_seeds=len(seeds), baselines=baselines,
                         seconds=time.perf_counter() - start,
                         r2_vs_training_mean=1 - float(np.mean(errors)) / baselines["training_mean"],
                         notes=f"1 layer of 8, 12-month windows, Adam 3e-3 full batch, {steps} steps "
                               "(chosen on the last quarter of the training windows)"))
    return rows


def sunspots(quick: bool) -> list[dict]:
    import jrnn
    from jrnn import datasets, optim

    seeds = [0] if quick else list(range(5))
    max_steps, eval_every = (20, 10) if quick else (1000, 25)
    years, spots = datasets.sunspots()
    n_test, order, lookback = 30, 9, 20
    n = len(spots)
    n_train = n - n_test
    y_test = spots[n_train:]
    rmse = lambda pred: float(np.sqrt(np.mean((pred - y_test) ** 2)))  # noqa: E731

    def lags(index):
        return np.stack([spots[index - k] for k in range(1, order + 1)], axis=1)

    ar9 = _least_squares(lags(np.arange(order, n_train)), spots[order:n_train])
    baselines = {"training_mean": rmse(np.full(n_test, spots[:n_train].mean())),
                 "persistence": rmse(spots[n_train - 1:n - 1]),
                 "AR(9)": rmse(_with_intercept(lags(np.arange(n_train, n))) @ ar9)}
    task = f"yearly sunspots, one step ahead, test {years[n_train]}-{years[-1]}"
    rows = [_row("sunspots", task, name, "test_rmse", value, notes="baseline") for name, value in baselines.items()]
    mu, sd = float(spots[:n_train].mean()), float(spots[:n_train].std())
    (xs, ys), _ = datasets.windows((spots - mu) / sd, lookback, val_fraction=0.0)
    target = np.arange(lookback, n)
    train, test = target < n_train, target >= n_train
    n_inner = int(np.sum(target < n_train - n_test))
    optimizer = optim.make_optimizer("adam", 3e-3, clip_norm=1.0)
    for name in _cells(quick):
        model = jrnn.RNN(_cell(name, 32), output_size=1)
        start = time.perf_counter()
        steps = _choose_steps(model, xs[train], ys[train], n_inner, max_steps, seeds, optimizer, eval_every, 32)
        scores = [rmse(p) for p in _trained_forecasts(model, xs[train], ys[train], xs[test], steps, seeds, optimizer,
                                                       sd, mu, batch_size=32)]
        rows.append(_row("sunspots", task, name, "test_rmse", float(np.mean(scores)), std=float(np.std(scores)),
                         n_seeds=len(seeds), baselines=baselines, seconds=time.perf_counter() - start,
                         notes=f"1 layer of 32, 20-year windows, Adam 3e-3 batch 32, {steps} steps "
                               f"(chosen on {years[n_train - n_test]}-{years[n_train - 1]})"))
    return rows


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------

_RUNNERS: dict[str, Callable[[bool], list[dict]]] = {
    "memory_horizon": memory_horizon,
    "timing": timing,
    "sine": sine,
    "aapl": aapl,
    "sunspots": sunspots,
}


def run(quick: bool, only: tuple[str, ...] | None = None, cells: tuple[str, ...] | None = None) -> list[dict]:
    """The rows of every study (or of those in ``only``); a study that fails gives one error row.
    ``cells`` selects the memory-horizon study's cells (``MEMORY_CELLS + MEMORY_VARIANTS``)."""
    rows = []
    for study in only or STUDIES:
        try:
            rows.extend(memory_horizon(quick, cells) if study == "memory_horizon" else _RUNNERS[study](quick))
        except Exception as e:  # noqa: BLE001 - one study failing must not hide the others
            rows.append({"study": study, "error": f"{type(e).__name__}: {e}"[:500]})
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(rows: list[dict]) -> str:
    """One table per study: model, metric, value ± std, the baselines, and how it was obtained."""
    out = []
    for study in dict.fromkeys(r["study"] for r in rows):
        out.append(f"### {study}\n")
        out.append("| task | model | metric | value | baselines | how |")
        out.append("|---|---|---|---|---|---|")
        for r in (r for r in rows if r["study"] == study):
            if "error" in r:
                out.append(f"| | | | error: {r['error']} | | |")
                continue
            value = _fmt(r["value"]) + (f" ± {r['std']:.2g}" if "std" in r else "")
            base = ", ".join(f"{k} {_fmt(v)}" for k, v in r["baselines"].items())
            how = r.get("criterion") or r.get("notes", "")
            if "n_seeds" in r:
                how += f" ({r['n_seeds']} seeds)"
            out.append(f"| {r['task']} | {r['model']} | {r['metric']} | {value} | {base} | {how} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny sizes, meaningless values")
    parser.add_argument("--only", default=None, help=f"comma-separated studies among {', '.join(STUDIES)}")
    parser.add_argument("--cells", default=None,
                        help="comma-separated cells of the memory-horizon study among "
                             f"{', '.join(MEMORY_CELLS + MEMORY_VARIANTS)} (default: {', '.join(MEMORY_CELLS)})")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    only = tuple(s.strip() for s in args.only.split(",")) if args.only else None
    if only and any(s not in STUDIES for s in only):
        parser.error(f"--only must name studies among {', '.join(STUDIES)}, got {args.only!r}")
    cells = tuple(c.strip() for c in args.cells.split(",")) if args.cells else None
    if cells and any(c not in MEMORY_CELLS + MEMORY_VARIANTS for c in cells):
        parser.error(f"--cells must name cells among {', '.join(MEMORY_CELLS + MEMORY_VARIANTS)}, got {args.cells!r}")
    rows = run(args.quick, only, cells)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
