"""Where a training step's time goes: TensorFlow's profiler, op time by kind.

    python benchmarks/step_profile.py [--impl kerasbert|kerashub]
        [--precision bfloat16|float32] [--size mini] [--steps 10]
        [--trace-dir DIR]

Builds the step as `peers.py` does (kerasbert: the model, optimizer and
loss `fit` uses; kerashub: keras-hub's BertBackbone + MaskedLMHead), on
its synthetic batch (batch 32, sequence 128, 20 predictions), runs a few
untraced steps, then traces --steps steps and sums each op's time over
all TensorFlow threads, per step: matmuls, dropout (its random numbers
included), LayerNorm, AdamW's update and the rest (softmax cross-entropy,
GELU, casts, bias adds...), plus the op kinds that cost most. Op time on
both threads adds up to more than the wall time of a step. The trace
stays in --trace-dir for TensorBoard's profile plugin.

Reads the trace through TensorFlow's bundled XPlane protobuf
(`tensorflow.tsl.profiler.protobuf`), which is not a public API.
"""

import argparse
import collections
import glob
import os
import shutil
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's kerasbert, installed or not


def op_times(trace_dir, steps):
    """{(group, op kind): milliseconds per step} from the trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(
        glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    )[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    times = collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                # Op events are "scope/of/the/op:OpKind"; the step's ops
                # live under the train function's StatefulPartitionedCall.
                name = names.get(event.metadata_id, "")
                if ":" not in name or not name.startswith(
                    "StatefulPartitionedCall"
                ):
                    continue
                scope, kind = name.rsplit(":", 1)
                if "/adam_w/" in scope:
                    group = "AdamW update"
                elif "dropout" in scope:
                    group = "dropout"
                elif "layer_norm" in scope:
                    group = "LayerNorm"
                elif "MatMul" in kind:
                    group = "matmul"
                else:
                    group = "rest"
                times[group, kind] += event.duration_ps / 1e9 / steps
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--impl", default="kerasbert", choices=["kerasbert", "kerashub"]
    )
    p.add_argument(
        "--precision", default="bfloat16", choices=["bfloat16", "float32"]
    )
    p.add_argument("--size", default="mini")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--trace-dir", default="/tmp/kerasbert-step-profile")
    a = p.parse_args()
    import peers  # beside this file: the same setups as the comparison
    import tensorflow as tf
    import throughput as tp  # beside this file

    print(tp.describe_cpu(tp.cpu_info()))
    a.vocab, a.batch, a.seq, a.preds, a.jit, a.overrides = (
        30522,
        32,
        128,
        20,
        0,
        None,
    )
    x, y = tp.synthetic_batch(a.batch, a.seq, a.preds, a.vocab)
    timer = peers.STEPS[a.impl](a, x, y)
    untraced = statistics.median(timer.run(5 + a.steps)[5:])
    shutil.rmtree(a.trace_dir, ignore_errors=True)
    tf.profiler.experimental.start(a.trace_dir)
    traced = statistics.median(timer.run(a.steps))
    tf.profiler.experimental.stop()
    times = op_times(a.trace_dir, a.steps)
    total = sum(times.values())
    groups = collections.Counter()
    for (group, _), ms in times.items():
        groups[group] += ms
    print(
        f"{a.impl}, {a.size}, {a.precision}, batch {a.batch}, sequence "
        f"{a.seq}: step {untraced * 1e3:.0f} ms untraced, "
        f"{traced * 1e3:.0f} ms traced; op time {total:.0f} ms per step "
        "on all threads\n"
    )
    print("| part | ms per step | share |")
    print("|---|---:|---:|")
    for group, ms in groups.most_common():
        print(f"| {group} | {ms:.0f} | {ms / total:.1%} |")
    print("\n| op kind (part) | ms per step | share |")
    print("|---|---:|---:|")
    kinds = collections.Counter()
    for (group, kind), ms in times.items():
        kinds[f"{kind} ({group})"] += ms
    for kind, ms in kinds.most_common(12):
        print(f"| {kind} | {ms:.1f} | {ms / total:.1%} |")


if __name__ == "__main__":
    main()
