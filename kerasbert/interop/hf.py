"""Hugging Face BERT folders: read one into a `Checkpoint`, write one from a
kerasbert model.

A folder is `config.json` (`model_type: bert`), the weights
(`model.safetensors`, a sharded `model.safetensors.index.json`, or -- only
with `allow_pickle`, since unpickling can run code -- `pytorch_model.bin`)
and the tokenizer (`vocab.txt` and/or `tokenizer.json`, with
`tokenizer_config.json`). Safetensors are read with `safetensors.numpy`:
no torch at run time.
"""

import json
import os

import numpy as np

from kerasbert.config import read_json_object
from kerasbert.errors import UsageError
from kerasbert.files import write_json_atomic
from kerasbert.interop.checkpoint import Checkpoint, model_config
from kerasbert.interop.names import (
    BUFFERS,
    MLM_PREFIX,
    NSP_PREFIX,
    TIED,
    canonical_hf_name,
    weight_table,
)


def is_hf_folder(path: str) -> bool:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            return "model_type" in json.load(f)
    except (OSError, ValueError):
        return False


def _load_safetensors(path: str) -> dict:
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as e:  # SafetensorError, or a dtype numpy lacks
        raise UsageError(
            f"{path}: cannot be read as safetensors ({str(e).splitlines()[0]})"
        ) from None


def _load_pickle(path: str, allow_pickle: bool) -> dict:
    if not allow_pickle:
        raise UsageError(
            f"{path}: a pickle, and unpickling can run code; pass "
            "--allow-pickle if you trust it (or use model.safetensors)"
        )
    try:
        import torch
    except ImportError:
        raise UsageError(
            f"--allow-pickle: reading {path} needs PyTorch (pip install torch)"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError...
        raise UsageError(
            f"{path}: cannot be loaded ({str(e).splitlines()[0]})"
        ) from None
    return {
        k: v.float().numpy() if v.is_floating_point() else v.numpy()
        for k, v in state.items()
    }


def _load_weights(path: str, allow_pickle: bool) -> dict:
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return _load_safetensors(single)
    if os.path.isfile(index):
        weight_map = read_json_object(index, index).get("weight_map") or {}
        state = {}
        for shard in sorted(set(weight_map.values())):
            state.update(_load_safetensors(os.path.join(path, shard)))
        return state
    pickle = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(pickle):
        return _load_pickle(pickle, allow_pickle)
    raise UsageError(
        f"{path}: no model.safetensors (or pytorch_model.bin) in this folder"
    )


def _read_tokenizer(path: str) -> tuple[list[str], bool, bool | None]:
    """(tokens by id, lowercase, strip_accents) as HF's BertTokenizer uses
    them: tokenizer_config.json's settings win over tokenizer.json's
    normaliser; transformers v5 saves only tokenizer.json (no vocab.txt)."""
    settings, tokens = {}, None
    tok_json = os.path.join(path, "tokenizer.json")
    if os.path.isfile(tok_json):
        spec = read_json_object(tok_json, tok_json)
        model = spec.get("model") or {}
        if not isinstance(model, dict):
            raise UsageError(f'{tok_json}: "model" is not a JSON object')
        if model.get("type") != "WordPiece":
            raise UsageError(
                f"{tok_json}: a {model.get('type')} tokenizer"
                ", not BERT's WordPiece"
            )
        vocab = model.get("vocab") or {}
        if not isinstance(vocab, dict) or not all(
            type(i) is int for i in vocab.values()
        ):
            raise UsageError(
                f'{tok_json}: "model"."vocab" is not an object of token ids'
            )
        tokens = sorted(vocab, key=vocab.get)
        normalizer = spec.get("normalizer") or {}
        if normalizer.get("type") == "BertNormalizer":
            settings = {
                "do_lower_case": normalizer.get("lowercase", True),
                "strip_accents": normalizer.get("strip_accents"),
            }
    vocab_txt = os.path.join(path, "vocab.txt")
    if os.path.isfile(vocab_txt):
        with open(vocab_txt, encoding="utf-8") as f:
            tokens = [line.rstrip("\r\n") for line in f]
        while tokens and not tokens[-1]:
            tokens.pop()
    if not tokens:
        raise UsageError(
            f"{path}: no vocab.txt or WordPiece tokenizer.json in this folder"
        )
    config = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(config):
        saved = read_json_object(config, config)
        settings.update(
            {
                k: saved[k]
                for k in ("do_lower_case", "strip_accents")
                if k in saved
            }
        )
    return (
        tokens,
        settings.get("do_lower_case", True),
        settings.get("strip_accents"),
    )


def read_hf_folder(path: str, allow_pickle: bool = False) -> Checkpoint:
    """An HF BERT folder (`BertModel`, `BertForPreTraining`,
    `BertForMaskedLM`, ...) as a `Checkpoint`."""
    label = os.path.join(path, "config.json")
    values = read_json_object(label, label)
    kind = values.get("model_type")
    if kind != "bert":
        raise UsageError(
            f"{label}: model_type {kind!r} is not supported (only 'bert')"
        )
    config = model_config(values, label)
    tokens, lowercase, strip_accents = _read_tokenizer(path)
    state = {
        canonical_hf_name(k): v
        for k, v in _load_weights(path, allow_pickle).items()
    }
    # A saved decoder must be the tied copy kerasbert keeps only once.
    for copy, original in TIED.items():
        if (
            copy in state
            and original in state
            and not np.array_equal(state[copy], state[original])
        ):
            raise UsageError(
                f"{path}: {copy} differs from {original} "
                "(an untied decoder is not supported)"
            )
        if copy in state:
            state.setdefault(original, state.pop(copy))
    ckpt = Checkpoint(
        label=path,
        config=config,
        get=state.get,
        has_mlm=any(k.startswith(MLM_PREFIX) for k in state),
        has_nsp=any(k.startswith(NSP_PREFIX) for k in state),
        tokens=tokens,
        lowercase=lowercase,
        strip_accents=strip_accents,
    )
    known = {"bert.", MLM_PREFIX, NSP_PREFIX}
    ignored = sorted(
        k for k in state if k not in BUFFERS and not k.startswith(tuple(known))
    )
    if ignored:
        ckpt.notes.append(
            f"ignored {len(ignored)} tensor(s) that are not "
            f"BERT's: {', '.join(ignored[:5])}"
            + (" ..." if len(ignored) > 5 else "")
        )
    return ckpt


def hf_config(backbone, architecture: str, pad_id: int) -> dict:
    """The `BertConfig` (config.json) of a kerasbert backbone."""
    return {
        "architectures": [architecture],
        "model_type": "bert",
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_heads,
        "intermediate_size": backbone.intermediate_dim,
        # transformers' names: "gelu" is exact, "gelu_new" the tanh form.
        "hidden_act": {"gelu": "gelu", "gelu_tanh": "gelu_new"}[
            backbone.activation
        ],
        "hidden_dropout_prob": backbone.hidden_dropout,
        "attention_probs_dropout_prob": backbone.attention_dropout,
        "max_position_embeddings": backbone.max_sequence_length,
        "type_vocab_size": backbone.num_segments,
        "initializer_range": backbone.initializer_range,
        "layer_norm_eps": backbone.layer_norm_epsilon,
        "pad_token_id": pad_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "dtype": "float32",
    }


def write_hf_folder(model, tokenizer, out: str) -> str:
    """Writes an HF folder for `model` into folder `out`; returns the
    architecture. A pretrainer becomes `BertForPreTraining`; anything else
    (a backbone, a classifier: `convert` says its head is dropped) its
    `BertModel`. The decoder is tied, so
    only the word embeddings and `cls.predictions.bias` are stored, as
    transformers' own `save_pretrained` does."""
    import keras
    from safetensors.numpy import save_file

    from kerasbert.serving.modeldir import backbone_of

    if tokenizer.kind != "wordpiece":
        raise UsageError(
            "a SentencePiece tokenizer has no Hugging Face "
            "BertTokenizer equivalent; only WordPiece models "
            "can be exported"
        )
    backbone = backbone_of(model)
    heads = hasattr(model, "mlm_head")
    architecture = "BertForPreTraining" if heads else "BertModel"
    tensors = {}
    for row in weight_table(model if heads else backbone):
        array = keras.ops.convert_to_numpy(row.variable).astype("float32")
        array = row.read(array)
        name = row.name
        if not heads:  # BertModel's own keys have no "bert." prefix
            name = name.removeprefix("bert.")
        tensors[name] = np.ascontiguousarray(
            array.T if row.transposed else array
        )
    save_file(
        tensors,
        os.path.join(out, "model.safetensors"),
        metadata={"format": "pt"},
    )
    write_json_atomic(
        os.path.join(out, "config.json"),
        hf_config(backbone, architecture, tokenizer.pad_id),
    )
    tokenizer.save(out)
    # Tokenizer.save assumes 512 positions; the model may have fewer.
    path = os.path.join(out, "tokenizer_config.json")
    settings = read_json_object(path, path)
    settings["model_max_length"] = backbone.max_sequence_length
    write_json_atomic(path, settings)
    return architecture
