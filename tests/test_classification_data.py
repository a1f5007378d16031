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


def test_xla_ladder_lengths():
    assert cd.xla_lengths(64) == [16, 32, 64]
    assert cd.xla_lengths(512) == [16, 32, 64, 128, 256, 512]
    assert cd.xla_lengths(100) == [16, 32, 64, 100]  # capped at max_length
    for n in range(1, 513):
        length = cd.xla_length(n, 512)
        assert n <= length and length in cd.xla_lengths(512)


@pytest.mark.parametrize("bucketing", [True, False])
def test_fixed_shapes_for_xla(bucketing):
    """Under XLA every batch has `batch_size` rows and a ladder length;
    filler rows are weighted 0 and every real example is there once per
    epoch with weight 1."""
    rng = np.random.default_rng(0)
    encoded = [
        ([2] + [5] * int(n) + [3], [0] * (int(n) + 2))
        for n in rng.integers(1, 60, size=45)
    ]
    labels = np.arange(45, dtype=np.int32)
    data = cd.training_dataset(
        encoded,
        labels,
        16,
        bucketing,
        64,
        seed=0,
        first_epoch=0,
        epochs=2,
        fixed_shapes=True,
    )
    shapes, seen = set(), []
    for x, y, w in data.as_numpy_iterator():
        shapes.add(x["token_ids"].shape)
        assert w.dtype == np.float32 and set(w) <= {0.0, 1.0}
        seen.extend(y[w == 1])
        lengths = x["padding_mask"].sum(-1)
        assert lengths.max() <= x["token_ids"].shape[1]
    assert sorted(seen) == sorted(list(labels) * 2)
    allowed = cd.xla_lengths(64) if bucketing else [64]
    assert {rows for rows, _ in shapes} == {16}
    assert {length for _, length in shapes} <= set(allowed)

    # Without XLA: the last batch is short and lengths are the longest's.
    plain = list(
        cd.training_dataset(
            encoded, labels, 16, True, 64, seed=0, first_epoch=0, epochs=1
        ).as_numpy_iterator()
    )
    assert [len(y) for _, y, _ in plain] == [16, 16, 13]
    assert all((w == 1).all() for _, _, w in plain)
    for x, _, _ in plain:
        assert x["padding_mask"][:, -1].any()


def test_filler_rows_change_no_loss_gradient_or_metric():
    """A batch with 0-weighted filler rows trains the classifier exactly
    as the batch alone does, and its accuracy counts the real rows."""
    import keras

    from kerasbert.config import FinetuneConfig, ModelConfig
    from kerasbert.training.build import compile_classifier

    cfg = ModelConfig(
        vocabulary_size=31,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        max_sequence_length=12,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    encoded = [([2, 5, 6, 3], [0] * 4), ([2, 7, 3], [0] * 3)]
    real = cd.pad_batch(encoded, [0, 1], 8)
    index, length, weights = cd.fixed_shape(encoded, [0, 1], 5, 12, True)
    padded = cd.pad_batch(encoded, index, length)
    labels = np.array([1, 0], np.int32)
    results = []
    for x, y, w in (
        (real, labels, None),
        (padded, labels[[0, 1, 0, 0, 0]], weights),
    ):
        model = compile_classifier(
            cfg, 2, FinetuneConfig(dropout=0.0, seed=3), 10, jit=False
        )
        logs = model.train_on_batch(x, y, sample_weight=w, return_dict=True)
        results.append(
            (logs, [keras.ops.convert_to_numpy(v) for v in model.weights])
        )
    (logs_a, weights_a), (logs_b, weights_b) = results
    assert logs_b["accuracy"] == pytest.approx(logs_a["accuracy"])
    assert logs_b["loss"] == pytest.approx(logs_a["loss"], rel=1e-5)
    for a, b in zip(weights_a, weights_b, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


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
