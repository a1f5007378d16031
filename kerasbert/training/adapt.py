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

Each stage is a normal run: rerunning the command skips finished stages
and resumes the interrupted one.
"""

import dataclasses
import os

from kerasbert.config import (
    EXAMPLE_FORMATS,
    AdaptConfig,
    DataConfig,
    FinetuneConfig,
    TrainConfig,
    validate_pretraining,
)
from kerasbert.errors import UsageError
from kerasbert.files import check_output

STAGES = ("heads", "adapted", "classifier")


def corpus_config(
    adapt_cfg: AdaptConfig, cfg: FinetuneConfig, tokenizer: str
) -> DataConfig:
    """The `DataConfig` that reads --train's texts as a corpus."""
    fmt = cfg.data_format
    if fmt == "auto":
        from kerasbert.data.classification import detect_format

        fmt = detect_format(cfg.train, "--train")
    seq = adapt_cfg.adapt_sequence_length
    return DataConfig(
        corpus=cfg.train,
        corpus_format=fmt,
        text_field=cfg.text_column,
        columns=cfg.columns,
        hf_config=cfg.hf_config,
        tokenizer=tokenizer,
        sequence_length=seq,
        # BERT's 15% of the sequence, as the default 20 is of 128.
        max_predictions=min(seq - 3, max(1, round(0.15 * seq) + 1)),
    )


def _has_heads(directory: str) -> bool:
    from kerasbert.serving.modeldir import load_model

    model = load_model(directory)
    return hasattr(model, "mlm_head") and hasattr(model, "nsp_head")


def adapt(
    adapt_cfg: AdaptConfig, cfg: FinetuneConfig, verbose: int = 1, log=print
) -> dict:
    """Runs (or resumes) the three stages; returns their summaries."""
    from kerasbert.serving.modeldir import read_model_config
    from kerasbert.training.finetune import inputs

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
    check_output(cfg.output_dir, "--output-dir", inputs(cfg))
    model_cfg = read_model_config(cfg.model)
    data_cfg = corpus_config(
        adapt_cfg, cfg, os.path.join(cfg.model, "tokenizer")
    )
    if data_cfg.corpus_format not in EXAMPLE_FORMATS:
        raise UsageError(
            f"--train: {cfg.train}: read as {data_cfg.corpus_format}; "
            f"adaptation reads {', '.join(EXAMPLE_FORMATS)} data"
        )
    paths = {s: os.path.join(cfg.output_dir, s) for s in STAGES}
    train = TrainConfig(
        batch_size=adapt_cfg.adapt_batch_size,
        nsp=adapt_cfg.nsp,
        precision=cfg.precision,
        jit_compile=cfg.jit_compile,
        seed=cfg.seed,
        overwrite=cfg.overwrite,
        log_every=10,
        eval_batches=10,
    )
    validate_pretraining(model_cfg, data_cfg, train)
    new = not os.path.exists(cfg.output_dir)
    os.makedirs(cfg.output_dir, exist_ok=True)
    try:
        return _stages(
            adapt_cfg, cfg, model_cfg, data_cfg, train, paths, verbose, log
        )
    except BaseException:
        # A first stage refused (a bad flag, too little text): leave no
        # empty folder behind that the corrected command would trip on.
        if new and not os.listdir(cfg.output_dir):
            os.rmdir(cfg.output_dir)
        raise


# Pretraining's flags that this command spells its own way.
_OUR_FLAGS = {
    "--batch-size": "--adapt-batch-size",
    "--sequence-length": "--adapt-sequence-length",
    "--max-steps": "--adapt-steps",
}


def _pretrain(*args, **kwargs):
    """`pretrain`, its errors naming this command's flags."""
    from kerasbert.training.pretrain import pretrain

    try:
        return pretrain(*args, **kwargs)
    except UsageError as e:
        message = str(e)
        for theirs, ours in _OUR_FLAGS.items():
            if message.startswith(theirs + ":"):
                message = ours + message[len(theirs) :]
        raise UsageError(message) from None


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
    )
    log("stage 3/3: fine-tuning")
    summaries["classifier"] = finetune(
        dataclasses.replace(
            cfg, model=paths["adapted"], output_dir=paths["classifier"]
        ),
        verbose=verbose,
        log=log,
    )
    return summaries
