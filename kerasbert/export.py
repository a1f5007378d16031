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
    from kerasbert.files import (
        Exists,
        atomic_dir,
        atomic_path,
        check_output,
        check_writable_dir,
        exists_error,
    )
    from kerasbert.serving.export import export_saved_model, require_heads
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
    # Written beside --output and moved in when complete; without
    # --overwrite an --output that another process wrote meanwhile is
    # kept and this one refused (`files.move_new`), not silently replaced.
    try:
        if args.format == "saved_model":
            classifier = is_classifier_dir(args.run_dir)
            if not classifier:
                model = load_model(args.run_dir, args.checkpoint)
                require_heads(model, f"RUN_DIR {args.run_dir}")
            with atomic_dir(args.output, replace=args.overwrite) as tmp:
                if classifier:
                    export_classifier_dir(args.run_dir, tmp, args.checkpoint)
                else:
                    export_saved_model(model, tmp)
        else:
            model = load_model(args.run_dir, args.checkpoint)
            from kerasbert.training.callbacks import save_model_atomic

            with atomic_path(args.output, replace=args.overwrite) as tmp:
                save_model_atomic(model, tmp)
    except Exists:
        raise exists_error(args.output, "--output") from None
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
