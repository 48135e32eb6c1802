"""Test-wide settings: float64 available everywhere (gradient checks run in float64)."""

import jax

jax.config.update("jax_enable_x64", True)
