# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # How far back can each cell remember?
#
# Two claims from the articles this project grew out of:
#
# * "a plain RNN can remember at most about 10 to 20 time steps";
# * "the GRU has no forget gate, so it handles long-term dependencies worse than the LSTM".
#
# Both are testable. This notebook trains four cells on three memory tasks of the literature,
# lengthening the lag $T$ between the information and the moment it is needed, and records
# the largest $T$ each cell solves:
#
# | task | `jrnn.tasks` | what must be remembered | chance baseline |
# |---|---|---|---|
# | adding problem | `adding` | two values marked among $T$, summed at the last step | MSE $1/6 \approx 0.167$ (predict 1) |
# | copy memory | `copy_memory` | 10 symbols out of 8, reproduced after a lag $T$ | cross-entropy $10 \ln 8 / (T + 20)$ |
# | temporal order | `temporal_order` | the order of two symbols X/Y placed early among distractors | cross-entropy $\ln 4$, accuracy 1/4 |
#
# The cells are the tanh RNN (`VanillaCell`, orthogonal $W_h$), the ReLU RNN with identity
# initialization of Le, Jaitly and Hinton (2015, "IRNN":
# `VanillaCell(H, activation="relu", recurrent_init="identity")`), the LSTM (forget bias 1) and
# the GRU. Published results to compare with:
#
# * Hochreiter and Schmidhuber (1997): the LSTM solved the adding problem at $T = 100$, 500
#   and 1000, a sequence counting as processed correctly when its absolute error is below 0.04
#   (their target is the sum rescaled to $[0, 1]$; see below), and the temporal order problem at
#   $T \approx 100$; the recurrent-network training methods of the time failed on both.
# * Le, Jaitly and Hinton (2015): the identity-initialized ReLU RNN solved the adding problem up
#   to $T = 400$, the longest lag they tried.
# * Arjovsky, Shah and Bengio (2016) introduced the memoryless baseline of the copy task,
#   $10 \ln 8 / (T + 20)$, and found gated and plain RNNs slow to get below it at long lags.
#
# Those studies trained for $10^5$ to $10^7$ sequences. This one has a CPU budget (below), so a
# failure here means "not within this budget", and a success is a lower bound on what the cell
# can do.

# %%
import os

SMALL = os.environ.get("JRNN_NOTEBOOK_SMALL") == "1"

import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jrnn
from jrnn import losses, optim, tasks
from jrnn.train import make_train_step

print("small run" if SMALL else "full run", "| jax", jax.__version__, "|", jax.devices()[0].platform,
      "|", os.cpu_count(), "CPU cores")

# %% [markdown]
# ## Protocol
#
# * **Model**: one recurrent layer of $H = 32$ units and a linear readout, float32.
# * **Training**: fresh random sequences at every step (batch 32), Adam with the gradient clipped
#   to global norm 1 (`jrnn.optim.make_optimizer("adam", lr)`), full BPTT. The
#   gradient comes from the hand-written backward pass (`backward="bptt"`), which gives the same
#   gradients as `jax.grad` and, for one train step at $T$ = 200 and 400 (batch 32, 32 units),
#   was 1.05x (GRU), 1.4x (LSTM) and 2x (tanh RNN) faster than autodiff on this CPU.
# * **Step sizes**: each cell gets two, tried in order: $10^{-2}$, then $10^{-3}$ if the first
#   does not solve the lag, for the tanh RNN, the LSTM and the GRU; $3 \cdot 10^{-4}$, then
#   $10^{-4}$ for the IRNN, whose ReLU units with $W_h = I$ sit on the edge of instability (in
#   pilot runs at $T = 200$, Adam at $10^{-3}$ made its activations overflow within 200 steps).
# * **Stopping**: every 100 steps the model is scored on 512 held-out sequences; training stops
#   as soon as the criterion below is met, or after a step cap (adding and temporal order 4000
#   steps, i.e. 128 000 sequences; copy 3000).
# * **Criteria** (on the held-out sequences):
#   * adding: test MSE below 0.01, i.e. 6 % of the 0.167 baseline. Hochreiter's stricter
#     criterion is reported alongside as the fraction of test sequences with
#     $|\text{error}| < 0.04$, but runs are not trained until it holds. His target is
#     $0.5 + (X_1 + X_2)/4$ with $X_i \sim U[-1, 1]$, whose spread (standard deviation 0.20) is
#     half that of our $X_1 + X_2$ with $X_i \sim U[0, 1]$ (0.41), so his 0.04 corresponds to 0.08
#     here; both fractions are shown.
#   * temporal order: accuracy at least 95 % (chance 25 %).
#   * copy memory: accuracy on the 10 copied symbols at least 25 %, twice the 12.5 % of a model
#     without memory. A model that recalls $k$ of the 10 symbols and guesses the others scores
#     $(k + (10 - k)/8)/10$, so 25 % means about 1.4 symbols carried across the lag. This is a
#     *memory shown* criterion, not *solved*: in pilot runs no cell came near 95 % within a few
#     thousand steps at any lag (the GRU reached 58 % at $T = 10$ and 40 % at $T = 100$ after
#     4000 steps), because learning to reproduce ten symbols in order takes far longer than this
#     budget.
# * **Seeds and the lag grid**: 3 seeds (initialization and data) per cell, task, lag and step
#   size; $T \in \{10, 25, 50, 100, 200, 400\}$. A cell *solves* $T$ when, at one of its step
#   sizes, at least 2 of the 3 seeds meet the criterion. When no seed meets it at either step
#   size, the larger lags are not run for that cell and task (they count as failures): the tasks
#   get harder with $T$, and this keeps the budget for the cells that are still succeeding.
#
# **Budget.** The machine this was run on has 2 shared CPU cores. The full study is sized to
# execute in about 20 minutes there; that is what fixed $H = 32$, the batch of 32, the step caps,
# the two step sizes and the 3 seeds. (On this CPU a training step of the 32-unit LSTM at
# $T = 400$ takes about 5 ms with the hand-written backward; 64 units cost about 5 times as much
# as 32.)

# %%
H = 16 if SMALL else 32
BATCH = 32
SEEDS = [0] if SMALL else [0, 1, 2]
EVAL_EVERY = 50 if SMALL else 100
N_TEST = 128 if SMALL else 512
MAX_STEPS = {"adding": 4000, "copy_memory": 3000, "temporal_order": 4000}
if SMALL:
    MAX_STEPS = {name: 100 for name in MAX_STEPS}
LAGS = [10] if SMALL else [10, 25, 50, 100, 200, 400]
CLIP = 1.0
BACKWARD = "bptt"
CELLS = {
    "tanh": lambda: jrnn.VanillaCell(H),
    "irnn": lambda: jrnn.VanillaCell(H, activation="relu", recurrent_init="identity"),
    "lstm": lambda: jrnn.LSTMCell(H),
    "gru": lambda: jrnn.GRUCell(H),
}
STEP_SIZES = {"tanh": [1e-2, 1e-3], "irnn": [3e-4, 1e-4], "lstm": [1e-2, 1e-3], "gru": [1e-2, 1e-3]}
if SMALL:  # a check that the code runs: two cells, one step size each
    CELLS = {name: CELLS[name] for name in ("tanh", "gru")}
    STEP_SIZES = {name: STEP_SIZES[name][:1] for name in CELLS}
COLORS = {"tanh": "tab:blue", "irnn": "tab:orange", "lstm": "tab:green", "gru": "tab:red"}
NUM_SYMBOLS, COPY_LEN = 8, 10
COPY_CHANCE_ACCURACY = 1 / NUM_SYMBOLS

# %% [markdown]
# ## The tasks and their baselines
#
# Each task maps a key, a batch size and $T$ to `(xs, targets)`. The adding problem is scored
# by MSE at the last step; copy memory by cross-entropy at every step (the blank is the target
# everywhere but in the last 10 steps); temporal order by cross-entropy at the last step. Each
# run is judged on one number, `metric` below: the MSE relative to the baseline for the adding
# problem, the accuracy for the two others.

# %%
TASKS = {
    "adding": dict(make=tasks.adding, input_size=2, output_size=1, loss="mse"),
    "copy_memory": dict(make=lambda key, batch, lag: tasks.copy_memory(key, batch, lag, NUM_SYMBOLS, COPY_LEN),
                        input_size=NUM_SYMBOLS + 2, output_size=NUM_SYMBOLS + 2, loss="cross_entropy"),
    "temporal_order": dict(make=tasks.temporal_order, input_size=len(tasks.TEMPORAL_ORDER_SYMBOLS),
                           output_size=4, loss="cross_entropy"),
}


def baseline(task, lag):
    """The loss of the best predictor that ignores the inputs."""
    if task == "adding":
        return tasks.ADDING_BASELINE_MSE
    if task == "copy_memory":
        return tasks.copy_memory_baseline(lag, NUM_SYMBOLS, COPY_LEN)
    return tasks.TEMPORAL_ORDER_BASELINE_CE


def evaluate(task, ys, targets):
    """The loss, the criterion's metric, whether it is met, and a task-specific extra."""
    if task == "adding":
        error = ys[:, -1, 0] - targets[:, 0]
        mse = float(losses.mse(ys, targets))
        return dict(loss=mse, metric=mse / tasks.ADDING_BASELINE_MSE, solved=mse < 0.01,
                    close=float(jnp.mean(jnp.abs(error) < 0.04)),  # Hochreiter's threshold, as written
                    close_rescaled=float(jnp.mean(jnp.abs(error) < 0.08)))  # rescaled to this target
    loss = float(losses.cross_entropy(ys, targets))
    if task == "copy_memory":
        accuracy = float(jnp.mean(jnp.argmax(ys[:, -COPY_LEN:], -1) == targets[:, -COPY_LEN:]))
        recalled = COPY_LEN * (accuracy - COPY_CHANCE_ACCURACY) / (1 - COPY_CHANCE_ACCURACY)
        return dict(loss=loss, metric=accuracy, solved=accuracy >= 2 * COPY_CHANCE_ACCURACY, recalled=recalled)
    accuracy = float(jnp.mean(jnp.argmax(ys[:, -1], -1) == targets))
    return dict(loss=loss, metric=accuracy, solved=accuracy >= 0.95)


for task in TASKS:
    print(f"{task:15s} chance loss at T = 10, 100, 400: "
          + ", ".join(f"{baseline(task, lag):.4f}" for lag in (10, 100, 400)))

xs_demo, targets_demo = tasks.adding(jax.random.PRNGKey(0), 1, 50)
fig, ax = plt.subplots(figsize=(8, 2.2))
ax.bar(np.arange(50), xs_demo[0, :, 0], color="lightgray", label="values $v_t$")
marked = np.flatnonzero(xs_demo[0, :, 1])
ax.bar(marked, xs_demo[0, marked, 0], color="k", label="marked values")
ax.set(title=f"adding problem, T = 50: target = {float(targets_demo[0, 0]):.3f}", xlabel="t")
ax.legend(fontsize=8, loc="upper right")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Training one run
#
# The loop is `jrnn.train.make_train_step` (the jitted update that `fit` uses, with clipping
# and non-finite-update skipping) inside a Python loop that scores the held-out set every
# `EVAL_EVERY` steps and stops at the criterion. (`fit` itself runs a fixed number of steps,
# and early stopping saves most of this study's budget.) An update whose loss or gradient is
# not finite is skipped by the train step and counted; a held-out loss that is not finite counts
# as not solved and training goes on.

# %%
_steps = {}


def train_step_for(cell_name, task, lr):
    """One jitted step per (cell, task, step size); it compiles once per sequence length."""
    if (cell_name, task, lr) not in _steps:
        spec = TASKS[task]
        model = jrnn.RNN(CELLS[cell_name](), output_size=spec["output_size"])
        optimizer = optim.make_optimizer("adam", lr, clip_norm=CLIP)
        step = make_train_step(model, optimizer, loss=spec["loss"], backward=BACKWARD)
        _steps[cell_name, task, lr] = (model, optimizer, step, jax.jit(lambda p, xs: model.apply(p, xs)[0]))
    return _steps[cell_name, task, lr]


def run(cell_name, task, lag, seed, lr):
    model, optimizer, step, predict = train_step_for(cell_name, task, lr)
    spec = TASKS[task]
    k_init, k_data, k_test = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = model.init(k_init, spec["input_size"])
    opt_state = optimizer.init(params)
    xs_test, targets_test = spec["make"](k_test, N_TEST, lag)
    start = time.perf_counter()
    curve, skipped = [], 0
    for s in range(1, MAX_STEPS[task] + 1):
        xs, targets = spec["make"](jax.random.fold_in(k_data, s), BATCH, lag)
        params, opt_state, metrics = step(params, opt_state, xs, targets)
        skipped = skipped + metrics["num_nonfinite"]  # stays on the device until read
        if s % EVAL_EVERY == 0:
            result = evaluate(task, predict(params, xs_test), targets_test)
            curve.append((s, result["metric"]))
            if result["solved"]:
                break
    return dict(cell=cell_name, task=task, lag=lag, seed=seed, lr=lr, steps=s, seconds=time.perf_counter() - start,
                curve=curve, baseline=baseline(task, lag), skipped=int(skipped), **result)


# %% [markdown]
# ## The sweep

# %%
NEED = len(SEEDS) // 2 + 1  # a majority of the seeds: 2 of 3 (1 of 1 in the small run)
results = []
sweep_start, sweep_cpu_start = time.perf_counter(), time.process_time()
for task in TASKS:
    for cell_name in CELLS:
        for lag in LAGS:
            any_met = False
            for lr in STEP_SIZES[cell_name]:
                runs = [run(cell_name, task, lag, seed, lr) for seed in SEEDS]
                results.extend(runs)
                met = sum(r["solved"] for r in runs)
                any_met = any_met or met > 0
                print(f"{task:14s} {cell_name:4s} T={lag:3d} lr={lr:.0e}: met {met}/{len(runs)} | metric "
                      + " ".join(f"{r['metric']:6.3f}" for r in runs)
                      + " | steps " + " ".join(f"{r['steps']:4d}" for r in runs)
                      + f" | {sum(r['seconds'] for r in runs):5.1f} s"
                      + (f" | non-finite updates skipped {sum(r['skipped'] for r in runs)}"
                         if any(r["skipped"] for r in runs) else ""), flush=True)
                if met >= NEED:
                    break
            if not any_met:
                break
sweep_seconds = time.perf_counter() - sweep_start
sweep_cpu_seconds = time.process_time() - sweep_cpu_start
print(f"sweep: {len(results)} runs in {sweep_seconds / 60:.1f} min")

# %% [markdown]
# ## Largest lag solved
#
# A cell solves $T$ when, at one of its two step sizes, at least 2 of the 3 seeds (the only seed
# in the small run) meet the criterion; "—" means it solved none of the lags.

# %%
def seeds_met(cell_name, task, lag):
    """The best (met, runs, step size) over the step sizes tried at this lag."""
    best = (0, 0, None)
    for lr in STEP_SIZES[cell_name]:
        runs = [r for r in results if (r["cell"], r["task"], r["lag"], r["lr"]) == (cell_name, task, lag, lr)]
        if runs and (sum(r["solved"] for r in runs), len(runs)) > best[:2]:
            best = (sum(r["solved"] for r in runs), len(runs), lr)
    return best


largest = {}
for task in TASKS:
    for cell_name in CELLS:
        ok = [lag for lag in LAGS if seeds_met(cell_name, task, lag)[0] >= NEED]
        largest[cell_name, task] = max(ok) if ok else None

print(f"{'cell':6s}" + "".join(f"{task:>16s}" for task in TASKS))
for cell_name in CELLS:
    print(f"{cell_name:6s}" + "".join(f"{'—' if largest[cell_name, task] is None else largest[cell_name, task]:>16}"
                                      for task in TASKS))
print(f"(lags tried: {LAGS})")

print(f"\nseeds meeting the criterion at the better step size (x/{len(SEEDS)}, '*': at the second step size), "
      "'.' = not run:")
for task in TASKS:
    print(f"{task}: T = {LAGS}")
    for cell_name in CELLS:
        cells = []
        for lag in LAGS:
            k, n, lr = seeds_met(cell_name, task, lag)
            star = "*" if lr is not None and lr != STEP_SIZES[cell_name][0] and k else " "
            cells.append(f"{k}/{n}{star}" if n else "  . ")
        print(f"   {cell_name:5s}", "  ".join(cells))

# %%
METRIC_LABEL = {"adding": "held-out MSE / 0.167 (chance)", "copy_memory": "accuracy on the copied symbols",
                "temporal_order": "accuracy"}
fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
for col, task in enumerate(TASKS):
    ax_metric, ax_steps = axes[0, col], axes[1, col]
    for i, cell_name in enumerate(CELLS):
        runs = [r for r in results if (r["cell"], r["task"]) == (cell_name, task)]
        if not runs:
            continue
        jitter = 1 + 0.04 * (i - 1.5)
        lags = np.array([r["lag"] for r in runs], float) * jitter
        metric = np.array([r["metric"] for r in runs])
        metric = np.where(np.isfinite(metric), np.minimum(metric, 10.0), 10.0)  # diverged runs drawn at 10
        solved = np.array([r["solved"] for r in runs])
        ax_metric.scatter(lags[solved], metric[solved], color=COLORS[cell_name], s=22, label=cell_name)
        ax_metric.scatter(lags[~solved], metric[~solved], facecolor="none", edgecolor=COLORS[cell_name], s=22)
        best = {lag: min(10.0, (min if task == "adding" else max)(r["metric"] for r in runs if r["lag"] == lag))
                for lag in sorted({r["lag"] for r in runs})}
        ax_metric.plot(np.array(list(best)) * jitter, list(best.values()), color=COLORS[cell_name], lw=1)
        steps = np.array([r["steps"] for r in runs])
        ax_steps.scatter(lags[solved], steps[solved], color=COLORS[cell_name], s=22, label=cell_name)
        ax_steps.scatter(lags[~solved], steps[~solved], marker="x", color=COLORS[cell_name], s=22)
    if task == "adding":
        ax_metric.axhline(1.0, color="gray", ls=":", lw=1)
        ax_metric.axhline(0.01 / tasks.ADDING_BASELINE_MSE, color="k", ls="--", lw=0.8)
        ax_metric.set_yscale("log")
    else:
        chance = COPY_CHANCE_ACCURACY if task == "copy_memory" else tasks.TEMPORAL_ORDER_BASELINE_ACCURACY
        ax_metric.axhline(chance, color="gray", ls=":", lw=1)
        ax_metric.axhline(2 * COPY_CHANCE_ACCURACY if task == "copy_memory" else 0.95, color="k", ls="--", lw=0.8)
    ax_metric.set(xscale="log", title=task, xlabel="lag T", ylabel=METRIC_LABEL[task])
    ax_steps.set(xscale="log", yscale="log", xlabel="lag T",
                 ylabel="steps to criterion (x: not met by the cap)" if col == 0 else None)
    ax_metric.legend(fontsize=8)
fig.suptitle("every run (both step sizes); filled: criterion (dashed) met, open/x: not met; dotted: chance; "
             "line: best run per lag; adding runs that diverged are drawn at 10", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The adding problem by Hochreiter's criterion
#
# Our runs stop at MSE 0.01. How close were they to "every error below 0.04"? The fraction of
# held-out sequences with $|\text{error}| < 0.04$ at the moment of stopping, per cell, lag and
# seed (solved runs only), and in brackets the fraction below 0.08, Hochreiter's threshold
# rescaled to this target:

# %%
for cell_name in CELLS:
    cells = []
    for lag in LAGS:
        runs = [r for r in results if (r["cell"], r["task"], r["lag"]) == (cell_name, "adding", lag) and r["solved"]]
        if runs:
            cells.append(f"T={lag}: " + "/".join(f"{r['close']:.2f}" for r in runs) + " ("
                         + "/".join(f"{r['close_rescaled']:.2f}" for r in runs) + ")")
    print(f"{cell_name:5s}", " | ".join(cells) if cells else "no solved run")

# %% [markdown]
# And for copy memory, the number of symbols (of 10) that the runs meeting the criterion carried
# across the lag, $10 \cdot (\text{accuracy} - 1/8) / (7/8)$, at the moment they stopped:

# %%
for cell_name in CELLS:
    runs = [r for r in results if (r["cell"], r["task"]) == (cell_name, "copy_memory") and r["solved"]]
    by_lag = {lag: [r["recalled"] for r in runs if r["lag"] == lag] for lag in LAGS}
    print(f"{cell_name:5s}", " | ".join(f"T={lag}: " + "/".join(f"{v:.1f}" for v in values)
                                        for lag, values in by_lag.items() if values) or "no run met the criterion")

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
for ax, task in zip(axes, TASKS):
    solved_lags = [r["lag"] for r in results if r["task"] == task and r["solved"]]
    lag = max(solved_lags) if solved_lags else LAGS[0]
    for cell_name in CELLS:
        first = True
        for r in results:
            if (r["cell"], r["task"], r["lag"]) == (cell_name, task, lag):
                steps, metric = np.array(r["curve"]).T
                metric = np.where(np.isfinite(metric), np.minimum(metric, 10.0), 10.0)
                ax.plot(steps, metric, color=COLORS[cell_name], ls="-" if r["lr"] == STEP_SIZES[cell_name][0] else "--",
                        label=cell_name if first else None)
                first = False
    if task == "adding":
        ax.set_yscale("log")
    ax.set(title=f"{task}, T = {lag}", xlabel="step", ylabel=METRIC_LABEL[task])
    ax.legend(fontsize=8)
fig.suptitle("held-out metric during training at the longest lag any cell solved (dashed: second step size; "
             "diverged: drawn at 10)", fontsize=10)
fig.tight_layout()
plt.show()

# %%
load = os.getloadavg()[1] if hasattr(os, "getloadavg") else float("nan")
print(f"sweep time: {sweep_seconds / 60:.1f} min wall clock, {sweep_cpu_seconds / 60:.1f} min of CPU time, on "
      f"{os.cpu_count()} CPU cores (load average over the last 5 minutes: {load:.1f})")
for task in TASKS:
    seconds = sum(r["seconds"] for r in results if r["task"] == task)
    print(f"  {task:15s} {seconds / 60:5.1f} min, {sum(r['task'] == task for r in results)} runs")

# %% [markdown]
# ## Conclusion
#
# *(Written after running the notebook; the numbers are those printed above.)*
#
# Largest lag solved, out of $T \in \{10, 25, 50, 100, 200, 400\}$ (2 of 3 seeds at one of the
# two step sizes; 32 units, at most 4000 steps of 32 sequences, 3000 for copy):
#
# | cell | adding (MSE < 0.01) | copy memory (memory shown: accuracy ≥ 25 %) | temporal order (accuracy ≥ 95 %) |
# |---|---|---|---|
# | tanh RNN | 10 | none (best accuracy 22 % at $T = 10$) | 50 |
# | IRNN (ReLU, $W_h = I$) | 100 | 400 | 400 |
# | LSTM | 400 | 10 | 200 |
# | GRU | 400 | 400 | 100 |
#
# * **"A plain RNN remembers only about 10 to 20 steps."** True of the tanh RNN trained this
#   way: it solved the adding problem at $T = 10$ (3/3 seeds) but not at 25 (1 seed of 3, at the
#   smaller step size) nor 50 (best MSE 14 % of the baseline); it never got to the memory
#   criterion on copy memory, not even at $T = 10$ (accuracy 14 to 22 %, chance 12.5 %); and it
#   solved temporal order up to $T = 50$ (2/3 at step $10^{-3}$, none at $10^{-2}$) but not 100.
#   The limit belongs to how the tanh network trains, not to plain recurrence: the IRNN, also a
#   single-matrix RNN, solved temporal order at $T = 400$ (3/3, in 900 to 1400 steps), carried
#   information across 400 steps on copy memory (2/3 at step $10^{-4}$) and solved adding up to
#   $T = 100$ (3/3). It is fragile, though: on adding at $T = 200$ only 1 seed of 3 succeeded, and
#   at 400 its activations overflowed at both step sizes (thousands of non-finite updates
#   skipped), so its adding frontier stops at 100.
# * **"The GRU handles long dependencies worse than the LSTM."** Not in these runs. On the adding
#   problem both reached $T = 400$, the GRU with 3/3 seeds in 500 to 600 steps, the LSTM with 2/3
#   in 2900 and 3800 steps; at every lag the GRU needed fewer steps. On copy memory the GRU met
#   the memory criterion up to $T = 400$ (2/3) and the LSTM only at $T = 10$ (1/3 at 25, none at
#   50, at either step size). Only on temporal order did the LSTM go further, 200 (3/3, at step
#   $10^{-3}$ only) against 100 for the GRU (1/3 at 200). The GRU was ahead on two tasks of three.
# * **The step size moves the frontier.** The LSTM failed temporal order at $T = 200$ with
#   $10^{-2}$ (0/3) and solved it with $10^{-3}$ (3/3, within 1100 steps); the tanh RNN's results
#   at 25 (adding) and 50 (temporal order) also came only from the smaller step. A study with one
#   step size per cell would have reported shorter horizons.
# * **Against the published results.** Hochreiter and Schmidhuber's LSTM solved the adding
#   problem at $T = 1000$; ours reached 400 (2 of 3 seeds). Our runs stop at MSE 0.01, when
#   21 to 77 % of the test sequences are within 0.04 (46 to 97 % within 0.08, their threshold
#   rescaled to this target), so by their criterion, every sequence correct, none of our runs had
#   finished: they stopped earlier. Le et al.'s IRNN solved adding up to $T = 400$; ours solved
#   100 and diverged at 400 with Adam at $3 \cdot 10^{-4}$ and $10^{-4}$ (they trained with plain
#   SGD and clipping, for far longer). At $T = 100$, temporal order was solved by the LSTM (2/3),
#   as in Hochreiter and Schmidhuber, and by the GRU and the IRNN (3/3).
# * **Copy memory is out of reach at this budget.** Every run that met the memory criterion had
#   recalled the equivalent of 1.4 to 1.9 of the 10 symbols when it stopped; none came near
#   copying the string, so the copy column measures whether a cell starts to carry information
#   across the lag, not whether it solves the task.
# * **Budget.** The 219 runs took 27.7 min of wall-clock time on this shared 2-core machine with
#   other jobs running (load average 7), 22.6 min of CPU time, a little over the 20-minute aim.
#   Most of it went to runs that failed at the longest lags (LSTM and GRU on temporal order at
#   400: about 2 min per step size). Every frontier above is a lower bound: with the criterion
#   checked as training goes, more steps or more step sizes could only move it out.
