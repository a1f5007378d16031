"""The raw-text SavedModel of a classifier agrees with the Python path.

Python path: `Tokenizer.encode_batch` -> `packing.pack` -> the Keras model.
Graph path: the exported `serving_default` / `tokenize` signatures.
Texts: the real sentences of tests/fixtures (English with accents, CJK and
numbers; emotion; CoLA; Korean Wikipedia), their long paragraphs for
truncation, and a few constructed normaliser edge cases.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kerasbert.data.packing import TRUNCATIONS, pack

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent
LABELS = ["sadness", "joy", "surprise"]
MAX_LENGTH = 24

# Constructed: what the BERT normaliser must get right beyond the fixtures.
EDGE_CASES = [
    "café naïve Zürich",
    "CAFÉ NAÏVE ZÜRICH",
    "Crème Brûlée à la Ångström",
    "ΣΑΣ ΟΔΥΣΣΕΥΣ İstanbul STRASSE straße ǅemal",
    "the [MASK] sat[SEP]down [mask] [CLS][UNK]x [unused1]",
    "tab\there\nnew\r\nline\u00a0nbsp\u3000wide\u2003em",
    "x\x00y \x0bz\x1f",
    "zero\u200bwidth soft\u00adhyphen bom\ufeff repl\ufffd",
    "",
    "   ",
    "漢字かな交じり文、中文。",
    "한국어 문장입니다. 서울특별시!",
    "e\u0301 ﬁ ①",
    "a" * 99 + " " + "b" * 101 + " " + "가" * 100 + " " + "나" * 101,
    "12,345.67 $9.99 3½ 10% #hashtag @user :-) <3 http://x.org/a?b=c",
]


def real_texts():
    """Fixture sentences, then Korean Wikipedia lines (some paragraphs)."""
    english = (FIXTURES / "sentences.txt").read_text("utf-8").splitlines()
    korean = [
        line
        for line in (FIXTURES / "kowiki_sample.txt")
        .read_text("utf-8")
        .splitlines()
        if line.strip() and not line.startswith(("<doc", "</doc"))
    ]
    return english + korean[:90]


def long_texts():
    """WikiText paragraphs: hundreds of tokens, so every mode truncates."""
    lines = (FIXTURES / "wikitext_sample.raw").read_text("utf-8").splitlines()
    return [line for line in lines if len(line) > 600][:12]


@pytest.fixture(scope="module")
def tokenizer():
    from kerasbert.text.tokenizer import train_wordpiece

    return train_wordpiece(
        real_texts() + long_texts() + EDGE_CASES, vocab_size=600, progress=False
    )


def make_classifier(tokenizer):
    from kerasbert.modeling import BertBackbone, BertClassifier

    backbone = BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=32,
    )
    return BertClassifier(backbone, num_classes=len(LABELS))


def write_model_dir(directory, model, tokenizer, *, pair, truncation):
    """What `python -m kerasbert.finetune` writes (the parts export reads)."""
    os.makedirs(directory, exist_ok=True)
    tokenizer.save(os.path.join(directory, "tokenizer"))
    model.save(os.path.join(directory, "model.keras"))
    config = {
        "model": {},
        "labels": LABELS,
        "pair": pair,
        "finetune": {"max_length": MAX_LENGTH, "truncation": truncation},
    }
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)


def python_path(model, tokenizer, texts, pairs=None, truncation="head"):
    """(packed token ids per text, float64 probabilities)."""
    ids_a = tokenizer.encode_batch(texts)
    ids_b = tokenizer.encode_batch(pairs) if pairs else [None] * len(texts)
    packed = [
        pack(
            a,
            b,
            max_length=MAX_LENGTH,
            truncation=truncation,
            cls_id=tokenizer.cls_id,
            sep_id=tokenizer.sep_id,
        )
        for a, b in zip(ids_a, ids_b, strict=True)
    ]
    width = max(len(ids) for ids, _ in packed)
    x = {
        k: np.zeros((len(packed), width), "int32")
        for k in ("token_ids", "segment_ids", "padding_mask")
    }
    x["token_ids"][:] = tokenizer.pad_id
    for i, (ids, segments) in enumerate(packed):
        x["token_ids"][i, : len(ids)] = ids
        x["segment_ids"][i, : len(ids)] = segments
        x["padding_mask"][i, : len(ids)] = 1
    logits = np.asarray(model.predict(x, batch_size=128, verbose=0), "float64")
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return [ids for ids, _ in packed], probs / probs.sum(1, keepdims=True)


def check_agrees(loaded, model, tokenizer, texts, pairs, truncation):
    import tensorflow as tf

    inputs = {"text": tf.constant(texts)}
    if pairs is not None:
        inputs["text_pair"] = tf.constant(pairs)
    want_ids, want_probs = python_path(
        model, tokenizer, texts, pairs, truncation
    )
    features = loaded.signatures["tokenize"](**inputs)
    mask = features["padding_mask"].numpy().astype(bool)
    got_ids = [
        row[m].tolist()
        for row, m in zip(features["token_ids"].numpy(), mask, strict=True)
    ]
    assert got_ids == want_ids
    out = loaded.signatures["serving_default"](**inputs)
    np.testing.assert_allclose(
        out["probabilities"].numpy(), want_probs, atol=1e-5, rtol=0
    )
    label_ids = out["label_ids"].numpy()
    # argmax of nearly equal logits may differ; elsewhere it must agree.
    top2 = np.sort(want_probs, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    np.testing.assert_array_equal(label_ids[clear], want_probs.argmax(1)[clear])
    assert [s.decode() for s in out["labels"].numpy()] == [
        LABELS[i] for i in label_ids
    ]


@pytest.mark.parametrize(
    "lowercase,strip_accents",
    [(True, None), (False, None), (True, False), (False, True)],
)
def test_graph_tokenizer_equals_python(lowercase, strip_accents):
    import tensorflow as tf

    from kerasbert.serving.text_classifier import graph_tokenizer
    from kerasbert.text.tokenizer import train_wordpiece

    texts = real_texts() + long_texts() + EDGE_CASES
    # Trained on the texts themselves: every character has an id, so a
    # normalisation difference changes ids rather than hiding in [UNK].
    variant = train_wordpiece(
        texts,
        vocab_size=600,
        lowercase=lowercase,
        strip_accents=strip_accents,
        progress=False,
    )
    got = graph_tokenizer(variant)(tf.constant(texts)).to_list()
    want = variant.encode_batch(texts)
    for text, g, w in zip(texts, got, want, strict=True):
        assert g == w, text
    assert sum(map(len, want)) > 5000  # the texts are really tokenized


def test_graph_pack_equals_packing():
    import tensorflow as tf

    from kerasbert.serving.text_classifier import graph_pack

    rng = np.random.default_rng(0)
    lengths = list(range(40)) + list(rng.integers(0, 200, 60))
    rows_a = [list(rng.integers(5, 99, n)) for n in lengths]
    rows_b = [list(rng.integers(5, 99, n)) for n in rng.permutation(lengths)]
    ragged_a, ragged_b = (
        tf.ragged.constant(rows, tf.int32) for rows in (rows_a, rows_b)
    )
    for truncation in TRUNCATIONS:
        for max_length in (4, 5, 9, 16, 64):
            for pair in (False, True):
                got = graph_pack(
                    ragged_a,
                    ragged_b if pair else None,
                    max_length=max_length,
                    truncation=truncation,
                    cls_id=1,
                    sep_id=2,
                    pad_id=0,
                )
                got = {k: v.numpy() for k, v in got.items()}
                for i, a in enumerate(rows_a):
                    want = pack(
                        a,
                        rows_b[i] if pair else None,
                        max_length=max_length,
                        truncation=truncation,
                        cls_id=1,
                        sep_id=2,
                    )
                    m = got["padding_mask"][i].astype(bool)
                    assert (
                        got["token_ids"][i][m].tolist(),
                        got["segment_ids"][i][m].tolist(),
                    ) == want


@pytest.fixture(scope="module")
def exported(tokenizer, tmp_path_factory):
    """(model, SavedModel path) of a single-text classifier."""
    from kerasbert.serving.text_classifier import export_text_classifier

    model = make_classifier(tokenizer)
    path = str(tmp_path_factory.mktemp("export") / "single")
    export_text_classifier(
        model,
        tokenizer,
        path,
        labels=LABELS,
        max_length=MAX_LENGTH,
        truncation="head+tail",
    )
    return model, path


def test_saved_model_agrees_single(exported, tokenizer):
    import tensorflow as tf

    model, path = exported
    loaded = tf.saved_model.load(path)
    texts = real_texts() + long_texts() + EDGE_CASES
    check_agrees(loaded, model, tokenizer, texts, None, "head+tail")
    empty = loaded.signatures["serving_default"](
        text=tf.constant([], tf.string)
    )
    assert empty["probabilities"].shape == (0, len(LABELS))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"labels": ["a", "b"]}, "labels: 2 names"),
        ({"truncation": "middle"}, "truncation"),
        ({"max_length": 33}, "max_length: 33"),
        ({"max_length": 3, "pair": True}, "max_length: 3"),
    ],
)
def test_export_rejects_bad_settings(tokenizer, tmp_path, kwargs, message):
    from kerasbert.errors import UsageError
    from kerasbert.serving.text_classifier import export_text_classifier

    settings = {"labels": LABELS, "max_length": MAX_LENGTH, **kwargs}
    with pytest.raises(UsageError, match=message):
        export_text_classifier(
            make_classifier(tokenizer),
            tokenizer,
            str(tmp_path / "x"),
            **settings,
        )
    assert not os.listdir(tmp_path)


def test_loads_without_kerasbert(exported, tmp_path):
    """TensorFlow + tensorflow-text alone load and run the SavedModel."""
    import tensorflow as tf

    _, path = exported
    texts = ["café naïve Zürich", "서울특별시는 대한민국의 수도이다."]
    script = f"""
import json, sys
sys.modules["kerasbert"] = None  # any import of it fails
sys.path = [p for p in sys.path if p and not p.startswith({str(REPO)!r})]
import tensorflow as tf, tensorflow_text  # noqa: F401  registers the ops
serve = tf.saved_model.load({path!r}).signatures["serving_default"]
out = serve(text=tf.constant({texts!r}))
print(json.dumps({{"probabilities": out["probabilities"].numpy().tolist(),
                  "labels": [s.decode() for s in out["labels"].numpy()]}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    want = tf.saved_model.load(path).signatures["serving_default"](
        text=tf.constant(texts)
    )
    np.testing.assert_allclose(
        got["probabilities"], want["probabilities"].numpy(), atol=1e-6
    )
    assert got["labels"] == [s.decode() for s in want["labels"].numpy()]


def test_export_cli_pair_task(tokenizer, tmp_path):
    """`python -m kerasbert.export` on a fine-tuned pair classifier writes
    the raw-text SavedModel; it agrees with the Python path on pairs."""
    import tensorflow as tf

    from kerasbert.export import main

    model = make_classifier(tokenizer)
    write_model_dir(
        tmp_path / "run", model, tokenizer, pair=True, truncation="tail"
    )
    out = tmp_path / "served"
    assert main([str(tmp_path / "run"), "--output", str(out)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["run", "served"]  # no temp left
    loaded = tf.saved_model.load(str(out))
    assert set(
        loaded.signatures["serving_default"].structured_input_signature[1]
    ) == {"text", "text_pair"}
    texts = real_texts() + long_texts()
    pairs = texts[1:] + texts[:1]
    # The ids of both sides count: long A with short B, and the reverse.
    check_agrees(loaded, model, tokenizer, texts, pairs, "tail")


@pytest.mark.parametrize(
    "case", ["no_model_dir", "output_is_file", "not_wordpiece_config"]
)
def test_export_cli_bad_input(tokenizer, tmp_path, capsys, case):
    from kerasbert.errors import run_cli
    from kerasbert.export import main

    run, out = tmp_path / "run", tmp_path / "out"
    if case == "no_model_dir":
        args, expect = [str(run), "--output", str(out)], "no such model"
    elif case == "output_is_file":
        write_model_dir(
            run,
            make_classifier(tokenizer),
            tokenizer,
            pair=False,
            truncation="head",
        )
        out.write_text("keep me")
        args, expect = [str(run), "--output", str(out)], "--output"
    else:  # a labels entry but no finetune settings
        write_model_dir(
            run,
            make_classifier(tokenizer),
            tokenizer,
            pair=False,
            truncation="head",
        )
        (run / "config.json").write_text(json.dumps({"labels": LABELS}))
        args, expect = [str(run), "--output", str(out)], "config.json"
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0]
    assert sorted(os.listdir(tmp_path)) == before
    if case == "output_is_file":
        assert out.read_text() == "keep me"


def test_mixed_precision_sentencepiece_model(tmp_path, dtype_policy):
    """A mixed_bfloat16 classifier with a SentencePiece tokenizer serves in
    float32 and agrees with its float32 copy."""
    import tensorflow as tf

    from kerasbert.serving.export import float32_copy
    from kerasbert.serving.text_classifier import export_text_classifier

    tokenizer = spm_tokenizer(tmp_path)
    dtype_policy("mixed_bfloat16")
    model = make_classifier(tokenizer)
    dtype_policy("float32")
    path = str(tmp_path / "served")
    export_text_classifier(
        model, tokenizer, path, labels=LABELS, max_length=MAX_LENGTH
    )
    loaded = tf.saved_model.load(path)
    assert {v.dtype for v in loaded.weights} == {tf.float32}
    texts = real_texts()[::5] + long_texts() + EDGE_CASES
    check_agrees(loaded, float32_copy(model), tokenizer, texts, None, "head")


def spm_tokenizer(tmp_path):
    """A SentencePiece model of the emotion-comment layout (as in
    tests/test_tokenizer.py), trained on the test texts."""
    from kerasbert.text.tokenizer import Tokenizer

    spm = pytest.importorskip("sentencepiece")
    prefix = str(tmp_path / "spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(real_texts() + long_texts() + EDGE_CASES),
        model_prefix=prefix,
        vocab_size=1000,
        model_type="unigram",
        unk_id=0,
        pad_id=1,
        bos_id=-1,
        eos_id=-1,
        user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
        minloglevel=2,
    )
    return Tokenizer.load(prefix + ".model")


def test_graph_tokenizer_sentencepiece(tmp_path):
    import tensorflow as tf

    from kerasbert.serving.text_classifier import graph_tokenizer

    tokenizer = spm_tokenizer(tmp_path)
    texts = real_texts() + long_texts() + EDGE_CASES
    got = graph_tokenizer(tokenizer)(tf.constant(texts)).to_list()
    for text, g, w in zip(
        texts, got, tokenizer.encode_batch(texts), strict=True
    ):
        assert g == w, text
