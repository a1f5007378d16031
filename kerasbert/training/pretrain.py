"""One pretraining run, from configs to a finished run directory.

`pretrain(model_cfg, data_cfg, train_cfg)` is what `python -m kerasbert.fit`
calls. Its order is the point: validate the flags, tokenize the corpus (a
new tokenizer goes to a staging folder), make the training plan, decide
whether the run directory is new, resumable or done -- and only then create
it. Any bad input stops before that with one line and leaves nothing
behind, so the corrected command is not refused as "another
configuration". A directory that holds a backup of the same configuration
resumes by itself.
"""

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np

from kerasbert.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    parameter_count,
    resolve_packing,
    validate_pretraining,
)
from kerasbert.errors import DiskFull
from kerasbert.files import (
    check_free_space,
    check_output,
    check_writable_dir,
    make_scratch_dir,
    swap_in,
)
from kerasbert.training.plan import make_plan
from kerasbert.training.rundir import (
    RunDir,
    chief_by_tf_config,
    default_output_dir,
    open_run,
    run_config,
    run_lock,
)


def pretrain(
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    size: str | None = None,
    verbose: int = 1,
    log=print,
    callbacks=(),
) -> dict:
    """Runs (or resumes) pretraining; returns the summary dict.

    `callbacks` are extra Keras callbacks for `model.fit` (not used by the
    multi-worker loop).
    """
    from kerasbert.data.corpus import resolve_corpus_format

    validate_pretraining(model_cfg, data_cfg, train_cfg)
    data_cfg = resolve_corpus_format(data_cfg)
    if not train_cfg.nsp:
        # Masked LM only: a random B would just join unrelated texts.
        data_cfg = dataclasses.replace(data_cfg, nsp_probability=0.0)
    data_cfg = dataclasses.replace(
        data_cfg, packing=resolve_packing(data_cfg.packing, train_cfg.nsp)
    )
    output_dir = train_cfg.output_dir or default_output_dir(size)
    check_output(
        output_dir,
        "--output-dir",
        {
            "--init-from": train_cfg.init_from,  # first: it implies --tokenizer
            "--corpus": data_cfg.corpus,
            "--heldout-corpus": data_cfg.heldout_corpus,
            "--tokenizer": data_cfg.tokenizer,
        },
    )
    chief_dir = output_dir
    scratch = None
    if train_cfg.strategy == "multi_worker" and not chief_by_tf_config():
        # Only the chief owns the run directory; the others write scratch
        # files where they cannot race it (and read the chief's backups to
        # resume at its step), removed when the run ends or, after a
        # kill, when the next worker starts on this host.
        scratch = output_dir = make_scratch_dir(
            tempfile.gettempdir(), "kerasbert-worker"
        )
    check_writable_dir(output_dir, "--output-dir")
    train_cfg = dataclasses.replace(train_cfg, output_dir=output_dir)
    try:
        with run_lock(output_dir):
            # Where a trained tokenizer waits until the run directory is
            # written; one a killed run left is removed by the next.
            staging = make_scratch_dir(
                os.path.dirname(os.path.abspath(output_dir)),
                ".tokenizer-staging",
            )
            try:
                return _pretrain(
                    model_cfg,
                    data_cfg,
                    train_cfg,
                    verbose,
                    log,
                    callbacks,
                    staging,
                    chief_dir,
                )
            except DiskFull as e:
                raise DiskFull(
                    f"{e} (the same command resumes from the last backup)"
                ) from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _pretrain(
    model_cfg, data_cfg, train_cfg, verbose, log, callbacks, staging, chief_dir
):
    from kerasbert.data.corpus import prepare_corpus

    run = RunDir(train_cfg.output_dir)
    prepare_cfg = data_cfg
    if (
        os.path.isdir(run.tokenizer)
        and data_cfg.tokenizer is None
        and not train_cfg.overwrite
    ):
        # The run trained its tokenizer already: reuse it, don't retrain.
        prepare_cfg = dataclasses.replace(data_cfg, tokenizer=run.tokenizer)
    # Progress bars only on a terminal: in logs they are noise, and before a
    # one-line error they would bury it.
    show_progress = verbose > 0 and sys.stderr.isatty()
    tokenizer, corpus = prepare_corpus(
        prepare_cfg, tokenizer_dir=staging, progress=show_progress
    )
    heldout_corpus = None
    if data_cfg.heldout_corpus:
        _, heldout_corpus = prepare_corpus(
            dataclasses.replace(
                data_cfg,
                corpus=data_cfg.heldout_corpus,
                tokenizer=prepare_cfg.tokenizer or staging,
            ),
            progress=show_progress,
        )
    plan = make_plan(
        corpus,
        data_cfg,
        train_cfg,
        heldout_corpus,
        corpus_name=data_cfg.corpus or "the bundled corpus",
    )

    model_cfg = dataclasses.replace(
        model_cfg, vocabulary_size=tokenizer.vocabulary_size
    )
    configs = run_config(model_cfg, data_cfg, train_cfg)
    state, run, final = open_run(run, configs, train_cfg.overwrite, log)
    if state == "done":
        log(
            f"{run.path}: this run is already complete (summary.json); "
            "pass --overwrite to start again"
        )
        with open(run.summary, encoding="utf-8") as f:
            return json.load(f)

    # model.keras, two checkpoints, two backups with Adam's slots: a disk
    # that fills inside h5py can crash the process, so check first.
    check_free_space(
        run.path,
        10 * 4 * parameter_count(**model_cfg.to_dict()),
        "--output-dir",
    )
    # Every check has passed: from here on the run directory is written.
    run.prepare(configs, overwrite=False)
    if not os.path.isdir(run.tokenizer):
        if os.listdir(staging):
            os.replace(staging, run.tokenizer)
        else:  # a given tokenizer: keep a copy with the run
            tokenizer.save(run.tokenizer)

    restore_dir = None
    if chief_dir != (final or run).path:
        # A non-chief worker resumes when the chief does, from its backup
        # (on a file system all workers share, like the run directory).
        chief = RunDir(chief_dir)
        if chief.state(configs, train_cfg.overwrite) == "resume":
            state, restore_dir = "resume", chief.backup

    from kerasbert.training.trainer import Schedule, Trainer

    task = PretrainingTask(
        model_cfg, data_cfg, train_cfg, tokenizer, corpus, plan, log=log
    )
    trainer = Trainer(
        task,
        Schedule(
            total_steps=plan.total_steps,
            steps_per_epoch=plan.steps_per_epoch,
            log_every=train_cfg.log_every,
            backup_every=train_cfg.backup_every,
        ),
        run,
        precision=train_cfg,
        strategy=train_cfg.strategy,
        verbose=verbose,
        log=log,
        extra_callbacks=callbacks,
        restore_dir=restore_dir,
    )
    summary = trainer.run(resume=state == "resume")
    if final is not None:
        swap_in(run.path, final.path)
    return summary


def _num(v):
    return None if v in (None, "") else float(v)


def perplexity(mlm_loss):
    try:
        return math.exp(mlm_loss)
    except OverflowError:
        return float("inf")


class PretrainingTask:
    """Masked LM + NSP on a tokenized corpus, as trainer.py's task.

    Its part of the run directory: `summary.json`, `loss.png` and
    `export/saved_model/` (serving signatures, kerasbert.serving.export).
    """

    metric_names = (
        "loss",
        "mlm_loss",
        "nsp_loss",
        "mlm_accuracy",
        "nsp_accuracy",
        "fill",
    )
    unit = "tokens"
    validation_split = "heldout"
    monitor, mode = "loss", "min"
    keep_training_state = True

    def __init__(
        self,
        model_cfg,
        data_cfg,
        train_cfg,
        tokenizer,
        corpus,
        training_plan,
        log=print,
    ):
        self.model_cfg = model_cfg
        self.data_cfg = data_cfg
        self.cfg = train_cfg
        self.tokenizer = tokenizer
        self.corpus = corpus
        self.plan = training_plan
        self.log = log
        self.units_per_step = train_cfg.batch_size * data_cfg.sequence_length
        self.heldout = None  # made by build_model

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
            packing=d.packing == "on",
        )

    def train_dataset(self, start_step, num_workers=1, worker_index=0):
        from kerasbert.data.pretraining import pretraining_dataset

        return pretraining_dataset(
            self.corpus,
            self.tokenizer,
            batch_size=self.cfg.batch_size,
            seed=self.cfg.seed,
            document_ids=self.plan.train_ids,
            repeat=True,
            start_batch=start_step,
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
        from kerasbert.training.evaluation import HeldoutSet

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
        return HeldoutSet(
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

    # Model.

    def build_model(self, jit):
        from kerasbert.training import optimization
        from kerasbert.training.build import compile_pretrainer

        for note in self.plan.notes:
            self.log(f"note: {note}")
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
        self.log_fill()
        self.log(
            f"model: {model.count_params():,} parameters; "
            f"{self.plan.total_steps} steps of {self.cfg.batch_size} x "
            f"{self.data_cfg.sequence_length} tokens, "
            f"{self.plan.steps_per_epoch} steps per epoch"
        )
        self.heldout = self.heldout_set()
        return model

    def log_fill(self):
        """Prints the training stream's fill (epoch 0), packed or not."""
        from kerasbert.data.pretraining import fill
        from kerasbert.training.plan import epoch_rows

        rows = epoch_rows(
            self.corpus, self.data_cfg, self.cfg.seed, self.plan.train_ids
        )
        self.log(
            f"data: packing {self.data_cfg.packing}; fill "
            f"{fill(rows, self.cfg.batch_size):.3f} (real tokens / "
            "positions, epoch 0)"
        )

    def evaluate(self, model) -> dict:
        if self.heldout is None:
            return {}
        return self.heldout.evaluate(model, self.cfg.eval_batches)

    # The end of a run.

    def finish(self, model, finished) -> dict:
        """A final evaluation on more batches (if asked for), model.keras,
        the SavedModel export, loss.png and the summary."""
        import keras

        from kerasbert.files import fault_point
        from kerasbert.serving.export import export_saved_model
        from kerasbert.training.callbacks import save_model_atomic
        from kerasbert.training.plots import plot_metrics

        total, run = self.plan.total_steps, finished.run
        final_eval = finished.row_at(total, "heldout")
        if (
            self.heldout is not None
            and self.final_eval_batches != self.cfg.eval_batches
        ):
            final_eval = finished.row_at(total, "final")
            if not final_eval:
                finished.log_row(
                    total,
                    "final",
                    self.heldout.evaluate(model, self.final_eval_batches),
                )
                # As written (6 digits), as a resumed finish reads it.
                final_eval = finished.row_at(total, "final")

        save_model_atomic(model, run.model)
        fault_point("export")
        export_saved_model(model, run.join("export", "saved_model"))
        plot_metrics(run.metrics, run.join("loss.png"))

        train_rows = [r for r in finished.rows if r["split"] == "train"]
        final_train = train_rows[-1] if train_rows else {}
        # Speed over every session's training windows, so a resumed run
        # reports its whole training, not the last few steps.
        train_seconds = sum(_num(r["seconds"]) or 0.0 for r in train_rows)
        train_tokens = sum(
            (_num(r["tokens_per_second"]) or 0.0) * (_num(r["seconds"]) or 0.0)
            for r in train_rows
        )
        # Each row's fill weighted by its window's steps (not by timings:
        # a resumed run must report the same); rows written before the
        # fill column count as full.
        windows = np.diff([0] + [int(r["step"]) for r in train_rows])
        fills = [_num(r.get("fill")) or 1.0 for r in train_rows]
        fill = (
            float(np.dot(windows, fills) / windows.sum())
            if train_rows
            else None
        )
        summary = {
            "steps": total,
            "train_seconds": round(train_seconds, 2),
            "tokens_per_second": round(
                train_tokens / max(train_seconds, 1e-9), 1
            ),
            "real_tokens_per_second": round(
                train_tokens * (fill or 0.0) / max(train_seconds, 1e-9), 1
            ),
            "fill": None if fill is None else round(fill, 4),
            "packing": self.data_cfg.packing,
            "batch_size": self.cfg.batch_size,
            "sequence_length": self.data_cfg.sequence_length,
            "parameters": int(model.count_params()),
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
            "best_checkpoint_step": finished.best_step,
        }
        return {
            k: (float(v) if isinstance(v, np.floating) else v)
            for k, v in summary.items()
        }
