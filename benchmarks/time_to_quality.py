"""Time to quality: when does kerasbert reach transformers' held-out MLM
accuracy after N steps, in wall time, on the same machine and data?

    python benchmarks/time_to_quality.py [--max-steps 600] [--eval-every 50]
        [--eval-batches 40] [--which both|transformers|kerasbert]
        [--output-dir runs/ttq] [-- extra kerasbert.fit flags]

Runs transformers' `BertForPreTraining` (torch; bfloat16 autocast where the
CPU has AVX512_BF16/AMX, as the learning benchmark's reference did), then
kerasbert (`kerasbert.fit`'s own `pretrain`), one after the other. Both see
the very same batches: the transformers run reads kerasbert's data pipeline
(same corpus, vocabulary, pairs, masks, seed and batch size), and both are
scored every `--eval-every` steps on the same `--eval-batches` held-out
batches (MLM accuracy weighted by `mask_weights`, as `fit` reports it).
Defaults are the learning benchmark's recipe (benchmarks/learning.sh):
bert-base-uncased vocabulary, WikiText-2 valid / test from ../shared, `mini`,
sequence 128, batch 32, peak learning rate 5e-4, 10% warm-up, linear decay,
clipping 1.0.

Clocks: `train_s` counts the training steps only (input pipeline
included; held-out evaluation, checkpoints and start-up excluded), the same
way for both; `wall_s` is everything since the run began. Writes
`<output-dir>/time_to_quality.jsonl` (the machine: CPU, cores, load, SIMD
flags; one line per evaluation, then a summary line) and prints the
summary: transformers' accuracy at its last step (the target) and the
`train_s`/`wall_s` at which each run first reached it (null: never).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
DATA = os.path.join(ROOT, "..", "shared", "data")

# benchmarks/throughput.py, beside this (the script's folder is on sys.path)
from throughput import cpu_info  # noqa: E402


def fit_flags(a, extra, output_dir):
    """kerasbert.fit flags of the recipe (both runs resolve these)."""
    flags = [
        "--size",
        a.size,
        "--sequence-length",
        str(a.sequence_length),
        "--batch-size",
        str(a.batch_size),
        "--max-steps",
        str(a.max_steps),
        "--learning-rate",
        str(a.learning_rate),
        "--warmup-ratio",
        "0.1",
        "--clipnorm",
        "1.0",
        "--steps-per-epoch",
        str(a.eval_every),
        "--eval-batches",
        str(a.eval_batches),
        "--final-eval-batches",
        str(a.eval_batches),
        # One backup at the end: none inside the clocked steps.
        "--backup-every",
        str(a.max_steps),
        "--seed",
        str(a.seed),
        "--output-dir",
        output_dir,
        "--overwrite",
        "--quiet",
    ]
    for flag in ("corpus", "heldout_corpus", "tokenizer"):
        value = getattr(a, flag)
        if value:
            flags += ["--" + flag.replace("_", "-"), value]
    return flags + list(extra)


class Log:
    def __init__(self, path):
        self.path, self.rows = path, []

    def add(self, row):
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def run_kerasbert(a, extra, log):
    import keras

    from kerasbert.fit import resolve_configs
    from kerasbert.training.pretrain import pretrain

    start = time.perf_counter()
    size, model, data, train, _ = resolve_configs(
        fit_flags(a, extra, os.path.join(a.output_dir, "kerasbert"))
    )

    class Clock(keras.callbacks.Callback):
        """Seconds inside training steps; the held-out score per epoch
        (`EpochEvaluation` put it in the logs before this callback)."""

        steps, train_s = 0, 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.mark = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            self.train_s += now - self.mark
            self.mark, self.steps = now, self.steps + 1

        def on_epoch_end(self, epoch, logs=None):
            log.add(
                {
                    "impl": "kerasbert",
                    "step": self.steps,
                    "mlm_accuracy": logs.get("val_mlm_accuracy"),
                    "train_s": round(self.train_s, 2),
                    "wall_s": round(time.perf_counter() - start, 2),
                }
            )

    pretrain(model, data, train, size=size, verbose=0, callbacks=[Clock()])


def run_transformers(a, extra, log):
    import numpy as np
    import torch
    import transformers

    from kerasbert.data.corpus import prepare_corpus
    from kerasbert.fit import resolve_configs
    from kerasbert.training.hardware import cpu_has_bf16
    from kerasbert.training.plan import make_plan
    from kerasbert.training.pretrain import PretrainingTask

    start = time.perf_counter()
    _, model_cfg, data_cfg, train_cfg, _ = resolve_configs(
        fit_flags(a, extra, os.path.join(a.output_dir, "transformers"))
    )
    # The data kerasbert's run trains and evaluates on, batch for batch.
    tokenizer, corpus = prepare_corpus(data_cfg, progress=False)
    heldout = None
    if data_cfg.heldout_corpus:
        _, heldout = prepare_corpus(
            dataclasses.replace(data_cfg, corpus=data_cfg.heldout_corpus),
            progress=False,
        )
    plan = make_plan(corpus, data_cfg, train_cfg, heldout)
    task = PretrainingTask(
        model_cfg, data_cfg, train_cfg, tokenizer, corpus, plan
    )
    batches = task.train_dataset(0).as_numpy_iterator()
    heldout_set = task.heldout_set()
    if heldout_set is None:
        print(
            f"time_to_quality.py: --corpus {a.corpus}: too small to hold "
            "batches out; pass --heldout-corpus",
            file=sys.stderr,
        )
        sys.exit(2)
    evaluation = [(x, y) for x, y in heldout_set.batches]

    torch.manual_seed(a.seed)
    model = transformers.BertForPreTraining(
        transformers.BertConfig(
            vocab_size=tokenizer.vocabulary_size,
            hidden_size=model_cfg.hidden_dim,
            num_hidden_layers=model_cfg.num_layers,
            num_attention_heads=model_cfg.num_heads,
            intermediate_size=model_cfg.intermediate_dim,
            max_position_embeddings=model_cfg.max_sequence_length,
        )
    )
    decay = [
        p
        for n, p in model.named_parameters()
        if not ("bias" in n or "LayerNorm" in n)
    ]
    rest = [
        p
        for n, p in model.named_parameters()
        if "bias" in n or "LayerNorm" in n
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": train_cfg.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=train_cfg.learning_rate,
        eps=train_cfg.adam_epsilon,
    )
    steps = train_cfg.max_steps
    schedule = transformers.get_linear_schedule_with_warmup(
        optimizer, round(train_cfg.warmup_ratio * steps), steps
    )
    bf16 = cpu_has_bf16()

    def inputs(x):
        return {
            "input_ids": torch.tensor(x["token_ids"], dtype=torch.long),
            "token_type_ids": torch.tensor(x["segment_ids"], dtype=torch.long),
            "attention_mask": torch.tensor(x["padding_mask"], dtype=torch.long),
        }

    def labels(x, y):  # -100 everywhere but at weighted mask positions
        b, s = x["token_ids"].shape
        mlm = np.full((b, s), -100, "int64")
        rows = np.repeat(np.arange(b), y["mask_ids"].shape[1])
        keep = y["mask_weights"].reshape(-1) > 0
        mlm[rows[keep], x["mask_positions"].reshape(-1)[keep]] = y[
            "mask_ids"
        ].reshape(-1)[keep]
        return {
            "labels": torch.from_numpy(mlm),
            "next_sentence_label": torch.from_numpy(
                y["next_sentence_label"].reshape(-1)
            ).long(),
        }

    def heldout_accuracy():
        model.eval()
        hits = weight = 0.0
        with (
            torch.no_grad(),
            torch.autocast("cpu", torch.bfloat16, enabled=bf16),
        ):
            for x, y in evaluation:
                x, y = (
                    {k: np.asarray(v) for k, v in d.items()} for d in (x, y)
                )
                logits = model(**inputs(x)).prediction_logits.float()
                picked = np.take_along_axis(
                    logits.numpy(), x["mask_positions"][..., None], 1
                )
                hit = picked.argmax(-1) == y["mask_ids"]
                hits += float((hit * y["mask_weights"]).sum())
                weight += float(y["mask_weights"].sum())
        model.train()
        return hits / weight if weight else None

    train_s = 0.0
    model.train()
    for step in range(1, steps + 1):
        t = time.perf_counter()
        x, y = next(batches)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = model(**inputs(x), **labels(x, y)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.clipnorm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        train_s += time.perf_counter() - t
        if step % a.eval_every == 0 or step == steps:
            log.add(
                {
                    "impl": "transformers",
                    "step": step,
                    "mlm_accuracy": heldout_accuracy(),
                    "train_s": round(train_s, 2),
                    "wall_s": round(time.perf_counter() - start, 2),
                    "bf16_autocast": bf16,
                }
            )


def summary(rows):
    rows = [r for r in rows if "impl" in r]  # not the machine line
    ref = [r for r in rows if r["impl"] == "transformers"]
    if not ref:
        return None
    target = ref[-1]
    out = {
        "target": {
            "mlm_accuracy": target["mlm_accuracy"],
            "step": target["step"],
        }
    }
    for impl in ("transformers", "kerasbert"):
        first = next(
            (
                r
                for r in rows
                if r["impl"] == impl
                and r["mlm_accuracy"] is not None
                and r["mlm_accuracy"] >= target["mlm_accuracy"]
            ),
            None,
        )
        out[impl] = (
            None
            if first is None
            else {k: first[k] for k in ("step", "train_s", "wall_s")}
        )
    if out["kerasbert"] and out["transformers"]:
        for clock in ("train_s", "wall_s"):
            out[f"kerasbert_over_transformers_{clock}"] = round(
                out["kerasbert"][clock] / out["transformers"][clock], 3
            )
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--which", default="both", choices=("both", "transformers", "kerasbert")
    )
    p.add_argument(
        "--corpus",
        default=os.path.join(DATA, "wikitext-2-raw-v1", "wiki.valid.raw"),
    )
    p.add_argument(
        "--heldout-corpus",
        default=os.path.join(DATA, "wikitext-2-raw-v1", "wiki.test.raw"),
    )
    p.add_argument(
        "--tokenizer",
        default=os.path.join(DATA, "bert_vocab", "bert-base-uncased-vocab.txt"),
    )
    p.add_argument("--size", default="mini")
    p.add_argument("--sequence-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=600)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="runs/time-to-quality")
    a = p.parse_args(argv)
    os.makedirs(a.output_dir, exist_ok=True)
    log = Log(os.path.join(a.output_dir, "time_to_quality.jsonl"))
    with open(log.path, "w", encoding="utf-8"):
        pass  # a fresh log per invocation
    log.add({"machine": cpu_info()})
    if a.which in ("both", "transformers"):
        run_transformers(a, extra, log)
    if a.which in ("both", "kerasbert"):
        run_kerasbert(a, extra, log)
    result = summary(log.rows)
    if result:
        log.add({"summary": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
