"""Tokenize and cache a corpus ahead of training.

    python -m kerasbert.prepare --corpus wiki/ --vocab-size 8000 \
        --tokenizer-out runs/tok

Flags are the corpus/tokenizer fields of `DataConfig` with dashes;
`--config FILE.json` may hold any DataConfig field. Prints the document,
sentence and token counts and where the cache is.
"""

import argparse
import dataclasses
import sys

from kerasbert.config import DataConfig
from kerasbert.errors import ArgumentParser, run_cli

# The DataConfig fields this step uses (pairing/masking ones are for fit).
FIELDS = ("corpus", "corpus_format", "one_doc_per_line", "text_field",
          "hf_config", "hf_split", "language", "clean", "tokenizer",
          "vocab_size", "lowercase", "strip_accents", "cache_dir")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m kerasbert.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="DataConfig JSON file")
    parser.add_argument("--tokenizer-out", metavar="DIR",
                        help="save the tokenizer here")
    parser.add_argument("--no-progress", action="store_true")
    defaults = DataConfig()
    for f in dataclasses.fields(DataConfig):
        if f.name not in FIELDS:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool) or f.name == "strip_accents":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS)
        else:
            kind = int if isinstance(default, int) else str
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS,
                                help=f"default: {default}")
    return parser


def main(argv=None):
    from kerasbert.data.cache import prepare_corpus

    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config")
    tokenizer_out = args.pop("tokenizer_out")
    progress = not args.pop("no_progress")
    values = DataConfig.load(config_file).to_dict() if config_file else {}
    data_config = DataConfig.from_dict({**values, **args})
    tokenizer, corpus = prepare_corpus(data_config, tokenizer_out, progress)
    print(f"documents: {corpus.num_documents}")
    print(f"sentences: {corpus.num_sentences}")
    print(f"tokens: {corpus.num_tokens}")
    print(f"vocabulary: {tokenizer.vocabulary_size} ({tokenizer.source})")
    print(f"cache: {corpus.path}")
    if tokenizer_out:
        print(f"tokenizer: {tokenizer_out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
