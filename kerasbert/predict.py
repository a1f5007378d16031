"""`python -m kerasbert.predict`: labels and probabilities from a
fine-tuned classifier directory.

    python -m kerasbert.predict --model OUT "text" ["text" ...] \
        [--file texts.txt] [--json] [--batch-size 64]

`--file` holds one text per line; for a sentence-pair model a line is
`A<TAB>B`, and so is a pair given as an argument. Texts run in batches of
similar length, so files of thousands of lines are quick.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasbert.cli import (  # noqa: E402
    check_text,
    import_tensorflow_quietly,
)
from kerasbert.errors import ArgumentParser, UsageError, run_cli  # noqa: E402
from kerasbert.files import check_regular  # noqa: E402


def read_texts(args) -> list[str]:
    texts = [check_text(t, f"text {i}") for i, t in enumerate(args.texts, 1)]
    if args.file:
        if os.path.exists(args.file) and not os.path.isdir(args.file):
            check_regular(args.file, f"--file: {args.file}")  # no FIFO
        try:
            with open(args.file, encoding="utf-8-sig") as f:
                lines = [line.rstrip("\r\n") for line in f if line.strip()]
        except FileNotFoundError:
            raise UsageError(f"--file: {args.file}: no such file") from None
        except IsADirectoryError:
            raise UsageError(f"--file: {args.file}: is a folder") from None
        except UnicodeDecodeError as e:
            raise UsageError(
                f"--file: {args.file}: not UTF-8 text ({e})"
            ) from None
        if not lines:
            raise UsageError(f"--file: {args.file}: no text in it")
        texts += lines
    if not texts:
        raise UsageError("give texts as arguments or --file")
    return texts


def split_pairs(texts, pair: bool):
    """(first texts, second texts or None); pairs are `A<TAB>B`."""
    if not pair:
        return texts, None
    firsts, seconds = [], []
    for i, text in enumerate(texts, 1):
        if text.count("\t") != 1:
            raise UsageError(
                f"text {i}: this model classifies text pairs; "
                "write them as A<TAB>B"
            )
        a, b = text.split("\t")
        firsts.append(a)
        seconds.append(b)
    return firsts, seconds


def main(argv=None):
    parser = ArgumentParser(
        prog="python -m kerasbert.predict",
        description="Classify texts with a kerasbert.finetune directory.",
    )
    parser.add_argument("texts", nargs="*", help="texts to classify")
    parser.add_argument(
        "--model", required=True, help="output directory of kerasbert.finetune"
    )
    parser.add_argument("--file", help="a file of texts, one per line")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON Lines instead of a table",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UsageError("--batch-size: must be >= 1")
    texts = read_texts(args)
    import_tensorflow_quietly()
    from kerasbert.data.classification import Examples, encode
    from kerasbert.serving.classifier import load_classifier, predict_proba

    inner = os.path.join(args.model, "classifier")
    if not os.path.lexists(
        os.path.join(args.model, "config.json")
    ) and os.path.isfile(os.path.join(inner, "config.json")):
        raise UsageError(
            f"--model: {args.model} is an adapt folder; its fine-tuned "
            f"classifier is {inner}"
        )
    model, tokenizer, config = load_classifier(args.model)
    firsts, seconds = split_pairs(texts, config.get("pair", False))
    settings = config["finetune"]
    encoded = encode(
        tokenizer,
        Examples(firsts, seconds, None, []),
        settings["max_length"],
        settings["truncation"],
    )
    probs = predict_proba(model, encoded, args.batch_size)
    labels = config["labels"]
    for text, p in zip(texts, probs):
        best = int(p.argmax())
        if args.json:
            print(
                json.dumps(
                    {
                        "text": text,
                        "label": labels[best],
                        "probabilities": {
                            name: round(float(v), 6)
                            for name, v in zip(labels, p)
                        },
                    },
                    ensure_ascii=False,
                )
            )
        else:
            print(f"{labels[best]}\t{p[best]:.4f}\t{text}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    run_cli(main)
