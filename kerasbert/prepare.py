"""`python -m kerasbert.prepare`: tokenize and cache a corpus ahead of training.

    python -m kerasbert.prepare --corpus wiki/ --vocab-size 8000 \
        --tokenizer-out runs/tok

Flags are the corpus/tokenizer fields of `DataConfig`; `--config FILE.json`
may hold any DataConfig field. Prints the document, sentence and token
counts and where the cache is.
"""

import argparse
import sys

from kerasbert.cli import add_config_flags, read_config_file, split_values
from kerasbert.config import DataConfig
from kerasbert.errors import ArgumentParser, run_cli

# The DataConfig fields this step uses (pairing/masking ones are for fit).
FIELDS = (
    "corpus",
    "corpus_format",
    "one_doc_per_line",
    "text_field",
    "hf_config",
    "hf_split",
    "language",
    "clean",
    "tokenizer",
    "vocab_size",
    "lowercase",
    "strip_accents",
    "cache_dir",
)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m kerasbert.prepare",
        description="Tokenize and cache a corpus ahead of training.",
    )
    parser.add_argument("--config", help="DataConfig JSON file")
    parser.add_argument(
        "--tokenizer-out", metavar="DIR", help="save the tokenizer here"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --tokenizer-out",
    )
    parser.add_argument("--no-progress", action="store_true")
    add_config_flags(parser, DataConfig, names=FIELDS)
    return parser


def main(argv=None):
    from kerasbert.data.corpus import prepare_corpus
    from kerasbert.files import atomic_dir, check_output, check_writable_dir

    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config")
    tokenizer_out = args.pop("tokenizer_out")
    overwrite = args.pop("overwrite")
    progress = not args.pop("no_progress")
    values = read_config_file(config_file, ("data",)) if config_file else {}
    values.update(args)
    data_config = DataConfig(
        **split_values(values, {"data": DataConfig})["data"]
    ).validate()
    if tokenizer_out:
        check_writable_dir(tokenizer_out, "--tokenizer-out")
        check_output(
            tokenizer_out,
            "--tokenizer-out",
            {
                "--corpus": data_config.corpus,
                "--tokenizer": data_config.tokenizer,
                "--config": config_file,
                "--cache-dir": data_config.cache_dir,
            },
            overwrite,
        )
    tokenizer, corpus = prepare_corpus(data_config, progress=progress)
    if tokenizer_out:  # a trained one or a given one, saved whole
        with atomic_dir(tokenizer_out) as tmp:
            tokenizer.save(tmp)
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
