"""Packed masked-LM rows: the model computes each packed text as if it ran
alone, and the pipeline packs every text once per epoch, reproducibly."""

import itertools
import json
import os
from collections import Counter

import numpy as np
import pytest
from keras import ops
from packed_case import compare

from kerasbert import fit
from kerasbert.config import resolve_packing
from kerasbert.data.corpus import TokenCorpus
from kerasbert.data.packed import (
    WINDOW,
    assemble_packed,
    epoch_packing,
    first_fit,
    text_ranges,
)
from kerasbert.data.pretraining import EpochRows, fill, pretraining_dataset
from kerasbert.errors import UsageError
from kerasbert.modeling.layers import attention_mask, text_positions

HERE = os.path.dirname(__file__)


# The model.


@pytest.mark.parametrize(
    "attention_dropout", [0.0, 0.1], ids=["fused", "explicit"]
)
@pytest.mark.parametrize(
    "dtype", ["float32", "mixed_float16", "mixed_bfloat16"]
)
def test_packed_row_computes_each_text_as_alone(attention_dropout, dtype):
    got = compare(attention_dropout, dtype)
    # Half-precision activations: rounding in another order may differ.
    tol = 1e-5 if dtype == "float32" else 2e-2 * got["scale"]
    assert got["logits"] <= tol and got["loss"] <= tol, got
    assert got["sequence"] <= (1e-5 if dtype == "float32" else 5e-2), got
    # Text 1 never sees texts 2 and 3, which do change when they change.
    assert got["leak"] <= 1e-6 and got["moved"] > 0.01, got


def test_positions_restart_per_text_and_stay_plain_for_01_masks():
    packed = np.array([[1, 1, 1, 2, 2, 3, 0, 0]])
    np.testing.assert_array_equal(
        ops.convert_to_numpy(text_positions(packed)),
        [[0, 1, 2, 0, 1, 0, 6, 7]],
    )
    # A 0/1 mask, left padding too: the absolute 0, 1, 2... as before.
    plain = np.array([[1, 1, 1, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(
        ops.convert_to_numpy(text_positions(plain)), [[0, 1, 2, 3]] * 2
    )


def test_01_attention_mask_is_the_key_mask_of_before():
    rng = np.random.default_rng(0)
    mask = (rng.random((4, 9)) < 0.6).astype("int32")
    before = np.broadcast_to(mask[:, None, None, :] > 0, (4, 1, 9, 9))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(attention_mask(mask)), before
    )
    packed = np.array([[1, 1, 2, 2, 0]])
    got = ops.convert_to_numpy(attention_mask(packed))[0, 0]
    assert got[0].tolist() == [True, True, False, False, False]
    assert got[2].tolist() == [False, False, True, True, False]
    assert got[4].tolist() == [True, True, True, True, False]  # padding


def test_unpadded_inference_honours_packed_rows():
    from packed_case import _model, batches

    backbone = _model(0.0, "float32").backbone
    (x, _), _ = batches()
    x = {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    real = x["padding_mask"][0] > 0
    full = ops.convert_to_numpy(backbone(x)["sequence_output"])[0][real]
    fast = ops.convert_to_numpy(backbone.call_unpadded(x)["sequence_output"])
    np.testing.assert_allclose(fast[0][real], full, atol=1e-5)


# Texts and rows.


def test_texts_are_documents_and_long_ones_are_cut():
    corpus = TokenCorpus.from_documents(
        [[[5] * 3, [6] * 4], [[7] * 2], [[8] * 3, [9] * 12, [10] * 2]]
    )
    starts, lengths = text_ranges(corpus, None, max_tokens=8)
    texts = [corpus.tokens[s : s + n].tolist() for s, n in zip(starts, lengths)]
    assert texts == [
        [5] * 3 + [6] * 4,
        [7] * 2,
        [8] * 3 + [9] * 5,
        [9] * 7 + [10],
        [10],
    ]
    # Only the documents asked for.
    assert text_ranges(corpus, [1], max_tokens=8)[1].tolist() == [2]


def test_first_fit_fills_short_texts_and_keeps_each_once():
    sizes = np.random.default_rng(0).integers(8, 40, 3000)
    order, offsets = first_fit(sizes, 128)
    assert sorted(order.tolist()) == list(range(3000))
    per_row = np.add.reduceat(sizes[order], offsets[:-1])
    assert per_row.max() <= 128
    assert per_row.sum() / (128 * len(per_row)) > 0.95
    assert WINDOW >= 1


def test_assembled_rows_hold_each_text_once(bundled):
    tokenizer, corpus = bundled
    texts = text_ranges(corpus, None, 62)
    packing = epoch_packing(texts, 64, seed=3, epoch=0)
    special = dict(
        cls_id=tokenizer.cls_id,
        sep_id=tokenizer.sep_id,
        pad_id=tokenizer.pad_id,
    )
    rows = np.arange(len(packing))
    ids, seg, pad, label = assemble_packed(
        corpus.tokens, packing, rows, 64, **special
    )
    assert not seg.any() and not label.any()
    assert ((pad > 0).sum(axis=1) == packing.real_tokens()).all()
    seen = Counter()
    for r in rows:
        for k in range(1, pad[r].max() + 1):
            text = ids[r][pad[r] == k]
            assert text[0] == tokenizer.cls_id and text[-1] == tokenizer.sep_id
            seen[tuple(text[1:-1])] += 1
        # Texts are contiguous and numbered in order, padding last.
        assert (np.diff(pad[r][pad[r] > 0]) >= 0).all()
    expected = Counter(tuple(corpus.tokens[s : s + n]) for s, n in zip(*texts))
    assert seen == expected
    # Another epoch: the same texts in other rows.
    other = epoch_packing(texts, 64, seed=3, epoch=1)
    assert sorted(other.starts.tolist()) == sorted(packing.starts.tolist())
    assert other.starts.tolist() != packing.starts.tolist()


def _take(ds, n):
    return list(itertools.islice(ds.as_numpy_iterator(), n))


KW = dict(sequence_length=64, max_predictions=12, nsp_probability=0.0)


def sentences_as_documents(corpus):
    """Short texts: every sentence of `corpus` a document of its own."""
    return TokenCorpus(
        corpus.tokens,
        corpus.sentence_offsets,
        np.arange(corpus.num_sentences + 1),
    )


def test_packed_stream_masks_real_text_reproducibly(bundled):
    tokenizer, corpus = bundled
    corpus = sentences_as_documents(corpus)
    ds = pretraining_dataset(corpus, tokenizer, packing=True, seed=1, **KW)
    batches = _take(ds, 3)
    again = _take(
        pretraining_dataset(corpus, tokenizer, packing=True, seed=1, **KW), 3
    )
    resumed = _take(
        pretraining_dataset(
            corpus, tokenizer, packing=True, seed=1, start_batch=1, **KW
        ),
        2,
    )
    for a, b in zip(batches, again):
        for part in (0, 1):
            for k in a[part]:
                np.testing.assert_array_equal(a[part][k], b[part][k])
    for a, b in zip(batches[1:], resumed):
        for k in a[0]:
            np.testing.assert_array_equal(a[0][k], b[0][k])
    x, y = batches[0]
    assert x["mask_positions"].shape == (32, 12)  # static for XLA
    assert x["padding_mask"].max() > 1  # several texts per row
    picked = np.take_along_axis(x["padding_mask"], x["mask_positions"], 1)
    assert (picked[y["mask_weights"] > 0] > 0).all()  # real tokens only
    # About mask_rate of each row's maskable text is predicted.
    rate = y["mask_weights"].sum() / (x["padding_mask"] > 0).sum()
    assert 0.1 < rate < 0.16
    rows = EpochRows(corpus, packing=True, sequence_length=64, seed=1)
    assert fill(rows, 32) > 0.9


def test_packing_needs_masked_lm_only(bundled):
    tokenizer, corpus = bundled
    with pytest.raises(UsageError, match="--packing"):
        pretraining_dataset(corpus, tokenizer, packing=True)
    assert resolve_packing("auto", nsp=False) == "on"
    assert resolve_packing("auto", nsp=True) == "off"
    with pytest.raises(UsageError, match="^--packing: on needs --no-nsp"):
        resolve_packing("on", nsp=True)


# The command.


def test_fit_packs_one_line_texts(cli, tmp_path):
    """The issue's case: one tweet per line, masked LM only."""
    source = os.path.join(HERE, "fixtures", "finetune", "emotion_train.txt")
    with open(source, encoding="utf-8") as f:
        lines = [line.rsplit(";", 1)[0] for line in f.read().splitlines()[1:]]
    tweets = tmp_path / "tweets.txt"
    tweets.write_text("\n".join(lines) + "\n", encoding="utf-8")
    common = ["--corpus", tweets, "--one-doc-per-line", "--vocab-size", "400"]
    small = ["--size", "tiny", "--hidden-dim", "16", "--num-heads", "2"]
    code, out, err = cli(
        fit.main,
        [
            *common,
            *small,
            "--no-nsp",
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--output-dir",
            tmp_path / "run",
            "--quiet",
        ],
    )
    assert code == 0, err
    assert "data: packing on; fill 0." in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["packing"] == "on" and summary["fill"] > 0.9, summary
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "fill" in header.split(",")
    code, out, err = cli(
        fit.main, [*common, "--packing", "on", "--output-dir", tmp_path / "x"]
    )
    assert code == 2 and err.strip().endswith(
        "--packing: on needs --no-nsp (NSP reads one [CLS] per row; a packed "
        "row holds several texts)"
    ), err
    assert not (tmp_path / "x").exists()
