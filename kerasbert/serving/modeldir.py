"""A model directory: what every command that reads a trained model takes.

    config.json   {"model": ModelConfig fields, ...}; a run adds "data", "train"
    tokenizer/    the tokenizer (`Tokenizer.save` layout)
    model.keras   a BertPretrainer (MLM + NSP heads) or a BertBackbone (none)

A pretraining run directory is one (its model.keras is written at the end;
`checkpoints/latest.keras` and `best.keras` stand in before that), and so
is what `python -m kerasbert.convert` writes from a Hugging Face or Google
checkpoint. Fine-tuning, fill-mask, export and `fit --init-from` read it
through `load_model`, `load_tokenizer` and `read_model_config`.
"""

import dataclasses
import os
import zipfile

from kerasbert.config import ARCHITECTURE
from kerasbert.errors import UsageError
from kerasbert.files import READ_LIMIT, check_regular, parse_json

CHECKPOINTS = ("model", "best", "latest")


def model_path(directory: str, which: str = "model") -> str:
    """The .keras file of a model directory: `which` is "model" (the final
    model, else the latest checkpoint), "best" or "latest"."""
    if os.path.isfile(directory) and directory.endswith(".keras"):
        return directory
    if not os.path.isdir(directory):
        raise UsageError(f"{directory}: no such model directory")
    candidates = {
        "model": ["model.keras", "checkpoints/latest.keras"],
        "best": ["checkpoints/best.keras"],
        "latest": ["checkpoints/latest.keras"],
    }[which]
    for name in candidates:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise UsageError(
        f"{directory}: no {' or '.join(candidates)} (not a kerasbert model "
        "directory, or a run that has not finished a first epoch)"
    )


def load_keras_model(path: str):
    """`keras.saving.load_model(path, safe_mode=True)`; a damaged or foreign
    file is a `UsageError` naming it, not a traceback."""
    import keras

    import kerasbert.modeling  # noqa: F401  registers the classes

    check_regular(path, path)
    if not zipfile.is_zipfile(path):
        raise UsageError(
            f"{path}: not a .keras file (truncated or another format)"
        )
    check_declared(path)
    try:
        # compile=False: readers want weights; a saved optimizer is only
        # restored by resumes, which read backups, not this.
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise UsageError(f"{path}: cannot be loaded ({e})") from None
    check_finite(model, path)
    return model


def check_declared(path: str) -> None:
    """Checks what a .keras file declares before Keras builds anything
    from it: its config.json bounded and not nested too deep, each
    backbone's fields as `ModelConfig` validates them, sizes and classes
    within `SIZE_LIMITS` and memory."""
    from kerasbert.config import ModelConfig, check_field, check_model_size

    names = {f.name for f in dataclasses.fields(ModelConfig)}
    for item in _declared(path):
        if "num_classes" in item:
            check_model_size({"num_classes": item["num_classes"]}, path, 2)
        if not ("hidden_dim" in item and "vocabulary_size" in item):
            continue
        check_model_size(item, path, copies=2)
        for name in names & set(item):
            try:
                check_field(ModelConfig, name, item[name])
            except UsageError as e:
                raise UsageError(f"{path}: {e}") from None


def _declared(path: str) -> list[dict]:
    """Every object in a .keras file's config.json."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("config.json")
            if info.file_size > READ_LIMIT:
                raise UsageError(
                    f"{path}: its config.json is {info.file_size:,} bytes"
                )
            text = archive.read(info)
    except (KeyError, OSError, zipfile.BadZipFile):
        return []  # Keras' own loader says what is wrong
    # Keras writes NaN and Infinity as Python's json does; the field
    # checks below name the field that holds one.
    config = parse_json(text, path, constants=True)
    found, stack = [], [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def check_finite(model, label: str) -> None:
    """Refuses a model with a NaN or infinite weight, naming it: its
    outputs would be NaN (and fill-mask's JSON invalid)."""
    import keras
    import numpy as np

    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise UsageError(
                f"{label}: weight {variable.path} holds NaN or infinite values"
            )


def load_model(directory: str, which: str = "model"):
    """The Keras model of a model directory (see `model_path`)."""
    return load_keras_model(model_path(directory, which))


def load_tokenizer(directory: str):
    from kerasbert.text.tokenizer import Tokenizer

    path = os.path.join(directory, "tokenizer")
    if not os.path.isdir(path):
        raise UsageError(f"{directory}: has no tokenizer/ folder")
    return Tokenizer.load(path)


def check_tokenizer_fits(model, tokenizer, directory: str) -> None:
    """Refuses a tokenizer that yields ids the model has no embedding for
    (they would fail every call, or read past the table on a GPU)."""
    size = backbone_of(model).vocabulary_size
    if tokenizer.vocabulary_size > size:
        raise UsageError(
            f"{directory}: the tokenizer has {tokenizer.vocabulary_size} "
            f"token ids but the model only {size}"
        )


def backbone_of(model):
    """The BertBackbone inside a pretrainer or classifier, or `model`."""
    return getattr(model, "backbone", model)


def init_from(model, directory: str) -> list[str]:
    """Copies the weights of model directory `directory` (a run, or one
    written by `kerasbert.convert`) into `model`, a freshly built
    `BertPretrainer` or `BertBackbone`: the backbone always, each head the
    directory also has. Returns the parts copied ("backbone", "mlm_head",
    "nsp_head"); heads it lacks keep their fresh weights.

    Dropout rates and the dtype policy stay `model`'s. A different
    architecture is a `UsageError` naming the fields (build `model` from
    `read_model_config(directory)` to match).
    """
    source = load_model(directory)
    theirs, ours = backbone_of(source), backbone_of(model)
    diffs = [
        f"{name} {getattr(ours, name)} here, {getattr(theirs, name)} there"
        for name in ARCHITECTURE
        if getattr(ours, name) != getattr(theirs, name)
    ]
    if diffs:
        raise UsageError(
            f"--init-from: {directory}: another architecture than the "
            f"model being built ({'; '.join(diffs)})"
        )
    ours.set_weights(theirs.get_weights())
    copied = ["backbone"]
    for head in ("mlm_head", "nsp_head"):
        if hasattr(source, head) and hasattr(model, head):
            getattr(model, head).set_weights(
                getattr(source, head).get_weights()
            )
            copied.append(head)
    return copied


def read_model_config(directory: str):
    """The `ModelConfig` in a model directory's config.json."""
    from kerasbert.config import (
        ModelConfig,
        check_model_size,
        read_json_object,
    )

    path = os.path.join(directory, "config.json")
    values = read_json_object(path, path).get("model")
    if not isinstance(values, dict):
        raise UsageError(
            f'{path}: no "model" section (not a kerasbert model directory)'
        )
    check_model_size(values, path, copies=4)  # what training holds
    return ModelConfig.from_dict(values, source=path).validate()
