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
# Both are testable. This notebook trains five cells on three memory tasks of the literature,
# lengthening the lag $T$ between the information and the moment it is needed, and records
# the largest $T$ each cell solves:
#
# | task | `jrnn.tasks` | what must be remembered | chance baseline |
# |---|---|---|---|
# | adding problem | `adding` | two values marked among $T$, summed at the last step | MSE $1/6 \approx 0.167$ (predict 1) |
# | copy memory | `copy_memory` | 10 symbols out of 8, reproduced after a lag $T$ | cross-entropy $10 \ln 8 / (T + 20)$, accuracy 1/8 |
# | temporal order | `temporal_order` | the order of two symbols X/Y placed early among distractors | cross-entropy $\ln 4$, accuracy 1/4 |
#
# The cells are the tanh RNN (`VanillaCell`, orthogonal $W_h$), the LSTM (forget bias 1), the
# GRU, and the minimal GRU and LSTM of Feng et al. (2024, "Were RNNs all we needed?":
# `MinGRUCell`, `MinLSTMCell`), whose gates and candidate state read the current input only, so
# that the state follows a linear recurrence $h_t = a_t \odot h_{t-1} + b_t$ with $a_t$, $b_t$
# functions of $x_t$ (one associative scan; Feng et al. stack several such layers, here each
# cell gets one layer). Published results to compare with:
#
# * Hochreiter and Schmidhuber (1997): the LSTM solved the adding problem at $T = 100$, 500
#   and 1000, a sequence counting as processed correctly when its absolute error is below 0.04
#   (their target is the sum rescaled to $[0, 1]$; see below), and the temporal order problem at
#   $T \approx 100$; the recurrent-network training methods of the time failed on both.
# * Arjovsky, Shah and Bengio (2016) introduced the memoryless baseline of the copy task,
#   $10 \ln 8 / (T + 20)$, and found the LSTM stuck at it at long lags, where their unitary RNN
#   went below it.
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
#   to global norm 1 (`jrnn.optim.make_optimizer("adam", lr, clip_norm=1.0)`), full BPTT. The
#   gradient comes from the hand-written backward pass (`backward="bptt"`), which gives the same
#   gradients as `jax.grad`.
# * **Equal budgets.** Every cell gets exactly the same budget: the same two step sizes, tried in
#   order ($10^{-2}$, then $10^{-3}$ when the first does not meet the criterion at that lag), the
#   same 3 seeds (initialization and data), the same lags, and the same cap on training steps per
#   run: **3000 steps (96 000 sequences) on the adding problem and temporal order, 2000 steps
#   (64 000 sequences) on copy memory**. Copy memory gets fewer steps because its runs almost
#   never stop early (see the criteria) and its sequences are the longest ($T + 20$ steps).
# * **Stopping**: every 100 steps the model is scored on 512 held-out sequences; training stops
#   as soon as the task's *solved* criterion is met, or at the cap.
# * **Criteria** (on the held-out sequences, at the last evaluation of the run):
#   * adding: *solved* when the test MSE is below 0.01, i.e. 6 % of the 0.167 baseline.
#     Hochreiter's stricter criterion is reported alongside as the fraction of test sequences
#     with $|\text{error}| < 0.04$, but runs are not trained until it holds. His target is
#     $0.5 + (X_1 + X_2)/4$ with $X_i \sim U[-1, 1]$, whose spread (standard deviation 0.20) is
#     half that of our $X_1 + X_2$ with $X_i \sim U[0, 1]$ (0.41), so his 0.04 corresponds to 0.08
#     here; both fractions are shown.
#   * temporal order: *solved* when the accuracy is at least 95 % (chance 25 %).
#   * copy memory, two criteria of the literature: *learning* when the cross-entropy (averaged
#     over all $T + 20$ steps, as in Arjovsky et al.) is below the memoryless baseline
#     $10 \ln 8 / (T + 20)$ (derived for `jrnn.tasks.copy_memory` below), and *solved* when the
#     accuracy on the 10 copied symbols is at least 99 %. A run is trained until it is solved or
#     reaches the cap; *learning* is read at its last evaluation.
# * **Seeds and the lag grid**: 3 seeds per cell, task, lag and step size; $T \in \{10, 30, 100,
#   300\}$. A cell *solves* (or, on copy memory, *learns*) $T$ when, at one of its step sizes, at
#   least 2 of the 3 seeds meet the criterion. The sweep (whether the second step size is tried,
#   and whether the next lag is run) follows the *solved* criterion on the adding problem and
#   temporal order, and the *learning* criterion on copy memory: the second step size is tried
#   when fewer than 2 seeds meet it at the first, and when no seed meets it at either step size
#   the larger lags are not run for that cell and task (they count as failures). Driving copy
#   memory by *solved* would run both step sizes at nearly every lag, doubling the study's
#   time; so a copy lag counted as not solved may have been tried at one step size only.
#
# **Budget.** The machine this was run on has 2 shared CPU cores, with other jobs running. The
# full study was sized to execute in about 35 minutes of CPU time there (the run below took
# 34 min of CPU time, but 49 min of wall-clock time under the load of the other jobs: see the
# end); that is what fixed $H = 32$, the batch of 32, the step caps, the two step sizes, the 3
# seeds, the four lags and the one-layer min cells. The LSTM and GRU options (`GRUCell(reset_after=False)`,
# `LSTMCell(peepholes=True)`, `layer_norm=True`) are left out here to keep that budget; they
# can be swept with the same protocol by `python -m benchmarks.quality_studies --only
# memory_horizon --cells ...`. On this CPU a training step of the 32-unit LSTM on copy memory
# at $T = 400$ (420 steps) took about 14 ms with the hand-written backward, the GRU about the
# same, the minGRU 9 ms, the minLSTM 18 ms and the tanh RNN 6 ms (measured while other jobs ran).

# %%
H = 16 if SMALL else 32
BATCH = 32
SEEDS = [0] if SMALL else [0, 1, 2]
EVAL_EVERY = 50 if SMALL else 100
N_TEST = 128 if SMALL else 512
MAX_STEPS = {"adding": 3000, "copy_memory": 2000, "temporal_order": 3000}
if SMALL:
    MAX_STEPS = {name: 100 for name in MAX_STEPS}
LAGS = [10] if SMALL else [10, 30, 100, 300]
CLIP = 1.0
BACKWARD = "bptt"
CELLS = {
    "tanh": lambda: jrnn.VanillaCell(H),
    "lstm": lambda: jrnn.LSTMCell(H),
    "gru": lambda: jrnn.GRUCell(H),
    "mingru": lambda: jrnn.MinGRUCell(H),
    "minlstm": lambda: jrnn.MinLSTMCell(H),
}
STEP_SIZES = [1e-2, 1e-3]  # the same for every cell, tried in this order
if SMALL:  # a check that the code runs: three cells, one step size
    CELLS = {name: CELLS[name] for name in ("tanh", "gru", "mingru")}
    STEP_SIZES = STEP_SIZES[:1]
COLORS = {"tanh": "tab:blue", "lstm": "tab:green", "gru": "tab:red", "mingru": "tab:purple", "minlstm": "tab:brown"}
NUM_SYMBOLS, COPY_LEN = 8, 10
COPY_CHANCE_ACCURACY = 1 / NUM_SYMBOLS
COPY_SOLVED_ACCURACY = 0.99

# %% [markdown]
# ## The tasks and their baselines
#
# Each task maps a key, a batch size and $T$ to `(xs, targets)`. The adding problem is scored
# by MSE at the last step; copy memory by cross-entropy at every step (the blank is the target
# everywhere but in the last 10 steps); temporal order by cross-entropy at the last step. Each
# run is judged on one number, `metric` below, against the criterion that drives the sweep
# (`met`): the MSE relative to the baseline for the adding problem, the cross-entropy relative
# to the memoryless baseline for copy memory (below 1: learning), the accuracy for temporal
# order.
#
# **The copy-memory baseline for jrnn's task.** `jrnn.tasks.copy_memory(key, B, T, K=8,
# copy_len=10)` is Arjovsky et al.'s definition: the input is the 10 symbols (each uniform over
# $K = 8$), $T - 1$ blanks, the delimiter and 10 blanks, $T + 20$ steps in all; the target is
# the blank for the first $T + 10$ steps and the 10 symbols, in order, for the last 10. The
# cross-entropy is averaged over all $T + 20$ steps. A model that carries no information about
# the symbols across the lag can at best predict the blank with certainty wherever it is the
# target (the blanks' positions do not depend on the symbols: loss 0 there) and a uniform
# distribution over the 8 symbols on each of the last 10 steps (loss $\ln 8$ each, the entropy
# of a uniform symbol, which no predictor independent of the symbols can beat in expectation).
# Averaged over the sequence:
# $$\mathcal{L}_0 = \frac{10 \ln 8}{T + 20},$$
# which is `jrnn.tasks.copy_memory_baseline(T)`, exactly Arjovsky et al.'s formula. Every
# nat below it is information about the symbols carried across the lag. The check below scores
# that memoryless strategy with `jrnn.losses.cross_entropy` on held-out sequences. The copy
# accuracy of a memoryless model is $1/8$; a model that recalls $k$ of the 10 symbols and
# guesses the others scores $(k + (10 - k)/8)/10$, so 99 % means all but about 0.1 symbol.

# %%
TASKS = {
    "adding": dict(make=tasks.adding, input_size=2, output_size=1, loss="mse"),
    "copy_memory": dict(make=lambda key, batch, lag: tasks.copy_memory(key, batch, lag, NUM_SYMBOLS, COPY_LEN),
                        input_size=NUM_SYMBOLS + 2, output_size=NUM_SYMBOLS + 2, loss="cross_entropy"),
    "temporal_order": dict(make=tasks.temporal_order, input_size=len(tasks.TEMPORAL_ORDER_SYMBOLS),
                           output_size=4, loss="cross_entropy"),
}


def baseline(task, lag):
    """The loss of the best predictor that ignores the inputs (copy memory: the memoryless one)."""
    if task == "adding":
        return tasks.ADDING_BASELINE_MSE
    if task == "copy_memory":
        return tasks.copy_memory_baseline(lag, NUM_SYMBOLS, COPY_LEN)
    return tasks.TEMPORAL_ORDER_BASELINE_CE


def evaluate(task, ys, targets, lag):
    """The loss, the metric, the criteria (`solved`; `learning` on copy memory; `met`: the one
    that drives the sweep) and task-specific extras."""
    if task == "adding":
        error = ys[:, -1, 0] - targets[:, 0]
        mse = float(losses.mse(ys, targets))
        solved = mse < 0.01
        return dict(loss=mse, metric=mse / tasks.ADDING_BASELINE_MSE, solved=solved, met=solved,
                    close=float(jnp.mean(jnp.abs(error) < 0.04)),  # Hochreiter's threshold, as written
                    close_rescaled=float(jnp.mean(jnp.abs(error) < 0.08)))  # rescaled to this target
    loss = float(losses.cross_entropy(ys, targets))
    if task == "copy_memory":
        accuracy = float(jnp.mean(jnp.argmax(ys[:, -COPY_LEN:], -1) == targets[:, -COPY_LEN:]))
        recalled = COPY_LEN * (accuracy - COPY_CHANCE_ACCURACY) / (1 - COPY_CHANCE_ACCURACY)
        learning = bool(loss < baseline(task, lag))  # False when the loss is not finite
        return dict(loss=loss, metric=loss / baseline(task, lag), solved=accuracy >= COPY_SOLVED_ACCURACY,
                    learning=learning, met=learning, accuracy=accuracy, recalled=recalled)
    accuracy = float(jnp.mean(jnp.argmax(ys[:, -1], -1) == targets))
    return dict(loss=loss, metric=accuracy, solved=accuracy >= 0.95, met=accuracy >= 0.95)


for task in TASKS:
    print(f"{task:15s} chance loss at T = 10, 100, 300: "
          + ", ".join(f"{baseline(task, lag):.4f}" for lag in (10, 100, 300)))

# the memoryless copy strategy, scored by jrnn's loss: certain blank where the target is blank,
# uniform over the 8 symbols on the last 10 steps
for lag in (10, 100, 300):
    xs_check, targets_check = TASKS["copy_memory"]["make"](jax.random.PRNGKey(1), 256, lag)
    log_probs = jnp.full(targets_check.shape + (NUM_SYMBOLS + 2,), -jnp.inf)
    log_probs = log_probs.at[:, : lag + COPY_LEN, NUM_SYMBOLS].set(0.0)  # the blank, with certainty
    log_probs = log_probs.at[:, lag + COPY_LEN :, :NUM_SYMBOLS].set(-np.log(NUM_SYMBOLS))  # uniform symbols
    assert bool(jnp.all(targets_check[:, : lag + COPY_LEN] == NUM_SYMBOLS))  # the blanks' positions are fixed
    memoryless = float(losses.cross_entropy(jnp.maximum(log_probs, -1e9), targets_check))
    print(f"copy memory, T = {lag}: memoryless strategy {memoryless:.6f}, 10 ln 8 / (T + 20) = "
          f"{10 * np.log(8) / (lag + 20):.6f}, sequence length {targets_check.shape[1]}")

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
# `EVAL_EVERY` steps and stops when the run is solved. (`fit` itself runs a fixed number of
# steps, and early stopping saves most of this study's budget.) An update whose loss or gradient
# is not finite is skipped by the train step and counted; a held-out loss that is not finite
# counts as not solved (and not learning) and training goes on.

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
            result = evaluate(task, predict(params, xs_test), targets_test, lag)
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
            for lr in STEP_SIZES:
                runs = [run(cell_name, task, lag, seed, lr) for seed in SEEDS]
                results.extend(runs)
                met = sum(r["met"] for r in runs)
                any_met = any_met or met > 0
                extra = ""
                if task == "copy_memory":
                    extra = (" | accuracy " + " ".join(f"{r['accuracy']:5.3f}" for r in runs)
                             + f" | solved {sum(r['solved'] for r in runs)}/{len(runs)}")
                print(f"{task:14s} {cell_name:7s} T={lag:3d} lr={lr:.0e}: met {met}/{len(runs)} | metric "
                      + " ".join(f"{r['metric']:6.3f}" for r in runs) + extra
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
# A cell solves (copy memory: learns) $T$ when, at one of its step sizes, at least 2 of the 3
# seeds (the only seed in the small run) meet the criterion; "—" means none of the lags.

# %%
def seeds_meeting(cell_name, task, lag, key="met"):
    """The best (seeds meeting `key`, runs, step size) over the step sizes tried at this lag."""
    best = (0, 0, None)
    for lr in STEP_SIZES:
        runs = [r for r in results if (r["cell"], r["task"], r["lag"], r["lr"]) == (cell_name, task, lag, lr)]
        if runs and (sum(r[key] for r in runs), len(runs)) > best[:2]:
            best = (sum(r[key] for r in runs), len(runs), lr)
    return best


COLUMNS = [("adding", "solved"), ("copy_memory", "learning"), ("copy_memory", "solved"),
           ("temporal_order", "solved")]
largest = {}
for task, key in COLUMNS:
    for cell_name in CELLS:
        ok = [lag for lag in LAGS if seeds_meeting(cell_name, task, lag, key)[0] >= NEED]
        largest[cell_name, task, key] = max(ok) if ok else None

print(f"{'cell':8s}" + "".join(f"{task + ' ' + key:>24s}" for task, key in COLUMNS))
for cell_name in CELLS:
    print(f"{cell_name:8s}" + "".join(f"{'—' if largest[cell_name, t, k] is None else largest[cell_name, t, k]:>24}"
                                      for t, k in COLUMNS))
print(f"(lags tried: {LAGS})")

print(f"\nseeds meeting the criterion at the better step size (x/{len(SEEDS)}, '*': at the second step size), "
      "'.' = not run:")
for task, key in COLUMNS:
    print(f"{task} ({key}): T = {LAGS}")
    for cell_name in CELLS:
        cells = []
        for lag in LAGS:
            k, n, lr = seeds_meeting(cell_name, task, lag, key)
            star = "*" if lr is not None and lr != STEP_SIZES[0] and k else " "
            cells.append(f"{k}/{n}{star}" if n else "  . ")
        print(f"   {cell_name:8s}", "  ".join(cells))

# %%
METRIC_LABEL = {"adding": "held-out MSE / 0.167 (chance)",
                "copy_memory": "cross-entropy / memoryless baseline", "temporal_order": "accuracy"}
fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
for col, task in enumerate(TASKS):
    ax_metric, ax_steps = axes[0, col], axes[1, col]
    for i, cell_name in enumerate(CELLS):
        runs = [r for r in results if (r["cell"], r["task"]) == (cell_name, task)]
        if not runs:
            continue
        jitter = 1 + 0.04 * (i - (len(CELLS) - 1) / 2)
        lags = np.array([r["lag"] for r in runs], float) * jitter
        metric = np.array([r["metric"] for r in runs])
        metric = np.where(np.isfinite(metric), np.minimum(metric, 10.0), 10.0)  # diverged runs drawn at 10
        met = np.array([r["met"] for r in runs])
        ax_metric.scatter(lags[met], metric[met], color=COLORS[cell_name], s=22, label=cell_name)
        ax_metric.scatter(lags[~met], metric[~met], facecolor="none", edgecolor=COLORS[cell_name], s=22)
        best = {lag: min(10.0, (max if task == "temporal_order" else min)(r["metric"] for r in runs if r["lag"] == lag))
                for lag in sorted({r["lag"] for r in runs})}
        ax_metric.plot(np.array(list(best)) * jitter, list(best.values()), color=COLORS[cell_name], lw=1)
        steps = np.array([r["steps"] for r in runs])
        solved = np.array([r["solved"] for r in runs])
        ax_steps.scatter(lags[solved], steps[solved], color=COLORS[cell_name], s=22, label=cell_name)
        ax_steps.scatter(lags[~solved], steps[~solved], marker="x", color=COLORS[cell_name], s=22)
    if task == "adding":
        ax_metric.axhline(1.0, color="gray", ls=":", lw=1)
        ax_metric.axhline(0.01 / tasks.ADDING_BASELINE_MSE, color="k", ls="--", lw=0.8)
        ax_metric.set_yscale("log")
    elif task == "copy_memory":
        ax_metric.axhline(1.0, color="k", ls="--", lw=0.8)
        ax_metric.set_yscale("log")
    else:
        ax_metric.axhline(tasks.TEMPORAL_ORDER_BASELINE_ACCURACY, color="gray", ls=":", lw=1)
        ax_metric.axhline(0.95, color="k", ls="--", lw=0.8)
    ax_metric.set(xscale="log", title=task, xlabel="lag T", ylabel=METRIC_LABEL[task])
    ax_steps.set(xscale="log", yscale="log", xlabel="lag T",
                 ylabel="steps run (dot: solved; x: not solved by the cap)" if col == 0 else None)
    ax_metric.legend(fontsize=8)
fig.suptitle("every run (both step sizes); top: filled = criterion (dashed) met (copy: learning, below the "
             "memoryless baseline), open = not met; dotted: chance; line: best run per lag; diverged runs drawn "
             "at 10", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Copy memory, both criteria
#
# Per cell, lag and step size run: how many seeds learn (cross-entropy below the memoryless
# baseline at the last evaluation) and solve (accuracy ≥ 99 % on the copied symbols), the
# cross-entropy relative to the baseline, the accuracy, and the symbols (of 10) carried across
# the lag, $10 \cdot (\text{accuracy} - 1/8) / (7/8)$, per seed:

# %%
for cell_name in CELLS:
    for lag in LAGS:
        for lr in STEP_SIZES:
            runs = [r for r in results if (r["cell"], r["task"], r["lag"], r["lr"]) == (cell_name, "copy_memory", lag, lr)]
            if runs:
                print(f"{cell_name:8s} T={lag:3d} lr={lr:.0e}: learning {sum(r['learning'] for r in runs)}/{len(runs)}, "
                      f"solved {sum(r['solved'] for r in runs)}/{len(runs)} | CE/baseline "
                      + " ".join(f"{r['metric']:6.3f}" for r in runs)
                      + " | accuracy " + " ".join(f"{r['accuracy']:5.3f}" for r in runs)
                      + " | symbols recalled " + " ".join(f"{r['recalled']:4.1f}" for r in runs)
                      + " | steps " + " ".join(f"{r['steps']:4d}" for r in runs))

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
    print(f"{cell_name:8s}", " | ".join(cells) if cells else "no solved run")

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
for ax, task in zip(axes, TASKS):
    met_lags = [r["lag"] for r in results if r["task"] == task and r["met"]]
    lag = max(met_lags) if met_lags else LAGS[0]
    for cell_name in CELLS:
        first = True
        for r in results:
            if (r["cell"], r["task"], r["lag"]) == (cell_name, task, lag):
                steps, metric = np.array(r["curve"]).T
                metric = np.where(np.isfinite(metric), np.minimum(metric, 10.0), 10.0)
                ax.plot(steps, metric, color=COLORS[cell_name], ls="-" if r["lr"] == STEP_SIZES[0] else "--",
                        label=cell_name if first else None)
                first = False
    if task in ("adding", "copy_memory"):
        ax.set_yscale("log")
    if task == "copy_memory":
        ax.axhline(1.0, color="k", ls="--", lw=0.8)
    ax.set(title=f"{task}, T = {lag}", xlabel="step", ylabel=METRIC_LABEL[task])
    ax.legend(fontsize=8)
fig.suptitle("held-out metric during training at the longest lag where any run met the criterion (dashed: second "
             "step size; diverged: drawn at 10)", fontsize=10)
fig.tight_layout()
plt.show()

# %%
load = os.getloadavg()[1] if hasattr(os, "getloadavg") else float("nan")
print(f"sweep time: {sweep_seconds / 60:.1f} min wall clock, {sweep_cpu_seconds / 60:.1f} min of CPU time, on "
      f"{os.cpu_count()} CPU cores (load average over the last 5 minutes: {load:.1f})")
for task in TASKS:
    seconds = sum(r["seconds"] for r in results if r["task"] == task)
    print(f"  {task:15s} {seconds / 60:5.1f} min, {sum(r['task'] == task for r in results)} runs")
for cell_name in CELLS:
    runs = [r for r in results if r["cell"] == cell_name]
    print(f"  {cell_name:8s} {sum(r['seconds'] for r in runs) / 60:5.1f} min, {len(runs)} runs, "
          f"{sum(r['steps'] for r in runs)} training steps")

# %% [markdown]
# ## Conclusion
#
# *(Written after running the notebook; the numbers are those printed above.)*
#
# Largest lag solved, out of $T \in \{10, 30, 100, 300\}$ (2 of 3 seeds at one of the two step
# sizes; 32 units; every cell with the same budget: at most 3000 steps of 32 sequences per run,
# 2000 on copy memory):
#
# | cell | adding (MSE < 0.01) | copy memory, learning (CE below $10 \ln 8/(T+20)$) | copy memory, solved (accuracy ≥ 99 %) | temporal order (accuracy ≥ 95 %) |
# |---|---|---|---|---|
# | tanh RNN | 10 | none | none | 30 |
# | LSTM | 300 | 30 | none | 100 |
# | GRU | 300 | 300 | none | 100 |
# | minGRU | 300 | 300 | none | 100 |
# | minLSTM | 300 | 300 | none | 100 |
#
# * **"A plain RNN remembers only about 10 to 20 steps."** True of the tanh RNN trained this
#   way: it solved the adding problem at $T = 10$ (3/3 seeds) but not at 30 (0/3 at both step
#   sizes, best held-out MSE 9.5 % of the baseline), temporal order up to $T = 30$ (3/3) but not
#   100 (accuracy 0.24 to 0.28, chance 0.25), and on copy memory only 1 seed of 3 got below the
#   memoryless baseline at $T = 10$ (CE 0.982 of the baseline) and at 30 (0.993); at 100 none did.
# * **"The GRU handles long dependencies worse than the LSTM."** Not in these runs. On the adding
#   problem both reached $T = 300$, the GRU with 3/3 seeds in 400 to 500 steps, the LSTM with 2/3
#   in 2400 and 2500 steps (the third seed stopped at the cap, MSE 90 % of the baseline). On copy
#   memory the GRU learned at every lag up to 300 (3/3, CE 0.80 to 0.91 of the baseline there)
#   and the LSTM only up to 30: at $T = 100$ its three seeds ended at 1.002 to 1.003 of the
#   baseline with step $10^{-2}$ and 1.012 to 1.034 with $10^{-3}$. On temporal order both
#   reached 100 and neither 300. The GRU was ahead on one task of three and level on the two
#   others.
# * **The minimal cells hold their own on these tasks.** minGRU and minLSTM, one layer each,
#   matched the GRU's frontier everywhere: adding at 300 (3/3, 900 to 1200 steps), copy learning
#   at 300 (3/3), temporal order at 100 (3/3, where the GRU had 2/3). On copy memory they
#   settled on the same point at every lag: accuracy 0.295 to 0.328, i.e. 1.9 to 2.3 of the 10
#   symbols carried across the lag, and CE 0.77 to 0.82 of the baseline, from $T = 10$ to
#   $T = 300$ alike, whereas the GRU's and LSTM's recall fell with the lag (GRU seed 0: 3.6
#   symbols at $T = 10$, 2.3 at 300). On the adding problem, when they stopped at the criterion,
#   26 to 42 % of the test sequences were within Hochreiter's 0.04, against 22 to 74 % for the
#   LSTM and GRU.
# * **Copy memory is not solved by any cell within this budget.** No run, at any lag, reached
#   99 % of the copied symbols; the best was the GRU at $T = 10$ with 43.7 % (3.6 symbols). The
#   *learning* criterion separates the cells; the *solved* one, at this budget, does not.
# * **The step size moves the frontier.** The LSTM solved temporal order at $T = 100$ only with
#   $10^{-3}$ (3/3, in 300 to 500 steps; 1/3 with $10^{-2}$). Every other entry of the table came
#   from the first step size, $10^{-2}$.
# * **Against the published results.** Hochreiter and Schmidhuber's LSTM solved the adding
#   problem at $T = 1000$ and temporal order at about 100; ours solved adding at 300, the longest
#   lag tried, and temporal order at 100. Our runs stop at MSE 0.01, when 31 to 74 % of the test
#   sequences are within 0.04 for the LSTM (59 to 94 % within 0.08, their threshold rescaled to
#   this target), so by their criterion, every sequence correct, none of our runs had finished.
#   As Arjovsky et al. found, the LSTM stayed at the memoryless baseline on copy memory at long
#   lags (here from $T = 100$, within 2000 steps).
# * **Budget.** The 198 runs took 49.4 min of wall-clock time and 34.3 min of CPU time on this
#   shared 2-core machine, with other jobs running (load average 12.1 at the end): over the
#   40-minute aim in wall-clock time. Temporal order took 29.5 min of it, most of which went to
#   the runs that failed at $T = 300$ (1.8 to 4.5 min per cell and step size). Every frontier
#   above is a lower bound: with the criterion checked as training goes, more steps or more step
#   sizes could only move it out.
