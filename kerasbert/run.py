"""One pretraining run, from configs to a finished run directory.

`pretrain(model_cfg, data_cfg, train_cfg)` is what `python -m kerasbert.fit`
calls. It validates everything before it creates the run directory, so bad
input leaves nothing behind, and it resumes by itself when the directory
holds a backup of the same configuration.

Run directory:
    config.json        resolved model/data/train configs
    tokenizer/         the tokenizer (BertTokenizerFast-loadable)
    checkpoints/       latest.keras, best.keras (+ best.json)
    backup/            step-level resume state (model + optimizer)
    metrics.csv        train rows every `log_every` steps, held-out rows
    logs/              TensorBoard
    loss.png           MLM/NSP loss and accuracy curves
    summary.json       steps, seconds, tokens/s, final metrics
    model.keras        the final pretrainer
    export/saved_model serving signatures (see kerasbert.export)
"""

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile

from kerasbert.config import DataConfig, ModelConfig, TrainConfig
from kerasbert.errors import UsageError


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


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


def default_output_dir(model_cfg_size: str | None) -> str:
    return os.path.join("runs", model_cfg_size or "custom")


def _configs_dict(model_cfg, data_cfg, train_cfg):
    return {"model": model_cfg.to_dict(), "data": data_cfg.to_dict(),
            "train": train_cfg.to_dict()}


# Fields that may change between a run and its resume without making the
# backup meaningless (bookkeeping, not what is learned).
_RESUME_FREE = {"output_dir", "overwrite", "backup_every", "log_every",
                "eval_batches", "jit_compile", "cache_dir"}


def _same_run(saved: dict, current: dict) -> list[str]:
    diffs = []
    for part in ("model", "data", "train"):
        for key, value in current[part].items():
            if key in _RESUME_FREE:
                continue
            if saved.get(part, {}).get(key) != value:
                diffs.append(f"{key}: {saved.get(part, {}).get(key)!r} -> "
                             f"{value!r}")
    return diffs


def prepare_run_dir(output_dir, configs, overwrite) -> str:
    """Returns 'new', 'resume' or 'done', after checking the directory."""
    config_path = os.path.join(output_dir, "config.json")
    if overwrite and os.path.exists(output_dir):
        shutil.rmtree(output_dir)
    if not os.path.exists(config_path):
        if os.path.exists(output_dir) and os.listdir(output_dir):
            raise UsageError(
                f"--output-dir: {output_dir} exists and is not a kerasbert "
                "run directory (choose another or pass --overwrite)")
        return "new"
    with open(config_path, encoding="utf-8") as f:
        saved = json.load(f)
    diffs = _same_run(saved, configs)
    if diffs:
        raise UsageError(
            f"--output-dir: {output_dir} holds a run with another "
            f"configuration ({'; '.join(diffs[:3])}); pass --overwrite or "
            "another --output-dir")
    if os.path.exists(os.path.join(output_dir, "summary.json")):
        return "done"
    return "resume"


def _chief_by_tf_config() -> bool:
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    except json.JSONDecodeError:
        raise UsageError("TF_CONFIG: not valid JSON") from None
    task = tf_config.get("task", {})
    cluster = tf_config.get("cluster", {})
    if task.get("type") == "chief":
        return True
    return "chief" not in cluster and task.get("type", "worker") == "worker" \
        and int(task.get("index", 0)) == 0


def _write_json(path, value):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def run_lock(output_dir: str):
    """One process per run directory: `<output_dir>.lock` holds its pid.

    Two runs writing the same checkpoints and metrics would corrupt both.
    A lock left by a killed process (its pid is gone) is taken over, so
    rerunning after a crash resumes as usual. Same-host processes only.
    """
    from kerasbert.cache import pid_alive

    path = f"{os.path.abspath(output_dir).rstrip(os.sep)}.lock"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as f:
                    pid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid_alive(pid):
                raise UsageError(
                    f"--output-dir: {output_dir} is in use by another run "
                    f"(pid {pid})") from None
            os.remove(path)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        os.remove(path)


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
    from kerasbert.cache import prepare_corpus

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
    _write_json(os.path.join(output_dir, "config.json"), configs)

    from kerasbert.trainer import Trainer
    trainer = Trainer(model_cfg, data_cfg, train_cfg, tokenizer, corpus,
                      heldout_corpus, verbose=verbose, log=log,
                      callbacks=callbacks)
    return trainer.run(resume=state == "resume")


def perplexity(mlm_loss):
    try:
        return math.exp(mlm_loss)
    except OverflowError:
        return float("inf")
