"""Sentence (or sentence-pair) classification on the pooled [CLS] vector."""

import keras

from kerasbert.modeling.backbone import int_input


@keras.saving.register_keras_serializable(package="kerasbert")
class BertClassifier(keras.Model):
    """Sentence (or sentence-pair) classifier on the pooled [CLS] vector.

    Pairs are told apart by `segment_ids` (0 for A, 1 for B), exactly as
    in pretraining.

    Args:
        backbone: a `BertBackbone`.
        num_classes: int. Number of output logits.
        dropout: float. Dropout on the pooled vector before the dense head.
        **kwargs: `name`, `trainable`.

    Inputs: the backbone's dict. Output: float32 logits
    `[batch, num_classes]`; compile with e.g.
    `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.
    """

    def __init__(self, backbone, num_classes, dropout=0.1, **kwargs):
        dropout_layer = keras.layers.Dropout(
            dropout, dtype=backbone.dtype_policy, name="dropout"
        )
        # float32 logits whatever the policy.
        head = keras.layers.Dense(
            num_classes,
            dtype="float32",
            name="logits",
            kernel_initializer=keras.initializers.TruncatedNormal(
                stddev=backbone.initializer_range
            ),
        )
        inputs = {
            name: int_input(name)
            for name in ("token_ids", "segment_ids", "padding_mask")
        }
        pooled = backbone(inputs)["pooled_output"]
        outputs = head(dropout_layer(pooled))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        self.dtype_policy = backbone.dtype_policy
        self.backbone = backbone
        self.dropout_layer = dropout_layer
        self.head = head
        self.num_classes = num_classes
        self.dropout = dropout

    def call_unpadded(self, inputs):
        """The logits of `self(inputs, training=False)` through
        `BertBackbone.call_unpadded`: dense layers on real tokens only."""
        return self.head(self.backbone.call_unpadded(inputs)["pooled_output"])

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"]
        )
        return cls(**config)
