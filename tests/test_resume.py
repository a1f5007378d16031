"""Kill a run anywhere, rerun the same command: the result is bit-exact.

A tiny run is SIGKILLed at one named place after another (files.fault_point:
mid-step, right after a backup, during an evaluation, inside a checkpoint
write, before the final export), rerunning the same command each time; the
last rerun finishes. Its metrics files and final weights must equal those
of a run that was never interrupted: every state that decides the next step
(weights, optimizer, dropout seeds, data position, metric windows,
best-checkpoint record, evaluation schedule) is in the backup. Pretraining
and fine-tuning share the run framework, so both are checked the same way.
"""

import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from tiny_finetune import FIXTURES, tiny_args

pytestmark = pytest.mark.integration

ARGS = [
    "--max-steps",
    "12",
    "--steps-per-epoch",
    "4",
    "--backup-every",
    "2",
    "--log-every",
    "3",
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
    "4",
    "--holdout-fraction",
    "0.2",
    "--quiet",
]
TIMINGS = {
    "tokens_per_second",
    "real_tokens_per_second",
    "examples_per_second",
    "seconds",
    "train_seconds",
}
# Where each interrupted session dies, in order; the backup it resumes
# from is the newest one the previous session completed (the first kill's
# is the epoch-end backup of step 4; rows close every 3 steps, so a window
# spans each epoch boundary).
FAULTS = [
    "train_step:5",
    "after_backup:1",
    "evaluation:1",
    "checkpoint:1",
    "export:1",
]


# Fine-tuning: 12 steps an epoch, backups every 5 steps (so most lie
# inside an epoch and a metric window), a train row per epoch, dropout on.
FINETUNE_ARGS = tiny_args(
    hidden_dropout=0.1, attention_dropout=0.1, dropout=0.2
) + [
    "--train",
    os.path.join(FIXTURES, "source_train.tsv"),
    "--test",
    os.path.join(FIXTURES, "source_val.tsv"),
    "--epochs",
    "2",
    "--backup-every",
    "5",
]
# Sessions resume from steps 5, 10, 10, 10 and, after the export kill, 24.
FINETUNE_FAULTS = [
    "train_step:7",
    "after_backup:1",
    "evaluation:1",
    "checkpoint:1",
    "export:1",
]
# Early stopping: the validation accuracy of a model that barely moves
# never improves on epoch 1's, so --patience 1 ends the run after epoch 2
# of 6. The sessions die in epoch 2's evaluation (resume from step 12)
# and after the stop, in the export (resume from 24: nothing to train).
PATIENCE_ARGS = [
    *FINETUNE_ARGS[:-4],
    "--epochs",
    "6",
    "--patience",
    "1",
    "--learning-rate",
    "1e-9",
    "--backup-every",
    "5",
]
PATIENCE_FAULTS = ["evaluation:2", "export:1"]
CASES = {
    "fit": ("kerasbert.fit", ARGS, FAULTS, 12, "summary.json"),
    "finetune": (
        "kerasbert.finetune",
        FINETUNE_ARGS,
        FINETUNE_FAULTS,
        24,
        "metrics.json",
    ),
    "finetune_patience": (
        "kerasbert.finetune",
        PATIENCE_ARGS,
        PATIENCE_FAULTS,
        24,
        "metrics.json",
    ),
}


def run_command(command, run_dir, env, fault=None):
    module, args = CASES[command][:2]
    env = dict(env)
    env.pop("KERASBERT_FAULT", None)
    if fault:
        env["KERASBERT_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", module, *args, "--output-dir", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def rows(run_dir):
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
        return [
            {k: v for k, v in r.items() if k not in TIMINGS}
            for r in csv.DictReader(f)
        ]


def without_timings(value):
    if isinstance(value, dict):
        return {
            k: without_timings(v) for k, v in value.items() if k not in TIMINGS
        }
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def summary(run_dir, name):
    return without_timings(json.loads((run_dir / name).read_text()))


def weights(path):
    import keras

    import kerasbert.modeling  # noqa: F401

    model = keras.saving.load_model(str(path), safe_mode=True)
    return [np.asarray(w) for w in model.get_weights()]


@pytest.mark.parametrize("command", list(CASES))
def test_killed_anywhere_resumes_bit_exact(tmp_path, command):
    _, _, faults, last_step, summary_name = CASES[command]
    env = dict(
        os.environ,
        KERASBERT_CACHE=str(tmp_path / "cache"),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    env.pop("TF_CONFIG", None)
    clean = tmp_path / "clean"
    out = run_command(command, clean, env)
    assert out.returncode == 0, out.stderr[-3000:]

    killed = tmp_path / "killed"
    for fault in faults:
        out = run_command(command, killed, env, fault)
        assert out.returncode == -signal.SIGKILL, (fault, out.stderr[-3000:])
        assert not (killed / summary_name).exists(), fault
    out = run_command(command, killed, env)
    assert out.returncode == 0, out.stderr[-3000:]
    # The export kill's backup.
    assert f"resuming from step {last_step}" in out.stdout + out.stderr

    assert rows(killed) == rows(clean)
    if command == "finetune_patience":
        result = json.loads((clean / summary_name).read_text())
        assert result["stopped_early"] and result["epochs_trained"] == 2
        assert "early stop after epoch 2" in out.stdout
    assert summary(killed, summary_name) == summary(clean, summary_name)
    names = ["model.keras"]
    if command == "fit":  # fine-tuning removes its checkpoints once done
        names.append("checkpoints/best.keras")
        assert json.loads(
            (killed / "checkpoints/best.json").read_text()
        ) == json.loads((clean / "checkpoints/best.json").read_text())
    for name in names:
        for a, b in zip(
            weights(killed / name), weights(clean / name), strict=True
        ):
            np.testing.assert_array_equal(a, b, err_msg=name)
    # Nothing the killed sessions were writing is left behind.
    leftovers = [p for p in killed.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers
    assert not (tmp_path / "killed.lock").exists()
