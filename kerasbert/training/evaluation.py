"""Held-out evaluation: a fixed set of batches, forward passes only.

The held-out batches are drawn once (pairs and masks fixed by the seed),
kept in memory and evaluated by one compiled forward pass per batch whose
additive totals (`modeling.pretraining_sums`) are summed on the host. The
numbers are those of `model.evaluate` on the same batches (MLM metrics
weighted by `mask_weights` over all batches, `loss` the mean per-batch
loss).

Why not `fit(validation_data=...)`: its metrics share the model's
trackers, so a backup taken at an epoch's end held held-out sums in place
of training state; it rebuilds its iterator at every evaluation (each
release of one stalled under tf.data autotuning, see data/tfdata.py); and
it cannot run a larger final evaluation than the epoch-end ones.
"""

import tensorflow as tf

from kerasbert.files import fault_point


def metrics_from_sums(sums: dict, batches: int) -> dict:
    """`pretraining_losses`' metrics over batches whose totals are `sums`."""
    weight, examples = sums["mask_weight"], max(sums["examples"], 1.0)
    return {
        "loss": sums["loss"] / max(batches, 1),
        "mlm_loss": sums["mlm_loss"] / (weight + 1e-5),
        "nsp_loss": sums["nsp_loss"] / examples,
        "mlm_accuracy": sums["mlm_accuracy"] / weight if weight else 0.0,
        "nsp_accuracy": sums["nsp_accuracy"] / examples,
    }


class HeldoutSet:
    """The first `max_batches` batches of `dataset`, kept in memory.

    `evaluate(model, batches=n)` evaluates the first n of them (all by
    default), so an epoch's quick evaluation and the final one share
    their first batches.
    """

    def __init__(self, dataset, max_batches: int):
        self.batches = [
            tf.nest.map_structure(tf.constant, batch)
            for batch in dataset.take(max_batches).as_numpy_iterator()
        ]
        self._model = self._step = None  # the last model and its pass

    def __len__(self):
        return len(self.batches)

    def _compiled(self, model):
        from kerasbert.modeling import pretraining_sums

        if self._model is not model:
            self._model, self._step = (
                model,
                tf.function(
                    lambda x, y: pretraining_sums(
                        y, model(x, training=False), nsp=model.nsp
                    )
                ),
            )
        return self._step

    def evaluate(self, model, batches: int | None = None) -> dict:
        chosen = self.batches[:batches]
        if not chosen:
            return {}
        step = self._compiled(model)
        sums = {}
        for x, y in chosen:
            for k, v in step(x, y).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            fault_point("evaluation")
        return metrics_from_sums(sums, len(chosen))
