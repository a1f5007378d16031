"""The training plan: what a run will do, computed before it writes anything.

`make_plan` looks at the tokenized corpus and the configs and decides the
document split, the steps per epoch and the total, or stops with one line
naming the real cause (too few documents, no sentence pairs, a batch larger
than an epoch). It runs before the run directory exists, so a bad input
leaves nothing behind and the corrected command is not refused as "another
configuration". `plan_fit_calls` then splits the steps into `model.fit`
calls so that a resumed run ends exactly where an uninterrupted one does.
"""

from dataclasses import dataclass

import numpy as np

from kerasbert.data.pairing import (
    MIN_DOCUMENTS_TO_HOLD_OUT,
    split_train_heldout,
)
from kerasbert.data.pretraining import EpochRows
from kerasbert.errors import UsageError


@dataclass(eq=False)
class TrainingPlan:
    train_ids: np.ndarray | None  # None: every document of the corpus
    heldout_ids: np.ndarray | None  # of `heldout_corpus`; None: all of it
    heldout_corpus: object | None  # None: no held-out evaluation
    steps_per_epoch: int
    total_steps: int
    notes: tuple[str, ...] = ()  # what was adapted, for the log


def epoch_rows(corpus, data_cfg, seed, ids) -> EpochRows:
    """The rows of a run's stream (pairs, or packed texts)."""
    return EpochRows(
        corpus,
        packing=data_cfg.packing == "on",
        sequence_length=data_cfg.sequence_length,
        short_seq_prob=data_cfg.short_seq_prob,
        nsp_probability=data_cfg.nsp_probability,
        seed=seed,
        document_ids=ids,
    )


def _pairs(corpus, data_cfg, seed, ids):
    return len(epoch_rows(corpus, data_cfg, seed, ids).epoch(0))


def make_plan(
    corpus, data_cfg, train_cfg, heldout_corpus=None, corpus_name="corpus"
) -> TrainingPlan:
    notes = []
    n = corpus.num_documents
    if n < 2:
        from kerasbert.data.corpus import too_few_documents

        raise too_few_documents(corpus_name, n, data_cfg.corpus)
    train_ids = heldout_ids = None
    if heldout_corpus is None and data_cfg.holdout_fraction > 0:
        if n < MIN_DOCUMENTS_TO_HOLD_OUT:
            # A tiny corpus: train on all of it rather than fail.
            notes.append(
                f"{corpus_name} has {n} documents, too few to hold some out "
                f"(needs {MIN_DOCUMENTS_TO_HOLD_OUT}); no held-out "
                "evaluation"
            )
        else:
            train_ids, heldout_ids = split_train_heldout(
                n, data_cfg.holdout_fraction, train_cfg.seed
            )
            heldout_corpus = corpus
    pairs = _pairs(corpus, data_cfg, train_cfg.seed, train_ids)
    what = "packed rows" if data_cfg.packing == "on" else "sentence pairs"
    if pairs == 0 and data_cfg.packing != "on":
        raise UsageError(
            f"{corpus_name}: no sentence pairs: every training document has "
            "a single sentence (or none that fits). NSP pairs split a "
            "document of 2+ sentences; put several sentences per document "
            "(a blank line ends a document), or train the masked LM alone "
            "on packed texts (--no-nsp --packing on)"
        )
    spe = train_cfg.steps_per_epoch
    if spe is None:
        if pairs < train_cfg.batch_size:
            raise UsageError(
                f"--batch-size: {train_cfg.batch_size} is more than the "
                f"{pairs} {what} of one epoch of {corpus_name}; use "
                f"--batch-size {pairs} or less, or a larger corpus"
            )
        spe = pairs // train_cfg.batch_size
    elif pairs < train_cfg.batch_size:
        raise UsageError(
            f"--batch-size: {train_cfg.batch_size} is more than the {pairs} "
            f"{what} of one epoch of {corpus_name}"
        )
    if heldout_corpus is not None and train_cfg.eval_batches > 0:
        held = _pairs(heldout_corpus, data_cfg, train_cfg.seed + 1, heldout_ids)
        if held < train_cfg.batch_size:
            notes.append(
                f"the held-out documents give {held} {what}, fewer "
                f"than one batch of {train_cfg.batch_size}; no held-out "
                "evaluation (raise --holdout-fraction or lower --batch-size)"
            )
            heldout_corpus = None
    if train_cfg.eval_batches == 0:
        heldout_corpus = None
    total = train_cfg.max_steps or train_cfg.epochs * spe
    return TrainingPlan(
        train_ids, heldout_ids, heldout_corpus, spe, total, tuple(notes)
    )


def plan_fit_calls(total_steps: int, steps_per_epoch: int, start_step: int):
    """Splits the remaining steps into `model.fit` calls.

    Keras replays an interrupted epoch from its first batch, so a resumed run
    cannot reuse one `fit(epochs=E)` call. Instead the remainder of the
    interrupted epoch, the full epochs, and a final short epoch each get
    their own call (`fit` needs one `steps_per_epoch` per call). Returns a
    list of `(initial_epoch, epochs, steps_per_epoch)`.
    """
    calls = []
    step = start_step
    while step < total_steps:
        epoch = step // steps_per_epoch
        epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
        length = epoch_end - step
        if (
            calls
            and step % steps_per_epoch == 0
            and calls[-1][2] == length == steps_per_epoch
        ):
            first, _, _ = calls[-1]
            calls[-1] = (first, epoch + 1, length)
        else:
            calls.append((epoch, epoch + 1, length))
        step = epoch_end
    return calls
