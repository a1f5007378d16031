import json
import os
import unicodedata
import warnings

import pytest

from kerasbert.errors import UsageError
from kerasbert.text import readers, sentences

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
KOWIKI = os.path.join(FIXTURES, "kowiki_sample.txt")
WIKITEXT = os.path.join(FIXTURES, "wikitext_sample.raw")


def write(path, text, mode="w"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if mode == "wb":
        with open(path, "wb") as f:
            f.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return str(path)


def docs(path, **kwargs):
    return list(readers.iter_documents(str(path), **kwargs))


# Readers.


def test_text_blank_line_separates_documents(tmp_path):
    p = write(tmp_path / "a.txt", "\ufeffone\r\ntwo\n\n \nthree\n\n\nfour")
    assert docs(p) == [["one", "two"], ["three"], ["four"]]
    assert docs(p, one_doc_per_line=True) == [
        ["one"],
        ["two"],
        ["three"],
        ["four"],
    ]


def test_folder_is_recursive_and_sorted(tmp_path):
    write(tmp_path / "b" / "z.txt", "b-z\n")
    write(tmp_path / "b" / "a.txt", "b-a\n")
    write(tmp_path / "a.txt", "a\n")
    assert docs(tmp_path, corpus_format="text") == [["a"], ["b-a"], ["b-z"]]


def test_wikitext_titles_start_documents_and_sections_are_dropped(tmp_path):
    p = write(
        tmp_path / "w.raw",
        (
            " \n = First = \n \n Intro , with 3 @.@ 1 and red @-@ tipped .\n"
            " = = Part = = \n \n 1 @,@ 000 ( one ) people 's homes .\n"
            " = = = Deeper = = = \n Last .\n"
            " = Second = \n Other .\n"
        ),
    )
    assert docs(p, corpus_format="wikitext") == [
        [
            "Intro, with 3.1 and red-tipped.",
            "1,000 (one) people's homes.",
            "Last.",
        ],
        ["Other."],
    ]


def test_wikitext_fixture_has_three_articles():
    found = docs(WIKITEXT)  # auto-detected
    assert len(found) == 3
    assert found[0][0].startswith("Homarus gammarus, known as")
    assert not any("@" in p or p.startswith(" =") for d in found for p in d)


def test_wikiextractor_reader(tmp_path):
    p = write(
        tmp_path / "wiki_00",
        (
            '<doc id="1" url="u" title="제목">\n제목\n\n첫 문단이다.\n\n'
            "둘째 문단이다.\n</doc>\n"
            '<doc id="2" url="u" title="빈 글">\n빈 글\n\n</doc>\n'
            '<doc id="3" url="u" title="셋">\n셋\n셋째 글.\n</doc>\n'
        ),
    )
    assert readers.detect_format(p) == "wikiextractor"
    assert docs(p) == [["첫 문단이다.", "둘째 문단이다."], ["셋째 글."]]


def test_wikiextractor_fixture():
    found = docs(KOWIKI)
    assert len(found) == 12
    # The title line after <doc> is dropped, the body stays.
    assert found[0][0] != "마이애미 말린스"
    assert found[0][0].startswith("마이애미 말린스")
    # 한식's whole body is one line equal to its title: only the first goes.
    assert found[1] == ["한식"]


def test_jsonl_reader_and_errors(tmp_path):
    p = write(
        tmp_path / "c.jsonl",
        "\n".join(
            json.dumps(r)
            for r in [
                {"body": "a one.\nb two.", "id": 1},
                {"body": ""},
                {"body": "c three."},
            ]
        ),
    )
    assert docs(p, text_field="body") == [["a one.", "b two."], ["c three."]]
    with pytest.raises(UsageError, match=r"c\.jsonl: line 1: no field 'text'"):
        docs(p)
    bad = write(tmp_path / "bad.jsonl", '{"text": "x"}\n{oops\n')
    with pytest.raises(UsageError, match=r"bad\.jsonl: line 2: not valid"):
        docs(bad)


def test_hf_local_files(tmp_path):
    pytest.importorskip("datasets")
    csv = write(
        tmp_path / "d.csv",
        'text,label\n"first doc.",0\n"second doc. more.",1\n',
    )
    assert readers.detect_format(csv) == "hf"
    assert docs(csv) == [["first doc."], ["second doc. more."]]
    js = write(
        tmp_path / "d.json",
        json.dumps([{"text": "x one."}, {"text": "y two."}]),
    )
    assert docs(js) == [["x one."], ["y two."]]
    with pytest.raises(UsageError, match=r"d\.csv: example 0 has no field"):
        docs(csv, corpus_format="hf", text_field="body")


def test_hf_wikitext_lines_are_regrouped(tmp_path):
    pytest.importorskip("datasets")
    rows = [
        {"text": t}
        for t in [
            "",
            " = A = \n",
            "",
            " x @-@ y .\n",
            " = = S = = \n",
            " z .\n",
            " = B = \n",
            " w .\n",
        ]
    ]
    p = write(tmp_path / "w.jsonl", "\n".join(json.dumps(r) for r in rows))
    assert docs(p, corpus_format="hf") == [["x-y.", "z."], ["w."]]


def test_auto_detection(tmp_path):
    assert (
        readers.detect_format(write(tmp_path / "a.txt", "\nhello\n")) == "text"
    )
    assert (
        readers.detect_format(write(tmp_path / "b", " \n = T = \n"))
        == "wikitext"
    )
    assert (
        readers.detect_format(write(tmp_path / "c.json", '{"a": 1}\n'))
        == "jsonl"
    )
    assert readers.detect_format(write(tmp_path / "d.jsonl", "")) == "jsonl"


def test_bundled_corpus_is_default():
    first = next(readers.iter_documents(None))
    assert first[0].startswith("Homarus gammarus")


def test_bad_paths_and_bytes(tmp_path):
    with pytest.raises(UsageError, match="nope.txt: no such file"):
        docs(tmp_path / "nope.txt")
    p = write(
        tmp_path / "latin1.txt",
        "ok line\ncaf\xe9\n".encode("latin-1"),
        mode="wb",
    )
    # "ok line\n" is 8 bytes, "caf" 3 more: the bad byte is at offset 11.
    with pytest.raises(UsageError, match=r"latin1\.txt: not UTF-8 at byte 11"):
        docs(p)
    with pytest.raises(UsageError, match="--corpus-format: unknown"):
        docs(p, corpus_format="xml")
    with pytest.raises(UsageError, match="--language: unknown"):
        sentences.resolve_language([], "fr")


# Cleaning.


def test_clean_text_normalises_and_strips_controls():
    decomposed = unicodedata.normalize("NFD", "café 한국")
    assert clean(decomposed) == "café 한국"
    assert clean("a\x00b\u200bc\td\n\ne\x7f") == "abc d e"
    # NFC keeps compatibility jamo as typed (NFKC would not).
    assert clean("ㅋㅋ") == "\u314b\u314b"


def clean(text, web=False):
    return sentences.clean_text(text, web)


def test_clean_web_text():
    text = (
        "좋아요ㅋㅋㅋㅋㅋ 😀👍🏽 see https://x.com/a?b=1 or www.y.org, "
        "mail me@ex.com!!!!! 1000 wow..."
    )
    assert clean(text, True) == "좋아요ㅋㅋ see or , mail !! 1000 wow..."
    assert clean(text) == unicodedata.normalize("NFC", text)


def test_detect_language():
    ko = [p for d in docs(KOWIKI) for p in d]
    en = [p for d in docs(WIKITEXT) for p in d]
    assert sentences.detect_language(ko) == "ko"
    assert sentences.detect_language(en) == "en"
    language, it = sentences.resolve_language(iter([["한국어 문장."]] * 3))
    assert language == "ko" and len(list(it)) == 3


# Sentence splitting.

EN = "Dr. Smith arrived at 5 p.m. on Friday. He left early! Did he?"


@pytest.fixture
def fresh_punkt(monkeypatch):
    monkeypatch.setattr(sentences, "_punkt", None)
    monkeypatch.setattr(sentences, "_warned_no_punkt", False)


def test_split_english_with_punkt(fresh_punkt):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sentences.split_sentences([EN, "One more."], "en") == [
            "Dr. Smith arrived at 5 p.m. on Friday.",
            "He left early!",
            "Did he?",
            "One more.",
        ]


def test_bundled_punkt_is_the_fallback(fresh_punkt, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", ["/nonexistent"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(sentences.split_sentences([EN], "en")) == 3


def test_split_english_without_punkt_warns_once(fresh_punkt, monkeypatch):
    from nltk.tokenize import punkt

    def missing(*args, **kwargs):
        raise LookupError("punkt_tab not found")

    monkeypatch.setattr(punkt.PunktTokenizer, "__init__", missing)
    with pytest.warns(UserWarning, match="rule-based") as record:
        first = sentences.split_sentences([EN], "en")
        second = sentences.split_sentences(
            ["Mr. A. Brown came. Then he went."], "en"
        )
    assert len(record) == 1
    assert first == [
        "Dr. Smith arrived at 5 p.m. on Friday.",
        "He left early!",
        "Did he?",
    ]
    assert second == ["Mr. A. Brown came.", "Then he went."]


def test_split_korean():
    pytest.importorskip("kss")
    text = (
        "지미 카터는 조지아주에서 태어났다. 조지아 공과대학교를 졸업하였다. "
        "또한 이 때 두 사람의 만남을 주선했다. 하지만 그는 곧 사망했다."
    )
    assert sentences.split_sentences([text, "둘째 문단이다."], "ko") == [
        "지미 카터는 조지아주에서 태어났다.",
        "조지아 공과대학교를 졸업하였다.",
        "또한 이 때 두 사람의 만남을 주선했다.",
        "하지만 그는 곧 사망했다.",
        "둘째 문단이다.",
    ]
    # One paragraph: kss returns a flat list then, not a list of lists.
    assert sentences.split_sentences([text], "ko")[1:] == [
        "조지아 공과대학교를 졸업하였다.",
        "또한 이 때 두 사람의 만남을 주선했다.",
        "하지만 그는 곧 사망했다.",
    ]
    assert list(
        sentences.iter_sentences([["첫 문장이다. 둘째 문장이다."]], "ko")
    ) == [["첫 문장이다.", "둘째 문장이다."]]


def test_iter_sentences_drops_empty_documents():
    documents = [["\x00 ", "  "], ["First one. Second one."], ["Third."]]
    assert list(sentences.iter_sentences(documents, "en")) == [
        ["First one.", "Second one."],
        ["Third."],
    ]
