"""The model and its training step are backend-neutral (`keras.ops` only).

GPU machines this project borrows have JAX but no TensorFlow, so the
pretrainer, its loss and metrics and the optimizer must train under
`KERAS_BACKEND=jax` without importing TensorFlow. A subprocess (the backend
is fixed at Keras' import) refuses every `tensorflow` import and trains the
tiny pretrainer on one synthetic batch.
"""

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_TRAIN_UNDER_JAX = textwrap.dedent("""
    import json, sys

    attempts = []

    class NoTensorFlow:  # records and refuses any import of TensorFlow
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tensorflow":
                attempts.append(name)
                raise ImportError(f"{name} refused by the test")

    sys.meta_path.insert(0, NoTensorFlow())
    import keras

    from kerasbert.modeling import build_pretrainer
    from kerasbert.training.optimization import make_optimizer
    sys.path.insert(0, sys.argv[1])  # benchmarks/: its synthetic batch
    from throughput import synthetic_batch

    model = build_pretrainer(
        vocabulary_size=31, hidden_dim=8, num_layers=2, num_heads=2,
        intermediate_dim=12, max_sequence_length=16)
    model.compile(optimizer=make_optimizer("adamw", 1e-2, 8))
    x, y = synthetic_batch(8, 16, 3, 31)
    history = model.fit(x, y, batch_size=8, epochs=8, verbose=0)
    print(json.dumps({
        "backend": keras.config.backend(),
        "loss": history.history["loss"],
        "mlm_accuracy": history.history["mlm_accuracy"],
        "attempts": attempts,
        "loaded": sorted(m for m in sys.modules
                         if m.split(".")[0] == "tensorflow"),
    }))
""")


def test_pretrainer_trains_under_jax_without_tensorflow():
    env = dict(
        os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _TRAIN_UNDER_JAX,
            os.path.join(ROOT, "benchmarks"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["backend"] == "jax"
    assert got["attempts"] == [] and got["loaded"] == [], got
    loss = got["loss"]
    assert all(v == v and abs(v) < 1e6 for v in loss), loss  # finite
    # One batch seen 8 times at a high learning rate: the loss falls.
    assert loss[-1] < loss[0] - 0.2, loss


_PACKED_UNDER_JAX = textwrap.dedent("""
    import json, sys

    import keras

    sys.path.insert(0, sys.argv[1])  # tests/: the packed-row case
    from packed_case import compare

    print(json.dumps({
        "backend": keras.config.backend(),
        "results": {
            f"{dtype} {dropout}": compare(dropout, dtype)
            for dtype in ("float32", "mixed_bfloat16")
            for dropout in (0.0, 0.1)  # fused, explicit attention
        },
    }))
""")


def test_packed_rows_under_jax_equal_one_text_per_row():
    env = dict(
        os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT
    )
    result = subprocess.run(
        [sys.executable, "-c", _PACKED_UNDER_JAX, os.path.join(ROOT, "tests")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["backend"] == "jax"
    for case, r in got["results"].items():
        tol = 1e-5 if case.startswith("float32") else 2e-2 * r["scale"]
        assert r["logits"] <= tol and r["loss"] <= tol, (case, r)
        assert r["leak"] <= 1e-6 and r["moved"] > 0.01, (case, r)
