"""Task-adaptive pretraining, then fine-tuning: one recipe, three runs.

`adapt(adapt_cfg, finetune_cfg)` is what `python -m kerasbert.adapt` calls.
A released checkpoint is first pretrained further on the texts of the
fine-tuning data (--train, labels unused; Gururangan et al. 2020, "Don't
Stop Pretraining"), then fine-tuned from there. Its output folder holds
one ordinary run per stage:

    heads/       pretraining run: the MLM/NSP heads --model lacks, trained
                 with the encoder frozen (skipped when it has both)
    adapted/     pretraining run: the whole model on the task's texts
    classifier/  the fine-tuned classifier (what predict and export take)

Why the head stage: a converted sentence encoder (all-MiniLM-L6-v2 and
most others) has no MLM transform and no NSP layer. Trained from random
together with the encoder, their first large gradients reach a trained
encoder through random weights; a short warm-up with the encoder frozen
gives them trained values first (what it reaches: docs/adapt.md).

    adapt.json   the command's settings (a rerun with others is refused
                 before anything runs, unless --overwrite)

Each stage is a normal run: rerunning the command skips finished stages
and resumes the interrupted one. The stages refer to each other by path
(`adapted` starts from `heads`); a moved or copied folder resumes all the
same (`rundir.config_changes` follows a run's siblings).
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil

from kerasbert.config import (
    EXAMPLE_FORMATS,
    AdaptConfig,
    DataConfig,
    FinetuneConfig,
    TrainConfig,
    validate_pretraining,
)
from kerasbert.errors import TrainingDiverged, UsageError
from kerasbert.files import (
    check_output,
    check_writable_dir,
    only_stale_temps,
    replacement_dir,
    stale_temp,
    swap_in,
    write_json_atomic,
)
from kerasbert.training.rundir import config_changes, run_lock

STAGES = ("heads", "adapted", "classifier")


def corpus_config(
    adapt_cfg: AdaptConfig,
    cfg: FinetuneConfig,
    tokenizer: str,
    mask_rate: float = DataConfig.mask_rate,
) -> DataConfig:
    """The `DataConfig` that reads --unlabelled's (default: --train's)
    texts as a corpus, masking `mask_rate` of each sequence's tokens."""
    path, flag = corpus_of(adapt_cfg, cfg)
    fmt = cfg.data_format
    if fmt == "auto":
        from kerasbert.data.classification import detect_format

        fmt = detect_format(path, flag)
    seq = adapt_cfg.adapt_sequence_length
    return DataConfig(
        corpus=path,
        corpus_format=fmt,
        text_field=cfg.text_column,
        columns=cfg.columns,
        hf_config=cfg.hf_config,
        tokenizer=tokenizer,
        sequence_length=seq,
        packing=adapt_cfg.packing,
        mask_rate=mask_rate,
        # Room for `mask_rate` of the sequence, as the default 20 is for
        # BERT's 15% of 128.
        max_predictions=min(seq - 3, max(1, round(mask_rate * seq) + 1)),
    )


def corpus_of(adapt_cfg: AdaptConfig, cfg: FinetuneConfig) -> tuple:
    """(path, flag) of the texts the adaptation reads."""
    if adapt_cfg.unlabelled:
        return adapt_cfg.unlabelled, "--unlabelled"
    return cfg.train, "--train"


def _has_heads(directory: str) -> bool:
    from kerasbert.serving.modeldir import load_model

    model = load_model(directory)
    return hasattr(model, "mlm_head") and hasattr(model, "nsp_head")


def adapt(
    adapt_cfg: AdaptConfig,
    cfg: FinetuneConfig,
    verbose: int = 1,
    log=print,
    mask_rate: float = DataConfig.mask_rate,
) -> dict:
    """Runs (or resumes) the three stages; returns their summaries.

    Every input of every stage is checked before anything is written (as
    `finetune` does): the fine-tuning data and labels too, not only at
    stage 3. The output folder holds the stage folders and `adapt.json`
    (these settings) and nothing else; `--overwrite` of an existing one
    builds the whole new folder beside it (`.NAME.replacing/`, resumed by
    the same command after a kill) and swaps it in when complete, so the
    folder never mixes two runs' stages.
    """
    from kerasbert.serving.classifier import flagged
    from kerasbert.serving.modeldir import read_model_config
    from kerasbert.training.finetune import inputs, read_data

    adapt_cfg.validate()
    cfg.validate()
    if cfg.from_scratch:
        raise UsageError(
            "--from-scratch: adaptation starts from a trained --model"
        )
    if cfg.data_format not in ("auto", *EXAMPLE_FORMATS):
        raise UsageError(
            f"--data-format: {cfg.data_format} is not read as a corpus here;"
            f" use one of {', '.join(EXAMPLE_FORMATS)}"
        )
    # The stages' own checks see only their part; this one sees them all.
    check_output(
        cfg.output_dir,
        "--output-dir",
        {**inputs(cfg), "--unlabelled": adapt_cfg.unlabelled},
    )
    check_writable_dir(cfg.output_dir, "--output-dir")
    with flagged("--model"):
        model_cfg = read_model_config(cfg.model)
    data_cfg = corpus_config(
        adapt_cfg, cfg, os.path.join(cfg.model, "tokenizer"), mask_rate
    )
    corpus, corpus_flag = corpus_of(adapt_cfg, cfg)
    if data_cfg.corpus_format not in EXAMPLE_FORMATS:
        raise UsageError(
            f"{corpus_flag}: {corpus}: read as {data_cfg.corpus_format}; "
            f"adaptation reads {', '.join(EXAMPLE_FORMATS)} data"
        )
    read_data(cfg)  # stage 3's files and labels, before stage 1
    train = TrainConfig(
        batch_size=adapt_cfg.adapt_batch_size,
        nsp=adapt_cfg.nsp,
        precision=cfg.precision,
        jit_compile=cfg.jit_compile,
        strategy=cfg.strategy,
        seed=cfg.seed,
        log_every=10,
        eval_batches=10,
    )
    with ours_named(corpus_flag):
        validate_pretraining(model_cfg, data_cfg, train)
    settings = {
        "adapt": adapt_cfg.to_dict(),
        "finetune": cfg.to_dict(),
        "data": {"mask_rate": mask_rate},
    }
    with run_lock(cfg.output_dir):
        folder = _output_folder(cfg, settings, log)
        new = not os.path.exists(folder)
        paths = {s: os.path.join(folder, s) for s in STAGES}
        os.makedirs(folder, exist_ok=True)
        write_json_atomic(os.path.join(folder, SETTINGS), settings)
        try:
            summaries = _stages(
                adapt_cfg, cfg, model_cfg, data_cfg, train, paths, verbose, log
            )
        except BaseException:
            # A first stage refused (a bad flag, too little text): leave no
            # folder behind that the corrected command would trip on.
            if new and os.listdir(folder) == [SETTINGS]:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        if folder != cfg.output_dir:
            swap_in(folder, cfg.output_dir)
        return summaries


# What an adapt folder holds besides the stage folders: its settings, to
# refuse a rerun with others up front and to resume a replacement.
SETTINGS = "adapt.json"


def _output_folder(cfg, settings: dict, log) -> str:
    """The folder the stages are written in: --output-dir, or its
    replacement beside it (`--overwrite` of an existing one). Refuses a
    folder of the user's own files, stage folders that are not runs, and
    (without --overwrite) an adapt run of other settings."""
    out = cfg.output_dir
    replacement = replacement_dir(out)
    if cfg.overwrite and os.path.isdir(out) and os.listdir(out):
        if _changes(replacement, settings) == []:
            log(f"resuming the replacement of {out} in {replacement}")
        else:  # none, or another command's: start afresh
            shutil.rmtree(replacement, ignore_errors=True)
        return replacement
    if os.path.isdir(replacement):
        log(
            f"note: removed {replacement}, the unfinished replacement of an "
            "earlier --overwrite run (this command has no --overwrite)"
        )
        shutil.rmtree(replacement)
    if not os.path.isdir(out):
        return out
    foreign = sorted(
        name
        for name in set(os.listdir(out)) - {*STAGES, SETTINGS}
        if not stale_temp(name)  # a kill inside the first write
    )
    if foreign:
        raise UsageError(
            f"--output-dir: {out} holds files that are not an adapt run's "
            f"({', '.join(foreign[:3])}); choose another or pass --overwrite"
        )
    for stage in STAGES:
        path = os.path.join(out, stage)
        if (
            os.path.isdir(path)
            and not only_stale_temps(path)
            and not os.path.isfile(os.path.join(path, "config.json"))
        ):
            raise UsageError(
                f"--output-dir: {path} exists and is not a kerasbert run "
                "directory (choose another or pass --overwrite)"
            )
    diffs = _changes(out, settings)
    if diffs and any(os.path.isdir(os.path.join(out, s)) for s in STAGES):
        raise UsageError(
            f"--output-dir: {out} holds an adapt run with other settings "
            f"({'; '.join(diffs[:3])}); pass --overwrite or another "
            "--output-dir"
        )
    return out


def _changes(folder: str, settings: dict) -> list[str] | None:
    """How `settings` differ from those in `folder`'s adapt.json ([]: the
    same); None: no readable adapt.json there."""
    path = os.path.join(folder, SETTINGS)
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict):
        return None
    return config_changes(saved, settings)


# Pretraining's flags and advice that this command spells its own way.
_OUR_FLAGS = (
    ("--max-sequence-length", "--model's max_sequence_length"),
    ("--sequence-length", "--adapt-sequence-length"),
    ("--batch-size", "--adapt-batch-size"),
    ("--max-steps", "--adapt-steps"),
    ("--corpus-format", "--data-format"),
    ("--corpus", "--train"),
    (
        "separate documents with a blank line, or set --one-doc-per-line",
        "each --train example is one: give more examples",
    ),
)


@contextlib.contextmanager
def ours_named(corpus_flag="--train"):
    """Pretraining's errors, naming this command's flags (`corpus_flag`:
    the one that names the adaptation's texts)."""
    try:
        yield
    except UsageError as e:
        message = str(e)
        for theirs, ours in _OUR_FLAGS:
            if ours == "--train":
                ours = corpus_flag
            message = re.sub(
                rf"(?<![\w-]){re.escape(theirs)}(?![\w-])",
                ours,
                message,
            )
        raise UsageError(message) from None


def _pretrain(*args, learning_rate_flag, corpus_flag, **kwargs):
    """`pretrain`, its errors naming this command's flags."""
    from kerasbert.training.pretrain import pretrain

    with ours_named(corpus_flag):
        try:
            return pretrain(*args, **kwargs)
        except TrainingDiverged as e:
            e.flag = learning_rate_flag
            raise


def _stages(adapt_cfg, cfg, model_cfg, data_cfg, train, paths, verbose, log):
    from kerasbert.training.finetune import finetune

    summaries = {}
    start = cfg.model
    if adapt_cfg.head_steps and not _has_heads(cfg.model):
        log(f"stage 1/3: heads ({adapt_cfg.head_steps} steps, encoder frozen)")
        summaries["heads"] = _pretrain(
            model_cfg,
            data_cfg,
            dataclasses.replace(
                train,
                init_from=cfg.model,
                heads_only=True,
                max_steps=adapt_cfg.head_steps,
                learning_rate=adapt_cfg.head_learning_rate,
                output_dir=paths["heads"],
            ),
            verbose=verbose,
            log=log,
            learning_rate_flag="--head-learning-rate",
            corpus_flag=corpus_of(adapt_cfg, cfg)[1],
        )
        start = paths["heads"]
    log(
        f"stage 2/3: adaptation ({adapt_cfg.adapt_steps} steps, "
        f"{'masked LM + NSP' if adapt_cfg.nsp else 'masked LM only'})"
    )
    summaries["adapted"] = _pretrain(
        model_cfg,
        data_cfg,
        dataclasses.replace(
            train,
            init_from=start,
            max_steps=adapt_cfg.adapt_steps,
            learning_rate=adapt_cfg.adapt_learning_rate,
            output_dir=paths["adapted"],
        ),
        verbose=verbose,
        log=log,
        learning_rate_flag="--adapt-learning-rate",
        corpus_flag=corpus_of(adapt_cfg, cfg)[1],
    )
    log("stage 3/3: fine-tuning")
    summaries["classifier"] = finetune(
        dataclasses.replace(
            cfg,
            model=paths["adapted"],
            output_dir=paths["classifier"],
            overwrite=False,  # the whole folder is replaced, not a stage
        ),
        verbose=verbose,
        log=log,
    )
    return summaries
