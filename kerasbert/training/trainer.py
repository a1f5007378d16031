"""The training loop of a run: `model.fit`, or our own multi-worker loop.

`model.fit` drives single-device and `MirroredStrategy` training.
`MultiWorkerMirroredStrategy` + `fit` fails in Keras 3 (keras-team/keras
#20585, a PerReplica conversion error), so multi-worker runs use a short
loop of our own: `strategy.run` of a gradient step and the same Keras
optimizer. Both write the same files and log the same metrics.
"""

import dataclasses
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from kerasbert.errors import TrainingDiverged
from kerasbert.files import write_json_atomic
from kerasbert.training import callbacks, hardware, optimization, plan


def perplexity(mlm_loss):
    try:
        return math.exp(mlm_loss)
    except OverflowError:
        return float("inf")


class Trainer:
    def __init__(self, model_cfg, data_cfg, train_cfg, tokenizer, corpus,
                 heldout_corpus=None, verbose=1, log=print, callbacks=()):
        self.model_cfg = model_cfg
        self.data_cfg = data_cfg
        self.cfg = train_cfg
        self.tokenizer = tokenizer
        self.corpus = corpus
        self.verbose = verbose
        self.log = log
        self.extra_callbacks = list(callbacks)
        self.dir = train_cfg.output_dir
        self.multi_worker = train_cfg.strategy == "multi_worker"

        from kerasbert.data.pairing import split_documents
        if heldout_corpus is not None:
            self.heldout_corpus = heldout_corpus
            self.train_ids = None
            self.heldout_ids = None
        else:
            self.heldout_corpus = corpus
            if data_cfg.holdout_fraction > 0:
                self.train_ids, self.heldout_ids = split_documents(
                    corpus.num_documents, data_cfg.holdout_fraction,
                    train_cfg.seed)
            else:
                self.train_ids, self.heldout_ids = None, None

    # ------------------------------------------------------------------
    # Data.

    def _dataset_kwargs(self):
        d = self.data_cfg
        return dict(sequence_length=d.sequence_length,
                    max_predictions=d.max_predictions,
                    mask_rate=d.mask_rate, whole_word=d.whole_word,
                    nsp_probability=d.nsp_probability,
                    short_seq_prob=d.short_seq_prob)

    def train_dataset(self, start_batch, num_workers=1, worker_index=0):
        from kerasbert.data.pretraining import pretraining_dataset
        return pretraining_dataset(
            self.corpus, self.tokenizer, batch_size=self.cfg.batch_size,
            seed=self.cfg.seed, document_ids=self.train_ids, repeat=True,
            start_batch=start_batch, num_workers=num_workers,
            worker_index=worker_index, **self._dataset_kwargs())

    def heldout_dataset(self):
        """A fixed held-out set: the same pairs and masks every time.

        Materialised once (`cache`) and counted, so evaluations cost no
        pairing work and Keras knows how many batches to expect.
        """
        from kerasbert.data.pretraining import pretraining_dataset
        if hasattr(self, "_heldout"):
            return self._heldout
        self._heldout, self.heldout_batches = None, 0
        if self.heldout_corpus is self.corpus and self.heldout_ids is None:
            return None
        if self.cfg.eval_batches == 0:
            return None
        ds = pretraining_dataset(
            self.heldout_corpus, self.tokenizer,
            batch_size=self.cfg.batch_size, seed=self.cfg.seed + 1,
            document_ids=self.heldout_ids, repeat=False,
            **self._dataset_kwargs())
        ds = ds.take(self.cfg.eval_batches).cache()
        self.heldout_batches = sum(1 for _ in ds)
        if self.heldout_batches == 0:
            self.log("held-out set is smaller than one batch; no "
                     "evaluation (raise --holdout-fraction or lower "
                     "--batch-size)")
            return None
        # Repeated, with validation_steps = one cycle: Keras keeps one
        # evaluation iterator across epochs, so a finite set would run dry
        # in the second epoch; each evaluation still sees the same batches.
        self._heldout = ds.repeat()
        return self._heldout

    def train_token_counts(self):
        """Per-token-id counts over the training documents.

        The whole (memory-mapped) corpus is counted in one pass and the
        held-out documents, a small share, subtracted: selecting the
        training documents instead would copy most of the corpus into RAM.
        """
        vocab = self.model_cfg.vocabulary_size
        counts = np.bincount(self.corpus.tokens, minlength=vocab)[:vocab]
        if self.heldout_ids is not None:
            heldout = self.corpus.select_documents(self.heldout_ids).tokens
            counts -= np.bincount(heldout, minlength=vocab)[:vocab]
        return counts

    def steps_per_epoch(self):
        if self.cfg.steps_per_epoch:
            return self.cfg.steps_per_epoch
        from kerasbert.data.pretraining import count_pairs
        pairs = count_pairs(
            self.corpus, sequence_length=self.data_cfg.sequence_length,
            short_seq_prob=self.data_cfg.short_seq_prob,
            nsp_probability=self.data_cfg.nsp_probability,
            seed=self.cfg.seed, document_ids=self.train_ids)
        return max(1, pairs // self.cfg.batch_size)

    # ------------------------------------------------------------------
    # Model.

    def build(self, strategy):
        from kerasbert.modeling import build_pretrainer
        keras.utils.set_random_seed(self.cfg.seed)
        with strategy.scope():
            model = build_pretrainer(**dataclasses.asdict(self.model_cfg))
            optimizer = optimization.make_optimizer(
                self.cfg.optimizer, self.cfg.learning_rate, self.total_steps,
                warmup_ratio=self.cfg.warmup_ratio,
                weight_decay=self.cfg.weight_decay,
                clipnorm=self.cfg.clipnorm, epsilon=self.cfg.adam_epsilon,
                gradient_accumulation_steps=(
                    self.cfg.gradient_accumulation_steps))
            model.compile(optimizer=optimizer, jit_compile=self.jit)
            # Build weights and optimizer slots now: a resume loads into them.
            x, _ = next(iter(self.train_dataset(0).take(1)))
            model(x, training=False)
            optimizer.build(model.trainable_variables)
            if self.cfg.mlm_bias_init == "unigram":
                # A resume overwrites it with the backup anyway.
                model.mlm_head.output_bias.assign(
                    optimization.unigram_log_prior(self.train_token_counts()))
        return model

    # ------------------------------------------------------------------
    # The run.

    def run(self, resume=False):
        cfg = self.cfg
        policy, why = hardware.select_precision(cfg.precision)
        keras.mixed_precision.set_global_policy(policy)
        self.jit = hardware.select_jit_compile(cfg.jit_compile)
        strategy = hardware.make_strategy(cfg.strategy)
        self.chief = hardware.is_chief(strategy)
        self.log(f"precision: {policy} ({why}); jit_compile: {self.jit}; "
                 f"strategy: {type(strategy).__name__} "
                 f"({strategy.num_replicas_in_sync} replica(s))")

        spe = self.steps_per_epoch()
        self.total_steps = cfg.max_steps or cfg.epochs * spe
        self.spe = spe
        self.model = self.build(strategy)
        n_params = self.model.count_params()
        self.log(f"model: {n_params:,} parameters; {self.total_steps} steps "
                 f"of {cfg.batch_size} x {self.data_cfg.sequence_length} "
                 f"tokens, {spe} steps per epoch")

        backup_dir = os.path.join(self.dir, "backup")
        if not self.chief:  # Non-chief workers keep their files apart.
            backup_dir = os.path.join(self.dir, f".worker-{id(self)}")
        self.backup = callbacks.StepBackup(backup_dir, cfg.backup_every)
        self.backup.set_model(self.model)
        start = 0
        if resume:
            start = self.backup.restore(self.model)
            if start:
                self.log(f"resuming from step {start} (backup in "
                         f"{backup_dir})")
            else:
                self.log("no backup found; starting from step 0")
        self.start_step = start

        tokens_per_step = cfg.batch_size * self.data_cfg.sequence_length
        self.guard = callbacks.DivergenceGuard(backups=[self.backup])
        self.metrics = callbacks.MetricsLogger(
            os.path.join(self.dir, "metrics.csv"), cfg.log_every,
            tokens_per_step, guard=self.guard, total_steps=self.total_steps)
        self.metrics.truncate_after(start)
        self.checkpoints = callbacks.CheckpointSaver(
            os.path.join(self.dir, "checkpoints"), guard=self.guard)

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
                f"checkpoint is {self._last_good_checkpoint()}")
        return self._finish(strategy, start, seconds, tokens_per_step)

    def _last_good_checkpoint(self):
        for path in (os.path.join(self.dir, "checkpoints", "latest.keras"),
                     self.backup._weights_path):
            if os.path.exists(path):
                return path
        return "(none: it diverged before the first save)"

    def _fit(self, start):
        callbacks = [
            self.guard, self.backup, self.metrics, self.checkpoints,
            keras.callbacks.TensorBoard(
                os.path.join(self.dir, "logs"),
                update_freq=self.cfg.log_every),
            *self.extra_callbacks,
        ]
        heldout = self.heldout_dataset()
        for initial_epoch, epochs, steps in plan.plan_fit_calls(
                self.total_steps, self.spe, start):
            step = int(self.model.optimizer._iterations.numpy())
            self.model.fit(
                self.train_dataset(step), initial_epoch=initial_epoch,
                epochs=epochs, steps_per_epoch=steps,
                validation_data=heldout,
                validation_steps=self.heldout_batches or None,
                callbacks=callbacks, shuffle=False, verbose=self.verbose)
            if self.guard.diverged_at is not None:
                return

    def _custom_loop(self, strategy, start):
        """Multi-worker: `strategy.run` steps with the Keras optimizer."""
        from kerasbert.modeling import pretraining_losses
        model, optimizer = self.model, self.model.optimizer
        replicas = strategy.num_replicas_in_sync

        def dataset_fn(ctx):
            ds = self.train_dataset(
                int(optimizer._iterations.numpy()),
                num_workers=ctx.num_input_pipelines,
                worker_index=ctx.input_pipeline_id)
            return ds

        iterator = iter(strategy.distribute_datasets_from_function(
            dataset_fn))

        def step_fn(x, y):
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                losses = pretraining_losses(y, y_pred)
                # Gradients are summed over replicas: scale for a mean.
                loss = losses["loss"] / replicas
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return losses

        @tf.function
        def train_step(batch):
            x, y = batch
            per_replica = strategy.run(step_fn, args=(x, y))
            return {k: strategy.reduce("MEAN", v, axis=None)
                    for k, v in per_replica.items()}

        window = {}
        window_steps = 0
        t_window = time.perf_counter()
        for step in range(start + 1, self.total_steps + 1):
            out = {k: float(v) for k, v in train_step(next(iterator)).items()}
            if not math.isfinite(out["loss"]):
                self.guard.diverged_at, self.guard.bad_loss = step, out["loss"]
                return
            for k, v in out.items():
                window[k] = window.get(k, 0.0) + v
            window_steps += 1
            if self.chief and step % self.cfg.backup_every == 0:
                self.backup.save(step)
            if step % self.cfg.log_every == 0 or step == self.total_steps:
                seconds = time.perf_counter() - t_window
                self.metrics.epoch = (step - 1) // self.spe
                if self.chief:
                    lr = float(keras.ops.convert_to_numpy(
                        optimizer.learning_rate))
                    self.metrics.log_row(
                        step, "train",
                        {k: v / window_steps for k, v in window.items()},
                        seconds=seconds, lr=lr,
                        tps=window_steps * self.metrics.tokens_per_step
                        / seconds)
                if self.verbose:
                    self.log(f"step {step}/{self.total_steps} loss "
                             f"{window['loss'] / window_steps:.4f}")
                window, window_steps = {}, 0
                t_window = time.perf_counter()

    # ------------------------------------------------------------------
    # The end of a run: evaluate, save, plot, export, summarise.

    def evaluate(self):
        heldout = self.heldout_dataset()
        if heldout is None:
            return {}
        if self.multi_worker:
            from kerasbert.modeling import pretraining_losses
            sums, n = {}, 0
            for x, y in heldout.take(self.heldout_batches):
                out = pretraining_losses(y, self.model(x, training=False))
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n += 1
            return {k: v / max(n, 1) for k, v in sums.items()}
        return self.model.evaluate(heldout, steps=self.heldout_batches,
                                   verbose=0, return_dict=True)

    def _finish(self, strategy, start, seconds, tokens_per_step):
        steps_done = self.total_steps - start
        last = self.metrics.rows[-1] if self.metrics.rows else {}
        if last.get("split") == "heldout" and \
                int(last["step"]) == self.total_steps:
            # The last epoch ended at the last step and was just evaluated.
            heldout = {k: float(last[k]) for k in callbacks.METRIC_COLUMNS}
        else:
            heldout = self.evaluate()
            if heldout and self.chief:
                self.metrics.log_row(self.total_steps, "heldout", heldout)
        train_rows = [r for r in self.metrics.rows if r["split"] == "train"]
        if not self.chief:
            return {}
        self.backup.save(self.total_steps)
        self.checkpoints.set_model(self.model)
        self.checkpoints.save(heldout.get("loss"))
        final_train = train_rows[-1] if train_rows else {}

        from kerasbert.serving.export import export_saved_model
        from kerasbert.training.plots import plot_metrics
        callbacks.atomic_save(self.model, os.path.join(self.dir, "model.keras"))
        export_saved_model(self.model,
                           os.path.join(self.dir, "export", "saved_model"))
        plot_metrics(os.path.join(self.dir, "metrics.csv"),
                     os.path.join(self.dir, "loss.png"))

        def num(v):
            return None if v in (None, "") else float(v)

        summary = {
            "steps": self.total_steps,
            "steps_this_session": steps_done,
            "resumed_from_step": start,
            "seconds": round(seconds, 2),
            "tokens_per_second": round(
                steps_done * tokens_per_step / max(seconds, 1e-9), 1),
            "batch_size": self.cfg.batch_size,
            "sequence_length": self.data_cfg.sequence_length,
            "parameters": int(self.model.count_params()),
            "precision": keras.mixed_precision.global_policy().name,
            "train_mlm_accuracy": num(final_train.get("mlm_accuracy")),
            "train_nsp_accuracy": num(final_train.get("nsp_accuracy")),
            "train_mlm_loss": num(final_train.get("mlm_loss")),
            "heldout_mlm_accuracy": heldout.get("mlm_accuracy"),
            "heldout_nsp_accuracy": heldout.get("nsp_accuracy"),
            "heldout_mlm_loss": heldout.get("mlm_loss"),
            "heldout_mlm_perplexity": (
                perplexity(heldout["mlm_loss"]) if heldout else None),
        }
        summary = {k: (float(v) if isinstance(v, np.floating) else v)
                   for k, v in summary.items()}
        write_json_atomic(os.path.join(self.dir, "summary.json"), summary)
        return summary
