"""Shared pytest setup: backend, quiet TF logs, seeds, dtype policy reset.

The environment variables are set at import time, before any test module
imports keras or tensorflow.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def seed():
    """Seeds Python, NumPy and the backend before every test."""
    keras.utils.set_random_seed(1234)


@pytest.fixture
def dtype_policy():
    """Yields `set(name)`; the global policy is float32 again afterwards.

    Usage: `def test_x(dtype_policy): dtype_policy("mixed_float16")`.
    """
    try:
        yield keras.config.set_dtype_policy
    finally:
        keras.config.set_dtype_policy("float32")
