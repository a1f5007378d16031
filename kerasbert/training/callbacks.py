"""Keras callbacks of a run: backups, divergence, metrics, checkpoints.

Their order in `fit` matters and `callback_stack` is the one place that
builds them: StepCounter first (every other callback reads its step), then
DivergenceGuard (the others skip saving once it fired), then the epoch-end
evaluation (`EpochEvaluation`, which adds `val_*` to the epoch's logs),
then MetricsLogger, CheckpointSaver, EarlyStopper (which reads the best
checkpoint's step) and StepBackup last, so an epoch-end backup is written
after that epoch's validation row and checkpoint: a resume from it never
skips them. Each callback gets what it
reads from the others as a constructor argument; none sets another's
attributes.
"""

import csv
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
import zipfile

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


class StepCounter(keras.callbacks.Callback):
    """The run's one step counter: batches trained so far, which is what
    the data position, metrics.csv, backups, resume and the best-checkpoint
    record use.

    Counted here rather than read off the optimizer, whose counters mean
    other things under its wrappers: with gradient accumulation
    `iterations` counts updates (batches // k); under loss scaling
    (mixed_float16) the compiled optimizer is a `LossScaleOptimizer` whose
    own `_iterations` never moves, and the inner one's moves only on steps
    whose gradients were finite (an overflowing step is skipped). It comes
    first in the callback stack, so every callback after it sees this
    batch's step.
    """

    def __init__(self, step: int = 0):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1


def optimizer_step(model) -> int:
    """The innermost optimizer's batch counter (`_iterations`; loss
    scaling wraps it): a backup records it, so a restore can tell that
    Keras really loaded the optimizer state."""
    optimizer = model.optimizer
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return int(optimizer._iterations.numpy())


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


def load_model_weights(model, path: str) -> None:
    """`model.load_weights(path)` for a `.keras` file, from an extracted
    copy of its weights: Keras reads them inside the zip, where each of
    h5py's backward seeks makes Python 3.11's zipfile re-read the entry
    from its start: 7.4 s against 0.7 s for a MiniLM classifier's
    checkpoint with its optimizer state (260 MiB; 2026-12-02, 2-core
    EPYC). The copy sits beside `path` (same disk) and goes when loaded."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory(dir=folder, prefix=".weights-") as tmp:
        with zipfile.ZipFile(path) as archive:
            weights = archive.extract("model.weights.h5", tmp)
        model.load_weights(weights)


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
        counter,
        restore_dir=None,
        metrics=None,
        checkpoints=None,
        guard=None,
        log=print,
    ):
        super().__init__()
        self.dir = backup_dir
        self.restore_dir = restore_dir or backup_dir
        self.every = every
        self.counter = counter  # StepCounter: the step of each backup
        self.metrics = metrics  # MetricsLogger: its row count is saved
        self.checkpoints = checkpoints  # CheckpointSaver: its best record
        self.guard = guard  # DivergenceGuard: no backup once it fired
        self.log = log
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
        if _diverged(self.guard) or not weights_finite(self.model):
            return False
        with atomic_dir(os.path.join(self.dir, f"step-{step}")) as tmp:
            weights = os.path.join(tmp, "weights.weights.h5")
            self.model.save_weights(weights)
            save_hidden_state(self.model, os.path.join(tmp, "state.npz"))
            meta = {
                "step": step,
                "optimizer_step": optimizer_step(self.model),
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
        step = self.counter.step
        if step % self.every == 0:
            self.save(step)

    def on_epoch_end(self, epoch, logs=None):
        step = self.counter.step
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
        returns its meta (None: no backup); the caller sets the step
        counter to its "step". Damaged ones are named and skipped, never
        silently."""
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
            # (Backups written before "optimizer_step" was recorded come
            # from float32 runs, where it equals the step.)
            if optimizer_step(model) != meta.get("optimizer_step", step):
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

    It comes first in the callback stack (after the step counter): the
    callbacks after it are given it and skip saving once `diverged_at` is
    set, so the last good files survive.
    """

    def __init__(self, counter):
        super().__init__()
        self.counter = counter
        self.diverged_at = None
        self.bad_loss = None

    def on_train_batch_end(self, batch, logs=None):
        fault_point("train_step")
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged_at = self.counter.step
            self.bad_loss = float(loss)
            self.model.stop_training = True


def _diverged(guard) -> bool:
    return guard is not None and guard.diverged_at is not None


class EpochEvaluation(keras.callbacks.Callback):
    """Adds a task's validation metrics as `val_*` to each epoch's logs.

    It comes before every callback that reads them (metrics, checkpoints,
    TensorBoard, the progress bar): they all receive the same logs dict.
    `evaluate(model)` returns {metric: value}.
    """

    def __init__(self, evaluate, guard=None):
        super().__init__()
        self.evaluate = evaluate
        self.guard = guard

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or _diverged(self.guard):
            return
        logs.update(
            {f"val_{k}": v for k, v in self.evaluate(self.model).items()}
        )


def csv_columns(metric_names, unit) -> tuple[str, ...]:
    """metrics.csv's columns, for every task: where a row is, the task's
    metrics, then the bookkeeping (`unit`: what a step's throughput
    counts, e.g. "tokens")."""
    return (
        "step",
        "epoch",
        "split",
        *metric_names,
        "learning_rate",
        f"{unit}_per_second",
        "seconds",
    )


class MetricsLogger(keras.callbacks.Callback):
    """Appends train rows every `every` steps and validation rows per epoch.

    Metrics are reset after each row, so a row is the mean over its window
    of steps -- the same numbers whether or not the run was resumed. On a
    resume, `keep_rows(n)` cuts the file back to the rows the backup saw.
    """

    def __init__(
        self,
        path,
        every,
        metric_names,
        unit,
        units_per_step,
        counter,
        validation_split="validation",
        guard=None,
        total_steps=None,
    ):
        super().__init__()
        self.path = path
        self.counter = counter
        self.every = every
        self.metric_names = tuple(metric_names)
        self.columns = csv_columns(metric_names, unit)
        self.units_per_step = units_per_step
        self.guard = guard
        self.total_steps = total_steps  # its step always closes a row
        self.validation_split = validation_split  # its epoch-end rows' split
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
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(rows)

    def row_at(self, step: int, split: str) -> dict:
        """The metrics of the `split` row at `step`, as written ({}:
        none)."""
        for row in reversed(self.rows):
            if row["split"] == split and int(row["step"]) == step:
                return {
                    k: float(row[k])
                    for k in self.metric_names
                    if row.get(k)  # "" or, in older files, no column
                }
        return {}

    def log_row(
        self, step, split, metrics, seconds=None, ups=None, lr=None, epoch=None
    ):
        """Appends one row; `ups`: units (tokens, examples) per second."""
        epoch = self.epoch if epoch is None else epoch
        row = {"step": str(step), "epoch": str(epoch), "split": split}
        for k in self.metric_names:
            v = metrics.get(k)
            row[k] = "" if v is None else f"{float(v):.6g}"
        row["learning_rate"] = "" if lr is None else f"{lr:.6g}"
        row[self.columns[-2]] = "" if ups is None else f"{ups:.1f}"
        row["seconds"] = "" if seconds is None else f"{seconds:.3f}"
        self.rows.append(row)
        new = not os.path.exists(self.path)
        # Appending a line is not atomic, but the backup records the row
        # count and a resume cuts the file back to it, so a torn last line
        # never survives a resume.
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.columns)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._window_steps += 1
        step = self.counter.step
        if _diverged(self.guard):
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
            ups=self._window_steps * self.units_per_step / seconds,
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
        if _diverged(self.guard):
            return
        held_out = {
            k[4:]: v for k, v in (logs or {}).items() if k.startswith("val_")
        }
        if held_out:
            self.log_row(self.counter.step, self.validation_split, held_out)


class CheckpointSaver(keras.callbacks.Callback):
    """Saves `latest.keras` every epoch and `best.keras` on a new best
    validation `monitor` (`mode` "min" or "max"; the train value when there
    is no validation). A model with a non-finite value or weights is never
    saved: the files left are the last good ones."""

    def __init__(
        self, latest, best, counter, monitor="loss", mode="min", guard=None
    ):
        super().__init__()
        self.counter = counter
        self.latest = latest
        self.best_path = best
        self.monitor = monitor
        self.sign = 1.0 if mode == "min" else -1.0  # compare sign * value
        self.guard = guard
        self.best = math.inf  # sign * the best value
        self.best_step = None

    def record(self) -> dict:
        return {
            self.monitor: None
            if math.isinf(self.best)
            else self.sign * self.best,
            "step": self.best_step,
        }

    def set_record(self, record) -> None:
        if record and record.get(self.monitor) is not None:
            self.best = self.sign * record[self.monitor]
            self.best_step = record["step"]

    def on_epoch_end(self, epoch, logs=None):
        if _diverged(self.guard):
            return
        logs = logs or {}
        self.save(logs.get(f"val_{self.monitor}", logs.get(self.monitor)))

    def save(self, value):
        if (
            value is None
            or not math.isfinite(value)
            or not weights_finite(self.model)
        ):
            return
        save_model_atomic(self.model, self.latest, fault="checkpoint")
        if self.sign * value < self.best:
            self.best = self.sign * float(value)
            self.best_step = self.counter.step
            # The model just written: link it rather than serialise again.
            copy_atomic(self.latest, self.best_path)
            write_json_atomic(
                os.path.splitext(self.best_path)[0] + ".json", self.record()
            )


class EarlyStopper(keras.callbacks.Callback):
    """Ends training at the end of the epoch that makes `patience` epochs
    in a row without a new best checkpoint (CheckpointSaver: the validation
    `monitor`); None: never.

    It keeps no state of its own: the best checkpoint's step and the step
    counter decide, and a backup holds both, so a run resumed anywhere
    stops where the uninterrupted one did (`due` tells a resumed run that
    it had already stopped).
    """

    def __init__(self, patience, steps_per_epoch, counter, checkpoints, guard):
        super().__init__()
        self.patience = patience
        self.steps_per_epoch = steps_per_epoch
        self.counter = counter
        self.checkpoints = checkpoints
        self.guard = guard
        self.stopped_at = None  # the step training stopped at, if early

    def due(self, step: int) -> bool:
        best = self.checkpoints.best_step
        if self.patience is None or best is None or step % self.steps_per_epoch:
            return False
        return (step - best) // self.steps_per_epoch >= self.patience

    def on_epoch_end(self, epoch, logs=None):
        step = self.counter.step
        if not _diverged(self.guard) and self.due(step):
            self.stopped_at = step
            self.model.stop_training = True


@dataclasses.dataclass
class CallbackStack:
    """The callbacks of a run, in the one order `fit` must call them."""

    counter: StepCounter
    guard: DivergenceGuard
    evaluation: EpochEvaluation | None
    metrics: MetricsLogger
    checkpoints: CheckpointSaver
    stopper: EarlyStopper
    backup: StepBackup

    @property
    def ordered(self) -> list:
        first = [self.counter, self.guard]
        first += [self.evaluation] if self.evaluation else []
        return first + [
            self.metrics,
            self.checkpoints,
            self.stopper,
            self.backup,
        ]


def callback_stack(
    model,
    run,
    *,
    evaluate,
    metric_names,
    unit,
    units_per_step,
    validation_split,
    monitor,
    mode,
    log_every,
    backup_every,
    total_steps,
    steps_per_epoch,
    patience=None,
    restore_dir=None,
    log=print,
) -> CallbackStack:
    """Builds a run's callbacks (see the module docstring for the order),
    each given what it reads from the ones before it. `run`: a `RunDir`;
    `evaluate(model)`: the epoch-end validation metrics, or None;
    `patience`: epochs without a better checkpoint before stopping."""
    counter = StepCounter()
    guard = DivergenceGuard(counter)
    evaluation = EpochEvaluation(evaluate, guard=guard) if evaluate else None
    metrics = MetricsLogger(
        run.metrics,
        log_every,
        metric_names,
        unit,
        units_per_step,
        counter,
        validation_split=validation_split,
        guard=guard,
        total_steps=total_steps,
    )
    checkpoints = CheckpointSaver(
        run.latest, run.best, counter, monitor=monitor, mode=mode, guard=guard
    )
    stopper = EarlyStopper(
        patience, steps_per_epoch, counter, checkpoints, guard
    )
    backup = StepBackup(
        run.backup,
        backup_every,
        counter,
        restore_dir=restore_dir,
        metrics=metrics,
        checkpoints=checkpoints,
        guard=guard,
        log=log,
    )
    stack = CallbackStack(
        counter, guard, evaluation, metrics, checkpoints, stopper, backup
    )
    for callback in stack.ordered:
        callback.set_model(model)
    return stack
