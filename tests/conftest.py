"""Test-wide settings: float64 available everywhere (gradient checks run in float64), and implicit
rank promotion raising, so that a silent broadcast such as ``(T, B, G) + (G,)`` fails a test."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
    """Drop compiled executables after each test module, so that one long test process does not
    accumulate thousands of them (memory, and XLA's own caches)."""
    yield
    jax.clear_caches()
