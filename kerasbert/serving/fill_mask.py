"""Fill in `[MASK]` with a pretrained model, like HF's fill-mask pipeline.

For each `[MASK]` in the text it prints the `top_k` most likely tokens, their
probabilities and the text with the token filled in.
"""

from kerasbert.errors import UsageError


def encode_masked(tokenizer, text: str):
    """`[CLS] text [SEP]` ids and the positions of its `[MASK]` tokens."""
    ids = [tokenizer.cls_id, *tokenizer.encode(text), tokenizer.sep_id]
    positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_id]
    if not positions:
        raise UsageError("text: no [MASK] token in the text")
    return ids, positions


def fill_mask(model, tokenizer, text: str, top_k: int = 5) -> list[list[dict]]:
    """Returns, per `[MASK]` in `text`, the top-k {token, token_id, score,
    sequence} dicts (best first)."""
    import numpy as np

    if not hasattr(model, "mlm_head"):
        raise UsageError(
            "--model: this model has no masked-LM head (a "
            "backbone, e.g. converted from a BertModel); "
            "fill-mask needs a pretrainer"
        )
    ids, positions = encode_masked(tokenizer, text)
    limit = model.backbone.max_sequence_length
    if len(ids) > limit:
        raise UsageError(
            f"text: {len(ids)} tokens, more than the model's {limit}"
        )
    x = {
        "token_ids": np.array([ids], "int32"),
        "segment_ids": np.zeros((1, len(ids)), "int32"),
        "padding_mask": np.ones((1, len(ids)), "int32"),
        "mask_positions": np.array([positions], "int32"),
    }
    logits = np.asarray(model(x, training=False)["mlm_logits"], "float64")[0]
    logits -= logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    if not np.isfinite(probs).all():  # JSON has no NaN: never print one
        raise UsageError(
            "--model: the model's scores for this text are NaN or infinite"
        )
    results = []
    for slot, position in enumerate(positions):
        best = np.argsort(-probs[slot])[:top_k]
        candidates = []
        for token_id in best:
            filled = list(ids[1:-1])
            filled[position - 1] = int(token_id)
            candidates.append(
                {
                    "token": tokenizer.id_to_token(int(token_id)),
                    "token_id": int(token_id),
                    "score": float(probs[slot, token_id]),
                    "sequence": tokenizer.decode(filled),
                }
            )
        results.append(candidates)
    return results
