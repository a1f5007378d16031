"""Training speed on one accelerator: one JSON line per measurement.

    KERAS_BACKEND=jax python benchmarks/gpu.py [--budget-s 400] [--only ...]
    python benchmarks/gpu.py --smoke        # CPU, tiny sizes, seconds
    benchmarks/gpu.sh                       # JAX, then TF where installed

Measured (in this order, so a short budget keeps the most telling ones):
kerasbert's pretraining step (`BertPretrainer`, compiled as `fit` compiles
it: `throughput.compiled_pretrainer`) for `base` and `large` at sequence
128 and `base` at 512, in mixed bfloat16 and float16, with XLA and (TF
only: under JAX every step is XLA) without; keras-hub's `BertBackbone` with
the same heads (masked-LM on the masked positions, a dense NSP head) where
keras_hub imports; fine-tuning (`BertClassifier`, `base`, sequence 128)
examples/s; and a whole fine-tuning epoch on texts of varied length
(`finetune_epoch`), compilation included, in XLA's fixed shapes
(`ladder`: data/classification.py's length ladder and constant rows, as
`finetune --jit-compile on` trains) against each batch padded to its own
longest text (`longest`: a program per shape, as before the ladder).

Every step runs through `model.fit` on a synthetic batch repeated (random
ids, 20 predictions per 128 tokens, vocabulary 30,522), so the input
pipeline costs nothing. A measurement fits `--warmup` steps (compilation),
then N and 2N steps; the step time is the difference over N, which drops
each `fit` call's fixed cost and waits for the device at its end.

MFU is model FLOPs (`throughput.train_flops_per_token`: matmuls, backward
twice the forward) per second over the device's dense peak for the
precision (`PEAKS`, by device name), and over a bfloat16/float16 matmul
roof measured in the same run (`roof_tflops`).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # kerasbert, from this checkout
sys.path.insert(0, HERE)  # throughput.py beside this script

import keras  # noqa: E402
import numpy as np  # noqa: E402
import throughput as tp  # noqa: E402

from kerasbert.config import ModelConfig, TrainConfig  # noqa: E402

# Dense (no sparsity) tensor-core peak, FLOP/s, bfloat16 = float16, by a
# substring of the device name; datasheet figures (SXM parts).
PEAKS = {
    "H200": 989e12,
    "H100": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
    "V100": 125e12,
    "T4": 65e12,
}
PRECISIONS = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
PREDS_PER_128 = 20


def device() -> dict:
    """Name and kind ("gpu"/"cpu") of the device the backend computes on."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        d = jax.devices()[0]
        kind = "gpu" if d.platform in ("gpu", "cuda", "rocm") else d.platform
        return {"name": d.device_kind, "kind": kind}
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return {"name": details.get("device_name", "GPU"), "kind": "gpu"}
    return {"name": tp.cpu_info()["model"], "kind": "cpu"}


def peak(name: str) -> float | None:
    for key, flops in PEAKS.items():
        if key in name:
            return flops
    return None


def matmul_roof(dtype: str, n: int, seconds: float = 1.0) -> float:
    """Best FLOP/s of an n x n x n matmul in `dtype`, compiled by the
    backend (XLA under JAX)."""
    from keras import ops

    backend = keras.config.backend()
    a = ops.cast(keras.random.normal((n, n)), dtype)
    b = ops.cast(keras.random.normal((n, n)), dtype)
    if backend == "jax":
        import jax

        fn = jax.jit(lambda a, b: a @ b)

        def run():
            fn(a, b).block_until_ready()
    else:
        import tensorflow as tf

        fn = tf.function(lambda a, b: tf.matmul(a, b), jit_compile=True)

        def run():
            fn(a, b)[0, 0].numpy()

    run()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def _tiled(x, y, copies):
    def tile(d):
        if isinstance(d, dict):
            return {k: tile(v) for k, v in d.items()}
        return np.concatenate([d] * copies)

    return tile(x), tile(y)


def time_steps(model, x, y, batch, steps, warmup):
    """Seconds per training step through `model.fit` (see the docstring)."""

    def fit(n):
        xs, ys = _tiled(x, y, n)
        t = time.perf_counter()
        model.fit(xs, ys, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        return time.perf_counter() - t

    fit(warmup)
    once, twice = fit(steps), fit(2 * steps)
    # The difference drops fit's fixed cost; noise on a tiny run may
    # make it non-positive, then the plain average is the fallback.
    return (twice - once) / steps if twice > once else twice / (2 * steps)


def kerasbert_pretrainer(dims, precision, xla, vocab):
    model_cfg = ModelConfig(**{**dims, "vocabulary_size": vocab})
    train_cfg = TrainConfig(
        precision=PRECISIONS[precision], jit_compile="on" if xla else "off"
    )
    model, *_ = tp.compiled_pretrainer(model_cfg, train_cfg, 10_000)
    return model, model_cfg


def kerashub_pretrainer(dims, precision, xla, vocab):
    import keras_hub

    keras.mixed_precision.set_global_policy(PRECISIONS[precision])
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocab,
        num_layers=dims["num_layers"],
        num_heads=dims["num_heads"],
        hidden_dim=dims["hidden_dim"],
        intermediate_dim=dims["intermediate_dim"],
        max_sequence_length=512,
    )
    inputs = dict(backbone.input)
    positions = keras.Input((None,), dtype="int32", name="mask_positions")
    out = backbone(inputs)
    mlm = keras_hub.layers.MaskedLMHead(
        vocabulary_size=vocab,
        token_embedding=backbone.token_embedding,
        intermediate_activation="gelu",
        name="mlm",
    )(out["sequence_output"], mask_positions=positions)
    nsp = keras.layers.Dense(2, dtype="float32", name="nsp")(
        out["pooled_output"]
    )
    model = keras.Model(
        {**inputs, "mask_positions": positions}, {"mlm": mlm, "nsp": nsp}
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-4),
        loss={"mlm": loss, "nsp": loss},
        jit_compile=xla,
    )
    return model, ModelConfig(**{**dims, "vocabulary_size": vocab})


def measure_pretraining(impl, dims, seq, batch, precision, xla, a):
    build = {
        "kerasbert": kerasbert_pretrainer,
        "kerashub": kerashub_pretrainer,
    }[impl]
    model, cfg = build(dims, precision, xla, a.vocab)
    preds = max(1, PREDS_PER_128 * seq // 128)
    x, y = tp.synthetic_batch(batch, seq, preds, a.vocab)
    if impl == "kerashub":
        x = {**x, "padding_mask": x["padding_mask"].astype(bool)}
        y = {"mlm": y["mask_ids"], "nsp": y["next_sentence_label"]}
    step = time_steps(model, x, y, batch, a.steps, a.warmup)
    flops = tp.train_flops_per_token(
        **dataclasses.asdict(cfg), sequence_length=seq, max_predictions=preds
    )
    return step, flops * batch * seq


def measure_finetuning(impl, dims, seq, batch, precision, xla, a):
    from kerasbert.config import FinetuneConfig
    from kerasbert.training.build import compile_classifier

    cfg = ModelConfig(**{**dims, "vocabulary_size": a.vocab})
    policy = PRECISIONS[precision]
    keras.mixed_precision.set_global_policy(policy)
    # The model and optimizer `finetune` trains, default settings.
    model = compile_classifier(cfg, 6, FinetuneConfig(), 10_000, xla)
    x, _ = tp.synthetic_batch(batch, seq, 1, a.vocab)
    x = {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    y = np.random.default_rng(0).integers(0, 6, batch).astype("int32")
    step = time_steps(model, x, y, batch, a.steps, a.warmup)
    # No MLM head: the encoder and pooler only.
    flops = tp.train_flops_per_token(
        **{**dataclasses.asdict(cfg), "vocabulary_size": 0},
        sequence_length=seq,
        max_predictions=0,
    )
    return step, flops * batch * seq


def varied_lengths(n, max_length, seed=0):
    """Text lengths shaped like tweets and reviews in BERT's vocabulary:
    log-normal around 24 tokens, a long tail cut at `max_length`."""
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.normal(np.log(24), 0.6, n)).astype(int)
    return np.clip(lengths, 4, max_length)


def measure_finetune_epoch(impl, dims, seq, batch, precision, xla, a):
    """(seconds, examples, programs) of one epoch of `a.epoch_examples`
    varied-length examples through `model.fit`, compilation included."""
    from kerasbert.config import FinetuneConfig
    from kerasbert.data import classification as cls_data
    from kerasbert.training.build import compile_classifier

    cfg = ModelConfig(**{**dims, "vocabulary_size": a.vocab})
    keras.mixed_precision.set_global_policy(PRECISIONS[precision])
    model = compile_classifier(cfg, 6, FinetuneConfig(), 10_000, xla)
    rng = np.random.default_rng(0)
    encoded = [
        (list(rng.integers(5, a.vocab, n)), [0] * n)
        for n in varied_lengths(a.epoch_examples, seq)
    ]
    lengths = [len(ids) for ids, _ in encoded]
    labels = rng.integers(0, 6, len(encoded)).astype("int32")
    order = cls_data.batch_order(lengths, batch, True, np.random.default_rng(1))
    shapes = set()

    def batches():
        for index in order:
            weights = np.ones(len(index), "float32")
            length = None
            if impl == "ladder":
                index, length, weights = cls_data.fixed_shape(
                    encoded, index, batch, seq, True
                )
            x = cls_data.pad_batch(encoded, index, length)
            shapes.add(x["token_ids"].shape)
            yield x, labels[index], weights

    t = time.perf_counter()
    model.fit(batches(), steps_per_epoch=len(order), epochs=1, verbose=0)
    return time.perf_counter() - t, len(encoded), len(shapes)


def plan(a, backend, sizes):
    """(task, impl, size, seq, batch, precision, xla) in priority order."""
    xlas = [True] + ([False] if backend == "tensorflow" else [])
    b128, b512 = a.batch, max(1, a.batch // 4)
    rows = []
    for precision in ("bf16", "fp16"):
        for xla in xlas:
            rows.append(
                ("pretrain", "kerasbert", "base", 128, b128, precision, xla)
            )
            if precision == "bf16":
                rows.append(
                    ("pretrain", "kerashub", "base", 128, b128, precision, xla)
                )
    for precision in ("bf16", "fp16"):
        for xla in xlas:
            rows.append(
                ("pretrain", "kerasbert", "large", 128, b128, precision, xla)
            )
            if precision == "bf16":
                rows.append(
                    ("pretrain", "kerashub", "large", 128, b128, precision, xla)
                )
    rows.append(
        ("finetune", "kerasbert", "base", 128, a.finetune_batch, "bf16", True)
    )
    for impl in ("ladder", "longest"):
        rows.append(
            (
                "finetune_epoch",
                impl,
                "base",
                128,
                a.finetune_batch,
                "bf16",
                True,
            )
        )
    for precision in ("bf16", "fp16"):
        rows.append(
            ("pretrain", "kerasbert", "base", 512, b512, precision, True)
        )
    if a.smoke:  # one of each path: loss scaling, keras-hub, fine-tuning
        rows = [
            r
            for r in rows
            if r[2:4] == ("base", 128)
            and r[6]
            and (
                (r[0], r[1], r[5])
                in (
                    ("pretrain", "kerasbert", "fp16"),
                    ("pretrain", "kerashub", "bf16"),
                    ("finetune", "kerasbert", "bf16"),
                )
                or r[0] == "finetune_epoch"
            )
        ]
    if a.only:
        wanted = set(a.only.split(","))
        rows = [r for r in rows if f"{r[0]}:{r[1]}" in wanted or r[2] in wanted]
    return [r for r in rows if r[2] in sizes]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, 2 steps: checks the script, not speed",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=400,
        help="start no measurement after this many seconds",
    )
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--batch",
        type=int,
        default=128,
        help="sequences per step at 128 tokens (a quarter at 512)",
    )
    p.add_argument("--finetune-batch", type=int, default=32)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument(
        "--only",
        help="comma list of sizes or task:impl "
        "(pretrain:kerasbert, pretrain:kerashub, "
        "finetune:kerasbert, finetune_epoch:ladder, "
        "finetune_epoch:longest)",
    )
    p.add_argument(
        "--epoch-examples",
        type=int,
        default=4096,
        help="examples in the varied-length fine-tuning epoch",
    )
    a = p.parse_args(argv)
    from kerasbert.config import SIZES

    sizes = dict(SIZES)
    if a.smoke:  # tiny stand-ins under the same names, so every path runs
        tiny = dict(
            num_layers=1, hidden_dim=16, num_heads=2, intermediate_dim=32
        )
        sizes = {"base": tiny, "large": {**tiny, "num_layers": 2}}
        a.steps, a.warmup, a.batch, a.vocab = 2, 1, 4, 101
        a.finetune_batch, a.epoch_examples = 4, 24
    start = time.perf_counter()
    backend = keras.config.backend()
    dev = device()
    roof = {
        precision: matmul_roof(
            PRECISIONS[precision].removeprefix("mixed_"),
            256 if a.smoke else 8192,
            0.2 if a.smoke else 1.0,
        )
        for precision in PRECISIONS
    }
    common = {
        "backend": backend,
        "keras": keras.__version__,
        "device": dev["name"],
        "device_kind": dev["kind"],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(
        json.dumps(
            {
                **common,
                "roof_tflops": {k: round(v / 1e12, 2) for k, v in roof.items()},
                "peak_tflops": (peak(dev["name"]) or 0) / 1e12 or None,
            }
        ),
        flush=True,
    )
    try:
        import keras_hub  # noqa: F401

        have_hub = True
    except ImportError:
        have_hub = False
    last = 0.0
    for task, impl, size, seq, batch, precision, xla in plan(a, backend, sizes):
        row = {
            **common,
            "task": task,
            "impl": impl,
            "size": size,
            "seq": seq,
            "batch": batch,
            "precision": precision,
            "xla": xla,
        }
        elapsed = time.perf_counter() - start
        if impl == "kerashub" and not have_hub:
            print(
                json.dumps({**row, "skipped": "keras_hub not installed"}),
                flush=True,
            )
            continue
        if elapsed + last > a.budget_s:
            print(
                json.dumps(
                    {**row, "skipped": f"budget ({elapsed:.0f} s used)"}
                ),
                flush=True,
            )
            continue
        t = time.perf_counter()
        if task == "finetune_epoch":
            try:
                seconds, examples, programs = measure_finetune_epoch(
                    impl, sizes[size], seq, batch, precision, xla, a
                )
            except Exception as e:  # one failure is a row
                seconds = None
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            finally:
                keras.backend.clear_session()
                last = time.perf_counter() - t
            if seconds is not None:
                row.update(
                    epoch_s=round(seconds, 2),
                    examples_per_s=round(examples / seconds, 1),
                    shapes=programs,
                )
            print(json.dumps(row), flush=True)
            continue
        measure = (
            measure_pretraining if task == "pretrain" else measure_finetuning
        )
        try:
            step, flops = measure(
                impl, sizes[size], seq, batch, precision, xla, a
            )
        except Exception as e:  # one failure (e.g. out of memory) is a row
            print(
                json.dumps(
                    {
                        **row,
                        "error": f"{type(e).__name__}: "
                        f"{str(e).splitlines()[0][:300]}",
                    }
                ),
                flush=True,
            )
            continue
        finally:
            keras.backend.clear_session()
            last = time.perf_counter() - t
        rate = flops / step
        device_peak = peak(dev["name"])
        print(
            json.dumps(
                {
                    **row,
                    "step_s": round(step, 5),
                    "sequences_per_s": round(batch / step, 1),
                    "tokens_per_s": round(batch * seq / step, 1),
                    "model_tflops": round(rate / 1e12, 3),
                    "mfu_peak": round(rate / device_peak, 4)
                    if device_peak
                    else None,
                    "mfu_roof": round(rate / roof[precision], 4),
                    "seconds": round(last, 1),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
