"""How one text (or a text pair) becomes `[CLS] A [SEP] (B [SEP])`.

The one rule fine-tuning, prediction and the raw-text SavedModel share, so
the Python path and the TensorFlow graph give the same ids:

- a pair's token budget (`max_length` minus the 3 special tokens) is split
  longest-first: the shorter side keeps everything up to half the budget,
  the longer side gets the rest;
- a side longer than its share is cut by `truncation`: `head` keeps the
  first tokens, `tail` the last, `head+tail` the first quarter and the
  last three quarters (Sun et al. 2019 found head+tail best for long
  reviews: openings and conclusions carry the sentiment).
"""

TRUNCATIONS = ("head", "tail", "head+tail")


def pair_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Tokens kept from A and from B, longest-first within `budget`."""
    keep_b = min(len_b, max(budget - len_a, budget // 2))
    keep_a = min(len_a, budget - keep_b)
    return keep_a, keep_b


def truncate(ids: list[int], length: int, truncation: str) -> list[int]:
    """`ids` cut to `length` tokens the way `truncation` says."""
    if len(ids) <= length:
        return list(ids)
    if truncation == "head":
        return list(ids[:length])
    if truncation == "tail":
        return list(ids[len(ids) - length :])
    if truncation == "head+tail":
        head = length // 4
        return list(ids[:head]) + list(ids[len(ids) - (length - head) :])
    raise ValueError(
        f"truncation must be one of {TRUNCATIONS}, got {truncation!r}"
    )


def pack(
    ids_a,
    ids_b=None,
    *,
    max_length: int,
    truncation: str = "head",
    cls_id: int,
    sep_id: int,
) -> tuple[list[int], list[int]]:
    """`(token_ids, segment_ids)` of `[CLS] A [SEP] (B [SEP])`, at most
    `max_length` long (no padding: batching pads)."""
    if ids_b is None:
        a = truncate(ids_a, max_length - 2, truncation)
        return [cls_id, *a, sep_id], [0] * (len(a) + 2)
    keep_a, keep_b = pair_lengths(len(ids_a), len(ids_b), max_length - 3)
    a = truncate(ids_a, keep_a, truncation)
    b = truncate(ids_b, keep_b, truncation)
    return (
        [cls_id, *a, sep_id, *b, sep_id],
        [0] * (len(a) + 2) + [1] * (len(b) + 1),
    )
