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

from kerasbert.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    validate_pretraining,
)
from kerasbert.files import write_json_atomic
from kerasbert.training.rundir import (
    _chief_by_tf_config,
    _configs_dict,
    default_output_dir,
    prepare_run_dir,
    run_lock,
)


def pretrain(model_cfg: ModelConfig, data_cfg: DataConfig,
             train_cfg: TrainConfig, size: str | None = None,
             verbose: int = 1, log=print, callbacks=()) -> dict:
    """Runs (or resumes) pretraining; returns the summary dict.

    `callbacks` are extra Keras callbacks for `model.fit` (not used by the
    multi-worker loop).
    """
    validate_pretraining(model_cfg, data_cfg, train_cfg)
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
