"""The tiny from-scratch fine-tuning flags the fine-tuning tests share: a
one-layer, 32-wide random-init model with its own 300-token WordPiece,
which learns tests/fixtures/finetune's tasks in a few seconds; and the
same model as a backbone-only directory (`make_source_model`, the
`source` fixture of conftest.py) for adapt and --model runs."""

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


def make_source_model(directory, cache):
    """A backbone-only model directory, as `convert` writes one: tiny,
    random, with a WordPiece vocabulary of the fixture texts."""
    import json

    import keras

    from kerasbert.config import DataConfig, ModelConfig
    from kerasbert.data.corpus import prepare_corpus
    from kerasbert.modeling import BertBackbone

    tokenizer, _ = prepare_corpus(
        DataConfig(
            corpus=os.path.join(FIXTURES, "source_train.tsv"),
            corpus_format="tsv",
            vocab_size=300,
            cache_dir=str(cache),
        ),
        tokenizer_dir=os.path.join(directory, "tokenizer"),
        progress=False,
    )
    cfg = ModelConfig(
        vocabulary_size=tokenizer.vocabulary_size,
        hidden_dim=32,
        num_layers=1,
        num_heads=2,
        intermediate_dim=64,
        max_sequence_length=64,
    )
    keras.utils.set_random_seed(0)
    BertBackbone(**cfg.to_dict()).save(os.path.join(directory, "model.keras"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"model": cfg.to_dict()}, f)
