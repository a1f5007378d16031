"""Dynamic masked-LM masking as TensorFlow ops, for `Dataset.map`.

Masks are drawn per batch from stateless random ops: `kerasbert.data` seeds
them by (seed, global batch index), so a run is reproducible, a resumed run
draws the masks it would have drawn, and every batch of every epoch gets
fresh masks (RoBERTa's "dynamic masking", instead of BERT's ten static
copies of the data). The masker itself only consumes a noise tensor.

Per sequence, `n = min(max_predictions, max(1, round(eligible * mask_rate)))`
positions are predicted, where eligible tokens are real tokens that are not
special (`[CLS]`, `[SEP]`, `[PAD]`, `[MASK]`, `[UNK]`, ...: whatever the
tokenizer lists). Google counts `[CLS]`/`[SEP]` in the length; we do not, so
the rate is a rate of maskable text. A packed row (several texts,
`kerasbert.data.packed`) counts as one sequence: its n is drawn over all
of its texts' eligible tokens, so each text gets the rate on average and
the output width stays `max_predictions`. `mask_rate=0` means no masking at all
(n = 0: NSP-only training). Of the predicted positions 80% become `[MASK]`,
10% a random non-special token and 10% stay unchanged, so the model cannot
rely on `[MASK]` marking the positions it is asked about (it never appears
in fine-tuning).

Whole-word masking (`whole_word=True`) picks words instead of tokens. Words
are runs of eligible tokens that start at a word-start token (from the
tokenizer's `word_start_mask`) or after a non-eligible one. Words are put in
a random order and taken while the running token count stays <= n (words
longer than n go last, as they can never fit); then single-token words
later in the order fill what is left of n. Google instead walks the shuffled
words and *skips* any word that does not fit, trying the next; ours is that
walk restricted to one-token words after the first misfit -- vectorisable,
and it reaches n unless only multi-token words remain. Google also draws
80/10/10 per token even in whole-word mode, so a word can end up half
`[MASK]`, half original; we draw once per word, so a word is masked,
randomised or kept as a whole (random replacements are still drawn per
token).
"""

import numpy as np
import tensorflow as tf

from kerasbert.errors import UsageError


def validate_masking(
    *, sequence_length: int, max_predictions: int, mask_rate: float
) -> None:
    """Raises `UsageError` naming the flag for out-of-range settings."""
    if sequence_length < 8:
        raise UsageError(
            f"--sequence-length: must be >= 8, got {sequence_length}"
        )
    if max_predictions < 1:
        raise UsageError(
            f"--max-predictions: must be >= 1, got {max_predictions}"
        )
    if max_predictions > sequence_length - 3:
        raise UsageError(
            f"--max-predictions: {max_predictions} is more than the "
            f"{sequence_length - 3} maskable tokens of --sequence-length "
            f"{sequence_length}"
        )
    if not 0 <= mask_rate <= 1:
        raise UsageError(f"--mask-rate: must be in [0, 1], got {mask_rate}")


def noise_width(sequence_length: int, max_predictions: int) -> int:
    """Uniforms per row that `DynamicMasker` consumes."""
    return 2 * sequence_length + 2 * max_predictions


def draw_noise(seed, rows, sequence_length: int, max_predictions: int):
    """Uniforms [*rows, noise_width] from a stateless seed of shape [2]."""
    shape = tf.concat(
        [
            tf.reshape(tf.cast(rows, tf.int32), [-1]),
            [noise_width(sequence_length, max_predictions)],
        ],
        0,
    )
    return tf.random.stateless_uniform(shape, seed=seed)


class DynamicMasker:
    """Callable that masks a batch: `(token_ids, padding_mask, noise)`.

    Args:
        tokenizer: anything with `vocabulary_size`, `mask_id`, `special_ids`
            (and `word_start_mask()` when `whole_word`).
        max_predictions: predicted positions per sequence (output width).
        mask_rate: share of eligible tokens to predict, in [0, 1].
        whole_word: mask whole words (see the module docstring).

    Calling it with int32 `token_ids`/`padding_mask` [rows, seq] and float32
    `noise` [3, rows, seq] of uniforms in [0, 1) (from `draw_noise`) returns
    `token_ids` (masked), `mask_positions` (ascending, 0-padded), `mask_ids`
    (original ids) and `mask_weights` (1.0 for the first n slots). A row's
    masks depend only on its tokens and its noise, so a worker that masks its
    slice of a global batch with the matching slice of the noise gets
    exactly the rows that masking the whole batch gives.
    """

    def __init__(
        self,
        tokenizer,
        *,
        max_predictions: int = 20,
        mask_rate: float = 0.15,
        whole_word: bool = False,
    ):
        if max_predictions < 1:
            raise UsageError(
                f"--max-predictions: must be >= 1, got {max_predictions}"
            )
        if not 0 <= mask_rate <= 1:
            raise UsageError(f"--mask-rate: must be in [0, 1], got {mask_rate}")
        self.max_predictions = int(max_predictions)
        self.mask_rate = float(mask_rate)
        self.whole_word = bool(whole_word)
        vocab = int(tokenizer.vocabulary_size)
        special = np.zeros(vocab, dtype=bool)
        ids = [
            tokenizer.pad_id,
            tokenizer.cls_id,
            tokenizer.sep_id,
            tokenizer.mask_id,
            *tokenizer.special_ids,
        ]
        special[[i for i in ids if i is not None and 0 <= i < vocab]] = True
        if special.all():
            raise UsageError("tokenizer: every token id is special")
        self.mask_id = int(tokenizer.mask_id)
        self.special_table = tf.constant(special)
        # Usually the specials are exactly ids 0..k-1 (our WordPiece and
        # SentencePiece vocabularies): then one comparison replaces a table
        # gather, which costs ~10% of the masking time.
        k = int(np.argmin(special)) if not special.all() else vocab
        self.specials_below = k if not special[k:].any() else None
        self.normal_ids = tf.constant(np.flatnonzero(~special), tf.int32)
        self.word_start_table = None
        if self.whole_word:
            starts = np.asarray(tokenizer.word_start_mask(), dtype=bool)
            if starts.shape != (vocab,):
                raise UsageError(
                    f"tokenizer: word_start_mask has shape {starts.shape}, "
                    f"expected ({vocab},)"
                )
            self.word_start_table = tf.constant(starts)

    def __call__(self, token_ids, padding_mask, noise):
        token_ids = tf.convert_to_tensor(token_ids, tf.int32)
        rows, length = tf.shape(token_ids)[0], token_ids.shape[1]
        if length is None:
            raise ValueError("token_ids needs a static sequence length")
        p = self.max_predictions
        # All randomness comes in as one [rows, width] tensor: a key per
        # position (selection order), a decision per position (used by
        # whole-word masking, per word), a decision and a replacement draw
        # per prediction slot.
        order_noise = noise[:, :length]
        word_decision_noise = noise[:, length : 2 * length]
        slot_decision_noise = noise[:, 2 * length : 2 * length + p]
        token_noise = noise[:, 2 * length + p :]

        if self.specials_below is not None:
            normal = token_ids >= self.specials_below
        else:
            normal = tf.logical_not(tf.gather(self.special_table, token_ids))
        eligible = tf.logical_and(tf.cast(padding_mask, tf.bool), normal)
        num_eligible = tf.reduce_sum(tf.cast(eligible, tf.int32), axis=1)
        if self.mask_rate == 0:
            n = tf.zeros_like(num_eligible)
        else:
            # tf.round is round-half-to-even, like Google's Python round().
            n = tf.cast(
                tf.round(tf.cast(num_eligible, tf.float32) * self.mask_rate),
                tf.int32,
            )
            n = tf.minimum(tf.maximum(n, 1), p)
            n = tf.minimum(n, num_eligible)

        if self.whole_word:
            selected, word = self._select_words(
                token_ids, eligible, n, order_noise
            )
            # Ascending positions: top_k of (length - position) over the
            # selected ones; empty slots get 0.
            key = tf.where(selected, length - tf.range(length)[None, :], 0)
            top, _ = tf.math.top_k(key, k=p, sorted=True)
            weights = top > 0
            positions = tf.where(weights, length - top, 0)
            # One 80/10/10 decision per word: every token reads its word's.
            decision = tf.gather(
                word_decision_noise,
                tf.gather(word, positions, batch_dims=1),
                batch_dims=1,
            )
        else:
            # The p eligible positions with the largest random keys, in
            # random order; the first n of them are predicted. (top_k of p
            # is much cheaper than sorting the row.)
            key = tf.where(eligible, order_noise, -1.0)
            _, picked = tf.math.top_k(key, k=p, sorted=True)
            used = tf.range(p)[None, :] < n[:, None]
            # Sort the used ones ascending, as above, now on [rows, p].
            top, _ = tf.math.top_k(tf.where(used, length - picked, 0), k=p)
            weights = top > 0
            positions = tf.where(weights, length - top, 0)
            decision = slot_decision_noise

        original = tf.gather(token_ids, positions, batch_dims=1)
        num_normal = tf.shape(self.normal_ids)[0]
        random_ids = tf.gather(
            self.normal_ids,
            tf.minimum(
                tf.cast(
                    token_noise * tf.cast(num_normal, tf.float32), tf.int32
                ),
                num_normal - 1,
            ),
        )
        new = tf.where(
            decision < 0.8,
            self.mask_id,
            tf.where(decision < 0.9, random_ids, original),
        )
        # Empty slots point at position 0 ([CLS], never eligible) and write
        # its own id back: a no-op that keeps the scatter dense.
        new = tf.where(weights, new, token_ids[:, :1])
        index = tf.stack(
            [tf.broadcast_to(tf.range(rows)[:, None], [rows, p]), positions],
            axis=-1,
        )
        return {
            "token_ids": tf.tensor_scatter_nd_update(token_ids, index, new),
            "mask_positions": positions,
            "mask_ids": tf.where(weights, original, 0),
            "mask_weights": tf.cast(weights, tf.float32),
        }

    def _word_starts(self, token_ids, eligible):
        """Where words begin: a word-start token, or text after a non-text
        position (a `##` piece left first by truncation starts a word)."""
        previous = tf.pad(eligible[:, :-1], [[0, 0], [1, 0]])
        return tf.logical_and(
            eligible,
            tf.logical_or(
                tf.gather(self.word_start_table, token_ids),
                tf.logical_not(previous),
            ),
        )

    def _select_words(self, token_ids, eligible, n, order_noise):
        """Whole words in random order while the running count is <= n.

        Returns the selected positions and each position's word id.
        """
        rows, length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
        starts = self._word_starts(token_ids, eligible)
        # word[i]: index of the word holding position i (-1 before the first
        # word); only meaningful where eligible.
        word = tf.maximum(tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1, 0)
        # Word lengths by word id, with a segment sum over row-offset ids.
        flat = word + tf.range(rows)[:, None] * length
        word_len = tf.reshape(
            tf.math.unsorted_segment_sum(
                tf.reshape(tf.cast(eligible, tf.int32), [-1]),
                tf.reshape(flat, [-1]),
                rows * length,
            ),
            [rows, length],
        )
        # Each word's random key is the noise at its id; words that can never
        # fit (longer than n) go after all others, missing ids last.
        score = tf.where(word_len > n[:, None], order_noise - 1.0, order_noise)
        score = tf.where(word_len > 0, score, -2.0)
        order = tf.argsort(score, axis=1, direction="DESCENDING", stable=True)
        lengths_in_order = tf.gather(word_len, order, batch_dims=1)
        taken_in_order = tf.logical_and(
            tf.cumsum(lengths_in_order, axis=1) <= n[:, None],
            lengths_in_order > 0,
        )
        # The prefix usually stops a token or two short of n (the next word
        # did not fit); single-token words further down the order fill the
        # gap, close to Google's skip-and-continue walk.
        left = n - tf.reduce_sum(
            tf.where(taken_in_order, lengths_in_order, 0), axis=1
        )
        single = tf.logical_and(
            tf.logical_not(taken_in_order), tf.equal(lengths_in_order, 1)
        )
        fill = tf.logical_and(
            single,
            tf.cumsum(tf.cast(single, tf.int32), axis=1) <= left[:, None],
        )
        taken_in_order = tf.logical_or(taken_in_order, fill)
        rank = tf.argsort(order, axis=1, stable=True)
        word_taken = tf.gather(taken_in_order, rank, batch_dims=1)
        selected = tf.logical_and(
            eligible, tf.gather(word_taken, word, batch_dims=1)
        )
        return selected, word
