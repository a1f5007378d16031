"""BERT backbone, pretraining model and sequence classifier.

All three are `keras.Model` subclasses that build a functional graph in
`__init__` with dict inputs and outputs, and write their own `get_config`
(constructor arguments; the pretrainer and classifier serialise their
backbone), so `.keras` files reload with `safe_mode=True`.

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

import math

import keras
from keras import ops

from kerasbert import schedules  # noqa: F401  (optimizer in .keras files)
from kerasbert.layers import (
    BertEmbedding,
    EncoderBlock,
    MaskedLMHead,
    NSPHead,
    Pooler,
)


def _int_input(name, length=None):
    return keras.Input(shape=(length,), dtype="int32", name=name)


def _scale_for_replicas(loss):
    """Divides by the replica count, as Keras does for compiled losses."""
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = loss / replicas
    return loss


def default_initializer_range(hidden_dim):
    """BERT's 0.02, widened for models narrower than BERT-base's 768.

    A LayerNormed input (unit variance per feature) times a kernel of
    stddev s gives outputs of variance hidden_dim * s**2. That product sets
    the size of the attention logits at step 0, of each block's update next
    to its residual, and of the tied MLM logits; s = 0.02 was chosen at 768
    wide. At 256 wide (`mini`) the same s starts attention 3x closer to
    uniform and every block 3x closer to the identity, and the model lingers
    on the predict-frequent-words plateau. Keeping hidden_dim * s**2 at its
    BERT-base value lifted held-out MLM accuracy of the 600-step learning
    benchmark (README) by about 0.01; wider models keep 0.02.
    """
    return max(0.02, 0.02 * math.sqrt(768 / hidden_dim))


@keras.saving.register_keras_serializable(package="kerasbert")
class BertBackbone(keras.Model):
    """The BERT encoder: embeddings, `num_layers` encoder blocks, pooler.

    Args:
        vocabulary_size: int. Number of token ids.
        hidden_dim: int. Width of every hidden vector.
        num_layers: int. Number of encoder blocks.
        num_heads: int. Attention heads per block.
        intermediate_dim: int. Width of the feed-forward layers.
        max_sequence_length: int. Number of learned positions.
        num_segments: int. Number of segment ids.
        hidden_dropout: float. Dropout on embeddings and block outputs.
        attention_dropout: float. Dropout on attention probabilities; at 0
            attention uses the fused `keras.ops.dot_product_attention`.
        layer_norm_epsilon: float. Epsilon of every LayerNorm.
        initializer_range: float. Stddev of the truncated-normal init;
            None: `default_initializer_range(hidden_dim)`.
        return_hidden_states: bool. Add output `hidden_states`: a list of
            `num_layers + 1` tensors `[batch, seq, hidden]` (embedding
            output, then each block), as HF `output_hidden_states`.
        return_attention_scores: bool. Add output `attention_scores`: a
            list of `num_layers` tensors `[batch, heads, seq, seq]` of
            attention probabilities (for visualisation; slower, since it
            disables the fused attention).
        dtype: optional dtype policy for every layer; default: the global
            policy.
        **kwargs: `name`, `trainable`.

    Inputs: dict of int32 `[batch, seq]` tensors `token_ids`,
    `segment_ids`, `padding_mask` (1 = real token, 0 = padding).
    Outputs: dict with `sequence_output` `[batch, seq, hidden]` and
    `pooled_output` `[batch, hidden]` (tanh dense on [CLS]).
    """

    def __init__(self, vocabulary_size, hidden_dim, num_layers, num_heads,
                 intermediate_dim, max_sequence_length=512, num_segments=2,
                 hidden_dropout=0.1, attention_dropout=0.1,
                 layer_norm_epsilon=1e-12, initializer_range=None,
                 return_hidden_states=False, return_attention_scores=False,
                 dtype=None, **kwargs):
        # Functional models drop a `dtype` kwarg, so resolve the policy here,
        # hand it to every layer and set it on the model after `__init__`.
        policy = keras.dtype_policies.get(
            dtype if dtype is not None else keras.config.dtype_policy())
        dtype = policy
        if initializer_range is None:
            initializer_range = default_initializer_range(hidden_dim)
        embedding = BertEmbedding(
            vocabulary_size, hidden_dim,
            max_sequence_length=max_sequence_length,
            num_segments=num_segments, dropout=hidden_dropout,
            layer_norm_epsilon=layer_norm_epsilon,
            initializer_range=initializer_range, dtype=dtype,
            name="embedding")
        blocks = [
            EncoderBlock(
                num_heads, intermediate_dim, hidden_dropout=hidden_dropout,
                attention_dropout=attention_dropout,
                layer_norm_epsilon=layer_norm_epsilon,
                initializer_range=initializer_range, dtype=dtype,
                name=f"encoder_block_{i}")
            for i in range(num_layers)
        ]
        pooler = Pooler(initializer_range=initializer_range, dtype=dtype,
                        name="pooler")

        inputs = {name: _int_input(name)
                  for name in ("token_ids", "segment_ids", "padding_mask")}
        x = embedding(inputs["token_ids"], inputs["segment_ids"])
        hidden_states, attention_scores = [x], []
        for block in blocks:
            if return_attention_scores:
                x, probs = block(x, padding_mask=inputs["padding_mask"],
                                 return_attention_scores=True)
                attention_scores.append(probs)
            else:
                x = block(x, padding_mask=inputs["padding_mask"])
            hidden_states.append(x)
        outputs = {"sequence_output": x, "pooled_output": pooler(x)}
        if return_hidden_states:
            outputs["hidden_states"] = hidden_states
        if return_attention_scores:
            outputs["attention_scores"] = attention_scores
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        self.dtype_policy = policy
        self.embedding = embedding
        self.blocks = blocks
        self.pooler = pooler
        # The MLM decoder is tied to this layer's table.
        self.token_embedding = embedding.token_embedding
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.return_hidden_states = return_hidden_states
        self.return_attention_scores = return_attention_scores

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "vocabulary_size": self.vocabulary_size,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "max_sequence_length": self.max_sequence_length,
            "num_segments": self.num_segments,
            "hidden_dropout": self.hidden_dropout,
            "attention_dropout": self.attention_dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": self.initializer_range,
            "return_hidden_states": self.return_hidden_states,
            "return_attention_scores": self.return_attention_scores,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)


def _per_prediction(y, y_pred):
    """Unreduced losses and hits: MLM `[batch, predictions]`, NSP `[batch]`."""
    mlm_logits = ops.cast(y_pred["mlm_logits"], "float32")
    nsp_logits = ops.cast(y_pred["nsp_logits"], "float32")
    mask_ids = ops.cast(y["mask_ids"], "int32")
    nsp_label = ops.reshape(ops.cast(y["next_sentence_label"], "int32"), (-1,))
    mlm_ce = ops.sparse_categorical_crossentropy(
        mask_ids, mlm_logits, from_logits=True)
    nsp_ce = ops.sparse_categorical_crossentropy(
        nsp_label, nsp_logits, from_logits=True)
    mlm_hit = ops.cast(
        ops.equal(ops.argmax(mlm_logits, axis=-1), mask_ids), "float32")
    nsp_hit = ops.cast(
        ops.equal(ops.argmax(nsp_logits, axis=-1), nsp_label), "float32")
    return mlm_ce, nsp_ce, mlm_hit, nsp_hit


def pretraining_losses(y, y_pred):
    """BERT pretraining loss and its parts for one batch (pure function).

    Args:
        y: dict with `mask_ids` (int `[batch, predictions]`), `mask_weights`
            (float `[batch, predictions]`, 0 at padded predictions) and
            `next_sentence_label` (int `[batch]`).
        y_pred: dict with float `mlm_logits` `[batch, predictions, vocab]`
            and `nsp_logits` `[batch, 2]`.

    Returns:
        dict of float32 scalars: `loss` (= `mlm_loss + nsp_loss`),
        `mlm_loss` (cross-entropy weighted by `mask_weights` and divided by
        their sum + 1e-5, so finite when no position is masked), `nsp_loss`
        (mean cross-entropy), `mlm_accuracy` (weighted by `mask_weights`),
        `nsp_accuracy`.
    """
    mlm_ce, nsp_ce, mlm_hit, nsp_hit = _per_prediction(y, y_pred)
    weights = ops.cast(y["mask_weights"], "float32")
    weight_sum = ops.sum(weights)
    mlm_loss = ops.sum(mlm_ce * weights) / (weight_sum + 1e-5)
    nsp_loss = ops.mean(nsp_ce)
    return {
        "loss": mlm_loss + nsp_loss,
        "mlm_loss": mlm_loss,
        "nsp_loss": nsp_loss,
        "mlm_accuracy": ops.divide_no_nan(ops.sum(mlm_hit * weights),
                                          weight_sum),
        "nsp_accuracy": ops.mean(nsp_hit),
    }


@keras.saving.register_keras_serializable(package="kerasbert")
class BertPretrainer(keras.Model):
    """Backbone + masked-LM head (tied decoder) + next-sentence head.

    Compile with only an optimizer: the loss is built in (`compute_loss`)
    and so are the metrics `mlm_loss`, `nsp_loss`, `mlm_accuracy`,
    `nsp_accuracy`, shown next to Keras' `loss` in `fit` and `evaluate`.
    Epoch values of the MLM metrics are weighted by `mask_weights` over all
    batches; those of `loss` average the per-batch losses.

    Args:
        backbone: a `BertBackbone`.
        **kwargs: `name`, `trainable`.

    Inputs: the backbone's dict plus `mask_positions` (int32
    `[batch, predictions]`). Labels (`y`): dict with `mask_ids`,
    `mask_weights`, `next_sentence_label`. Outputs: dict with float32
    `mlm_logits` `[batch, predictions, vocabulary_size]` and `nsp_logits`
    `[batch, 2]`.
    """

    def __init__(self, backbone, **kwargs):
        mlm_head = MaskedLMHead(
            backbone.vocabulary_size, token_embedding=backbone.token_embedding,
            layer_norm_epsilon=backbone.layer_norm_epsilon,
            initializer_range=backbone.initializer_range,
            dtype=backbone.dtype_policy, name="mlm_head")
        nsp_head = NSPHead(initializer_range=backbone.initializer_range,
                           dtype=backbone.dtype_policy, name="nsp_head")

        inputs = {name: _int_input(name)
                  for name in ("token_ids", "segment_ids", "padding_mask",
                               "mask_positions")}
        encoded = backbone({k: inputs[k] for k in
                            ("token_ids", "segment_ids", "padding_mask")})
        outputs = {
            "mlm_logits": mlm_head(encoded["sequence_output"],
                                   inputs["mask_positions"]),
            "nsp_logits": nsp_head(encoded["pooled_output"]),
        }
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # The backbone's policy, also when reloaded under another global
        # one: `compile` wraps the optimizer for loss scaling on float16.
        self.dtype_policy = backbone.dtype_policy
        self.backbone = backbone
        self.mlm_head = mlm_head
        self.nsp_head = nsp_head
        self.mlm_loss_tracker = keras.metrics.Mean(name="mlm_loss")
        self.nsp_loss_tracker = keras.metrics.Mean(name="nsp_loss")
        self.mlm_accuracy_tracker = keras.metrics.Mean(name="mlm_accuracy")
        self.nsp_accuracy_tracker = keras.metrics.Mean(name="nsp_accuracy")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        """MLM + NSP loss (`pretraining_losses`) plus layer losses.

        Stateless: metrics are updated in `compute_metrics`. Scaled by
        1 / replicas under `tf.distribute` (see the module docstring).
        """
        del x, training
        if sample_weight is not None:
            raise ValueError(
                "BertPretrainer: sample_weight is not supported; weight "
                "masked positions with y['mask_weights']")
        loss = pretraining_losses(y, y_pred)["loss"]
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
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"])
        return cls(**config)


def build_pretrainer(**model_config_fields):
    """`BertPretrainer(BertBackbone(**fields))`; fields as in `ModelConfig`.

    Example: `build_pretrainer(**dataclasses.asdict(model_config))`.
    """
    return BertPretrainer(BertBackbone(**model_config_fields))


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
            dropout, dtype=backbone.dtype_policy, name="dropout")
        # float32 logits whatever the policy.
        head = keras.layers.Dense(
            num_classes, dtype="float32", name="logits",
            kernel_initializer=keras.initializers.TruncatedNormal(
                stddev=backbone.initializer_range))
        inputs = {name: _int_input(name)
                  for name in ("token_ids", "segment_ids", "padding_mask")}
        pooled = backbone(inputs)["pooled_output"]
        outputs = head(dropout_layer(pooled))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        self.dtype_policy = backbone.dtype_policy
        self.backbone = backbone
        self.dropout_layer = dropout_layer
        self.head = head
        self.num_classes = num_classes
        self.dropout = dropout

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
            config["backbone"])
        return cls(**config)
