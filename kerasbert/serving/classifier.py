"""A fine-tuned classifier directory: loading it, and class probabilities.

What `kerasbert.finetune` writes (see training/finetune.py) is read here,
once, by `predict`, `export` and the tests.
"""

import contextlib
import os

import numpy as np

from kerasbert.data import classification as cls_data
from kerasbert.errors import UsageError


@contextlib.contextmanager
def flagged(flag):
    """Prefixes the flag to a `UsageError` that names only a path."""
    try:
        yield
    except UsageError as e:
        if str(e).startswith("--"):
            raise
        raise UsageError(f"{flag}: {e}") from None


class Predictor:
    """Class probabilities of one model, through one traced graph for every
    batch shape (a new tf.function per call would retrace each time); the
    dense layers run on real tokens only (`BertClassifier.call_unpadded`)."""

    def __init__(self, model):
        import tensorflow as tf

        spec = tf.TensorSpec((None, None), tf.int32)
        self.model = model
        self._call = tf.function(
            lambda x: tf.nn.softmax(
                tf.cast(model.call_unpadded(x), tf.float32)
            ),
            input_signature=[
                {k: spec for k in ("token_ids", "segment_ids", "padding_mask")}
            ],
        )

    def __call__(
        self,
        encoded,
        batch_size: int = 64,
        bucketing: bool = True,
        max_length: int | None = None,
    ) -> np.ndarray:
        """`[n, classes]` for packed examples, in order. With bucketing the
        examples run sorted by length, each batch padded to its longest;
        without it every batch is padded to `max_length`."""
        lengths = np.array([len(ids) for ids, _ in encoded])
        order = (
            np.argsort(lengths, kind="stable")
            if bucketing
            else np.arange(len(lengths))
        )
        probs = np.zeros((len(encoded), self.model.num_classes), np.float32)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = cls_data.pad_batch(
                encoded, index, None if bucketing else max_length
            )
            probs[index] = self._call(batch).numpy()
        return probs


def predict_proba(
    model, encoded, batch_size=64, bucketing=True, max_length=None
):
    """`Predictor(model)(...)`, for a single call."""
    return Predictor(model)(encoded, batch_size, bucketing, max_length)


def check_settings(config: dict, label: str) -> None:
    """The settings a fine-tuned directory's config.json must hold to
    encode texts as in training, typed and ranged as `FinetuneConfig`
    checks them: labels (names, one per class), pair, max_length and
    truncation."""
    from kerasbert.config import FinetuneConfig, check_field

    labels = config["labels"]
    if not labels or not all(isinstance(x, str) for x in labels):
        raise UsageError(f'{label}: "labels" is not a list of label names')
    if not isinstance(config.get("pair", False), bool):
        raise UsageError(f'{label}: "pair" is not true or false')
    for name in ("max_length", "truncation"):
        try:
            check_field(FinetuneConfig, name, config["finetune"].get(name))
        except UsageError as e:
            reason = str(e).split(": ", 1)[1]
            raise UsageError(
                f'{label}: "finetune"."{name}": {reason}'
            ) from None


def load_classifier(directory: str, checkpoint="model", flag="--model"):
    """(model, tokenizer, config dict) of a fine-tuned directory, checked:
    config.json with a "labels" list and the "finetune" settings that
    encode texts, a classifier (`checkpoint`: model, best or latest) whose
    ids fit the tokenizer. `flag` names the directory in errors."""
    from kerasbert.config import read_json_object
    from kerasbert.serving.modeldir import (
        backbone_of,
        check_tokenizer_fits,
        load_model,
        load_tokenizer,
    )

    label = f"{flag}: {directory}/config.json"
    config = read_json_object(os.path.join(directory, "config.json"), label)
    finetune = config.get("finetune")
    if not isinstance(config.get("labels"), list) or not isinstance(
        finetune, dict
    ):
        raise UsageError(
            f"{flag}: {directory}: not a fine-tuned classifier (config.json "
            'has no "labels" list or "finetune" settings)'
        )
    check_settings(config, label)
    tokenizer = load_tokenizer(directory)
    model = load_model(directory, checkpoint)
    if not hasattr(model, "num_classes"):
        raise UsageError(f"{flag}: {directory}: model.keras is no classifier")
    with flagged(flag):
        check_tokenizer_fits(model, tokenizer, directory)
    if len(config["labels"]) != model.num_classes:
        raise UsageError(
            f"{label}: {len(config['labels'])} labels, but the model has "
            f"{model.num_classes} classes"
        )
    limit = backbone_of(model).max_sequence_length
    if finetune["max_length"] > limit:
        raise UsageError(
            f'{label}: "finetune"."max_length" {finetune["max_length"]} is '
            f"above the model's max_sequence_length {limit}"
        )
    return model, tokenizer, config
