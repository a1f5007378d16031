"""The pretraining model: backbone + masked-LM head + next-sentence head.

Distribution note (read from Keras 3.15.1 `trainers/trainer.py` and
`backend/tensorflow/trainer.py`): under `tf.distribute` every replica
computes its own loss and the gradients are *summed* across replicas. Keras'
compiled losses therefore divide by `num_replicas_in_sync`
(`losses.loss.scale_loss_for_distribution`, applied in `reduce_values`) and
so do regularisation losses (TF trainer `_aggregate_additional_loss`); the
train/test steps multiply it back (`unscale_loss_for_distribution`) before
updating the `loss` tracker. An overriding `compute_loss` bypasses both, so
`BertPretrainer.compute_loss` divides by the replica count itself
(`_scale_for_replicas`). Each replica normalises its MLM loss by its own
mask-weight sum, as Google BERT does per TPU core.
"""

import keras
from keras import ops

from kerasbert.modeling import schedules  # noqa: F401  (optimizer in .keras files)
from kerasbert.modeling.backbone import BertBackbone, int_input
from kerasbert.modeling.layers import MaskedLMHead, NSPHead


def _scale_for_replicas(loss):
    """Divides by the replica count, as Keras does for compiled losses."""
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = loss / replicas
    return loss


def _per_prediction(y, y_pred):
    """Unreduced losses and hits: MLM `[batch, predictions]`, NSP `[batch]`."""
    mlm_logits = ops.cast(y_pred["mlm_logits"], "float32")
    nsp_logits = ops.cast(y_pred["nsp_logits"], "float32")
    mask_ids = ops.cast(y["mask_ids"], "int32")
    nsp_label = ops.reshape(ops.cast(y["next_sentence_label"], "int32"), (-1,))
    mlm_ce = ops.sparse_categorical_crossentropy(
        mask_ids, mlm_logits, from_logits=True
    )
    nsp_ce = ops.sparse_categorical_crossentropy(
        nsp_label, nsp_logits, from_logits=True
    )
    mlm_hit = ops.cast(
        ops.equal(ops.argmax(mlm_logits, axis=-1), mask_ids), "float32"
    )
    nsp_hit = ops.cast(
        ops.equal(ops.argmax(nsp_logits, axis=-1), nsp_label), "float32"
    )
    return mlm_ce, nsp_ce, mlm_hit, nsp_hit


def pretraining_losses(y, y_pred, nsp=True):
    """BERT pretraining loss and its parts for one batch (pure function).

    Args:
        y: dict with `mask_ids` (int `[batch, predictions]`), `mask_weights`
            (float `[batch, predictions]`, 0 at padded predictions) and
            `next_sentence_label` (int `[batch]`).
        y_pred: dict with float `mlm_logits` `[batch, predictions, vocab]`
            and `nsp_logits` `[batch, 2]`.
        nsp: False leaves `nsp_loss` out of `loss` (masked LM only); it is
            still computed and reported.

    Returns:
        dict of float32 scalars: `loss` (= `mlm_loss + nsp_loss`),
        `mlm_loss` (cross-entropy weighted by `mask_weights` and divided by
        their sum + 1e-5, so finite when no position is masked), `nsp_loss`
        (mean cross-entropy), `mlm_accuracy` (weighted by `mask_weights`),
        `nsp_accuracy`.
    """
    return _reduce(y, *_per_prediction(y, y_pred), nsp=nsp)


def _reduce(y, mlm_ce, nsp_ce, mlm_hit, nsp_hit, nsp=True):
    """`pretraining_losses` from `_per_prediction`'s parts."""
    weights = ops.cast(y["mask_weights"], "float32")
    weight_sum = ops.sum(weights)
    mlm_loss = ops.sum(mlm_ce * weights) / (weight_sum + 1e-5)
    nsp_loss = ops.mean(nsp_ce)
    return {
        "loss": mlm_loss + nsp_loss if nsp else mlm_loss,
        "mlm_loss": mlm_loss,
        "nsp_loss": nsp_loss,
        "mlm_accuracy": ops.divide_no_nan(
            ops.sum(mlm_hit * weights), weight_sum
        ),
        "nsp_accuracy": ops.mean(nsp_hit),
    }


def pretraining_sums(y, y_pred, nsp=True):
    """Additive per-batch totals from which `pretraining_losses`' metrics
    over many batches follow (see `kerasbert.training.evaluation`): MLM
    cross-entropy and hits weighted by `mask_weights`, their weight sum,
    NSP cross-entropy and hits, the example count, and the batch's `loss`
    (Keras averages per-batch losses). float32 scalars."""
    parts = _per_prediction(y, y_pred)
    mlm_ce, nsp_ce, mlm_hit, nsp_hit = parts
    weights = ops.cast(y["mask_weights"], "float32")
    return {
        "loss": _reduce(y, *parts, nsp=nsp)["loss"],
        "mlm_loss": ops.sum(mlm_ce * weights),
        "mlm_accuracy": ops.sum(mlm_hit * weights),
        "mask_weight": ops.sum(weights),
        "nsp_loss": ops.sum(nsp_ce),
        "nsp_accuracy": ops.sum(nsp_hit),
        "examples": ops.cast(ops.shape(nsp_hit)[0], "float32"),
    }


@keras.saving.register_keras_serializable(package="kerasbert")
class BertPretrainer(keras.Model):
    """Backbone + masked-LM head (tied decoder) + next-sentence head.

    Compile with only an optimizer: the loss is built in (`compute_loss`)
    and so are the metrics `mlm_loss`, `nsp_loss`, `mlm_accuracy`,
    `nsp_accuracy` and `fill` (the share of positions that are real
    tokens), shown next to Keras' `loss` in `fit` and `evaluate`.
    Epoch values of the MLM metrics are weighted by `mask_weights` over all
    batches; those of `loss` average the per-batch losses.

    Args:
        backbone: a `BertBackbone`.
        nsp: False trains the masked LM alone (the NSP head is still there
            and its metrics reported, but its loss is not trained).
        **kwargs: `name`, `trainable`.

    Inputs: the backbone's dict plus `mask_positions` (int32
    `[batch, predictions]`). Labels (`y`): dict with `mask_ids`,
    `mask_weights`, `next_sentence_label`. Outputs: dict with float32
    `mlm_logits` `[batch, predictions, vocabulary_size]` and `nsp_logits`
    `[batch, 2]`.
    """

    def __init__(self, backbone, nsp=True, **kwargs):
        mlm_head = MaskedLMHead(
            backbone.vocabulary_size,
            token_embedding=backbone.token_embedding,
            layer_norm_epsilon=backbone.layer_norm_epsilon,
            initializer_range=backbone.initializer_range,
            activation=backbone.activation,
            dtype=backbone.dtype_policy,
            name="mlm_head",
        )
        nsp_head = NSPHead(
            initializer_range=backbone.initializer_range,
            dtype=backbone.dtype_policy,
            name="nsp_head",
        )

        inputs = {
            name: int_input(name)
            for name in (
                "token_ids",
                "segment_ids",
                "padding_mask",
                "mask_positions",
            )
        }
        encoded = backbone(
            {k: inputs[k] for k in ("token_ids", "segment_ids", "padding_mask")}
        )
        outputs = {
            "mlm_logits": mlm_head(
                encoded["sequence_output"], inputs["mask_positions"]
            ),
            "nsp_logits": nsp_head(encoded["pooled_output"]),
        }
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # The backbone's policy, also when reloaded under another global
        # one: `compile` wraps the optimizer for loss scaling on float16.
        self.dtype_policy = backbone.dtype_policy
        self.backbone = backbone
        self.nsp = nsp
        self.mlm_head = mlm_head
        self.nsp_head = nsp_head
        self.mlm_loss_tracker = keras.metrics.Mean(name="mlm_loss")
        self.nsp_loss_tracker = keras.metrics.Mean(name="nsp_loss")
        self.mlm_accuracy_tracker = keras.metrics.Mean(name="mlm_accuracy")
        self.nsp_accuracy_tracker = keras.metrics.Mean(name="nsp_accuracy")
        # Real tokens / positions of the batches: what packing buys.
        self.fill_tracker = keras.metrics.Mean(name="fill")

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """MLM + NSP loss (`pretraining_losses`) plus layer losses.

        Stateless: metrics are updated in `compute_metrics`. Scaled by
        1 / replicas under `tf.distribute` (see the module docstring).
        """
        del x, training
        if sample_weight is not None:
            raise ValueError(
                "BertPretrainer: sample_weight is not supported; weight "
                "masked positions with y['mask_weights']"
            )
        loss = pretraining_losses(y, y_pred, nsp=self.nsp)["loss"]
        for extra in self.losses:  # regularisers, add_loss()
            loss = loss + ops.cast(ops.sum(extra), "float32")
        return _scale_for_replicas(loss)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        mlm_ce, nsp_ce, mlm_hit, nsp_hit = _per_prediction(y, y_pred)
        weights = ops.cast(y["mask_weights"], "float32")
        self.mlm_loss_tracker.update_state(mlm_ce, sample_weight=weights)
        self.mlm_accuracy_tracker.update_state(mlm_hit, sample_weight=weights)
        self.nsp_loss_tracker.update_state(nsp_ce)
        self.nsp_accuracy_tracker.update_state(nsp_hit)
        real = ops.cast(x["padding_mask"], "int32") > 0
        self.fill_tracker.update_state(ops.cast(real, "float32"))
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "nsp": self.nsp,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"]
        )
        return cls(**config)


def build_pretrainer(nsp=True, **model_config_fields):
    """`BertPretrainer(BertBackbone(**fields), nsp)`; fields as in
    `ModelConfig`.

    Example: `build_pretrainer(**dataclasses.asdict(model_config))`.
    """
    return BertPretrainer(BertBackbone(**model_config_fields), nsp=nsp)
