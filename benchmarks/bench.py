"""Benchmarks: `python benchmarks/bench.py {data,train}`.

`train` times the training step `fit` runs (model, optimizer, loss and
precision/XLA choice built by the same functions) on a synthetic batch and
prints one JSON object: median tokens/s, peak memory, model FLOPs per token
and MFU against a matmul roof measured in the same run, the CPU and its
flags; see `throughput.py` beside this file. The model is built and
compiled by `kerasbert.training.build`'s own functions.

`data` times sequences/s through NSP pairing + dynamic masking + batching at
one sequence length, on a tokenized corpus (default: the bundled sample,
tokenized and cached by `prepare_corpus`), and then the same token ids
through the reference pipeline in `reference_instances.py` (per-instance
pairing on Python token lists, then HF's `DataCollatorForLanguageModeling`).
It prints both figures and their ratio.
"""

import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's kerasbert, installed or not

import reference_instances  # noqa: E402 (beside this file)
import throughput as tp  # noqa: E402

from kerasbert.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from kerasbert.errors import ArgumentParser, UsageError, run_cli  # noqa: E402

TRAIN_CONFIGS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
# What shapes the step; the rest of a run's flags do not change its speed.
TRAIN_FLAGS = {
    "model": [
        "hidden_dim",
        "num_layers",
        "num_heads",
        "intermediate_dim",
        "hidden_dropout",
        "attention_dropout",
        "activation",
    ],
    "data": ["sequence_length", "max_predictions"],
    "train": ["batch_size", "precision", "jit_compile", "optimizer", "seed"],
}


def _load(args, tokenizer_dir=None):
    """prepare_corpus on --corpus and --tokenizer (without one, a
    vocabulary of --vocab-size is trained, and cached): (Tokenizer,
    TokenCorpus, path for the reference's BertTokenizerFast)."""
    from kerasbert.data.corpus import prepare_corpus

    config = DataConfig(corpus=args.corpus, tokenizer=args.tokenizer)
    if hasattr(args, "vocab_size"):  # bench data's flag; train has none
        config.vocab_size = args.vocab_size
    tokenizer, corpus = prepare_corpus(
        config, tokenizer_dir=tokenizer_dir, progress=False
    )
    hf_path = args.tokenizer or tokenizer_dir
    return tokenizer, corpus, hf_path


def _time(pull, *, seconds, max_batches, batch_size, chunk=1, warmup=5):
    """Sequences/s of `pull()` (which yields `chunk` batches per call)."""
    for _ in range(warmup):
        pull()
    count, start = 0, time.perf_counter()
    while count < max_batches and time.perf_counter() - start < seconds:
        pull()
        count += chunk
    return count * batch_size / (time.perf_counter() - start), count


def _graph_puller(ds, chunk):
    """Pulls `chunk` batches per call inside a tf.function, as Keras' fit
    does (the batches stay tensors; no Python per batch)."""
    import tensorflow as tf

    iterator = iter(ds)

    @tf.function
    def pull():
        for _ in tf.range(chunk):
            batch = next(iterator)
        return tf.nest.flatten(batch)[0][0, 0]

    return pull


def bench_data(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kerasbert.data.pretraining import count_pairs, pretraining_dataset

    tokenizer_dir = tempfile.mkdtemp(prefix="kerasbert-bench-")
    tokenizer, corpus, hf_path = _load(args, tokenizer_dir)
    print(
        f"corpus: {corpus.num_documents} documents, "
        f"{corpus.num_sentences} sentences, {corpus.num_tokens} tokens; "
        f"vocabulary {tokenizer.vocabulary_size}; "
        f"{count_pairs(corpus, sequence_length=args.sequence_length)} "
        f"sequences per epoch at length {args.sequence_length}"
    )
    print(
        f"machine: {tp.cpu_info()['model']}, {os.cpu_count()} cores; batch "
        f"{args.batch_size}, max predictions {args.max_predictions}, "
        f"whole_word {args.whole_word}"
    )
    start = time.perf_counter()
    ds = pretraining_dataset(
        corpus,
        tokenizer,
        sequence_length=args.sequence_length,
        batch_size=args.batch_size,
        max_predictions=args.max_predictions,
        whole_word=args.whole_word,
        seed=args.seed,
    )
    pull = _graph_puller(ds, 50)
    pull()
    first = time.perf_counter() - start
    ours, n = _time(
        pull,
        chunk=50,
        seconds=args.seconds,
        max_batches=args.batches,
        batch_size=args.batch_size,
    )
    print(
        f"kerasbert.data: {ours:,.0f} sequences/s ({n} batches; first 50 "
        f"batches after {first:.1f} s)"
    )
    if args.no_reference:
        return
    hf = reference_instances.hf_tokenizer(tokenizer, hf_path)
    reference = reference_instances.reference_batches(
        corpus,
        hf,
        sequence_length=args.sequence_length,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    ref, n = _time(
        lambda: next(reference),
        seconds=args.seconds,
        max_batches=args.batches,
        batch_size=args.batch_size,
    )
    print(
        f"reference (per-instance pairing + DataCollatorForLanguageModeling"
        f"): {ref:,.0f} sequences/s ({n} batches)"
    )
    print(
        f"speedup: {ours / ref:.1f}x"
        + (
            " (the reference masks tokens, not whole words)"
            if args.whole_word
            else ""
        )
    )


def bench_train(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import dataclasses
    import json

    from kerasbert.cli import split_values
    from kerasbert.config import DataConfig, ModelConfig, TrainConfig

    known = {n for names in TRAIN_FLAGS.values() for n in names}
    parts = split_values(
        {k: v for k, v in vars(args).items() if k in known}, TRAIN_CONFIGS
    )
    model_cfg = ModelConfig.from_size(
        args.size, vocabulary_size=args.vocabulary_size, **parts["model"]
    ).validate()
    data_cfg = DataConfig(**parts["data"]).validate()
    train_cfg = TrainConfig(**parts["train"]).validate()
    for name in ("steps", "warmup"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name}: must be >= 1")

    import keras

    info = tp.cpu_info()
    print(tp.describe_cpu(info), file=sys.stderr)
    model, policy, why, jit = tp.compiled_pretrainer(
        model_cfg, train_cfg, args.warmup + args.steps
    )
    x, y = tp.synthetic_batch(
        train_cfg.batch_size,
        data_cfg.sequence_length,
        data_cfg.max_predictions,
        model_cfg.vocabulary_size,
        train_cfg.seed,
    )
    timer = tp.StepTimer(model, x, y)
    timer.run(args.warmup)
    real = held = None
    if args.real_data:
        dataset = _real_batches(
            args, data_cfg, train_cfg, model_cfg.vocabulary_size
        )
        real = tp.StepTimer(model, dataset=dataset)
        # The same kind of batches with no pipeline work left: what the
        # pipeline itself costs the step, apart from the batches' content.
        held = tp.StepTimer(model, dataset=dataset.take(20).cache().repeat())
        real.run(args.warmup)
        held.run(args.warmup + 20)
    times, real_times, held_times = [], [], []
    # The timers take turns, so load changes hit all of them.
    for turn in range(0, args.steps, 5):
        n = min(5, args.steps - turn)
        times += timer.run(n)
        if real:
            real_times += real.run(n)
            held_times += held.run(n)
    peak = tp.peak_rss_mb()  # before the roof's own buffers
    compute = keras.mixed_precision.global_policy().compute_dtype
    roof = tp.matmul_roof(compute, seconds=args.roof_seconds)
    flops = tp.train_flops_per_token(
        **dataclasses.asdict(model_cfg),
        sequence_length=data_cfg.sequence_length,
        max_predictions=data_cfg.max_predictions,
    )
    tokens = train_cfg.batch_size * data_cfg.sequence_length
    result = {
        "size": args.size,
        "sequence_length": data_cfg.sequence_length,
        "batch_size": train_cfg.batch_size,
        "max_predictions": data_cfg.max_predictions,
        "vocabulary_size": model_cfg.vocabulary_size,
        "parameters": int(model.count_params()),
        "precision": policy,
        "precision_why": why,
        "jit_compile": jit,
        "steps": args.steps,
        "warmup": args.warmup,
        **tp.summarise(times, tokens, flops, roof["flops"]),
        "tokens_per_cpu_s": round(
            tokens / statistics.median(timer.cpu_times), 1
        ),
        "step_s_min": round(min(times), 5),
        "step_s_max": round(max(times), 5),
        "train_mflop_per_token": round(flops / 1e6, 3),
        "matmul_roof_tflops": round(roof["flops"] / 1e12, 4),
        "matmul_roof_shape": roof["shape"],
        "matmul_roof_dtype": compute,
        "peak_rss_mb": round(peak, 1),
        **(
            _real_summary(times, real_times, held_times, tokens) if real else {}
        ),
        "cpu": {**info, "load_average_1m": round(os.getloadavg()[0], 2)},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(
        f"{result['tokens_per_s']:,.0f} tokens/s, MFU "
        f"{result['mfu']:.0%} of a {result['matmul_roof_tflops'] * 1e3:.0f}"
        f" GFLOP/s {compute} matmul roof, peak RSS "
        f"{result['peak_rss_mb']:.0f} MiB",
        file=sys.stderr,
    )
    if args.output:
        from kerasbert.files import write_json_atomic

        write_json_atomic(args.output, result)
    print(json.dumps(result))
    return result


def _real_batches(args, data_cfg, train_cfg, vocabulary_size):
    """`fit`'s input pipeline on a real corpus (default: the bundled one,
    with its cached tokenizer), at the benchmark's shapes."""
    from kerasbert.data.pretraining import pretraining_dataset

    tokenizer, corpus, _ = _load(args)
    if tokenizer.vocabulary_size > vocabulary_size:
        raise UsageError(
            f"--tokenizer: {tokenizer.vocabulary_size} tokens, more than "
            f"--vocabulary-size {vocabulary_size}"
        )
    return pretraining_dataset(
        corpus,
        tokenizer,
        sequence_length=data_cfg.sequence_length,
        batch_size=train_cfg.batch_size,
        max_predictions=data_cfg.max_predictions,
        seed=train_cfg.seed,
    )


def _real_summary(synthetic, real, held, tokens):
    step = statistics.median(real)
    return {
        "real_data_median_step_s": round(step, 5),
        "real_data_tokens_per_s": round(tokens / step, 1),
        "real_vs_synthetic_step": round(step / statistics.median(synthetic), 4),
        # Live pipeline vs the same pipeline's first 20 batches, cached.
        "real_vs_cached_real_step": round(step / statistics.median(held), 4),
    }


def main(argv=None):
    parser = ArgumentParser(
        prog="python benchmarks/bench.py", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser(
        "data", help="input pipeline sequences/s vs a per-instance reference"
    )
    data.add_argument("--corpus", help="corpus path (default: bundled)")
    data.add_argument(
        "--tokenizer",
        help="tokenizer dir/vocab.txt/.model (default: train one, cached)",
    )
    data.add_argument("--vocab-size", type=int, default=8000)
    data.add_argument("--sequence-length", type=int, default=128)
    data.add_argument("--batch-size", type=int, default=32)
    data.add_argument("--max-predictions", type=int, default=20)
    data.add_argument("--whole-word", action="store_true")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument(
        "--seconds", type=float, default=10.0, help="time limit per pipeline"
    )
    data.add_argument(
        "--batches", type=int, default=10**9, help="batch limit per pipeline"
    )
    data.add_argument("--no-reference", action="store_true")
    data.set_defaults(run=bench_data)

    from kerasbert.cli import add_config_flags
    from kerasbert.config import SIZES

    train = sub.add_parser(
        "train", help="tokens/s, peak memory and MFU of the training step"
    )
    train.add_argument(
        "--size",
        default="mini",
        choices=list(SIZES),
        help="model size (default: mini)",
    )
    train.add_argument(
        "--vocabulary-size",
        type=int,
        default=30522,
        help="token ids (default: 30522, BERT's)",
    )
    train.add_argument(
        "--steps", type=int, default=20, help="timed steps (default: 20)"
    )
    train.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed steps first, tracing included",
    )
    train.add_argument(
        "--roof-seconds",
        type=float,
        default=1.0,
        help="time per matmul shape of the roof",
    )
    train.add_argument(
        "--real-data",
        action="store_true",
        help="also time the step on batches from fit's input pipeline "
        "(pairing, masking, prefetch) and on 20 of them cached, in turns "
        "with the synthetic batch",
    )
    train.add_argument(
        "--corpus", help="corpus for --real-data (default: the bundled one)"
    )
    train.add_argument(
        "--tokenizer",
        help="tokenizer for --real-data (default: trained "
        "on the corpus, cached)",
    )
    train.add_argument("--output", help="also write the JSON here")
    for part, cls in TRAIN_CONFIGS.items():
        add_config_flags(
            train,
            cls,
            names=TRAIN_FLAGS[part],
            title=f"{part} ({cls.__name__})",
        )
    train.set_defaults(run=bench_train)
    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    run_cli(main)
