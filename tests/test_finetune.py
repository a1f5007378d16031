"""Fine-tuning end to end on tiny models: learning, the output directory,
predict, bucketing, bad input and resume.

The learnable fixtures (tests/fixtures/finetune/make_fixtures.py) ask
whether a sentence is an emotion tweet or a WikiText-2 sentence; the pair
version asks which side holds the tweet, which a model can only answer by
telling segment A from segment B. A one-layer, 32-wide random-init model
learns both in a few seconds; chance is 0.5. Resume after a kill is
tested with pretraining's in test_resume.py.
"""

import csv
import json
import os

import numpy as np
import pytest
from tiny_finetune import FIXTURES, source_task, tiny_args

from kerasbert.errors import run_cli
from kerasbert.finetune import main as finetune_main
from kerasbert.predict import main as predict_main

TINY = tiny_args()


def fixture(name):
    return os.path.join(FIXTURES, name)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """A classifier directory trained on the single-sentence task."""
    out = str(tmp_path_factory.mktemp("single") / "out")
    finetune_main(TINY + source_task(epochs=5) + ["--output-dir", out])
    return out


def test_single_sentence_learns_and_writes_the_layout(single):
    with open(os.path.join(single, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["validation"]["accuracy"] >= 0.8  # chance: 0.5
    # The epochs' entries are metrics.csv's rows (6 significant digits).
    best = max(e["validation"]["accuracy"] for e in metrics["epochs"])
    assert metrics["validation"]["accuracy"] == pytest.approx(best, 1e-5)
    assert metrics["epochs"][metrics["best_epoch"] - 1]["validation"][
        "accuracy"
    ] == pytest.approx(best, 1e-5)
    assert len(metrics["epochs"]) == 5
    with open(os.path.join(single, "config.json")) as f:
        config = json.load(f)
    assert config["labels"] == ["tweet", "wiki"] and config["pair"] is False
    assert config["finetune"]["max_length"] == 64
    assert config["model"]["hidden_dim"] == 32
    for name in (
        "model.keras",
        "metrics.csv",
        "confusion.png",
        "tokenizer/vocab.txt",
        "logs",
    ):
        assert os.path.exists(os.path.join(single, name)), name
    for name in ("checkpoints", "backup"):  # resume state, no use left
        assert not os.path.exists(os.path.join(single, name))
    with open(os.path.join(single, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows] == ["train", "validation"] * 5 + ["test"]
    assert [r["epoch"] for r in rows[:4]] == ["0", "0", "1", "1"]
    from kerasbert.serving.modeldir import load_model

    model = load_model(single)
    assert model.num_classes == 2
    assert all(w.dtype == "float32" for w in model.weights)


def test_bucketing_predicts_like_padding_to_max_length(single):
    from kerasbert.data.classification import encode, read_examples
    from kerasbert.serving.classifier import load_classifier, predict_proba

    model, tokenizer, _ = load_classifier(single)
    examples = read_examples(fixture("source_val.tsv"), flag="--test")
    encoded = encode(tokenizer, examples, 64, "head")
    assert len({len(ids) for ids, _ in encoded}) > 10  # lengths vary
    bucketed = predict_proba(model, encoded, 8)
    padded = predict_proba(model, encoded, 8, bucketing=False, max_length=64)
    np.testing.assert_allclose(bucketed, padded, atol=1e-5)
    assert (bucketed.argmax(-1) == padded.argmax(-1)).all()


def test_predict_cli(single, tmp_path, capsys):
    lines = tmp_path / "texts.txt"
    lines.write_text(
        "i feel so happy and loved today\n"
        "The regiment crossed the river in 1862 .\n"
    )
    predict_main(
        ["--model", single, "--json", "--file", str(lines), "i am feeling sad"]
    )
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows][0] == "i am feeling sad"
    assert [r["label"] for r in rows] == ["tweet", "tweet", "wiki"]
    for r in rows:
        assert sum(r["probabilities"].values()) == pytest.approx(1, 1e-4)


def test_sentence_pairs_learn(tmp_path):
    out = str(tmp_path / "pairs")
    finetune_main(
        TINY
        + [
            "--train",
            fixture("source_pairs_train.tsv"),
            "--validation",
            fixture("source_pairs_val.tsv"),
            "--text-column",
            "first",
            "--text-pair-column",
            "second",
            "--epochs",
            "10",
            "--metric",
            "mcc",
            "--output-dir",
            out,
        ]
    )
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["validation"]["accuracy"] >= 0.75  # chance: 0.5
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["pair"] is True


def _bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "case",
    ["missing_column", "unseen_label", "empty", "float_labels", "not_a_model"],
)
def test_bad_input_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    out = tmp_path / "out"
    train = fixture("source_train.tsv")
    extra, message = [], ""
    if case == "missing_column":
        extra, message = ["--text-column", "sentence"], "no column 'sentence'"
    elif case == "unseen_label":
        extra = [
            "--test",
            _bad(
                tmp_path, "test.tsv", "text\tlabel\nhello\ttweet\nhi\tneutral\n"
            ),
        ]
        message = "test.tsv:3: label 'neutral' is not in the training"
    elif case == "empty":
        train, message = _bad(tmp_path, "empty.tsv", ""), "has no examples"
    elif case == "float_labels":
        train = _bad(
            tmp_path,
            "reg.tsv",
            "text\tlabel\n"
            + "".join(f"text {i}\t{i / 7:.3f}\n" for i in range(20)),
        )
        message = "real numbers"
    args = TINY + ["--train", train, "--output-dir", str(out), *extra]
    if case == "not_a_model":
        (tmp_path / "folder").mkdir()
        args = [
            "--model",
            str(tmp_path / "folder"),
            "--train",
            train,
            "--output-dir",
            str(out),
        ]
        message = "--model: "
    with pytest.raises(SystemExit) as exit_info:
        run_cli(finetune_main, args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert message in err[0]
    assert not out.exists()


def test_a_complete_run_is_left_alone_and_an_old_one_refused(
    single, tmp_path, capsys
):
    """Rerunning a complete run retrains nothing; an unfinished run of the
    former epoch-checkpoint scheme cannot resume: one line, exit 2.
    (Resuming after a kill anywhere: tests/test_resume.py.)"""
    args = TINY + source_task(epochs=5)
    finetune_main(args + ["--output-dir", single])
    assert "complete" in capsys.readouterr().out
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "state.json").write_text('{"epoch": 1}')
    (old / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(finetune_main, args + ["--output-dir", str(old)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "older kerasbert" in err[0], err
    assert "--overwrite" in err[0]
