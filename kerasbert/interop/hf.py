"""Hugging Face BERT folders: read one into a `Checkpoint`, write one from a
kerasbert model.

A folder is `config.json` (`model_type: bert`), the weights
(`model.safetensors`, a sharded `model.safetensors.index.json`, or -- only
with `allow_pickle`, since unpickling can run code -- `pytorch_model.bin`)
and the tokenizer (`vocab.txt` and/or `tokenizer.json`, with
`tokenizer_config.json`). Every file is untrusted: JSON and text through
`files.read_json`/`read_lines`, a safetensors header checked against the
file before `safe_open` maps it, and only the tensors the architecture
needs are ever read (numpy: no torch at run time).
"""

import os

import numpy as np

from kerasbert.config import read_json_object
from kerasbert.errors import UsageError
from kerasbert.files import (
    READ_LIMIT,
    check_regular,
    inside_folder,
    parse_json,
    read_lines,
    write_json_atomic,
)
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
    if not os.path.lexists(config):
        return False
    return "model_type" in read_json_object(config, config)


# Bytes per element of each safetensors dtype.
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def _not_safetensors(path: str, why: str) -> UsageError:
    return UsageError(f"{path}: cannot be read as safetensors ({why})")


def _safetensors_names(path: str) -> list[str]:
    """The tensor names of safetensors file `path`, its header checked
    first: every tensor's shape times its dtype's size is its byte range,
    and that range lies inside the file (nothing of the data is read)."""
    check_regular(path, path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 2 <= length <= min(READ_LIMIT, size - 8):
            raise _not_safetensors(
                path, f"a header of {length} bytes in a file of {size}"
            )
        header = parse_json(f.read(length), path)
    if not isinstance(header, dict):
        raise _not_safetensors(path, "the header is no JSON object")
    data = size - 8 - length
    names = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if (
            dtype not in _DTYPE_BYTES
            or not isinstance(shape, list)
            or not all(type(n) is int and n >= 0 for n in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(n) is int for n in offsets)
        ):
            raise _not_safetensors(
                path, f"tensor {name} has no valid dtype, shape and offsets"
            )
        begin, end = offsets
        needed = int(np.prod(shape, dtype=object)) * _DTYPE_BYTES[dtype]
        if not 0 <= begin <= end <= data:
            raise _not_safetensors(
                path,
                f"tensor {name} (bytes {begin}..{end}) lies beyond the "
                f"file's {data} bytes of data",
            )
        if end - begin != needed:
            raise _not_safetensors(
                path,
                f"tensor {name} is {dtype} {shape}, {needed} bytes, but "
                f"its data_offsets give {end - begin} bytes",
            )
        names.append(name)
    return names


def _load_safetensors(path: str) -> dict:
    """{name: a function that reads that tensor}: `safe_open` maps the
    file, so a tensor that is never asked for is never read."""
    from safetensors import safe_open

    names = _safetensors_names(path)
    try:
        tensors = safe_open(path, framework="numpy")
    except Exception as e:  # SafetensorError
        raise _not_safetensors(path, str(e).splitlines()[0]) from None

    def reader(name):
        def read():
            try:
                return tensors.get_tensor(name)
            except Exception as e:  # a dtype numpy lacks (bfloat16), ...
                raise UsageError(
                    f"{path}: cannot read tensor {name} "
                    f"({str(e).splitlines()[0]})"
                ) from None

        return read

    return {name: reader(name) for name in names}


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
    check_regular(path, path)
    try:
        # weights_only: no classes but tensors and containers are built
        # (no implicit pickles); mmap: a tensor is read when converted.
        try:
            state = torch.load(
                path, map_location="cpu", weights_only=True, mmap=True
            )
        except RuntimeError as e:  # a legacy (not zip) file cannot mmap
            if "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError...
        raise UsageError(
            f"{path}: cannot be loaded ({str(e).splitlines()[0]})"
        ) from None
    if not isinstance(state, dict):
        raise UsageError(
            f"{path}: holds a {type(state).__name__}, not a dict of tensors"
        )
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise UsageError(
                f"{path}: {name!r} holds a {type(value).__name__}, not a tensor"
            )

    def reader(value):
        return lambda: (
            value.float().numpy()
            if value.is_floating_point()
            else value.numpy()
        )

    return {name: reader(value) for name, value in state.items()}


def _load_weights(path: str, allow_pickle: bool) -> dict:
    """{HF name: a function that reads that tensor} of folder `path`."""
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.lexists(single):
        return _load_safetensors(single)
    if os.path.lexists(index):
        weight_map = read_json_object(index, index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UsageError(f'{index}: "weight_map" is not a JSON object')
        shards = {
            inside_folder(path, shard, index) for shard in weight_map.values()
        }
        state = {}
        for shard in sorted(shards):
            state.update(_load_safetensors(shard))
        return state
    pickle = os.path.join(path, "pytorch_model.bin")
    if os.path.lexists(pickle):
        return _load_pickle(pickle, allow_pickle)
    raise UsageError(
        f"{path}: no model.safetensors (or pytorch_model.bin) in this folder"
    )


def _tokens_by_id(vocab: dict, label: str) -> list[str]:
    """The tokens of {token: id} in id order; the ids must be 0..n-1: a
    gap would shift every later token onto its neighbour's embedding."""
    if not all(type(i) is int for i in vocab.values()):
        raise UsageError(
            f'{label}: "model"."vocab" is not an object of token ids'
        )
    ids = sorted(vocab.values())
    wrong = next((n for n, i in enumerate(ids) if i != n), None)
    if wrong is None:
        return sorted(vocab, key=vocab.get)
    problem = (
        f"two tokens have id {ids[wrong]}"
        if wrong and ids[wrong] == ids[wrong - 1]
        else f"no token has id {wrong}"
    )
    raise UsageError(
        f'{label}: "model"."vocab": {problem} (the ids of its '
        f"{len(vocab)} tokens must be 0..{len(vocab) - 1}, each once)"
    )


def _bool_setting(settings: dict, name: str, label: str, optional=False):
    value = settings.get(name)
    if isinstance(value, bool) or (optional and value is None):
        return value
    raise UsageError(f"{label}: {name} {value!r} is not true or false")


def _read_tokenizer(path: str) -> tuple[list[str], bool, bool | None]:
    """(tokens by id, lowercase, strip_accents) as HF's BertTokenizer uses
    them: tokenizer_config.json's settings win over tokenizer.json's
    normaliser; transformers v5 saves only tokenizer.json (no vocab.txt)."""
    settings, tokens = {}, None
    tok_json = os.path.join(path, "tokenizer.json")
    if os.path.lexists(tok_json):
        spec = read_json_object(tok_json, tok_json)
        model = spec.get("model") or {}
        if not isinstance(model, dict):
            raise UsageError(f'{tok_json}: "model" is not a JSON object')
        if model.get("type") != "WordPiece":
            raise UsageError(
                f"{tok_json}: a {model.get('type')!r} tokenizer"
                ", not BERT's WordPiece"
            )
        vocab = model.get("vocab") or {}
        if not isinstance(vocab, dict):
            raise UsageError(
                f'{tok_json}: "model"."vocab" is not an object of token ids'
            )
        tokens = _tokens_by_id(vocab, tok_json)
        normalizer = spec.get("normalizer") or {}
        if not isinstance(normalizer, dict):
            raise UsageError(f'{tok_json}: "normalizer" is not a JSON object')
        if normalizer.get("type") == "BertNormalizer":
            label = f'{tok_json}: "normalizer"'
            settings = {
                "do_lower_case": _bool_setting(
                    {"lowercase": True, **normalizer}, "lowercase", label
                ),
                "strip_accents": _bool_setting(
                    normalizer, "strip_accents", label, optional=True
                ),
            }
    vocab_txt = os.path.join(path, "vocab.txt")
    if os.path.lexists(vocab_txt):
        tokens = read_lines(vocab_txt, vocab_txt)
    if not tokens:
        raise UsageError(
            f"{path}: no vocab.txt or WordPiece tokenizer.json in this folder"
        )
    config = os.path.join(path, "tokenizer_config.json")
    if os.path.lexists(config):
        saved = read_json_object(config, config)
        if "do_lower_case" in saved:
            settings["do_lower_case"] = _bool_setting(
                saved, "do_lower_case", config
            )
        if "strip_accents" in saved:
            settings["strip_accents"] = _bool_setting(
                saved, "strip_accents", config, optional=True
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
    # name -> a function that reads it: only the tensors the model needs
    # are ever read.
    state = {
        canonical_hf_name(k): v
        for k, v in _load_weights(path, allow_pickle).items()
    }
    # A saved decoder must be the tied copy kerasbert keeps only once.
    for copy, original in TIED.items():
        if (
            copy in state
            and original in state
            and not np.array_equal(state[copy](), state[original]())
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
        get=lambda name: state[name]() if name in state else None,
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
