"""Continued pretraining on a task's own texts (kerasbert.training.adapt).

Labelled data files read as a corpus (labels ignored, short texts cut in
two for next-sentence pairs), masked-LM-only training, the head warm-up
with a frozen encoder, and the whole adapt -> fine-tune recipe on a tiny
model built the way `convert` writes one (a backbone without heads).
"""

import json
import os

import numpy as np
import pytest

from kerasbert import adapt, fit
from kerasbert.config import DataConfig
from kerasbert.data.corpus import (
    halve_lone_sentences,
    read_documents_as_sentences,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "finetune")


def fixture(name):
    return os.path.join(FIXTURES, name)


def documents(**fields):
    _, docs = read_documents_as_sentences(DataConfig(**fields))
    return list(docs)


def squeezed(texts):
    """Texts without white space: sentence splitting may move it."""
    return ["".join("".join(t).split()) for t in texts]


def test_halving_rule():
    docs = [["one"], ["a b c d e"], ["first sentence .", "second one ."]]
    assert list(halve_lone_sentences(iter(docs))) == [
        ["one"],
        ["a b", "c d e"],
        ["first sentence .", "second one ."],
    ]


def test_semicolon_file_texts_without_labels():
    docs = documents(
        corpus=fixture("emotion_train.txt"),
        corpus_format="semicolon",
        language="en",
    )
    with open(fixture("emotion_train.txt"), encoding="utf-8") as f:
        rows = f.read().splitlines()[1:]  # after the text;label header
    assert len(docs) == len(rows)
    first_text, label = rows[0].rsplit(";", 1)
    words = first_text.split()
    # One sentence: cut at the middle word, the label nowhere.
    assert docs[0] == [
        " ".join(words[: len(words) // 2]),
        " ".join(words[len(words) // 2 :]),
    ]
    texts = [row.rsplit(";", 1)[0] for row in rows]
    assert squeezed(docs) == squeezed(texts)
    assert label not in docs[0][-1]


def test_tsv_with_text_column_and_headerless_columns():
    import csv

    docs = documents(
        corpus=fixture("source_train.tsv"), corpus_format="tsv", language="en"
    )
    with open(fixture("source_train.tsv"), encoding="utf-8") as f:
        texts = [
            row["text"]
            for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        ]
    # Each document is its row's text, whole, and nothing else.
    assert squeezed(docs) == squeezed(texts)
    cola = documents(
        corpus=fixture("cola_head.tsv"),
        corpus_format="tsv",
        columns="source,label,original_label,sentence",
        text_field="sentence",
        language="en",
    )
    with open(fixture("cola_head.tsv"), encoding="utf-8") as f:
        sentences = [line.rstrip("\n").split("\t")[3] for line in f]
    assert squeezed(cola) == squeezed(sentences)


def test_folder_per_label_reads_every_file_once():
    folder = fixture("reviews")
    files = [os.path.join(r, n) for r, _, ns in os.walk(folder) for n in ns]
    docs = documents(corpus=folder, corpus_format="folder", language="en")
    assert len(docs) == len(files)
    # Reviews have many sentences: real next-sentence pairs, not halves.
    assert np.mean([len(d) for d in docs]) > 3


def test_adapt_refuses_an_output_inside_its_model(cli, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "config.json").write_text("{}")
    code, _, err = cli(
        adapt.main,
        [
            "--model",
            str(source),
            "--train",
            fixture("source_train.tsv"),
            "--output-dir",
            str(source / "adapted"),
            "--quiet",
        ],
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "lies inside the input --model" in lines[0]
    assert sorted(os.listdir(source)) == ["config.json"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--corpus", "missing.tsv", "--corpus-format", "tsv"], "missing.tsv"),
        (
            [
                "--corpus",
                fixture("source_train.tsv"),
                "--corpus-format",
                "tsv",
                "--text-column",
                "sentence",
            ],
            "no column 'sentence'",
        ),
        (["--corpus-format", "semicolon"], "needs --corpus"),
    ],
)
def test_bad_corpus_files_one_error_nothing_written(
    cli, tmp_path, args, needle
):
    out = tmp_path / "run"
    code, _, err = cli(
        fit.main,
        [
            *args,
            "--size",
            "tiny",
            "--max-steps",
            "1",
            "--output-dir",
            str(out),
            "--quiet",
        ],
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:")
    assert needle in lines[0], lines[0]
    assert not out.exists()


def test_masked_lm_only_loss():
    from kerasbert.modeling import pretraining_losses

    rng = np.random.default_rng(0)
    y = {
        "mask_ids": np.array([[1, 2]]),
        "mask_weights": np.ones((1, 2)),
        "next_sentence_label": np.array([1]),
    }
    y_pred = {
        "mlm_logits": rng.normal(size=(1, 2, 5)).astype("float32"),
        "nsp_logits": np.array([[3.0, -3.0]], "float32"),
    }
    both = pretraining_losses(y, y_pred)
    mlm = pretraining_losses(y, y_pred, nsp=False)
    assert float(both["nsp_loss"]) > 5
    np.testing.assert_allclose(float(mlm["loss"]), float(both["mlm_loss"]))
    np.testing.assert_allclose(
        float(both["loss"]), float(both["mlm_loss"] + both["nsp_loss"])
    )


def weights(directory, part):
    from kerasbert.serving.modeldir import backbone_of, load_model

    model = load_model(directory)
    layer = backbone_of(model) if part == "backbone" else getattr(model, part)
    return layer.get_weights()


def test_adapt_then_finetune_end_to_end(cli, tmp_path, source):
    out = tmp_path / "out"
    argv = [
        "--model",
        str(source),
        "--train",
        fixture("source_train.tsv"),
        "--validation",
        fixture("source_val.tsv"),
        "--output-dir",
        str(out),
        "--head-steps",
        "4",
        "--adapt-steps",
        "6",
        "--adapt-batch-size",
        "8",
        "--adapt-sequence-length",
        "32",
        "--head-learning-rate",
        "1e-2",
        "--epochs",
        "1",
        "--patience",
        "1",
        "--batch-size",
        "16",
        "--max-length",
        "64",
        "--learning-rate",
        "3e-3",
        "--quiet",
    ]
    code, stdout, err = cli(adapt.main, argv)
    assert code == 0, err
    # After the stages' progress lines, the summary (a top-level object).
    summary = json.loads(stdout[stdout.rindex("\n{\n") + 1 :])
    assert summary["classifier"] == str(out / "classifier")
    assert set(os.listdir(out)) == {
        "heads",
        "adapted",
        "classifier",
        "adapt.json",
    }

    # Stage 1 trained the heads and left the encoder exactly as it was.
    for mine, theirs in zip(
        weights(out / "heads", "backbone"), weights(source, "backbone")
    ):
        np.testing.assert_array_equal(mine, theirs)
    fresh = weights(out / "heads", "mlm_head")  # trained: not the init
    assert any(np.abs(w).sum() > 0 for w in fresh)
    # Stage 2 moved the encoder; stage 3 fine-tuned from stage 2.
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(
            weights(out / "adapted", "backbone"), weights(source, "backbone")
        )
    ]
    assert any(moved)
    with open(out / "classifier" / "config.json") as f:
        finetune_cfg = json.load(f)["finetune"]
    assert finetune_cfg["model"] == str(out / "adapted")
    assert finetune_cfg["patience"] == 1  # early stopping reaches stage 3
    assert summary["epochs_trained"] == 1
    with open(out / "adapted" / "config.json") as f:
        run = json.load(f)
    assert run["train"]["nsp"] is True and run["data"]["corpus_format"] == "tsv"

    # The same command again: every stage is complete, nothing retrains.
    stamp = os.path.getmtime(out / "adapted" / "model.keras")
    code, _, err = cli(adapt.main, argv)
    assert code == 0, err
    assert os.path.getmtime(out / "adapted" / "model.keras") == stamp


def test_masked_lm_only_run_has_no_random_b(cli, tmp_path):
    out = tmp_path / "run"
    code, _, err = cli(
        fit.main,
        [
            "--corpus",
            fixture("source_train.tsv"),
            "--corpus-format",
            "tsv",
            "--no-nsp",
            "--size",
            "tiny",
            "--vocab-size",
            "300",
            "--sequence-length",
            "32",
            "--batch-size",
            "8",
            "--max-predictions",
            "5",
            "--max-steps",
            "2",
            "--eval-batches",
            "1",
            "--output-dir",
            str(out),
            "--quiet",
        ],
    )
    assert code == 0, err
    with open(out / "config.json") as f:
        run = json.load(f)
    assert run["train"]["nsp"] is False
    assert run["data"]["nsp_probability"] == 0.0
    assert run["data"]["packing"] == "on"  # --packing auto, masked LM only


def test_adapt_packing_needs_no_nsp_and_reaches_the_corpus(
    cli, tmp_path, source
):
    from kerasbert.config import AdaptConfig, FinetuneConfig
    from kerasbert.training.adapt import corpus_config

    out = tmp_path / "out"
    code, _, err = cli(
        adapt.main,
        [
            *("--model", str(source), "--train", fixture("source_train.tsv")),
            *("--adapt-sequence-length", "32", "--packing", "on"),
            *("--output-dir", str(out), "--quiet"),
        ],
    )
    assert code == 2 and err.strip().splitlines() == [
        "error: --packing: on needs --no-nsp (NSP reads one [CLS] per row; "
        "a packed row holds several texts)"
    ], err
    assert not out.exists()
    cfg = FinetuneConfig(model=str(source), train=fixture("source_train.tsv"))
    data = corpus_config(AdaptConfig(nsp=False, packing="on"), cfg, "tok")
    assert data.packing == "on"


def test_adapt_too_little_text_one_error_no_output(cli, tmp_path, source):
    out = tmp_path / "out"
    code, _, err = cli(
        adapt.main,
        [
            "--model",
            str(source),
            "--train",
            fixture("source_train.tsv"),
            "--adapt-batch-size",
            "4096",
            "--adapt-sequence-length",
            "32",
            "--output-dir",
            str(out),
            "--quiet",
        ],
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:")
    assert lines[0].startswith("error: --adapt-batch-size: 4096 is more")
    assert "sentence pairs" in lines[0], lines[0]
    assert not out.exists()


def test_fit_auto_reads_labelled_files_as_finetune_does(cli, tmp_path, source):
    """`fit --init-from M --corpus train.tsv` (and an emotion-style
    `text;label` file) work as typed: --corpus-format auto reads their
    texts, not their lines as one plain-text document."""
    for name, fmt in (
        ("source_train.tsv", "tsv"),
        ("emotion_train.txt", "semicolon"),
    ):
        out = tmp_path / fmt
        code, _, err = cli(
            fit.main,
            [
                "--init-from",
                source,
                "--corpus",
                fixture(name),
                "--sequence-length",
                "32",
                "--batch-size",
                "8",
                "--max-predictions",
                "5",
                "--max-steps",
                "2",
                "--eval-batches",
                "1",
                "--output-dir",
                out,
                "--quiet",
            ],
        )
        assert code == 0, err
        with open(out / "config.json") as f:
            assert json.load(f)["data"]["corpus_format"] == fmt


def test_too_few_documents_names_corpus_format(cli, tmp_path):
    """A labelled file read as plain text is one document: the message
    says how to read it as labelled data."""
    corpus = tmp_path / "train.txt"
    corpus.write_text("".join(f"text {i}\tlabel\n" for i in range(50)))
    code, out, err = cli(
        fit.main,
        [
            "--corpus",
            corpus,
            "--corpus-format",
            "text",
            "--output-dir",
            tmp_path / "run",
        ],
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "corpus has 1 document;" in err and "--corpus-format tsv" in err
    assert not (tmp_path / "run").exists()


def test_heads_only_needs_init_from(cli, tmp_path):
    code, _, err = cli(
        fit.main, ["--heads-only", "--output-dir", tmp_path / "run"]
    )
    assert code == 2 and err.startswith("error: --heads-only: needs --init")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "command, stage_flags, flag",
    [
        ("adapt", ["--head-steps", "4"], "--head-learning-rate"),
        ("adapt", ["--head-steps", "0"], "--adapt-learning-rate"),
        ("finetune", [], "--learning-rate"),
    ],
)
def test_a_diverged_run_is_one_line_naming_its_flag(
    cli, tmp_path, source, monkeypatch, command, stage_flags, flag
):
    """One divergence policy: a non-finite loss at step 2 of any stage
    ends the command with one line naming that stage's learning-rate flag
    and exit code 1 (fit's own case is in test_fit.py)."""
    from kerasbert import finetune
    from kerasbert.training import callbacks

    seen = callbacks.DivergenceGuard.on_train_batch_end

    def poisoned(self, batch, logs=None):
        if self.counter.step == 2:
            logs = {**(logs or {}), "loss": float("nan")}
        seen(self, batch, logs)

    monkeypatch.setattr(
        callbacks.DivergenceGuard, "on_train_batch_end", poisoned
    )
    common = [
        "--model",
        source,
        "--train",
        fixture("source_train.tsv"),
        "--output-dir",
        tmp_path / "out",
        "--batch-size",
        "16",
        "--max-length",
        "64",
        "--quiet",
    ]
    if command == "adapt":
        argv = [
            *common,
            *stage_flags,
            "--adapt-steps",
            "4",
            "--adapt-batch-size",
            "8",
            "--adapt-sequence-length",
            "32",
        ]
        code, _, err = cli(adapt.main, argv)
    else:
        code, _, err = cli(finetune.main, common)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "training diverged at step 2" in lines[0]
    assert lines[0].endswith(f"try a lower {flag}"), lines[0]


def test_adapt_masks_at_its_mask_rate():
    """--mask-rate reaches adaptation's corpus: its rate and the room for
    predictions (BERT's 15% of 128 is the default 20)."""
    from kerasbert.config import AdaptConfig, FinetuneConfig
    from kerasbert.training.adapt import corpus_config

    cfg = FinetuneConfig(train=fixture("source_train.tsv"))
    for seq, rate, room in ((128, 0.15, 20), (128, 0.3, 39), (32, 0.3, 11)):
        data = corpus_config(
            AdaptConfig(adapt_sequence_length=seq), cfg, "tok", rate
        )
        assert (data.mask_rate, data.max_predictions) == (rate, room)


def test_adapt_refuses_a_bad_mask_rate(cli, tmp_path, source):
    code, _, err = cli(
        adapt.main,
        [
            "--model",
            source,
            "--train",
            fixture("source_train.tsv"),
            "--mask-rate",
            "1.5",
            "--output-dir",
            tmp_path / "out",
        ],
    )
    assert code == 2 and "--mask-rate" in err, err
    assert not (tmp_path / "out").exists()


def test_adapt_on_unlabelled_texts_of_their_own(cli, tmp_path, source):
    """--unlabelled: the adaptation reads those texts (labels unused),
    fine-tuning --train's; a bad one is refused before anything runs."""
    out = tmp_path / "out"
    argv = [
        "--model",
        str(source),
        "--unlabelled",
        fixture("emotion_train.txt"),
        "--train",
        fixture("source_train.tsv"),
        "--head-steps",
        "2",
        "--adapt-steps",
        "2",
        "--adapt-batch-size",
        "8",
        "--adapt-sequence-length",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-length",
        "64",
        "--output-dir",
        str(out),
        "--quiet",
    ]
    missing = [*argv]
    missing[3] = str(tmp_path / "nothing.txt")
    code, _, err = cli(adapt.main, missing)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: --unlabelled: "), lines[0]
    assert not out.exists()

    code, _, err = cli(adapt.main, argv)
    assert code == 0, err
    with open(out / "adapted" / "config.json") as f:
        data = json.load(f)["data"]
    assert data["corpus"] == fixture("emotion_train.txt")
    assert data["corpus_format"] == "semicolon"
    with open(out / "classifier" / "config.json") as f:
        assert json.load(f)["labels"] == ["tweet", "wiki"]  # --train's
