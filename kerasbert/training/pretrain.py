"""One pretraining run, from configs to a finished run directory.

`pretrain(model_cfg, data_cfg, train_cfg)` is what `python -m kerasbert.fit`
calls. It validates everything before it creates the run directory, so bad
input leaves nothing behind, and it resumes by itself when the directory
holds a backup of the same configuration.
"""

import dataclasses
import json
import os
import shutil
import sys
import tempfile

from kerasbert.config import DataConfig, ModelConfig, TrainConfig
from kerasbert.errors import UsageError
from kerasbert.files import write_json_atomic
from kerasbert.training.rundir import (
    _chief_by_tf_config,
    _configs_dict,
    default_output_dir,
    prepare_run_dir,
    run_lock,
)


def validate(model_cfg: ModelConfig, data_cfg: DataConfig,
             train_cfg: TrainConfig) -> None:
    """Checks every value a user can set, before anything is written."""
    model_cfg.validate()
    t, d = train_cfg, data_cfg
    checks = [
        (t.batch_size >= 1, "--batch-size", "must be >= 1"),
        (t.max_steps is None or t.max_steps >= 1, "--max-steps",
         "must be >= 1"),
        (t.epochs >= 1, "--epochs", "must be >= 1"),
        (t.steps_per_epoch is None or t.steps_per_epoch >= 1,
         "--steps-per-epoch", "must be >= 1"),
        (t.learning_rate > 0, "--learning-rate", "must be > 0"),
        (0 <= t.warmup_ratio <= 1, "--warmup-ratio", "must be in [0, 1]"),
        (t.weight_decay >= 0, "--weight-decay", "must be >= 0"),
        (t.adam_epsilon > 0, "--adam-epsilon", "must be > 0"),
        (t.clipnorm >= 0, "--clipnorm", "must be >= 0 (0 turns it off)"),
        (t.gradient_accumulation_steps >= 1,
         "--gradient-accumulation-steps", "must be >= 1"),
        (t.backup_every >= 1, "--backup-every", "must be >= 1"),
        (t.log_every >= 1, "--log-every", "must be >= 1"),
        (t.eval_batches >= 0, "--eval-batches", "must be >= 0"),
        (d.sequence_length >= 8, "--sequence-length", "must be >= 8"),
        (d.sequence_length <= model_cfg.max_sequence_length,
         "--sequence-length",
         f"{d.sequence_length} is above --max-sequence-length "
         f"{model_cfg.max_sequence_length}"),
        (d.max_predictions >= 1, "--max-predictions", "must be >= 1"),
        (0 < d.mask_rate <= 1, "--mask-rate", "must be in (0, 1]"),
        (0 <= d.nsp_probability <= 1, "--nsp-probability",
         "must be in [0, 1]"),
        (0 <= d.short_seq_prob <= 1, "--short-seq-prob",
         "must be in [0, 1]"),
        (0 <= d.holdout_fraction < 1, "--holdout-fraction",
         "must be in [0, 1)"),
        (d.vocab_size >= 10, "--vocab-size", "must be >= 10"),
    ]
    for ok, flag, problem in checks:
        if not ok:
            raise UsageError(f"{flag}: {problem}")
    from kerasbert.config import (
        JIT_COMPILE,
        MLM_BIAS_INITS,
        OPTIMIZERS,
        PRECISIONS,
        STRATEGIES,
    )
    for flag, value, choices in [
            ("--precision", t.precision, PRECISIONS),
            ("--jit-compile", t.jit_compile, JIT_COMPILE),
            ("--strategy", t.strategy, STRATEGIES),
            ("--optimizer", t.optimizer, OPTIMIZERS),
            ("--mlm-bias-init", t.mlm_bias_init, MLM_BIAS_INITS)]:
        if value not in choices:
            raise UsageError(f"{flag}: unknown value {value!r} "
                             f"(choose from {', '.join(choices)})")


def pretrain(model_cfg: ModelConfig, data_cfg: DataConfig,
             train_cfg: TrainConfig, size: str | None = None,
             verbose: int = 1, log=print, callbacks=()) -> dict:
    """Runs (or resumes) pretraining; returns the summary dict.

    `callbacks` are extra Keras callbacks for `model.fit` (not used by the
    multi-worker loop).
    """
    validate(model_cfg, data_cfg, train_cfg)
    output_dir = train_cfg.output_dir or default_output_dir(size)
    if train_cfg.strategy == "multi_worker" and not _chief_by_tf_config():
        # Only the chief owns the run directory; the others write scratch
        # files where they cannot race it.
        output_dir = tempfile.mkdtemp(prefix="kerasbert-worker-")
    train_cfg = dataclasses.replace(train_cfg, output_dir=output_dir)
    with run_lock(output_dir):
        return _pretrain(model_cfg, data_cfg, train_cfg, verbose, log,
                         callbacks)


def _pretrain(model_cfg, data_cfg, train_cfg, verbose, log, callbacks):
    output_dir = train_cfg.output_dir
    # Inputs first: a bad corpus or vocabulary must fail before the run
    # directory exists, so a tokenizer is trained into a staging folder.
    staging = f"{output_dir.rstrip('/')}.tokenizer-staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        return _pretrain_staged(model_cfg, data_cfg, train_cfg, verbose, log,
                                callbacks, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _pretrain_staged(model_cfg, data_cfg, train_cfg, verbose, log,
                     callbacks, staging):
    from kerasbert.data.cache import prepare_corpus

    output_dir = train_cfg.output_dir
    tokenizer_dir = os.path.join(output_dir, "tokenizer")
    prepare_cfg = data_cfg
    if os.path.isdir(tokenizer_dir) and data_cfg.tokenizer is None:
        # The run trained its tokenizer already: reuse it, don't retrain.
        prepare_cfg = dataclasses.replace(data_cfg, tokenizer=tokenizer_dir)
    # Progress bars only on a terminal: in logs they are noise, and before a
    # one-line error they would bury it.
    show_progress = verbose > 0 and sys.stderr.isatty()
    tokenizer, corpus = prepare_corpus(prepare_cfg, tokenizer_dir=staging,
                                       progress=show_progress)
    heldout_corpus = None
    if data_cfg.heldout_corpus:
        # A trained tokenizer was just saved to `staging`.
        _, heldout_corpus = prepare_corpus(
            dataclasses.replace(data_cfg, corpus=data_cfg.heldout_corpus,
                                tokenizer=prepare_cfg.tokenizer or staging),
            progress=show_progress)

    model_cfg = dataclasses.replace(
        model_cfg, vocabulary_size=tokenizer.vocabulary_size)
    configs = _configs_dict(model_cfg, data_cfg, train_cfg)
    state = prepare_run_dir(output_dir, configs, train_cfg.overwrite)
    if state == "done":
        log(f"{output_dir}: this run is already complete (summary.json); "
            "pass --overwrite to start again")
        with open(os.path.join(output_dir, "summary.json"),
                  encoding="utf-8") as f:
            return json.load(f)
    os.makedirs(output_dir, exist_ok=True)
    if not os.path.isdir(tokenizer_dir):
        if os.path.isdir(staging):
            os.replace(staging, tokenizer_dir)
        else:  # a given tokenizer: keep a copy with the run
            tokenizer.save(tokenizer_dir)
    write_json_atomic(os.path.join(output_dir, "config.json"), configs)

    from kerasbert.training.trainer import Trainer
    trainer = Trainer(model_cfg, data_cfg, train_cfg, tokenizer, corpus,
                      heldout_corpus, verbose=verbose, log=log,
                      callbacks=callbacks)
    return trainer.run(resume=state == "resume")
