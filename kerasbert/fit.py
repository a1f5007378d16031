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
import sys
import types
import typing

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasbert.config import (  # noqa: E402
    SIZES,
    DataConfig,
    ModelConfig,
    TrainConfig,
    read_json_object,
)
from kerasbert.errors import (  # noqa: E402
    ArgumentParser,
    TrainingDiverged,
    UsageError,
    run_cli,
)

HELP = {
    # model
    "vocabulary_size": "set from the tokenizer; a flag is ignored",
    "hidden_dim": "width of every layer (overrides --size)",
    "num_layers": "encoder blocks (overrides --size)",
    "num_heads": "attention heads (overrides --size)",
    "intermediate_dim": "feed-forward width (overrides --size)",
    "max_sequence_length": "position table length",
    "num_segments": "segment (token type) table length",
    "hidden_dropout": "dropout after embeddings, attention and FFN",
    "attention_dropout": "dropout on attention probabilities "
                         "(0 enables fused attention)",
    "layer_norm_epsilon": "LayerNorm epsilon",
    "initializer_range": "std of the truncated-normal initialisers "
                         "(default 0.02, 0.02*sqrt(768/hidden-dim) when "
                         "narrower than 768)",
    # data
    "corpus": "file or folder of text (default: bundled WikiText-2 sample);"
              " with --corpus-format hf, a datasets name",
    "corpus_format": "auto|text|wikitext|wikiextractor|jsonl|hf",
    "one_doc_per_line": "plain text: each line is a document",
    "text_field": "jsonl/hf: the field holding the text",
    "hf_config": "hf: dataset configuration name",
    "hf_split": "hf: split to read",
    "language": "en|ko|auto: sentence splitter (nltk punkt / kss)",
    "clean": "remove URLs, e-mails, emoji and long character repeats",
    "tokenizer": "dir, vocab.txt or SentencePiece .model "
                 "(default: train WordPiece on the corpus)",
    "vocab_size": "WordPiece vocabulary size when training one",
    "lowercase": "lower-case text when training a tokenizer",
    "strip_accents": "strip accents (default: same as --lowercase)",
    "cache_dir": "token cache (default ~/.cache/kerasbert or "
                 "$KERASBERT_CACHE)",
    "sequence_length": "tokens per sequence including [CLS]/[SEP]",
    "max_predictions": "masked positions per sequence at most",
    "mask_rate": "share of tokens to predict (80/10/10 rule)",
    "whole_word": "mask whole words, not word pieces",
    "nsp_probability": "share of pairs whose B is random (label 1)",
    "short_seq_prob": "share of pairs with a shorter target length",
    "holdout_fraction": "share of documents held out for evaluation",
    "heldout_corpus": "evaluate on this corpus instead of a held-out share",
    # train
    "batch_size": "global batch size (all replicas)",
    "max_steps": "total training steps (wins over --epochs)",
    "epochs": "epochs when --max-steps is not set",
    "steps_per_epoch": "steps between evaluations (default: one pass over "
                       "the sentence pairs)",
    "learning_rate": "peak learning rate",
    "warmup_ratio": "share of steps of linear warm-up (then linear decay)",
    "weight_decay": "decoupled weight decay (not on LayerNorm and bias)",
    "adam_epsilon": "epsilon of AdamW/LAMB (HF uses 1e-8)",
    "optimizer": "adamw|lamb",
    "mlm_bias_init": "unigram|zeros: MLM output bias at step 0 (unigram: "
                     "log token frequencies of the training corpus)",
    "gradient_accumulation_steps": "batches per optimizer update",
    "clipnorm": "global gradient-norm clipping (0 turns it off)",
    "precision": "auto|float32|mixed_float16|mixed_bfloat16",
    "jit_compile": "auto|on|off: XLA (auto: on with a GPU)",
    "strategy": "auto|one_device|mirrored|multi_worker (reads TF_CONFIG)",
    "seed": "seed for weights, pairs and masks",
    "output_dir": "run directory (default: runs/<size>); rerun the same "
                  "command to resume",
    "backup_every": "steps between resume backups",
    "eval_batches": "held-out batches per evaluation",
    "log_every": "steps per metrics.csv row",
    "overwrite": "delete an existing run in --output-dir first",
}

CONFIG_CLASSES = {"model": ModelConfig, "data": DataConfig,
                  "train": TrainConfig}


def _flag_type(annotation):
    """int | None -> int, etc. Returns (type, is_bool)."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) and args:
        annotation = next(a for a in args if a is not type(None))
    return annotation, annotation is bool


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m kerasbert.fit",
        description="Pretrain BERT (masked LM + next-sentence prediction) "
                    "in Keras. No flags: tiny size on the bundled corpus.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="JSON file with any of the fields "
                        "below; flags override it")
    parser.add_argument("--size", default=argparse.SUPPRESS,
                        help=f"model size: {', '.join(SIZES)} "
                             "(default: tiny)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar")
    for group_name, cls in CONFIG_CLASSES.items():
        group = parser.add_argument_group(f"{group_name} ({cls.__name__})")
        for f in dataclasses.fields(cls):
            kind, is_bool = _flag_type(f.type)
            flag = "--" + f.name.replace("_", "-")
            kwargs = dict(dest=f.name, default=argparse.SUPPRESS,
                          help=f"{HELP.get(f.name, '')} "
                               f"(default: {f.default})")
            if is_bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction,
                                   **kwargs)
            else:
                group.add_argument(flag, type=kind, metavar=kind.__name__
                                   .upper(), **kwargs)
    return parser


def _load_config_file(path) -> dict:
    values = read_json_object(path, f"--config: {path}")
    if set(values) <= {"model", "data", "train", "size"} and any(
            isinstance(values.get(k), dict) for k in CONFIG_CLASSES):
        flat = {"size": values["size"]} if "size" in values else {}
        for part in CONFIG_CLASSES:
            flat.update(values.get(part) or {})
        values = flat
    return values


def resolve_configs(argv=None):
    """Flags + optional --config file -> (size, model, data, train)."""
    args = vars(build_parser().parse_args(argv))
    values = {}
    if args.get("config"):
        values = _load_config_file(args["config"])
    values.update({k: v for k, v in args.items()
                   if k not in ("config", "quiet")})
    size = values.pop("size", "tiny")
    known = {f.name for cls in CONFIG_CLASSES.values()
             for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"--config: unknown field(s) {', '.join(unknown)}")

    def pick(cls):
        return {f.name: values[f.name] for f in dataclasses.fields(cls)
                if f.name in values}

    model_cfg = ModelConfig.from_size(size, **pick(ModelConfig))
    return (size, model_cfg, DataConfig(**pick(DataConfig)),
            TrainConfig(**pick(TrainConfig)), args.get("quiet", False))


def main(argv=None):
    size, model_cfg, data_cfg, train_cfg, quiet = resolve_configs(argv)
    from kerasbert.training.pretrain import pretrain
    try:
        summary = pretrain(model_cfg, data_cfg, train_cfg, size=size,
                           verbose=0 if quiet else 1)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if summary:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    run_cli(main)
