"""kerasbert's training step next to keras-hub's and HF's, run alternately.

    python benchmarks/peers.py [--precision bfloat16|float32] [--rounds 5]
        [--steps 8] [--configs kerasbert:0,kerasbert:1,kerashub:0,...]
        [--output FILE.json]

Each configuration (`impl:jit`) lives in its own worker process that builds
its model once and then waits; the driver asks each in turn for `--steps`
timed steps, `--rounds` times. On a shared or thermally busy machine all
configurations thus see the same conditions, which one-after-the-other runs
do not. Per configuration it prints the median tokens/s over all timed steps
and the spread of the round medians; then kerasbert's best over each peer's
best. CPU flags and load average are printed before and after.

The peers are set up as in `../shared/bench/peers_cpu.py` (same synthetic
batch: random ids, 20 predictions, vocabulary 30,522):
  kerashub  keras_hub BertBackbone + MaskedLMHead (masked positions only) +
            Dense(2) NSP, AdamW, Keras' train_function like kerasbert;
  hf        transformers BertForPreTraining (MLM logits at every position,
            as HF computes them) + torch AdamW; bfloat16 = CPU autocast.
kerasbert runs the step `fit` runs (`throughput.compiled_pretrainer`, which
calls `kerasbert.training.build.compile_pretrainer`; an `@SOURCE` checkout
must have it).
Needs keras-hub and torch + transformers: benchmarks/requirements.txt.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# impl:jit[:precision][:field=value...][@SOURCE]. HF's best on CPU may be
# float32 even when bf16 is native, so both are tried. `kerasbert` takes
# ModelConfig overrides (`kerasbert:0:bfloat16:attention_dropout=0`) and
# `@SOURCE`, another checkout to import kerasbert from: a before/after of a
# code change, measured alternately.
DEFAULT_CONFIGS = (
    "kerasbert:0,kerasbert:1,kerashub:0,kerashub:1,hf:0,hf:0:float32"
)


def _kerasbert_step(a, x, y):
    import throughput as tp  # beside this file

    from kerasbert.config import ModelConfig, TrainConfig

    overrides = json.loads(a.overrides or "{}")
    cfg = ModelConfig.from_size(a.size, vocabulary_size=a.vocab, **overrides)
    train = TrainConfig(
        batch_size=a.batch,
        jit_compile="on" if a.jit else "off",
        precision="mixed_bfloat16" if a.precision == "bfloat16" else "float32",
    )
    model, *_ = tp.compiled_pretrainer(cfg, train, 10_000)
    return tp.StepTimer(model, x, y)


def _kerashub_step(a, x, y):
    import keras
    import keras_hub
    import throughput as tp  # beside this file

    from kerasbert.config import SIZES

    if a.precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    dims = SIZES[a.size]
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=a.vocab,
        num_layers=dims["num_layers"],
        num_heads=dims["num_heads"],
        hidden_dim=dims["hidden_dim"],
        intermediate_dim=dims["intermediate_dim"],
        max_sequence_length=512,
    )
    inputs = dict(backbone.input)
    positions = keras.Input((a.preds,), dtype="int32", name="mask_positions")
    out = backbone(inputs)
    mlm = keras_hub.layers.MaskedLMHead(
        vocabulary_size=a.vocab,
        token_embedding=backbone.token_embedding,
        intermediate_activation="gelu",
        name="mlm",
    )(out["sequence_output"], mask_positions=positions)
    nsp = keras.layers.Dense(2, name="nsp")(out["pooled_output"])
    model = keras.Model(
        {**inputs, "mask_positions": positions}, {"mlm": mlm, "nsp": nsp}
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-4),
        loss={"mlm": loss, "nsp": loss},
        jit_compile=bool(a.jit),
    )
    x = {**x, "padding_mask": x["padding_mask"].astype(bool)}
    y = {"mlm": y["mask_ids"], "nsp": y["next_sentence_label"]}
    return tp.StepTimer(model, x, y)


def _hf_step(a, x, y):
    import numpy as np
    import torch
    from transformers import BertConfig, BertForPreTraining

    from kerasbert.config import SIZES

    torch.manual_seed(0)
    dims = SIZES[a.size]
    model = BertForPreTraining(
        BertConfig(
            vocab_size=a.vocab,
            hidden_size=dims["hidden_dim"],
            num_hidden_layers=dims["num_layers"],
            num_attention_heads=dims["num_heads"],
            intermediate_size=dims["intermediate_dim"],
            max_position_embeddings=512,
        )
    )
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, s = x["token_ids"].shape
    labels = np.full((b, s), -100, dtype="int64")
    np.put_along_axis(
        labels,
        x["mask_positions"].astype("int64"),
        y["mask_ids"].astype("int64"),
        1,
    )
    batch = {
        "input_ids": torch.tensor(x["token_ids"], dtype=torch.long),
        "token_type_ids": torch.tensor(x["segment_ids"], dtype=torch.long),
        "attention_mask": torch.ones(b, s, dtype=torch.long),
        "labels": torch.tensor(labels),
        "next_sentence_label": torch.tensor(
            y["next_sentence_label"], dtype=torch.long
        ),
    }

    class Timer:  # as throughput.StepTimer: wall and CPU seconds per step
        def run(self, steps):
            times, self.cpu_times = [], []
            for _ in range(steps):
                t, c = time.perf_counter(), time.process_time()
                step()
                times.append(time.perf_counter() - t)
                self.cpu_times.append(time.process_time() - c)
            return times

    def step():
        with torch.autocast(
            "cpu",
            dtype=torch.bfloat16,
            enabled=a.precision == "bfloat16",
        ):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    return Timer()


STEPS = {
    "kerasbert": _kerasbert_step,
    "kerashub": _kerashub_step,
    "hf": _hf_step,
}


def worker(a):
    """Builds one configuration, warms it up, then serves step requests:
    a line with N on stdin -> {"wall": [...], "cpu": [...]} on stdout,
    the wall and CPU seconds of N steps."""
    import throughput as tp  # beside this file

    x, y = tp.synthetic_batch(a.batch, a.seq, a.preds, a.vocab)
    timer = STEPS[a.impl](a, x, y)
    timer.run(a.warmup)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        wall = timer.run(int(line))
        print(json.dumps({"wall": wall, "cpu": timer.cpu_times}), flush=True)


def _start(impl, jit, precision, overrides, source, a, log):
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        "--jit",
        str(jit),
        "--precision",
        precision,
        "--overrides",
        json.dumps(overrides),
        "--size",
        a.size,
        "--seq",
        str(a.seq),
        "--batch",
        str(a.batch),
        "--preds",
        str(a.preds),
        "--vocab",
        str(a.vocab),
        "--warmup",
        str(a.warmup),
    ]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [source or root, os.environ.get("PYTHONPATH", "")]
        ),
    )
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    # One build at a time: a worker compiling would slow the others' steps.
    line = proc.stdout.readline()
    if not line or not json.loads(line).get("ready"):
        raise SystemExit(f"error: worker {impl}:{jit} failed (log {log.name})")
    return proc


def drive(a):
    import throughput as tp  # beside this file

    info = tp.cpu_info()
    print(tp.describe_cpu(info))
    configs = []
    for c in a.configs.split(","):
        c, _, source = c.partition("@")
        impl, jit, *rest = c.split(":")
        if impl not in STEPS:
            raise SystemExit(f"error: --configs: unknown implementation {impl}")
        precision = rest[0] if rest and "=" not in rest[0] else a.precision
        overrides = {
            k: json.loads(v)
            for k, v in (r.split("=", 1) for r in rest if "=" in r)
        }
        label = ":".join([impl, *[f"{k}={v}" for k, v in overrides.items()]])
        if source:
            label += f"@{os.path.basename(source.rstrip('/'))}"
        configs.append(
            (label, impl, int(jit), precision, overrides, source or None)
        )
    log = tempfile.NamedTemporaryFile(
        "w", prefix="peers-", suffix=".log", delete=False
    )
    workers = {}
    try:
        for label, impl, jit, precision, overrides, source in configs:
            workers[(label, jit, precision)] = _start(
                impl, jit, precision, overrides, source, a, log
            )
        load_before = os.getloadavg()
        times = {k: [] for k in workers}
        cpu = {k: [] for k in workers}
        rounds = {k: [] for k in workers}
        for r in range(a.rounds):
            order = list(workers) if r % 2 == 0 else list(workers)[::-1]
            for k in order:
                proc = workers[k]
                proc.stdin.write(f"{a.steps}\n")
                proc.stdin.flush()
                got = json.loads(proc.stdout.readline())
                times[k] += got["wall"]
                cpu[k] += got["cpu"]
                rounds[k].append(statistics.median(got["wall"]))
        load_after = os.getloadavg()
    finally:
        for proc in workers.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    tokens = a.batch * a.seq
    rows = []
    for (impl, jit, precision), ts in times.items():
        # impl: a label, "kerasbert:attention_dropout=0@base" for a variant
        per_round = [tokens / t for t in rounds[(impl, jit, precision)]]
        rows.append(
            {
                "impl": impl,
                "jit": jit,
                "precision": precision,
                "tokens_per_s": round(tokens / statistics.median(ts), 1),
                "tokens_per_cpu_s": round(
                    tokens / statistics.median(cpu[(impl, jit, precision)]), 1
                ),
                "round_min": round(min(per_round), 1),
                "round_max": round(max(per_round), 1),
                "steps": len(ts),
            }
        )
    best = {}  # per implementation; kerasbert's variants aside
    for row in rows:
        if row["impl"] in STEPS and row["tokens_per_s"] > best.get(
            row["impl"], {}
        ).get("tokens_per_s", 0):
            best[row["impl"]] = row
    ratios = {
        f"kerasbert/{impl}": round(
            best["kerasbert"]["tokens_per_s"] / row["tokens_per_s"], 3
        )
        for impl, row in best.items()
        if impl != "kerasbert" and "kerasbert" in best
    }
    result = {
        "size": a.size,
        "seq": a.seq,
        "batch": a.batch,
        "preds": a.preds,
        "vocab": a.vocab,
        "precision": a.precision,
        "rounds": a.rounds,
        "steps_per_round": a.steps,
        "rows": rows,
        "ratios": ratios,
        "cpu": info,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(
        f"{a.size}, sequence {a.seq}, batch {a.batch}, {a.preds} "
        f"predictions, vocabulary {a.vocab}, {a.precision}; {a.rounds} "
        f"alternating rounds of {a.steps} steps; load average "
        f"{load_before[0]:.2f} -> {load_after[0]:.2f}"
    )
    print(
        "\n| implementation | precision | XLA | tokens/s (median) | "
        "round medians | tokens per CPU-second |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['impl']} | {row['precision']} | "
            f"{'on' if row['jit'] else 'off'} | "
            f"{row['tokens_per_s']:,.0f} | {row['round_min']:,.0f}-"
            f"{row['round_max']:,.0f} | {row['tokens_per_cpu_s']:,.0f} |"
        )
    print()
    for name, ratio in ratios.items():
        print(f"{name} (best of each, wall): {ratio:.2f}x")
    for impl, row in best.items():
        if impl != "kerasbert" and "kerasbert" in best:
            r = best["kerasbert"]["tokens_per_cpu_s"] / row["tokens_per_cpu_s"]
            print(f"kerasbert/{impl} per CPU-second (same rows): {r:.2f}x")
    if a.output:
        with open(a.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--precision", default="bfloat16", choices=["bfloat16", "float32"]
    )
    p.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help=f"impl:jit list (default {DEFAULT_CONFIGS})",
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="steps per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--size", default="mini")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--preds", type=int, default=20)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--output", help="also write the JSON here")
    p.add_argument("--worker", dest="impl", help=argparse.SUPPRESS)
    p.add_argument("--jit", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--overrides", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.impl:
        worker(a)
    else:
        drive(a)


if __name__ == "__main__":
    main()
