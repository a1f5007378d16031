"""Next-sentence-prediction pairs, Google BERT style, as integer ranges.

`create_pairs` follows `create_instances_from_document` of
google-research/bert (create_pretraining_data.py). The one speed idea: the
sentences of a `TokenCorpus` lie end to end in `corpus.tokens`, so segment A
(whole consecutive sentences), segment B (the sentences after A, or a run of
sentences from another document) and both after truncation are contiguous
token ranges. A pair is therefore five integers

    (a_start, a_len, b_start, b_len, label)     label 0: B follows A,
                                                 label 1: B is random

and no token list is ever built in Python. `assemble` turns a block of pairs
into `[CLS] A [SEP] B [SEP] [PAD]...` rows with one numpy gather.

Differences from Google's script, each deliberate:
- the short target length is drawn per chunk rather than once per document,
  so the 10% share holds on small corpora of a few long documents too;
- a chunk never has a single sentence: it takes the next one too, and a
  lone last sentence is dropped, where Google forces a random B (see below:
  it keeps the random share at `nsp_probability`);
- the random document is drawn among the *other* documents (Google retries
  10 times and can, rarely, pick the same one);
- truncation draws how many tokens leave the front of each side from a
  binomial instead of flipping a coin per token: the same distribution,
  vectorised over all pairs.
"""

from bisect import bisect_left

import numpy as np

from kerasbert.errors import UsageError

MIN_DOCUMENTS_TO_HOLD_OUT = 4


def split_train_heldout(num_documents: int, holdout_fraction: float, seed: int):
    """Splits document ids into shuffled train and held-out id arrays.

    Held-out data is split by whole documents: a held-out sentence whose
    neighbours were trained on would make the NSP accuracy look too good.
    Both sides get at least 2 documents, since NSP draws its random B from
    another document; so a hold-out needs a corpus of 4 or more.
    """
    if not 0 <= holdout_fraction < 1:
        raise UsageError("--holdout-fraction: must be in [0, 1)")
    ids = np.random.default_rng([seed, 0x5EED]).permutation(num_documents)
    if holdout_fraction == 0:
        return np.sort(ids), np.zeros(0, dtype=ids.dtype)
    if num_documents < MIN_DOCUMENTS_TO_HOLD_OUT:
        raise UsageError(
            f"--holdout-fraction: the corpus has {num_documents} document(s); "
            f"holding some out needs at least {MIN_DOCUMENTS_TO_HOLD_OUT} "
            "(2 to train on, 2 to evaluate), or --holdout-fraction 0"
        )
    num_heldout = max(2, round(num_documents * holdout_fraction))
    num_heldout = min(num_heldout, num_documents - 2)
    return np.sort(ids[num_heldout:]), np.sort(ids[:num_heldout])


def usable_documents(corpus, document_ids):
    """Document ids (sorted, unique) that hold at least one token."""
    do = np.asarray(corpus.document_offsets)
    so = np.asarray(corpus.sentence_offsets)
    if document_ids is None:
        ids = np.arange(len(do) - 1)
    else:
        ids = np.unique(np.asarray(document_ids, dtype=np.int64))
        if len(ids) and (ids[0] < 0 or ids[-1] >= len(do) - 1):
            raise UsageError(
                f"document_ids: ids must be in [0, {len(do) - 1}), got "
                f"{ids[0]}..{ids[-1]}"
            )
    num_tokens = so[do[ids + 1]] - so[do[ids]]
    return ids[num_tokens > 0]


def create_pairs(
    corpus,
    *,
    max_num_tokens: int,
    short_seq_prob: float,
    nsp_probability: float,
    rng: np.random.Generator,
    document_ids=None,
) -> np.ndarray:
    """Pairs for one pass over the documents, in visiting order.

    Args:
        corpus: a `TokenCorpus` (tokens, sentence_offsets, document_offsets).
        max_num_tokens: room for A and B: the sequence length minus 3 for
            `[CLS]`, `[SEP]`, `[SEP]`.
        short_seq_prob: chance that a chunk aims at a random shorter length.
        nsp_probability: chance that B comes from another document.
        rng: the only source of randomness; same state, same pairs.
        document_ids: documents to visit and to draw random B from
            (default: all). Held-out documents must not leak into training.

    Returns:
        int64 array [num_pairs, 5]: a_start, a_len, b_start, b_len, label.
    """
    if max_num_tokens < 2:
        raise UsageError("--sequence-length: must leave room for A and B")
    for flag, p in (
        ("--short-seq-prob", short_seq_prob),
        ("--nsp-probability", nsp_probability),
    ):
        if not 0 <= p <= 1:
            raise UsageError(f"{flag}: must be in [0, 1], got {p}")
    pool = usable_documents(corpus, document_ids)
    # A random B needs a document other than A's.
    if len(pool) < 2:
        raise UsageError(
            f"corpus: next-sentence pairs need at least 2 non-empty "
            f"documents, got {len(pool)}"
        )
    so = np.asarray(corpus.sentence_offsets, dtype=np.int64)
    do = np.asarray(corpus.document_offsets, dtype=np.int64)
    # Flat lists of ints, cheaper than tuples: (a_start, a_len, b_start,
    # b_len) of true pairs and (a_start, a_len, room for B, pool index of
    # A's document) of random ones, whose B is found after the loop.
    follow, random_next = [], []
    # Documents in a new random order every epoch, so that the pairs of a
    # document change from epoch to epoch.
    for p in rng.permutation(len(pool)).tolist():
        doc = int(pool[p])
        first, last = int(do[doc]), int(do[doc + 1])
        off = so[first : last + 1].tolist()  # this document's sentence offsets
        n = last - first
        # Three uniforms per chunk (target, split, next), and a chunk moves
        # on by at least one sentence: drawing them per document beats a
        # Generator call each.
        u = rng.random(3 * n).tolist()
        k = -3
        i = 0
        while i < n:
            k += 3
            # We usually fill the whole sequence, since it is padded to the
            # maximum anyway and short sequences waste computation. Sometimes
            # (short_seq_prob) we aim shorter, to lessen the mismatch with
            # fine-tuning, where inputs are often short. The target is a rough
            # goal; max_num_tokens is the hard limit.
            target = max_num_tokens
            if u[k] < short_seq_prob:
                # u / p is again uniform in [0, 1): draw the target from it.
                target = 2 + int(u[k] / short_seq_prob * (max_num_tokens - 1))
            # Whole sentences go into the chunk until it reaches the target or
            # the document ends: A and B should be real sentences, not cut at
            # an arbitrary token, so that NSP is about sentence relations.
            j = min(bisect_left(off, off[i] + target, i + 1) - 1, n - 1)
            # A one-sentence chunk has no true B. Google makes it a random
            # pair regardless of nsp_probability, which pushes the random
            # share to 54% for 50% on the bundled corpus (a short target is
            # reached by one sentence) and makes nsp_probability=0 still
            # yield random pairs. We take the next sentence too when there
            # is one (truncation still enforces the length), and drop a lone
            # last sentence or a one-sentence document: labels are then
            # exactly Bernoulli(nsp_probability).
            if j == i:
                if i + 1 == n:
                    break
                j = i + 1
            size = j - i + 1
            # A gets a random number of the chunk's leading sentences.
            a_end = 1 + int(u[k + 1] * (size - 1))
            a_start = off[i]
            a_len = off[i + a_end] - a_start
            if u[k + 2] < nsp_probability:
                # Random next (with nsp_probability): B from another
                # document, so the model must tell a continuation from an
                # unrelated sentence.
                random_next += (a_start, a_len, target - a_len, p)
                # The chunk's sentences after A were not used: put them back
                # so that the next chunk starts there and no text is wasted.
                i += a_end
            else:
                b_start = off[i + a_end]
                follow += (a_start, a_len, b_start, off[j + 1] - b_start)
                i = j + 1
    follow = np.array(follow, dtype=np.int64).reshape(-1, 4)
    random_next = np.array(random_next, dtype=np.int64).reshape(-1, 4)
    # B of a random pair: a random sentence of a random *other* document
    # (draw among the other len(pool) - 1, skip over A's own), then whole
    # sentences until the room A left is filled or that document ends.
    q = rng.integers(0, len(pool) - 1, size=len(random_next))
    doc_b = pool[q + (q >= random_next[:, 3])]
    b_first, b_last = do[doc_b], do[doc_b + 1]
    s = b_first + (rng.random(len(q)) * (b_last - b_first)).astype(np.int64)
    s = np.minimum(s, b_last - 1)
    b_start = so[s]
    # First sentence boundary at or past the room, at least one sentence in,
    # at most the document's end: the offsets are sorted, so one global
    # searchsorted and a clip give it.
    end = np.searchsorted(so, b_start + random_next[:, 2], side="left")
    end = np.clip(end, s + 1, b_last)
    pairs = np.concatenate(
        [
            np.column_stack([follow, np.zeros(len(follow), np.int64)]),
            np.column_stack(
                [
                    random_next[:, :2],
                    b_start,
                    so[end] - b_start,
                    np.ones(len(q), np.int64),
                ]
            ),
        ]
    )
    # Empty sentences could leave a side empty; such a pair teaches nothing.
    pairs = pairs[(pairs[:, 1] > 0) & (pairs[:, 3] > 0)]
    return truncate_pairs(pairs, max_num_tokens, rng)


def truncate_pairs(
    pairs: np.ndarray, max_num_tokens: int, rng: np.random.Generator
) -> np.ndarray:
    """Google's `truncate_seq_pair` on all pairs at once.

    Google removes one token at a time from the longer side (B on a tie),
    from the front or the back at random, until A + B fits. Always cutting
    the longer side keeps both sides informative; cutting at both ends adds
    noise so the model does not learn that sequences end at sentence ends
    (which they often would after truncation from the back only).

    The sequence of sides is fixed by the lengths, so the final lengths have
    a closed form; the front cuts of a side that loses k tokens are a
    Binomial(k, 1/2), exactly as with k coin flips.
    """
    pairs = pairs.copy()
    a_len, b_len = pairs[:, 1], pairs[:, 3]
    excess = np.maximum(a_len + b_len - max_num_tokens, 0)
    gap = np.abs(a_len - b_len)
    # The longer side first loses the gap (or all of the excess); the rest is
    # cut alternately, B first because a tie goes to B.
    first = np.minimum(excess, gap)
    rest = excess - first
    cut_a = np.where(a_len > b_len, first, 0) + rest // 2
    cut_b = np.where(a_len > b_len, 0, first) + rest - rest // 2
    front_a = rng.binomial(cut_a, 0.5)
    front_b = rng.binomial(cut_b, 0.5)
    pairs[:, 0] += front_a
    pairs[:, 1] -= cut_a
    pairs[:, 2] += front_b
    pairs[:, 3] -= cut_b
    return pairs


def assemble(
    tokens,
    pairs: np.ndarray,
    sequence_length: int,
    *,
    cls_id: int,
    sep_id: int,
    pad_id: int,
):
    """Rows `[CLS] A [SEP] B [SEP] [PAD]...` for a block of pairs.

    Returns int32 arrays token_ids, segment_ids, padding_mask of shape
    [len(pairs), sequence_length] and next_sentence_label [len(pairs)].
    Segment 0 covers `[CLS] A [SEP]`, segment 1 `B [SEP]`, padding is 0.
    """
    a_start, a_len, b_start, b_len, label = (
        pairs[:, i : i + 1] for i in range(5)
    )
    j = np.arange(sequence_length, dtype=np.int64)[None, :]
    sep_a = a_len + 1  # position of the first [SEP]
    end = sep_a + b_len + 1  # position of the second [SEP]
    # Source index of every position; those that are not A or B point
    # somewhere harmless (clipped into the array) and are overwritten.
    src = np.where(j <= a_len, a_start - 1, b_start - sep_a - 1) + j
    np.clip(src, 0, len(tokens) - 1, out=src)
    ids = np.asarray(tokens)[src].astype(np.int32, copy=False)
    padding = j <= end
    ids = np.where(padding, ids, np.int32(pad_id))
    ids[(j == sep_a) | (j == end)] = sep_id  # broadcast: both [N, S]
    ids[:, 0] = cls_id
    segments = (j > sep_a) & padding
    return (
        ids,
        segments.astype(np.int32),
        padding.astype(np.int32),
        label[:, 0].astype(np.int32),
    )


def epoch_pairs(
    corpus,
    *,
    sequence_length: int = 128,
    short_seq_prob: float = 0.1,
    nsp_probability: float = 0.5,
    seed: int = 0,
    document_ids=None,
    epoch: int = 0,
) -> np.ndarray:
    """The shuffled pairs [num_pairs, 5] of one epoch; see `pairing`.

    Pairs of one document come out together; shuffling them (as Google's
    script does) keeps a batch from being a run of one article.
    """
    rng = np.random.default_rng([seed, epoch])
    pairs = create_pairs(
        corpus,
        max_num_tokens=sequence_length - 3,
        short_seq_prob=short_seq_prob,
        nsp_probability=nsp_probability,
        rng=rng,
        document_ids=document_ids,
    )
    return pairs[rng.permutation(len(pairs))]


def count_pairs(
    corpus,
    *,
    sequence_length: int = 128,
    short_seq_prob: float = 0.1,
    nsp_probability: float = 0.5,
    seed: int = 0,
    document_ids=None,
    epoch: int = 0,
) -> int:
    """Sequences in one epoch (batches: this // batch_size)."""
    return len(
        epoch_pairs(
            corpus,
            sequence_length=sequence_length,
            short_seq_prob=short_seq_prob,
            nsp_probability=nsp_probability,
            seed=seed,
            document_ids=document_ids,
            epoch=epoch,
        )
    )
