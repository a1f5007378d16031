"""Kill a run anywhere, rerun the same command: the result is bit-exact.

A tiny run is SIGKILLed at one named place after another (files.fault_point:
mid-step, right after a backup, during an evaluation, inside a checkpoint
write, before the final export), rerunning the same command each time; the
last rerun finishes. Its metrics.csv, summary.json (timings aside) and
final weights must equal those of a run that was never interrupted: every
state that decides the next step (weights, optimizer, dropout seeds, data
position, metric windows, best-checkpoint record, evaluation schedule) is
in the backup.
"""

import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

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
TIMINGS = {"tokens_per_second", "seconds", "train_seconds"}
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


def run_fit(run_dir, env, fault=None):
    env = dict(env)
    env.pop("KERASBERT_FAULT", None)
    if fault:
        env["KERASBERT_FAULT"] = fault
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kerasbert.fit",
            *ARGS,
            "--output-dir",
            str(run_dir),
        ],
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


def summary(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in TIMINGS}


def weights(path):
    import keras

    import kerasbert.modeling  # noqa: F401

    model = keras.saving.load_model(str(path), safe_mode=True)
    return [np.asarray(w) for w in model.get_weights()]


def test_killed_anywhere_resumes_bit_exact(tmp_path):
    env = dict(
        os.environ,
        KERASBERT_CACHE=str(tmp_path / "cache"),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    env.pop("TF_CONFIG", None)
    clean = tmp_path / "clean"
    out = run_fit(clean, env)
    assert out.returncode == 0, out.stderr[-3000:]

    killed = tmp_path / "killed"
    for fault in FAULTS:
        out = run_fit(killed, env, fault)
        assert out.returncode == -signal.SIGKILL, (fault, out.stderr[-3000:])
        assert not (killed / "summary.json").exists(), fault
    out = run_fit(killed, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from step 12" in out.stdout  # the export kill's backup

    assert rows(killed) == rows(clean)
    assert summary(killed) == summary(clean)
    for name in ("model.keras", "checkpoints/best.keras"):
        for a, b in zip(weights(killed / name), weights(clean / name)):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert json.loads(
        (killed / "checkpoints/best.json").read_text()
    ) == json.loads((clean / "checkpoints/best.json").read_text())
    # Nothing the killed sessions were writing is left behind.
    leftovers = [p for p in killed.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers
    assert not (tmp_path / "killed.lock").exists()
