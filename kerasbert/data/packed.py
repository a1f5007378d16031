"""Packed masked-LM rows: several whole texts per row, each on its own.

Short texts (tweets, reviews, one-line documents) padded one per row leave
most of a step to padding: emotion's tweets fill 18% of a 128-token row
(docs/data.md). Packing puts texts side by side until the row is full,

    [CLS] text 1 [SEP] [CLS] text 2 [SEP] [CLS] text 3 [SEP] [PAD]...
    padding_mask   1 1 1 1 ...  2 2 2 2 ...  3 3 3 3 ...  0 ...

and the model restarts positions at each [CLS] and keeps attention inside
each text (`kerasbert.modeling.layers.text_positions`, `attention_mask`),
so a packed row computes exactly what its texts would compute one per row
(Krell et al. 2021, "Efficient sequence packing without
cross-contamination"). Segment ids are 0, as for any single text.

A *text* is a document of at most `sequence_length - 2` tokens, or a
piece of that length of a longer one (cut where the row is full, not at a
sentence end: texts of whole sentences filled 0.88 of the bundled WikiText
sample's 64-token rows, pieces fill 0.998). The texts are fixed; every
epoch shuffles them with `default_rng([seed, epoch])` and packs them in
that order, first fit among
the last `WINDOW` rows still open: a text goes into the oldest open row it
fits in, else opens a row, and the oldest row is closed when more than
`WINDOW` are open (or when it is full). Every text is used once per epoch.

No next-sentence prediction: NSP's head reads the pooled [CLS] of position
0, one per row; a label per packed pair would need a variable number of
pooled vectors and labels per row, a new model input and head. Packing is
for masked-LM-only training (`--no-nsp`); `next_sentence_label` is 0.
"""

from dataclasses import dataclass

import numpy as np

from kerasbert.data.pairing import usable_documents

# Open rows the first fit looks at: emotion's tweets at 128 tokens fill
# 0.984 of their rows with 8, 0.986 with 16, 0.987 with 32; the loop's
# cost grows with it.
WINDOW = 16


def text_ranges(corpus, document_ids, max_tokens: int):
    """(start, length) int64 arrays of the texts of `document_ids` (all
    documents when None): a document of up to `max_tokens` tokens is one
    text, a longer one is cut into `max_tokens`-long pieces (the last one
    shorter)."""
    so = np.asarray(corpus.sentence_offsets, dtype=np.int64)
    do = np.asarray(corpus.document_offsets, dtype=np.int64)
    ids = usable_documents(corpus, document_ids)
    first, end = so[do[ids]], so[do[ids + 1]]
    pieces = -(-(end - first) // max_tokens)  # ceil
    starts = np.repeat(first, pieces) + max_tokens * (
        np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    )
    lengths = np.minimum(np.repeat(end, pieces) - starts, max_tokens)
    return starts.astype(np.int64), lengths.astype(np.int64)


def first_fit(sizes, length: int, window: int = WINDOW):
    """Rows of `sizes` (each <= `length`), first fit in the last `window`
    open rows (see the module docstring). Returns the text indices in row
    order and the CSR offsets [num_rows + 1] of each row's texts."""
    rooms, members, rows = [], [], []
    smallest = 3  # [CLS] token [SEP]: a row with less room is full
    for i, size in enumerate(np.asarray(sizes).tolist()):
        for r, room in enumerate(rooms):
            if room >= size:
                rooms[r] -= size
                members[r].append(i)
                if rooms[r] < smallest:
                    rows.append(members.pop(r))
                    rooms.pop(r)
                break
        else:
            rooms.append(length - size)
            members.append([i])
            if len(rooms) > window or rooms[-1] < smallest:
                k = 0 if len(rooms) > window else len(rooms) - 1
                rows.append(members.pop(k))
                rooms.pop(k)
    rows += members
    order = np.array([i for row in rows for i in row], np.int64)
    offsets = np.zeros(len(rows) + 1, np.int64)
    offsets[1:] = np.cumsum([len(row) for row in rows])
    return order, offsets


@dataclass(eq=False)
class Packing:
    """One epoch's rows: the texts of row r are `starts[offsets[r]:
    offsets[r + 1]]` (and `lengths`), in their order in the row."""

    starts: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def real_tokens(self) -> np.ndarray:
        """Real tokens ([CLS], text, [SEP]) of every row."""
        sizes = np.concatenate([[0], np.cumsum(self.lengths + 2)])
        return sizes[self.offsets[1:]] - sizes[self.offsets[:-1]]


def epoch_packing(texts, sequence_length: int, seed: int, epoch: int):
    """The `Packing` of epoch `epoch`: `texts` (from `text_ranges`)
    shuffled by `default_rng([seed, epoch])`, then packed."""
    starts, lengths = texts
    perm = np.random.default_rng([seed, epoch]).permutation(len(starts))
    order, offsets = first_fit(lengths[perm] + 2, sequence_length)
    return Packing(starts[perm][order], lengths[perm][order], offsets)


def assemble_packed(
    tokens,
    packing: Packing,
    rows: np.ndarray,
    sequence_length: int,
    *,
    cls_id: int,
    sep_id: int,
    pad_id: int,
):
    """token_ids, segment_ids, padding_mask [len(rows), sequence_length]
    and next_sentence_label [len(rows)] (int32) of rows `rows`."""
    rows = np.asarray(rows, np.int64)
    first, last = packing.offsets[rows], packing.offsets[rows + 1]
    count = last - first
    # The selected rows' texts, flat, and the output row each lands in.
    text = np.repeat(first - np.cumsum(count) + count, count) + np.arange(
        count.sum()
    )
    out_row = np.repeat(np.arange(len(rows)), count)
    size = packing.lengths[text] + 2
    # Where each text starts in its row: the sizes before it in that row
    # (every row holds at least one text).
    before = np.cumsum(size) - size
    offset = before - np.repeat(before[np.cumsum(count) - count], count)
    number = text - np.repeat(first, count) + 1  # 1, 2, 3... per row
    # Every position of every text: row, column, source token.
    k = np.arange(int(size.sum())) - np.repeat(before, size)
    flat = np.repeat(out_row * sequence_length + offset, size) + k
    src = np.repeat(packing.starts[text] - 1, size) + k
    ids = np.full(len(rows) * sequence_length, pad_id, np.int32)
    ids[flat] = np.asarray(tokens)[np.clip(src, 0, len(tokens) - 1)]
    ids[flat[k == 0]] = cls_id
    ids[flat[k == np.repeat(size - 1, size)]] = sep_id
    mask = np.zeros(len(rows) * sequence_length, np.int32)
    mask[flat] = np.repeat(number, size)
    shape = (len(rows), sequence_length)
    return (
        ids.reshape(shape),
        np.zeros(shape, np.int32),
        mask.reshape(shape),
        np.zeros(len(rows), np.int32),
    )
