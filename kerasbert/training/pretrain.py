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
import os
import shutil
import sys
import tempfile

from kerasbert.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    parameter_count,
    validate_pretraining,
)
from kerasbert.errors import DiskFull, UsageError
from kerasbert.files import (
    check_free_space,
    check_output,
    check_writable_dir,
    make_scratch_dir,
    replacement_dir,
    swap_in,
)
from kerasbert.training.plan import make_plan
from kerasbert.training.rundir import (
    RunDir,
    chief_by_tf_config,
    default_output_dir,
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
    validate_pretraining(model_cfg, data_cfg, train_cfg)
    if not train_cfg.nsp:
        # Masked LM only: a random B would just join unrelated texts.
        data_cfg = dataclasses.replace(data_cfg, nsp_probability=0.0)
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
    state = run.state(configs, train_cfg.overwrite)
    if state == "done":
        log(
            f"{run.path}: this run is already complete (summary.json); "
            "pass --overwrite to start again"
        )
        with open(run.summary, encoding="utf-8") as f:
            return json.load(f)

    final = None
    if train_cfg.overwrite and os.path.isdir(run.path) and os.listdir(run.path):
        # Built beside the old run, which stays whole until the swap; a
        # replacement a kill left resumes.
        final, run = run, RunDir(replacement_dir(run.path))
        try:
            state = run.state(configs, overwrite=False)
        except UsageError:
            state = "new"
        if state == "new":
            shutil.rmtree(run.path, ignore_errors=True)
        elif state == "done":
            swap_in(run.path, final.path)
            with open(final.summary, encoding="utf-8") as f:
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

    from kerasbert.training.trainer import Trainer

    trainer = Trainer(
        model_cfg,
        data_cfg,
        train_cfg,
        tokenizer,
        corpus,
        plan,
        run,
        verbose=verbose,
        log=log,
        callbacks=callbacks,
        restore_dir=restore_dir,
    )
    summary = trainer.run(resume=state == "resume")
    if final is not None:
        swap_in(run.path, final.path)
    return summary
