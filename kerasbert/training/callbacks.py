"""Keras callbacks of a pretraining run: backups, divergence, metrics,
checkpoints."""

import csv
import json
import math
import os
import time

import keras
import tensorflow as tf


def weights_finite(model) -> bool:
    """False if any weight is NaN/inf: such a model is never saved."""
    return all(bool(tf.reduce_all(tf.math.is_finite(v.value)))
               for v in model.weights
               if v.dtype in ("float16", "bfloat16", "float32", "float64"))


def atomic_save(model, path: str, weights_only: bool = False) -> None:
    """Saves to `path` via a temp file, so a kill never leaves half a file."""
    suffix = ".weights.h5" if weights_only else ".keras"
    tmp = f"{path[: -len(suffix)]}.tmp{suffix}"
    if weights_only:
        model.save_weights(tmp, overwrite=True)
    else:
        model.save(tmp, overwrite=True)
    os.replace(tmp, path)


class StepBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` with atomic writes and an exact global step.

    Keras' own callback writes `latest.weights.h5` in place and remembers
    only the epoch, so a kill mid-write loses the backup and a resume replays
    the epoch. This one writes weights (model and optimizer state) to a temp
    file and renames it, records the global step, and leaves the restore to
    `restore()`, which the trainer calls before it plans the fit calls.
    """

    def __init__(self, backup_dir, every):
        super().__init__(backup_dir, save_freq=every, delete_checkpoint=False)
        self.every = every
        self.enabled = True

    def restore(self, model) -> int:
        """Loads the backup into a built, compiled model; returns its step."""
        if not os.path.exists(self._training_metadata_path):
            return 0
        with open(self._training_metadata_path, encoding="utf-8") as f:
            meta = json.load(f)
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self._weights_path)
        return int(meta["step"])

    def on_train_begin(self, logs=None):
        pass  # restore() already ran; Keras would reload and reset epochs.

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer._iterations.numpy())
        if self.enabled and step % self.every == 0:
            self.save(step)

    def on_epoch_end(self, epoch, logs=None):
        pass  # Steps, not epochs, drive backups; the trainer saves at the end.

    def save(self, step: int) -> bool:
        """Writes the backup; refuses (returns False) if weights are NaN."""
        if not weights_finite(self.model):
            self.enabled = False
            return False
        os.makedirs(self.backup_dir, exist_ok=True)
        atomic_save(self.model, self._weights_path, weights_only=True)
        tmp = f"{self._training_metadata_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"step": step, "time": time.time()}, f)
        os.replace(tmp, self._training_metadata_path)
        return True


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
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged_at = int(self.model.optimizer._iterations.numpy())
            self.bad_loss = float(loss)
            self.model.stop_training = True
            for backup in self.backups:
                backup.enabled = False


METRIC_COLUMNS = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy",
                  "nsp_accuracy")
CSV_COLUMNS = ("step", "epoch", "split", *METRIC_COLUMNS, "learning_rate",
               "tokens_per_second", "seconds")


class MetricsLogger(keras.callbacks.Callback):
    """Appends train rows every `every` steps and held-out rows per epoch.

    Metrics are reset after each row, so a row is the mean over its window
    of steps -- the same numbers whether or not the run was resumed.
    """

    def __init__(self, path, every, tokens_per_step, guard=None,
                 total_steps=None):
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

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows the crashed run wrote after its backup."""
        if not os.path.exists(self.path):
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        self._write(rows, mode="w")

    def _write(self, rows, mode="a"):
        new = not os.path.exists(self.path) or mode == "w"
        tmp = f"{self.path}.tmp"
        if mode == "w":
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, CSV_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, self.path)
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, CSV_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def log_row(self, step, split, metrics, seconds=None, tps=None, lr=None):
        row = {"step": step, "epoch": self.epoch, "split": split}
        for k in METRIC_COLUMNS:
            v = metrics.get(k)
            row[k] = "" if v is None else f"{float(v):.6g}"
        row["learning_rate"] = "" if lr is None else f"{lr:.6g}"
        row["tokens_per_second"] = "" if tps is None else f"{tps:.1f}"
        row["seconds"] = "" if seconds is None else f"{seconds:.3f}"
        self.rows.append(row)
        self._write([row])

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._window_steps += 1
        step = int(self.model.optimizer._iterations.numpy())
        if self.guard is not None and self.guard.diverged_at is not None:
            return
        if step % self.every and step != self.total_steps:
            return  # the run's last step always closes a row
        seconds = time.perf_counter() - self._window_start
        lr = float(keras.ops.convert_to_numpy(
            self.model.optimizer.learning_rate))
        self.log_row(step, "train", logs or {}, seconds=seconds,
                     tps=self._window_steps * self.tokens_per_step / seconds,
                     lr=lr)
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
        held_out = {k[4:]: v for k, v in (logs or {}).items()
                    if k.startswith("val_")}
        if held_out:
            step = int(self.model.optimizer._iterations.numpy())
            self.log_row(step, "heldout", held_out)


class CheckpointSaver(keras.callbacks.Callback):
    """Saves `latest.keras` every epoch and `best.keras` on a new best
    held-out loss (train loss when there is no held-out set)."""

    def __init__(self, directory, guard=None):
        super().__init__()
        self.directory = directory
        self.guard = guard
        self.best = math.inf
        self._best_path = os.path.join(directory, "best.json")
        if os.path.exists(self._best_path):
            with open(self._best_path, encoding="utf-8") as f:
                self.best = json.load(f)["loss"]

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.diverged_at is not None:
            return
        logs = logs or {}
        loss = logs.get("val_loss", logs.get("loss"))
        self.save(loss)

    def save(self, loss):
        if not weights_finite(self.model):
            return  # keep the last good checkpoint
        os.makedirs(self.directory, exist_ok=True)
        latest = os.path.join(self.directory, "latest.keras")
        atomic_save(self.model, latest)
        if loss is not None and math.isfinite(loss) and loss < self.best:
            self.best = float(loss)
            atomic_save(self.model, os.path.join(self.directory,
                                                 "best.keras"))
            step = int(self.model.optimizer._iterations.numpy())
            tmp = f"{self._best_path}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"loss": self.best, "step": step}, f)
            os.replace(tmp, self._best_path)
