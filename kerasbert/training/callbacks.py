"""Keras callbacks of a pretraining run: backups, divergence, metrics,
checkpoints.

Their order in `fit` matters and is fixed by the trainer: DivergenceGuard
first (the others skip saving once it fired), then the held-out evaluation
(`evaluation.EpochEvaluation`, which adds `val_*` to the epoch's logs), then
MetricsLogger, CheckpointSaver and StepBackup last, so an epoch-end backup
is written after that epoch's held-out row and checkpoint: a resume from it
never skips them.
"""

import csv
import json
import math
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from kerasbert.errors import UsageError
from kerasbert.files import (
    atomic_dir,
    atomic_path,
    copy_atomic,
    fault_point,
    sha256_file,
    write_json_atomic,
)


def global_step(model) -> int:
    """Batches trained so far. With gradient accumulation the optimizer's
    `iterations` counts updates (batches // k); `_iterations` counts
    batches, which is what the data position and every schedule here use."""
    return int(model.optimizer._iterations.numpy())


def weights_finite(model) -> bool:
    """False if any weight is NaN/inf: such a model is never saved."""
    return all(
        bool(tf.reduce_all(tf.math.is_finite(v.value)))
        for v in model.weights
        if v.dtype in ("float16", "bfloat16", "float32", "float64")
    )


def save_model_atomic(model, path: str, fault: str | None = None) -> None:
    """`model.save(path)` via a temp file; `fault` names a fault point
    between the write and the rename (see files.fault_point)."""
    with atomic_path(path) as tmp:
        model.save(tmp, overwrite=True)
        if fault:
            fault_point(fault)


def _hidden_state(model, metrics=True):
    """Variables that decide the next step but are not weights: dropout
    seed-generator states and (`metrics`) the running metric sums."""
    weights = {id(v) for v in model.weights}
    seeds = [v for v in model.variables if id(v) not in weights]
    return seeds + (list(model.metrics_variables) if metrics else [])


def _local_value(variable) -> np.ndarray:
    """A variable's value on this device. Reading a tf.distribute
    sync-on-read (metric) variable as a whole is a collective that every
    worker must join; the chief saves alone, so it reads its own copy
    (with several local replicas, mid-window metric sums are approximate
    after a resume: each replica restarts from the first one's)."""
    value = variable.value
    if hasattr(value, "_get_on_device_or_primary"):
        value = value._get_on_device_or_primary()
    return tf.convert_to_tensor(value).numpy()


def save_hidden_state(model, path: str, metrics: bool = True) -> None:
    """Writes `_hidden_state` to `path` (.npz): with the weights and the
    optimizer, what makes the next step the same after a resume. Without
    `metrics` for a resume at an epoch's start, where Keras resets them
    (and a compiled metric may not be built yet)."""
    np.savez(path, *[_local_value(v) for v in _hidden_state(model, metrics)])


def load_hidden_state(
    model, path: str, metrics: bool = True
) -> list[np.ndarray]:
    """Assigns what `save_hidden_state` wrote; returns the values."""
    with np.load(path) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    hidden = _hidden_state(model, metrics)
    if len(values) != len(hidden):
        raise UsageError(f"{path}: state of another model")
    for v, value in zip(hidden, values):
        v.assign(value)
    return values


class StepBackup(keras.callbacks.Callback):
    """Everything that makes step N+1 what it is, every `every` steps.

    `backup/step-N/` holds `weights.weights.h5` (model and optimizer),
    `state.npz` (dropout seed states, metric sums) and `meta.json` (the
    step, how many rows metrics.csv had, the best-checkpoint record and the
    files' SHA-256). A folder is written whole or not at all (`atomic_dir`);
    the last two are kept, so a damaged newest one falls back to the one
    before with a one-line message. At an epoch's last step the backup waits
    for `on_epoch_end`, after that epoch's evaluation and checkpoint.
    """

    KEEP = 2

    def __init__(
        self,
        backup_dir,
        every,
        restore_dir=None,
        metrics=None,
        checkpoints=None,
        log=print,
    ):
        super().__init__()
        self.dir = backup_dir
        self.restore_dir = restore_dir or backup_dir
        self.every = every
        self.metrics = metrics  # MetricsLogger: its row count is saved
        self.checkpoints = checkpoints  # CheckpointSaver: its best record
        self.log = log
        self.enabled = True
        self._pending_state = None

    # Writing.

    def backups(self, folder=None):
        """(step, path) of every complete backup in `folder` (default:
        ours), newest first."""
        folder = folder or self.dir
        if not os.path.isdir(folder):
            return []
        found = []
        for name in os.listdir(folder):
            if name.startswith("step-") and name[5:].isdigit():
                found.append((int(name[5:]), os.path.join(folder, name)))
        return sorted(found, reverse=True)

    def save(self, step: int, epoch_end: bool = False) -> bool:
        """Writes `step-N/`; refuses (returns False) if weights are NaN.
        `epoch_end`: the next step begins an epoch, whose metric sums start
        from zero (Keras resets them), so a resume must not restore ours."""
        if not self.enabled or not weights_finite(self.model):
            return False
        with atomic_dir(os.path.join(self.dir, f"step-{step}")) as tmp:
            weights = os.path.join(tmp, "weights.weights.h5")
            self.model.save_weights(weights)
            save_hidden_state(self.model, os.path.join(tmp, "state.npz"))
            meta = {
                "step": step,
                "epoch_end": epoch_end,
                "metrics_rows": (len(self.metrics.rows) if self.metrics else 0),
                "best": (
                    self.checkpoints.record() if self.checkpoints else None
                ),
                "sha256": {
                    name: sha256_file(os.path.join(tmp, name))
                    for name in ("weights.weights.h5", "state.npz")
                },
            }
            write_json_atomic(os.path.join(tmp, "meta.json"), meta)
        for _, old in self.backups()[self.KEEP :]:
            shutil.rmtree(old, ignore_errors=True)
        fault_point("after_backup")
        return True

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == (self.params or {}).get("steps"):
            return  # an epoch's last step: on_epoch_end saves
        step = global_step(self.model)
        if step % self.every == 0:
            self.save(step)

    def on_epoch_end(self, epoch, logs=None):
        step = global_step(self.model)
        if step % self.every == 0:
            self.save(step, epoch_end=True)

    # Reading.

    def _check(self, folder):
        try:
            with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
                meta = json.load(f)
            for name, digest in meta["sha256"].items():
                if sha256_file(os.path.join(folder, name)) != digest:
                    raise ValueError(f"{name} does not match its checksum")
            return meta
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{folder}: damaged backup ({e})") from None

    def restore(self) -> dict | None:
        """Loads the newest good backup into the built, compiled model and
        returns its meta (None: no backup). Damaged ones are named and
        skipped, never silently."""
        model = self.model
        for step, folder in self.backups(self.restore_dir):
            try:
                meta = self._check(folder)
            except UsageError as e:
                self.log(f"warning: {e}; trying an older one")
                continue
            if not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            model.load_weights(os.path.join(folder, "weights.weights.h5"))
            values = load_hidden_state(model, os.path.join(folder, "state.npz"))
            hidden = _hidden_state(model)
            # `fit` resets the metrics as an epoch begins: put the saved sums
            # back after that, in on_epoch_begin.
            if not meta.get("epoch_end"):
                self._pending_state = values[
                    len(hidden) - len(model.metrics_variables) :
                ]
            if global_step(model) != step:
                # Keras skips (with a warning) optimizer state of another
                # shape, e.g. a backup from before the fused QKV kernel.
                raise UsageError(
                    f"{folder}: the optimizer state does not fit this model "
                    "(a backup written by another kerasbert version?); pass "
                    "--overwrite to start the run afresh"
                )
            assert int(meta["step"]) == step
            return meta
        if self.backups(self.restore_dir):
            self.log("warning: no usable backup; starting from step 0")
        return None

    def on_epoch_begin(self, epoch, logs=None):
        if self._pending_state is not None:
            for v, value in zip(
                self.model.metrics_variables, self._pending_state
            ):
                v.assign(value)
            self._pending_state = None


class DivergenceGuard(keras.callbacks.Callback):
    """Stops at the first non-finite loss, before anything saves NaNs.

    Put it first in the callback list: later callbacks (backups, checkpoints)
    check `diverged_at` and skip saving, so the last good files survive.
    """

    def __init__(self, backups=()):
        super().__init__()
        self.diverged_at = None
        self.bad_loss = None
        self.backups = list(backups)

    def on_train_batch_end(self, batch, logs=None):
        fault_point("train_step")
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged_at = global_step(self.model)
            self.bad_loss = float(loss)
            self.model.stop_training = True
            for backup in self.backups:
                backup.enabled = False


METRIC_COLUMNS = (
    "loss",
    "mlm_loss",
    "nsp_loss",
    "mlm_accuracy",
    "nsp_accuracy",
)
CSV_COLUMNS = (
    "step",
    "epoch",
    "split",
    *METRIC_COLUMNS,
    "learning_rate",
    "tokens_per_second",
    "seconds",
)


class MetricsLogger(keras.callbacks.Callback):
    """Appends train rows every `every` steps and held-out rows per epoch.

    Metrics are reset after each row, so a row is the mean over its window
    of steps -- the same numbers whether or not the run was resumed. On a
    resume, `keep_rows(n)` cuts the file back to the rows the backup saw.
    """

    def __init__(
        self, path, every, tokens_per_step, guard=None, total_steps=None
    ):
        super().__init__()
        self.path = path
        self.every = every
        self.tokens_per_step = tokens_per_step
        self.guard = guard
        self.total_steps = total_steps  # its step always closes a row
        self.epoch = 0
        self._window_start = time.perf_counter()
        self._window_steps = 0
        self.rows = []

    def keep_rows(self, count: int) -> None:
        """Keeps the first `count` rows of metrics.csv (0: none)."""
        rows = []
        if os.path.exists(self.path):
            try:
                with open(self.path, newline="", encoding="utf-8") as f:
                    rows = list(csv.DictReader(f))[:count]
            except (OSError, csv.Error, UnicodeDecodeError) as e:
                raise UsageError(
                    f"{self.path}: unreadable ({e}); pass "
                    "--overwrite to start afresh"
                ) from None
        if len(rows) < count:
            raise UsageError(
                f"{self.path}: {len(rows)} rows, the backup "
                f"expects {count}; pass --overwrite"
            )
        self.rows = rows
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, CSV_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)

    def log_row(self, step, split, metrics, seconds=None, tps=None, lr=None):
        row = {"step": str(step), "epoch": str(self.epoch), "split": split}
        for k in METRIC_COLUMNS:
            v = metrics.get(k)
            row[k] = "" if v is None else f"{float(v):.6g}"
        row["learning_rate"] = "" if lr is None else f"{lr:.6g}"
        row["tokens_per_second"] = "" if tps is None else f"{tps:.1f}"
        row["seconds"] = "" if seconds is None else f"{seconds:.3f}"
        self.rows.append(row)
        new = not os.path.exists(self.path)
        # Appending a line is not atomic, but the backup records the row
        # count and a resume cuts the file back to it, so a torn last line
        # never survives a resume.
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, CSV_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._window_steps += 1
        step = global_step(self.model)
        if self.guard is not None and self.guard.diverged_at is not None:
            return
        if step % self.every and step != self.total_steps:
            return  # the run's last step always closes a row
        seconds = time.perf_counter() - self._window_start
        lr = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        )
        self.log_row(
            step,
            "train",
            logs or {},
            seconds=seconds,
            tps=self._window_steps * self.tokens_per_step / seconds,
            lr=lr,
        )
        steps_in_epoch = (self.params or {}).get("steps") or 0
        if batch + 1 < steps_in_epoch:
            # Not at an epoch's end: there Keras reports the epoch's logs
            # (progress bar, checkpoints) from these metrics, then resets.
            self.model.reset_metrics()
        self._window_start = time.perf_counter()
        self._window_steps = 0

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.diverged_at is not None:
            return
        held_out = {
            k[4:]: v for k, v in (logs or {}).items() if k.startswith("val_")
        }
        if held_out:
            self.log_row(global_step(self.model), "heldout", held_out)


class CheckpointSaver(keras.callbacks.Callback):
    """Saves `latest.keras` every epoch and `best.keras` on a new best
    held-out loss (train loss when there is no held-out set). A model with
    a non-finite loss or weights is never saved: the files left are the
    last good ones."""

    def __init__(self, latest, best, guard=None):
        super().__init__()
        self.latest = latest
        self.best_path = best
        self.guard = guard
        self.best = math.inf
        self.best_step = None

    def record(self) -> dict:
        return {
            "loss": None if math.isinf(self.best) else self.best,
            "step": self.best_step,
        }

    def set_record(self, record) -> None:
        if record and record.get("loss") is not None:
            self.best, self.best_step = record["loss"], record["step"]

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.diverged_at is not None:
            return
        logs = logs or {}
        self.save(logs.get("val_loss", logs.get("loss")))

    def save(self, loss):
        if (
            loss is None
            or not math.isfinite(loss)
            or not weights_finite(self.model)
        ):
            return
        save_model_atomic(self.model, self.latest, fault="checkpoint")
        if loss < self.best:
            self.best, self.best_step = float(loss), global_step(self.model)
            # The model just written: link it rather than serialise again.
            copy_atomic(self.latest, self.best_path)
            write_json_atomic(
                os.path.splitext(self.best_path)[0] + ".json", self.record()
            )
