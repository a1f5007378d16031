"""Hardware choices: dtype policy, XLA, distribution strategy, chief.

TensorFlow is imported only where a choice needs it (`auto`, strategies):
an explicit precision and XLA setting work under any Keras backend.
"""

import json
import os

from kerasbert.config import TrainConfig, check_field
from kerasbert.errors import UsageError


def cpu_has_bf16() -> bool:
    # AVX512_BF16 / AMX make bf16 matmuls native; without them TF emulates
    # bf16 on the CPU and mixed precision is slower than float32.
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def select_precision(precision: str) -> tuple[str, str]:
    """Returns (Keras dtype policy name, why it was chosen)."""
    check_field(TrainConfig, "precision", precision)
    if precision != "auto":
        return precision, "requested"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        major = tf.config.experimental.get_device_details(gpus[0]).get(
            "compute_capability", (0, 0)
        )[0]
        if major >= 8:  # Ampere and later compute in bf16 natively.
            return "mixed_bfloat16", "GPU with native bfloat16"
        # Older GPUs: fp16 tensor cores; Keras adds dynamic loss scaling.
        return "mixed_float16", "GPU without bfloat16 (loss scaling on)"
    if cpu_has_bf16():
        return "mixed_bfloat16", "CPU with AVX512_BF16/AMX"
    return "float32", "CPU without native bfloat16"


def select_jit_compile(jit_compile: str) -> bool:
    """XLA helps on GPUs; on CPUs graph mode was faster here
    (docs/benchmarks.md)."""
    check_field(TrainConfig, "jit_compile", jit_compile)
    if jit_compile == "auto":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return jit_compile == "on"


def make_strategy(name: str):
    """Returns a tf.distribute strategy (multi_worker reads TF_CONFIG)."""
    import tensorflow as tf

    check_field(TrainConfig, "strategy", name)
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name in ("default", "one_device"):  # one_device: its former name
        # TF's default strategy (first GPU, else the CPU), not
        # OneDeviceStrategy: that one makes Keras re-wrap the dataset in a
        # device iterator whose tf.data autotuning cannot be turned off,
        # and releasing it at the end of each `fit` call stalled 20-40 s
        # (see data/tfdata.py).
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if "TF_CONFIG" not in os.environ:
        raise UsageError(
            "--strategy multi_worker: set TF_CONFIG (cluster and task) "
            "for every worker"
        )
    try:
        json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as e:
        raise UsageError(f"TF_CONFIG: not valid JSON ({e})") from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    """Only the chief writes the run directory in multi-worker training."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0)
