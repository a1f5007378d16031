"""Tests for kerasbert.pairing: NSP pairs as token ranges, and assembly."""

import numpy as np
import pytest

from kerasbert.data.corpus import TokenCorpus
from kerasbert.data.pairing import (
    assemble,
    create_pairs,
    epoch_pairs,
    split_train_heldout,
    truncate_pairs,
)
from kerasbert.errors import UsageError

MAX = 125  # sequence length 128


def _doc_of_token(corpus, positions):
    sentence = np.searchsorted(corpus.sentence_offsets, positions, "right") - 1
    return np.searchsorted(corpus.document_offsets, sentence, "right") - 1


def _is_sentence_start(corpus, positions):
    return np.isin(positions, corpus.sentence_offsets[:-1])


def _is_sentence_end(corpus, positions):
    return np.isin(positions, corpus.sentence_offsets[1:])


def test_split_documents():
    train, held = split_train_heldout(40, 0.1, seed=3)
    assert len(held) == 4 and len(train) == 36
    assert sorted(np.concatenate([train, held])) == list(range(40))
    again = split_train_heldout(40, 0.1, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, held)))
    assert not np.array_equal(split_train_heldout(40, 0.1, seed=4)[1], held)
    # Both sides keep 2 documents: NSP needs a random B from another one.
    assert len(split_train_heldout(4, 0.01, seed=0)[1]) == 2
    assert len(split_train_heldout(5, 0.9, seed=0)[0]) == 2
    with pytest.raises(UsageError, match="at least 4"):
        split_train_heldout(3, 0.05, seed=0)
    assert len(split_train_heldout(2, 0.0, seed=0)[1]) == 0
    with pytest.raises(UsageError, match="--holdout-fraction"):
        split_train_heldout(2, 0.5, seed=0)
    with pytest.raises(UsageError, match="--holdout-fraction"):
        split_train_heldout(10, 1.0, seed=0)


def test_pairs_respect_lengths_sentences_and_documents(bundled):
    _, corpus = bundled
    pairs = np.concatenate(
        [epoch_pairs(corpus, seed=1, epoch=e) for e in range(3)]
    )
    a_start, a_len, b_start, b_len, label = pairs.T
    a_end, b_end = a_start + a_len, b_start + b_len
    assert (a_len >= 1).all() and (b_len >= 1).all()
    assert (a_len + b_len <= MAX).all()
    doc_a = _doc_of_token(corpus, a_start)
    assert (doc_a == _doc_of_token(corpus, a_end - 1)).all()
    doc_b = _doc_of_token(corpus, b_start)
    assert (doc_b == _doc_of_token(corpus, b_end - 1)).all()
    # Label 0: B comes after A in the same document; label 1: B comes from
    # another document.
    follows = label == 0
    assert (doc_a[follows] == doc_b[follows]).all()
    assert (b_start[follows] >= a_end[follows]).all()
    assert (doc_a[~follows] != doc_b[~follows]).all()
    # Truncation only ever stops at exactly MAX tokens, so shorter pairs are
    # untouched whole sentences, and a true B starts right where A ends.
    whole = a_len + b_len < MAX
    assert whole.sum() > 100 and (~whole).sum() > 100
    assert (b_start[whole & follows] == a_end[whole & follows]).all()
    for start, end in ((a_start, a_end), (b_start, b_end)):
        assert _is_sentence_start(corpus, start[whole]).all()
        assert _is_sentence_end(corpus, end[whole]).all()


def test_nsp_share_and_extremes(bundled):
    _, corpus = bundled
    labels = np.concatenate(
        [epoch_pairs(corpus, seed=0, epoch=e)[:, 4] for e in range(5)]
    )
    assert abs(labels.mean() - 0.5) <= 0.02
    for p in (0.0, 1.0):
        labels = epoch_pairs(corpus, seed=0, nsp_probability=p)[:, 4]
        assert (labels == p).all()


def test_short_sequences_appear_at_their_rate(bundled):
    _, corpus = bundled
    lengths = {}
    for p in (0.0, 0.1):
        pairs = epoch_pairs(corpus, short_seq_prob=p)
        lengths[p] = pairs[:, 1] + pairs[:, 3]
    # Full-length targets leave shorter pairs only at document ends. A
    # short target still takes two whole sentences (~100 tokens with this
    # vocabulary), so "short" means "not filled" here, as in Google's.
    short = {p: (v < MAX).mean() for p, v in lengths.items()}
    assert short[0.0] < 0.02
    assert short[0.1] > short[0.0] + 0.03


def test_pairs_are_seeded_per_epoch(bundled):
    _, corpus = bundled
    a = epoch_pairs(corpus, seed=5, epoch=2)
    assert np.array_equal(a, epoch_pairs(corpus, seed=5, epoch=2))
    assert not np.array_equal(a, epoch_pairs(corpus, seed=5, epoch=3))
    assert not np.array_equal(a, epoch_pairs(corpus, seed=6, epoch=2))


def test_document_ids_restrict_both_segments(bundled):
    _, corpus = bundled
    train, held = split_train_heldout(corpus.num_documents, 0.2, seed=0)
    pairs = create_pairs(
        corpus,
        max_num_tokens=MAX,
        short_seq_prob=0.1,
        nsp_probability=0.5,
        rng=np.random.default_rng(0),
        document_ids=held,
    )
    docs = np.concatenate(
        [_doc_of_token(corpus, pairs[:, 0]), _doc_of_token(corpus, pairs[:, 2])]
    )
    assert set(docs.tolist()) <= set(held.tolist())
    assert len(set(docs.tolist())) > 1


def test_too_few_documents_is_a_usage_error():
    one = TokenCorpus.from_documents([[[5, 6, 7], [8, 9], [10, 11]]])
    with pytest.raises(UsageError, match="at least 2"):
        create_pairs(
            one,
            max_num_tokens=6,
            short_seq_prob=0.1,
            nsp_probability=0.5,
            rng=np.random.default_rng(0),
        )
    with pytest.raises(UsageError, match="--nsp-probability"):
        create_pairs(
            one,
            max_num_tokens=6,
            short_seq_prob=0.1,
            nsp_probability=1.5,
            rng=np.random.default_rng(0),
        )


def _google_truncate(a, b, max_num_tokens, rng):
    """google-research/bert truncate_seq_pair, on Python lists."""
    while len(a) + len(b) > max_num_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def test_truncation_matches_google_lengths_and_keeps_ranges():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=(300, 2))
    pairs = np.column_stack(
        [
            np.full(300, 1000),
            lengths[:, 0],
            np.full(300, 5000),
            lengths[:, 1],
            np.zeros(300, np.int64),
        ]
    )
    out = truncate_pairs(pairs, 30, rng)
    fronts = []
    for before, after in zip(pairs, out):
        a = list(range(before[0], before[0] + before[1]))
        b = list(range(before[2], before[2] + before[3]))
        _google_truncate(a, b, 30, np.random.default_rng(1))
        assert (after[1], after[3]) == (len(a), len(b))
        # A sub-range of the original range.
        assert before[0] <= after[0]
        assert after[0] + after[1] <= before[0] + before[1]
        assert before[2] <= after[2]
        assert after[2] + after[3] <= before[2] + before[3]
        fronts.append((after[0] - before[0]) + (after[2] - before[2]))
    cut = (pairs[:, 1] + pairs[:, 3] - out[:, 1] - out[:, 3]).sum()
    # Both ends are cut, about equally often.
    assert 0.4 < sum(fronts) / cut < 0.6


def test_assemble_builds_cls_a_sep_b_sep_pad():
    tokens = np.arange(100, 120, dtype=np.int32)
    pairs = np.array([[2, 3, 10, 2, 0], [0, 1, 15, 1, 1]])
    ids, seg, pad, label = assemble(
        tokens, pairs, 10, cls_id=1, sep_id=2, pad_id=0
    )
    np.testing.assert_array_equal(
        ids,
        [
            [1, 102, 103, 104, 2, 110, 111, 2, 0, 0],
            [1, 100, 2, 115, 2, 0, 0, 0, 0, 0],
        ],
    )
    np.testing.assert_array_equal(
        seg, [[0, 0, 0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(pad, [[1] * 8 + [0] * 2, [1] * 5 + [0] * 5])
    np.testing.assert_array_equal(label, [0, 1])
    for array in (ids, seg, pad, label):
        assert array.dtype == np.int32
