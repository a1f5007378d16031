"""From scratch, honestly: how many pretraining steps before `mini` beats
a randomly initialised `mini` on emotion?

    python benchmarks/curve.py [--steps 600,2000] [--seeds 0,1,2] [--epochs 3,8]
                               [--work DIR] [--plot docs/curve.png]
                               [--markdown]

Pretraining: `python -m kerasbert.fit --size mini` on all English text at
hand (../shared/data): WikiText-2 valid (the bundled sample) and test, and
the 2,000 nltk movie_reviews, one document per article or review, about
10 MB; WordPiece 8,000 trained on it; the learning benchmark's recipe
(benchmarks/learning.sh: sequence 128, batch 32, peak 5e-4, 10% warm-up,
linear decay, clipping 1.0). Each step count is its own run with its own
schedule (a budget of N steps, not a snapshot of a longer run).

Fine-tuning: emotion, the 2,000 training tweets benchmarks/adapt.py samples
(seed 0), validation val.txt, test test.txt, at 3e-4 (--learning-rate)
for 3 epochs, or each of --epochs (one curve each), one run per seed. Step 0 is `finetune --from-scratch
mini` (random weights, WordPiece 8,000 trained on the training texts), the
baseline every point must beat.

One JSON line with the machine (CPU, cores, load, SIMD flags), one per
fine-tuning run (with the pretraining run's held-out MLM
and NSP accuracy and wall time), then one summary line per step count; with
--plot, test accuracy against pretraining steps. Runs found complete in
--work are read, not redone.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import zipfile

from adapt import emotion_data  # benchmarks/adapt.py, beside this
from finetune import run  # benchmarks/finetune.py, beside this
from throughput import cpu_info  # benchmarks/throughput.py

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared")
RECIPE = [
    "--size",
    "mini",
    "--sequence-length",
    "128",
    "--batch-size",
    "32",
    "--learning-rate",
    "5e-4",
    "--warmup-ratio",
    "0.1",
    "--clipnorm",
    "1.0",
    "--final-eval-batches",
    "100",
]
# Fine-tuning (epochs, learning rate) of the first curves: the defaults, and
# the one recipe whose run folders carry no -e/-lr tag (older work folders
# stay readable).
FIRST_RECIPE = (3, 3e-4)


def corpus(data, work):
    """A folder the fit reader takes as it is: the two WikiText files
    (detected as wikitext) and one text file of reviews, a blank line
    between reviews (one document each)."""
    folder = os.path.join(work, "corpus")
    if os.path.isdir(folder):
        return folder
    tmp = folder + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    wiki = os.path.join(data, "wikitext-2-raw-v1")
    for name in ("wiki.valid.raw", "wiki.test.raw"):
        with open(os.path.join(wiki, name), "rb") as f:
            text = f.read()
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(text)
    zip_path = os.path.join(data, "nltk_data", "corpora", "movie_reviews.zip")
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(
            n
            for n in z.namelist()
            if n.endswith(".txt") and ("/neg/" in n or "/pos/" in n)
        )
        reviews = [z.read(n).decode("utf-8").strip() for n in names]
    with open(os.path.join(tmp, "movie_reviews.txt"), "w") as f:
        f.write("\n\n".join(r.replace("\n\n", "\n") for r in reviews) + "\n")
    os.rename(tmp, folder)
    return folder


def pretrained(steps, text, work):
    """The run directory of a `steps`-step pretraining (run if missing)
    and its summary.json."""
    out = os.path.join(work, f"pretrain-{steps}")
    summary = os.path.join(out, "summary.json")
    if not os.path.exists(summary):
        run(
            [
                sys.executable,
                "-m",
                "kerasbert.fit",
                "--corpus",
                text,
                *RECIPE,
                "--max-steps",
                str(steps),
                "--quiet",
                "--overwrite",
                "--output-dir",
                out,
            ]
        )
    with open(summary) as f:
        return out, json.load(f)


def finetuned(start, files, seed, out, epochs, lr):
    path = os.path.join(out, "metrics.json")
    if not os.path.exists(path):
        run(
            [
                sys.executable,
                "-m",
                "kerasbert.finetune",
                *start,
                *files,
                "--epochs",
                str(epochs),
                "--learning-rate",
                str(lr),
                "--seed",
                str(seed),
                "--quiet",
                "--overwrite",
                "--output-dir",
                out,
            ]
        )
    with open(path) as f:
        return json.load(f)


def plot(points, path):
    """points: {fine-tuning epochs: {pretraining steps: [accuracy]}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for epochs, curve in points.items():
        steps = sorted(curve)
        means = [statistics.mean(curve[s]) for s in steps]
        sds = [
            statistics.stdev(curve[s]) if len(curve[s]) > 1 else 0
            for s in steps
        ]
        line = ax.errorbar(
            steps,
            means,
            yerr=sds,
            marker="o",
            capsize=3,
            label=f"fine-tuned {epochs} epochs",
        )
        ax.axhline(means[0], color=line[0].get_color(), ls="--", lw=0.8)
    ax.set_xlabel("pretraining steps (mini, batch 32 x 128 tokens)")
    ax.set_ylabel("emotion test accuracy, %")
    ax.set_title("dashed: random init, fine-tuned alike", fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="600,2000")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data", default=os.path.join(SHARED, "data"))
    parser.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "kerasbert-curve-bench"),
    )
    parser.add_argument(
        "--epochs",
        default=str(FIRST_RECIPE[0]),
        help="fine-tuning epochs, one curve each",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=FIRST_RECIPE[1],
        help="fine-tuning",
    )
    parser.add_argument("--plot", help="write the curve to this PNG")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="end with the results as a Markdown table (docs/pretraining.md)",
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.makedirs(args.work, exist_ok=True)
    print(json.dumps({"machine": cpu_info()}), flush=True)
    files = emotion_data(args.data, args.work)
    text = corpus(args.data, args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    points, rows = {}, []
    for epochs in (int(e) for e in args.epochs.split(",")):
        curve = points.setdefault(epochs, {})
        tag = ""
        if (epochs, args.learning_rate) != FIRST_RECIPE:
            tag = f"-e{epochs}-lr{args.learning_rate:g}"
        for steps in [0, *(int(s) for s in args.steps.split(","))]:
            info = {}
            if steps:
                model, summary = pretrained(steps, text, args.work)
                start = ["--model", model]
                info = {
                    "heldout_mlm_accuracy": summary["heldout_mlm_accuracy"],
                    "heldout_nsp_accuracy": summary["heldout_nsp_accuracy"],
                    "pretrain_seconds": summary.get("train_seconds"),
                }
            else:
                start = ["--from-scratch", "mini"]
            for seed in seeds:
                out = os.path.join(args.work, f"emotion-{steps}{tag}-{seed}")
                test = finetuned(
                    start, files, seed, out, epochs, args.learning_rate
                )["test"]
                curve.setdefault(steps, []).append(100 * test["accuracy"])
                line = {
                    "finetune_epochs": epochs,
                    "pretrain_steps": steps,
                    "seed": seed,
                    "accuracy": round(100 * test["accuracy"], 2),
                    "macro_f1": round(test["macro_f1"], 4),
                    **info,
                    "load": round(os.getloadavg()[0], 2),
                }
                print(json.dumps(line), flush=True)
            values = curve[steps]
            rows.append((epochs, steps, info, values, curve[0]))
            summary = {
                "finetune_epochs": epochs,
                "pretrain_steps": steps,
                "summary": "accuracy",
                "seeds": len(values),
                "mean": round(statistics.mean(values), 2),
                "std": round(statistics.stdev(values), 2)
                if len(values) > 1
                else None,
                "gain_over_random_init": round(
                    statistics.mean(values) - statistics.mean(curve[0]), 2
                ),
            }
            print(json.dumps(summary), flush=True)
    if args.plot:
        plot(points, args.plot)
    if args.markdown:
        print(markdown(rows))


def markdown(rows):
    lines = [
        "| fine-tuning epochs | pretraining steps | pretraining wall s | "
        "held-out MLM / NSP accuracy | emotion test accuracy %, seeds | "
        "mean ± sd | vs random init |",
        "|---|---|---|---|---|---|---|",
    ]
    for epochs, steps, info, values, random_init in rows:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        mlm = (
            f"{info['heldout_mlm_accuracy']:.3f} / "
            f"{info['heldout_nsp_accuracy']:.3f}"
            if info
            else ""
        )
        wall = f"{info['pretrain_seconds']:.0f}" if info else "0"
        each = " / ".join(f"{v:.2f}" for v in values)
        gain = ""
        if steps:
            gain = (
                f"{statistics.mean(values) - statistics.mean(random_init):+.2f}"
            )
        lines.append(
            f"| {epochs} | {steps or '0 (random init)'} | {wall} | {mlm} | "
            f"{each} | {statistics.mean(values):.2f} ± {sd:.2f} | {gain} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
