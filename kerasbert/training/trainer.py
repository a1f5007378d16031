"""The run framework: one training loop, resume and run directory for
every task.

A task is a small object that knows its model and data; the `Trainer`
owns everything else: the precision choice (`build.apply_precision`), the
strategy, the callback stack (`callbacks.callback_stack`: divergence
guard, epoch-end evaluation, metrics.csv, checkpoints, bit-exact step
backups), resuming from a backup, and the end of the run. A task supplies:

    metric_names      metrics.csv's metric columns (train logs, validation)
    unit              what throughput counts ("tokens", "examples")
    units_per_step    that many per training step
    validation_split  the split name of the epoch-end validation rows
    monitor, mode     the metric that picks best.keras (and early
                      stopping's), "min" or "max"
    keep_training_state
                      False: checkpoints/ and backup/ go once complete
    build_model(jit)  the compiled model, its weights and optimizer built
                      (called under the strategy's scope)
    train_dataset(start_step, num_workers=1, worker_index=0)
                      batches from global step `start_step` on, the same
                      ones whether or not the run was resumed
    evaluate(model)   the epoch-end validation metrics ({}: none)
    finish(model, finished)
                      final evaluation and export (model.keras, plots,
                      ...); returns the summary the Trainer writes to
                      `run.summary`

`model.fit` drives single-device and `MirroredStrategy` training.
`MultiWorkerMirroredStrategy` + `fit` fails in Keras 3 (keras-team/keras
#20585, a PerReplica conversion error), so multi-worker runs use a short
loop of our own: `strategy.run` of a gradient step and the same Keras
optimizer. Both write the same files and log the same metrics.
"""

import dataclasses
import functools
import os
import shutil
import time

import keras
import tensorflow as tf

from kerasbert.errors import TrainingDiverged
from kerasbert.files import write_json_atomic
from kerasbert.training import callbacks, hardware
from kerasbert.training.build import apply_precision
from kerasbert.training.plan import plan_fit_calls


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long a run trains and how often it writes."""

    total_steps: int
    steps_per_epoch: int
    log_every: int  # a train row of metrics.csv every this many steps
    backup_every: int  # a backup/step-N every this many steps
    # Early stopping: epochs in a row without a better validation value of
    # the task's monitor before training ends (None: train total_steps).
    patience: int | None = None


@dataclasses.dataclass
class Finished:
    """What a task's `finish` is given besides the model."""

    run: object  # the RunDir
    rows: list  # metrics.csv's rows as written (strings)
    row_at: object  # MetricsLogger.row_at: (step, split) -> {metric: value}
    log_row: object  # MetricsLogger.log_row: adds a row (e.g. a test split)
    # of the last epoch unless told another
    best_step: int | None  # the step best.keras was saved at
    log: object
    stopped_at: int | None = None  # the step of an early stop, if any


class Trainer:
    """Trains `task` for `schedule` in `run_dir` (a `RunDir`).

    `precision`: an object with the `precision` and `jit_compile` fields
    (a TrainConfig or FinetuneConfig); `strategy`: hardware.make_strategy's
    name; `extra_callbacks`: more Keras callbacks for `model.fit`;
    `restore_dir`: where to resume from, if not this run's backup/.
    """

    def __init__(
        self,
        task,
        schedule: Schedule,
        run_dir,
        precision,
        strategy: str = "default",
        verbose=1,
        log=print,
        extra_callbacks=(),
        restore_dir=None,
    ):
        self.task = task
        self.schedule = schedule
        self.dir = run_dir
        self.precision = precision
        self.strategy_name = strategy
        self.verbose = verbose
        self.log = log
        self.extra_callbacks = list(extra_callbacks)
        self.restore_dir = restore_dir

    def run(self, resume=False) -> dict:
        """Builds, restores (`resume`), trains and finishes; returns the
        summary (empty on a non-chief worker)."""
        task, schedule = self.task, self.schedule
        policy, why, jit = apply_precision(self.precision)
        strategy = hardware.make_strategy(self.strategy_name)
        chief = hardware.is_chief(strategy)
        self.log(
            f"precision: {policy} ({why}); jit_compile: {jit}; "
            f"strategy: {type(strategy).__name__.lstrip('_')} "
            f"({strategy.num_replicas_in_sync} replica(s))"
        )
        with strategy.scope():
            model = task.build_model(jit)
        stack = callbacks.callback_stack(
            model,
            self.dir,
            evaluate=task.evaluate,
            metric_names=task.metric_names,
            unit=task.unit,
            units_per_step=task.units_per_step,
            validation_split=task.validation_split,
            monitor=task.monitor,
            mode=task.mode,
            log_every=schedule.log_every,
            backup_every=schedule.backup_every,
            total_steps=schedule.total_steps,
            steps_per_epoch=schedule.steps_per_epoch,
            patience=schedule.patience,
            restore_dir=self.restore_dir,
            log=self.log,
        )

        meta = stack.backup.restore() if resume else None
        start = meta["step"] if meta else 0
        if meta:
            self.log(
                f"resuming from step {start} (backup in "
                f"{stack.backup.restore_dir})"
            )
            stack.counter.step = start
            stack.checkpoints.set_record(meta["best"])
            if stack.stopper.due(start):
                # Killed after its early stop: nothing left to train.
                stack.stopper.stopped_at = start
        elif resume:
            self.log("no backup found; starting from step 0")
        if chief:
            stack.metrics.keep_rows(meta["metrics_rows"] if meta else 0)

        t0 = time.perf_counter()
        if stack.stopper.stopped_at is not None:
            pass
        elif self.strategy_name == "multi_worker":
            self._custom_loop(model, stack, strategy, start)
        else:
            self._fit(model, stack, start)
        seconds = time.perf_counter() - t0
        stopped = stack.stopper.stopped_at
        if stopped is not None and stack.guard.diverged_at is None:
            best = stack.checkpoints.best_step
            self.log(
                f"early stop after epoch {stopped // schedule.steps_per_epoch}"
                f": {schedule.patience} epoch(s) without a better validation "
                f"{task.monitor} than epoch "
                f"{best // schedule.steps_per_epoch}'s"
            )

        if stack.guard.diverged_at is not None:
            self._diverged(stack)
        if not chief:
            return {}
        summary = self._finish(model, stack)
        if start and stopped != start:
            self.log(
                f"this session trained steps {start + 1}-"
                f"{stack.counter.step} in {seconds:.1f} s"
            )
        return summary

    def _diverged(self, stack):
        guard = stack.guard
        saved = [p for _, p in stack.backup.backups()]
        if os.path.exists(self.dir.latest):
            saved.insert(0, self.dir.latest)
        if saved:
            where = f"the last good checkpoint is {saved[0]}"
        else:
            # Nothing learned is lost: without the folder the suggested
            # rerun is a new run, not one "with other settings".
            shutil.rmtree(self.dir.path, ignore_errors=True)
            where = "nothing was saved"
        raise TrainingDiverged(
            f"training diverged at step {guard.diverged_at} "
            f"(loss={guard.bad_loss}): a non-finite loss; stopped, {where}"
        )

    def _fit(self, model, stack, start):
        callback_list = [
            *stack.ordered,
            keras.callbacks.TensorBoard(
                self.dir.logs,
                update_freq=self.schedule.log_every,
                write_graph=False,
            ),
            *self.extra_callbacks,
        ]
        for initial_epoch, epochs, steps in plan_fit_calls(
            self.schedule.total_steps, self.schedule.steps_per_epoch, start
        ):
            model.fit(
                self.task.train_dataset(stack.counter.step),
                initial_epoch=initial_epoch,
                epochs=epochs,
                steps_per_epoch=steps,
                callbacks=callback_list,
                shuffle=False,
                verbose=self.verbose,
            )
            if stack.guard.diverged_at is not None:
                return
            if stack.stopper.stopped_at is not None:
                return

    def _custom_loop(self, model, stack, strategy, start):
        """Multi-worker: Keras' own `train_step` under `strategy.run`,
        driving the same callbacks as `fit` (metric windows, backups,
        validation rows, checkpoints), so both paths log and save alike.
        Non-chief workers write theirs to a scratch directory."""

        def dataset_fn(ctx):
            return self.task.train_dataset(
                stack.counter.step,
                num_workers=ctx.num_input_pipelines,
                worker_index=ctx.input_pipeline_id,
            )

        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))

        @tf.function
        def train_step(batch):
            strategy.run(model.train_step, args=(batch,))
            # Read in cross-replica context: sums over every worker.
            return model.get_metrics_result()

        callback_list = keras.callbacks.CallbackList(stack.ordered, model=model)
        for first, end, steps in plan_fit_calls(
            self.schedule.total_steps, self.schedule.steps_per_epoch, start
        ):
            callback_list.set_params({"steps": steps, "epochs": end})
            for epoch in range(first, end):
                model.reset_metrics()
                callback_list.on_epoch_begin(epoch)
                for batch in range(steps):
                    logs = {
                        k: float(v)
                        for k, v in train_step(next(iterator)).items()
                    }
                    callback_list.on_train_batch_end(batch, logs)
                    if model.stop_training:
                        return
                if self.verbose:
                    self.log(
                        f"step {stack.counter.step}/"
                        f"{self.schedule.total_steps} loss "
                        f"{logs['loss']:.4f}"
                    )
                callback_list.on_epoch_end(epoch, dict(logs))
                if model.stop_training:
                    return

    def _finish(self, model, stack):
        """The last checkpoint and backup, then the task's final evaluation
        and export, then the summary. Every step is idempotent and written
        atomically, and the backup at the last step is taken before the
        export, so a kill anywhere here reruns this function alone."""
        total = stack.stopper.stopped_at or self.schedule.total_steps
        assert stack.counter.step == total, (stack.counter.step, total)
        metrics = stack.metrics
        # The last step ends an epoch (see plan_fit_calls), so its
        # validation row is there; best-checkpoint values compare like with
        # like: epoch-end ones (the train value without validation).
        value = metrics.row_at(total, self.task.validation_split).get(
            self.task.monitor
        )
        if value is None:
            train = metrics.row_at(total, "train")
            value = train.get(self.task.monitor)
        stack.checkpoints.save(value)
        stack.backup.save(total)
        summary = self.task.finish(
            model,
            Finished(
                run=self.dir,
                rows=metrics.rows,
                row_at=metrics.row_at,
                # A resumed finish runs no epoch: the rows it adds belong
                # to the last one, as in an uninterrupted run.
                log_row=functools.partial(
                    metrics.log_row,
                    epoch=(total - 1) // self.schedule.steps_per_epoch,
                ),
                best_step=stack.checkpoints.best_step,
                log=self.log,
                stopped_at=stack.stopper.stopped_at,
            ),
        )
        write_json_atomic(self.dir.summary, summary)
        if not self.task.keep_training_state:
            # Complete: the resume state has no use left.
            shutil.rmtree(self.dir.backup, ignore_errors=True)
            shutil.rmtree(self.dir.checkpoints, ignore_errors=True)
        return summary
