"""Corpus readers: files and formats to documents of raw paragraphs.

Everything streams: a reader yields one document at a time as a list of
paragraphs (raw lines), `iter_sentences` turns those into lists of cleaned
sentences, so a corpus larger than memory never has to fit in it.

Formats (`corpus_format`):
- text: plain UTF-8 files or a folder of them (recursive, sorted by path).
  A blank line ends a document, every other line is a paragraph, as in
  google-research/bert's create_pretraining_data. `one_doc_per_line` makes
  each non-blank line its own document.
- wikitext: WikiText raw files. " = Title = " starts a document,
  " = = Section = = " headings are dropped, and the WikiText tokenization
  (" @-@ ", " @,@ ", " @.@ ", spaces before punctuation) is undone.
- wikiextractor: `<doc id=.. url=.. title=..>` ... `</doc>` blocks, as
  WikiExtractor writes Wikipedia dumps; the title line is dropped.
- jsonl: one JSON object per line; `text_field` holds the document.
- hf: an HF `datasets` name (`load_dataset(name, hf_config,
  split=hf_split)`, needs the network or HF's cache) or local
  .parquet/.arrow/.csv/.json files read with the matching builder.
- auto: per file, from the extension and the first non-blank line.
"""

import glob
import itertools
import json
import os
import re

from kerasbert.config import DataConfig, check_field
from kerasbert.errors import UsageError
from kerasbert.files import check_regular

DATA_DIR = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "corpus_data"
)
BUNDLED_CORPUS = os.path.join(DATA_DIR, "wiki.valid.raw")
_HF_BUILDERS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".json": "json",
}


def check_choices(corpus_format: str, language: str) -> None:
    check_field(DataConfig, "corpus_format", corpus_format)
    check_field(DataConfig, "language", language)


# Files and formats.


def corpus_files(corpus: str | None) -> list[str]:
    """The files of a corpus path: itself, or a folder's files sorted."""
    if corpus is None:
        return [BUNDLED_CORPUS]
    if os.path.isdir(corpus):
        files = sorted(
            p
            for p in glob.glob(os.path.join(corpus, "**", "*"), recursive=True)
            if os.path.isfile(p)
        )
        if not files:
            raise UsageError(f"{corpus}: folder has no files")
        return files
    if not os.path.exists(corpus):
        raise UsageError(f"{corpus}: no such file or directory")
    check_regular(corpus, corpus)  # a FIFO would block, /dev/zero not end
    return [corpus]


def _read_lines(path):
    """Yields a file's lines without line ends; bad UTF-8 -> UsageError."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UsageError(
                    f"{path}: not UTF-8 at byte {offset + e.start}"
                ) from None
            if offset == 0:
                line = line.removeprefix("\ufeff")
            offset += len(raw)
            yield line.rstrip("\r\n")


_WIKITEXT_TITLE = re.compile(r"^ ?= ([^=].*?) = ?$")
_WIKITEXT_HEADING = re.compile(r"^ ?(= )+.*?( =)+ ?$")


def detect_format(path: str) -> str:
    """Guesses one file's format from its extension and first line."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".jsonl":
        return "jsonl"
    if ext in (".parquet", ".arrow", ".csv"):
        return "hf"
    first = ""
    for line in itertools.islice(_read_lines(path), 1000):
        if line.strip():
            first = line
            break
    if ext == ".json":
        try:
            return "jsonl" if isinstance(json.loads(first), dict) else "hf"
        except json.JSONDecodeError:
            return "hf"
    if first.lstrip().startswith("<doc "):
        return "wikiextractor"
    if _WIKITEXT_TITLE.match(first):
        return "wikitext"
    return "text"


# Readers: each yields documents as lists of paragraph strings.


def read_text(path, one_doc_per_line=False):
    doc = []
    for line in _read_lines(path):
        if not line.strip():
            if doc:
                yield doc
            doc = []
        elif one_doc_per_line:
            yield [line]
        else:
            doc.append(line)
    if doc:
        yield doc


def detokenize_wikitext(line: str) -> str:
    """Undoes WikiText's tokenization: "3 @.@ 1" -> "3.1", "a , b" -> "a, b".

    Only the unambiguous cases: the @x@ joiners, no space before , . ; : ! ?
    ) ] 's n't, none after ( [. Quotes stay spaced: whether " opens or
    closes cannot be told locally.
    """
    line = re.sub(r" @([-,.])@ ", r"\1", line)
    line = re.sub(r" ([,.;:!?)\]])", r"\1", line)
    line = re.sub(r"([(\[]) ", r"\1", line)
    line = re.sub(r" ('s|'re|'ve|'d|'ll|'m|n't)\b", r"\1", line)
    return line.strip()


def _group_wikitext(lines):
    doc = []
    for line in lines:
        if _WIKITEXT_TITLE.match(line):
            if doc:
                yield doc
            doc = []
        elif _WIKITEXT_HEADING.match(line) or not line.strip():
            continue
        else:
            doc.append(detokenize_wikitext(line))
    if doc:
        yield doc


def read_wikitext(path):
    return _group_wikitext(_read_lines(path))


def read_wikiextractor(path):
    doc, title, inside, seen_title = [], None, False, False
    for line in _read_lines(path):
        stripped = line.strip()
        if stripped.startswith("<doc ") or stripped == "<doc>":
            m = re.search(r'title="([^"]*)"', stripped)
            title, inside, doc = (m.group(1) if m else None), True, []
            seen_title = False
        elif stripped == "</doc>":
            if doc:
                yield doc
            inside = False
        elif not stripped or not inside:
            continue
        elif not seen_title and not doc and stripped == (title or "").strip():
            seen_title = True  # WikiExtractor repeats the title first
        else:
            doc.append(stripped)
    if inside and doc:
        yield doc  # an unterminated last <doc>: keep what is there


def _split_paragraphs(text):
    return [p for p in str(text).splitlines() if p.strip()]


def read_jsonl(path, text_field="text"):
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"{path}: line {n}: not valid JSON") from None
        if not isinstance(record, dict) or text_field not in record:
            raise UsageError(
                f"{path}: line {n}: no field {text_field!r} (set --text-field)"
            )
        paragraphs = _split_paragraphs(record[text_field] or "")
        if paragraphs:
            yield paragraphs


def read_hf(corpus, text_field="text", hf_config=None, hf_split="train"):
    """An HF dataset by name, or local data files by extension.

    Examples that look like WikiText lines (HF's "wikitext" datasets hold
    one line per example) are regrouped into articles; otherwise each
    example is a document.
    """
    try:
        import datasets
    except ImportError:
        raise UsageError(
            "--corpus-format hf: needs the `datasets` package"
        ) from None
    ext = os.path.splitext(corpus)[1].lower()
    try:
        if os.path.exists(corpus):
            builder = _HF_BUILDERS.get(ext, "json" if ext == ".jsonl" else None)
            if builder is None:
                raise UsageError(
                    f"{corpus}: unknown data file type for --corpus-format "
                    f"hf (use {', '.join(_HF_BUILDERS)})"
                )
            # streaming: no Arrow copy in ~/.cache, and bounded memory.
            ds = datasets.load_dataset(
                builder, data_files=corpus, split="train", streaming=True
            )
        else:
            ds = datasets.load_dataset(corpus, hf_config, split=hf_split)
    except UsageError:
        raise
    except Exception as e:  # network, missing dataset, bad file ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UsageError(
            f"{corpus}: cannot load with datasets ({type(e).__name__}: {first})"
        ) from None

    def texts():
        for n, example in enumerate(ds):
            if text_field not in example:
                raise UsageError(
                    f"{corpus}: example {n} has no field {text_field!r} "
                    f"(fields: {', '.join(example)}; set --text-field)"
                )
            yield example[text_field] or ""

    stream = texts()
    head = list(itertools.islice(stream, 200))
    rest = itertools.chain(head, stream)
    if any(_WIKITEXT_TITLE.match(t.rstrip("\n")) for t in head):
        yield from _group_wikitext(t.rstrip("\n") for t in rest)
        return
    for text in rest:
        paragraphs = _split_paragraphs(text)
        if paragraphs:
            yield paragraphs


def iter_documents(
    corpus=None,
    corpus_format="auto",
    one_doc_per_line=False,
    text_field="text",
    hf_config=None,
    hf_split="train",
):
    """Yields documents (lists of raw paragraphs) from a corpus path."""
    check_choices(corpus_format, "auto")
    if (
        corpus_format == "hf"
        and corpus is not None
        and not os.path.exists(corpus)
    ):
        yield from read_hf(corpus, text_field, hf_config, hf_split)
        return
    for path in corpus_files(corpus):
        fmt = detect_format(path) if corpus_format == "auto" else corpus_format
        if fmt == "text":
            yield from read_text(path, one_doc_per_line)
        elif fmt == "wikitext":
            yield from read_wikitext(path)
        elif fmt == "wikiextractor":
            yield from read_wikiextractor(path)
        elif fmt == "jsonl":
            yield from read_jsonl(path, text_field)
        else:
            yield from read_hf(path, text_field, hf_config, hf_split)
