"""The scripts under ``examples/`` run and reach what their docstrings promise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sequence_classification_learns_the_digits(capsys):
    accuracy = load("sequence_classification").main(["--steps", "200", "--hidden", "16"])
    printed = capsys.readouterr().out
    assert f"test accuracy: {accuracy:.3f}" in printed
    assert "steps run: " in printed
    # ten classes: chance is 0.1; the pooled bidirectional GRU reaches well above 0.9 in 200 steps
    assert accuracy > 0.85, accuracy
