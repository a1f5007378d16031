"""`python -m kerasbert.convert SRC DST`: BERT checkpoints in and out.

    python -m kerasbert.convert HF_OR_GOOGLE_DIR MODEL_DIR \
        [--precision float32|mixed_float16|mixed_bfloat16] [--allow-pickle]
    python -m kerasbert.convert RUN_OR_MODEL_DIR HF_DIR
        [--overwrite] on both

What SRC is decides the direction; see `kerasbert.interop`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasbert.cli import import_tensorflow_quietly  # noqa: E402
from kerasbert.errors import ArgumentParser, run_cli  # noqa: E402
from kerasbert.interop import PRECISIONS  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(
        prog="python -m kerasbert.convert",
        description="Convert a Hugging Face or Google BERT checkpoint into "
        "a kerasbert model directory, or a kerasbert run/model "
        "directory into a Hugging Face folder.",
    )
    parser.add_argument(
        "src",
        help="HF folder, Google BERT folder, or kerasbert run/model directory",
    )
    parser.add_argument(
        "dst", help="folder to write (must not exist unless --overwrite)"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="dtype policy of the written kerasbert model "
        "(weights stay float32; default: float32)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read pytorch_model.bin (unpickling can run "
        "code: only for files you trust)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing DST"
    )
    args = parser.parse_args(argv)
    import_tensorflow_quietly()
    from kerasbert.interop import convert

    written = convert(
        args.src,
        args.dst,
        precision=args.precision,
        allow_pickle=args.allow_pickle,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.dst} ({written})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
