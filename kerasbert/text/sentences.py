"""Cleaning, language detection and sentence splitting.

Normalisation is NFC, not NFKC: NFKC turns Hangul compatibility jamo
("ㅋ", U+314B) into conjoining jamo (U+110F), which then glue onto the
neighbouring syllables. Control and format characters go; tabs become
spaces. `clean=True` also removes URLs, e-mail addresses and emoji and
shortens runs of one repeated character to two ("ㅋㅋㅋㅋ" -> "ㅋㅋ").

Sentences: NLTK punkt for English (NLTK_DATA, then the English punkt_tab
bundled in kerasbert/corpus_data/nltk_data; without either, a rule-based
splitter and one warning), kss's "fast" backend for Korean.
"""

import itertools
import os
import re
import unicodedata
import warnings

from kerasbert.text.readers import DATA_DIR, check_choices

# Cleaning.

# Trailing punctuation belongs to the sentence, not the URL.
_URL = re.compile(
    r"(?:https?://|ftp://|www\.)\S*[^\s.,;:!?)\]'\"]", re.IGNORECASE
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# One character (not a digit, space or '.') repeated 3+ times -> 2.
_REPEAT = re.compile(r"([^\d\s.])\1{2,}")
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0e\ufe0f"
    "\U0001f3fb-\U0001f3ff\u200d\u20e3]+"
)
_SPACES = re.compile(r"\s+")


def clean_text(text: str, clean: bool = False) -> str:
    """NFC, control/format characters out, whitespace collapsed.

    `clean=True` adds the web-text rules (URLs, e-mails, emoji, repeats).
    """
    text = unicodedata.normalize("NFC", text)
    if clean:
        text = _URL.sub(" ", text)
        text = _EMAIL.sub(" ", text)
        text = _EMOJI.sub(" ", text)
        text = _REPEAT.sub(r"\1\1", text)
    if not text.isprintable():
        # Slow path, per character. `isprintable` (C speed) is True only
        # when no character is a control/format (C*) or a space other than
        # " " -- the usual line of prose, which skips this loop.
        text = "".join(
            " " if c.isspace() else c
            for c in text
            if c.isspace() or unicodedata.category(c)[0] != "C"
        )
    return _SPACES.sub(" ", text).strip()


# Language and sentence splitting.


def _is_hangul(c):
    return (
        "\uac00" <= c <= "\ud7a3"
        or "\u1100" <= c <= "\u11ff"
        or "\u3130" <= c <= "\u318f"
    )


def detect_language(texts) -> str:
    """ "ko" when Hangul is at least 30% of the letters, else "en".

    A Hangul syllable is one letter but a whole Latin syllable takes
    several, so Korean text with English names in it sits well above 30%.
    """
    letters = hangul = 0
    for text in texts:
        for c in text:
            if c.isalpha():
                letters += 1
                hangul += _is_hangul(c)
    return "ko" if letters and hangul / letters >= 0.3 else "en"


_punkt = None
_warned_no_punkt = False
# Rule-based fallback: split after . ! ? (plus closing quotes/brackets)
# followed by space and an upper-case letter, digit or opening quote,
# except after common abbreviations and single-letter initials.
_ABBREVIATIONS = (
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "st",
    "jr",
    "sr",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "no",
    "fig",
    "inc",
    "ltd",
    "co",
    "mt",
    "gen",
    "col",
    "lt",
    "sgt",
    "capt",
    "u.s",
)
_RULE_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def _rule_split(text):
    sentences, start = [], 0
    for m in _RULE_BOUNDARY.finditer(text):
        head = text[start : m.start()].rstrip("\"')]")
        last = head.rsplit(None, 1)[-1].lower().rstrip(".") if head else ""
        if last in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last):
            continue
        sentences.append(text[start : m.start()].strip())
        start = m.start()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def _get_punkt():
    """NLTK's English punkt_tab model, or None (-> rule-based splitter)."""
    global _punkt, _warned_no_punkt
    if _punkt is None:
        import nltk
        from nltk.tokenize.punkt import PunktTokenizer

        bundled = os.path.join(DATA_DIR, "nltk_data")
        if bundled not in nltk.data.path:
            nltk.data.path.append(bundled)  # a fallback after NLTK_DATA
        try:
            _punkt = PunktTokenizer("english")
        except LookupError:
            _punkt = False
            if not _warned_no_punkt:
                _warned_no_punkt = True
                warnings.warn(
                    "NLTK punkt_tab English data not found; splitting "
                    "sentences with a rule-based splitter",
                    stacklevel=3,
                )
    return _punkt or None


def load_splitter(language: str) -> None:
    """Loads the splitter of `language` now, e.g. before forking workers,
    so that they share it instead of each importing it again."""
    if language == "ko":
        import kss  # noqa: F401
    else:
        _get_punkt()


def drop_regex_time_limits() -> None:
    """Lets NLTK's regexes run without their per-call time limit, in this
    process. NLTK 3.10 (`nltk.redos`) runs every match on the `regex`
    engine under a 5-second wall-clock limit, against patterns a caller
    supplies; punkt's patterns are NLTK's own, and the limit's checks cost
    ~30% of splitting (1.98 -> 1.41 CPU-s on 10 MB, same sentences). The
    setting is process-wide: only for processes that do nothing but
    split (the corpus workers), whose caller bounds each task's time."""
    try:
        from nltk import redos
    except ImportError:  # NLTK before 3.10: stdlib `re`, no limit
        return
    redos.DEFAULT_TIMEOUT = None


_KO_BOUNDARY = re.compile(r"(?<=[\uac00-\ud7a3][.!?])\s+")


def split_sentences(paragraphs: list[str], language: str) -> list[str]:
    """Splits cleaned paragraphs into sentences ("en" or "ko")."""
    if language == "ko":
        import kss

        paragraphs = list(paragraphs)
        split = kss.split_sentences(paragraphs, backend="fast", num_workers=1)
        if len(paragraphs) == 1:
            # kss unwraps a one-element list: it returns that paragraph's
            # sentences, not a list holding them.
            split = [split]
        out = []
        for sentences in split:
            for s in sentences:
                # kss "fast" sometimes keeps "...했다. 하지만 ..." together;
                # Hangul + . ! ? + space ends a sentence in Korean prose.
                out.extend(_KO_BOUNDARY.split(s))
        return [s.strip() for s in out if s.strip()]
    punkt = _get_punkt()
    out = []
    for p in paragraphs:
        out.extend(punkt.tokenize(p) if punkt else _rule_split(p))
    return [s.strip() for s in out if s.strip()]


def resolve_language(documents, language="auto", sample_chars=100_000):
    """Returns (language, documents) with "auto" resolved to "en" or "ko".

    "auto" looks at the first `sample_chars` characters of the corpus once;
    the whole corpus then uses that language. The returned iterator still
    yields every document, the sampled ones included.
    """
    check_choices("auto", language)
    documents = iter(documents)
    if language != "auto":
        return language, documents
    head, size = [], 0
    for doc in documents:
        head.append(doc)
        size += sum(map(len, doc))
        if size >= sample_chars:
            break
    language = detect_language(p for d in head for p in d)
    return language, itertools.chain(head, documents)


def iter_sentences(documents, language: str, clean: bool = False):
    """Yields each document as a list of cleaned sentences; empty ones go."""
    for doc in documents:
        paragraphs = [p for p in (clean_text(p, clean) for p in doc) if p]
        sentences = split_sentences(paragraphs, language) if paragraphs else []
        if sentences:
            yield sentences
