"""`python -m kerasbert.finetune`: train a text classifier on labelled data.

    python -m kerasbert.finetune --model MODEL_DIR --train train.tsv \
        [--validation dev.tsv] [--test test.tsv] --output-dir OUT

`MODEL_DIR` is a pretraining run of `kerasbert.fit` or a converted model
directory; `--from-scratch SIZE` starts from random weights instead (the
architecture flags then override the size). Every `FinetuneConfig` field is
a flag. Rerunning the same command resumes after the last finished epoch.
See `kerasbert.training.finetune` for what OUT holds.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasbert.cli import (  # noqa: E402
    add_config_flags,
    import_tensorflow_quietly,
    split_values,
)
from kerasbert.config import (  # noqa: E402
    ARCHITECTURE,
    FinetuneConfig,
    ModelConfig,
)
from kerasbert.errors import ArgumentParser, run_cli  # noqa: E402

# The model flags --from-scratch takes: the architecture less what the data
# fixes (the vocabulary it trains; two segments), plus the dropout rates.
FROM_SCRATCH_FLAGS = tuple(
    name
    for name in ARCHITECTURE
    if name not in ("vocabulary_size", "num_segments")
) + ("hidden_dropout", "attention_dropout")


def build_parser():
    parser = ArgumentParser(
        prog="python -m kerasbert.finetune",
        description="Fine-tune a BERT model for text (or text-pair) "
        "classification.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(parser, FinetuneConfig, title="fine-tuning")
    add_config_flags(
        parser,
        ModelConfig,
        names=FROM_SCRATCH_FLAGS,
        title="architecture (with --from-scratch)",
    )
    return parser


def main(argv=None):
    args = vars(build_parser().parse_args(argv))
    quiet = args.pop("quiet")
    parts = split_values(
        args, {"finetune": FinetuneConfig, "model": ModelConfig}
    )
    cfg = FinetuneConfig(**parts["finetune"]).validate()
    import_tensorflow_quietly()
    from kerasbert.training.finetune import finetune

    # Progress on stdout, as fit's and adapt's (and Keras' own progress
    # bars): stderr is for the one error line.
    result = finetune(cfg, parts["model"], verbose=0 if quiet else 1)
    print(json.dumps(summarize(result), indent=2))
    return 0


def summarize(result: dict) -> dict:
    """What the command prints of a run's metrics.json."""
    summary = {
        "best_epoch": result["best_epoch"],
        "epochs_trained": len(result["epochs"]),
        "metric": result["metric"],
    }
    for split in ("validation", "test"):
        if split in result:
            summary[split] = {
                k: round(result[split][k], 4)
                for k in ("accuracy", "macro_f1", "mcc")
            }
    return summary


if __name__ == "__main__":
    run_cli(main)
