"""Readers, labels, splits, batching and metrics of fine-tuning (no model)."""

import json
import os

import numpy as np
import pytest

from kerasbert.data import classification as cd
from kerasbert.errors import UsageError
from kerasbert.training.metrics import classification_metrics

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "finetune")


def fixture(name):
    return os.path.join(FIXTURES, name)


def test_emotion_semicolon_layout():
    ex = cd.read_examples(fixture("emotion_train.txt"), flag="--train")
    assert len(ex) == 240  # the text;label_name header is skipped
    assert set(ex.labels) == {"joy", "sadness"}
    assert ex.where[0].endswith("emotion_train.txt:2")


def test_headerless_cola_with_columns():
    ex = cd.read_examples(
        fixture("cola_head.tsv"),
        flag="--train",
        text_column="sentence",
        columns="source,label,original_label,sentence",
    )
    assert len(ex) == 40 and set(ex.labels) <= {"0", "1"}
    assert ex.texts[0].startswith("Our friends won't buy this analysis")
    assert cd.label_names(ex.labels) == ["0", "1"]


def test_folder_of_label_subfolders():
    ex = cd.read_examples(fixture("reviews"), flag="--train")
    assert ex.labels == ["neg"] * 3 + ["pos"] * 3
    assert all(len(t) > 1000 for t in ex.texts)


def test_csv_and_jsonl_agree(tmp_path):
    rows = [("a b, c", "x", "pos"), ('say "hi"', "y", "neg"), ("d", "z", "pos")]
    csv_path = tmp_path / "d.csv"
    import csv

    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["q", "p", "y"])
        w.writerows(rows)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"q": a, "p": b, "y": c}) + "\n" for a, b, c in rows)
    )
    got = [
        cd.read_examples(
            str(p),
            flag="--train",
            text_column="q",
            text_pair_column="p",
            label_column="y",
        )
        for p in (csv_path, jsonl)
    ]
    for ex in got:
        assert ex.texts == [r[0] for r in rows]
        assert ex.pairs == [r[1] for r in rows]
        assert ex.labels == [r[2] for r in rows]


def test_integer_labels_sort_numerically():
    assert cd.label_names(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert cd.label_names(["b", "a"]) == ["a", "b"]
    with pytest.raises(UsageError, match="real numbers"):
        cd.label_names(["0.5", "1.25", "0.5"])


def test_unknown_label_names_its_line():
    ex = cd.Examples(["a", "b"], None, ["x", "new"], ["f:1", "f:2"])
    with pytest.raises(UsageError, match="f:2: label 'new'"):
        cd.label_ids(ex, ["x", "y"], "--test")


def test_stratified_split_keeps_class_shares():
    ids = np.array([0] * 80 + [1] * 20)
    keep, held = cd.stratified_split(ids, 0.1, seed=3)
    assert sorted(np.bincount(ids[held])) == [2, 8]
    assert len(np.intersect1d(keep, held)) == 0
    assert len(keep) + len(held) == 100
    again = cd.stratified_split(ids, 0.1, seed=3)[1]
    assert (again == held).all()


def test_bucketed_batches_cover_everything_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 100, size=1003)
    batches = cd.batch_order(lengths, 32, True, np.random.default_rng(1))
    assert len(batches) == -(-1003 // 32)
    assert sorted(np.concatenate(batches)) == list(range(1003))

    # Padding per batch: bucketed batches waste far less than random ones.
    def waste(bs):
        return sum(lengths[b].max() * len(b) - lengths[b].sum() for b in bs)

    plain = cd.batch_order(lengths, 32, False, np.random.default_rng(1))
    assert waste(batches) < waste(plain) / 4


def test_pad_batch_masks_by_length():
    encoded = [([2, 7, 3], [0, 0, 0]), ([2, 0, 8, 3, 9, 3], [0] * 4 + [1] * 2)]
    batch = cd.pad_batch(encoded, [0, 1])
    assert batch["token_ids"].shape == (2, 6)
    # Token id 0 inside a text is still a real token.
    assert batch["padding_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert batch["segment_ids"][1].tolist() == [0, 0, 0, 0, 1, 1]
    assert cd.pad_batch(encoded, [0], 10)["token_ids"].shape == (1, 10)


@pytest.mark.parametrize("num_classes", [2, 5])
def test_metrics_equal_sklearn(num_classes):
    from sklearn import metrics as sk

    rng = np.random.default_rng(num_classes)
    y_true = rng.integers(0, num_classes, 300)
    # Correlated but imperfect predictions, one class never predicted.
    y_pred = np.where(
        rng.random(300) < 0.6, y_true, rng.integers(0, num_classes, 300)
    )
    y_pred[y_pred == num_classes - 1] = 0
    labels = [f"c{i}" for i in range(num_classes)]
    got = classification_metrics(y_true, y_pred, labels)
    every = list(range(num_classes))
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
    assert got["macro_f1"] == pytest.approx(
        sk.f1_score(
            y_true, y_pred, average="macro", labels=every, zero_division=0
        )
    )
    assert got["mcc"] == pytest.approx(sk.matthews_corrcoef(y_true, y_pred))
    p, r, f, s = sk.precision_recall_fscore_support(
        y_true, y_pred, labels=every, zero_division=0
    )
    for i, name in enumerate(labels):
        c = got["per_class"][name]
        assert (
            c["precision"],
            c["recall"],
            c["f1"],
            c["support"],
        ) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert (
        got["confusion"]
        == sk.confusion_matrix(y_true, y_pred, labels=every).tolist()
    )
