"""Speed of the training step `fit` runs: tokens/s, FLOPs, matmul roof.

`benchmarks/bench.py train`, `peers.py` and `step_profile.py` use these.
The step is the real one: the model comes from
`kerasbert.training.build.compile_pretrainer` and the precision from
`apply_precision`, the functions a run calls (the optimizer, schedule,
clipping and loss of a run), and is driven through Keras' own
`train_function`, which is what `model.fit` calls once per batch. The batch
is synthetic (the peers' setup: random ids, 20 predictions), so the input
pipeline is not timed here (`bench.py data` times it).

MFU = achieved model FLOP/s / the best float matmul rate this process
reaches on this machine (`matmul_roof`), so it says how much of what the
CPU can do for a BERT-shaped matmul the step uses, not of a datasheet peak.
"""

import os
import resource
import statistics
import time

import numpy as np

# The SIMD flags that decide which precision and kernels are fast.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_info(cpuinfo="/proc/cpuinfo") -> dict:
    """Model name, core count, load and which of `CPU_FLAGS` the CPU has
    (read from `cpuinfo`, Linux's format)."""
    name, flags = "", set()
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not name:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        import platform

        name = platform.processor() or platform.machine()
    return {
        "model": name,
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "flags": {k: k in flags for k in CPU_FLAGS},
    }


def describe_cpu(info: dict) -> str:
    flags = " ".join(
        f"{k}={'yes' if v else 'no'}" for k, v in info["flags"].items()
    )
    return (
        f"cpu: {info['model']}, {info['cores']} cores, load "
        f"{info['load_average_1m']}; {flags}"
    )


def synthetic_batch(
    batch_size=32,
    sequence_length=128,
    max_predictions=20,
    vocabulary_size=30522,
    seed=0,
):
    """(x, y) numpy dicts as `pretraining_dataset` yields, random ids.

    The same recipe as the peers' benchmark (`../shared/bench/peers_cpu.py`):
    segment 0 then 1 by halves, no padding, distinct sorted positions.
    """
    rng = np.random.default_rng(seed)
    b, s, p, v = batch_size, sequence_length, max_predictions, vocabulary_size
    half = np.concatenate(
        [np.zeros((b, s // 2)), np.ones((b, s - s // 2))], axis=1
    )
    positions = np.sort(
        np.stack(
            [
                rng.choice(np.arange(1, s - 1), p, replace=False)
                for _ in range(b)
            ]
        ),
        axis=1,
    )
    x = {
        "token_ids": rng.integers(5, v, size=(b, s)).astype("int32"),
        "segment_ids": half.astype("int32"),
        "padding_mask": np.ones((b, s), "int32"),
        "mask_positions": positions.astype("int32"),
    }
    y = {
        "mask_ids": rng.integers(5, v, size=(b, p)).astype("int32"),
        "mask_weights": np.ones((b, p), "float32"),
        "next_sentence_label": rng.integers(0, 2, size=(b,)).astype("int32"),
    }
    return x, y


def train_flops_per_token(
    *,
    hidden_dim,
    num_layers,
    intermediate_dim,
    vocabulary_size,
    sequence_length,
    max_predictions,
    **_ignored,
) -> float:
    """Model FLOPs of one training step per input token (matmuls only).

    Forward: per layer 2 FLOPs per weight of the Q/K/V/output and FFN
    kernels, plus 4 * seq * hidden for scores and weighted values; the MLM
    head (transform + tied decoder) runs on `max_predictions` rows of each
    sequence, not all. Backward costs twice the forward, as usual. `mini` at
    128 tokens and 20 predictions: about 28 MFLOP per token.
    """
    h, f = hidden_dim, intermediate_dim
    layer = 2 * (4 * h * h + 2 * h * f) + 4 * sequence_length * h
    head = max_predictions / sequence_length * 2 * (h * h + h * vocabulary_size)
    pooler = 2 * (h * h + 2 * h) / sequence_length
    return 3.0 * (num_layers * layer + head + pooler)


def matmul_roof(dtype="float32", shapes=None, seconds=1.0) -> dict:
    """Best FLOP/s of a TensorFlow matmul in `dtype` over BERT-shaped
    products, measured now in this process. Returns {flops, shape}."""
    import tensorflow as tf

    shapes = shapes or [
        (4096, 256, 1024),
        (4096, 1024, 256),
        (4096, 256, 256),
        (640, 256, 30522),
    ]
    best = {"flops": 0.0, "shape": None}
    for m, k, n in shapes:
        a = tf.random.normal([m, k], dtype=tf.float32)
        b = tf.random.normal([k, n], dtype=tf.float32)
        a, b = tf.cast(a, dtype), tf.cast(b, dtype)
        matmul = tf.function(
            lambda a, b: tf.reduce_sum(
                tf.cast(tf.matmul(a, b)[0, :1], tf.float32)
            )
        )
        matmul(a, b).numpy()  # trace and warm up
        times, deadline = [], time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 3:
            t = time.perf_counter()
            matmul(a, b).numpy()
            times.append(time.perf_counter() - t)
        rate = 2.0 * m * k * n / statistics.median(times)
        if rate > best["flops"]:
            best = {"flops": rate, "shape": [m, k, n]}
    return best


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux: KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compiled_pretrainer(model_cfg, train_cfg, total_steps):
    """The model `fit` trains, compiled by the functions `fit` calls.

    Sets the global dtype policy (`train_cfg.precision`, `auto` resolved
    by the CPU/GPU). Returns (model, policy name, why, jit_compile).
    """
    from kerasbert.training.build import apply_precision, compile_pretrainer

    policy, why, jit = apply_precision(train_cfg)
    model, _ = compile_pretrainer(model_cfg, train_cfg, total_steps, jit)
    return model, policy, why, jit


class StepTimer:
    """Times Keras' `train_function` on one repeated batch (or on the
    batches of `dataset`, e.g. the real input pipeline).

    `model` must be compiled. `run(steps)` returns the seconds of each
    step; every step ends with reading the loss back (as `fit`'s progress
    bar and callbacks do), so queued work cannot hide in the next step.
    `cpu_times` holds the CPU seconds of this process (all threads) for
    the same steps: on a machine shared with other jobs, wall time
    measures the load as much as the step; CPU time much less so.
    """

    def __init__(self, model, x=None, y=None, dataset=None):
        import tensorflow as tf

        if dataset is None:  # one batch, repeated: input costs nothing
            dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
        self.iterator = iter(dataset)
        self.model = model
        model.make_train_function()

    def run(self, steps):
        times, self.cpu_times = [], []
        for _ in range(steps):
            t, c = time.perf_counter(), time.process_time()
            logs = self.model.train_function(self.iterator)
            float(logs["loss"])
            times.append(time.perf_counter() - t)
            self.cpu_times.append(time.process_time() - c)
        return times


def summarise(times, tokens_per_step, flops_per_token, roof_flops) -> dict:
    step = statistics.median(times)
    tps = tokens_per_step / step
    achieved = tps * flops_per_token
    return {
        "median_step_s": round(step, 5),
        "tokens_per_s": round(tps, 1),
        "model_tflops": round(achieved / 1e12, 4),
        "mfu": round(achieved / roof_flops, 4) if roof_flops else None,
    }
