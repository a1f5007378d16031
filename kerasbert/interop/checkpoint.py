"""A foreign BERT checkpoint in memory, and the kerasbert model built from it.

Readers (`hf.read_hf_folder`, `google.read_google_folder`) return a
`Checkpoint`: the architecture as a `ModelConfig`, a getter that returns
each weight by its Hugging Face name in HF layout, and the WordPiece
vocabulary with its normaliser settings. `write_model_dir` turns it into
the folder every kerasbert command reads (see `serving/modeldir.py`).
"""

import dataclasses
import os
import sys
from collections.abc import Callable

import numpy as np

from kerasbert.config import ModelConfig, check_model_size
from kerasbert.errors import UsageError
from kerasbert.files import write_json_atomic
from kerasbert.interop.names import MLM_PREFIX, NSP_PREFIX, weight_table

# HF `BertConfig` key -> ModelConfig field. Google's bert_config.json uses
# the same keys (without layer_norm_eps: it is 1e-12 there).
CONFIG_KEYS = {
    "vocab_size": "vocabulary_size",
    "hidden_size": "hidden_dim",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_dim",
    "max_position_embeddings": "max_sequence_length",
    "type_vocab_size": "num_segments",
    "hidden_dropout_prob": "hidden_dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "layer_norm_eps": "layer_norm_epsilon",
    "initializer_range": "initializer_range",
}
REQUIRED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)


@dataclasses.dataclass
class Checkpoint:
    label: str  # the source, for messages
    config: ModelConfig
    get: Callable  # HF name -> float array in HF layout, or None
    has_mlm: bool  # any cls.predictions.* tensor
    has_nsp: bool  # any cls.seq_relationship.* tensor
    tokens: list[str]  # the WordPiece vocabulary, by id
    lowercase: bool
    strip_accents: bool | None
    notes: list[str] = dataclasses.field(default_factory=list)


# HF `hidden_act` -> `ModelConfig.activation`: "gelu" is the exact erf
# form there; "gelu_new" and "gelu_pytorch_tanh" the tanh approximation.
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}


def model_config(values: dict, label: str, google: bool = False) -> ModelConfig:
    """A validated `ModelConfig` from an HF (or, `google`, a Google BERT)
    config dict."""
    missing = [k for k in REQUIRED if k not in values]
    if missing:
        raise UsageError(f"{label}: no {', '.join(missing)}")
    act = values.get("hidden_act", "gelu")
    # Google's TF1 modeling.py calls its tanh approximation "gelu".
    known = {"gelu": "gelu_tanh"} if google else HF_ACTIVATIONS
    if not isinstance(act, str) or act not in known:
        raise UsageError(
            f"{label}: hidden_act {act!r} is not supported "
            f"(choose from {', '.join(known)})"
        )
    position = values.get("position_embedding_type", "absolute")
    if not isinstance(position, str) or position != "absolute":
        raise UsageError(
            f"{label}: position_embedding_type {position!r} "
            "is not supported (only 'absolute')"
        )
    if values.get("is_decoder") or values.get("add_cross_attention"):
        raise UsageError(
            f"{label}: a decoder BERT (is_decoder / "
            "add_cross_attention) is not supported"
        )
    fields = {
        ours: values[theirs]
        for theirs, ours in CONFIG_KEYS.items()
        if theirs in values
    }
    fields.setdefault("initializer_range", 0.02)  # HF's and Google's default
    check_model_size(fields, label, copies=3)
    fields["activation"] = known[act]
    config = ModelConfig(**fields)
    try:
        return config.validate()
    except UsageError as e:
        raise UsageError(f"{label}: {e}") from None


def build_model(ckpt: Checkpoint, precision: str = "float32"):
    """A `BertPretrainer` (if the checkpoint has an MLM or NSP head) or a
    `BertBackbone`, under dtype policy `precision`, holding the checkpoint's
    weights. A missing tensor or a shape mismatch is a `UsageError`."""
    from kerasbert.modeling import BertBackbone, BertPretrainer

    backbone = BertBackbone(**ckpt.config.to_dict(), dtype=precision)
    heads = ckpt.has_mlm or ckpt.has_nsp
    model = BertPretrainer(backbone) if heads else backbone
    if heads and not (ckpt.has_mlm and ckpt.has_nsp):
        fresh = "masked-LM" if not ckpt.has_mlm else "next-sentence"
        ckpt.notes.append(
            f"no {fresh} head in the checkpoint: it starts from random weights"
        )
    parts = {}  # fused variables: their HF tensors, assigned together
    for row in weight_table(model):
        name = row.name
        if (name.startswith(MLM_PREFIX) and not ckpt.has_mlm) or (
            name.startswith(NSP_PREFIX) and not ckpt.has_nsp
        ):
            continue
        array = ckpt.get(name)
        if array is None:
            raise UsageError(f"{ckpt.label}: missing tensor {name}")
        array = np.asarray(array)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise UsageError(
                f"{ckpt.label}: tensor {name} holds NaN or infinite values"
            )
        if row.transposed:
            array = array.T
        expected = row.expected_shape()
        if array.shape != expected:
            want = expected[::-1] if row.transposed else expected
            raise UsageError(
                f"{ckpt.label}: tensor {name} has shape "
                f"{tuple(np.shape(ckpt.get(name)))}, expected {want}"
            )
        if row.part is None:
            row.variable.assign(array.astype("float32"))
            continue
        got = parts.setdefault(id(row.variable), {})
        got[row.part[0]] = array
        if len(got) == row.part[1]:
            whole = np.concatenate([got[i] for i in sorted(got)], axis=-1)
            row.variable.assign(whole.astype("float32"))
    return model


def write_model_dir(ckpt: Checkpoint, out: str, precision: str = "float32"):
    """Writes config.json, tokenizer/ and model.keras into folder `out`
    (the caller's temp folder of `files.atomic_dir`); returns the model."""
    from kerasbert.text.tokenizer import Tokenizer

    if len(ckpt.tokens) > ckpt.config.vocabulary_size:
        raise UsageError(
            f"{ckpt.label}: the vocabulary has {len(ckpt.tokens)} tokens, "
            f"the model only {ckpt.config.vocabulary_size} embeddings"
        )
    tok_dir = os.path.join(out, "tokenizer")
    os.makedirs(tok_dir)
    with open(os.path.join(tok_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(ckpt.tokens) + "\n")
    vocab = os.path.join(tok_dir, "vocab.txt")
    try:
        tokenizer = Tokenizer.load(
            vocab, lowercase=ckpt.lowercase, strip_accents=ckpt.strip_accents
        )
    except UsageError as e:  # the input's vocabulary, not our temp copy
        raise UsageError(str(e).replace(vocab, ckpt.label)) from None
    tokenizer.save(tok_dir)
    model = build_model(ckpt, precision)
    write_json_atomic(
        os.path.join(out, "config.json"), {"model": ckpt.config.to_dict()}
    )
    model.save(os.path.join(out, "model.keras"))
    for note in ckpt.notes:
        print(f"note: {note}", file=sys.stderr)
    return model
