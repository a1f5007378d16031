"""WordPiece and SentencePiece tokenizers behind one small interface.

`Tokenizer` wraps either an HF `tokenizers` WordPiece pipeline (BERT's
normaliser and pre-tokenizer, so ids match `transformers.BertTokenizerFast`)
or a SentencePiece `.model`. `encode` never adds [CLS]/[SEP]: the pairing code
packs sequences itself. A literal "[MASK]" in the text does become `mask_id`,
which is what fill-mask needs.

Saved layouts:
- WordPiece: vocab.txt, tokenizer.json, tokenizer_config.json and
  special_tokens_map.json; `BertTokenizerFast.from_pretrained(dir)` loads it
  with the same ids.
- SentencePiece: sentencepiece.model plus kerasbert_tokenizer.json. HF's
  BertTokenizerFast has no SentencePiece model, so this layout is ours only.
"""

import hashlib
import itertools
import json
import os
import re

import numpy as np

from kerasbert.errors import UsageError
from kerasbert.files import (
    atomic_path,
    inside_folder,
    read_bytes,
    read_json,
    read_lines,
    write_text_atomic,
)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_SPECIAL_LITERAL = re.compile("|".join(map(re.escape, SPECIAL_TOKENS)))
# HF WordPiece's max_input_chars_per_word: a longer word is one [UNK].
MAX_WORD_CHARS = 100
_SPM_META = "kerasbert_tokenizer.json"
_SPM_FILE = "sentencepiece.model"


def _wordpiece_pipeline(vocab, lowercase, strip_accents):
    """BERT's normaliser, pre-tokenizer, model and decoder around `vocab`."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    tok = HFTokenizer(
        models.WordPiece(
            vocab, unk_token="[UNK]", max_input_chars_per_word=MAX_WORD_CHARS
        )
    )
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=strip_accents,
        lowercase=lowercase,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    # Added (special) tokens are matched on the raw text before
    # normalisation, so "[MASK]" survives lowercasing as one id.
    present = [t for t in SPECIAL_TOKENS if t in vocab]
    tok.add_special_tokens(present)
    return tok


class Tokenizer:
    """A WordPiece or SentencePiece vocabulary with BERT's special tokens.

    Build one with `Tokenizer.load(path)` or `train_wordpiece(...)`.
    `lowercase`/`strip_accents` describe the WordPiece normaliser (None for
    SentencePiece, whose normalisation lives in the .model).
    """

    def __init__(
        self,
        backend,
        kind,
        source="tokenizer",
        lowercase=None,
        strip_accents=None,
    ):
        self._backend = backend
        self.kind = kind  # "wordpiece" | "sentencepiece"
        self.source = source
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        if kind == "wordpiece":
            vocab = backend.get_vocab()
            self._tokens = [None] * len(vocab)
            for token, i in vocab.items():
                self._tokens[i] = token
            names = {"pad": "[PAD]", "unk": "[UNK]"}
        else:
            n = backend.get_piece_size()
            self._tokens = [backend.id_to_piece(i) for i in range(n)]
            names = {
                "pad": backend.id_to_piece(backend.pad_id())
                if backend.pad_id() >= 0
                else "[PAD]",
                "unk": backend.id_to_piece(backend.unk_id()),
            }
        self._index = {t: i for i, t in enumerate(self._tokens)}
        for name in ("cls", "sep", "mask"):
            names[name] = f"[{name.upper()}]"
        for name, token in names.items():
            if token not in self._index:
                raise UsageError(f"{source}: vocabulary has no {token} token")
            setattr(self, f"{name}_id", self._index[token])
        special = {
            self.pad_id,
            self.unk_id,
            self.cls_id,
            self.sep_id,
            self.mask_id,
        }
        if kind == "wordpiece":
            # [unused0] and friends are reserved slots, special by intent.
            special |= {
                i
                for i, t in enumerate(self._tokens)
                if re.fullmatch(r"\[[A-Za-z0-9_]+\]", t)
            }
        else:
            special |= {
                i
                for i in range(len(self._tokens))
                if backend.is_control(i)
                or backend.is_unknown(i)
                or self._tokens[i] in names.values()
            }
        self.special_ids = sorted(special)
        self._special_re = re.compile(
            "("
            + "|".join(
                re.escape(self._tokens[i])
                for i in (self.cls_id, self.sep_id, self.mask_id, self.pad_id)
            )
            + ")"
        )

    # Interface used by the data pipeline.

    @property
    def vocabulary_size(self) -> int:
        return len(self._tokens)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        texts = list(texts)
        if self.kind == "wordpiece":
            encodings = self._backend.encode_batch(
                texts, add_special_tokens=False
            )
            return [e.ids for e in encodings]
        return [self._encode_spm(t) for t in texts]

    def encode_flat(self, texts, fast: bool = False):
        """`encode_batch`'s ids as one flat int32 array plus each text's
        token count (int64): the token cache's layout, with no Python list
        per text.

        `fast=True` lets a WordPiece tokenizer send each printable-ASCII
        text without a special-token literal through tensorflow-text's
        `FastBertTokenizer` (C++; about a tenth of HF tokenizers' CPU time
        here). On such text the two agree id for id: lower-casing is the
        only normalisation that changes ASCII, both split at every ASCII
        punctuation mark, and HF's 100-character word limit is
        tensorflow-text's 100 bytes. Other text (accents, other scripts,
        "[MASK]") stays with HF, whose normaliser tensorflow-text's does
        not match. Importing TensorFlow takes seconds: callers ask for
        `fast` on big corpora only.
        """
        texts = list(texts)
        model = self._fast_wordpiece() if fast else None
        simple = np.zeros(len(texts), bool)
        if model is not None:
            simple[:] = [
                t.isascii()
                and t.isprintable()
                and not ("[" in t and _SPECIAL_LITERAL.search(t))
                for t in texts
            ]
        rest = [t for t, s in zip(texts, simple) if not s]
        rest_ids = self.encode_batch(rest) if rest else []
        lengths = np.zeros(len(texts), np.int64)
        lengths[~simple] = [len(i) for i in rest_ids]
        rest_flat = np.fromiter(
            itertools.chain.from_iterable(rest_ids),
            np.int32,
            int(lengths.sum()),
        )
        if not simple.any():
            return rest_flat, lengths
        import tensorflow as tf

        ragged = model.tokenize(
            tf.constant([t for t, s in zip(texts, simple) if s])
        )
        lengths[simple] = ragged.row_lengths().numpy()
        ids = np.empty(int(lengths.sum()), np.int32)
        from_fast = np.repeat(simple, lengths)
        ids[from_fast] = ragged.flat_values.numpy()
        ids[~from_fast] = rest_flat
        return ids, lengths

    def _fast_wordpiece(self):
        """tensorflow-text's FastBertTokenizer for this vocabulary, or None
        (SentencePiece, tensorflow-text not installed, or a vocabulary
        token with white space or a control character: HF never emits
        one, but FastBertTokenizer matches "a b" as a token)."""
        if not hasattr(self, "_fast"):
            self._fast = None
            if self.kind != "wordpiece" or not all(
                t.isprintable() and " " not in t for t in self._tokens
            ):
                return None
            try:
                import tensorflow as tf
                import tensorflow_text as tf_text
            except ImportError:
                return None
            self._fast = tf_text.FastBertTokenizer(
                vocab=self._tokens,
                suffix_indicator="##",
                max_bytes_per_word=MAX_WORD_CHARS,
                token_out_type=tf.int32,
                unknown_token="[UNK]",
                lower_case_nfd_strip_accents=bool(self.lowercase),
            )
        return self._fast

    def _encode_spm(self, text):
        # SentencePiece emits a stray "▁" before a user symbol glued to
        # spaces ("a [MASK] b" -> ▁a ▁ [MASK] ▁b); encoding the pieces
        # between special tokens separately avoids it.
        ids = []
        for i, part in enumerate(self._special_re.split(text)):
            if i % 2:
                ids.append(self._index[part])
            elif part.strip():
                ids.extend(self._backend.encode(part, out_type=int))
        return ids

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "wordpiece":
            return self._backend.decode(ids, skip_special_tokens=False)
        return self._backend.decode(ids)

    def id_to_token(self, i: int) -> str:
        return self._tokens[int(i)]

    def token_to_id(self, token: str) -> int | None:
        return self._index.get(token)

    def word_start_mask(self) -> np.ndarray:
        """bool [vocabulary_size]: True where a token begins a word."""
        if self.kind == "wordpiece":
            mask = np.array([not t.startswith("##") for t in self._tokens])
        else:
            mask = np.array([t.startswith("▁") for t in self._tokens])
        mask[self.special_ids] = True
        return mask

    def fingerprint(self) -> str:
        """SHA-256 of everything that decides the ids (for cache keys)."""
        h = hashlib.sha256(self.kind.encode())
        if self.kind == "wordpiece":
            h.update(json.dumps([self.lowercase, self.strip_accents]).encode())
            h.update("\n".join(self._tokens).encode())
        else:
            h.update(self._backend.serialized_model_proto())
        return h.hexdigest()

    def sentencepiece_model(self) -> bytes:
        """The serialized SentencePiece model (what the `.model` file
        holds); for the in-graph tokenizer of a SavedModel."""
        return self._backend.serialized_model_proto()

    # Saving and loading.

    def save(self, directory: str) -> None:
        """Writes the tokenizer's files into `directory`, each atomically
        (an HF folder holds them next to the model's files)."""
        if self.kind == "sentencepiece":
            with atomic_path(os.path.join(directory, _SPM_FILE)) as tmp:
                with open(tmp, "wb") as f:
                    f.write(self._backend.serialized_model_proto())
            write_text_atomic(
                os.path.join(directory, _SPM_META),
                json.dumps(
                    {"kind": "sentencepiece", "model_file": _SPM_FILE}, indent=2
                )
                + "\n",
            )
            return
        from tokenizers import processors

        write_text_atomic(
            os.path.join(directory, "vocab.txt"), "\n".join(self._tokens) + "\n"
        )
        # The saved pipeline adds [CLS] A [SEP] (B [SEP]) like HF's BERT;
        # our own encode() keeps calling with add_special_tokens=False.
        hf = type(self._backend).from_str(self._backend.to_str())
        hf.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)],
        )
        write_text_atomic(
            os.path.join(directory, "tokenizer.json"), hf.to_str()
        )
        specials = {
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        }
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lowercase,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": True,
            "model_max_length": 512,
            **specials,
        }
        write_text_atomic(
            os.path.join(directory, "tokenizer_config.json"),
            json.dumps(config, indent=2) + "\n",
        )
        write_text_atomic(
            os.path.join(directory, "special_tokens_map.json"),
            json.dumps(specials, indent=2) + "\n",
        )

    @classmethod
    def load(
        cls,
        path: str,
        lowercase: bool | None = None,
        strip_accents: bool | None = None,
    ) -> "Tokenizer":
        """Loads a saved directory, an HF BERT dir, a vocab.txt or a .model.

        `lowercase`/`strip_accents` override the WordPiece normaliser; by
        default they come from tokenizer_config.json beside the vocabulary,
        else `lowercase` is True unless the vocabulary has upper-case tokens.
        """
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such tokenizer file or directory")
        if os.path.isdir(path):
            meta = os.path.join(path, _SPM_META)
            if os.path.lexists(os.path.join(path, "vocab.txt")):
                path = os.path.join(path, "vocab.txt")
            elif os.path.lexists(meta):
                saved = read_json(meta, meta)
                name = (
                    saved.get("model_file") if isinstance(saved, dict) else None
                )
                path = inside_folder(path, name, f"{meta}: model_file")
            else:
                models = sorted(
                    n for n in os.listdir(path) if n.endswith(".model")
                )
                if len(models) != 1:
                    raise UsageError(
                        f"{path}: no vocab.txt or single SentencePiece "
                        ".model in this directory"
                    )
                path = os.path.join(path, models[0])
        if path.endswith(".model"):
            return cls._load_sentencepiece(path)
        return cls._load_vocab(path, lowercase, strip_accents)

    @classmethod
    def _load_sentencepiece(cls, path):
        import sentencepiece as spm

        proto = read_bytes(path, path)
        try:
            sp = spm.SentencePieceProcessor(model_proto=proto)
        except (OSError, RuntimeError) as e:
            raise UsageError(
                f"{path}: not a SentencePiece model ({e})"
            ) from None
        return cls(sp, "sentencepiece", source=path)

    @classmethod
    def _load_vocab(cls, path, lowercase, strip_accents):
        tokens = read_lines(path, path)
        if any("\t" in t for t in tokens[:10]):
            raise UsageError(
                f"{path}: looks like a SentencePiece .vocab (piece<TAB>"
                "score); pass the .model file instead"
            )
        vocab = {}
        for t in tokens:
            vocab.setdefault(t, len(vocab))
        if len(vocab) != len(tokens):
            raise UsageError(f"{path}: vocabulary has duplicate tokens")
        config = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        saved = {}
        if os.path.lexists(config):
            saved = read_json(config, config)
            if not isinstance(saved, dict):
                raise UsageError(f"{config}: expected a JSON object")
            for name, kinds in (
                ("do_lower_case", (bool, type(None))),
                ("strip_accents", (bool, type(None))),
            ):
                if not isinstance(saved.get(name), kinds):
                    raise UsageError(
                        f"{config}: {name} {saved[name]!r} is not true, "
                        "false or null"
                    )
        if lowercase is None:
            lowercase = saved.get("do_lower_case")
        if lowercase is None:
            lowercase = not any(
                t != t.lower() for t in tokens if not t.startswith("[")
            )
        if strip_accents is None:
            strip_accents = saved.get("strip_accents")
        backend = _wordpiece_pipeline(vocab, lowercase, strip_accents)
        return cls(
            backend,
            "wordpiece",
            source=path,
            lowercase=lowercase,
            strip_accents=strip_accents,
        )


def train_wordpiece(
    texts,
    vocab_size: int,
    lowercase: bool = True,
    strip_accents: bool | None = None,
    progress: bool = True,
) -> Tokenizer:
    """Trains a BERT WordPiece vocabulary on an iterable of strings.

    Special tokens come first: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.
    `strip_accents=None` follows `lowercase`, as in BERT (but see
    `kerasbert.cache.prepare_corpus`, which keeps Hangul composed).
    The vocabulary can exceed `vocab_size` when the corpus has more
    distinct characters: every character keeps a token so nothing is [UNK].
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers
    from tokenizers.trainers import WordPieceTrainer

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise UsageError(f"--vocab-size: {vocab_size} is too small")
    tok = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=strip_accents,
        lowercase=lowercase,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    if iter(texts) is texts:  # one pass only: keep it for the second
        texts = list(texts)
    # The trainer numbers each "##c" piece when it first meets it, in
    # hash-map order, and breaks ties between equally frequent merges by
    # those numbers: two runs on one corpus then differ in a few tokens.
    # Listing every "##c" up front (as reserved tokens) fixes the numbers.
    reserved = _continuation_pieces(texts, tok.normalizer)
    trainer = WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + reserved,
        show_progress=progress,
        continuing_subword_prefix="##",
    )
    tok.train_from_iterator(texts, trainer=trainer)
    trained = tok.get_vocab()
    if len(trained) <= len(SPECIAL_TOKENS):
        raise UsageError("corpus: no text to train a vocabulary on")
    # Ids in sorted order too: the trainer's order also follows hash maps.
    rest = sorted(
        (t for t in trained if t not in SPECIAL_TOKENS),
        key=lambda t: (t.startswith("##"), t),
    )
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + rest)}
    # Rebuild through the loading path so trained and loaded tokenizers are
    # the same object in every detail.
    return Tokenizer(
        _wordpiece_pipeline(vocab, lowercase, strip_accents),
        "wordpiece",
        source="trained",
        lowercase=lowercase,
        strip_accents=strip_accents,
    )


def _continuation_pieces(texts, normalizer) -> list[str]:
    """ "##c" for every character c that can continue a word, sorted."""
    import unicodedata

    chars = set()
    for text in texts:
        chars.update(text)
    pieces = set()
    for c in chars:
        for n in normalizer.normalize_str(c):
            # Whitespace, punctuation and CJK characters always stand
            # alone after BERT's pre-tokenizer: never a continuation.
            if (
                n.isspace()
                or unicodedata.category(n).startswith("P")
                or n in _ASCII_PUNCTUATION
                or 0x4E00 <= ord(n) <= 0x9FFF
            ):
                continue
            pieces.add("##" + n)
    return sorted(pieces)


_ASCII_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
