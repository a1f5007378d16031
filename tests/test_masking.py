"""Tests for kerasbert.masking: dynamic MLM masks as TF ops."""

import numpy as np
import pytest
import tensorflow as tf

from kerasbert.data.masking import DynamicMasker, draw_noise, validate_masking
from kerasbert.data.pairing import assemble
from kerasbert.data.pretraining import epoch_pairs
from kerasbert.errors import UsageError

SEQ, PREDS = 128, 20


@pytest.fixture(scope="module")
def rows(bundled):
    """6,400 unmasked real rows (two epochs of pairs) at length 128."""
    tokenizer, corpus = bundled
    pairs = np.concatenate(
        [epoch_pairs(corpus, seed=0, epoch=e) for e in range(2)]
    )[:6400]
    ids, _, pad, _ = assemble(
        corpus.tokens,
        pairs,
        SEQ,
        cls_id=tokenizer.cls_id,
        sep_id=tokenizer.sep_id,
        pad_id=tokenizer.pad_id,
    )
    return ids, pad


def _mask(tokenizer, ids, pad, seed=0, **kwargs):
    masker = DynamicMasker(tokenizer, **kwargs)
    noise = draw_noise(
        tf.constant([seed, 0], tf.int64), len(ids), SEQ, masker.max_predictions
    )
    return {k: v.numpy() for k, v in masker(ids, pad, noise).items()}


def _eligible(tokenizer, ids, pad):
    return (pad == 1) & ~np.isin(ids, tokenizer.special_ids)


def _check_invariants(tokenizer, ids, pad, out):
    """Shapes, dtypes, sorted positions, labels, untouched rest."""
    weights = out["mask_weights"]
    positions = out["mask_positions"]
    used = weights == 1.0
    assert set(np.unique(weights)) <= {0.0, 1.0}
    assert out["mask_positions"].dtype == np.int32
    assert out["mask_ids"].dtype == np.int32
    assert out["token_ids"].dtype == np.int32
    assert weights.dtype == np.float32
    # The used slots come first, positions strictly ascending; the rest 0.
    assert (np.diff(used.astype(int), axis=1) <= 0).all()
    gaps = np.diff(positions, axis=1)
    assert (gaps[used[:, 1:]] > 0).all()
    assert (positions[~used] == 0).all() and (out["mask_ids"][~used] == 0).all()
    # Only eligible tokens (real, non-special) are ever predicted.
    eligible = _eligible(tokenizer, ids, pad)
    assert np.take_along_axis(eligible, positions, 1)[used].all()
    # Labels are the original ids; positions not predicted are unchanged.
    original = np.take_along_axis(ids, positions, 1)
    assert (out["mask_ids"][used] == original[used]).all()
    changed = np.zeros_like(ids, dtype=bool)
    np.put_along_axis(changed, positions, used, 1)
    assert (out["token_ids"][~changed] == ids[~changed]).all()


def _decision_shares(tokenizer, ids, out):
    used = out["mask_weights"] == 1.0
    new = np.take_along_axis(out["token_ids"], out["mask_positions"], 1)[used]
    original = out["mask_ids"][used]
    masked = new == tokenizer.mask_id
    kept = new == original
    randomised = ~masked & ~kept
    # A random replacement is never special.
    assert not np.isin(new[randomised], tokenizer.special_ids).any()
    return masked.mean(), randomised.mean(), kept.mean()


def test_masking_statistics_on_the_bundled_corpus(bundled, rows):
    tokenizer, _ = bundled
    ids, pad = rows
    out = _mask(tokenizer, ids, pad, max_predictions=PREDS)
    _check_invariants(tokenizer, ids, pad, out)
    eligible = _eligible(tokenizer, ids, pad)
    share = out["mask_weights"].sum() / eligible.sum()
    assert abs(share - 0.15) <= 0.005
    masked, randomised, kept = _decision_shares(tokenizer, ids, out)
    # A random id equal to the original counts as kept: 1/997 of 10%.
    assert abs(masked - 0.8) <= 0.02
    assert abs(randomised - 0.1) <= 0.02
    assert abs(kept - 0.1) <= 0.02
    # n per row follows the formula.
    n = np.minimum(PREDS, np.maximum(1, np.round(eligible.sum(1) * 0.15)))
    np.testing.assert_array_equal(out["mask_weights"].sum(1), n)


def _words(tokenizer, row_ids, row_eligible):
    """Lists of positions, one per word (word starts or after non-text)."""
    starts = tokenizer.word_start_mask()
    words, current = [], None
    for i, (token, ok) in enumerate(zip(row_ids, row_eligible)):
        if not ok:
            current = None
            continue
        if current is None or starts[token]:
            current = []
            words.append(current)
        current.append(i)
    return words


def test_whole_word_masking_masks_whole_words(bundled, rows):
    tokenizer, _ = bundled
    ids, pad = rows[0][:1500], rows[1][:1500]
    out = _mask(tokenizer, ids, pad, max_predictions=PREDS, whole_word=True)
    _check_invariants(tokenizer, ids, pad, out)
    eligible = _eligible(tokenizer, ids, pad)
    multi = 0
    for r in range(len(ids)):
        used = out["mask_weights"][r] == 1.0
        chosen = set(out["mask_positions"][r][used].tolist())
        new = out["token_ids"][r]
        for word in _words(tokenizer, ids[r], eligible[r]):
            hit = chosen.intersection(word)
            # All of a word or none of it ...
            assert len(hit) in (0, len(word))
            if hit and len(word) > 1:
                multi += 1
                # ... and one 80/10/10 decision for the whole word.
                is_mask = new[word] == tokenizer.mask_id
                assert is_mask.all() or not is_mask.any()
    assert multi > 100  # multi-piece words were really exercised
    share = out["mask_weights"].sum() / eligible.sum()
    assert abs(share - 0.15) <= 0.005
    masked, randomised, kept = _decision_shares(tokenizer, ids, out)
    assert abs(masked - 0.8) <= 0.03


def test_rate_extremes(bundled, rows):
    tokenizer, _ = bundled
    ids, pad = rows[0][:64], rows[1][:64]
    out = _mask(tokenizer, ids, pad, mask_rate=0.0)
    assert (out["mask_weights"] == 0).all()
    np.testing.assert_array_equal(out["token_ids"], ids)
    # Rate 1 with room for every token: every eligible token is predicted.
    out = _mask(tokenizer, ids, pad, mask_rate=1.0, max_predictions=SEQ)
    _check_invariants(tokenizer, ids, pad, out)
    np.testing.assert_array_equal(
        out["mask_weights"].sum(1), _eligible(tokenizer, ids, pad).sum(1)
    )


def test_seeds_reproduce_and_differ(bundled, rows):
    tokenizer, _ = bundled
    ids, pad = rows[0][:64], rows[1][:64]
    a = _mask(tokenizer, ids, pad, seed=1)
    b = _mask(tokenizer, ids, pad, seed=1)
    c = _mask(tokenizer, ids, pad, seed=2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["mask_positions"], c["mask_positions"])


class _TinyTokenizer:
    """Duck-typed tokenizer: 31 ids, 0..4 special, odd ids start words."""

    vocabulary_size = 31
    pad_id, unk_id, cls_id, sep_id, mask_id = 0, 1, 2, 3, 4
    special_ids = [0, 1, 2, 3, 4]

    def word_start_mask(self):
        starts = np.arange(31) % 2 == 1
        starts[:5] = True
        return starts


def test_duck_typed_tokenizer_and_static_shapes():
    tokenizer = _TinyTokenizer()
    ids = np.array(
        [[2, 5, 6, 7, 1, 3, 9, 3, 0], [2, 11, 3, 13, 14, 3, 0, 0, 0]], np.int32
    )
    pad = (ids != 0).astype(np.int32)
    masker = DynamicMasker(
        tokenizer, max_predictions=3, mask_rate=0.5, whole_word=True
    )
    fn = tf.function(lambda i, p, s: masker(i, p, draw_noise(s, 2, 9, 3)))
    out = fn(ids, pad, tf.constant([0, 7], tf.int64))
    assert out["token_ids"].shape == (2, 9)
    assert out["mask_positions"].shape == (2, 3)
    used = out["mask_weights"].numpy() == 1
    # [UNK] (id 1) is special: never predicted.
    assert 4 not in out["mask_positions"].numpy()[0][used[0]]
    # Row 0 has words (5, 6), (7), (9) and n = round(4 * 0.5) = 2: any
    # order reaches 2. Row 1 has (11), (13, 14) and n = round(1.5) = 2:
    # (11) first leaves room for no whole word.
    assert used.sum(1)[0] == 2 and used.sum(1)[1] in (1, 2)


def test_validation_names_the_flag():
    with pytest.raises(UsageError, match="--mask-rate"):
        validate_masking(sequence_length=128, max_predictions=20, mask_rate=1.5)
    with pytest.raises(UsageError, match="--mask-rate"):
        DynamicMasker(_TinyTokenizer(), mask_rate=-0.1)
    with pytest.raises(UsageError, match="--max-predictions"):
        validate_masking(sequence_length=128, max_predictions=0, mask_rate=0.15)
    with pytest.raises(UsageError, match="--sequence-length"):
        validate_masking(sequence_length=4, max_predictions=1, mask_rate=0.15)
