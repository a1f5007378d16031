"""Labelled texts for classification: readers, labels, splits and batches.

Readers return `Examples` (texts, optional second texts, label strings, and
where each came from, for error messages). Formats:

    tsv / csv   a header row names the columns, or `columns=` names them for
                header-less files (CoLA: source,label,original_label,sentence)
    jsonl       one JSON object per line
    semicolon   `text;label` lines split on the last ";" (the emotion files);
                a first line starting with "text;" is a header and skipped
    folder      one subfolder of .txt files per label (nltk movie_reviews)
    hf          a Hugging Face datasets name[:split], when it can be reached

Files may start with a UTF-8 byte-order mark (Windows editors write one);
it is dropped. Hidden folders (`.ipynb_checkpoints/`) are no classes.

Labels are strings until `label_names` fixes the class ids: all-integer
labels sort numerically, names alphabetically. Real-valued labels are a
regression task, which this is not, so they are an error.

Batching: every text is packed by `kerasbert.data.packing.pack` (the rule
the raw-text SavedModel mirrors). With bucketing, batches hold texts of
similar length and are padded to their longest text; without it, every
batch is padded to `max_length`. Padding is masked, so both give the same
predictions; bucketing just skips the work on padding.

Under XLA (`fixed_shapes`) every new input shape is a new compiled program
(seconds each on a CPU, more on a GPU), so a batch's length is rounded up
to `xla_length`'s ladder and its row count is always `batch_size`: the last
batch is filled with copies of its first row, weighted 0. The padding rows
cost compute, never a metric: the loss is the weighted mean
(`mean_with_sample_weight`) and accuracy is weighted. Programs per
function: at most `len(xla_lengths(max_length))`, 3 for length 64, 4 for
128, 6 for 512.
"""

import csv
import json
import os
import re
from dataclasses import dataclass

import numpy as np

from kerasbert.data.packing import pack
from kerasbert.errors import UsageError
from kerasbert.files import check_regular

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(
    r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?|nan|inf", re.IGNORECASE
)
# Batches are formed from sorted windows of this many batches: lengths
# within a window are similar, yet batch contents still vary per epoch.
_WINDOW_BATCHES = 50
# XLA's length ladder: powers of two from 16. One program per octave (3
# for --max-length 64, 4 for 128, 6 for 512) at the cost of up to 2x
# padding on a batch just past a step; multiples of 16 would pad less but
# compile 4, 8 and 14, and a program (7-10 s on a 2-core CPU for `tiny`,
# more for `base` on a GPU) outweighed the padding in every run measured
# (docs/performance.md).
_XLA_SHORTEST = 16


@dataclass
class Examples:
    texts: list[str]
    pairs: list[str] | None  # second texts of sentence-pair tasks
    labels: list[str] | None  # None when the data has no labels
    where: list[str]  # "file:line" of each example, for errors

    def __len__(self):
        return len(self.texts)

    def subset(self, index) -> "Examples":
        def pick(xs):
            return None if xs is None else [xs[i] for i in index]

        return Examples(
            pick(self.texts),
            pick(self.pairs),
            pick(self.labels),
            pick(self.where),
        )


def detect_format(path: str, flag: str) -> str:
    if os.path.isdir(path):
        return "folder"
    if not os.path.exists(path):
        raise UsageError(
            f"{flag}: {path}: no such file or folder (a "
            "Hugging Face dataset needs --data-format hf)"
        )
    ext = os.path.splitext(path)[1].lower()
    if ext in (".tsv", ".csv"):
        return ext[1:]
    if ext in (".jsonl", ".json"):
        return "jsonl"
    first = _first_line(path, flag)
    if "\t" in first:
        return "tsv"
    if ";" in first:
        return "semicolon"
    raise UsageError(
        f"{flag}: {path}: cannot tell the format (no tab or "
        "';' on the first line); pass --data-format"
    )


def _first_line(path, flag):
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line in f:
                if line.strip():
                    return line
    except UnicodeDecodeError as e:
        raise UsageError(f"{flag}: {path}: not UTF-8 text ({e})") from None
    raise UsageError(f"{flag}: {path}: is empty")


def read_examples(
    path: str,
    *,
    flag: str,
    data_format: str = "auto",
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str | None = "label",
    columns: str | None = None,
    hf_config: str | None = None,
) -> Examples:
    """Reads labelled (or, with `label_column=None`, unlabelled) texts.

    `flag` names the source in errors (`--train`, `--test`, ...)."""
    if data_format == "hf":
        rows = _read_hf(path, flag, hf_config)
    else:
        if os.path.exists(path) and not os.path.isdir(path):
            check_regular(path, f"{flag}: {path}")  # a FIFO would block
        if data_format == "auto":
            data_format = detect_format(path, flag)
        elif not os.path.exists(path):
            raise UsageError(f"{flag}: {path}: no such file or folder")
        if data_format == "folder":
            return _read_folder(path, flag, text_pair_column)
        try:
            rows = list(_ROW_READERS[data_format](path, flag, columns))
        except UnicodeDecodeError as e:
            raise UsageError(f"{flag}: {path}: not UTF-8 text ({e})") from None
        except csv.Error as e:
            raise UsageError(f"{flag}: {path}: {e}") from None
        if data_format == "semicolon":
            text_column, label_column = "text", label_column and "label"
    if not rows:
        raise UsageError(f"{flag}: {path}: has no examples")
    wanted = [c for c in (text_column, text_pair_column, label_column) if c]
    texts, pairs, labels, where = [], [], [], []
    for place, row in rows:
        for column in wanted:
            value = row.get(column)
            if value is None:
                if column not in row:
                    raise UsageError(
                        f"{flag}: {place}: no column {column!r} (columns: "
                        f"{', '.join(map(str, row))})"
                    )
                raise UsageError(f"{flag}: {place}: {column!r} is empty")
        texts.append(_text(row[text_column], flag, place, text_column))
        if text_pair_column:
            pairs.append(
                _text(row[text_pair_column], flag, place, text_pair_column)
            )
        if label_column:
            labels.append(_label(row[label_column], flag, place))
        where.append(place)
    return Examples(
        texts,
        pairs if text_pair_column else None,
        labels if label_column else None,
        where,
    )


def _text(value, flag, place, column):
    if not isinstance(value, str):
        raise UsageError(f"{flag}: {place}: {column!r} is not text ({value!r})")
    return value


def _label(value, flag, place):
    if isinstance(value, (bool, float, list, dict)) or value is None:
        raise UsageError(
            f"{flag}: {place}: label {value!r} is not a class name or integer"
        )
    value = str(value).strip()
    if not value:
        raise UsageError(f"{flag}: {place}: the label is empty")
    return value


def _read_table(path, flag, columns, delimiter):
    with open(path, newline="", encoding="utf-8-sig") as f:
        # TSV fields are never quoted (CoLA sentences hold lone quotes).
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = [c.strip() for c in columns.split(",")] if columns else None
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [c.strip() for c in row]
                continue
            place = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                raise UsageError(
                    f"{flag}: {place}: {len(row)} fields, expected "
                    f"{len(header)} ({','.join(header)})"
                )
            yield place, dict(zip(header, row))


def _read_semicolon(path, flag, columns):
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or (
                number == 1 and line.lower().startswith("text;")
            ):
                continue
            place = f"{path}:{number}"
            if ";" not in line:
                raise UsageError(f"{flag}: {place}: no ';' before the label")
            text, label = line.rsplit(";", 1)
            yield place, {"text": text, "label": label}


def _read_jsonl(path, flag, columns):
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            place = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{flag}: {place}: not JSON ({e})") from None
            if not isinstance(row, dict):
                raise UsageError(f"{flag}: {place}: not a JSON object")
            yield place, row


_ROW_READERS = {
    "tsv": lambda p, f, c: _read_table(p, f, c, "\t"),
    "csv": lambda p, f, c: _read_table(p, f, c, ","),
    "semicolon": _read_semicolon,
    "jsonl": _read_jsonl,
}


def _read_folder(path, flag, text_pair_column):
    if text_pair_column:
        raise UsageError(
            f"{flag}: {path}: a folder of .txt files holds "
            "single texts; --text-pair-column needs a table"
        )
    texts, labels, where = [], [], []
    for label in sorted(os.listdir(path)):
        folder = os.path.join(path, label)
        if not os.path.isdir(folder) or label.startswith("."):
            continue  # hidden: editor and notebook state, no class
        names = [
            n
            for n in sorted(os.listdir(folder))
            if n.endswith(".txt") and not n.startswith(".")
        ]
        if not names:
            raise UsageError(
                f"{flag}: {folder}: no .txt files, so class {label!r} "
                "would have no examples (remove the folder or fill it)"
            )
        for name in names:
            file = os.path.join(folder, name)
            try:
                with open(file, encoding="utf-8-sig") as f:
                    texts.append(f.read())
            except UnicodeDecodeError as e:
                raise UsageError(
                    f"{flag}: {file}: not UTF-8 text ({e})"
                ) from None
            labels.append(label)
            where.append(file)
    if not texts:
        raise UsageError(f"{flag}: {path}: no <label>/*.txt files")
    return Examples(texts, None, labels, where)


def _read_hf(name, flag, hf_config):
    name, _, split = name.partition(":")
    split = split or {
        "--train": "train",
        "--validation": "validation",
        "--test": "test",
    }.get(flag, "train")
    try:
        import datasets
        import huggingface_hub

        # Their retry warnings would bury the one-line error below.
        datasets.logging.set_verbosity_error()
        huggingface_hub.utils.logging.set_verbosity_error()
        data = datasets.load_dataset(name, hf_config, split=split)
    except Exception as e:  # offline, unknown name, missing split...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UsageError(
            f"{flag}: cannot load Hugging Face dataset {name!r} split "
            f"{split!r} (offline or unknown: {type(e).__name__}: "
            f"{first})"
        ) from None
    names = {}
    for column, feature in data.features.items():
        if hasattr(feature, "names"):  # ClassLabel: keep the label names
            names[column] = feature.names
    for i, row in enumerate(data):
        row = {
            k: names[k][v] if k in names and isinstance(v, int) else v
            for k, v in row.items()
        }
        yield f"{name}[{split}][{i}]", row


def label_names(
    labels: list[str], flag: str = "--train", where: list[str] | None = None
) -> list[str]:
    """The class names, index = class id. `where` (each label's place)
    lets an error name the line of the offending value."""
    distinct = set(labels)
    if all(_INT.fullmatch(v) for v in distinct):
        return sorted(distinct, key=int)
    if all(_FLOAT.fullmatch(v) for v in distinct):
        odd = next(v for v in labels if not _INT.fullmatch(v))
        place = f" at {where[labels.index(odd)]}" if where else ""
        raise UsageError(
            f"{flag}: the label column holds real numbers ({odd!r}{place}"
            "); classification needs class names or integers"
        )
    return sorted(distinct)


def label_ids(examples: Examples, names: list[str], flag: str) -> np.ndarray:
    """Class ids of `examples`; a label training never saw is an error."""
    index = {n: i for i, n in enumerate(names)}
    ids = []
    for label, place in zip(examples.labels, examples.where):
        if label not in index:
            raise UsageError(
                f"{flag}: {place}: label {label!r} is not in the training "
                f"labels ({', '.join(names)})"
            )
        ids.append(index[label])
    return np.asarray(ids, np.int32)


def sample(examples: Examples, limit: int | None, seed: int) -> Examples:
    """A seeded random `limit` examples, in their file order."""
    if limit is None or limit >= len(examples):
        return examples
    rng = np.random.default_rng(seed)
    return examples.subset(
        np.sort(rng.choice(len(examples), limit, replace=False))
    )


def stratified_split(ids: np.ndarray, fraction: float, seed: int):
    """(train index, held-out index): `fraction` of every class held out
    (at least one example of a class with two or more)."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(ids):
        members = rng.permutation(np.flatnonzero(ids == c))
        n = int(round(fraction * len(members)))
        held.extend(members[: max(n, 1 if len(members) > 1 else 0)])
    held = np.sort(np.asarray(held, np.int64))
    return np.setdiff1d(np.arange(len(ids)), held), held


def encode(
    tokenizer, examples: Examples, max_length: int, truncation: str
) -> list[tuple[list[int], list[int]]]:
    """`(token_ids, segment_ids)` of every example, unpadded."""
    ids_a = tokenizer.encode_batch(examples.texts)
    ids_b = (
        tokenizer.encode_batch(examples.pairs)
        if examples.pairs is not None
        else [None] * len(ids_a)
    )
    return [
        pack(
            a,
            b,
            max_length=max_length,
            truncation=truncation,
            cls_id=tokenizer.cls_id,
            sep_id=tokenizer.sep_id,
        )
        for a, b in zip(ids_a, ids_b)
    ]


def batch_order(
    lengths,
    batch_size: int,
    bucketing: bool,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Example indices of each batch: shuffled when `rng` is given (training),
    else in order (inference; with bucketing, sorted by length).

    Bucketing sorts windows of `_WINDOW_BATCHES` batches by length, cuts
    them into batches and shuffles the batches: always ceil(n / batch_size)
    batches, so the schedule knows the step count in advance."""
    lengths = np.asarray(lengths)
    order = (
        rng.permutation(len(lengths))
        if rng is not None
        else np.arange(len(lengths))
    )
    if bucketing:
        window = batch_size * _WINDOW_BATCHES
        order = np.concatenate(
            [
                chunk[np.argsort(lengths[chunk], kind="stable")]
                for chunk in np.split(order, range(window, len(order), window))
            ]
        )
    batches = np.split(order, range(batch_size, len(order), batch_size))
    if rng is not None and bucketing:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def xla_length(longest: int, max_length: int) -> int:
    """`longest` rounded up to the ladder (see `_XLA_SHORTEST`), never
    beyond `max_length`."""
    length = _XLA_SHORTEST
    while length < longest:
        length *= 2
    return min(max_length, length)


def xla_lengths(max_length: int) -> list[int]:
    """Every length `xla_length` gives for texts up to `max_length`."""
    return sorted({xla_length(n, max_length) for n in range(1, max_length + 1)})


def fixed_shape(encoded, index, batch_size, max_length, bucketing):
    """(index, length, weights) of a batch in XLA's shapes: `index` filled
    to `batch_size` rows with its first one, those copies weighted 0, and
    the length from the ladder (`max_length` without bucketing)."""
    filler = batch_size - len(index)
    weights = np.concatenate([np.ones(len(index)), np.zeros(filler)])
    index = np.concatenate([index, np.repeat(index[:1], filler)])
    longest = max(len(encoded[i][0]) for i in index)
    length = xla_length(longest, max_length) if bucketing else max_length
    return index, length, weights.astype(np.float32)


def pad_batch(encoded, index, length: int | None = None) -> dict:
    """Model inputs of the examples `index`, padded to `length` (default:
    the longest of them)."""
    length = length or max(len(encoded[i][0]) for i in index)
    token_ids = np.zeros((len(index), length), np.int32)
    segment_ids = np.zeros_like(token_ids)
    for row, i in enumerate(index):
        ids, segments = encoded[i]
        token_ids[row, : len(ids)] = ids
        segment_ids[row, : len(ids)] = segments
    return {
        "token_ids": token_ids,
        "segment_ids": segment_ids,
        "padding_mask": _mask(encoded, index, length),
    }


def _mask(encoded, index, length):
    # From the lengths, not `token_ids != pad`: a vocabulary may put
    # [PAD] anywhere, and a real token must never be masked.
    lengths = np.array([len(encoded[i][0]) for i in index])
    return (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)


def training_dataset(
    encoded,
    labels: np.ndarray,
    batch_size: int,
    bucketing: bool,
    max_length: int,
    seed: int,
    first_epoch: int,
    epochs: int,
    skip: int = 0,
    fixed_shapes: bool = False,
):
    """tf.data of (inputs, label, weight) batches for epochs `first_epoch`..
    `epochs - 1`, one after the other, less the first `skip` batches of
    `first_epoch`. Epoch e's order depends only on (seed, e), so a run
    resumed at any step sees the batches it would have seen.
    `fixed_shapes`: XLA's shapes (module docstring); else every weight
    is 1."""
    import tensorflow as tf

    lengths = [len(ids) for ids, _ in encoded]

    def batches():
        for epoch in range(first_epoch, epochs):
            rng = np.random.default_rng([seed, epoch])
            order = batch_order(lengths, batch_size, bucketing, rng)
            if epoch == first_epoch:
                order = order[skip:]
            for index in order:
                if fixed_shapes:
                    index, length, weights = fixed_shape(
                        encoded, index, batch_size, max_length, bucketing
                    )
                else:
                    length = None if bucketing else max_length
                    weights = np.ones(len(index), np.float32)
                yield (
                    pad_batch(encoded, index, length),
                    labels[index],
                    weights,
                )

    spec = tf.TensorSpec((None, None), tf.int32)
    signature = (
        {k: spec for k in ("token_ids", "segment_ids", "padding_mask")},
        tf.TensorSpec((None,), tf.int32),
        tf.TensorSpec((None,), tf.float32),
    )
    from kerasbert.data.tfdata import without_autotune

    return without_autotune(
        tf.data.Dataset.from_generator(
            batches, output_signature=signature
        ).prefetch(2)
    )


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
