"""The GPU rehearsal: the real commands under the settings a GPU run gets.

No GPU is needed: TensorFlow runs mixed_float16 (with Keras' loss
scaling), mixed_bfloat16 and XLA on the CPU too, and `tests/launch.py`
splits the CPU into two logical devices so `--strategy mirrored` runs two
replicas. A covering subset, not the product of every setting:

    fit       mixed_float16 + XLA, killed mid-run and resumed: identical
              to a run never interrupted
    fit       mixed_bfloat16 + mirrored over two devices
    fit       packed short texts (--no-nsp), mixed_float16 + XLA, killed
              mid-run and resumed: identical to a run never interrupted
    finetune  mixed_bfloat16 + mirrored over two devices
    finetune  mixed_float16 + XLA: the compiled programs are counted
    finetune  mixed_bfloat16 + XLA, padded to --max-length (no bucketing)
    adapt     mixed_float16, all three stages (XLA: the same tasks as
              fit's and finetune's, rehearsed above)

Each checks the step column and the logging interval, a complete summary,
finite losses, and that the saved model loads and predicts. What only a
real GPU can show (speed, fp16 tensor cores, NCCL) is listed in
docs/performance.md.
"""

import collections
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from test_resume import rows as timeless_rows
from test_resume import summary, weights
from tiny_finetune import FIXTURES, source_task, tiny_args

from kerasbert import adapt, fill_mask, predict

pytestmark = pytest.mark.integration

HERE = os.path.dirname(__file__)
FIT = [
    "--max-steps",
    "8",
    "--steps-per-epoch",
    "4",
    "--log-every",
    "2",
    "--backup-every",
    "2",
    "--sequence-length",
    "32",
    "--batch-size",
    "8",
    "--vocab-size",
    "1000",
    "--max-predictions",
    "5",
    "--eval-batches",
    "2",
    "--final-eval-batches",
    "2",
    "--holdout-fraction",
    "0.2",
    "--quiet",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(
        os.environ,
        KERASBERT_CACHE=str(tmp_path_factory.mktemp("cache")),
        TF_CPP_MIN_LOG_LEVEL="2",
        KERAS_BACKEND="tensorflow",
        PYTHONUNBUFFERED="1",
    )
    for name in ("TF_CONFIG", "KERASBERT_FAULT"):
        e.pop(name, None)
    return e


def run(module, args, env, devices=1, fault=None, count_xla=False):
    """`python -m module args` (on `devices` logical CPUs); with
    `count_xla`, TensorFlow logs each XLA compilation on stderr."""
    env = dict(env)
    if fault:
        env["KERASBERT_FAULT"] = fault
    if count_xla:
        env.update(TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="device_compiler=2")
    launch = [os.path.join(HERE, "launch.py"), str(devices)]
    out = subprocess.run(
        [sys.executable, *launch, module, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if fault:
        assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    else:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def xla_programs(stderr) -> collections.Counter:
    """Programs XLA compiled, per function (TF's device_compiler log)."""
    return collections.Counter(
        re.sub(r"_\d+$", "", name)
        for name in re.findall(
            r"Instantly compiling for signature: (\S+)", stderr
        )
    )


def rows(run_dir):
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def check_rows(run_dir, train_steps, validation_steps, split, losses):
    """The step column and logging interval, every loss finite."""
    found = rows(run_dir)
    steps = [int(r["step"]) for r in found if r["split"] == "train"]
    assert steps == train_steps
    steps = [int(r["step"]) for r in found if r["split"] == split]
    assert steps == validation_steps
    for r in found:
        for name in losses:
            if r[name] != "":
                assert math.isfinite(float(r[name])), r


def check_pretrained(run_dir, steps, cli):
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["steps"] == written["best_checkpoint_step"] == steps
    assert None not in written.values(), written
    # The saved model loads and predicts.
    code, out, err = cli(
        fill_mask.main, ["--model", run_dir, "the [MASK] was released ."]
    )
    assert code == 0 and "[MASK]" not in out, err
    return written


def check_classifier(out_dir, cli):
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert {"validation", "test", "best_epoch"} <= set(metrics)
    assert 0.5 <= metrics["test"]["accuracy"] <= 1
    assert math.isfinite(metrics["test"]["loss"])
    code, out, err = cli(
        predict.main, ["--model", out_dir, "--json", "i feel so happy"]
    )
    assert code == 0, err
    probabilities = json.loads(out)["probabilities"].values()
    assert sum(probabilities) == pytest.approx(1, 1e-4)


def test_fit_mixed_float16_xla_resumes_identically(env, tmp_path, cli):
    args = [*FIT, "--precision", "mixed_float16", "--jit-compile", "on"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    out = run("kerasbert.fit", [*args, "--output-dir", clean], env)
    assert "precision: mixed_float16" in out.stdout
    assert "jit_compile: True" in out.stdout
    check_rows(clean, [2, 4, 6, 8], [4, 8], "heldout", ["loss", "mlm_loss"])
    # The summary records the precision the run trained in.
    assert check_pretrained(clean, 8, cli)["precision"] == "mixed_float16"

    run(
        "kerasbert.fit",
        [*args, "--output-dir", killed],
        env,
        fault="train_step:7",
    )
    out = run("kerasbert.fit", [*args, "--output-dir", killed], env)
    assert "resuming from step 6" in out.stdout
    # test_resume's comparison: rows, summary and weights, timings aside.
    assert timeless_rows(killed) == timeless_rows(clean)
    assert summary(killed, "summary.json") == summary(clean, "summary.json")
    for x, y in zip(
        weights(killed / "model.keras"),
        weights(clean / "model.keras"),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)


def test_fit_packed_mixed_float16_xla_resumes_identically(env, tmp_path, cli):
    tweets = os.path.join(FIXTURES, "emotion_train.txt")  # text;label
    args = [
        *FIT,
        *("--corpus", tweets, "--corpus-format", "semicolon", "--no-nsp"),
        *("--precision", "mixed_float16", "--jit-compile", "on"),
    ]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    out = run("kerasbert.fit", [*args, "--output-dir", clean], env)
    assert "data: packing on; fill" in out.stdout
    check_rows(clean, [2, 4, 6, 8], [4, 8], "heldout", ["loss", "mlm_loss"])
    written = check_pretrained(clean, 8, cli)
    assert written["packing"] == "on" and 0 < written["fill"] <= 1
    run(
        "kerasbert.fit",
        [*args, "--output-dir", killed],
        env,
        fault="train_step:7",
    )
    out = run("kerasbert.fit", [*args, "--output-dir", killed], env)
    assert "resuming from step 6" in out.stdout
    assert timeless_rows(killed) == timeless_rows(clean)
    assert summary(killed, "summary.json") == summary(clean, "summary.json")
    for x, y in zip(
        weights(killed / "model.keras"),
        weights(clean / "model.keras"),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)


def test_fit_mixed_bfloat16_mirrored_on_two_devices(env, tmp_path, cli):
    run_dir = tmp_path / "run"
    args = [*FIT, "--precision", "mixed_bfloat16", "--strategy", "mirrored"]
    out = run("kerasbert.fit", [*args, "--output-dir", run_dir], env, devices=2)
    assert "MirroredStrategy (2 replica(s))" in out.stdout
    check_rows(run_dir, [2, 4, 6, 8], [4, 8], "heldout", ["loss", "mlm_loss"])
    check_pretrained(run_dir, 8, cli)


FINETUNE = tiny_args() + source_task(epochs=3)


def test_finetune_mixed_bfloat16_mirrored_on_two_devices(env, tmp_path, cli):
    from kerasbert.data.classification import steps_per_epoch

    out_dir = tmp_path / "out"
    args = [*FINETUNE, "--precision", "mixed_bfloat16"]
    out = run(
        "kerasbert.finetune",
        [*args, "--strategy", "mirrored", "--output-dir", out_dir],
        env,
        devices=2,
    )
    assert "MirroredStrategy (2 replica(s))" in out.stdout
    with open(os.path.join(FIXTURES, "source_train.tsv")) as f:
        n = sum(1 for _ in f) - 1  # its header
    epochs = [steps_per_epoch(n, 16) * e for e in (1, 2, 3)]
    check_rows(out_dir, epochs, epochs, "validation", ["loss"])
    check_classifier(out_dir, cli)


@pytest.mark.parametrize(
    "precision, extra",
    [("mixed_float16", []), ("mixed_bfloat16", ["--no-bucketing"])],
)
def test_finetune_xla_compiles_one_program_per_length(
    env, tmp_path, cli, precision, extra
):
    from kerasbert.data.classification import steps_per_epoch, xla_lengths

    out_dir = tmp_path / "out"
    args = [*FINETUNE, *extra, "--precision", precision, "--jit-compile", "on"]
    out = run(
        "kerasbert.finetune",
        [*args, "--output-dir", out_dir],
        env,
        count_xla=True,
    )
    # One program per length of the ladder at most (one when padded to
    # --max-length), where a program per batch shape would be dozens.
    # Validation and prediction run outside XLA: no programs of theirs.
    programs = xla_programs(out.stderr)
    assert set(programs) == {"__inference_one_step_on_data"}, programs
    train = programs["__inference_one_step_on_data"]
    assert 1 <= train <= (1 if extra else len(xla_lengths(64)))
    with open(os.path.join(FIXTURES, "source_train.tsv")) as f:
        n = sum(1 for _ in f) - 1  # its header
    check_rows(
        out_dir,
        [steps_per_epoch(n, 16) * e for e in (1, 2, 3)],
        [steps_per_epoch(n, 16) * e for e in (1, 2, 3)],
        "validation",
        ["loss"],
    )
    check_classifier(out_dir, cli)


def test_adapt_mixed_float16_every_stage(cli, tmp_path, source):
    out = tmp_path / "out"
    code, _, err = cli(
        adapt.main,
        [
            "--model",
            source,
            "--train",
            os.path.join(FIXTURES, "source_train.tsv"),
            "--validation",
            os.path.join(FIXTURES, "source_val.tsv"),
            "--test",
            os.path.join(FIXTURES, "source_val.tsv"),
            "--output-dir",
            out,
            "--head-steps",
            "4",
            "--adapt-steps",
            "6",
            "--adapt-batch-size",
            "8",
            "--adapt-sequence-length",
            "32",
            "--head-learning-rate",
            "1e-2",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--max-length",
            "64",
            "--learning-rate",
            "3e-3",
            "--precision",
            "mixed_float16",
            "--quiet",
        ],
    )
    assert code == 0, err
    # Pretraining stages log every 10 steps: the last step closes a row.
    check_rows(out / "heads", [4], [4], "heldout", ["loss", "mlm_loss"])
    check_rows(out / "adapted", [6], [6], "heldout", ["loss", "mlm_loss"])
    for stage, steps in (("heads", 4), ("adapted", 6)):
        check_pretrained(out / stage, steps, cli)
    check_classifier(out / "classifier", cli)
