import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from kerasbert.config import DataConfig
from kerasbert.data import corpus as corpus_prep
from kerasbert.data.corpus import TokenCorpus, load_token_cache, prepare_corpus
from kerasbert.errors import UsageError
from kerasbert.text import readers, sentences
from kerasbert.text.tokenizer import Tokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Four short documents; blank lines separate them.
TEXT = """The cat sat on the mat. It was happy.
The dog barked.

Birds fly south in winter. They return in spring!

Fish swim. Frogs jump. Snails crawl slowly.

A last short document with one sentence.
"""


# TokenCorpus.

DOCS = [[[5, 6, 7], [8]], [], [[9], [], [10, 11]], [[12, 13, 14, 15]]]


def test_from_documents_drops_empties():
    c = TokenCorpus.from_documents(DOCS)
    assert (c.num_documents, c.num_sentences, c.num_tokens) == (3, 5, 11)
    assert c.tokens.dtype == np.int32
    assert c.sentence_offsets.dtype == c.document_offsets.dtype == np.int64
    assert c.tokens.tolist() == list(range(5, 16))
    assert c.sentence_offsets.tolist() == [0, 3, 4, 5, 7, 11]
    assert c.document_offsets.tolist() == [0, 2, 4, 5]


def as_lists(c):
    so, do = c.sentence_offsets, c.document_offsets
    return [
        [c.tokens[so[s] : so[s + 1]].tolist() for s in range(do[d], do[d + 1])]
        for d in range(c.num_documents)
    ]


def test_token_writer_matches_from_documents(tmp_path):
    """The cache writer drops empty sentences and documents as
    from_documents does, across several `add` calls."""
    writer = corpus_prep._TokenWriter(str(tmp_path / "tokens"))
    for docs in (DOCS[:2], DOCS[2:]):
        sentences = [s for d in docs for s in d]
        writer.add(
            np.array([i for s in sentences for i in s], np.int32),
            [len(s) for s in sentences],
            [len(d) for d in docs],
        )
    writer.finish({})
    written = load_token_cache(str(tmp_path / "tokens"))
    expected = TokenCorpus.from_documents(DOCS)
    assert as_lists(written) == as_lists(expected)
    assert (
        written.sentence_offsets.tolist() == expected.sentence_offsets.tolist()
    )


def test_select_documents():
    c = TokenCorpus.from_documents(DOCS)
    kept = [[s for s in d if s] for d in DOCS if any(d)]
    for ids in ([2, 0], [1], [0, 1, 2], [2, 2], []):
        picked = c.select_documents(ids)
        assert as_lists(picked) == [kept[i] for i in ids]
        assert picked.tokens.dtype == np.int32


# prepare_corpus.


def make_config(tmp_path, text=TEXT, name="corpus.txt", **kwargs):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return DataConfig(
        corpus=str(path),
        cache_dir=str(tmp_path / "cache"),
        vocab_size=120,
        **kwargs,
    )


def cache_entries(config):
    if not os.path.isdir(config.cache_dir):
        return []
    return sorted(os.listdir(config.cache_dir))


def test_prepare_tokenizes_every_sentence(tmp_path):
    config = make_config(tmp_path)
    out = tmp_path / "tok"
    tokenizer, c = prepare_corpus(config, str(out), progress=False)
    assert isinstance(c.tokens, np.memmap)
    assert (c.num_documents, c.num_sentences) == (4, 9)
    # The same sentences through the corpus and tokenizer APIs directly.
    docs = sentences.iter_sentences(readers.iter_documents(config.corpus), "en")
    expected = [[tokenizer.encode(s) for s in d] for d in docs]
    assert as_lists(c) == expected
    assert tokenizer.decode(expected[1][1]) == "they return in spring!"
    assert Tokenizer.load(str(out)).fingerprint() == tokenizer.fingerprint()
    assert c.path.startswith(config.cache_dir)
    assert [e.split("-")[0] for e in cache_entries(config)] == [
        "tokenizer",
        "tokens",
    ]


def test_second_run_reads_only_the_cache(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    tok1, c1 = prepare_corpus(config, progress=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(Tokenizer, "encode_batch", forbidden)
    monkeypatch.setattr(corpus_prep, "train_wordpiece", forbidden)
    monkeypatch.setattr(readers, "iter_documents", forbidden)
    tok2, c2 = prepare_corpus(config, progress=False)
    assert c2.path == c1.path
    assert tok2.fingerprint() == tok1.fingerprint()
    assert as_lists(c2) == as_lists(c1)
    monkeypatch.undo()
    # Changing the corpus or a setting makes a new entry.
    with open(config.corpus, "a", encoding="utf-8") as f:
        f.write("\nOne more document here.\n")
    _, c3 = prepare_corpus(config, progress=False)
    assert c3.path != c1.path and c3.num_documents == 5


def test_given_tokenizer_and_korean(tmp_path):
    pytest.importorskip("kss")
    config = DataConfig(
        corpus=os.path.join(FIXTURES, "kowiki_sample.txt"),
        cache_dir=str(tmp_path / "cache"),
        vocab_size=1500,
    )
    tokenizer, c = prepare_corpus(config, str(tmp_path / "tok"), progress=False)
    assert c.num_documents == 12
    assert c.num_sentences > 100
    # strip_accents=None keeps Hangul syllables whole for Korean text.
    assert tokenizer.strip_accents is False
    tokens = [
        tokenizer.id_to_token(i) for i in range(tokenizer.vocabulary_size)
    ]
    assert "전기" in tokens
    assert not any("\u1100" <= ch <= "\u11ff" for t in tokens for ch in t)
    reuse = DataConfig(
        corpus=config.corpus,
        cache_dir=config.cache_dir,
        tokenizer=str(tmp_path / "tok"),
    )
    tok2, c2 = prepare_corpus(reuse, progress=False)
    assert c2.path == c.path


def test_crash_mid_write_leaves_no_cache(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    calls = []
    real = Tokenizer.encode_flat

    def crash_second_batch(self, texts, fast=False):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # like Ctrl-C during tokenization
        return real(self, texts, fast)

    monkeypatch.setattr(Tokenizer, "encode_flat", crash_second_batch)
    monkeypatch.setattr(
        corpus_prep,
        "tokenize_documents",
        _small_batches(corpus_prep.tokenize_documents),
    )
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(config, progress=False)
    # The tokenizer finished before the crash; no tokens-* or tmp-* remain.
    assert [e.split("-")[0] for e in cache_entries(config)] == ["tokenizer"]
    monkeypatch.undo()
    _, c = prepare_corpus(config, progress=False)
    assert c.num_documents == 4


def _small_batches(fn):
    def wrapper(*args, **kwargs):
        return fn(*args, **{**kwargs, "batch_chars": 1})

    return wrapper


def test_killed_run_workspace_is_removed_and_damage_rebuilt(tmp_path):
    config = make_config(tmp_path)
    os.makedirs(config.cache_dir)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = os.path.join(
        config.cache_dir, f"tmp-{socket.gethostname()}-{dead.pid}-abcd1234"
    )
    os.makedirs(os.path.join(stale, "tokens"))
    with open(os.path.join(stale, "tokens", "tokens.bin"), "wb") as f:
        f.write(b"\x01\x02")  # what a killed run leaves behind
    _, c = prepare_corpus(config, progress=False)
    assert not os.path.exists(stale)
    # A damaged entry (truncated tokens.npy) is detected and rebuilt.
    expected = as_lists(c)
    tokens_npy = os.path.join(c.path, "tokens.npy")
    np.save(tokens_npy, np.asarray(c.tokens)[:3])
    del c
    with pytest.raises(UsageError, match="does not match"):
        load_token_cache(os.path.dirname(tokens_npy))
    _, again = prepare_corpus(config, progress=False)
    assert as_lists(again) == expected


# Bad input: the API raises UsageError naming the problem; the CLI prints
# one line and exits 2. Neither leaves anything in the cache.

BAD = {
    "missing": (dict(corpus="{tmp}/nope.txt"), r"nope\.txt: no such file"),
    "empty": (dict(text=""), r"corpus\.txt: corpus is empty"),
    "blank": (dict(text=" \n\t\n \n"), r"corpus\.txt: corpus is empty"),
    "latin1": (
        dict(raw=b"good\n\ncaf\xe9\n"),
        r"corpus\.txt: not UTF-8 at byte 9",
    ),
    "one_doc": (
        dict(text="One sentence. Two sentences.\nThree.\n"),
        "corpus has 1 document; next-sentence pairs need at least 2",
    ),
    "no_mask": (
        dict(tokenizer="{tmp}/vocab.txt"),
        r"vocab\.txt: vocabulary has no \[MASK\] token",
    ),
    # The library and argparse word it differently; both name flag, value
    # and the choices.
    "format": (
        dict(corpus_format="xml"),
        r"--corpus-format: .*'xml'.*choose from",
    ),
    "language": (dict(language="fr"), r"--language: .*'fr'.*choose from"),
}


def bad_config(tmp_path, case):
    values, message = BAD[case]
    values = {
        k: v.format(tmp=tmp_path) if isinstance(v, str) else v
        for k, v in values.items()
    }
    path = tmp_path / "corpus.txt"
    if "raw" in values:
        path.write_bytes(values.pop("raw"))
    else:
        path.write_text(values.pop("text", TEXT), encoding="utf-8")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n")
    values.setdefault("corpus", str(path))
    config = DataConfig(
        cache_dir=str(tmp_path / "cache"), vocab_size=60, **values
    )
    return config, message


def no_leftovers(config):
    return not any(
        e.startswith(("tokens-", "tmp-")) for e in cache_entries(config)
    )


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_api(tmp_path, case):
    config, message = bad_config(tmp_path, case)
    with pytest.raises(UsageError, match=message):
        prepare_corpus(config, progress=False)
    assert no_leftovers(config)


def run_cli(args, tmp_path):
    env = {
        **os.environ,
        "KERASBERT_CACHE": str(tmp_path / "envcache"),
        "PYTHONPATH": ROOT,
    }
    return subprocess.run(
        [sys.executable, "-m", "kerasbert.prepare", "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_cli(tmp_path, case):
    config, message = bad_config(tmp_path, case)
    args = []
    for name in (
        "corpus",
        "corpus_format",
        "language",
        "tokenizer",
        "cache_dir",
    ):
        value = getattr(config, name)
        if value != getattr(DataConfig(), name):
            args += ["--" + name.replace("_", "-"), value]
    result = run_cli(args, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert __import__("re").search(message, lines[0])
    assert no_leftovers(config)


def test_cli_prints_counts(tmp_path):
    config = make_config(tmp_path)
    result = run_cli(
        [
            "--corpus",
            config.corpus,
            "--vocab-size",
            "120",
            "--tokenizer-out",
            str(tmp_path / "tok"),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "documents: 4\nsentences: 9\n" in result.stdout
    assert f"cache: {tmp_path / 'envcache'}" in result.stdout
    assert os.path.exists(tmp_path / "tok" / "vocab.txt")


@pytest.mark.parametrize("clean", [False, True])
def test_parallel_split_matches_sequential(tmp_path, monkeypatch, clean):
    """Forked splitting workers write the same sentence file, in order."""
    config = DataConfig(clean=clean)
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    monkeypatch.setattr(corpus_prep, "split_workers", lambda dc: 1)
    assert corpus_prep.write_sentences(config, str(one), progress=False)[1] > 2
    monkeypatch.setattr(corpus_prep, "split_workers", lambda dc: 2)
    monkeypatch.setattr(corpus_prep, "_TASK_CHARS", 20_000)  # several tasks
    corpus_prep.write_sentences(config, str(two), progress=False)
    assert one.read_text(encoding="utf-8") == two.read_text(encoding="utf-8")


def test_stream_with_workers_and_fast_route_matches_sequential(
    tmp_path, monkeypatch
):
    """A given tokenizer: splitting workers feed the tokenizer directly;
    with the pool and tensorflow-text's route the cache holds the same
    ids as one process on HF tokenizers, and the pool is gone after."""
    import multiprocessing

    pytest.importorskip("tensorflow_text")
    tokenizer_dir = str(tmp_path / "tok")
    prepare_corpus(
        DataConfig(vocab_size=2000, cache_dir=str(tmp_path / "c0")),
        tokenizer_dir,
        progress=False,
    )
    results = []
    for workers, fast in ((1, False), (2, True)):
        monkeypatch.setattr(
            corpus_prep, "split_workers", lambda dc, n=workers: n
        )
        monkeypatch.setattr(corpus_prep, "_tokenize_fast", lambda dc, f=fast: f)
        monkeypatch.setattr(corpus_prep, "_TASK_CHARS", 50_000)  # several tasks
        config = DataConfig(
            clean=True,
            tokenizer=tokenizer_dir,
            cache_dir=str(tmp_path / f"c{workers}"),
        )
        _, c = prepare_corpus(config, progress=False)
        results.append(c)
        assert not multiprocessing.active_children()
    one, two = results
    assert one.num_documents > 2
    for name in ("tokens", "sentence_offsets", "document_offsets"):
        assert np.array_equal(getattr(one, name), getattr(two, name))


def _stuck_task(task):
    import time

    time.sleep(30)  # a task that never finishes in time


def test_stuck_split_task_is_an_error_not_a_hang(tmp_path, monkeypatch):
    """Workers split without NLTK's per-regex time limit; a task running
    past _TASK_SECONDS stops the run with one clear error instead."""
    import multiprocessing
    import time

    monkeypatch.setattr(corpus_prep, "split_workers", lambda dc: 2)
    monkeypatch.setattr(corpus_prep, "_split_task", _stuck_task)
    monkeypatch.setattr(corpus_prep, "_TASK_SECONDS", 1.0)
    config = make_config(tmp_path)
    start = time.monotonic()
    with pytest.raises(
        UsageError,
        match=r"corpus\.txt: splitting .* "
        r"characters into sentences took over 1 s",
    ):
        corpus_prep.write_sentences(
            config, str(tmp_path / "s.txt"), progress=False
        )
    assert time.monotonic() - start < 20
    assert not multiprocessing.active_children()


def _report_time_limit(task):
    from nltk import redos

    return [[f"limit {redos.DEFAULT_TIMEOUT}"], ["second document"]]


def test_workers_split_without_nltk_time_limits(tmp_path, monkeypatch):
    """Inside the workers NLTK's regex limit is off; this process keeps
    it (the setting is process-wide)."""
    redos = pytest.importorskip("nltk.redos")
    before = redos.DEFAULT_TIMEOUT
    assert before is not None
    monkeypatch.setattr(corpus_prep, "split_workers", lambda dc: 2)
    monkeypatch.setattr(corpus_prep, "_split_task", _report_time_limit)
    out = tmp_path / "s.txt"
    corpus_prep.write_sentences(make_config(tmp_path), str(out), progress=False)
    assert out.read_text(encoding="utf-8").startswith("limit None\n")
    assert redos.DEFAULT_TIMEOUT == before


def test_split_workers_by_size(tmp_path, monkeypatch):
    small = tmp_path / "small.txt"
    small.write_text("One. Two.\n\nThree. Four.\n", encoding="utf-8")
    assert corpus_prep.split_workers(DataConfig(corpus=str(small))) == 1
    monkeypatch.setattr(corpus_prep, "_PARALLEL_BYTES", 1)
    monkeypatch.setattr(
        corpus_prep.os, "sched_getaffinity", lambda pid: {0, 1, 2}
    )
    expected = 3 if sys.platform == "linux" else 1
    assert corpus_prep.split_workers(DataConfig(corpus=str(small))) == expected
