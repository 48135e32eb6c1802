"""``benchmarks/gpu_run.sh`` and ``benchmarks/gpu.py`` on a CPU (``INSTALL=0``, ``--dry-run``): the dry run writes its JSON and markdown, checks every peer that
can run against jrnn before timing it, reports the CUDA peers as unavailable (not faked), and
resumes by case; the grid covers what the GPU benchmark promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    env = {**os.environ, "OUT": str(out), "INSTALL": "0", "PYTHON": sys.executable, "MPLBACKEND": "Agg"}
    env.pop("JRNN_PALLAS_INTERPRET", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), "--dry-run"],
                          cwd=out, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "gpu_run.log").read_text()
    assert "running the grid with --budget-s" in log and "GPU correctness tests: exit" in log
    assert "skipped" in (out / "gpu_tests.log").read_text()  # the real-GPU tests, on a CPU
    return out, json.loads((out / "gpu.json").read_text())


def test_dry_run_writes_json_and_markdown_with_every_case(dry_run):
    out, result = dry_run
    assert result["benchmark"] == "gpu" and result["mode"] == "dry-run" and "skipped" not in result
    assert [r["key"] for r in result["cases"]] == [gpu.case_key(c, "short") for c in gpu.dry_cases()]
    assert result["remaining"] == []
    assert result["environment"]["jax_backend"] == "cpu"
    md = (out / "gpu.md").read_text()
    assert md.startswith("## GPU") and "these times are not GPU numbers" in md


def test_dry_run_checks_peers_against_jrnn_before_timing_them(dry_run):
    _, result = dry_run
    for r in result["cases"]:
        peers, timed = r["peers"], r["timings"]["train"]
        assert "jrnn" in timed
        for name in ("jrnn-bptt", "jrnn-pallas"):  # the Pallas kernels run in the interpreter
            check = peers[name]["check"]
            assert check["ok"] and check["grads"] <= check["tolerance"] and check["outputs"] <= check["tolerance"]
            assert name in timed and name in r["timings"]["infer"]
        for name in [p for p in peers if p not in ("jrnn", "jrnn-bptt", "jrnn-pallas")]:
            assert not peers[name]["available"] and name not in timed  # reported, not faked
    lstm = result["cases"][0]["peers"]
    assert "cuDNN needs a GPU" in lstm["jrnn-cudnn"]["reason"]
    assert "CUDA" in lstm["cudnn"]["reason"]
    assert "CUDA" in lstm["torch-cuda"]["reason"] or "torch is not installed" in lstm["torch-cuda"]["reason"]
    gru = result["cases"][1]["peers"]
    assert "must be a LSTMCell" in gru["jrnn-cudnn"]["reason"]


def test_dry_run_resumes_by_case_and_stops_at_its_budget(dry_run, tmp_path, monkeypatch):
    out, first = dry_run
    monkeypatch.setenv("JRNN_PALLAS_INTERPRET", "1")
    again = gpu.run(out, dry_run=True, show_progress=False)
    assert again["resumed"] == len(gpu.dry_cases()) and again["remaining"] == []
    assert [r["key"] for r in again["cases"]] == [r["key"] for r in first["cases"]]
    assert again["cases"][0]["timings"] == first["cases"][0]["timings"]  # kept, not run again
    fresh = gpu.run(tmp_path, dry_run=True, show_progress=False, budget_s=0.0)
    assert fresh["cases"] == [] and len(fresh["remaining"]) == len(gpu.dry_cases())
    assert json.loads((tmp_path / "gpu.json").read_text())["remaining"] == fresh["remaining"]


def test_grid_covers_the_promised_cases():
    cases = gpu.grid()
    keys = [gpu.case_key(c, "short") for c in cases]
    assert len(keys) == len(set(keys))
    assert {c.cell for c in cases} == {"vanilla", "lstm", "gru"}
    assert {c.dtype for c in cases} == {"float32", "bfloat16"}
    assert {(c.layers, c.bidirectional) for c in cases} == {(1, False), (2, False), (1, True), (2, True)}
    shapes = {c.shape for c in cases}
    assert set(gpu.NAMED_SHAPES) <= shapes
    long = [c for c in cases if c.T >= 1000 and c.B <= 4]
    assert {c.B for c in long} >= {1, 4} and {c.T for c in long} >= {1000, 10000} and {c.H for c in long} >= {32, 512}
    assert cases.index(gpu.Case("lstm", 1, False, *gpu.NAMED_SHAPES[0])) == 0  # the first pass starts small


def test_gpu_run_script_is_executable():
    assert os.access(ROOT / "benchmarks" / "gpu_run.sh", os.X_OK)
