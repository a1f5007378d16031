"""Packed vs unpacked masked-LM pretraining on short texts, in one run.

    python benchmarks/packing.py [--real-tokens N] [--size tiny]
        [--sequence-length 128] [--batch-size 32] [--markdown]
        [--output-dir runs/packing] [--smoke]

Both contenders are `kerasbert.fit`'s own `pretrain`, masked LM only
(`--no-nsp`), on emotion's 16k training tweets read as text (`text;label`,
labels ignored; ../shared/data/emotion) and scored on its 2k validation
tweets (`--heldout-corpus`, every held-out batch):

    unpacked  --packing off: one tweet per row, cut in two at its middle
              word as NSP pairs want ([CLS] half [SEP] half [SEP])
    packed    --packing on: whole tweets side by side until the row is full
    packed_same_steps
              --packing on with as many tweets per step as `unpacked`
              (batch x the fill ratio): the same real tokens in as many
              optimizer steps, so accuracy compares packing alone

Each trains on the same number of *real* tokens (`--real-tokens`, default
one pass over the tweets): its steps are that divided by batch x length x
its fill (real tokens / positions, from the run's own data plan), so the
packed run takes fewer steps. Reported per contender: fill, steps, real
tokens per second (batch x length x fill over the median step time of the
logging windows after the first, which holds the graph's tracing; the
input pipeline included; the mean over all windows beside it), and
held-out MLM accuracy and loss at the end. Then one model takes turns on
batches of both pipelines (`speed_in_turns`): load changes between the
training runs cannot tilt that speed ratio, the headline number. The
first line is the machine (CPU, cores, load, SIMD flags). `--smoke` runs
all of it on the test fixture's 240 tweets at toy sizes (about 30 s;
tests/test_bench.py).
"""

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
EMOTION = os.path.join(ROOT, "..", "shared", "data", "emotion")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "finetune")

from throughput import (  # noqa: E402
    StepTimer,
    compiled_pretrainer,
    cpu_info,
    describe_cpu,
)

CONTENDERS = ("unpacked", "packed", "packed_same_steps")


def flags(a, contender, output_dir, steps=1, batch_size=None):
    return [
        *("--corpus", a.train, "--corpus-format", "semicolon"),
        *("--heldout-corpus", a.heldout, "--no-nsp"),
        *("--packing", "off" if contender == "unpacked" else "on"),
        *("--size", a.size, *a.model_flags),
        *("--sequence-length", str(a.sequence_length)),
        *("--max-predictions", str(a.max_predictions)),
        *("--batch-size", str(batch_size or a.batch_size)),
        *("--max-steps", str(steps)),
        *("--steps-per-epoch", str(steps), "--log-every", str(a.log_every)),
        *("--backup-every", str(steps), "--vocab-size", str(a.vocab_size)),
        *("--eval-batches", str(a.eval_batches), "--seed", str(a.seed)),
        *("--precision", a.precision),
        *("--output-dir", output_dir, "--overwrite", "--quiet"),
    ]


def plan_fill(argv):
    """The fill of a contender's training stream, from its data plan
    (what the run prints at its start), and the real tokens of a pass."""
    import dataclasses

    from kerasbert.config import resolve_packing
    from kerasbert.data.corpus import prepare_corpus
    from kerasbert.data.pretraining import fill
    from kerasbert.fit import resolve_configs
    from kerasbert.training.plan import epoch_rows, make_plan

    _, _, data, train, _ = resolve_configs(argv)
    data = dataclasses.replace(
        data,
        nsp_probability=0.0,
        packing=resolve_packing(data.packing, train.nsp),
    )
    _, corpus = prepare_corpus(data, progress=False)
    plan = make_plan(corpus, data, train)
    rows = epoch_rows(corpus, data, train.seed, plan.train_ids)
    share = fill(rows, train.batch_size)
    return share, share * len(rows.epoch(0)) * data.sequence_length


def median_speed(run_dir, batch_size, sequence_length):
    """Real tokens per second of the median step: the train rows of
    metrics.csv after the first (which holds the graph's tracing), each
    window's seconds per step. A median, because the machine is shared:
    other work slows some windows, not the code."""
    import csv
    import statistics

    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    steps, per_step, fills = 0, [], []
    for r in rows:
        window = int(r["step"]) - steps
        steps = int(r["step"])
        per_step.append(float(r["seconds"]) / window)
        fills.append(float(r["fill"]))
    per_step = per_step[1:] or per_step
    fill = statistics.fmean(fills)
    return batch_size * sequence_length * fill / statistics.median(per_step)


def speed_in_turns(a, rounds=6, steps=5):
    """Seconds per step of one model on unpacked and packed batches from
    fit's input pipeline, timed in turns (so load changes hit both):
    {contender: median seconds per step}."""
    import dataclasses
    import statistics

    from kerasbert.data.corpus import prepare_corpus
    from kerasbert.data.pretraining import pretraining_dataset
    from kerasbert.fit import resolve_configs

    _, model_cfg, data, train, _ = resolve_configs(
        flags(a, "unpacked", os.path.join(a.output_dir, "turns"))
    )
    tokenizer, corpus = prepare_corpus(data, progress=False)
    model_cfg = dataclasses.replace(
        model_cfg, vocabulary_size=tokenizer.vocabulary_size
    )
    model, *_ = compiled_pretrainer(model_cfg, train, rounds * steps * 2)
    timers = {
        c: StepTimer(
            model,
            dataset=pretraining_dataset(
                corpus,
                tokenizer,
                sequence_length=a.sequence_length,
                batch_size=a.batch_size,
                max_predictions=a.max_predictions,
                nsp_probability=0.0,
                packing=c == "packed",
                seed=a.seed,
            ),
        )
        for c in ("unpacked", "packed")
    }
    times = {c: [] for c in timers}
    for turn in range(rounds + 1):
        for c, timer in timers.items():
            t = timer.run(steps)
            if turn:  # the first turn traces and warms up
                times[c] += t
    return {c: statistics.median(t) for c, t in times.items()}


def run(a):
    from kerasbert.fit import resolve_configs
    from kerasbert.training.pretrain import pretrain

    print(json.dumps({"machine": cpu_info()}), flush=True)
    print(describe_cpu(cpu_info()), flush=True)
    results = {}
    fills = {
        c: plan_fill(flags(a, c, os.path.join(a.output_dir, c)))
        for c in ("unpacked", "packed")
    }
    # Default budget: one pass over the tweets (the packed plan's count,
    # which uses every text once).
    budget = a.real_tokens or int(fills["packed"][1])
    for contender in CONTENDERS:
        share = fills[contender.split("_")[0]][0]
        batch = a.batch_size
        if contender == "packed_same_steps":
            # As many texts per step as the unpacked rows hold, so the
            # same real tokens take as many optimizer steps.
            batch = max(1, round(a.batch_size * fills["unpacked"][0] / share))
        steps = max(1, round(budget / (batch * a.sequence_length * share)))
        out = os.path.join(a.output_dir, contender)
        size, model, data, train, _ = resolve_configs(
            flags(a, contender, out, steps, batch)
        )
        summary = pretrain(
            model, data, train, size=size, verbose=0, log=lambda *_: None
        )
        row = {
            "contender": contender,
            "batch_size": batch,
            "fill": round(share, 4),
            "run_fill": summary["fill"],
            "steps": steps,
            "real_tokens": round(steps * batch * a.sequence_length * share),
            "real_tokens_per_second": round(
                median_speed(out, batch, a.sequence_length), 1
            ),
            "mean_real_tokens_per_second": summary["real_tokens_per_second"],
            "positions_per_second": summary["tokens_per_second"],
            "train_seconds": summary["train_seconds"],
            "heldout_mlm_accuracy": summary["heldout_mlm_accuracy"],
            "heldout_mlm_loss": summary["heldout_mlm_loss"],
            "heldout_batches": summary["heldout_batches"],
        }
        results[contender] = row
        print(json.dumps(row), flush=True)
    step = speed_in_turns(a)
    turns = {
        c: a.batch_size * a.sequence_length * fills[c][0] / step[c]
        for c in step
    }
    speedup = turns["packed"] / turns["unpacked"]
    print(
        json.dumps(
            {
                "in_turns": {
                    c: {
                        "median_step_s": round(step[c], 4),
                        "real_tokens_per_second": round(turns[c], 1),
                    }
                    for c in step
                },
                "speedup_real_tokens_per_second": round(speedup, 2),
            }
        )
    )
    if a.markdown:
        print(markdown(results, speedup))
    return results


def markdown(results, speedup):
    lines = [
        "| rows | batch | fill | steps | real tokens | real tokens/s | "
        "held-out MLM acc. | held-out MLM loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['batch_size']} | {r['fill']:.3f} | {r['steps']} | "
            f"{r['real_tokens']:,} | {r['real_tokens_per_second']:,.0f} | "
            f"{r['heldout_mlm_accuracy']:.4f} | {r['heldout_mlm_loss']:.3f} |"
        )
    lines.append(
        f"\nreal tokens/s in turns on one model, packed / unpacked: "
        f"{speedup:.2f}x"
    )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", default=os.path.join(EMOTION, "train.txt"))
    p.add_argument("--heldout", default=os.path.join(EMOTION, "val.txt"))
    p.add_argument("--size", default="tiny")
    p.add_argument("--sequence-length", type=int, default=128)
    p.add_argument("--max-predictions", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument(
        "--real-tokens",
        type=int,
        default=None,
        help="real tokens each contender trains on (default: one pass)",
    )
    p.add_argument("--eval-batches", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--precision", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default=None)
    p.add_argument("--markdown", action="store_true")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="toy sizes on the test fixture's tweets (seconds)",
    )
    a = p.parse_args(argv)
    a.model_flags = []
    if a.smoke:
        a.train = os.path.join(FIXTURE, "emotion_train.txt")
        a.heldout = os.path.join(FIXTURE, "emotion_val.txt")
        a.model_flags = ["--hidden-dim", "16", "--intermediate-dim", "32"]
        a.sequence_length, a.max_predictions, a.batch_size = 32, 5, 8
        a.vocab_size, a.real_tokens, a.log_every = 300, 3000, 2
        a.eval_batches = 2
    with tempfile.TemporaryDirectory() as tmp:
        a.output_dir = a.output_dir or tmp
        run(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
