"""Training pieces: dtype policy, strategy, optimizer and schedule, callbacks.

`kerasbert.run` strings them together; each piece is small enough to test on
its own.

A *step* here is one batch through `train_step`. With gradient accumulation
the optimizer applies an update every `gradient_accumulation_steps` steps, and
the learning-rate schedule (like Keras' own) counts steps, not updates.
"""

import csv
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from kerasbert.config import JIT_COMPILE, OPTIMIZERS, PRECISIONS, STRATEGIES
from kerasbert.errors import UsageError
from kerasbert.schedules import WarmupLinearDecay

# --------------------------------------------------------------------------
# Hardware choices.


def _cpu_has_bf16() -> bool:
    # AVX512_BF16 / AMX make bf16 matmuls native; without them TF emulates
    # bf16 on the CPU and mixed precision is slower than float32.
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def select_precision(precision: str) -> tuple[str, str]:
    """Returns (Keras dtype policy name, why it was chosen)."""
    if precision not in PRECISIONS:
        raise UsageError(
            f"--precision: unknown value {precision!r} "
            f"(choose from {', '.join(PRECISIONS)})")
    if precision != "auto":
        return precision, "requested"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        major = tf.config.experimental.get_device_details(gpus[0]).get(
            "compute_capability", (0, 0))[0]
        if major >= 8:  # Ampere and later compute in bf16 natively.
            return "mixed_bfloat16", "GPU with native bfloat16"
        # Older GPUs: fp16 tensor cores; Keras adds dynamic loss scaling.
        return "mixed_float16", "GPU without bfloat16 (loss scaling on)"
    if _cpu_has_bf16():
        return "mixed_bfloat16", "CPU with AVX512_BF16/AMX"
    return "float32", "CPU without native bfloat16"


def select_jit_compile(jit_compile: str) -> bool:
    """XLA helps on GPUs; on CPUs graph mode was faster here (see README)."""
    if jit_compile not in JIT_COMPILE:
        raise UsageError(
            f"--jit-compile: unknown value {jit_compile!r} "
            "(choose from auto, on, off)")
    if jit_compile == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return jit_compile == "on"


def make_strategy(name: str):
    """Returns a tf.distribute strategy (multi_worker reads TF_CONFIG)."""
    if name not in STRATEGIES:
        raise UsageError(
            f"--strategy: unknown value {name!r} "
            f"(choose from {', '.join(STRATEGIES)})")
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(
            "/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if "TF_CONFIG" not in os.environ:
        raise UsageError(
            "--strategy multi_worker: set TF_CONFIG (cluster and task) "
            "for every worker")
    try:
        json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as e:
        raise UsageError(f"TF_CONFIG: not valid JSON ({e})") from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    """Only the chief writes the run directory in multi-worker training."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0)


# --------------------------------------------------------------------------
# Optimizer.


def make_optimizer(name, learning_rate, total_steps, warmup_ratio=0.1,
                   weight_decay=0.01, clipnorm=1.0,
                   gradient_accumulation_steps=1, epsilon=1e-6):
    """AdamW (default) or LAMB with BERT's schedule and decay exclusions."""
    if name not in OPTIMIZERS:
        raise UsageError(
            f"--optimizer: unknown value {name!r} "
            f"(choose from {', '.join(OPTIMIZERS)})")
    schedule = WarmupLinearDecay(
        learning_rate, int(round(warmup_ratio * total_steps)), total_steps)
    common = dict(
        learning_rate=schedule, weight_decay=weight_decay,
        beta_1=0.9, beta_2=0.999, epsilon=epsilon,
        global_clipnorm=clipnorm if clipnorm > 0 else None,
        gradient_accumulation_steps=(
            gradient_accumulation_steps
            if gradient_accumulation_steps > 1 else None),
    )
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(**common)
    else:
        optimizer = keras.optimizers.Lamb(**common)
    # As in BERT: LayerNorm scales/offsets and biases are not decayed;
    # pulling them to zero only hurts. Keras matches these as regexes on
    # variable names ("gamma", "beta", "bias", "output_bias", ...).
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def unigram_log_prior(counts, pseudo_count=0.1):
    """Log unigram frequencies from token `counts`: a starting MLM bias.

    With a zero bias the MLM head starts uniform (loss ln V, 10.3 nats for
    30,522 tokens) and spends its first ~100 steps learning word frequencies
    through the bias before context can pay off. Starting the bias at the
    training corpus' log frequencies (as one starts a classifier's bias at
    the log class priors) gives that for free. Measured on the learning
    benchmark (README): held-out MLM loss 7.196 -> 7.140 at 600 steps.
    `pseudo_count` keeps unseen tokens (and the special tokens, which are
    never targets) finite, 1.3% of the mass in all on WikiText-2 valid.
    """
    counts = np.asarray(counts, np.float64) + pseudo_count
    return np.log(counts / counts.sum()).astype(np.float32)


# --------------------------------------------------------------------------
# Fit plan: exact step counts across epochs and resumes.


def plan_fit_calls(total_steps: int, steps_per_epoch: int, start_step: int):
    """Splits the remaining steps into `model.fit` calls.

    Keras replays an interrupted epoch from its first batch, so a resumed run
    cannot reuse one `fit(epochs=E)` call. Instead the remainder of the
    interrupted epoch, the full epochs, and a final short epoch each get
    their own call (`fit` needs one `steps_per_epoch` per call). Returns a
    list of `(initial_epoch, epochs, steps_per_epoch)`.
    """
    calls = []
    step = start_step
    while step < total_steps:
        epoch = step // steps_per_epoch
        epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
        length = epoch_end - step
        if (calls and step % steps_per_epoch == 0
                and calls[-1][2] == length == steps_per_epoch):
            first, _, _ = calls[-1]
            calls[-1] = (first, epoch + 1, length)
        else:
            calls.append((epoch, epoch + 1, length))
        step = epoch_end
    return calls


# --------------------------------------------------------------------------
# Callbacks.


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
