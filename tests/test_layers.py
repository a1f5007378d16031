"""Unit tests for kerasbert.layers at tiny odd sizes."""

import keras
import numpy as np
import pytest
from keras import ops

from kerasbert.modeling.layers import (
    BertEmbedding,
    EncoderBlock,
    MaskedLMHead,
    NSPHead,
    Pooler,
    gelu,
)

VOCAB, HIDDEN, HEADS, INTERMEDIATE, SEQ, BATCH, PREDS = 31, 8, 2, 12, 9, 3, 4


def token_ids(seed=0):
    return (
        np.random.default_rng(seed)
        .integers(0, VOCAB, (BATCH, SEQ))
        .astype("int32")
    )


def hidden(seed=0):
    return (
        np.random.default_rng(seed)
        .normal(size=(BATCH, SEQ, HIDDEN))
        .astype("float32")
    )


def padding_mask():
    lengths = np.array([SEQ, 5, 2])
    return (np.arange(SEQ)[None] < lengths[:, None]).astype("int32")


def mask_positions():
    return (
        np.random.default_rng(1)
        .integers(0, SEQ, (BATCH, PREDS))
        .astype("int32")
    )


# name -> (layer factory, call args, call kwargs, expected output shape)
CASES = {
    "embedding": (
        lambda: BertEmbedding(
            VOCAB,
            HIDDEN,
            max_sequence_length=SEQ + 2,
            num_segments=3,
            dropout=0.0,
        ),
        lambda: (token_ids(), np.ones((BATCH, SEQ), "int32")),
        {},
        (BATCH, SEQ, HIDDEN),
    ),
    "encoder_block": (
        lambda: EncoderBlock(
            HEADS, INTERMEDIATE, hidden_dropout=0.0, attention_dropout=0.0
        ),
        lambda: (hidden(),),
        {"padding_mask": padding_mask()},
        (BATCH, SEQ, HIDDEN),
    ),
    "pooler": (Pooler, lambda: (hidden(),), {}, (BATCH, HIDDEN)),
    "mlm_head": (
        lambda: MaskedLMHead(VOCAB),
        lambda: (hidden(), mask_positions()),
        {},
        (BATCH, PREDS, VOCAB),
    ),
    "nsp_head": (NSPHead, lambda: (hidden()[:, 0],), {}, (BATCH, 2)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_shape_config_and_serialization(name):
    make, args, kwargs, shape = CASES[name]
    layer = make()
    out = layer(*args(), **kwargs)
    assert tuple(out.shape) == shape

    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config

    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(restored) is type(layer)
    assert restored.get_config() == config
    restored(*args(), **kwargs)  # build, then copy weights across
    assert len(restored.weights) == len(layer.weights)
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored(*args(), **kwargs)),
        ops.convert_to_numpy(out),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_dtypes_under_mixed_policies(policy, dtype_policy):
    dtype_policy(policy)
    compute = policy.removeprefix("mixed_")
    for name in ("embedding", "encoder_block", "pooler"):
        make, args, kwargs, _ = CASES[name]
        layer = make()
        out = layer(*args(), **kwargs)
        assert keras.backend.standardize_dtype(out.dtype) == compute, name
        assert all(w.dtype == "float32" for w in layer.weights), name
    for name in ("mlm_head", "nsp_head"):  # logits stay float32
        make, args, kwargs, _ = CASES[name]
        inputs = args()
        out = make()(ops.cast(inputs[0], compute), *inputs[1:], **kwargs)
        assert keras.backend.standardize_dtype(out.dtype) == "float32", name


def test_each_weight_gets_its_own_initial_values():
    block = EncoderBlock(HEADS, INTERMEDIATE)
    block(hidden())
    q, k, v = np.split(ops.convert_to_numpy(block.qkv_kernel), 3, axis=1)
    kernels = [
        q,
        k,
        v,
        ops.convert_to_numpy(block.attention_output.kernel),
        ops.convert_to_numpy(block.intermediate.kernel)[:, :HIDDEN],
    ]
    for i in range(len(kernels)):
        for j in range(i):
            assert not np.allclose(kernels[i], kernels[j])
    assert np.std(kernels[0]) < 0.03  # TruncatedNormal(stddev=0.02)


def test_embedding_adds_position_and_segment_and_exposes_token_table():
    layer = BertEmbedding(VOCAB, HIDDEN, max_sequence_length=SEQ, dropout=0.0)
    ids = np.full((1, SEQ), 7, "int32")
    zeros = np.zeros((1, SEQ), "int32")
    out = ops.convert_to_numpy(layer(ids, zeros))
    # Same token everywhere: only the position embeddings tell rows apart.
    assert not np.allclose(out[0, 0], out[0, 1])
    # Default segment ids are zeros.
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(ids)), out, rtol=1e-6, atol=1e-6
    )
    assert not np.allclose(ops.convert_to_numpy(layer(ids, zeros + 1)), out)
    assert tuple(layer.token_embedding.embeddings.shape) == (VOCAB, HIDDEN)


def test_fused_and_explicit_attention_agree():
    block = EncoderBlock(
        HEADS, INTERMEDIATE, hidden_dropout=0.0, attention_dropout=0.0
    )
    x, mask = hidden(), padding_mask()
    fused = block(x, padding_mask=mask)  # dot_product_attention path
    explicit, probs = block(x, padding_mask=mask, return_attention_scores=True)
    np.testing.assert_allclose(
        ops.convert_to_numpy(fused),
        ops.convert_to_numpy(explicit),
        rtol=1e-5,
        atol=1e-5,
    )
    probs = ops.convert_to_numpy(probs)
    assert probs.shape == (BATCH, HEADS, SEQ, SEQ)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    # No attention to padded keys.
    assert np.all(probs[1, :, :, 5:] < 1e-6)
    assert np.all(probs[2, :, :, 2:] < 1e-6)


@pytest.mark.parametrize("attention_dropout", [0.0, 0.3])
def test_encoder_block_ignores_padded_positions(attention_dropout):
    block = EncoderBlock(
        HEADS, INTERMEDIATE, attention_dropout=attention_dropout
    )
    mask = padding_mask()
    x = hidden(0)
    noisy = np.where(mask[..., None] == 1, x, hidden(5) * 10)
    a = ops.convert_to_numpy(block(x, padding_mask=mask, training=False))
    b = ops.convert_to_numpy(block(noisy, padding_mask=mask, training=False))
    real = mask == 1
    np.testing.assert_allclose(a[real], b[real], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[~real], b[~real])


def test_attention_dropout_is_separate_from_hidden_dropout():
    block = EncoderBlock(
        HEADS, INTERMEDIATE, hidden_dropout=0.0, attention_dropout=0.5
    )
    x = hidden()
    eval_out = ops.convert_to_numpy(block(x, training=False))
    train_out = ops.convert_to_numpy(block(x, training=True))
    assert not np.allclose(eval_out, train_out)
    quiet = EncoderBlock(
        HEADS, INTERMEDIATE, hidden_dropout=0.0, attention_dropout=0.0
    )
    quiet(x)
    np.testing.assert_allclose(
        ops.convert_to_numpy(quiet(x, training=True)),
        ops.convert_to_numpy(quiet(x)),
        rtol=1e-6,
    )


def test_pooler_reads_only_the_first_vector():
    pooler = Pooler()
    x = hidden(0)
    other = np.concatenate([x[:, :1], hidden(3)[:, 1:]], axis=1)
    out = ops.convert_to_numpy(pooler(x))
    np.testing.assert_allclose(ops.convert_to_numpy(pooler(other)), out)
    kernel, bias = pooler.dense.get_weights()
    np.testing.assert_allclose(
        out, np.tanh(x[:, 0] @ kernel + bias), rtol=1e-5, atol=1e-6
    )


def test_mlm_head_gathers_then_decodes_with_the_tied_table():
    embedding = keras.layers.Embedding(VOCAB, HIDDEN)
    embedding.build((None,))
    head = MaskedLMHead(VOCAB, token_embedding=embedding)
    x, positions = hidden(), mask_positions()
    logits = ops.convert_to_numpy(head(x, positions))
    assert not hasattr(head, "decoder_kernel")

    # Logits only at the requested positions: same as decoding every
    # position and picking the requested ones.
    every = np.tile(np.arange(SEQ, dtype="int32"), (BATCH, 1))
    full = ops.convert_to_numpy(head(x, every))
    picked = np.take_along_axis(full, positions[:, :, None], axis=1)
    np.testing.assert_allclose(logits, picked, rtol=1e-5, atol=1e-5)

    # Tied: a new embedding table changes the logits exactly as x @ E.T.
    table = np.random.default_rng(2).normal(size=(VOCAB, HIDDEN))
    embedding.embeddings.assign(table.astype("float32"))
    bias = np.arange(VOCAB, dtype="float32")
    head.output_bias.assign(bias)
    gathered = np.take_along_axis(x, positions[:, :, None], axis=1)
    transformed = ops.convert_to_numpy(
        head.layer_norm(gelu(head.dense(gathered), head.activation))
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(head(x, positions)),
        transformed @ table.T + bias,
        rtol=1e-4,
        atol=1e-4,
    )


def test_mlm_head_gradient_reaches_the_embedding_table():
    import tensorflow as tf

    embedding = keras.layers.Embedding(VOCAB, HIDDEN)
    embedding.build((None,))
    head = MaskedLMHead(VOCAB, token_embedding=embedding)
    head(hidden(), mask_positions())
    with tf.GradientTape() as tape:
        loss = ops.sum(head(hidden(), mask_positions()) ** 2)
    grad = tape.gradient(loss, embedding.embeddings.value)
    assert grad is not None and float(ops.max(ops.abs(grad))) > 0


def test_gelu_forms():
    import math

    x = np.linspace(-5, 5, 101).astype("float32")
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    tanh = (
        0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(gelu(x, "gelu")), exact, atol=1e-6
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(gelu(x, "gelu_tanh")), tanh, atol=1e-6
    )
    assert np.abs(exact - tanh).max() > 1e-4  # the two really differ
