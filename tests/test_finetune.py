"""Fine-tuning end to end on tiny models: learning, the output directory,
predict, bucketing, bad input and resume.

The learnable fixtures (tests/fixtures/finetune/make_fixtures.py) ask
whether a sentence is an emotion tweet or a WikiText-2 sentence; the pair
version asks which side holds the tweet, which a model can only answer by
telling segment A from segment B. A one-layer, 32-wide random-init model
learns both in a few seconds; chance is 0.5.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kerasbert.errors import run_cli
from kerasbert.finetune import main as finetune_main
from kerasbert.predict import main as predict_main

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "finetune")
TINY = [
    "--from-scratch",
    "tiny",
    "--hidden-dim",
    "32",
    "--num-layers",
    "1",
    "--num-heads",
    "2",
    "--intermediate-dim",
    "64",
    "--hidden-dropout",
    "0",
    "--attention-dropout",
    "0",
    "--dropout",
    "0",
    "--vocab-size",
    "300",
    "--learning-rate",
    "3e-3",
    "--batch-size",
    "16",
    "--max-length",
    "64",
    "--quiet",
]


def fixture(name):
    return os.path.join(FIXTURES, name)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """A classifier directory trained on the single-sentence task."""
    out = str(tmp_path_factory.mktemp("single") / "out")
    finetune_main(
        TINY
        + [
            "--train",
            fixture("source_train.tsv"),
            "--validation",
            fixture("source_val.tsv"),
            "--test",
            fixture("source_val.tsv"),
            "--epochs",
            "5",
            "--output-dir",
            out,
        ]
    )
    return out


def test_single_sentence_learns_and_writes_the_layout(single):
    with open(os.path.join(single, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["validation"]["accuracy"] >= 0.8  # chance: 0.5
    best = max(e["validation"]["accuracy"] for e in metrics["epochs"])
    assert metrics["validation"]["accuracy"] == best
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
    assert not os.path.exists(os.path.join(single, "checkpoints"))
    with open(os.path.join(single, "metrics.csv")) as f:
        splits = [line.split(",")[1] for line in f.read().splitlines()[1:]]
    assert splits == ["train", "validation"] * 5 + ["test"]
    from kerasbert.serving.modeldir import load_model

    model = load_model(single)
    assert model.num_classes == 2
    assert all(w.dtype == "float32" for w in model.weights)


def test_bucketing_predicts_like_padding_to_max_length(single):
    from kerasbert.data.classification import encode, read_examples
    from kerasbert.training.finetune import load_classifier, predict_proba

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


def test_killed_run_resumes_exactly(tmp_path, capsys):
    """Killed mid-way through epoch 2 (12 steps an epoch), the same command
    repeats epoch 2 from epoch 1's weights, optimizer and dropout seed
    states: metrics and weights equal an uninterrupted run's."""
    from kerasbert.serving.modeldir import load_model

    def argv(out):
        return [
            *TINY,
            "--dropout",
            "0.2",
            "--hidden-dropout",
            "0.1",
            "--train",
            fixture("source_train.tsv"),
            "--epochs",
            "2",
            "--output-dir",
            str(tmp_path / out),
        ]

    env = {**os.environ, "KERASBERT_FAULT": "finetune_step:18"}
    killed = subprocess.run(
        [sys.executable, "-m", "kerasbert.finetune", *argv("out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    out = str(tmp_path / "out")
    with open(os.path.join(out, "checkpoints", "state.json")) as f:
        assert json.load(f)["epoch"] == 1
    assert not os.path.exists(os.path.join(out, "model.keras"))
    finetune_main(argv("out"))  # the same command again resumes
    assert "resuming after epoch 1" in capsys.readouterr().err
    finetune_main(argv("clean"))

    def result(name):
        with open(tmp_path / name / "metrics.json") as f:
            metrics = json.load(f)
        for epoch in metrics["epochs"]:
            for key in ("seconds", "examples_per_second"):
                epoch["train"].pop(key)
        return metrics

    assert result("out") == result("clean")
    for a, b in zip(
        load_model(out).get_weights(),
        load_model(str(tmp_path / "clean")).get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    finetune_main(argv("out"))  # once more: complete, nothing retrained
    assert "complete" in capsys.readouterr().err
