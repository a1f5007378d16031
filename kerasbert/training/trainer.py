"""The training loop of a run: `model.fit`, or our own multi-worker loop.

`model.fit` drives single-device and `MirroredStrategy` training.
`MultiWorkerMirroredStrategy` + `fit` fails in Keras 3 (keras-team/keras
#20585, a PerReplica conversion error), so multi-worker runs use a short
loop of our own: `strategy.run` of a gradient step and the same Keras
optimizer. Both write the same files and log the same metrics.
"""

import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from kerasbert.errors import TrainingDiverged
from kerasbert.files import fault_point, write_json_atomic
from kerasbert.training import (
    callbacks,
    evaluation,
    hardware,
    optimization,
    plan,
)
from kerasbert.training.build import apply_precision, compile_pretrainer


def perplexity(mlm_loss):
    try:
        return math.exp(mlm_loss)
    except OverflowError:
        return float("inf")


class Trainer:
    """Trains one run to the end of its `TrainingPlan` (see plan.py).

    Everything it needs is given to the constructor; `run()` builds the
    model, restores a backup when resuming, trains and finishes the run
    directory (`RunDir`).
    """

    def __init__(
        self,
        model_cfg,
        data_cfg,
        train_cfg,
        tokenizer,
        corpus,
        training_plan,
        run_dir,
        verbose=1,
        log=print,
        callbacks=(),
        restore_dir=None,
    ):
        self.model_cfg = model_cfg
        self.data_cfg = data_cfg
        self.cfg = train_cfg
        self.tokenizer = tokenizer
        self.corpus = corpus
        self.plan = training_plan
        self.dir = run_dir
        self.verbose = verbose
        self.log = log
        self.extra_callbacks = list(callbacks)
        self.multi_worker = train_cfg.strategy == "multi_worker"
        self.restore_dir = restore_dir  # where to resume from, if not ours

    # ------------------------------------------------------------------
    # Data.

    def _dataset_kwargs(self):
        d = self.data_cfg
        return dict(
            sequence_length=d.sequence_length,
            max_predictions=d.max_predictions,
            mask_rate=d.mask_rate,
            whole_word=d.whole_word,
            nsp_probability=d.nsp_probability,
            short_seq_prob=d.short_seq_prob,
        )

    def train_dataset(self, start_batch, num_workers=1, worker_index=0):
        from kerasbert.data.pretraining import pretraining_dataset

        return pretraining_dataset(
            self.corpus,
            self.tokenizer,
            batch_size=self.cfg.batch_size,
            seed=self.cfg.seed,
            document_ids=self.plan.train_ids,
            repeat=True,
            start_batch=start_batch,
            num_workers=num_workers,
            worker_index=worker_index,
            **self._dataset_kwargs(),
        )

    @property
    def final_eval_batches(self):
        return self.cfg.final_eval_batches or self.cfg.eval_batches

    def heldout_set(self):
        """The fixed held-out batches (the same pairs and masks every
        time), enough for the epoch-end and the final evaluations; None
        when the plan has none."""
        from kerasbert.data.pretraining import pretraining_dataset

        if self.plan.heldout_corpus is None:
            return None
        ds = pretraining_dataset(
            self.plan.heldout_corpus,
            self.tokenizer,
            batch_size=self.cfg.batch_size,
            seed=self.cfg.seed + 1,
            document_ids=self.plan.heldout_ids,
            repeat=False,
            **self._dataset_kwargs(),
        )
        return evaluation.HeldoutSet(
            ds, max(self.cfg.eval_batches, self.final_eval_batches)
        )

    def train_token_counts(self):
        """Per-token-id counts over the training documents.

        The whole (memory-mapped) corpus is counted in one pass and the
        documents not trained on, a small share, subtracted: selecting the
        training documents instead would copy most of the corpus into RAM.
        """
        vocab = self.model_cfg.vocabulary_size
        counts = np.bincount(self.corpus.tokens, minlength=vocab)[:vocab]
        if self.plan.train_ids is not None:
            others = np.setdiff1d(
                np.arange(self.corpus.num_documents), self.plan.train_ids
            )
            if len(others):
                left_out = self.corpus.select_documents(others).tokens
                counts -= np.bincount(left_out, minlength=vocab)[:vocab]
        return counts

    # ------------------------------------------------------------------
    # Model.

    def build(self, strategy, jit):
        with strategy.scope():
            model, optimizer = compile_pretrainer(
                self.model_cfg, self.cfg, self.plan.total_steps, jit
            )
            # Build weights and optimizer slots now: a resume loads into them.
            x, _ = next(iter(self.train_dataset(0).take(1)))
            model(x, training=False)
            optimizer.build(model.trainable_variables)
            copied = []
            if self.cfg.init_from:  # a resume then loads its backup over it
                from kerasbert.serving.modeldir import init_from

                copied = init_from(model, self.cfg.init_from)
                self.log(f"init from {self.cfg.init_from}: {', '.join(copied)}")
            if self.cfg.mlm_bias_init == "unigram" and "mlm_head" not in copied:
                # A resume overwrites it with the backup anyway.
                model.mlm_head.output_bias.assign(
                    optimization.unigram_log_prior(self.train_token_counts())
                )
        return model

    # ------------------------------------------------------------------
    # The run.

    def run(self, resume=False):
        cfg, plan = self.cfg, self.plan
        policy, why, jit = apply_precision(cfg)
        strategy = hardware.make_strategy(cfg.strategy)
        self.chief = hardware.is_chief(strategy)
        self.log(
            f"precision: {policy} ({why}); jit_compile: {jit}; "
            f"strategy: {type(strategy).__name__.lstrip('_')} "
            f"({strategy.num_replicas_in_sync} replica(s))"
        )
        for note in plan.notes:
            self.log(f"note: {note}")

        self.model = self.build(strategy, jit)
        self.log(
            f"model: {self.model.count_params():,} parameters; "
            f"{plan.total_steps} steps of {cfg.batch_size} x "
            f"{self.data_cfg.sequence_length} tokens, "
            f"{plan.steps_per_epoch} steps per epoch"
        )
        self.heldout = self.heldout_set()

        run = self.dir
        backup_dir = run.backup  # a scratch folder on non-chief workers
        tokens_per_step = cfg.batch_size * self.data_cfg.sequence_length
        self.metrics = callbacks.MetricsLogger(
            run.metrics,
            cfg.log_every,
            tokens_per_step,
            total_steps=plan.total_steps,
        )
        self.checkpoints = callbacks.CheckpointSaver(run.latest, run.best)
        self.backup = callbacks.StepBackup(
            backup_dir,
            cfg.backup_every,
            restore_dir=self.restore_dir,
            metrics=self.metrics,
            checkpoints=self.checkpoints,
            log=self.log,
        )
        self.guard = callbacks.DivergenceGuard(backups=[self.backup])
        self.metrics.guard = self.checkpoints.guard = self.guard
        self.epoch_callbacks = [self.guard]
        if self.heldout is not None:
            self.epoch_callbacks.append(
                evaluation.EpochEvaluation(
                    self.heldout, self.cfg.eval_batches, guard=self.guard
                )
            )
        # The order matters: see the callbacks module docstring.
        self.epoch_callbacks += [self.metrics, self.checkpoints, self.backup]
        for callback in self.epoch_callbacks:
            callback.set_model(self.model)

        meta = self.backup.restore() if resume else None
        start = meta["step"] if meta else 0
        if meta:
            self.log(
                f"resuming from step {start} (backup in "
                f"{self.backup.restore_dir})"
            )
            self.checkpoints.set_record(meta["best"])
        elif resume:
            self.log("no backup found; starting from step 0")
        if self.chief:
            self.metrics.keep_rows(meta["metrics_rows"] if meta else 0)

        t0 = time.perf_counter()
        if self.multi_worker:
            self._custom_loop(strategy, start)
        else:
            self._fit(start)
        seconds = time.perf_counter() - t0

        if self.guard.diverged_at is not None:
            raise TrainingDiverged(
                f"training diverged at step {self.guard.diverged_at} "
                f"(loss={self.guard.bad_loss}); stopped. The last good "
                f"checkpoint is {self._last_good_checkpoint()}"
            )
        return self._finish(start, seconds)

    def _last_good_checkpoint(self):
        if os.path.exists(self.dir.latest):
            return self.dir.latest
        backups = self.backup.backups()
        if backups:
            return backups[0][1]
        return "(none: it diverged before the first save)"

    def _fit(self, start):
        callback_list = [
            *self.epoch_callbacks,
            keras.callbacks.TensorBoard(
                self.dir.logs, update_freq=self.cfg.log_every
            ),
            *self.extra_callbacks,
        ]
        for initial_epoch, epochs, steps in plan.plan_fit_calls(
            self.plan.total_steps, self.plan.steps_per_epoch, start
        ):
            self.model.fit(
                self.train_dataset(callbacks.global_step(self.model)),
                initial_epoch=initial_epoch,
                epochs=epochs,
                steps_per_epoch=steps,
                callbacks=callback_list,
                shuffle=False,
                verbose=self.verbose,
            )
            if self.guard.diverged_at is not None:
                return

    def _custom_loop(self, strategy, start):
        """Multi-worker: Keras' own `train_step` under `strategy.run`,
        driving the same callbacks as `fit` (metric windows, backups,
        held-out rows, checkpoints), so both paths log and save alike.
        Non-chief workers write theirs to a scratch directory."""
        model = self.model

        def dataset_fn(ctx):
            return self.train_dataset(
                callbacks.global_step(model),
                num_workers=ctx.num_input_pipelines,
                worker_index=ctx.input_pipeline_id,
            )

        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))

        @tf.function
        def train_step(batch):
            strategy.run(model.train_step, args=(batch,))
            # Read in cross-replica context: sums over every worker.
            return model.get_metrics_result()

        callback_list = keras.callbacks.CallbackList(
            self.epoch_callbacks, model=model
        )
        for first, end, steps in plan.plan_fit_calls(
            self.plan.total_steps, self.plan.steps_per_epoch, start
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
                        f"step {callbacks.global_step(model)}/"
                        f"{self.plan.total_steps} loss "
                        f"{logs['loss']:.4f}"
                    )
                callback_list.on_epoch_end(epoch, dict(logs))

    # ------------------------------------------------------------------
    # The end of a run: evaluate, save, plot, export, summarise.

    def _row_at(self, step, split) -> dict:
        """The metrics of metrics.csv's `split` row at `step` ({}: none)."""
        for row in reversed(self.metrics.rows):
            if row["split"] == split and int(row["step"]) == step:
                return {k: float(row[k]) for k in callbacks.METRIC_COLUMNS}
        return {}

    def _finish(self, start, seconds):
        """Final evaluation, checkpoint, backup, model, export, plot and
        summary. Every step is idempotent and written atomically, and the
        backup at the last step is taken before the model and export, so a
        kill anywhere here reruns this function alone."""
        total = self.plan.total_steps
        # The last step ends an epoch (see plan_fit_calls), so its held-out
        # row is there; a larger final evaluation adds a "final" row.
        epoch_eval = self._row_at(total, "heldout")
        final_eval = epoch_eval
        if (
            self.heldout is not None
            and self.final_eval_batches != self.cfg.eval_batches
        ):
            final_eval = self._row_at(total, "final")
            if not final_eval:
                final_eval = self.heldout.evaluate(
                    self.model, self.final_eval_batches
                )
                if self.chief:
                    self.metrics.log_row(total, "final", final_eval)
                    # As written (6 digits), as a resumed finish reads it.
                    final_eval = self._row_at(total, "final")
        if not self.chief:
            return {}
        train_rows = [r for r in self.metrics.rows if r["split"] == "train"]
        final_train = train_rows[-1] if train_rows else {}
        # Best-checkpoint losses compare like with like: epoch-end ones.
        self.checkpoints.save(
            epoch_eval.get("loss", _num(final_train.get("loss")))
        )
        self.backup.save(total)

        from kerasbert.serving.export import export_saved_model
        from kerasbert.training.plots import plot_metrics

        callbacks.save_model_atomic(self.model, self.dir.model)
        fault_point("export")
        export_saved_model(self.model, self.dir.export)
        plot_metrics(self.dir.metrics, self.dir.plot)

        # Speed over every session's training windows, so a resumed run
        # reports its whole training, not the last few steps.
        train_seconds = sum(_num(r["seconds"]) or 0.0 for r in train_rows)
        train_tokens = sum(
            (_num(r["tokens_per_second"]) or 0.0) * (_num(r["seconds"]) or 0.0)
            for r in train_rows
        )
        summary = {
            "steps": total,
            "train_seconds": round(train_seconds, 2),
            "tokens_per_second": round(
                train_tokens / max(train_seconds, 1e-9), 1
            ),
            "batch_size": self.cfg.batch_size,
            "sequence_length": self.data_cfg.sequence_length,
            "parameters": int(self.model.count_params()),
            "precision": keras.mixed_precision.global_policy().name,
            "train_mlm_accuracy": _num(final_train.get("mlm_accuracy")),
            "train_nsp_accuracy": _num(final_train.get("nsp_accuracy")),
            "train_mlm_loss": _num(final_train.get("mlm_loss")),
            "heldout_batches": (
                min(len(self.heldout), self.final_eval_batches)
                if self.heldout
                else 0
            ),
            "heldout_mlm_accuracy": final_eval.get("mlm_accuracy"),
            "heldout_nsp_accuracy": final_eval.get("nsp_accuracy"),
            "heldout_mlm_loss": final_eval.get("mlm_loss"),
            "heldout_mlm_perplexity": (
                perplexity(final_eval["mlm_loss"]) if final_eval else None
            ),
            "best_checkpoint_step": self.checkpoints.best_step,
        }
        summary = {
            k: (float(v) if isinstance(v, np.floating) else v)
            for k, v in summary.items()
        }
        if start:
            self.log(
                f"this session trained steps {start + 1}-{total} in "
                f"{seconds:.1f} s"
            )
        write_json_atomic(self.dir.summary, summary)
        return summary


def _num(v):
    return None if v in (None, "") else float(v)
