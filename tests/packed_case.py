"""One packed row against the same texts one per row (backend-neutral).

Imported by test_packed.py (TensorFlow) and, in a subprocess, by
test_backends.py (JAX): numpy in, numpy out, `keras.ops` only.
"""

import numpy as np

CLS, SEP, SEQ = 2, 3, 16
# Three texts of 3, 5 and 1 tokens (ids >= 5: not special): 5 + 7 + 3 = 15
# positions of the row, one left as padding.
TEXTS = ([7, 8, 9], [10, 11, 12, 13, 14], [15])
# Predicted positions inside each text's own row ([CLS] at 0).
PREDICT = ([1, 3], [2], [1])


def _model(attention_dropout, dtype):
    import keras

    from kerasbert.modeling import build_pretrainer

    keras.utils.set_random_seed(0)
    return build_pretrainer(
        nsp=False,
        vocabulary_size=31,
        hidden_dim=8,
        num_layers=2,
        num_heads=2,
        intermediate_dim=12,
        max_sequence_length=SEQ,
        hidden_dropout=0.0,
        attention_dropout=attention_dropout,
        dtype=dtype,
    )


def batches(texts=TEXTS):
    """(packed x, y) with one row, (rows x, y) with one text per row."""
    n, p = len(texts), max(map(len, PREDICT))
    rows = {k: np.zeros((n, SEQ), "int32") for k in ("token_ids", "mask")}
    positions = np.zeros((n, p), "int32")
    weights = np.zeros((n, p), "float32")
    packed = {k: np.zeros((1, SEQ), "int32") for k in ("token_ids", "mask")}
    packed_positions, offset = [], 0
    for i, (text, predict) in enumerate(zip(texts, PREDICT)):
        ids = [CLS, *text, SEP]
        rows["token_ids"][i, : len(ids)] = ids
        rows["mask"][i, : len(ids)] = 1
        positions[i, : len(predict)] = predict
        weights[i, : len(predict)] = 1
        packed["token_ids"][0, offset : offset + len(ids)] = ids
        packed["mask"][0, offset : offset + len(ids)] = i + 1
        packed_positions += [offset + q for q in predict]
        offset += len(ids)

    def x_y(part, mask_positions, mask_weights):
        ids = part["token_ids"]
        mask_ids = np.take_along_axis(ids, mask_positions, axis=1)
        x = {
            "token_ids": ids,
            "segment_ids": np.zeros_like(ids),
            "padding_mask": part["mask"],
            "mask_positions": mask_positions,
        }
        y = {
            "mask_ids": np.where(mask_weights > 0, mask_ids, 0),
            "mask_weights": mask_weights,
            "next_sentence_label": np.zeros(len(ids), "int32"),
        }
        return x, y

    one = np.array([packed_positions], "int32")
    return (
        x_y(packed, one, np.ones(one.shape, "float32")),
        x_y(rows, positions, weights),
    )


def compare(attention_dropout=0.0, dtype="float32"):
    """Largest differences between the packed row and one text per row:
    MLM logits, MLM loss, sequence output at real tokens; and `leak`: how
    much text 1's logits move when texts 2 and 3 change."""
    from keras import ops

    from kerasbert.modeling import pretraining_losses

    model = _model(attention_dropout, dtype)
    (px, py), (rx, ry) = batches()
    p_out = model(px, training=False)
    r_out = model(rx, training=False)
    p_logits = np.asarray(ops.convert_to_numpy(p_out["mlm_logits"]))[0]
    r_logits = np.asarray(ops.convert_to_numpy(r_out["mlm_logits"]))
    r_logits = np.concatenate(
        [r_logits[i, : len(q)] for i, q in enumerate(PREDICT)]
    )
    losses = [
        float(ops.convert_to_numpy(pretraining_losses(y, out, nsp=False)[k]))
        for y, out in ((py, p_out), (ry, r_out))
        for k in ("mlm_loss",)
    ]
    backbone = model.backbone
    keys = ("token_ids", "segment_ids", "padding_mask")
    p_seq = ops.convert_to_numpy(
        backbone({k: px[k] for k in keys}, training=False)["sequence_output"]
    )[0]
    r_seq = ops.convert_to_numpy(
        backbone({k: rx[k] for k in keys}, training=False)["sequence_output"]
    )
    r_seq = np.concatenate(
        [r_seq[i, : len(t) + 2] for i, t in enumerate(TEXTS)]
    )
    p_seq = p_seq[px["padding_mask"][0] > 0]
    # Other tokens in texts 2 and 3: text 1 must not notice.
    (ox, _), _ = batches((TEXTS[0], [20, 21, 22, 23, 24], [25]))
    o_logits = np.asarray(
        ops.convert_to_numpy(model(ox, training=False)["mlm_logits"])
    )[0]
    first = len(PREDICT[0])
    return {
        "logits": float(np.abs(p_logits - r_logits).max()),
        "scale": float(np.abs(r_logits).max()),
        "loss": abs(losses[0] - losses[1]),
        "sequence": float(
            np.abs(p_seq.astype("float32") - r_seq.astype("float32")).max()
        ),
        "leak": float(np.abs(p_logits[:first] - o_logits[:first]).max()),
        "moved": float(np.abs(p_logits[first:] - o_logits[first:]).max()),
    }
