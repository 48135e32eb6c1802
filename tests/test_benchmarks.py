"""The benchmark suite: ``python -m benchmarks --quick`` writes well-formed results; the peers
compute what jrnn computes; ``jrnn bench`` runs the suite of a source checkout; the A/B runner of
``benchmarks.versions`` compares two versions. No timing assertions: the machine is shared and
timings are not a test."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common, numpy_rnn, runner  # noqa: E402
from benchmarks.peers import CELL_KINDS, PEERS, Case, Unavailable, make_problem  # noqa: E402
from benchmarks.speed import check, reference_of  # noqa: E402

import jrnn  # noqa: E402
from jrnn import cli  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# Helpers


def test_fit_exponent_recovers_a_power_law():
    x = np.array([10.0, 20, 40, 80])
    fit = common.fit_exponent(x, 3.0 * x**1.5)
    assert fit["exponent"] == pytest.approx(1.5)
    assert fit["prefactor"] == pytest.approx(3.0)
    assert fit["r2"] == pytest.approx(1.0)


def test_geomean_and_relative_error():
    assert common.geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert math.isnan(common.geomean([]))
    assert common.max_rel_error([np.array([1.0, 2.0])], [np.array([1.0, 2.2])]) == pytest.approx(0.2 / 2.2)
    assert common.max_rel_error([np.zeros(2)], [np.zeros(3)]) == math.inf


def test_measure_interleaves_and_summarizes():
    calls = []
    result = common.measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, min_block_s=0.0)
    assert set(result) == {"a", "b"}
    for r in result.values():
        assert len(r["samples_s"]) == 3 and r["q25_s"] <= r["median_s"] <= r["q75_s"]
    assert calls.count("a") == calls.count("b")


# --------------------------------------------------------------------------------------------
# The NumPy hand BPTT peer, against jax.grad in float64


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_numpy_hand_bptt_matches_autodiff(kind, layers, bidirectional):
    model = jrnn.RNN(jrnn.make_cell(kind, 5), num_layers=layers, bidirectional=bidirectional)
    params = model.init(jax.random.PRNGKey(1), 3, dtype=jnp.float64)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((2, 6, 3))
    target = rng.standard_normal((2, 6, model.top_size))

    def loss_fn(p):
        return jnp.mean((model.apply(p, xs)[0] - target) ** 2)

    want_loss, want = jax.value_and_grad(loss_fn)(params)
    to_np = lambda p: tuple(np.asarray(a) for a in p if a is not None)  # noqa: E731
    layers_np = [tuple(to_np(d) for d in p) if bidirectional else to_np(p) for p in params.layers]
    loss, grads = numpy_rnn.mse_value_and_grad(kind, layers_np, xs, target, bidirectional)
    flat = [a for g in grads for d in (g if bidirectional else [g]) for a in d]
    assert loss == pytest.approx(float(want_loss), rel=1e-12)
    for got, w in zip(flat, jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(got, np.asarray(w), rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Every peer computes jrnn's loss, gradients and outputs from converted weights


PEER_CASES = [pytest.param("lstm", 2, True, id="lstm-2L-bi")] + [
    pytest.param(kind, layers, bi, id=f"{kind}-{layers}L{'-bi' if bi else ''}", marks=pytest.mark.slow)
    for kind in CELL_KINDS for layers, bi in [(1, False), (2, True)] if (kind, layers) != ("lstm", 2)
]


@pytest.mark.parametrize("kind,layers,bidirectional", PEER_CASES)
def test_peers_agree_with_jrnn(kind, layers, bidirectional):
    problem = make_problem(Case(kind, layers, bidirectional, 3, 7, 4, 5))
    reference = reference_of(PEERS["jrnn"](problem))
    checked = []
    for name in ("torch", "flax", "equinox", "numpy", "jrnn-bptt"):
        try:
            built = PEERS[name](problem)
        except Unavailable:
            continue
        result = check(built, reference)
        assert result["ok"], (name, result)
        checked.append(name)
    assert "numpy" in checked


def test_a_wrong_peer_fails_the_check():
    problem = make_problem(Case("lstm", 1, False, 2, 5, 3, 4))
    reference = reference_of(PEERS["jrnn"](problem))
    built = PEERS["numpy"](problem)
    right = built.check_train
    built.check_train = lambda: (right()[0], [g * 1.01 for g in right()[1]])
    assert not check(built, reference)["ok"]


def test_cudnn_weight_packing_matches_the_reference_lstm():
    from jax.experimental import rnn

    from benchmarks.peers import cudnn_weights

    for layers, bidirectional in [(1, False), (2, True)]:
        problem = make_problem(Case("lstm", layers, bidirectional, 3, 7, 4, 5))
        W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(cudnn_weights(problem), 4, 5, layers, bidirectional)
        zeros = jnp.zeros(((2 if bidirectional else 1) * layers, 3, 5))
        ys = rnn.lstm_ref(jnp.asarray(problem.xs), zeros, zeros, W_ih, W_hh, b_ih, b_hh,
                          jnp.full((3,), 7, jnp.int32), 4, 5, layers, 0.0, bidirectional)[0]
        np.testing.assert_allclose(np.asarray(ys), reference_of(PEERS["jrnn"](problem), ("infer",))["ys"], atol=1e-5)


# --------------------------------------------------------------------------------------------
# The runner


def test_training_default_targets_are_judged_on_the_worst_and_the_mean_shape():
    from benchmarks import speed

    def case(bptt, torch, torch_1t, flax, numpy):
        t = {"jrnn": 1.0, "jrnn-bptt": bptt, "torch": torch, "torch-1t": torch_1t, "flax": flax, "numpy": numpy}
        timings = {name: {"median_s": v} for name, v in t.items()}
        ratios = {name: v / t["jrnn"] for name, v in t.items()}
        return {"timings": {"train": timings, "infer": timings}, "ratios": {"train": ratios, "infer": ratios}}

    peers = ["jrnn", "jrnn-bptt", "torch", "torch-1t", "flax", "numpy"]
    # torch-best / bptt: 2.0 (its 1-thread time counts), then 0.9: every-shape target missed, geomean 1.34
    results = [case(0.5, 1.5, 1.0, 1.0, 2.0), case(1.0, 0.9, 3.0, 1.2, 3.0)]
    targets = {t["target"]: t for t in speed.summarize(results, peers)["targets_default"]}
    every = targets["the training default at most 1.0x PyTorch's time on every shape"]
    assert every["value"] == pytest.approx(0.9) and every["met"] is False
    mean = targets["the training default at most 0.8x PyTorch's time on the geometric mean"]
    assert mean["value"] == pytest.approx(math.sqrt(2.0 * 0.9)) and mean["met"] is True
    flax = targets["the training default at least 1.5x faster than Flax nn.RNN (geomean)"]
    assert flax["value"] == pytest.approx(math.sqrt(2.0 * 1.2)) and flax["met"] is True
    assert len(targets) == len(speed.TARGETS_DEFAULT)


def test_the_speed_grid_has_the_large_hidden_shapes():
    from benchmarks import speed

    shapes = {(c.cell, c.shape) for c in speed.default_cases() if c.layers == 1 and not c.bidirectional}
    for shape in [(64, 50, 300, 1024), (32, 50, 300, 2048)]:
        assert {(cell, shape) for cell in CELL_KINDS} <= shapes


def _dot_flops(jaxpr, times: int = 1) -> int:
    """FLOPs of every dot_general in a jaxpr, a scan's body counted once per step."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            contracted = math.prod(lhs[d] for d in lc)
            out = math.prod(eqn.outvars[0].aval.shape)
            total += 2 * out * contracted * times
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _dot_flops(sub, times * (eqn.params["length"] if eqn.primitive.name == "scan" else 1))
    return total


@pytest.mark.parametrize("kind,layers,bidirectional,D", [("vanilla", 1, False, 5), ("lstm", 2, True, 5),
                                                         ("lstm", 1, False, 9), ("gru", 2, False, 5)])
def test_roofline_counts_the_products_the_gradient_runs(kind, layers, bidirectional, D):
    """``roofline.products`` against the dot products of the traced training gradient (the LSTM's
    weight gradients stacked in one product at D = 5 < H, two at D = 9 and in the bidirectional
    second layer)."""
    from benchmarks import roofline

    case = Case(kind, layers, bidirectional, 3, 7, D, 6)
    problem = make_problem(case)

    def loss(params, xs):
        ys, _ = problem.model.apply(params, xs, backward="bptt")
        return jnp.mean((ys - problem.target) ** 2)

    # with the inputs differentiated too, the first layer's input gradient is live: add it
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(problem.params, jnp.asarray(problem.xs)).jaxpr
    G = roofline.GATE_BLOCKS[kind] * case.H
    first_input_gradient = 2 * case.T * case.B * G * case.D * (2 if bidirectional else 1)
    assert _dot_flops(jaxpr) == roofline.flops(case) + first_input_gradient


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_roofline_reserve_is_what_the_forward_keeps(kind):
    from benchmarks import roofline
    from jrnn import scan

    case = Case(kind, 1, False, 3, 7, 5, 6)
    problem = make_problem(case)
    cell, params = problem.model.cell, problem.params.layers[0]
    xs = jnp.swapaxes(jnp.asarray(problem.xs), 0, 1)
    kept = scan.forward(cell, params, xs, cell.initial_carry((case.B,)), None, keep="reserve")[2]
    assert roofline.reserve_bytes(case) == sum(a.nbytes for a in jax.tree_util.tree_leaves(kept))


def test_runner_rejects_unknown_benchmarks(capsys):
    parser = runner.configure_parser(__import__("argparse").ArgumentParser())
    assert runner.run(parser.parse_args(["--only", "speed,nope"])) == 2
    assert "nope" in capsys.readouterr().err


def test_only_refreshes_its_benchmarks_and_keeps_the_others(tmp_path):
    """``--only gpu`` (skipped without a GPU, instant) rewrites gpu.* and the summary, which still
    holds the tables of the benchmarks run earlier into the same folder."""
    (tmp_path / "speed.json").write_text(json.dumps({"command": "jrnn bench --only speed", "environment": {"date_utc": "d"}}))
    (tmp_path / "speed.md").write_text("## Speed\n\nan earlier table\n")
    parser = runner.configure_parser(__import__("argparse").ArgumentParser())
    assert runner.run(parser.parse_args(["--only", "gpu", "--out", str(tmp_path), "--no-progress"])) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "an earlier table" in summary and "## GPU" in summary
    assert summary.index("## Speed") < summary.index("## GPU")  # in BENCHMARKS order
    runs = json.loads((tmp_path / "index.json").read_text())["runs"]
    assert runs["speed"]["command"] == "jrnn bench --only speed" and runs["gpu"]["ok"]


def test_jrnn_bench_runs_the_suite_of_the_checkout(tmp_path):
    """From a source checkout ``jrnn bench`` runs ``python -m benchmarks`` there, from any folder,
    with ``--out`` relative to where it was called (``gpu`` is skipped without a GPU: fast)."""
    proc = subprocess.run(
        [sys.executable, "-m", "jrnn.cli", "bench", "--only", "gpu", "--out", "res", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = json.loads((tmp_path / "res" / "index.json").read_text())
    assert list(index["benchmarks"]) == ["gpu"] and index["benchmarks"]["gpu"]["ok"]
    assert index["command"] == f"python -m benchmarks --only gpu --out {tmp_path / 'res'}"
    assert (tmp_path / "res" / "gpu.md").read_text().startswith("## GPU")


def test_jrnn_bench_passes_the_runner_exit_status():
    assert cli.main(["bench", "--only", "nope"]) == 2


def test_jrnn_bench_without_a_checkout_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_bench_checkout", lambda: tmp_path)  # as from an installed wheel
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "source checkout" in err and "git clone" in err and "python -m benchmarks" in err
    assert not list(tmp_path.iterdir())


def test_jrnn_bench_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--only", "--out", "--no-progress"):
        assert option in out
    assert all(name in out for name in runner.BENCHMARKS)


def test_versions_compares_base_and_working_tree(tmp_path):
    """``benchmarks.versions`` against HEAD at the tiniest settings: every case and mode timed in
    both versions, finite ratios, the commits recorded."""
    modes = ["infer", "train-bptt", "train-vg"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.versions", "--base", "HEAD", "--quick", "--rounds", "1", "--samples", "1",
         "--min-block-s", "0.005", "--modes", ",".join(modes), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from benchmarks import versions

    result = json.loads((tmp_path / "versions.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert result["base"]["commit"] == head and result["new"]["commit"] == head
    assert "tree-base" in result["base"]["jrnn_file"] and result["new"]["jrnn_file"].startswith(str(ROOT))
    want = {(c.label, m) for c in versions.cases(quick=True) for m in modes}
    assert {(r["label"], r["mode"]) for r in result["rows"]} == want
    for row in result["rows"]:
        assert row["ratio"] is not None and math.isfinite(row["ratio"]) and row["ratio"] > 0, row
        for v in ("base", "new"):
            assert row[v]["median_s"] > 0 and len(row[v]["rounds_s"]) == 1
    assert set(result["summary"]) == {*modes, "all"} and math.isfinite(result["summary"]["all"]["geomean"])
    md = (tmp_path / "versions.md").read_text()
    assert "| case | mode | base | new | new/base |" in md


def test_results_record_the_command_as_typed(monkeypatch):
    """A module run with ``python -m benchmarks.X`` has its file as ``sys.argv[0]``; the results
    name the command, not the file."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "parallel.py"), "--quick"])
    assert common.command() == "python -m benchmarks.parallel --quick"
    assert common.environment()["command"] == "python -m benchmarks.parallel --quick"
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "__main__.py"), "--only", "speed"])
    assert common.command() == "python -m benchmarks --only speed"
    monkeypatch.setattr(sys, "argv", ["python", "-m", "benchmarks", "--quick"])  # as the runner sets it
    assert common.command() == "python -m benchmarks --quick"


@pytest.mark.slow
def test_quick_suite_writes_well_formed_results(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-progress", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = json.loads((out / "index.json").read_text())
    assert set(index["benchmarks"]) == set(runner.BENCHMARKS)
    assert all(s["ok"] for s in index["benchmarks"].values()), index["benchmarks"]
    for name in runner.BENCHMARKS:
        result = json.loads((out / f"{name}.json").read_text())
        env = result["environment"]
        assert env["versions"]["jax"] and env["jax_backend"] and env["cpu_count"]
        assert (out / f"{name}.md").read_text().startswith("## ")
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert {"speed_train.png", "speed_infer.png", "memory.png", "compile.png", "scaling.png"} <= {p.name for p in out.glob("*.png")}

    speed = json.loads((out / "speed.json").read_text())
    assert {c["case"]["cell"] for c in speed["cases"]} == set(CELL_KINDS)
    for case in speed["cases"]:
        for mode in ("train", "infer"):
            assert case["timings"][mode]["jrnn"]["median_s"] > 0
            assert case["ratios"][mode]["jrnn"] == pytest.approx(1.0)
        for name, status in case["peers"].items():
            assert status["available"] or status["reason"]
            if "check" in status:
                assert status["check"]["ok"], (name, status["check"])
    assert [t["peer"] for t in speed["summary"]["targets"]]
    assert "| case |" in (out / "speed.md").read_text()

    roofline = json.loads((out / "roofline.json").read_text())
    assert len(roofline["rows"]) == len(speed["cases"])
    for row in roofline["rows"]:
        assert row["flops"] > 0 and row["attainable_s"] > 0 and row["bptt_s"] > 0
        assert row["fraction"] == pytest.approx(row["attainable_s"] / row["bptt_s"])
    assert {r["label"] for r in roofline["rows"] if "profile" in r} == {
        c["label"] for c in speed["cases"] if c["case"]["layers"] == 1 and not c["case"]["bidirectional"]}
    from benchmarks import roofline as roofline_module

    (out / "roofline.md").write_text("stale\n")
    roofline_module.main(["--render", "--out", str(out)])  # from the JSON alone, no timing
    assert "### By shape class" in (out / "roofline.md").read_text()
    assert json.loads((out / "roofline.json").read_text())["summary"] == roofline["summary"]

    memory = json.loads((out / "memory.json").read_text())
    assert {r["mode"] for r in memory["rows"]} >= {"autodiff", "remat"}
    assert all(r["peak_bytes"] > 0 for r in memory["rows"])
    compile_ = json.loads((out / "compile.json").read_text())
    assert {r["axis"] for r in compile_["rows"]} == {"T", "layers", "unroll"}
    scaling = json.loads((out / "scaling.json").read_text())
    assert set(scaling["fits"]) == {"T", "B", "H"}
    assert all({"jrnn", "jrnn-bptt", "torch"} <= set(fits) for fits in scaling["fits"].values())
    assert "| best torch / jrnn-bptt |" in (out / "scaling.md").read_text()
    quality = json.loads((out / "quality.json").read_text())
    assert quality["missing"] or {r["task"] for r in quality["rows"]} == {"adding", "copy_memory", "timing", "sine"}
    studies = quality["studies"]
    assert not [r for r in studies if "error" in r], studies
    assert {r["study"] for r in studies} == {"memory_horizon", "timing", "sine", "aapl", "sunspots"}
    assert "## Studies (notebooks 06 and 07)" in (out / "quality.md").read_text()
    sine_base = next(r for r in studies if r["study"] == "sine" and "baselines" in r and r["baselines"])["baselines"]
    # the linear AR(10) fit sees through the noise far better than persistence or the mean
    assert sine_base["noise_floor"] < sine_base["AR(10)"] < sine_base["persistence"] < sine_base["mean"]
    summary = (out / "summary.md").read_text()
    assert "Command: `python -m benchmarks --quick" in summary and "## Speed" in summary


def test_parallel_benchmark_times_every_method_and_reports_iterations(tmp_path, monkeypatch):
    from benchmarks import parallel

    monkeypatch.setattr(parallel, "CELLS", ("gru", "mingru"))
    monkeypatch.setattr(parallel, "QUICK_T", (50,))
    monkeypatch.setattr(parallel, "QUICK_H", (2,))
    result = parallel.run(tmp_path, quick=True, show_progress=False)
    rows = {(r["cell"], r["H"]): r for r in result["rows"]}
    gru = rows[("gru", 2)]
    assert set(gru["forward_s"]) == set(parallel.METHODS) and set(gru["train_s"]) == set(parallel.METHODS)
    for method in parallel.METHODS[1:]:
        info = gru["info"][method]
        assert info["converged"] and not info["fell_back"] and 1 <= info["iterations"] <= 50
        assert gru["max_abs_error"][method] < 1e-4  # float32 against the sequential scan
    mingru = rows[("mingru", 2)]
    assert mingru["info"]["quasi_newton"]["iterations"] == 1  # one exact log-space scan
    assert mingru["skipped"]["newton"] == parallel.SAME_SCAN and mingru["max_abs_error"]["quasi_newton"] < 1e-5
    # an LSTM's flat carry is (h, c): N = 2H, over the full-Jacobian bound at H = 40
    assert parallel.planned("lstm", 40, 50)["newton"].startswith("full Jacobians only")
    assert parallel.planned("vanilla", 256, 10**6)["sequential"]  # over the CPU budget: skipped
    assert all(v > 0 for v in gru["temp_bytes"].values())
    data = json.loads((tmp_path / "parallel.json").read_text())
    assert data["rows"][0]["cell"] == "gru"
    text = (tmp_path / "parallel.md").read_text()
    assert text.startswith("## Parallel in time") and "| 2 | 50 |" in text
    assert (tmp_path / "parallel.png").read_bytes()[:8] == PNG_MAGIC


def test_only_the_explicit_flag_writes_the_committed_results(capsys):
    """``jrnn bench --only ""`` used to run the whole suite into the committed benchmarks/results."""
    parser = runner.configure_parser(__import__("argparse").ArgumentParser())
    out = lambda *argv: runner._out_dir(parser.parse_args(list(argv)))  # noqa: E731
    assert out() == common.LOCAL_OUT != common.DEFAULT_OUT
    assert out("--quick") == common.DEFAULT_OUT / "quick"
    assert out("--update-results") == common.DEFAULT_OUT
    assert out("--out", "x") == Path("x")
    assert out("--update-results", "--out", "x") is None and "--update-results" in capsys.readouterr().err
    assert runner.run(parser.parse_args(["--only", ""])) == 2
    assert "--only must name benchmarks" in capsys.readouterr().err
    assert cli.main(["bench", "--only", ""]) == 2


# --------------------------------------------------------------------------------------------
# The memory-horizon study (notebook 06's protocol)


def test_copy_memory_criteria_are_the_literatures():
    from benchmarks import quality_studies

    from jrnn import tasks

    make, _, _, _, chance, evaluate = quality_studies._memory_task("copy_memory")
    lag = 30
    xs, targets = make(jax.random.PRNGKey(0), 64, lag)
    blank = jax.nn.one_hot(jnp.full(targets.shape, 8), 10)
    # memoryless: the blank with certainty until the copy, uniform over the 8 symbols during it
    memoryless = jnp.where(jnp.arange(lag + 20)[None, :, None] < lag + 10, 50.0 * blank,
                           jnp.concatenate([jnp.zeros((64, lag + 20, 8)), jnp.full((64, lag + 20, 2), -50.0)], -1))
    result = evaluate(memoryless, targets, lag)
    assert result["loss"] == pytest.approx(chance(lag), rel=1e-4)
    assert chance(lag) == pytest.approx(10 * math.log(8) / (lag + 20)) == tasks.copy_memory_baseline(lag)
    # the baseline is the infimum of the memoryless losses: a memoryless model that is not certain
    # of the blank stays above it
    unsure = jnp.where(jnp.arange(lag + 20)[None, :, None] < lag + 10, memoryless / 10, memoryless)
    result = evaluate(unsure, targets, lag)
    assert result["loss"] > chance(lag) and not result["learning"] and not result["solved"]
    perfect = 50.0 * jax.nn.one_hot(targets, 10)
    result = evaluate(perfect, targets, lag)
    assert result["learning"] and result["solved"] and result["score"] == 1.0
    # 9 of the 10 copied symbols right: learning, but short of 99 %
    wrong = perfect.at[:, -1].set(50.0 * jax.nn.one_hot((targets[:, -1] + 1) % 8, 10))
    result = evaluate(wrong, targets, lag)
    assert result["score"] == pytest.approx(0.9) and not result["solved"]


@pytest.mark.slow
def test_memory_horizon_runs_every_cell_and_variant_quickly():
    from benchmarks import quality_studies

    cells = quality_studies.MEMORY_CELLS + quality_studies.MEMORY_VARIANTS
    rows = quality_studies.memory_horizon(True, cells)
    assert [r["model"] for r in rows] == list(cells)
    for r in rows:
        assert r["task"] == "adding" and r["metric"] == "largest_lag_solved" and r["lags_tried"] == [10]
        outcome = r["per_lag"]["10"][str(quality_studies._memory_step_sizes(r["model"])[0])][0]
        assert outcome["steps"] >= 10 and math.isfinite(outcome["loss_over_chance"])
    with pytest.raises(ValueError, match="cells must be among"):
        quality_studies.memory_horizon(True, ("nope",))
    text = quality_studies.to_markdown(rows)
    assert "| adding | minGRU | largest_lag_solved |" in text


# --------------------------------------------------------------------------------------------
# Speed of the cell options (rows beside the speed grid)


def test_option_peers_compute_what_jrnn_computes():
    """Each variant's problem builds its cell; PyTorch's projected LSTM matches jrnn's, the other
    peers refuse what they do not have."""
    case = Case("lstm", 2, True, 3, 7, 4, 8, options=(("proj_size", 5),))
    assert "proj_size=5" in case.label
    problem = make_problem(case)
    assert problem.target.shape == (3, 7, 10)  # two directions of the projected output
    reference = reference_of(PEERS["jrnn"](problem))
    assert check(PEERS["jrnn-bptt"](problem), reference)["ok"]
    try:
        torch_built = PEERS["torch"](problem)
    except Unavailable:
        pass
    else:
        assert check(torch_built, reference)["ok"]
    for name in ("flax", "equinox", "numpy"):
        with pytest.raises(Unavailable):
            PEERS[name](make_problem(Case("gru", 1, False, 2, 5, 3, 4, options=(("layer_norm", True),))))
    with pytest.raises(Unavailable):
        PEERS["torch"](make_problem(Case("mingru", 1, False, 2, 5, 3, 4)))


def test_speed_options_quick_rows_pass_their_checks(tmp_path):
    from benchmarks import speed_options

    result = speed_options.run(tmp_path, quick=True, show_progress=False)
    names = [r["variant"] for r in result["rows"]]
    assert names == [speed_options.variant_name(c.cell, c.options, c.network, c.bidirectional)
                     for c, _ in speed_options.cases(True)]
    assert {"mingru", "lstm proj_size=8", "lstm input_dropout=0.25 recurrent_dropout=0.25", "lstm mask=0.2",
            "lstm bi", "lstm bi merge=sum", "lstm bi merge=mul"} <= set(names)
    for row in result["rows"]:
        assert row["peers"]["jrnn-bptt"]["check"]["ok"], row["variant"]  # bptt agrees with autodiff
        for peer, status in row["peers"].items():
            assert status["available"] or status["reason"]
            if "check" in status:
                assert status["check"]["ok"], (row["variant"], peer, status["check"])
        assert set(row["timings"]["train"]) >= {"jrnn", "jrnn-bptt"} and "jrnn" in row["timings"]["infer"]
        assert {"train jrnn", "train jrnn-bptt", "infer jrnn"} <= set(row["ratio_to_plain"])
    plain = {r["variant"]: r for r in result["rows"] if r["variant"] in ("lstm", "gru", "lstm bi")}
    assert len(plain) == 3
    assert all(v == pytest.approx(1.0) for r in plain.values() for v in r["ratio_to_plain"].values())
    torch_rows = {r["variant"] for r in result["rows"] if r["peers"]["torch"]["available"]}
    assert torch_rows in (set(), {"lstm", "gru", "lstm proj_size=8", "lstm bi"})
    text = (tmp_path / "speed_options.md").read_text()
    assert text.startswith("## Speed of the cell options") and "| mingru | gru |" in text
