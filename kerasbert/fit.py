"""`python -m kerasbert.fit`: pretrain BERT (masked LM + next sentence).

With no flags it pretrains the `tiny` size on the bundled WikiText-2 sample.
Every field of `ModelConfig`, `DataConfig` and `TrainConfig` is a flag (the
field name with dashes); `--config FILE.json` may hold any of them (flat, or
the nested `config.json` of an earlier run) and flags override it.
"""

import argparse
import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasbert.cli import (  # noqa: E402
    add_config_flags,
    import_tensorflow_quietly,
    read_config_file,
    split_values,
)
from kerasbert.config import (  # noqa: E402
    ARCHITECTURE,
    SIZES,
    DataConfig,
    ModelConfig,
    TrainConfig,
    validate_pretraining,
)
from kerasbert.errors import (  # noqa: E402
    ArgumentParser,
    UsageError,
    run_cli,
)

CONFIG_CLASSES = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m kerasbert.fit",
        description="Pretrain BERT (masked LM + next-sentence prediction) "
        "in Keras. No flags: tiny size on the bundled corpus.",
    )
    parser.add_argument(
        "--config",
        help="JSON file with any of the fields below; flags override it",
    )
    parser.add_argument(
        "--size",
        default=argparse.SUPPRESS,
        choices=list(SIZES),
        help="model size (default: tiny)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    for part, cls in CONFIG_CLASSES.items():
        add_config_flags(parser, cls, title=f"{part} ({cls.__name__})")
    return parser


def resolve_configs(argv=None):
    """Flags + optional --config file -> (size, model, data, train, quiet),
    validated: a bad value stops here, before anything is written."""
    args = vars(build_parser().parse_args(argv))
    quiet = args.pop("quiet", False)
    values = read_config_file(args["config"]) if args.get("config") else {}
    args.pop("config", None)
    given = set(args)
    values.update(args)
    size = values.pop("size", "tiny")
    parts = split_values(values, CONFIG_CLASSES)
    data, train = DataConfig(**parts["data"]), TrainConfig(**parts["train"])
    if train.init_from:
        size, model, data = _init_from(
            train.init_from, values, parts, data, given
        )
    else:
        model = ModelConfig.from_size(size, **parts["model"])
    validate_pretraining(model, data, train)
    return size, model, data, train, quiet


def _init_from(directory, values, parts, data, given=()):
    """The model config and tokenizer of --init-from's directory; flags may
    change dropout and the like, not the architecture."""
    from kerasbert.config import read_json_object
    from kerasbert.serving.classifier import flagged
    from kerasbert.serving.modeldir import load_model, read_model_config

    if "size" in values:
        raise UsageError(
            "--size: not with --init-from (the model directory "
            "fixes the architecture)"
        )
    with flagged("--init-from"):
        model = read_model_config(directory)
    if data.tokenizer is None:
        # The directory's tokenizer is used: --vocab-size is its size (as
        # its run recorded it) or an error, never a value nothing obeys.
        path = os.path.join(directory, "config.json")
        source = read_json_object(path, path).get("data") or {}
        if "vocab_size" in given and data.vocab_size != source.get(
            "vocab_size"
        ):
            raise UsageError(
                f"--vocab-size: not with --init-from (the model directory's "
                f"tokenizer, {directory}/tokenizer, fixes the vocabulary)"
            )
        if isinstance(source.get("vocab_size"), int):
            data = dataclasses.replace(data, vocab_size=source["vocab_size"])
    import_tensorflow_quietly()
    # Damaged, oversized or NaN weights: refused before a run directory
    # exists (the trainer loads them again into the new model).
    load_model(directory)
    for name in ARCHITECTURE:
        if name in parts["model"] and parts["model"][name] != getattr(
            model, name
        ):
            raise UsageError(
                f"--{name.replace('_', '-')}: {parts['model'][name]} differs "
                f"from --init-from {directory} ({getattr(model, name)})"
            )
    model = dataclasses.replace(model, **parts["model"])
    if data.tokenizer is None:
        data = dataclasses.replace(
            data, tokenizer=os.path.join(directory, "tokenizer")
        )
    return None, model, data


def main(argv=None):
    size, model_cfg, data_cfg, train_cfg, quiet = resolve_configs(argv)
    import_tensorflow_quietly()
    from kerasbert.training.pretrain import pretrain

    summary = pretrain(
        model_cfg, data_cfg, train_cfg, size=size, verbose=0 if quiet else 1
    )
    if summary:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    run_cli(main)
