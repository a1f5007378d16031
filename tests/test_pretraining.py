"""Tests for kerasbert.data.pretraining: the tf.data pretraining pipeline."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasbert.data.corpus import TokenCorpus
from kerasbert.data.masking import DynamicMasker, draw_noise
from kerasbert.data.pairing import assemble
from kerasbert.data.pretraining import (
    block_batches,
    count_pairs,
    epoch_pairs,
    pretraining_dataset,
)
from kerasbert.errors import UsageError

X_KEYS = ("token_ids", "segment_ids", "padding_mask", "mask_positions")
Y_KEYS = ("mask_ids", "mask_weights", "next_sentence_label")


def mask_noise(
    seed: int,
    batch_index: int,
    *,
    batch_size: int,
    sequence_length: int,
    max_predictions: int,
):
    """The masking noise [batch_size, width] of one global batch.

    Masking runs on blocks of `block_batches(batch_size)` global batches:
    one stateless draw per block, seeded by (seed, block number), and batch
    i takes slice i % block of it. The masks of a batch are thus a function
    of (seed, global batch index, batch size) only: reproducible, fresh for
    every batch and epoch, and the same after a resume or on any worker.
    This oracle spells out that rule for one batch, independently of
    the pipeline's block-at-a-time drawing, for the tests to compare.
    """
    block = block_batches(batch_size)
    noise = draw_noise(
        tf.constant([seed, batch_index // block], tf.int64),
        [block, batch_size],
        sequence_length,
        max_predictions,
    )
    return noise[batch_index % block]


def _take(ds, n):
    return list(itertools.islice(ds.as_numpy_iterator(), n))


def _flat(batch):
    x, y = batch
    return {**x, **y}


def _assert_same(a, b):
    a, b = _flat(a), _flat(b)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_have_the_contract_shapes_and_layout(bundled):
    tokenizer, corpus = bundled
    x, y = _take(pretraining_dataset(corpus, tokenizer, batch_size=16), 1)[0]
    assert set(x) == set(X_KEYS) and set(y) == set(Y_KEYS)
    for key in ("token_ids", "segment_ids", "padding_mask"):
        assert x[key].shape == (16, 128) and x[key].dtype == np.int32
    assert x["mask_positions"].shape == (16, 20)
    assert y["mask_ids"].shape == (16, 20) and y["mask_ids"].dtype == np.int32
    assert y["mask_weights"].dtype == np.float32
    assert y["next_sentence_label"].shape == (16,)
    assert y["next_sentence_label"].dtype == np.int32
    ids, seg, pad = x["token_ids"], x["segment_ids"], x["padding_mask"]
    assert (ids[:, 0] == tokenizer.cls_id).all()
    for r in range(16):
        length = pad[r].sum()
        assert (pad[r, :length] == 1).all() and (pad[r, length:] == 0).all()
        assert (ids[r, length:] == tokenizer.pad_id).all()
        seps = np.flatnonzero(ids[r] == tokenizer.sep_id)
        assert len(seps) == 2 and seps[1] == length - 1
        # 0 through the first [SEP], 1 after it through the second, 0 after.
        expected = np.zeros(128, np.int32)
        expected[seps[0] + 1 : seps[1] + 1] = 1
        np.testing.assert_array_equal(seg[r], expected)


def test_datasets_run_without_tf_data_autotuning(bundled):
    # Releasing an autotuned iterator waited up to a minute (tfdata.py).
    from kerasbert.data.classification import training_dataset

    tokenizer, corpus = bundled
    ds = pretraining_dataset(corpus, tokenizer, batch_size=16)
    assert ds.options().autotune.enabled is False
    encoded = [([5, 6, 7], [0, 0, 0]), ([8, 9], [0, 0])]
    ds = training_dataset(
        encoded,
        np.array([0, 1]),
        batch_size=2,
        max_length=8,
        bucketing=False,
        seed=0,
        first_epoch=0,
        epochs=1,
    )
    assert ds.options().autotune.enabled is False


def test_seed_reproduces_and_epochs_differ(bundled):
    tokenizer, corpus = bundled
    per_epoch = count_pairs(corpus, seed=3) // 32
    a = _take(pretraining_dataset(corpus, tokenizer, seed=3), per_epoch + 2)
    b = _take(pretraining_dataset(corpus, tokenizer, seed=3), per_epoch + 2)
    for x, y in zip(a, b):
        _assert_same(x, y)
    other = _take(pretraining_dataset(corpus, tokenizer, seed=4), 1)[0]
    assert not np.array_equal(other[0]["token_ids"], a[0][0]["token_ids"])
    # Epoch 1 starts at batch per_epoch: new pairs (its own shuffle of
    # epoch 1's pairs) and new masks.
    new_pairs = epoch_pairs(corpus, seed=3, epoch=1)[:32]
    tokens, *_ = assemble(
        corpus.tokens,
        new_pairs,
        128,
        cls_id=tokenizer.cls_id,
        sep_id=tokenizer.sep_id,
        pad_id=tokenizer.pad_id,
    )
    x1, y1 = a[per_epoch]
    changed = np.zeros_like(tokens, dtype=bool)
    np.put_along_axis(changed, x1["mask_positions"], y1["mask_weights"] > 0, 1)
    np.testing.assert_array_equal(x1["token_ids"][~changed], tokens[~changed])
    assert not np.array_equal(new_pairs, epoch_pairs(corpus, seed=3)[:32])
    # ... and fresh masking noise.
    noise = [
        mask_noise(
            3, i, batch_size=32, sequence_length=128, max_predictions=20
        ).numpy()
        for i in (0, per_epoch)
    ]
    assert not np.allclose(noise[0], noise[1])


def test_eager_masking_equals_dataset_map(bundled):
    tokenizer, corpus = bundled
    batch_size = 24  # blocks of 42 batches: index 50 is in the second
    ds = pretraining_dataset(
        corpus, tokenizer, batch_size=batch_size, seed=9, whole_word=True
    )
    stream = _take(ds, 51)
    pairs = epoch_pairs(corpus, seed=9)
    masker = DynamicMasker(tokenizer, whole_word=True)
    assert block_batches(batch_size) < 51
    for index in (0, 50):
        rows = pairs[index * batch_size : (index + 1) * batch_size]
        ids, seg, pad, label = assemble(
            corpus.tokens,
            rows,
            128,
            cls_id=tokenizer.cls_id,
            sep_id=tokenizer.sep_id,
            pad_id=tokenizer.pad_id,
        )
        noise = mask_noise(
            9,
            index,
            batch_size=batch_size,
            sequence_length=128,
            max_predictions=20,
        )
        out = {k: v.numpy() for k, v in masker(ids, pad, noise).items()}
        expected = (
            {
                "token_ids": out["token_ids"],
                "segment_ids": seg,
                "padding_mask": pad,
                "mask_positions": out["mask_positions"],
            },
            {
                "mask_ids": out["mask_ids"],
                "mask_weights": out["mask_weights"],
                "next_sentence_label": label,
            },
        )
        _assert_same(stream[index], expected)


def test_start_batch_equals_skip_across_an_epoch(bundled):
    tokenizer, corpus = bundled
    per_epoch = count_pairs(corpus, sequence_length=64) // 32
    kwargs = dict(sequence_length=64, max_predictions=10, seed=1)
    full = _take(
        pretraining_dataset(corpus, tokenizer, **kwargs), per_epoch + 4
    )
    for k in (3, per_epoch - 1, per_epoch + 1):
        resumed = _take(
            pretraining_dataset(corpus, tokenizer, start_batch=k, **kwargs), 3
        )
        for a, b in zip(resumed, full[k : k + 3]):
            _assert_same(a, b)


def test_two_workers_slice_the_global_batch(bundled):
    tokenizer, corpus = bundled
    one = _take(pretraining_dataset(corpus, tokenizer, batch_size=8), 3)
    halves = [
        _take(
            pretraining_dataset(
                corpus, tokenizer, batch_size=8, num_workers=2, worker_index=w
            ),
            3,
        )
        for w in (0, 1)
    ]
    for whole, first, second in zip(one, *halves):
        first, second = _flat(first), _flat(second)
        for key, value in _flat(whole).items():
            np.testing.assert_array_equal(
                value, np.concatenate([first[key], second[key]]), key
            )


def test_one_epoch_without_repeat(bundled):
    tokenizer, corpus = bundled
    n = count_pairs(corpus, seed=2, sequence_length=64)
    ds = pretraining_dataset(
        corpus,
        tokenizer,
        seed=2,
        sequence_length=64,
        max_predictions=10,
        batch_size=64,
        repeat=False,
    )
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == n // 64
    again = list(ds.as_numpy_iterator())
    _assert_same(batches[-1], again[-1])


def test_nsp_extremes(bundled):
    tokenizer, corpus = bundled
    for p in (0.0, 1.0):
        ds = pretraining_dataset(corpus, tokenizer, nsp_probability=p)
        labels = np.concatenate(
            [y["next_sentence_label"] for _, y in _take(ds, 4)]
        )
        assert (labels == p).all()


def test_bad_settings_are_usage_errors(bundled):
    tokenizer, corpus = bundled
    one_doc = TokenCorpus.from_documents([[[10, 11, 12], [13, 14]] * 20])
    with pytest.raises(UsageError, match="2 non-empty documents"):
        pretraining_dataset(one_doc, tokenizer)
    with pytest.raises(UsageError, match="--mask-rate"):
        pretraining_dataset(corpus, tokenizer, mask_rate=1.2)
    with pytest.raises(UsageError, match="--nsp-probability"):
        pretraining_dataset(corpus, tokenizer, nsp_probability=-0.5)
    with pytest.raises(UsageError, match="--batch-size"):
        pretraining_dataset(corpus, tokenizer, batch_size=9, num_workers=2)
    with pytest.raises(UsageError, match="--batch-size"):
        pretraining_dataset(corpus, tokenizer, batch_size=10**6)


def test_pipeline_feeds_a_keras_model(bundled):
    from kerasbert.modeling import build_pretrainer

    tokenizer, corpus = bundled
    ds = pretraining_dataset(
        corpus, tokenizer, sequence_length=32, batch_size=4, max_predictions=5
    )
    model = build_pretrainer(
        vocabulary_size=tokenizer.vocabulary_size,
        hidden_dim=8,
        num_layers=2,
        num_heads=2,
        intermediate_dim=16,
        max_sequence_length=32,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(
        ds, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False
    )
    assert np.isfinite(history.history["loss"]).all()
