"""`python -m kerasbert.adapt`: pretrain a checkpoint further on a task's
texts, then fine-tune it on the task.

    python -m kerasbert.adapt --model MODEL_DIR --train train.tsv \
        [--validation dev.tsv] [--test test.tsv] --output-dir OUT

Takes every fine-tuning flag (`kerasbert.finetune`) plus the adaptation
flags below. OUT/classifier is the fine-tuned model; OUT/heads and
OUT/adapted are the two pretraining runs before it (see
`kerasbert.training.adapt`). Rerunning the same command resumes.
"""

import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasbert.cli import (  # noqa: E402
    add_config_flags,
    import_tensorflow_quietly,
    split_values,
)
from kerasbert.config import (  # noqa: E402
    EXAMPLE_FORMATS,
    AdaptConfig,
    DataConfig,
    FinetuneConfig,
    check_field,
)
from kerasbert.errors import ArgumentParser, run_cli  # noqa: E402
from kerasbert.finetune import summarize  # noqa: E402


def build_parser():
    parser = ArgumentParser(
        prog="python -m kerasbert.adapt",
        description="Task-adaptive pretraining (masked LM + NSP on the "
        "--train texts), then fine-tuning.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(parser, AdaptConfig, title="adaptation")
    # Pretraining's own masking flag (its help, default and range).
    add_config_flags(parser, DataConfig, names=["mask_rate"], title="masking")
    add_config_flags(
        parser,
        FinetuneConfig,
        # Adaptation starts from --model's tokenizer and reads --train as
        # a corpus: no --from-scratch, --vocab-size, jsonl or hf data.
        names=[
            f.name
            for f in dataclasses.fields(FinetuneConfig)
            if f.name not in ("from_scratch", "vocab_size", "hf_config")
        ],
        title="fine-tuning",
        narrow={
            "data_format": {
                "choices": ("auto", *EXAMPLE_FORMATS),
                "help": "how to read the data files (auto: by extension; "
                "a folder: folder)",
            },
            "output_dir": {
                "help": "folder to write (heads/, adapted/, classifier/, "
                "adapt.json); rerun the same command to resume",
            },
            "train": {
                "help": "training data, also the adaptation's texts: "
                ".tsv/.csv, an emotion-style text;label file or a folder "
                "of <label>/*.txt",
            },
        },
    )
    return parser


def main(argv=None):
    args = vars(build_parser().parse_args(argv))
    quiet = args.pop("quiet")
    mask_rate = args.pop("mask_rate", DataConfig.mask_rate)
    parts = split_values(
        args, {"adapt": AdaptConfig, "finetune": FinetuneConfig}
    )
    check_field(DataConfig, "mask_rate", mask_rate)
    adapt_cfg = AdaptConfig(**parts["adapt"]).validate()
    cfg = FinetuneConfig(**parts["finetune"]).validate()
    import_tensorflow_quietly()
    from kerasbert.training.adapt import adapt

    # Progress on stdout, as fit's: stderr is for the one error line.
    result = adapt(
        adapt_cfg, cfg, verbose=0 if quiet else 1, mask_rate=mask_rate
    )
    summary = {"classifier": os.path.join(cfg.output_dir, "classifier")}
    for stage in ("heads", "adapted"):
        if stage in result:
            summary[f"{stage}_heldout_mlm_accuracy"] = result[stage].get(
                "heldout_mlm_accuracy"
            )
    summary.update(summarize(result["classifier"]))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    run_cli(main)
