"""The BERT encoder as a functional `keras.Model` with dict inputs/outputs.

`BertBackbone`, `BertPretrainer` and `BertClassifier` build their graphs in
`__init__` and write their own `get_config` (constructor arguments; the
pretrainer and classifier serialise their backbone), so `.keras` files
reload with `safe_mode=True`.
"""

import math

import keras
from keras import ops

from kerasbert.modeling.layers import BertEmbedding, EncoderBlock, Pooler


def int_input(name, length=None):
    return keras.Input(shape=(length,), dtype="int32", name=name)


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
    benchmark (docs/benchmarks.md) by about 0.01; wider models keep 0.02.
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
        activation: "gelu_tanh" (tanh-approximated GELU, as Google's BERT)
            or "gelu" (exact erf, as HF's "gelu"), in every feed-forward
            layer and in the MLM head's transform.
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
    `segment_ids`, `padding_mask` (0 = padding; 1 = real token, or for a
    row packed with several texts 1, 2, 3... the text each token belongs
    to: positions restart and attention stays inside each text, so a
    packed row computes what its texts would compute one per row).
    Outputs: dict with `sequence_output` `[batch, seq, hidden]` and
    `pooled_output` `[batch, hidden]` (tanh dense on [CLS]).
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        num_layers,
        num_heads,
        intermediate_dim,
        max_sequence_length=512,
        num_segments=2,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        layer_norm_epsilon=1e-12,
        initializer_range=None,
        activation="gelu_tanh",
        return_hidden_states=False,
        return_attention_scores=False,
        dtype=None,
        **kwargs,
    ):
        # Functional models drop a `dtype` kwarg, so resolve the policy here,
        # hand it to every layer and set it on the model after `__init__`.
        policy = keras.dtype_policies.get(
            dtype if dtype is not None else keras.config.dtype_policy()
        )
        dtype = policy
        if initializer_range is None:
            initializer_range = default_initializer_range(hidden_dim)
        embedding = BertEmbedding(
            vocabulary_size,
            hidden_dim,
            max_sequence_length=max_sequence_length,
            num_segments=num_segments,
            dropout=hidden_dropout,
            layer_norm_epsilon=layer_norm_epsilon,
            initializer_range=initializer_range,
            dtype=dtype,
            name="embedding",
        )
        blocks = [
            EncoderBlock(
                num_heads,
                intermediate_dim,
                hidden_dropout=hidden_dropout,
                attention_dropout=attention_dropout,
                layer_norm_epsilon=layer_norm_epsilon,
                initializer_range=initializer_range,
                activation=activation,
                dtype=dtype,
                name=f"encoder_block_{i}",
            )
            for i in range(num_layers)
        ]
        pooler = Pooler(
            initializer_range=initializer_range, dtype=dtype, name="pooler"
        )

        inputs = {
            name: int_input(name)
            for name in ("token_ids", "segment_ids", "padding_mask")
        }
        x = embedding(
            inputs["token_ids"],
            inputs["segment_ids"],
            padding_mask=inputs["padding_mask"],
        )
        hidden_states, attention_scores = [x], []
        for block in blocks:
            if return_attention_scores:
                x, probs = block(
                    x,
                    padding_mask=inputs["padding_mask"],
                    return_attention_scores=True,
                )
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
        self.activation = activation
        self.return_hidden_states = return_hidden_states
        self.return_attention_scores = return_attention_scores

    def call_unpadded(self, inputs):
        """`self(inputs, training=False)`, computed on the real tokens only.

        Every dense layer (nearly all of the FLOPs) runs on the rows where
        `padding_mask` is 1, gathered once after the embeddings; each
        block's attention scatters its query, key and value back into the
        padded layout, where padded keys are masked as in `call`. Real
        positions get the values `call` gives (to float32 rounding);
        padded positions of `sequence_output` are 0 (`call` fills them
        with values nothing reads). Texts batched to their longest are
        often half padding, so inference (`Predictor`, the exported
        SavedModel) runs this. Position 0 ([CLS], pooled) must be real.
        Row counts are data-dependent: eager or `tf.function`, not XLA.
        Returns `sequence_output` and `pooled_output`.
        """
        mask = inputs["padding_mask"]
        x = self.embedding(
            inputs["token_ids"],
            inputs["segment_ids"],
            padding_mask=mask,
            training=False,
        )
        shape = ops.shape(x)
        rows = ops.nonzero(ops.reshape(mask, (-1,)))[0]
        x = ops.take(ops.reshape(x, (-1, shape[-1])), rows, axis=0)
        for block in self.blocks:
            x = block(x, padding_mask=mask, training=False, rows=rows)
        total = shape[0] * shape[1]
        sequence = ops.reshape(
            ops.scatter(rows[:, None], x, (total, shape[-1])), shape
        )
        return {
            "sequence_output": sequence,
            "pooled_output": self.pooler(sequence),
        }

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
            "activation": self.activation,
            "return_hidden_states": self.return_hidden_states,
            "return_attention_scores": self.return_attention_scores,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Saved before the field existed: those models used the exact GELU.
        config.setdefault("activation", "gelu")
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)
