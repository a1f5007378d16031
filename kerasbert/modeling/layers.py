"""BERT building blocks as Keras 3 layers.

Backend-agnostic (`keras.ops` only). Parameters follow the Hugging Face
`BertForPreTraining` layout -- query/key/value projections with bias (here
one fused [hidden, 3 * hidden] kernel, HF's three side by side),
post-LayerNorm blocks, an MLM decoder tied to the token embeddings -- so
parameter counts match and checkpoints map weight to weight.
Heads emit float32 logits whatever the dtype policy.
"""

import keras
import numpy as np
from keras import ops

from kerasbert.config import ACTIVATIONS


def gelu(x, activation):
    """`activation` "gelu" (exact erf) or "gelu_tanh" (tanh approximation:
    Google's BERT, keras-hub and HF's "gelu_new"; cheaper elementwise)."""
    return ops.gelu(x, approximate=activation == "gelu_tanh")


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}"
        )


def text_positions(padding_mask):
    """Each token's position within its text, `[batch, seq]` int32.

    `padding_mask` numbers the texts of a packed row 1, 2, 3... (0:
    padding), each text contiguous and after the one numbered before it.
    A token's position is its index minus the tokens of lower-numbered
    texts: 0 at each text's [CLS]. Text 1 and padding keep their index,
    so a 0/1 mask gives the plain 0, 1, 2... of an unpacked row.
    """
    m = ops.cast(padding_mask, "int32")
    before = ops.logical_and(m[:, None, :] > 0, m[:, None, :] < m[:, :, None])
    seq = ops.shape(m)[1]
    return ops.arange(seq, dtype="int32")[None, :] - ops.sum(
        ops.cast(before, "int32"), axis=-1
    )


def attention_mask(padding_mask):
    """`[batch, 1, seq, seq]` bool: query t may attend to key j.

    Keys are real tokens (`padding_mask` > 0) of the query's own text
    (the same number), so texts packed in one row never see each other.
    A padded query sees every real key, as it did with a 0/1 mask; its
    output is never read.
    """
    m = ops.cast(padding_mask, "int32")
    query, key = m[:, :, None], m[:, None, :]
    same = ops.logical_or(ops.equal(query, key), ops.equal(query, 0))
    return ops.logical_and(key > 0, same)[:, None]


def _initializer(stddev):
    # A fresh object per weight: one shared unseeded initializer would draw
    # the same seed for every weight and yield identical tables.
    return keras.initializers.TruncatedNormal(stddev=stddev)


@keras.saving.register_keras_serializable(package="kerasbert")
class BertEmbedding(keras.layers.Layer):
    """Token + learned position + segment embeddings, LayerNorm, dropout.

    Args:
        vocabulary_size: int. Number of token ids.
        hidden_dim: int. Width of the embeddings.
        max_sequence_length: int. Number of learned positions.
        num_segments: int. Number of segment (token type) ids.
        dropout: float. Dropout rate applied after the LayerNorm.
        layer_norm_epsilon: float. Epsilon of the LayerNorm.
        initializer_range: float. Stddev of the truncated-normal init.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        token_ids: int tensor `[batch, seq]`.
        segment_ids: int tensor `[batch, seq]`; `None` means all zeros.
        padding_mask: optional int tensor `[batch, seq]`: positions then
            restart at each packed text (`text_positions`); `None` or a
            0/1 mask: positions 0, 1, 2...
        training: bool. Whether dropout is active.

    The token table lives in the sublayer `token_embedding` (a
    `keras.layers.Embedding`) so that an MLM decoder can share it.
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        max_sequence_length=512,
        num_segments=2,
        dropout=0.1,
        layer_norm_epsilon=1e-12,
        initializer_range=0.02,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=_initializer(initializer_range),
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="layer_norm",
        )
        self.dropout_layer = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="dropout"
        )

    def build(self, token_ids_shape):
        self.token_embedding.build(token_ids_shape)
        self.position_embeddings = self.add_weight(
            name="position_embeddings",
            shape=(self.max_sequence_length, self.hidden_dim),
            initializer=_initializer(self.initializer_range),
        )
        self.segment_embeddings = self.add_weight(
            name="segment_embeddings",
            shape=(self.num_segments, self.hidden_dim),
            initializer=_initializer(self.initializer_range),
        )
        self.layer_norm.build((*token_ids_shape, self.hidden_dim))
        self.built = True

    def call(
        self, token_ids, segment_ids=None, padding_mask=None, training=None
    ):
        x = self.token_embedding(token_ids)
        if padding_mask is not None:
            positions = ops.take(
                self.position_embeddings, text_positions(padding_mask), axis=0
            )
        else:
            # A tensor, not the variable: JAX's slice refuses a Keras
            # variable.
            positions = ops.slice(
                ops.convert_to_tensor(self.position_embeddings),
                (0, 0),
                (ops.shape(token_ids)[1], self.hidden_dim),
            )[None]
        x = x + ops.cast(positions, x.dtype)
        if segment_ids is not None:
            segments = ops.take(self.segment_embeddings, segment_ids, axis=0)
        else:  # segment 0 everywhere, as for a single sentence
            segments = self.segment_embeddings[0][None, None]
        x = x + ops.cast(segments, x.dtype)
        x = self.layer_norm(x)
        return self.dropout_layer(x, training=training)

    def compute_output_shape(
        self, token_ids_shape, segment_ids_shape=None, padding_mask_shape=None
    ):
        # Spares tracing `call` on symbolic shapes, which JAX cannot do
        # for the position slice (its length vs max_sequence_length).
        return (*token_ids_shape, self.hidden_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "hidden_dim": self.hidden_dim,
            "max_sequence_length": self.max_sequence_length,
            "num_segments": self.num_segments,
            "dropout": self.dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": self.initializer_range,
        }


def _take_rows(x, rows):
    return x if rows is None else ops.take(x, rows, axis=0)


@keras.saving.register_keras_serializable(package="kerasbert")
class EncoderBlock(keras.layers.Layer):
    """Post-LayerNorm transformer encoder block (BERT).

    self-attention -> dropout -> residual -> LayerNorm -> GELU feed-forward
    -> dropout -> residual -> LayerNorm. Query, key and value come from
    one matmul: `qkv_kernel` `[hidden, 3 * hidden]` holds HF's query, key
    and value kernels side by side (in that order), `qkv_bias` their
    biases. `.keras` files saved before the fusion (separate `query`,
    `key`, `value` Dense layers) still load: see `load_own_variables`.

    With `attention_dropout == 0` and no attention probabilities requested,
    attention runs through the fused `keras.ops.dot_product_attention`;
    otherwise through an explicit float32 softmax followed by dropout.

    Args:
        num_heads: int. Attention heads; must divide the hidden width.
        intermediate_dim: int. Width of the feed-forward layer.
        hidden_dropout: float. Dropout on the attention output and the
            feed-forward output, before each residual.
        attention_dropout: float. Dropout on the attention probabilities.
        layer_norm_epsilon: float. Epsilon of both LayerNorms.
        initializer_range: float. Stddev of the truncated-normal init.
        activation: "gelu_tanh" or "gelu" (exact) after the first
            feed-forward layer.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: float tensor `[batch, seq, hidden]`.
        padding_mask: int (or bool) tensor `[batch, seq]`: 0 at padding,
            else the number of the token's text (1 everywhere for an
            unpacked row); attention stays inside each text
            (`attention_mask`). `None` attends everywhere.
        training: bool. Whether dropout is active.
        return_attention_scores: bool. Also return the attention
            probabilities `[batch, heads, seq, seq]` (for visualisation;
            forces the slower explicit path).
        rows: optional int tensor `[n]`: `inputs` is then `[n, hidden]`,
            the rows at these positions of the flattened `[batch * seq]`
            (the real tokens, `BertBackbone.call_unpadded`), and so is
            the output; `padding_mask` is required and must be 0 at every
            other position.
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        layer_norm_epsilon=1e-12,
        initializer_range=0.02,
        activation="gelu_tanh",
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_activation(activation)
        self.activation = activation
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range

    def _dense(self, units, name):
        return keras.layers.Dense(
            units,
            kernel_initializer=_initializer(self.initializer_range),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]
        if hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden width {hidden_dim} is not divisible by num_heads "
                f"{self.num_heads}"
            )
        self.head_dim = hidden_dim // self.num_heads
        # One [hidden, 3 * hidden] matmul instead of three [hidden, hidden]
        # ones: fewer, larger kernels, and one bias add.
        self.qkv_kernel = self.add_weight(
            name="qkv_kernel",
            shape=(hidden_dim, 3 * hidden_dim),
            initializer=_initializer(self.initializer_range),
        )
        self.qkv_bias = self.add_weight(
            name="qkv_bias", shape=(3 * hidden_dim,), initializer="zeros"
        )
        self.attention_output = self._dense(hidden_dim, "attention_output")
        self.attention_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="attention_layer_norm",
        )
        self.intermediate = self._dense(self.intermediate_dim, "intermediate")
        self.output_dense = self._dense(hidden_dim, "output_dense")
        self.output_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="output_layer_norm",
        )
        self.attention_probs_dropout = keras.layers.Dropout(
            self.attention_dropout,
            dtype=self.dtype_policy,
            name="attention_probs_dropout",
        )
        self.attention_output_dropout = keras.layers.Dropout(
            self.hidden_dropout,
            dtype=self.dtype_policy,
            name="attention_output_dropout",
        )
        self.output_dropout = keras.layers.Dropout(
            self.hidden_dropout, dtype=self.dtype_policy, name="output_dropout"
        )
        for layer in (
            self.attention_output,
            self.attention_layer_norm,
            self.output_layer_norm,
        ):
            layer.build(inputs_shape)
        self.intermediate.build(inputs_shape)
        self.output_dense.build((*inputs_shape[:-1], self.intermediate_dim))
        self.built = True

    def load_own_variables(self, store):
        """Reads `qkv_kernel`/`qkv_bias`, or -- from a file saved before
        the fusion, which has none -- concatenates the `query`, `key` and
        `value` Dense weights stored beside them."""
        if len(store.keys()) == 2:
            return super().load_own_variables(store)
        h5 = getattr(store, "h5_file", None)
        path = getattr(store, "_h5_entry_path", None)
        parts = ("query", "key", "value")
        if (
            len(store.keys())
            or h5 is None
            or path is None
            or not all(f"{path}/{p}/vars" in h5 for p in parts)
        ):
            return super().load_own_variables(store)  # Keras' own error
        kernels, biases = zip(
            *[
                (h5[f"{path}/{p}/vars/0"][()], h5[f"{path}/{p}/vars/1"][()])
                for p in parts
            ]
        )
        self.qkv_kernel.assign(np.concatenate(kernels, axis=-1))
        self.qkv_bias.assign(np.concatenate(biases, axis=-1))

    def _attention(self, x, seq, padding_mask, training, return_scores, rows):
        """Self-attention of `x` `[batch * seq, hidden]` (the rows of
        `seq`-long sequences), or of the `rows` of that matrix only; returns
        the same shape as `x`, and the probabilities `[batch, heads, seq,
        seq]` of the explicit path."""
        hidden_dim = self.num_heads * self.head_dim
        qkv = ops.matmul(x, self.qkv_kernel) + self.qkv_bias
        if rows is not None:  # back to [batch * seq], zeros where padded
            total = ops.shape(padding_mask)[0] * seq
            qkv = ops.scatter(rows[:, None], qkv, (total, 3 * hidden_dim))
        qkv = ops.reshape(qkv, (-1, seq, 3, self.num_heads, self.head_dim))
        mask = None
        if padding_mask is not None:  # [b, s] -> [b, 1, s, s]
            mask = attention_mask(padding_mask)
        # An unstack, not three slices: its gradient is one stacking, where
        # each slice's would be a zero-filled copy of the whole projection.
        if self.attention_dropout == 0 and not return_scores:
            q, k, v = ops.unstack(qkv, 3, axis=2)  # [b, s, heads, head]
            out = ops.dot_product_attention(q, k, v, mask=mask)
            return _take_rows(ops.reshape(out, (-1, hidden_dim)), rows), None
        # [b, s, 3, heads, head] -> 3 x [b, heads, s, head] with one
        # transpose; the einsums it replaces transposed q, k, v and the
        # output one by one (four copies per block).
        q, k, v = ops.unstack(ops.transpose(qkv, (2, 0, 3, 1, 4)), 3, axis=0)
        scores = ops.matmul(q, ops.swapaxes(k, -1, -2))  # [b, n, t, s]
        scores = ops.cast(scores, "float32") / (self.head_dim**0.5)
        if mask is not None:
            # A large finite negative keeps fully padded rows finite.
            scores = ops.where(mask, scores, -1e9)
        probs = ops.cast(ops.softmax(scores, axis=-1), x.dtype)
        dropped = self.attention_probs_dropout(probs, training=training)
        out = ops.swapaxes(ops.matmul(dropped, v), 1, 2)  # [b, s, n, h]
        return _take_rows(ops.reshape(out, (-1, hidden_dim)), rows), probs

    def call(
        self,
        inputs,
        padding_mask=None,
        training=None,
        return_attention_scores=False,
        rows=None,
    ):
        # The block works on the [batch * seq, hidden] matrix: TensorFlow's
        # oneDNN remapper fuses a 2-D MatMul with its bias, GELU and
        # residual add into one kernel, but not the 3-D matmul Keras
        # reshapes around (docs/performance.md, float32 CPUs).
        if rows is None:
            shape = ops.shape(inputs)
            x, seq = ops.reshape(inputs, (-1, shape[-1])), shape[1]
        else:  # already the real-token rows
            x, seq = inputs, ops.shape(padding_mask)[1]
        attended, probs = self._attention(
            x, seq, padding_mask, training, return_attention_scores, rows
        )
        attended = self.attention_output(attended)
        attended = self.attention_output_dropout(attended, training=training)
        x = self.attention_layer_norm(x + attended)
        ffn = self.output_dense(gelu(self.intermediate(x), self.activation))
        ffn = self.output_dropout(ffn, training=training)
        x = self.output_layer_norm(x + ffn)
        if rows is None:
            x = ops.reshape(x, shape)
        if return_attention_scores:
            return x, probs
        return x

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "hidden_dropout": self.hidden_dropout,
            "attention_dropout": self.attention_dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": self.initializer_range,
            "activation": self.activation,
        }


@keras.saving.register_keras_serializable(package="kerasbert")
class Pooler(keras.layers.Layer):
    """Dense + tanh on the first ([CLS]) vector of a sequence.

    Args:
        initializer_range: float. Stddev of the truncated-normal init.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: float tensor `[batch, seq, hidden]`; returns
            `[batch, hidden]`.
    """

    def __init__(self, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_range = initializer_range

    def build(self, inputs_shape):
        self.dense = keras.layers.Dense(
            inputs_shape[-1],
            activation="tanh",
            kernel_initializer=_initializer(self.initializer_range),
            dtype=self.dtype_policy,
            name="dense",
        )
        self.dense.build((inputs_shape[0], inputs_shape[-1]))
        self.built = True

    def call(self, inputs):
        return self.dense(inputs[:, 0, :])

    def get_config(self):
        return {
            **super().get_config(),
            "initializer_range": self.initializer_range,
        }


@keras.saving.register_keras_serializable(package="kerasbert")
class MaskedLMHead(keras.layers.Layer):
    """Masked-LM logits at the masked positions only.

    Gathers the hidden vectors at `mask_positions` first (so the
    vocabulary-wide matmul costs `max_predictions`, not `seq`, rows), then
    dense -> GELU -> LayerNorm, then a decoder tied to the token embedding
    matrix (`x @ embeddings.T`) plus a per-token output bias.

    Args:
        vocabulary_size: int. Number of output logits.
        token_embedding: optional `keras.layers.Embedding` whose table is
            the (tied) decoder. Not serialised: `from_config` without it
            gives an untied head with its own `decoder_kernel`; models
            re-tie by passing it again (see `BertPretrainer`).
        layer_norm_epsilon: float. Epsilon of the transform LayerNorm.
        initializer_range: float. Stddev of the truncated-normal init.
        activation: "gelu_tanh" or "gelu" (exact) of the transform.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: float tensor `[batch, seq, hidden]`.
        mask_positions: int tensor `[batch, max_predictions]`.

    Returns float32 logits `[batch, max_predictions, vocabulary_size]`.
    """

    def __init__(
        self,
        vocabulary_size,
        token_embedding=None,
        layer_norm_epsilon=1e-12,
        initializer_range=0.02,
        activation="gelu_tanh",
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_activation(activation)
        self.activation = activation
        self.vocabulary_size = vocabulary_size
        self.token_embedding = token_embedding
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range

    def build(self, inputs_shape, mask_positions_shape=None):
        hidden_dim = inputs_shape[-1]
        self.dense = keras.layers.Dense(
            hidden_dim,
            kernel_initializer=_initializer(self.initializer_range),
            dtype=self.dtype_policy,
            name="dense",
        )
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="layer_norm",
        )
        self.dense.build(inputs_shape)
        self.layer_norm.build(inputs_shape)
        if self.token_embedding is None:
            # Same [vocab, hidden] layout as an embedding table.
            self.decoder_kernel = self.add_weight(
                name="decoder_kernel",
                shape=(self.vocabulary_size, hidden_dim),
                initializer=_initializer(self.initializer_range),
            )
        # float32 and not autocast: it is added to float32 logits.
        self.output_bias = self.add_weight(
            name="output_bias",
            shape=(self.vocabulary_size,),
            initializer="zeros",
            dtype="float32",
            autocast=False,
        )
        self.built = True

    def call(self, inputs, mask_positions):
        x = ops.take_along_axis(
            inputs, ops.cast(mask_positions, "int32")[:, :, None], axis=1
        )
        x = self.layer_norm(gelu(self.dense(x), self.activation))
        if self.token_embedding is not None:
            table = self.token_embedding.embeddings
        else:
            table = self.decoder_kernel
        logits = ops.matmul(x, ops.transpose(ops.cast(table, x.dtype)))
        return ops.cast(logits, "float32") + self.output_bias

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": self.initializer_range,
            "activation": self.activation,
        }


@keras.saving.register_keras_serializable(package="kerasbert")
class NSPHead(keras.layers.Layer):
    """Next-sentence-prediction logits (2 classes, float32).

    Class 0 means "B follows A", 1 means "B is random".

    Args:
        initializer_range: float. Stddev of the truncated-normal init.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: pooled float tensor `[batch, hidden]`; returns
            `[batch, 2]`.
    """

    def __init__(self, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_range = initializer_range
        # float32, not the policy: logits feed a softmax cross-entropy.
        self.dense = keras.layers.Dense(
            2,
            kernel_initializer=_initializer(initializer_range),
            dtype="float32",
            name="dense",
        )

    def build(self, inputs_shape):
        self.dense.build(inputs_shape)
        self.built = True

    def call(self, inputs):
        return self.dense(inputs)

    def get_config(self):
        return {
            **super().get_config(),
            "initializer_range": self.initializer_range,
        }
