"""The tiny from-scratch fine-tuning flags the fine-tuning tests share: a
one-layer, 32-wide random-init model with its own 300-token WordPiece,
which learns tests/fixtures/finetune's tasks in a few seconds."""

import os

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "finetune")


def tiny_args(hidden_dropout=0.0, attention_dropout=0.0, dropout=0.0):
    """`kerasbert.finetune` flags for the tiny model; dropout off unless
    asked for (the resume test wants it on: its draws must resume too)."""
    return [
        "--from-scratch",
        "tiny",
        "--hidden-dim",
        "32",
        "--num-layers",
        "1",
        "--num-heads",
        "2",
        "--intermediate-dim",
        "64",
        "--hidden-dropout",
        str(hidden_dropout),
        "--attention-dropout",
        str(attention_dropout),
        "--dropout",
        str(dropout),
        "--vocab-size",
        "300",
        "--learning-rate",
        "3e-3",
        "--batch-size",
        "16",
        "--max-length",
        "64",
        "--quiet",
    ]


def source_task(epochs=5):
    """The single-sentence task's data flags (train, validation, test)."""
    return [
        "--train",
        os.path.join(FIXTURES, "source_train.tsv"),
        "--validation",
        os.path.join(FIXTURES, "source_val.tsv"),
        "--test",
        os.path.join(FIXTURES, "source_val.tsv"),
        "--epochs",
        str(epochs),
    ]
