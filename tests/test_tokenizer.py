import os

import numpy as np
import pytest

from kerasbert.errors import UsageError
from kerasbert.text import readers
from kerasbert.text.tokenizer import Tokenizer, train_wordpiece

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
TEXTS = [
    "The lobster [MASK] is blue, Ünique and héllo!",
    "Homarus gammarus is a large crustacean.",
    "[CLS] 우리 [SEP] x",
]


def fixture_lines(name):
    documents = readers.iter_documents(os.path.join(FIXTURES, name))
    return [p for d in documents for p in d]


@pytest.fixture(scope="module")
def english():
    return train_wordpiece(
        fixture_lines("wikitext_sample.raw"), 300, progress=False
    )


def test_trained_special_ids(english):
    t = english
    assert (t.pad_id, t.unk_id, t.cls_id, t.sep_id, t.mask_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    assert [t.id_to_token(i) for i in range(5)] == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    assert t.special_ids == [0, 1, 2, 3, 4]
    assert t.vocabulary_size == 300
    assert t.token_to_id("[MASK]") == 4 and t.token_to_id("nope##") is None


def test_encode_adds_no_specials_but_keeps_literal_mask(english):
    ids = english.encode("the lobster [MASK] is blue")
    assert ids[0] != english.cls_id and ids[-1] != english.sep_id
    assert ids.count(english.mask_id) == 1
    assert english.decode(ids) == "the lobster [MASK] is blue"
    assert english.encode_batch(TEXTS) == [english.encode(t) for t in TEXTS]
    # Lower-cased and accent-stripped like uncased BERT.
    assert english.encode("BLUE") == english.encode("blue")
    assert english.encode("é") == english.encode("e")


@pytest.mark.parametrize("lowercase", [True, False])
def test_encode_flat_fast_route_matches_encode_batch(english, lowercase):
    """tensorflow-text takes printable ASCII without a special-token
    literal; HF takes the rest; the ids are encode_batch's either way."""
    pytest.importorskip("tensorflow_text")
    tokenizer = Tokenizer(english._backend, "wordpiece", lowercase=lowercase)
    if not lowercase:  # a cased normaliser around the same vocabulary
        from kerasbert.text.tokenizer import _wordpiece_pipeline

        tokenizer = Tokenizer(
            _wordpiece_pipeline(english._backend.get_vocab(), False, False),
            "wordpiece",
            lowercase=False,
            strip_accents=False,
        )
    rng = np.random.default_rng(0)
    printable = [chr(c) for c in range(32, 127)]
    alphabet = (
        printable
        + list("aeiou     ")
        + ["[MASK]", "[UNK]", "é", "\t", "\x00", "—", "″", "ﬁ"]
    )
    texts = fixture_lines("wikitext_sample.raw")[:200]
    texts += printable + [f"ab{c}cd Ef" for c in printable]
    # HF's 100-character word limit against tensorflow-text's 100 bytes.
    texts += ["the" + "e" * n for n in (95, 96, 97, 98)] + ["", " "]
    texts += [
        "".join(rng.choice(alphabet, rng.integers(0, 40))) for _ in range(2000)
    ]
    ids, lengths = tokenizer.encode_flat(texts, fast=True)
    want = tokenizer.encode_batch(texts)
    assert ids.dtype == np.int32 and lengths.tolist() == list(map(len, want))
    assert ids.tolist() == [i for w in want for i in w]
    assert tokenizer._fast_wordpiece() is not None  # the route was taken
    slow, slow_lengths = tokenizer.encode_flat(texts)
    assert (slow == ids).all() and (slow_lengths == lengths).all()


def test_encode_flat_keeps_odd_vocabularies_on_hf(tmp_path):
    """A token with a space would match as one piece in tensorflow-text;
    such a vocabulary never takes the fast route."""
    pytest.importorskip("tensorflow_text")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text(
        "\n".join(
            [
                "[PAD]",
                "[UNK]",
                "[CLS]",
                "[SEP]",
                "[MASK]",
                "the",
                "a b",
                "##s",
                "cat",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    tokenizer = Tokenizer.load(str(vocab))
    texts = ["the cats", "a b", "dog"]
    ids, lengths = tokenizer.encode_flat(texts, fast=True)
    assert ids.tolist() == [5, 8, 7, 1, 1, 1]
    assert lengths.tolist() == [3, 2, 1]
    assert tokenizer._fast_wordpiece() is None


def test_save_loads_in_transformers_with_same_ids(english, tmp_path):
    transformers = pytest.importorskip("transformers")
    english.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    hf = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    assert len(hf) == english.vocabulary_size
    assert hf.mask_token_id == english.mask_id
    for text in TEXTS:
        assert hf(text, add_special_tokens=False)[
            "input_ids"
        ] == english.encode(text)
    pair = hf("a b", "c")["input_ids"]
    assert pair == [2, *english.encode("a b"), 3, *english.encode("c"), 3]


def test_load_dir_and_vocab_txt(english, tmp_path):
    english.save(str(tmp_path))
    for path in (tmp_path, tmp_path / "vocab.txt"):
        loaded = Tokenizer.load(str(path))
        assert loaded.fingerprint() == english.fingerprint()
        assert loaded.encode_batch(TEXTS) == english.encode_batch(TEXTS)
    # A bare vocab.txt: casing guessed from the vocabulary (all lower here).
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "vocab.txt").write_text((tmp_path / "vocab.txt").read_text())
    assert Tokenizer.load(str(bare / "vocab.txt")).lowercase is True


def test_korean_vocabulary_keeps_syllables(tmp_path):
    transformers = pytest.importorskip("transformers")
    lines = fixture_lines("kowiki_sample.txt")[:60]
    t = train_wordpiece(
        lines, 400, lowercase=True, strip_accents=False, progress=False
    )
    ids = t.encode("전기장은 전하")
    assert "".join(t.id_to_token(i).lstrip("#") for i in ids) == "전기장은전하"
    t.save(str(tmp_path))
    hf = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    for text in ["전기장은 전하가 받는 힘이다.", "Miami 말린스 [MASK]."]:
        assert hf(text, add_special_tokens=False)["input_ids"] == t.encode(text)


def test_word_start_mask(english):
    mask = english.word_start_mask()
    assert mask.shape == (english.vocabulary_size,) and mask.dtype == bool
    for i in range(english.vocabulary_size):
        token = english.id_to_token(i)
        assert mask[i] == (not token.startswith("##")), token
    assert mask[english.special_ids].all()
    assert not mask.all()


def test_vocabulary_without_special_tokens(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n##s\n")
    with pytest.raises(
        UsageError,
        match=r"vocab\.txt: vocabulary has no "
        r"\[MASK\] token",
    ):
        Tokenizer.load(str(vocab))
    vocab.write_text("[PAD]\n[UNK]\n[MASK]\n[SEP]\nthe\n")
    with pytest.raises(UsageError, match=r"has no \[CLS\]"):
        Tokenizer.load(str(vocab))
    vocab.write_text("▁the\t-1.0\n▁a\t-2.0\n")
    with pytest.raises(UsageError, match="SentencePiece"):
        Tokenizer.load(str(vocab))
    with pytest.raises(UsageError, match="no such tokenizer"):
        Tokenizer.load(str(tmp_path / "missing"))


def train_spm(tmp_path, user_symbols=("[CLS]", "[SEP]", "[MASK]")):
    spm = pytest.importorskip("sentencepiece")
    prefix = str(tmp_path / "spm")
    # The layout of the emotion-comment models: unk 0, pad 1, no BOS/EOS,
    # then [CLS] [SEP] [MASK] as user-defined symbols.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(fixture_lines("wikitext_sample.raw")),
        model_prefix=prefix,
        vocab_size=200,
        model_type="unigram",
        unk_id=0,
        pad_id=1,
        bos_id=-1,
        eos_id=-1,
        user_defined_symbols=list(user_symbols),
        minloglevel=2,
    )
    return prefix + ".model"


def test_sentencepiece_model(tmp_path):
    t = Tokenizer.load(train_spm(tmp_path))
    assert t.kind == "sentencepiece" and t.vocabulary_size == 200
    assert (t.unk_id, t.pad_id, t.cls_id, t.sep_id, t.mask_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    ids = t.encode("the lobster [MASK] is blue")
    assert ids.count(4) == 1
    # No stray bare "▁" piece in front of [MASK].
    assert t.id_to_token(ids[ids.index(4) - 1]) != "▁"
    assert t.decode([i for i in ids if i != 4]).split() == [
        "the",
        "lobster",
        "is",
        "blue",
    ]
    mask = t.word_start_mask()
    assert mask[t.special_ids].all()
    for i in range(5, t.vocabulary_size):
        assert mask[i] == t.id_to_token(i).startswith("▁")
    t.save(str(tmp_path / "saved"))
    again = Tokenizer.load(str(tmp_path / "saved"))
    assert again.fingerprint() == t.fingerprint()
    assert again.encode_batch(TEXTS) == t.encode_batch(TEXTS)


def test_sentencepiece_without_mask(tmp_path):
    with pytest.raises(
        UsageError,
        match=r"spm\.model: vocabulary has no "
        r"\[MASK\] token",
    ):
        Tokenizer.load(train_spm(tmp_path, ("[CLS]", "[SEP]")))


@pytest.mark.slow
def test_emotion_comment_model():
    path = os.path.join(
        SHARED, "emotion_comment_tokenizers", "mini_emotion_tokenizer_7k.model"
    )
    if not os.path.exists(path):
        pytest.skip("shared/data not present")
    t = Tokenizer.load(path)
    assert t.vocabulary_size == 7000
    assert (t.unk_id, t.pad_id, t.cls_id, t.sep_id, t.mask_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    ids = t.encode("i feel so happy and loved today")
    assert [t.id_to_token(i) for i in ids] == [
        "▁i",
        "▁feel",
        "▁so",
        "▁happy",
        "▁and",
        "▁loved",
        "▁today",
    ]
    assert np.all(t.word_start_mask()[ids])
