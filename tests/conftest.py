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
    """Seeds Python, NumPy and the backend before every test; afterwards
    the global dtype policy is float32 again (a command run in-process may
    have chosen mixed precision for this CPU)."""
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def dtype_policy():
    """Yields `set(name)`; the global policy is float32 again afterwards.

    Usage: `def test_x(dtype_policy): dtype_policy("mixed_float16")`.
    """
    try:
        yield keras.config.set_dtype_policy
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def bundled(tmp_path_factory):
    """(tokenizer, corpus): the bundled corpus with a small trained
    vocabulary, tokenized once per test session."""
    from kerasbert.config import DataConfig
    from kerasbert.data.corpus import prepare_corpus

    cache = tmp_path_factory.getbasetemp() / "kerasbert-cache"
    return prepare_corpus(
        DataConfig(vocab_size=1000, cache_dir=str(cache)), progress=False
    )


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Runs a command's main under run_cli, as `python -m` does, with its
    own token cache; returns (exit code, stdout, stderr)."""
    from kerasbert.errors import run_cli

    monkeypatch.setenv("KERASBERT_CACHE", str(tmp_path / "cache"))

    def run(main, argv):
        try:
            code = run_cli(main, [str(a) for a in argv]) or 0
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A backbone-only model directory (as `convert` writes one), tiny and
    random: adapt runs all three stages from it."""
    from tiny_finetune import make_source_model

    path = tmp_path_factory.mktemp("source") / "model"
    make_source_model(str(path), path.parent / "cache")
    return path
