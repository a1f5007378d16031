"""Checkpoints in and out: Hugging Face and Google BERT <-> kerasbert.

`convert(src, dst)` looks at what `src` is:

    HF BERT folder      config.json (model_type bert) + model.safetensors
    Google BERT folder  bert_config.json + bert_model.ckpt.* + vocab.txt
    kerasbert folder    a run or model directory (config.json with "model")

and writes a kerasbert model directory from the first two, a Hugging Face
folder from the third. `dst` appears complete or not at all.
"""

import os

from kerasbert.errors import UsageError
from kerasbert.files import (
    Exists,
    atomic_dir,
    check_free_space,
    check_output,
    check_writable_dir,
    exists_error,
)

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def detect(src: str) -> str:
    """ "hf", "google" or "kerasbert" for folder `src`; else `UsageError`."""
    from kerasbert.config import read_json_object
    from kerasbert.interop.google import is_google_folder
    from kerasbert.interop.hf import is_hf_folder

    if not os.path.isdir(src):
        raise UsageError(f"{src}: no such folder")
    if is_google_folder(src):
        return "google"
    if is_hf_folder(src):
        return "hf"
    config = os.path.join(src, "config.json")
    if os.path.isfile(config) and isinstance(
        read_json_object(config, config).get("model"), dict
    ):
        return "kerasbert"
    if os.path.isfile(config):
        raise UsageError(
            f"{config}: neither a Hugging Face config (no "
            'model_type) nor a kerasbert one (no "model")'
        )
    raise UsageError(
        f"{src}: not a checkpoint folder (no config.json of Hugging Face "
        "or kerasbert, no bert_config.json of Google BERT)"
    )


def _note_dropped_head(src: str, model) -> None:
    """Says what a Hugging Face BertModel cannot hold: a classifier's head
    and its label names."""
    import sys

    from kerasbert.config import read_json_object

    path = os.path.join(src, "config.json")
    labels = read_json_object(path, path).get("labels") or []
    named = (
        f" and its labels ({', '.join(map(str, labels[:5]))}"
        + (", ...)" if len(labels) > 5 else ")")
        if labels
        else ""
    )
    verb = "are" if labels else "is"
    print(
        f"note: {src}: a {type(model).__name__}; its head{named} {verb} "
        "not in the Hugging Face folder, only its BertModel",
        file=sys.stderr,
    )


def convert(
    src: str,
    dst: str,
    precision: str = "float32",
    allow_pickle: bool = False,
    overwrite: bool = False,
) -> str:
    """Converts folder `src` into folder `dst`; returns what was written
    ("kerasbert BertPretrainer", "Hugging Face BertModel", ...).

    Args:
        precision: dtype policy of the written kerasbert model (weights
            are float32 in every case; ignored when writing HF).
        allow_pickle: read an HF `pytorch_model.bin` (unpickling can run
            code: only for files you trust).
        overwrite: replace an existing `dst`.
    """
    if precision not in PRECISIONS:
        raise UsageError(
            f"--precision: unknown value {precision!r} "
            f"(choose from {', '.join(PRECISIONS)})"
        )
    kind = detect(src)
    check_output(dst, "DST", {"SRC": src}, overwrite)
    check_writable_dir(dst, "DST")
    try:
        return _convert(src, dst, kind, precision, allow_pickle, overwrite)
    except Exists:  # another process wrote DST meanwhile
        raise exists_error(dst, "DST") from None


def _convert(src, dst, kind, precision, allow_pickle, overwrite) -> str:
    if kind == "kerasbert":
        from kerasbert.interop.hf import write_hf_folder
        from kerasbert.serving.modeldir import (
            check_tokenizer_fits,
            load_model,
            load_tokenizer,
        )

        tokenizer = load_tokenizer(src)
        model = load_model(src)
        # Such a folder would fail in transformers on the first extra id.
        check_tokenizer_fits(model, tokenizer, src)
        check_free_space(dst, 4 * model.count_params(), "DST")
        with atomic_dir(dst, replace=overwrite) as tmp:
            architecture = write_hf_folder(model, tokenizer, tmp)
        if architecture == "BertModel" and hasattr(model, "backbone"):
            _note_dropped_head(src, model)
        return f"Hugging Face {architecture}"

    from kerasbert.interop.checkpoint import write_model_dir

    if kind == "hf":
        from kerasbert.interop.hf import read_hf_folder

        ckpt = read_hf_folder(src, allow_pickle)
    else:
        from kerasbert.interop.google import read_google_folder

        ckpt = read_google_folder(src)
    from kerasbert.config import parameter_count

    check_free_space(dst, 4 * parameter_count(**ckpt.config.to_dict()), "DST")
    with atomic_dir(dst, replace=overwrite) as tmp:
        model = write_model_dir(ckpt, tmp, precision)
    return f"kerasbert {type(model).__name__}"
