"""Tokens/s of one kerasbert pretraining step (MLM + NSP), peers beside it.

    python benchmarks/step_speed.py [--size mini] [--seq 128] [--batch 32]
        [--precision float32|bfloat16] [--jit 0|1] [--peers]

Same synthetic batch as ../shared/bench/peers_cpu.py (vocab 30,522, 20
predictions), `model.train_on_batch` with AdamW, median over `--steps`
timed steps after `--warmup`. `--peers` also runs that script's keras-hub
peer (and HF with `--hf`) in this session, one after the other, and prints
the ratio. Needs keras-hub (and torch for --hf): benchmarks/requirements.txt.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PEERS = os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                     "bench", "peers_cpu.py")


def measure(args):
    import keras
    import numpy as np

    from kerasbert.config import ModelConfig
    from kerasbert.modeling import build_pretrainer
    from kerasbert.training.optimization import make_optimizer

    if args.precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    cfg = ModelConfig.from_size(args.size, vocabulary_size=args.vocab)
    rng = np.random.default_rng(0)
    b, s, p, v = args.batch, args.seq, args.preds, args.vocab
    x = {
        "token_ids": rng.integers(5, v, size=(b, s)).astype("int32"),
        "segment_ids": np.concatenate(
            [np.zeros((b, s // 2)), np.ones((b, s - s // 2))], 1
        ).astype("int32"),
        "padding_mask": np.ones((b, s), "int32"),
        "mask_positions": np.sort(np.stack([
            rng.choice(np.arange(1, s - 1), p, replace=False)
            for _ in range(b)]), 1).astype("int32"),
    }
    y = {
        "mask_ids": rng.integers(5, v, size=(b, p)).astype("int32"),
        "mask_weights": np.ones((b, p), "float32"),
        "next_sentence_label": rng.integers(0, 2, size=(b,)).astype("int32"),
    }
    model = build_pretrainer(**vars(cfg))
    model.compile(optimizer=make_optimizer("adamw", 1e-4, 1000),
                  jit_compile=bool(args.jit))
    times = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    return {"impl": "kerasbert", "size": args.size, "seq": s, "batch": b,
            "precision": args.precision, "jit": args.jit,
            "median_step_s": round(step, 4),
            "tokens_per_s": round(b * s / step, 1)}


def run_peer(peer, args):
    cmd = [sys.executable, PEERS, peer, "--precision", args.precision,
           "--jit", str(args.jit), "--seq", str(args.seq),
           "--batch", str(args.batch), "--steps", str(args.steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mini")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--preds", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default="bfloat16",
                        choices=["float32", "bfloat16"])
    parser.add_argument("--jit", type=int, default=0)
    parser.add_argument("--peers", action="store_true")
    parser.add_argument("--hf", action="store_true")
    args = parser.parse_args()
    if args.peers and not os.path.exists(PEERS):
        sys.exit(f"error: {PEERS} not found (needs ../shared)")
    ours = measure(args)
    print(json.dumps(ours))
    if args.peers:
        for peer in ["kerashub"] + (["hf"] if args.hf else []):
            theirs = run_peer(peer, args)
            print(json.dumps(theirs))
            ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
            print(f"kerasbert / {peer}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
