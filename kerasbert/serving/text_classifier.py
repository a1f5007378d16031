"""Export a fine-tuned classifier as a SavedModel that takes raw strings.

    export_classifier_dir("runs/emotion", "exported/emotion")

    import tensorflow as tf, tensorflow_text  # noqa: registers the ops
    serve = tf.saved_model.load("exported/emotion").signatures[
        "serving_default"]
    serve(text=tf.constant(["i feel great"]))
    # -> probabilities [batch, classes] float32, label_ids int32, labels

Tokenization and packing run inside the graph, so the SavedModel needs
TensorFlow and tensorflow-text only. Signatures (`text_pair` only for a
pair task, whose model directory says `"pair": true`):

    serving_default(text[, text_pair]) -> probabilities, label_ids, labels
    tokenize(text[, text_pair]) -> token_ids, segment_ids, padding_mask

The graph reproduces the Python path (`kerasbert.text.tokenizer.Tokenizer`
then `kerasbert.data.packing.pack`) id for id. tensorflow-text's
`FastBertTokenizer` alone does not: its normaliser has no
lowercase-without-accent-stripping (what Korean wants), its word limit is
100 bytes where HF's is 100 characters, and it splits "[MASK]" into three
tokens. So the steps are spelt out with regexes and HF's order of
operations, and only the word-to-pieces step is tensorflow-text's
(`FastWordpieceTokenizer`, the same greedy longest-match as HF WordPiece):

1. special tokens ("[MASK]", ...) are cut out of the raw text first and
   kept whole, as HF's added tokens are;
2. `BertNormalizer`: drop control characters, map white space to " ",
   then NFD and drop combining marks (strip_accents), then lower-case
   (per character, as Rust's `char::to_lowercase`: no final sigma);
3. `BertPreTokenizer`: split on spaces, keep each punctuation mark and
   CJK ideograph as its own word;
4. WordPiece per word; a word of more than 100 characters is [UNK].

A SentencePiece model runs the same step 1, then its own `.model` through
`FastSentencepieceTokenizer`.

Known gap: TensorFlow's Unicode tables are newer than those compiled into
HF `tokenizers`, so characters added to Unicode lately (U+061D ARABIC END
OF TEXT MARK, U+2E44 DOUBLE SUSPENSION MARK, new combining marks) split
differently. Checked over all 1,112,064 code points, each alone and inside
words: 568 differ with lowercase + strip_accents, 149 with lowercase only;
every other one gives the same ids.
"""

import json
import os

from kerasbert.errors import UsageError
from kerasbert.text.tokenizer import MAX_WORD_CHARS

# HF BertNormalizer's clean_text: characters it removes (Cc, Cf, Co, Cs and
# U+FFFD; RE2 has no class for unassigned code points, HF's Cn) once tab,
# newline and return became spaces, and the characters it maps to a space
# (Rust's `char::is_whitespace` minus the control ones removed before).
_CONTROL = r"[\p{Cc}\p{Cf}\p{Co}\p{Cs}\x{FFFD}]"
_SPACE = (
    r"[\t\n\r\x{20}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}"
    r"\x{202F}\x{205F}\x{3000}]"
)
# BertPreTokenizer's punctuation (ASCII punctuation or Unicode P*) and
# BertNormalizer's CJK ideograph blocks, each a word of its own.
_PUNCT = r"[!-/:-@\[-`{-~]|\p{P}"
_CJK = (
    r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}"
    r"\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}\x{2B920}-\x{2CEAF}"
    r"\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]"
)
# What Python's str.strip() removes.
_PY_SPACE = (
    r"[\t-\r\x{1C}-\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}"
    r"\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]"
)


def _normalize(text, lowercase: bool, strip_accents: bool):
    """HF `BertNormalizer` on a string tensor (see the module docstring)."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    text = tf.strings.regex_replace(text, r"[\t\n\r]", " ")
    text = tf.strings.regex_replace(text, _CONTROL, "")
    text = tf.strings.regex_replace(text, _SPACE, " ")
    if strip_accents:
        text = tf_text.normalize_utf8(text, "NFD")
        text = tf.strings.regex_replace(text, r"\p{Mn}", "")
    if lowercase:
        # ICU lower-cases a final capital sigma to "ς" by context; Rust
        # maps each character alone, so Σ is always σ.
        text = tf.strings.regex_replace(text, "Σ", "σ")
        text = tf.strings.lower(text, encoding="utf-8")
    return text


def _wordpiece(tokenizer):
    """HF's BERT pipeline on special-token-free pieces: a function from
    strings [n] to ragged int32 ids [n, (tokens)]."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    vocab = [tokenizer.id_to_token(i) for i in range(tokenizer.vocabulary_size)]
    # Longer words than this are swapped for a word that is surely [UNK]
    # (one longer than max_bytes_per_word), so the 100-character rule of
    # HF decides, not tensorflow-text's byte limit.
    max_bytes = 4 * MAX_WORD_CHARS
    wordpiece = tf_text.FastWordpieceTokenizer(
        vocab,
        suffix_indicator="##",
        max_bytes_per_word=max_bytes,
        token_out_type=tf.int32,
        unknown_token=vocab[tokenizer.unk_id],
        no_pretokenization=True,
    )
    too_long_word = "x" * (max_bytes + 1)
    lowercase = bool(tokenizer.lowercase)
    strip_accents = (
        lowercase
        if tokenizer.strip_accents is None
        else bool(tokenizer.strip_accents)
    )

    def encode(text):
        text = _normalize(text, lowercase, strip_accents)
        # Spaces around each mark and ideograph, then split on spaces
        # (the only white space left): cheaper than tf_text.regex_split.
        words = tf.strings.split(
            tf.strings.regex_replace(text, f"({_PUNCT}|{_CJK})", r" \1 ")
        )
        long = (
            tf.strings.length(words.flat_values, unit="UTF8_CHAR")
            > MAX_WORD_CHARS
        )
        flat_words = tf.where(long, too_long_word, words.flat_values)
        # [n, (words), (wordpieces)] -> [n, (wordpieces)]
        ids = words.with_flat_values(wordpiece.tokenize(flat_words))
        return ids.merge_dims(1, 2)

    # HF's added tokens: every special token of the vocabulary.
    names = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    return encode, [n for n in names if tokenizer.token_to_id(n) is not None]


def _sentencepiece(tokenizer):
    """`Tokenizer._encode_spm` on special-token-free pieces."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    # Not tf_text.SentencepieceTokenizer: its older SentencePiece breaks
    # ties between equal-score segmentations ("000" as 0+00 or 00+0) unlike
    # the Python package; the fast one agrees.
    model = tf_text.FastSentencepieceTokenizer(tokenizer.sentencepiece_model())

    def encode(text):
        # Python skips pieces that str.strip() empties.
        blank = tf.strings.regex_full_match(text, f"{_PY_SPACE}*")
        ids = model.tokenize(tf.where(blank, "", text))
        return tf.cast(ids, tf.int32).with_row_splits_dtype(tf.int64)

    return encode, [
        tokenizer.id_to_token(i)
        for i in (
            tokenizer.cls_id,
            tokenizer.sep_id,
            tokenizer.mask_id,
            tokenizer.pad_id,
        )
    ]


def graph_tokenizer(tokenizer):
    """A function from a 1-D string tensor to ragged int32 ids
    `[batch, (tokens)]`, equal to `tokenizer.encode_batch`."""
    import re

    import tensorflow as tf
    import tensorflow_text as tf_text

    encode, specials = (
        _wordpiece if tokenizer.kind == "wordpiece" else _sentencepiece
    )(tokenizer)
    special_names = tf.constant(specials)
    special_values = tf.constant(
        [tokenizer.token_to_id(n) for n in specials], tf.int32
    )
    special_regex = "|".join(re.escape(n) for n in specials)

    def tokenize(text):
        # tensorflow-text's regex_split ends a string at a NUL. Private-use
        # U+E000 stands in: HF's BERT normaliser removes both, SentencePiece
        # makes either one <unk>.
        text = tf.strings.regex_replace(text, r"\x00", "\ue000")
        # [batch, (pieces)]: special tokens and the text between them.
        pieces = tf_text.regex_split(text, special_regex, special_regex)
        flat = pieces.flat_values
        is_special = tf.equal(flat[:, None], special_names[None, :])
        special_id = tf.reduce_sum(
            tf.cast(is_special, tf.int32) * special_values, axis=1
        )
        is_special = tf.reduce_any(is_special, axis=1)
        # [pieces, (0 or 1)]: the id of a special piece, and [pieces,
        # (tokens)]: the ids of the others.
        special_ids = tf.RaggedTensor.from_row_lengths(
            tf.boolean_mask(special_id, is_special),
            tf.cast(is_special, tf.int64),
        )
        ids = tf.concat(
            [encode(tf.where(is_special, "", flat)), special_ids], axis=1
        )
        return pieces.with_flat_values(ids).merge_dims(1, 2)

    return tokenize


def _truncate(ids, length, truncation: str):
    """`packing.truncate` on every row of ragged `ids` [batch, (n)];
    `length` is an int64 scalar or [batch] vector."""
    import tensorflow as tf

    n = ids.row_lengths()
    length = tf.broadcast_to(tf.cast(length, tf.int64), tf.shape(n))
    cut = n > length
    head = {
        "head": length,
        "tail": tf.zeros_like(length),
        "head+tail": length // 4,
    }[truncation]
    head = tf.where(cut, head, n)
    tail = tf.where(cut, length - head, tf.zeros_like(n))
    # Positions into ids.values: the first `head`, then the last `tail`.
    starts = ids.row_starts()
    index = tf.concat(
        [
            tf.ragged.range(starts, starts + head),
            tf.ragged.range(starts + n - tail, starts + n),
        ],
        axis=1,
    )
    return tf.gather(ids.values, index)


def graph_pack(
    ids_a,
    ids_b=None,
    *,
    max_length: int,
    truncation: str,
    cls_id: int,
    sep_id: int,
    pad_id: int,
):
    """`packing.pack` on ragged id batches, padded: a dict of int32
    `token_ids`, `segment_ids`, `padding_mask` [batch, longest]."""
    import tensorflow as tf

    def column(value):  # [batch, 1] ragged
        return tf.RaggedTensor.from_tensor(
            tf.fill(tf.stack([ids_a.nrows(), 1]), tf.constant(value))
        )

    def like(ids, value):
        return ids.with_flat_values(
            tf.fill(tf.shape(ids.flat_values), tf.constant(value))
        )

    cls, sep = column(cls_id), column(sep_id)
    if ids_b is None:
        a = _truncate(ids_a, max_length - 2, truncation)
        token_ids = tf.concat([cls, a, sep], axis=1)
        segment_ids = like(token_ids, 0)
    else:
        budget = tf.constant(max_length - 3, tf.int64)
        len_a, len_b = ids_a.row_lengths(), ids_b.row_lengths()
        # packing.pair_lengths: longest first.
        keep_b = tf.minimum(len_b, tf.maximum(budget - len_a, budget // 2))
        keep_a = tf.minimum(len_a, budget - keep_b)
        a = tf.concat([cls, _truncate(ids_a, keep_a, truncation), sep], axis=1)
        b = tf.concat([_truncate(ids_b, keep_b, truncation), sep], axis=1)
        token_ids = tf.concat([a, b], axis=1)
        segment_ids = tf.concat([like(a, 0), like(b, 1)], axis=1)
    # Every row has [CLS] and [SEP]; an empty batch gets 2 columns as well,
    # so the pooler's [:, 0] has a column to take.
    shape = tf.stack(
        [token_ids.nrows(), tf.maximum(token_ids.bounding_shape(1), 2)]
    )
    return {
        "token_ids": token_ids.to_tensor(pad_id, shape=shape),
        "segment_ids": segment_ids.to_tensor(0, shape=shape),
        "padding_mask": like(token_ids, 1).to_tensor(0, shape=shape),
    }


def export_text_classifier(
    model,
    tokenizer,
    path: str,
    *,
    labels,
    max_length: int,
    truncation: str = "head",
    pair: bool = False,
) -> str:
    """Writes the raw-text SavedModel of a `BertClassifier` to folder `path`
    (atomically: `path` is the old export or the complete new one).

    Args:
        model: a `BertClassifier` (any dtype policy; served in float32).
        tokenizer: its `kerasbert.text.tokenizer.Tokenizer` (WordPiece or
            SentencePiece).
        path: output folder.
        labels: label names, index = class id.
        max_length: tokens per packed example, [CLS] and [SEP]s included.
        truncation: "head", "tail" or "head+tail" (`packing.truncate`).
        pair: True for a sentence-pair task (adds input `text_pair`).
    """
    import tensorflow as tf

    from kerasbert.data.packing import TRUNCATIONS
    from kerasbert.files import atomic_dir
    from kerasbert.modeling import BertClassifier
    from kerasbert.serving.export import float32_copy

    if not isinstance(model, BertClassifier):
        raise UsageError(
            f"model: a {type(model).__name__}, not a BertClassifier"
        )
    if truncation not in TRUNCATIONS:
        raise UsageError(
            f"truncation: unknown value {truncation!r} "
            f"(choose from {', '.join(TRUNCATIONS)})"
        )
    pair = bool(pair)
    limit = model.backbone.max_sequence_length
    if not isinstance(max_length, int) or not 2 + pair < max_length <= limit:
        raise UsageError(
            f"max_length: {max_length} is not in "
            f"{3 + pair}..{limit} (the model's positions)"
        )
    labels = [str(label) for label in labels]
    if len(labels) != model.num_classes:
        raise UsageError(
            f"labels: {len(labels)} names for a model of "
            f"{model.num_classes} classes"
        )
    tokenize = graph_tokenizer(tokenizer)
    model = float32_copy(model)
    label_names = tf.constant(labels)

    def features(text, text_pair=None):
        return graph_pack(
            tokenize(text),
            None if text_pair is None else tokenize(text_pair),
            max_length=max_length,
            truncation=truncation,
            cls_id=tokenizer.cls_id,
            sep_id=tokenizer.sep_id,
            pad_id=tokenizer.pad_id,
        )

    def classify(text, text_pair=None):
        # Real tokens only through the dense layers: same logits, less work.
        logits = model.call_unpadded(features(text, text_pair))
        label_ids = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return {
            "probabilities": tf.nn.softmax(tf.cast(logits, tf.float32)),
            "label_ids": label_ids,
            "labels": tf.gather(label_names, label_ids),
        }

    spec = [tf.TensorSpec([None], tf.string, name="text")]
    if pair:
        spec.append(tf.TensorSpec([None], tf.string, name="text_pair"))
    # A plain tf.Module rather than keras.export.ExportArchive (which
    # `export_saved_model` uses): the archive traces every endpoint twice
    # and walks every layer's functions, tripling the export time here.
    module = tf.Module()
    module.weights = list(model.weights)
    module.classify = tf.function(
        classify, input_signature=spec, autograph=False
    )
    module.tokenize = tf.function(
        features, input_signature=spec, autograph=False
    )
    with atomic_dir(path) as tmp:
        tf.saved_model.save(
            module,
            tmp,
            signatures={
                "serving_default": module.classify,
                "tokenize": module.tokenize,
            },
        )
        with open(
            os.path.join(tmp, "kerasbert_classifier.json"),
            "w",
            encoding="utf-8",
        ) as f:
            json.dump(
                {
                    "labels": labels,
                    "max_length": max_length,
                    "truncation": truncation,
                    "pair": pair,
                },
                f,
                indent=2,
                ensure_ascii=False,
            )
    return path


def export_classifier_dir(
    directory: str, path: str, checkpoint: str = "model"
) -> str:
    """`export_text_classifier` of a fine-tuning output directory
    (config.json with "labels", "pair" and "finetune": {"max_length",
    "truncation"}; tokenizer/; model.keras)."""
    from kerasbert.serving.classifier import load_classifier

    model, tokenizer, config = load_classifier(directory, checkpoint, "RUN_DIR")
    finetune = config["finetune"]
    return export_text_classifier(
        model,
        tokenizer,
        path,
        labels=config["labels"],
        max_length=finetune["max_length"],
        truncation=finetune["truncation"],
        pair=bool(config.get("pair", False)),
    )


def is_classifier_dir(directory: str) -> bool:
    """True if `directory`'s config.json names labels (fine-tuning's)."""
    from kerasbert.config import read_json_object

    path = os.path.join(directory, "config.json")
    if not os.path.isdir(directory) or not os.path.lexists(path):
        return False
    return "labels" in read_json_object(path, f"RUN_DIR: {path}")
