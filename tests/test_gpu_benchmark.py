"""benchmarks/gpu.py in its --smoke mode: CPU, tiny sizes, under Keras' JAX
backend (as on the GPU machines), so the script is known to run before a
GPU is at hand. Speeds are not checked, only that each path yields a row."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_benchmark_smoke():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    header, rows = lines[0], lines[1:]
    assert header["backend"] == "jax" and header["device_kind"] == "cpu"
    assert header["roof_tflops"]["bf16"] > 0
    by_path = {(r["task"], r["impl"]): r for r in rows}
    assert set(by_path) == {
        ("pretrain", "kerasbert"),
        ("pretrain", "kerashub"),
        ("finetune", "kerasbert"),
        ("finetune_epoch", "ladder"),
        ("finetune_epoch", "longest"),
    }, rows
    # The varied-length epoch: the ladder's shapes are fewer.
    ladder, longest = (
        by_path.pop(("finetune_epoch", impl)) for impl in ("ladder", "longest")
    )
    for row in (ladder, longest):
        assert "error" not in row and row["examples_per_s"] > 0, row
    assert ladder["shapes"] < longest["shapes"], (ladder, longest)
    try:
        import keras_hub  # noqa: F401
    except ImportError:
        assert by_path[("pretrain", "kerashub")]["skipped"]
        del by_path[("pretrain", "kerashub")]
    for row in by_path.values():
        assert "error" not in row, row
        assert row["sequences_per_s"] > 0 and 0 < row["mfu_roof"], row
        ratio = row["tokens_per_s"] / row["sequences_per_s"]
        assert abs(ratio - row["seq"]) < 0.5, row
    assert by_path[("pretrain", "kerasbert")]["precision"] == "fp16"
