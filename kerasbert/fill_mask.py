"""`python -m kerasbert.fill_mask`: the tokens behind `[MASK]`.

    python -m kerasbert.fill_mask --model RUN_DIR "the [MASK] sat down ." \
        [--top-k 5] [--json]
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
from kerasbert.serving.modeldir import CHECKPOINTS  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(
        prog="python -m kerasbert.fill_mask",
        description="Predict the tokens behind [MASK] with a pretrained "
        "kerasbert model.",
    )
    parser.add_argument("text", help='text with one or more "[MASK]"')
    parser.add_argument(
        "--model", required=True, help="run directory of kerasbert.fit"
    )
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="model")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument(
        "--json", action="store_true", help="print JSON instead of a table"
    )
    args = parser.parse_args(argv)
    if args.top_k < 1:
        raise UsageError("--top-k: must be >= 1")
    check_text(args.text, "text")
    from kerasbert.serving.classifier import flagged
    from kerasbert.serving.fill_mask import encode_masked, fill_mask
    from kerasbert.serving.modeldir import (
        check_tokenizer_fits,
        load_model,
        load_tokenizer,
    )

    tokenizer = load_tokenizer(args.model)
    encode_masked(tokenizer, args.text)  # bad text fails before TF loads
    import_tensorflow_quietly()
    model = load_model(args.model, args.checkpoint)
    with flagged("--model"):
        check_tokenizer_fits(model, tokenizer, args.model)
    results = fill_mask(model, tokenizer, args.text, args.top_k)
    if args.json:
        print(
            json.dumps(
                results if len(results) > 1 else results[0],
                ensure_ascii=False,
                indent=2,
            )
        )
        return 0
    for i, candidates in enumerate(results):
        if len(results) > 1:
            print(f"[MASK] #{i + 1}")
        for c in candidates:
            print(f"{c['score']:8.4f}  {c['token']:<15} {c['sequence']}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    run_cli(main)
