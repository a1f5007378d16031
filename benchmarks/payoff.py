"""Does pretraining with kerasbert pay off? Few labels, four starting points.

    python benchmarks/payoff.py [--task emotion] [--arms random,self,...]
                                [--labels 100,300,1000] [--seeds 0,1,2]
                                [--results FILE] [--work DIR] [--markdown]
    python benchmarks/payoff.py --smoke --work DIR    (the suite's, seconds)

The arms, all `mini`, all fine-tuned by the same `finetune` command:

    random         `finetune --from-scratch mini` (random weights, WordPiece
                   trained on the labelled examples)
    self           pretrained from scratch on the task's own unlabelled
                   training texts (the whole training split, labels
                   ignored; WordPiece trained on those texts): masked LM
                   only, `--sequence-length 64 --batch-size 64`
    general        pretrained on ~10 MB of general English (curve.py's
                   corpus and recipe: masked LM + NSP, 128 x 32)
    general+adapt  `general`, then `adapt --unlabelled` on the same texts
                   as `self` (masked LM only, 64 x 64); its steps come on
                   top of general's

Every pretraining arm gets the same --pretrain-steps of the same 4,096
positions per step, nearly all real tokens: the masked-LM-only runs pack
several texts per row (--packing on); the wall time is in each row.
Labelled sets: for each count and seed one stratified sample of the
training split (the same for every arm), a fixed stratified validation
subset (--validation-size) and the whole test split. Each run fine-tunes
for at most --epochs with `--patience`, both counted at --grid-labels and
scaled up for fewer labels so that every count waits as many optimizer
steps (`budget`), keeping and testing the best validation epoch. The
learning rate of each arm is picked from --learning-rates by the best
validation score of seed 0 at --grid-labels labels, the grid growing past
an end that wins (`Bench.grid`); test scores never choose.

Each finished fine-tuning (and pretraining) run appends one JSON line to
--results (commit, machine, CPU flags, date, arm, labels, seed, epochs,
validation and test scores, pretraining steps, wall time and held-out MLM
accuracy); a rerun skips what the file holds, so an interrupted benchmark
loses at most the run it was in. Arms run one after another (pretrain,
grid, seeds). --markdown prints the table of docs/benchmarks.md from the
file: mean ± sd over seeds, and the gain over random as the mean paired
difference ± its standard error.

Commands run in this process (no interpreter start per run); each sets
its own seeds, so a run's numbers do not depend on what ran before it.
"""

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial

from curve import RECIPE, corpus  # benchmarks/curve.py, beside this
from throughput import cpu_info, describe_cpu  # benchmarks/throughput.py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(ROOT, "..", "shared")
ARMS = ("random", "self", "general", "general+adapt")
RESULTS = os.path.join(HERE, "results", "payoff.jsonl")

# Per task: how its files are read and scored. `rows(data)` gives
# (header or None, train lines, validation lines or None, test path);
# `label(line)` the class of a line; `flags` what finetune needs to read
# the files, `corpus_flags` what fit needs to read the unlabelled ones.


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def _emotion(data):
    folder = os.path.join(data, "emotion")
    header, *train = _lines(os.path.join(folder, "train.txt"))
    _, *validation = _lines(os.path.join(folder, "val.txt"))
    return header, train, validation, os.path.join(folder, "test.txt")


def _cola(data):
    raw = os.path.join(data, "cola", "raw")
    train = _lines(os.path.join(raw, "in_domain_train.tsv"))
    # No separate validation split: a fixed share of train validates, the
    # labelled samples come from the rest; in-domain dev is the test.
    return None, train, None, os.path.join(raw, "in_domain_dev.tsv")


COLA_COLUMNS = "source,label,original_label,sentence"
TASKS = {
    "emotion": dict(
        rows=_emotion,
        label=lambda line: line.rsplit(";", 1)[1],
        suffix=".txt",
        flags=[],
        corpus_flags=[],
        score="accuracy",
    ),
    "cola": dict(
        rows=_cola,
        label=lambda line: line.split("\t")[1],
        suffix=".tsv",
        flags=[
            *("--data-format", "tsv", "--columns", COLA_COLUMNS),
            *("--text-column", "sentence", "--metric", "mcc"),
        ],
        corpus_flags=[
            *("--corpus-format", "tsv", "--columns", COLA_COLUMNS),
            *("--text-field", "sentence"),
        ],
        score="mcc",
    ),
}


def stratified(lines, n, seed, label):
    """`n` of `lines` (n <= len), each class in proportion to its share
    (largest remainders), drawn with `seed`; in a seeded shuffled order."""
    by_class = {}
    for line in lines:
        by_class.setdefault(label(line), []).append(line)
    rng = random.Random(seed)
    quota = {c: n * len(v) / len(lines) for c, v in sorted(by_class.items())}
    take = {c: int(q) for c, q in quota.items()}
    left = n - sum(take.values())
    for c in sorted(quota, key=lambda c: take[c] - quota[c])[:left]:
        take[c] += 1
    chosen = []
    for c in sorted(by_class):
        pool = list(by_class[c])
        rng.shuffle(pool)
        chosen += pool[: take[c]]
    rng.shuffle(chosen)
    return chosen


def write(path, header, lines):
    if not os.path.exists(path):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(([header] if header else []) + lines) + "\n")
        os.replace(tmp, path)
    return path


class Data:
    """The task's files in `work`: the unlabelled texts, the validation
    subset, and a labelled sample per (count, seed)."""

    def __init__(self, task, data, work, validation_size):
        self.task = TASKS[task]
        header, train, validation, self.test = self.task["rows"](data)
        folder = os.path.join(work, f"data-{task}")
        os.makedirs(folder, exist_ok=True)
        label, suffix = self.task["label"], self.task["suffix"]
        if validation is None:
            validation = stratified(train, validation_size, 10**6, label)
            held = set(validation)
            pool = [line for line in train if line not in held]
        else:
            validation = stratified(validation, validation_size, 10**6, label)
            pool = train
        self.header, self.pool, self.folder = header, pool, folder
        self.validation = write(
            os.path.join(folder, f"validation{suffix}"), header, validation
        )
        # The whole training split, labels and all: the readers take the
        # texts and ignore the labels (the labelled samples are its rows).
        self.unlabelled = write(
            os.path.join(folder, f"unlabelled{suffix}"), header, train
        )

    def labelled(self, n, seed):
        return write(
            os.path.join(
                self.folder, f"labels-{n}-seed{seed}{self.task['suffix']}"
            ),
            self.header,
            stratified(self.pool, n, seed, self.task["label"]),
        )


def call(module, argv, log):
    """`python -m kerasbert.<module> argv` in this process; its output
    goes to `log` (a file)."""
    import importlib

    import keras

    keras.backend.clear_session()
    main = importlib.import_module(f"kerasbert.{module}").main
    print(f"$ python -m kerasbert.{module} {' '.join(argv)}", file=log)
    log.flush()
    with contextlib.redirect_stdout(log):
        code = main(argv)
    if code:
        sys.exit(f"kerasbert.{module} exited {code}")


class Results:
    """The append-only results file; one JSON line a finished run."""

    def __init__(self, path, stamp):
        self.path, self.stamp = path, stamp
        self.rows = []
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                self.rows = [json.loads(line) for line in f if line.strip()]

    def find(self, recipe=None, **key):
        """The first row with these fields whose recipe `matches`."""
        for row in self.rows:
            if all(row.get(k) == v for k, v in key.items()) and (
                recipe is None or matches(row, recipe)
            ):
                return row
        return None

    def add(self, row):
        row = {**row, **self.stamp, "date": _now()}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return row


def _now():
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _commit():
    try:
        return subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except OSError:
        return None


# The settings that make each arm's starting point (random weights: none
# but the model's size and vocabulary).
PRETRAINING = {
    "random": ("size", "vocab_size"),
    "general": ("size", "vocab_size", "pretrain_steps"),
    "self": ("size", "vocab_size", "pretrain_steps", "packing"),
    "general+adapt": (
        *("size", "vocab_size", "pretrain_steps", "packing"),
        *("adapt_steps", "adapt_learning_rate"),
    ),
}


def budget(args, labels):
    """(--epochs, --patience) at `labels` examples. Below --grid-labels
    both grow with grid_labels / labels, so that patience waits the same
    number of optimizer steps at every count: with a fixed 10 epochs, 100
    labels gave up after 130 steps, on the majority-class plateau, in
    every arm (the table of 2026-12-07)."""
    scale = max(1.0, args.grid_labels / labels)
    return round(args.epochs * scale), round(args.patience * scale)


def recipe(args, arm, labels=None) -> dict:
    """The settings a row is keyed by: those its result depends on (the
    starting point's, and the fine-tuning's at `labels`; a pretraining
    row: labels None). A row matches when its recipe holds these values
    (`matches`): rows of other settings are neither skipped over nor
    tabled, and a random-weights row is shared by every pretraining
    budget."""
    key = {name: getattr(args, name) for name in PRETRAINING[arm]}
    if labels is not None:
        epochs, patience = budget(args, labels)
        key.update(
            validation_size=args.validation_size,
            epochs=epochs,
            patience=patience,
            batch_size=args.batch_size,
            max_length=args.max_length,
        )
    return key


def matches(row, key):
    """Whether `row`'s recipe holds every setting of `key`."""
    held = row.get("recipe") or {}
    return all(held.get(name) == value for name, value in key.items())


class Bench:
    def __init__(self, args, log):
        self.args, self.log = args, log
        self.data = Data(args.task, args.data, args.work, args.validation_size)
        self.results = Results(
            args.results,
            {"commit": _commit(), "machine": cpu_info(), "task": args.task},
        )

    def _out(self, *parts):
        return os.path.join(self.args.work, self.args.task, *parts)

    # Pretraining: one run per arm, its row recorded once.

    def pretrain(self, arm):
        """(finetune flags of the arm's starting point, its pretraining
        facts)."""
        args = self.args
        if arm == "random":
            return ["--from-scratch", args.size], {}
        key = dict(
            kind="pretrain", task=args.task, arm=arm, recipe=recipe(args, arm)
        )
        out = self._pretrained(arm)
        done = os.path.join(out, "summary.json")
        if arm == "general+adapt":
            _, base = self.pretrain("general")
            done = os.path.join(out, "adapted", "summary.json")
        if not os.path.exists(done):
            start = time.time()
            if arm == "general":
                call(
                    "fit",
                    [*self.general_flags(), "--output-dir", out],
                    self.log,
                )
            elif arm == "self":
                call("fit", [*self.self_flags(), "--output-dir", out], self.log)
            else:
                call(
                    "adapt",
                    [*self.adapt_flags(), "--output-dir", out],
                    self.log,
                )
            wall = time.time() - start
        else:
            wall = None
        with open(done, encoding="utf-8") as f:
            summary = json.load(f)
        facts = {
            "pretrain_steps": summary.get("steps"),
            "pretrain_train_seconds": summary.get("train_seconds"),
            "heldout_mlm_accuracy": summary.get("heldout_mlm_accuracy"),
        }
        if arm == "general+adapt":
            facts["base"] = base
        if not self.results.find(**key):
            self.results.add({**key, **facts, "wall_seconds": wall})
        model = os.path.join(out, "adapted") if arm == "general+adapt" else out
        return ["--model", model], facts

    def _pretrained(self, arm):
        """The arm's checkpoint folder, named by its settings: a folder of
        another budget is not reused."""
        settings = json.dumps(recipe(self.args, arm), sort_keys=True)
        tag = hashlib.sha256(settings.encode()).hexdigest()[:8]
        return self._out(f"pretrain-{arm}-{tag}")

    def _pretrain_common(self):
        a = self.args
        return [
            *("--size", a.size, "--vocab-size", str(a.vocab_size)),
            *("--max-steps", str(a.pretrain_steps), "--seed", "0"),
            *a.pretrain_extra,
            "--quiet",
        ]

    def general_flags(self):
        recipe = list(RECIPE)
        recipe[1] = self.args.size  # "--size", "mini"
        return [
            "--corpus",
            self.args.general_corpus or corpus(self.args.data, self.args.work),
            *recipe,
            *self._pretrain_common()[2:],
        ]

    def self_flags(self):
        return [
            *(
                "--corpus",
                self.data.unlabelled,
                *self.data.task["corpus_flags"],
            ),
            *("--sequence-length", "64", "--batch-size", "64", "--no-nsp"),
            *("--packing", self.args.packing),
            *("--learning-rate", "5e-4", "--warmup-ratio", "0.1"),
            *("--clipnorm", "1.0", "--final-eval-batches", "100"),
            *self._pretrain_common(),
        ]

    def adapt_flags(self):
        a = self.args
        base = self._pretrained("general")
        return [
            *("--model", base, "--unlabelled", self.data.unlabelled),
            *("--train", self.data.labelled(a.grid_labels, 0)),
            *("--validation", self.data.validation),
            *self.data.task["flags"],
            *("--adapt-steps", str(a.adapt_steps), "--no-nsp"),
            *("--packing", a.packing),
            *("--adapt-batch-size", "64", "--adapt-sequence-length", "64"),
            *("--adapt-learning-rate", str(a.adapt_learning_rate)),
            # Stage 3 is not one of the table's runs: the arm's runs all
            # fine-tune from adapted/ below, as every other arm's do.
            *("--epochs", "1", "--max-length", str(a.max_length)),
            "--quiet",
        ]

    # Fine-tuning.

    def key(self, kind, arm, labels, seed, lr):
        """The fields a fine-tuning row is found by."""
        return dict(
            kind=kind,
            task=self.args.task,
            arm=arm,
            labels=labels,
            seed=seed,
            lr=lr,
            recipe=recipe(self.args, arm, labels),
        )

    def finetune(self, arm, start, facts, labels, seed, lr, kind):
        key = self.key(kind, arm, labels, seed, lr)
        found = self.results.find(**key)
        if found:
            return found
        if kind == "cell":
            same = self.results.find(**{**key, "kind": "grid"})
            if same:  # seed 0 at the grid's label count: that very run
                return self.results.add({**same, "kind": "cell"})
        out = self._out("finetune", arm, f"{labels}-seed{seed}-lr{lr:g}")
        t0 = time.time()
        from kerasbert.errors import TrainingDiverged

        try:
            self._finetune(start, labels, seed, lr, out)
        except TrainingDiverged as e:
            # A learning rate too high for this arm: a result (validation
            # None never wins the grid), not a crash of the benchmark.
            print(f"diverged: {e}", file=self.log)
            return self.results.add(
                {**key, "diverged": True, "validation": None, **facts}
            )
        with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
        score = self.data.task["score"]
        return self.results.add(
            {
                **key,
                "score": score,
                "validation": metrics["validation"][score],
                "test": metrics["test"][score],
                "test_accuracy": metrics["test"]["accuracy"],
                "test_macro_f1": metrics["test"]["macro_f1"],
                "best_epoch": metrics["best_epoch"],
                "epochs_trained": metrics["epochs_trained"],
                "stopped_early": metrics["stopped_early"],
                "finetune_seconds": round(time.time() - t0, 1),
                **facts,
            }
        )

    def _finetune(self, start, labels, seed, lr, out):
        args = self.args
        epochs, patience = budget(args, labels)
        call(
            "finetune",
            [
                *start,
                *("--train", self.data.labelled(labels, seed)),
                *("--validation", self.data.validation),
                *("--test", self.data.test),
                *self.data.task["flags"],
                *("--epochs", str(epochs)),
                *("--patience", str(patience)),
                *("--learning-rate", f"{lr:g}", "--seed", str(seed)),
                *("--batch-size", str(args.batch_size)),
                *("--max-length", str(args.max_length)),
                *("--vocab-size", str(args.vocab_size)),
                # (architecture flags: for random weights only)
                *(args.finetune_extra if start[0] == "--from-scratch" else []),
                *("--quiet", "--overwrite", "--output-dir", out),
            ],
            self.log,
        )

    def arm(self, arm):
        a = self.args

        def find(kind, labels, seed, lr):
            return self.results.find(**self.key(kind, arm, labels, seed, lr))

        lr = self.grid(lambda lr: find("grid", a.grid_labels, 0, lr))
        if lr is not None and all(
            find("cell", n, s, lr) for n in a.labels for s in a.seeds
        ):
            return  # all in --results: no pretraining needed
        start, facts = self.pretrain(arm)

        def run(kind, labels, seed, lr):
            return self.finetune(arm, start, facts, labels, seed, lr, kind)

        lr = self.grid(lambda lr: run("grid", a.grid_labels, 0, lr))
        for labels in a.labels:
            for seed in a.seeds:
                run("cell", labels, seed, lr)

    def grid(self, score):
        """The learning rate the grid picks: `score(lr)` gives lr's row
        (or None: not known yet, then so is the answer). When the best is
        at an end of the grid, the grid grows past it by its own ratio
        (up to WIDEN times each way), so that no arm is judged at a rate
        the grid cut off."""
        rates = list(self.args.learning_rates)
        rows, widened = {}, {"up": 0, "down": 0}
        while True:
            for lr in rates:
                if lr not in rows:
                    rows[lr] = score(lr)
                    if rows[lr] is None:
                        return None
            best = _best([rows[lr] for lr in rates])
            if len(rates) < 2:
                return best
            if best == rates[-1] and widened["up"] < WIDEN:
                widened["up"] += 1
                rates.append(_round(rates[-1] * rates[-1] / rates[-2]))
            elif best == rates[0] and widened["down"] < WIDEN:
                widened["down"] += 1
                rates.insert(0, _round(rates[0] * rates[0] / rates[1]))
            else:
                return best


WIDEN = 2


def _round(lr):
    """One significant digit: 1e-3 * (1e-3 / 3e-4) is 3e-3."""
    return float(f"{lr:.1g}")


def _best(grid):
    """The learning rate of the best validation score (ties: the first
    listed; a diverged run never wins)."""
    scored = [r for r in grid if r.get("validation") is not None]
    if not scored:
        sys.exit(f"every learning rate diverged: {[r['lr'] for r in grid]}")
    return max(scored, key=lambda r: r["validation"])["lr"]


def table(rows, task, arms, settings=None):
    """Markdown: arms x label counts, mean ± sd over seeds, gain over
    random (mean paired per-seed difference ± its standard error), of the
    rows whose recipe matches `settings(arm, labels)` (None: every row)."""
    cells, lrs, cost = {}, {}, {}
    for r in rows:
        if r.get("task") != task:
            continue
        if settings is not None and not matches(
            r, settings(r["arm"], r.get("labels"))
        ):
            continue
        if r["kind"] == "pretrain":
            cost[r["arm"]] = r
        elif r["kind"] == "cell":
            factor = 100.0
            cells.setdefault((r["arm"], r["labels"]), {})[r["seed"]] = (
                factor * r["test"]
            )
            lrs[r["arm"]] = r["lr"]
    labels = sorted({n for _, n in cells})
    name = "accuracy %" if task == "emotion" else "MCC x 100"
    lines = [
        "| arm (lr) | pretraining | "
        + " | ".join(f"{n} labels: test {name}" for n in labels)
        + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for arm in arms:
        if not any(a == arm for a, _ in cells):
            continue
        parts = []
        for n in labels:
            mine = cells.get((arm, n), {})
            if not mine:
                parts.append("")
                continue
            values = [mine[s] for s in sorted(mine)]
            text = f"{statistics.mean(values):.1f} ± {_sd(values):.1f}"
            text += f" (n={len(values)})"
            base = cells.get(("random", n), {})
            common = sorted(set(mine) & set(base))
            if arm != "random" and common:
                diffs = [mine[s] - base[s] for s in common]
                se = _sd(diffs) / len(diffs) ** 0.5
                text += f", **{statistics.mean(diffs):+.1f}** ± {se:.1f}"
            parts.append(text)
        lr = lrs.get(arm)
        lr_text = f" ({lr:g})" if lr is not None else ""
        parts_cost = _cost(cost, arm)
        lines.append(
            f"| {arm}{lr_text} | {parts_cost} | " + " | ".join(parts) + " |"
        )
    return "\n".join(lines)


def _sd(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _cost(cost, arm):
    if arm == "random":
        return "none"
    row = cost.get(arm)
    if not row:
        return ""
    wall = row.get("wall_seconds") or row.get("pretrain_train_seconds")
    mlm = row.get("heldout_mlm_accuracy")
    text = f"{row.get('pretrain_steps')} steps"
    if arm == "general+adapt" and row.get("base"):
        text += f" on top of general's {row['base'].get('pretrain_steps')}"
    if wall:
        text += f", {wall / 60:.0f} min"
    if mlm is not None:
        text += f", held-out MLM {mlm:.3f}"
    return text


def smoke_settings(args):
    """Tiny everything on the suite's fixtures (no ../shared)."""
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    data = os.path.join(args.work, "smoke-data")
    os.makedirs(os.path.join(data, "emotion"), exist_ok=True)
    for split, name in (("train", "train"), ("val", "val"), ("test", "test")):
        src = os.path.join(fixtures, "finetune", f"emotion_{name}.txt")
        dst = os.path.join(data, "emotion", f"{split}.txt")
        if not os.path.exists(dst):
            with open(src, encoding="utf-8") as f, open(dst, "w") as g:
                g.write(f.read())
    tiny = ["--hidden-dim", "16", "--num-layers", "1", "--num-heads", "2"]
    tiny += ["--intermediate-dim", "32"]
    args.data, args.size, args.task = data, "tiny", "emotion"
    args.general_corpus = os.path.join(fixtures, "wikitext_sample.raw")
    args.labels, args.seeds, args.learning_rates = [12], [0], [3e-3]
    args.grid_labels, args.validation_size = 12, 20
    args.pretrain_steps, args.adapt_steps = 2, 2
    args.epochs, args.patience, args.vocab_size = 2, 1, 200
    args.batch_size, args.max_length = 8, 32
    args.pretrain_extra = [*tiny, "--final-eval-batches", "1"]
    args.finetune_extra = tiny
    return args


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="emotion", choices=tuple(TASKS))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--labels", default="100,300,1000")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--learning-rates", default="1e-4,3e-4,1e-3")
    parser.add_argument("--grid-labels", type=int, default=300)
    parser.add_argument("--validation-size", type=int, default=500)
    # 4,500 steps: about 45 minutes of this 2-core CPU, the budget.
    parser.add_argument("--pretrain-steps", type=int, default=4500)
    parser.add_argument("--adapt-steps", type=int, default=1500)
    parser.add_argument(
        "--packing",
        default="on",
        choices=("on", "off"),
        help="--packing of the masked-LM-only runs (self, the adaptation)",
    )
    parser.add_argument("--adapt-learning-rate", type=float, default=1e-4)
    # At --grid-labels; fewer labels get more (`budget`). A pilot with
    # --patience 5 and batch 16 stopped random weights on the majority-
    # class plateau after 6 epochs (results/payoff-pilot.jsonl).
    parser.add_argument("--epochs", type=int, default=60, help="the most")
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--data", default=os.path.join(SHARED, "data"))
    parser.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "kerasbert-payoff-bench"),
    )
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the table from --results and stop",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny, on tests/fixtures"
    )
    args = parser.parse_args(argv)
    args.arms = args.arms.split(",")
    for arm in args.arms:
        if arm not in ARMS:
            parser.error(f"--arms: unknown arm {arm!r} ({', '.join(ARMS)})")
    args.labels = [int(n) for n in args.labels.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.learning_rates = [float(v) for v in args.learning_rates.split(",")]
    args.size, args.general_corpus = "mini", None
    args.pretrain_extra, args.finetune_extra = [], []
    if args.markdown:
        rows = Results(args.results, {}).rows
        print(table(rows, args.task, args.arms, partial(recipe, args)))
        return 0
    if args.smoke:
        args = smoke_settings(args)
    os.makedirs(args.work, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(describe_cpu(cpu_info()), flush=True)
    with open(os.path.join(args.work, "commands.log"), "a") as log:
        bench = Bench(args, log)
        for arm in args.arms:
            bench.arm(arm)
    print(
        table(bench.results.rows, args.task, args.arms, partial(recipe, args))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
