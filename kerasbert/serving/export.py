"""Export a pretrained model as a TF SavedModel; load a run's model.

The SavedModel has two signatures, both over int32 tensors:
    serving_default(token_ids, segment_ids, padding_mask, mask_positions)
        -> mlm_logits, nsp_logits, sequence_output, pooled_output
    encode(token_ids, segment_ids, padding_mask)
        -> nsp_logits, sequence_output, pooled_output
Load it with `tf.saved_model.load(DIR).signatures["serving_default"]` -- no
kerasbert or Keras needed on the serving side.
"""

from kerasbert.errors import UsageError
from kerasbert.files import atomic_dir

INPUTS = ("token_ids", "segment_ids", "padding_mask")


def _spec(name):
    import tensorflow as tf

    return tf.TensorSpec([None, None], tf.int32, name=name)


def float32_copy(model):
    """The same pretrainer or classifier computing in float32 (weights are
    shared values, not shared variables). Mixed precision speeds up
    training; serving on a CPU wants exact, reproducible float32 outputs."""
    from kerasbert.modeling import BertBackbone

    config = model.backbone.get_config()
    config["dtype"] = "float32"
    # Both take the backbone plus their own get_config() arguments.
    copy = type(model)(
        **{**model.get_config(), "backbone": BertBackbone.from_config(config)}
    )
    copy.set_weights(model.get_weights())
    return copy


def require_heads(model, source: str) -> None:
    """Refuses a model without MLM/NSP heads; `source` names where it
    comes from (the command's input, not the output)."""
    if not hasattr(model, "mlm_head"):
        raise UsageError(
            f"{source}: has no MLM/NSP heads (a converted BertModel?): "
            "export it with --format keras, convert it to Hugging Face or "
            "fine-tune it"
        )


def export_saved_model(pretrainer, path: str) -> str:
    """Writes a float32 SavedModel of `pretrainer` (a `BertPretrainer`).

    Writes to a temp folder first and renames it (`atomic_dir`), so `path`
    is either the old export or the complete new one.
    """
    import keras
    import tensorflow as tf

    require_heads(pretrainer, "the model")
    pretrainer = float32_copy(pretrainer)
    backbone = pretrainer.backbone

    def run(token_ids, segment_ids, padding_mask, mask_positions=None):
        # One pass through the backbone feeds both heads.
        enc = backbone(
            dict(
                token_ids=token_ids,
                segment_ids=segment_ids,
                padding_mask=padding_mask,
            ),
            training=False,
        )
        out = {
            "nsp_logits": pretrainer.nsp_head(enc["pooled_output"]),
            "sequence_output": enc["sequence_output"],
            "pooled_output": enc["pooled_output"],
        }
        if mask_positions is not None:
            out["mlm_logits"] = pretrainer.mlm_head(
                enc["sequence_output"], mask_positions
            )
        return {k: tf.cast(v, tf.float32) for k, v in out.items()}

    def serve(token_ids, segment_ids, padding_mask, mask_positions):
        return run(token_ids, segment_ids, padding_mask, mask_positions)

    def encode(token_ids, segment_ids, padding_mask):
        return run(token_ids, segment_ids, padding_mask)

    archive = keras.export.ExportArchive()
    archive.track(pretrainer)
    archive.add_endpoint(
        "serving_default",
        serve,
        input_signature=[_spec(n) for n in (*INPUTS, "mask_positions")],
    )
    archive.add_endpoint(
        "encode", encode, input_signature=[_spec(n) for n in INPUTS]
    )
    with atomic_dir(path) as tmp:
        archive.write_out(tmp, verbose=False)
    return path
