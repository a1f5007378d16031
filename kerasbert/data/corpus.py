"""Corpus preparation: read, clean, split and tokenize a corpus once into
.npy files on disk (the token cache); load them memory-mapped.

`prepare_corpus(data_config)` runs read -> clean -> split sentences ->
(train a WordPiece vocabulary when `tokenizer` is None) -> tokenize, and
caches each expensive result under the cache directory
(`data_config.cache_dir`, else $KERASBERT_CACHE, else ~/.cache/kerasbert):

    tokenizer-<key>/   a trained vocabulary (tokenizer.save layout)
    tokens-<key>/      tokens.npy, sentence_offsets.npy,
                       document_offsets.npy, meta.json

Keys hash the corpus fingerprint (path, size and mtime of every file; the
name/config/split for an HF hub dataset), the reading/cleaning/splitting
settings, the tokenizer's vocabulary and normaliser, and FORMAT_VERSION.
A re-run with the same inputs reads nothing but the .npy files.

Each result is built in a private `tmp-<host>-<pid>-<random>/` workspace
and moved into place with one os.replace, so a killed run leaves at most a
workspace, never a half cache; the next run on that host deletes
workspaces whose process is gone.

The cache holds the whole corpus as one shard: tokens stream to disk while
tokenizing and are then written out as three .npy files, so
`load_token_cache` returns one memory-mapped `TokenCorpus` whatever the
corpus size. A vocabulary to train needs the sentences twice, so they go
to a file first; with a given tokenizer the split sentences stream
straight into it (the main process tokenizes while workers split).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field

import numpy as np

from kerasbert.config import EXAMPLE_FORMATS
from kerasbert.errors import UsageError
from kerasbert.files import make_scratch_dir, remove_stale_scratch
from kerasbert.text import readers
from kerasbert.text.sentences import (
    drop_regex_time_limits,
    iter_sentences,
    load_splitter,
    resolve_language,
)
from kerasbert.text.tokenizer import Tokenizer, train_wordpiece

# 2: Korean one-paragraph documents were split into characters before.
FORMAT_VERSION = 2
_ARRAYS = ("tokens", "sentence_offsets", "document_offsets")


def _ranges(starts, lengths):
    """Concatenation of arange(s, s + n) for each (s, n), vectorised."""
    starts = np.asarray(starts, np.int64)
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    shift = np.repeat(starts - (ends - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


@dataclass(eq=False)  # arrays: == would be elementwise and ambiguous
class TokenCorpus:
    """Token ids with sentence and document boundaries, all flat arrays.

    Sentence i is `tokens[sentence_offsets[i]:sentence_offsets[i + 1]]`;
    document d is sentences `document_offsets[d]` .. `document_offsets[d+1]
    - 1`. No document or sentence is empty. `path` is the cache directory
    the arrays are memory-mapped from, if any.
    """

    tokens: np.ndarray  # int32 [num_tokens]
    sentence_offsets: np.ndarray  # int64 [num_sentences + 1]
    document_offsets: np.ndarray  # int64 [num_documents + 1]
    path: str | None = field(default=None, repr=False)

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_documents(cls, docs) -> "TokenCorpus":
        """docs -> sentences -> ids; empty sentences and documents go."""
        tokens, sentence_offsets, document_offsets = [], [0], [0]
        for doc in docs:
            sentences = [list(s) for s in doc if len(s)]
            if not sentences:
                continue
            for s in sentences:
                tokens.extend(s)
                sentence_offsets.append(sentence_offsets[-1] + len(s))
            document_offsets.append(document_offsets[-1] + len(sentences))
        return cls(
            np.asarray(tokens, np.int32),
            np.asarray(sentence_offsets, np.int64),
            np.asarray(document_offsets, np.int64),
        )

    def select_documents(self, doc_ids) -> "TokenCorpus":
        """A new in-memory corpus with only these documents, in this order."""
        doc_ids = np.asarray(doc_ids, np.int64).reshape(-1)
        do = np.asarray(self.document_offsets)
        so = np.asarray(self.sentence_offsets)
        s_start, s_count = do[doc_ids], do[doc_ids + 1] - do[doc_ids]
        sentences = _ranges(s_start, s_count)
        t_start, t_count = so[sentences], so[sentences + 1] - so[sentences]
        tokens = np.asarray(self.tokens)[_ranges(t_start, t_count)]
        zero = np.zeros(1, np.int64)
        return TokenCorpus(
            tokens.astype(np.int32),
            np.concatenate([zero, np.cumsum(t_count)]),
            np.concatenate([zero, np.cumsum(s_count)]),
        )


# Writing and loading the cache.


class _TokenWriter:
    """Appends documents to raw files; `finish` turns them into .npy."""

    def __init__(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._files = {
            name: open(os.path.join(directory, f"{name}.bin"), "wb")
            for name in _ARRAYS
        }
        self.num_tokens = self.num_sentences = self.num_documents = 0
        zero = np.zeros(1, np.int64).tobytes()
        self._files["sentence_offsets"].write(zero)
        self._files["document_offsets"].write(zero)

    def add(self, ids, lengths, doc_sizes) -> None:
        """Appends documents: `ids` holds all their tokens, `lengths` the
        tokens of each sentence, `doc_sizes` the sentences of each
        document. Sentences without tokens, then documents without
        sentences, are dropped."""
        lengths = np.asarray(lengths, np.int64)
        doc_of = np.repeat(np.arange(len(doc_sizes)), doc_sizes)
        keep = lengths > 0
        lengths = lengths[keep]
        sizes = np.bincount(doc_of[keep], minlength=len(doc_sizes))
        sizes = sizes[sizes > 0]
        self._files["tokens"].write(np.asarray(ids, np.int32).tobytes())
        offsets = self.num_tokens + np.cumsum(lengths)
        self._files["sentence_offsets"].write(offsets.tobytes())
        offsets = self.num_sentences + np.cumsum(sizes, dtype=np.int64)
        self._files["document_offsets"].write(offsets.tobytes())
        self.num_tokens += int(lengths.sum())
        self.num_sentences += len(lengths)
        self.num_documents += len(sizes)

    def close(self):
        for f in self._files.values():
            f.close()

    def finish(self, meta: dict) -> None:
        self.close()
        shapes = {
            "tokens": self.num_tokens,
            "sentence_offsets": self.num_sentences + 1,
            "document_offsets": self.num_documents + 1,
        }
        for name in _ARRAYS:
            raw = os.path.join(self.directory, f"{name}.bin")
            dtype = np.int32 if name == "tokens" else np.int64
            with open(os.path.join(self.directory, f"{name}.npy"), "wb") as f:
                np.lib.format.write_array_header_1_0(
                    f,
                    {
                        "descr": np.dtype(dtype).str,
                        "fortran_order": False,
                        "shape": (shapes[name],),
                    },
                )
                with open(raw, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 22)
            os.remove(raw)
        meta = {
            **meta,
            "format_version": FORMAT_VERSION,
            "num_tokens": self.num_tokens,
            "num_sentences": self.num_sentences,
            "num_documents": self.num_documents,
        }
        with open(
            os.path.join(self.directory, "meta.json"), "w", encoding="utf-8"
        ) as f:
            json.dump(meta, f, indent=2, sort_keys=True)


def load_token_cache(path: str) -> TokenCorpus:
    """Loads a tokens-<key> directory as one memory-mapped TokenCorpus."""
    try:
        with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        arrays = {
            name: np.load(os.path.join(path, f"{name}.npy"), mmap_mode="r")
            for name in _ARRAYS
        }
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a complete token cache ({e})") from None
    result = TokenCorpus(**arrays, path=path)
    if (
        meta.get("format_version") != FORMAT_VERSION
        or result.num_tokens != meta["num_tokens"]
        or result.num_sentences != meta["num_sentences"]
        or result.num_documents != meta["num_documents"]
    ):
        raise UsageError(f"{path}: token cache does not match its meta.json")
    return result


# Orchestration.


def default_cache_dir() -> str:
    return os.environ.get("KERASBERT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "kerasbert"
    )


def corpus_fingerprint(data_config) -> list:
    """What identifies the corpus input without reading it."""
    c = data_config.corpus
    if (
        data_config.corpus_format == "hf"
        and c is not None
        and not os.path.exists(c)
    ):
        # A hub dataset: name, config and split (a new upstream revision
        # under the same name is not noticed; clear the cache for that).
        return ["hf", c, data_config.hf_config, data_config.hf_split]
    files = readers.corpus_files(c)
    return [
        [os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns]
        for p in files
    ]


def _hash(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class _Lines:
    def __init__(self, path):
        self.path = path

    def __iter__(self):
        return _sentence_lines(self.path)


def _move_into_place(src, dst):
    """os.replace a finished directory; if another run won, keep theirs."""
    try:
        os.replace(src, dst)
    except OSError:
        if not os.path.isdir(dst):
            raise
        shutil.rmtree(src, ignore_errors=True)


def _progress(iterable, progress, **kwargs):
    if not progress:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **kwargs)


def _corpus_name(data_config):
    return data_config.corpus or readers.BUNDLED_CORPUS


def _first_line(path) -> str:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            return f.readline().rstrip("\r\n")
    except OSError:
        return ""


def resolve_corpus_format(data_config):
    """`--corpus-format auto` on one labelled file: read it as `finetune`
    reads it (labels unused), so `fit --init-from M --corpus train.tsv`
    works as typed. A .tsv file, or a first line `text;...` (the header
    of emotion-style `text;label` files). Other files keep `auto` (per
    file, readers.detect_format; a .csv is read by its text column)."""
    dc = data_config
    if dc.corpus_format != "auto" or not dc.corpus:
        return dc
    if not os.path.isfile(dc.corpus):
        return dc
    if os.path.splitext(dc.corpus)[1].lower() == ".tsv":
        fmt = "tsv"
    elif _first_line(dc.corpus).lower().startswith("text;"):
        fmt = "semicolon"
    else:
        return dc
    return dataclasses.replace(dc, corpus_format=fmt)


def too_few_documents(name: str, count: int, corpus=None) -> UsageError:
    """The one message for a corpus with fewer than 2 documents; names
    --corpus-format where `corpus` looks like labelled data (a tab or a
    ';' on its first line) read as plain text."""
    hint = "separate documents with a blank line, or set --one-doc-per-line"
    if corpus and os.path.isfile(corpus):
        first = _first_line(corpus)
        if "\t" in first or ";" in first:
            hint += (
                "; a labelled file? pass --corpus-format tsv, csv or "
                "semicolon (and --text-column) to read its texts"
            )
    documents = "document" if count == 1 else "documents"
    return UsageError(
        f"{name}: corpus has {count} {documents}; next-sentence pairs "
        f"need at least 2 ({hint})"
    )


def _check_documents(data_config, num_documents):
    name = _corpus_name(data_config)
    if num_documents == 0:
        raise UsageError(f"{name}: corpus is empty (no text after cleaning)")
    if num_documents == 1:
        raise too_few_documents(name, 1, data_config.corpus)


# Cleaning and sentence splitting are pure Python (punkt, kss): a corpus
# of at least _PARALLEL_BYTES is split by one process per core. Each task
# or tokenizer batch is about _TASK_CHARS of text, big next to its
# pickling round trip or call overhead. Tokenizing on tensorflow-text
# (`Tokenizer.encode_flat`'s fast route) takes a tenth of HF tokenizers'
# CPU time but imports TensorFlow (3-4 s, ~600 MB), which pays off from
# about 10 MB of text: _FAST_TOKENIZE_BYTES, or whenever TensorFlow is
# imported already (as in `fit`).
_PARALLEL_BYTES = 8 << 20
_FAST_TOKENIZE_BYTES = 32 << 20
_TASK_CHARS = 1 << 20
# A task takes ~0.2 s; this much means a pathological text (or a stalled
# machine), reported instead of waited on.
_TASK_SECONDS = 600.0


def _split_task(task):
    documents, language, clean = task
    return list(iter_sentences(documents, language, clean))


def _document_batches(documents, chars):
    batch, size = [], 0
    for doc in documents:
        batch.append(doc)
        size += sum(map(len, doc))
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _split_in_pool(documents, language, clean, workers, name):
    """`iter_sentences` on `workers` processes, in corpus order.

    At most two tasks per worker are in flight, so memory stays flat
    whatever the corpus size. Workers are forked: they start at once with
    the splitters already imported, and run only Python (never TensorFlow,
    whose threads a fork does not copy). They split without NLTK's
    per-regex time limit (`drop_regex_time_limits`); a task that takes
    _TASK_SECONDS instead stops the run with an error, not a hang.
    """
    import collections
    import multiprocessing

    load_splitter(language)
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=drop_regex_time_limits) as pool:
        pending = collections.deque()

        def oldest():
            try:
                return pending.popleft().get(timeout=_TASK_SECONDS)
            except multiprocessing.TimeoutError:
                raise UsageError(
                    f"{name}: splitting {_TASK_CHARS:,} characters into "
                    f"sentences took over {_TASK_SECONDS:g} s (text that "
                    "makes punkt's regexes backtrack?)"
                ) from None

        for batch in _document_batches(documents, _TASK_CHARS):
            pending.append(
                pool.apply_async(_split_task, ((batch, language, clean),))
            )
            if len(pending) >= 2 * workers:
                yield from oldest()
        while pending:
            yield from oldest()


def _corpus_bytes(data_config):
    """Size of the corpus files; None for a hub dataset (unknown)."""
    if (
        data_config.corpus_format == "hf"
        and data_config.corpus
        and not os.path.exists(data_config.corpus)
    ):
        return None
    return sum(
        os.path.getsize(p) for p in readers.corpus_files(data_config.corpus)
    )


def _at_least(data_config, limit) -> bool:
    """At least `limit` bytes, or of unknown size (a hub dataset)."""
    size = _corpus_bytes(data_config)
    return size is None or size >= limit


def _tokenize_fast(data_config) -> bool:
    return "tensorflow" in sys.modules or _at_least(
        data_config, _FAST_TOKENIZE_BYTES
    )


def split_workers(data_config) -> int:
    """Processes that will split sentences: 1, or every core for a corpus
    big enough to repay starting them."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    if cores < 2 or not _at_least(data_config, _PARALLEL_BYTES):
        return 1
    if sys.platform != "linux":  # fork is Linux's default, unsafe on macOS
        return 1
    return cores


def example_documents(data_config):
    """The texts of a labelled data file (`EXAMPLE_FORMATS`, read as
    fine-tuning reads them, labels ignored), one document each."""
    from kerasbert.data.classification import read_examples

    dc = data_config
    if dc.corpus is None:
        raise UsageError(f"--corpus-format {dc.corpus_format}: needs --corpus")
    examples = read_examples(
        dc.corpus,
        flag="--corpus",
        data_format=dc.corpus_format,
        text_column=dc.text_field,
        label_column=None,
        columns=dc.columns,
    )
    for text in examples.texts:
        paragraphs = [p for p in text.splitlines() if p.strip()]
        if paragraphs:
            yield paragraphs


def halve_lone_sentences(documents):
    """The next-sentence rule for short texts (tweets, one-line reviews):
    a document of one sentence becomes its two halves, cut at the middle
    word, so that "B follows A" still means B continues A's own text and
    a random B is half of another text. Documents of 2+ sentences (and
    one-word texts) pass as they are."""
    try:
        for sentences in documents:
            if len(sentences) == 1:
                words = sentences[0].split()
                if len(words) >= 2:
                    middle = len(words) // 2
                    sentences = [
                        " ".join(words[:middle]),
                        " ".join(words[middle:]),
                    ]
            yield sentences
    finally:
        if hasattr(documents, "close"):
            documents.close()  # a splitting pool stops now, not at GC


def read_documents_as_sentences(data_config):
    """(resolved language, an iterator over the corpus's documents as
    lists of cleaned sentences), read and split as it is consumed, in
    order, a few megabytes at a time (see `split_workers`). The texts of
    labelled data (`EXAMPLE_FORMATS`) are documents of their own, a
    one-sentence text cut in two (`halve_lone_sentences`)."""
    dc = data_config
    if dc.corpus_format in EXAMPLE_FORMATS:
        documents = example_documents(dc)
    else:
        documents = readers.iter_documents(
            dc.corpus,
            dc.corpus_format,
            dc.one_doc_per_line,
            dc.text_field,
            dc.hf_config,
            dc.hf_split,
        )
    language, documents = resolve_language(documents, dc.language)
    workers = split_workers(dc)
    if workers > 1:
        split = _split_in_pool(
            documents, language, dc.clean, workers, _corpus_name(dc)
        )
    else:
        split = iter_sentences(documents, language, dc.clean)
    if dc.corpus_format in EXAMPLE_FORMATS:
        split = halve_lone_sentences(split)
    return language, split


def write_sentences(data_config, path, progress=True) -> tuple[str, int]:
    """Corpus -> one sentence a line, a blank line after each document
    (what the vocabulary trainer reads). Returns (resolved language,
    number of documents)."""
    language, split = read_documents_as_sentences(data_config)
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for sentences in _progress(
            split, progress, desc="sentences", unit=" docs"
        ):
            f.write("\n".join(sentences))
            f.write("\n\n")
            count += 1
    _check_documents(data_config, count)
    return language, count


def _read_sentence_documents(path):
    doc = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                doc.append(line)
            elif doc:
                yield doc
                doc = []
    if doc:
        yield doc


def _sentence_lines(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield line.rstrip("\n")


def tokenize_documents(
    documents,
    tokenizer,
    out_dir,
    meta,
    fast=False,
    progress=True,
    total=None,
    batch_chars=_TASK_CHARS,
):
    """Documents (lists of sentences) -> token cache files in `out_dir`
    (not yet in place); returns the number of documents written. `fast`:
    see `Tokenizer.encode_flat`."""
    writer = _TokenWriter(out_dir)
    try:
        for batch in _document_batches(
            _progress(
                documents, progress, desc="tokens", unit=" docs", total=total
            ),
            batch_chars,
        ):
            ids, lengths = tokenizer.encode_flat(
                [s for doc in batch for s in doc], fast=fast
            )
            writer.add(ids, lengths, [len(doc) for doc in batch])
    finally:
        writer.close()
        if hasattr(documents, "close"):
            documents.close()  # a splitting pool stops now, not at GC
    writer.finish(meta)
    return writer.num_documents


def prepare_corpus(
    data_config, tokenizer_dir: str | None = None, progress: bool = True
) -> tuple[Tokenizer, TokenCorpus]:
    """Reads, splits, tokenizes and caches the corpus; returns both parts.

    With `data_config.tokenizer` None a WordPiece vocabulary of
    `vocab_size` is trained (and cached) and saved to `tokenizer_dir` when
    given. `strip_accents=None` follows `lowercase` except for Korean,
    where it stays False: accent stripping runs NFD, which splits every
    Hangul syllable into jamo.
    """
    dc = data_config
    readers.check_choices(dc.corpus_format, dc.language)
    cache_dir = dc.cache_dir or default_cache_dir()
    fingerprint = corpus_fingerprint(dc)
    text_key = [
        FORMAT_VERSION,
        fingerprint,
        dc.corpus_format,
        dc.one_doc_per_line,
        dc.text_field,
        dc.hf_config,
        dc.hf_split,
        dc.language,
        dc.clean,
    ]
    if dc.corpus_format in EXAMPLE_FORMATS:  # keys of older caches unchanged
        text_key.append(dc.columns)
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(
            f"--cache-dir: cannot create {cache_dir} ({e})"
        ) from None
    remove_stale_scratch(cache_dir, "tmp")
    work = None
    sentences_path = num_documents = None

    def workspace():
        nonlocal work
        if work is None:
            work = make_scratch_dir(cache_dir, "tmp")
        return work

    try:
        if dc.tokenizer is not None:
            tokenizer = Tokenizer.load(dc.tokenizer)
        else:
            tok_dir = os.path.join(
                cache_dir,
                "tokenizer-"
                + _hash(
                    text_key, dc.vocab_size, dc.lowercase, dc.strip_accents
                ),
            )
            if os.path.isdir(tok_dir):
                tokenizer = Tokenizer.load(tok_dir)
            else:
                sentences_path = os.path.join(workspace(), "sentences.txt")
                language, num_documents = write_sentences(
                    dc, sentences_path, progress
                )
                strip = dc.strip_accents
                if strip is None:
                    strip = False if language == "ko" else dc.lowercase
                # A re-iterable: the trainer reads the lines twice.
                lines = _Lines(sentences_path)
                tokenizer = train_wordpiece(
                    lines, dc.vocab_size, dc.lowercase, strip, progress
                )
                tokenizer.save(os.path.join(work, "tokenizer"))
                _move_into_place(os.path.join(work, "tokenizer"), tok_dir)
            if tokenizer_dir:
                tokenizer.save(tokenizer_dir)

        out = os.path.join(
            cache_dir, "tokens-" + _hash(text_key, tokenizer.fingerprint())
        )
        if os.path.isdir(out):
            try:
                return tokenizer, load_token_cache(out)
            except UsageError:
                shutil.rmtree(out, ignore_errors=True)  # damaged: rebuild
        if sentences_path is None:
            # No vocabulary was trained: split and tokenize in one stream,
            # the main process tokenizing while the workers split.
            _, documents = read_documents_as_sentences(dc)
        else:
            documents = _read_sentence_documents(sentences_path)
        built = os.path.join(workspace(), "tokens")
        count = tokenize_documents(
            documents,
            tokenizer,
            built,
            {"corpus": _corpus_name(dc), "tokenizer": tokenizer.source},
            _tokenize_fast(dc),
            progress,
            num_documents,
        )
        _check_documents(dc, count)
        _move_into_place(built, out)
        return tokenizer, load_token_cache(out)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
