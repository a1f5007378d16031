"""The pretraining input pipeline: NSP pairs, dynamic masks, batches.

    corpus (TokenCorpus) --pairing.create_pairs, per epoch, numpy-->
    pairs (a_start, a_len, b_start, b_len, label), shuffled -->
    blocks of global batches, assembled by one numpy gather (generator) -->
    unbatch to global batches --DynamicMasker, Dataset.map, parallel-->
    (x, y) dicts --prefetch

With `packing=True` (masked LM only) rows are packed texts instead of
pairs (`kerasbert.data.packed`): every epoch packs the same texts in a new
order, and everything below holds for them as for pairs.

The stream is a sequence of *global batches*: epoch 0's pairs (shuffled,
the last partial batch dropped), then epoch 1's -- new pairs from
`default_rng([seed, epoch])` and new masks from (seed, global batch index) --
and so on forever (`repeat=True`), or epoch 0 only (`repeat=False`, for
held-out evaluation: the same batches every time for a seed).
`start_batch=k` yields exactly the stream from global batch k on, so a
resumed run sees what an uninterrupted one would have seen; whole epochs
before k are paired (cheap) but never assembled or masked.

Multi-worker: every worker builds the same global stream and keeps rows
`[w * B / n, (w + 1) * B / n)` of each global batch (B = `batch_size`, the
global batch size, divisible by n = `num_workers`). Masks are drawn for the
whole global batch and sliced, so n workers together see exactly the
examples, masks included, that one process sees.
"""

import numpy as np
import tensorflow as tf

from kerasbert.data.masking import DynamicMasker, draw_noise, validate_masking
from kerasbert.data.packed import assemble_packed, epoch_packing, text_ranges
from kerasbert.data.pairing import (  # noqa: F401  count_pairs: API
    assemble,
    count_pairs,
    epoch_pairs,
    usable_documents,
)
from kerasbert.data.tfdata import without_autotune
from kerasbert.errors import UsageError

# Sequences per generator yield: big enough that the Python generator's
# per-element cost vanishes, small enough to start fast.
_BLOCK_ROWS = 1024


def block_batches(batch_size: int) -> int:
    """Global batches per masking block (a function of the global size)."""
    return max(1, _BLOCK_ROWS // batch_size)


class EpochRows:
    """The rows of any epoch of one stream: NSP pairs, or packed texts.

    `epoch(e)` is epoch e's rows (an array of pairs or a `Packing`), and
    `assemble(rows, indices)` their token_ids, segment_ids, padding_mask
    and next_sentence_label; `real_tokens(rows)` the real tokens per row.
    """

    def __init__(
        self,
        corpus,
        *,
        packing: bool = False,
        sequence_length: int = 128,
        short_seq_prob: float = 0.1,
        nsp_probability: float = 0.5,
        seed: int = 0,
        document_ids=None,
    ):
        self.corpus = corpus
        self.packing = packing
        self.sequence_length = sequence_length
        self.seed = seed
        self.pair_args = dict(
            sequence_length=sequence_length,
            short_seq_prob=short_seq_prob,
            nsp_probability=nsp_probability,
            seed=seed,
            document_ids=document_ids,
        )
        if packing:  # the texts are the same every epoch: cut them once
            self.texts = text_ranges(corpus, document_ids, sequence_length - 2)

    def epoch(self, epoch: int):
        if self.packing:
            return epoch_packing(
                self.texts, self.sequence_length, self.seed, epoch
            )
        return epoch_pairs(self.corpus, epoch=epoch, **self.pair_args)

    def assemble(self, rows, indices, **special):
        if self.packing:
            return assemble_packed(
                self.corpus.tokens,
                rows,
                indices,
                self.sequence_length,
                **special,
            )
        return assemble(
            self.corpus.tokens, rows[indices], self.sequence_length, **special
        )

    def real_tokens(self, rows) -> np.ndarray:
        if self.packing:
            return rows.real_tokens()
        return rows[:, 1] + rows[:, 3] + 3  # [CLS] A [SEP] B [SEP]


def fill(rows: EpochRows, batch_size: int, epoch: int = 0) -> float:
    """Real tokens / positions over the batches of epoch `epoch`."""
    rows_of_epoch = rows.epoch(epoch)
    used = len(rows_of_epoch) // batch_size * batch_size
    if used == 0:
        return 0.0
    real = rows.real_tokens(rows_of_epoch)[:used]
    return float(real.mean() / rows.sequence_length)


def pretraining_dataset(
    corpus,
    tokenizer,
    *,
    sequence_length: int = 128,
    batch_size: int = 32,
    max_predictions: int = 20,
    mask_rate: float = 0.15,
    whole_word: bool = False,
    nsp_probability: float = 0.5,
    short_seq_prob: float = 0.1,
    seed: int = 0,
    document_ids=None,
    repeat: bool = True,
    start_batch: int = 0,
    num_workers: int = 1,
    worker_index: int = 0,
    packing: bool = False,
) -> tf.data.Dataset:
    """`(x, y)` batches for `BertPretrainer.fit`; see the module docstring.

    x: token_ids, segment_ids, padding_mask [rows, sequence_length] int32,
    mask_positions [rows, max_predictions] int32; y: mask_ids int32,
    mask_weights float32 [rows, max_predictions], next_sentence_label
    [rows] int32, where rows = batch_size / num_workers.
    """
    validate_masking(
        sequence_length=sequence_length,
        max_predictions=max_predictions,
        mask_rate=mask_rate,
    )
    if not 0 <= nsp_probability <= 1:
        raise UsageError(
            f"--nsp-probability: must be in [0, 1], got {nsp_probability}"
        )
    if not 0 <= short_seq_prob <= 1:
        raise UsageError(
            f"--short-seq-prob: must be in [0, 1], got {short_seq_prob}"
        )
    if batch_size < 1:
        raise UsageError(f"--batch-size: must be >= 1, got {batch_size}")
    if num_workers < 1 or not 0 <= worker_index < num_workers:
        raise UsageError(
            f"num_workers/worker_index: need 0 <= {worker_index} < "
            f"{num_workers}"
        )
    if batch_size % num_workers:
        raise UsageError(
            f"--batch-size: the global batch {batch_size} does not divide "
            f"among {num_workers} workers"
        )
    if start_batch < 0:
        raise UsageError(f"start_batch: must be >= 0, got {start_batch}")
    if packing and nsp_probability > 0:
        raise UsageError(
            "--packing: packed rows train the masked LM only (NSP reads one "
            "[CLS] per row); use --no-nsp or --packing off"
        )
    if not packing and len(usable_documents(corpus, document_ids)) < 2:
        raise UsageError(
            "corpus: next-sentence pairs need at least 2 non-empty "
            "documents (a random B must come from another document)"
        )
    masker = DynamicMasker(
        tokenizer,
        max_predictions=max_predictions,
        mask_rate=mask_rate,
        whole_word=whole_word,
    )
    source = EpochRows(
        corpus,
        packing=packing,
        sequence_length=sequence_length,
        short_seq_prob=short_seq_prob,
        nsp_probability=nsp_probability,
        seed=seed,
        document_ids=document_ids,
    )
    first_epoch = source.epoch(0)
    if len(first_epoch) < batch_size:
        raise UsageError(
            f"--batch-size: an epoch has only {len(first_epoch)} sequences, "
            f"fewer than one batch of {batch_size}"
        )
    rows = batch_size // num_workers
    lo = worker_index * rows
    block = block_batches(batch_size)
    special = dict(
        cls_id=int(tokenizer.cls_id),
        sep_id=int(tokenizer.sep_id),
        pad_id=int(tokenizer.pad_id),
    )

    def pieces():
        """Runs of global batches that lie within one masking block."""
        skip, base, epoch = start_batch, 0, 0
        while True:
            epoch_rows = first_epoch if epoch == 0 else source.epoch(epoch)
            num_batches = len(epoch_rows) // batch_size
            if num_batches == 0:  # never spin without yielding
                raise UsageError(
                    f"--batch-size: epoch {epoch} has only {len(epoch_rows)} "
                    f"sequences, fewer than one batch of {batch_size}"
                )
            start = min(skip, num_batches)
            while start < num_batches:
                end = min(
                    num_batches, ((base + start) // block + 1) * block - base
                )
                g = end - start
                # This worker's rows of global batches start..end-1.
                indices = (
                    np.arange(start, end)[:, None] * batch_size
                    + lo
                    + np.arange(rows)[None, :]
                ).reshape(-1)
                ids, seg, pad, label = source.assemble(
                    epoch_rows, indices, **special
                )
                yield (
                    np.arange(base + start, base + end),
                    ids.reshape(g, rows, -1),
                    seg.reshape(g, rows, -1),
                    pad.reshape(g, rows, -1),
                    label.reshape(g, rows),
                )
                start = end
            skip = max(0, skip - num_batches)
            base += num_batches
            epoch += 1
            if not repeat:
                return

    seq = tf.TensorSpec([None, rows, sequence_length], tf.int32)
    ds = tf.data.Dataset.from_generator(
        pieces,
        output_signature=(
            tf.TensorSpec([None], tf.int64),
            seq,
            seq,
            seq,
            tf.TensorSpec([None, rows], tf.int32),
        ),
    )

    def finish(index, token_ids, segment_ids, padding_mask, label):
        g = tf.shape(index)[0]
        noise = draw_noise(
            tf.stack([tf.constant(seed, tf.int64), index[0] // block]),
            [block, batch_size],
            sequence_length,
            max_predictions,
        )
        # A piece is a run of consecutive batches of one block.
        first = tf.cast(index[0] % block, tf.int32)
        noise = noise[first : first + g]
        if num_workers > 1:
            noise = noise[:, lo : lo + rows]
        flat = [-1, sequence_length]
        m = masker(
            tf.reshape(token_ids, flat),
            tf.reshape(padding_mask, flat),
            tf.reshape(noise, [g * rows, -1]),
        )
        m = {k: tf.reshape(v, [g, rows, -1]) for k, v in m.items()}
        x = {
            "token_ids": m["token_ids"],
            "segment_ids": segment_ids,
            "padding_mask": padding_mask,
            "mask_positions": m["mask_positions"],
        }
        y = {
            "mask_ids": m["mask_ids"],
            "mask_weights": m["mask_weights"],
            "next_sentence_label": label,
        }
        return x, y

    # Mask whole blocks (per-op overhead dominates at 32 rows), then split
    # into batches. Two blocks in flight and four batches ready keep a
    # step fed (parallelism fixed: see tfdata.py).
    ds = ds.map(finish, num_parallel_calls=2).unbatch().prefetch(4)
    return without_autotune(ds)
