"""Fixtures of the loss tests: float64 (scoped to a test, so other modules keep fp32)."""

import jax
import pytest


@pytest.fixture
def x64():
    """Runs the test with jax_enable_x64 on, restoring the previous value afterwards."""
    with jax.enable_x64(True):
        yield
