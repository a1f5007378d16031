"""The one weight-name table: Hugging Face BERT names <-> kerasbert weights.

`weight_table(model)` lists, for every tensor of a Hugging Face
`BertForPreTraining` state dict, the kerasbert weight that holds it, whether
the array is transposed on the way (torch's `nn.Linear` keeps `[out, in]`,
Keras' `Dense` `[in, out]`) and which part of the weight it is: HF's
query, key and value are thirds (last axis) of one fused `qkv_kernel` /
`qkv_bias`. Reading and writing HF checkpoints both walk this table. Google's TF1 names are derived from the HF names
(`google_name`), the way HF's `load_tf_weights_in_bert` maps them.

Names not in the table, but found in real checkpoints:
    bert.embeddings.position_ids    a buffer (0..max-1), not a weight
    cls.predictions.decoder.weight  tied to the word embeddings
    cls.predictions.decoder.bias    tied to cls.predictions.bias
"""

import re
from typing import NamedTuple

import numpy as np

MLM_PREFIX = "cls.predictions."
NSP_PREFIX = "cls.seq_relationship."
TIED = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}
BUFFERS = ("bert.embeddings.position_ids",)


class Row(NamedTuple):
    name: str  # in HF's state dict
    variable: object  # the Keras variable holding it
    transposed: bool  # HF's array is the transpose of ours
    part: tuple[int, int] | None = None  # (i, n): i-th of n last-axis parts

    def expected_shape(self) -> tuple:
        """Our shape of this tensor (before transposing back to HF's)."""
        shape = tuple(self.variable.shape)
        if self.part:
            shape = (*shape[:-1], shape[-1] // self.part[1])
        return shape

    def read(self, array):
        """This tensor, in our layout, out of the whole variable `array`."""
        if self.part:
            i, n = self.part
            array = np.split(array, n, axis=-1)[i]
        return array


def weight_table(model) -> list[Row]:
    """A `Row` for every HF tensor of `model` (a BertBackbone, or a
    BertPretrainer with its heads)."""
    backbone = getattr(model, "backbone", model)
    rows = []

    def dense(name, layer):
        rows.append(Row(f"{name}.weight", layer.kernel, True))
        rows.append(Row(f"{name}.bias", layer.bias, False))

    def norm(name, layer):
        rows.append(Row(f"{name}.weight", layer.gamma, False))
        rows.append(Row(f"{name}.bias", layer.beta, False))

    emb = backbone.embedding
    rows.append(
        Row(
            "bert.embeddings.word_embeddings.weight",
            emb.token_embedding.embeddings,
            False,
        )
    )
    rows.append(
        Row(
            "bert.embeddings.position_embeddings.weight",
            emb.position_embeddings,
            False,
        )
    )
    rows.append(
        Row(
            "bert.embeddings.token_type_embeddings.weight",
            emb.segment_embeddings,
            False,
        )
    )
    norm("bert.embeddings.LayerNorm", emb.layer_norm)
    for i, block in enumerate(backbone.blocks):
        p = f"bert.encoder.layer.{i}"
        for j, part in enumerate(("query", "key", "value")):
            name = f"{p}.attention.self.{part}"
            rows.append(Row(f"{name}.weight", block.qkv_kernel, True, (j, 3)))
            rows.append(Row(f"{name}.bias", block.qkv_bias, False, (j, 3)))
        dense(f"{p}.attention.output.dense", block.attention_output)
        norm(f"{p}.attention.output.LayerNorm", block.attention_layer_norm)
        dense(f"{p}.intermediate.dense", block.intermediate)
        dense(f"{p}.output.dense", block.output_dense)
        norm(f"{p}.output.LayerNorm", block.output_layer_norm)
    dense("bert.pooler.dense", backbone.pooler.dense)
    if hasattr(model, "mlm_head"):
        dense(f"{MLM_PREFIX}transform.dense", model.mlm_head.dense)
        norm(f"{MLM_PREFIX}transform.LayerNorm", model.mlm_head.layer_norm)
        # The decoder kernel is the word-embedding table (tied).
        rows.append(Row(f"{MLM_PREFIX}bias", model.mlm_head.output_bias, False))
        dense(NSP_PREFIX.rstrip("."), model.nsp_head.dense)
    return rows


def canonical_hf_name(name: str) -> str:
    """A state-dict key as `weight_table` spells it: a bare `BertModel`'s
    keys gain the `bert.` prefix, old `LayerNorm.gamma/beta` become
    `weight/bias`."""
    if name.startswith(("embeddings.", "encoder.", "pooler.")):
        name = "bert." + name
    return re.sub(
        r"LayerNorm\.gamma$",
        "LayerNorm.weight",
        re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name),
    )


def google_name(hf_name: str) -> tuple[str, bool]:
    """(TF1 variable name in Google's `modeling.py`, transposed relative to
    the HF array) for an HF name from `weight_table`.

    Google's dense kernels are `[in, out]` (so transposed against torch);
    its NSP `output_weights` are `[2, hidden]` like torch's.
    """
    if hf_name == f"{MLM_PREFIX}bias":
        return "cls/predictions/output_bias", False
    if hf_name.startswith(NSP_PREFIX):
        part = "weights" if hf_name.endswith(".weight") else "bias"
        return f"cls/seq_relationship/output_{part}", False
    name = re.sub(r"\.layer\.(\d+)\.", r".layer_\1.", hf_name)
    stem, _, leaf = name.rpartition(".")
    stem = stem.replace(".", "/")
    if stem.endswith("LayerNorm"):
        return f"{stem}/{'gamma' if leaf == 'weight' else 'beta'}", False
    if stem.startswith("bert/embeddings/"):  # a table, not a kernel
        return stem, False
    return (
        f"{stem}/{'kernel' if leaf == 'weight' else 'bias'}",
        leaf == "weight",
    )
