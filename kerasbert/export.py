"""`python -m kerasbert.export`: a run's model as a SavedModel or `.keras`.

    python -m kerasbert.export RUN_DIR --format saved_model|keras --output DIR
        [--overwrite]

A pretraining run gives the int-tensor SavedModel of
`kerasbert.serving.export`; a fine-tuned classifier (its config.json lists
"labels") gives the raw-text SavedModel of
`kerasbert.serving.text_classifier`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kerasbert.cli import import_tensorflow_quietly  # noqa: E402
from kerasbert.errors import ArgumentParser, UsageError, run_cli  # noqa: E402
from kerasbert.serving.modeldir import CHECKPOINTS  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(
        prog="python -m kerasbert.export",
        description="Export a kerasbert run's model.",
    )
    parser.add_argument(
        "run_dir",
        help="a run directory of kerasbert.fit "
        "or an output directory of kerasbert.finetune",
    )
    parser.add_argument(
        "--format", choices=["saved_model", "keras"], default="saved_model"
    )
    parser.add_argument(
        "--output",
        required=True,
        help="output folder (saved_model) or .keras file",
    )
    parser.add_argument(
        "--checkpoint",
        choices=CHECKPOINTS,
        default="model",
        help="which weights: final model, best or latest",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output"
    )
    args = parser.parse_args(argv)
    import_tensorflow_quietly()
    from kerasbert.files import check_output, check_writable_dir
    from kerasbert.serving.export import export_saved_model
    from kerasbert.serving.modeldir import load_model
    from kerasbert.serving.text_classifier import (
        export_classifier_dir,
        is_classifier_dir,
    )

    if args.format == "saved_model":
        check_writable_dir(args.output, "--output")
    elif not args.output.endswith(".keras"):
        raise UsageError(f"--output: {args.output} must end in .keras")
    elif os.path.isdir(args.output):
        raise UsageError(f"--output: {args.output} is a folder")
    check_output(
        args.output, "--output", {"RUN_DIR": args.run_dir}, args.overwrite
    )
    if args.format == "saved_model":
        if is_classifier_dir(args.run_dir):
            export_classifier_dir(args.run_dir, args.output, args.checkpoint)
        else:
            export_saved_model(
                load_model(args.run_dir, args.checkpoint), args.output
            )
    else:
        model = load_model(args.run_dir, args.checkpoint)
        from kerasbert.training.callbacks import save_model_atomic

        save_model_atomic(model, args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
