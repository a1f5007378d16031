"""Unit tests for kerasbert.modeling: backbone, pretrainer, classifier."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from kerasbert.config import ModelConfig
from kerasbert.modeling import (
    BertBackbone,
    BertClassifier,
    BertPretrainer,
    build_pretrainer,
    default_initializer_range,
    pretraining_losses,
)

TINY = dict(
    vocabulary_size=31,
    hidden_dim=8,
    num_layers=2,
    num_heads=2,
    intermediate_dim=12,
    max_sequence_length=9,
)
BATCH, SEQ, PREDS = 4, 9, 3
METRICS = {
    "loss",
    "mlm_loss",
    "nsp_loss",
    "mlm_accuracy",
    "nsp_accuracy",
    "fill",
}


def fake_batch(seed=0, batch=BATCH):
    """A pretraining batch with padding; returns (x, y)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, SEQ + 1, batch)
    padding = (np.arange(SEQ)[None] < lengths[:, None]).astype("int32")
    segments = (np.arange(SEQ)[None] >= (lengths // 2)[:, None]) * padding
    x = {
        "token_ids": (rng.integers(1, 31, (batch, SEQ)) * padding),
        "segment_ids": segments,
        "padding_mask": padding,
        # Distinct positions among the first 4 (always real tokens).
        "mask_positions": np.stack(
            [rng.permutation(4)[:PREDS] for _ in range(batch)]
        ),
    }
    x = {k: v.astype("int32") for k, v in x.items()}
    y = {
        "mask_ids": rng.integers(0, 31, (batch, PREDS)).astype("int32"),
        "mask_weights": (rng.random((batch, PREDS)) < 0.8).astype("float32"),
        "next_sentence_label": rng.integers(0, 2, batch).astype("int32"),
    }
    return x, y


def backbone_inputs(x):
    return {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}


def numpy_outputs(outputs):
    return {k: ops.convert_to_numpy(v) for k, v in outputs.items()}


def test_backbone_outputs_and_optional_outputs():
    x, _ = fake_batch()
    backbone = BertBackbone(
        **TINY, return_hidden_states=True, return_attention_scores=True
    )
    out = backbone(backbone_inputs(x))
    assert tuple(out["sequence_output"].shape) == (BATCH, SEQ, 8)
    assert tuple(out["pooled_output"].shape) == (BATCH, 8)
    assert len(out["hidden_states"]) == TINY["num_layers"] + 1
    np.testing.assert_allclose(
        ops.convert_to_numpy(out["hidden_states"][-1]),
        ops.convert_to_numpy(out["sequence_output"]),
    )
    assert len(out["attention_scores"]) == TINY["num_layers"]
    assert tuple(out["attention_scores"][0].shape) == (BATCH, 2, SEQ, SEQ)
    plain = BertBackbone(**TINY)
    assert set(plain.output) == {"sequence_output", "pooled_output"}
    assert backbone.token_embedding is backbone.embedding.token_embedding


def test_backbone_takes_model_config_fields_and_round_trips_config():
    fields = dataclasses.asdict(ModelConfig.from_size("tiny"))
    backbone = BertBackbone(**fields)
    config = backbone.get_config()
    # None resolves to the width-scaled default, stored so reloads match.
    assert fields["initializer_range"] is None
    resolved = dict(fields, initializer_range=default_initializer_range(128))
    assert {k: config[k] for k in fields} == resolved
    clone = BertBackbone.from_config(config)
    assert clone.get_config() == config
    assert clone.count_params() == backbone.count_params()


def test_new_models_use_tanh_gelu_and_old_ones_keep_the_exact_one(tmp_path):
    assert ModelConfig().activation == "gelu_tanh"
    assert BertBackbone(**TINY).activation == "gelu_tanh"
    # config.json and .keras configs from before the field: exact GELU.
    old = ModelConfig().to_dict()
    del old["activation"]
    assert ModelConfig.from_dict(old).activation == "gelu"
    config = BertBackbone(**TINY).get_config()
    del config["activation"]
    restored = BertBackbone.from_config(config)
    assert restored.activation == "gelu"
    assert all(b.activation == "gelu" for b in restored.blocks)
    assert BertPretrainer(restored).mlm_head.activation == "gelu"
    with pytest.raises(ValueError, match="activation 'relu'"):
        BertBackbone(**TINY, activation="relu")


def test_default_initializer_range_keeps_bert_base_scale():
    # hidden_dim * s**2 stays at BERT-base's 768 * 0.02**2 below 768 wide.
    assert default_initializer_range(768) == pytest.approx(0.02)
    assert default_initializer_range(1024) == pytest.approx(0.02)
    for width in (128, 256, 512):
        s = default_initializer_range(width)
        assert width * s**2 == pytest.approx(768 * 0.02**2)
    # The layers get it: the token table's spread follows the width.
    narrow = BertBackbone(
        **dict(
            TINY,
            vocabulary_size=4000,
            hidden_dim=64,
            num_heads=2,
            initializer_range=None,
        )
    )
    table = ops.convert_to_numpy(narrow.token_embedding.embeddings)
    # Truncated at 2 stddev: the sample std is 0.88 of the stddev.
    assert np.std(table) == pytest.approx(
        0.88 * default_initializer_range(64), rel=0.05
    )


def test_padding_does_not_leak_into_real_positions():
    backbone = BertBackbone(**TINY)  # dropout 0.1: training=False matters
    x, _ = fake_batch()
    inputs = backbone_inputs(x)
    pad = inputs["padding_mask"] == 0
    assert pad.any()
    noisy = dict(inputs)
    rng = np.random.default_rng(7)
    noisy["token_ids"] = np.where(
        pad, rng.integers(0, 31, pad.shape), inputs["token_ids"]
    ).astype("int32")
    noisy["segment_ids"] = np.where(pad, 1, inputs["segment_ids"]).astype(
        "int32"
    )
    a = numpy_outputs(backbone(inputs, training=False))
    b = numpy_outputs(backbone(noisy, training=False))
    real = ~pad
    np.testing.assert_allclose(
        a["sequence_output"][real],
        b["sequence_output"][real],
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        a["pooled_output"], b["pooled_output"], rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(a["sequence_output"][pad], b["sequence_output"][pad])


@pytest.mark.parametrize("attention_dropout", [0.0, 0.1])
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_unpadded_call_matches_the_padded_one(
    attention_dropout, policy, dtype_policy
):
    # Both attention paths (fused at 0, explicit otherwise), under eager
    # and tf.function (which Predictor and the SavedModel trace).
    dtype_policy(policy)
    backbone = BertBackbone(**TINY, attention_dropout=attention_dropout)
    model = BertClassifier(backbone, num_classes=3)
    x, _ = fake_batch(batch=6)
    inputs = backbone_inputs(x)
    real = inputs["padding_mask"] == 1
    assert not real.all()
    tol = 1e-5 if policy == "float32" else 2e-2
    full = numpy_outputs(backbone(inputs, training=False))
    for call in (backbone.call_unpadded, tf.function(backbone.call_unpadded)):
        out = numpy_outputs(call(inputs))
        assert out["sequence_output"].dtype == full["sequence_output"].dtype
        np.testing.assert_allclose(
            np.float32(out["sequence_output"][real]),
            np.float32(full["sequence_output"][real]),
            rtol=tol,
            atol=tol,
        )
        assert not out["sequence_output"][~real].any()  # zeros
        np.testing.assert_allclose(
            np.float32(out["pooled_output"]),
            np.float32(full["pooled_output"]),
            rtol=tol,
            atol=tol,
        )
    logits = ops.convert_to_numpy(model.call_unpadded(inputs))
    assert logits.dtype == "float32"
    np.testing.assert_allclose(
        logits,
        ops.convert_to_numpy(model(inputs, training=False)),
        rtol=tol,
        atol=tol,
    )


def test_base_parameter_count_matches_transformers():
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    with torch.device("meta"):  # shapes only, no 110M random draws
        reference = transformers.BertForPreTraining(
            transformers.BertConfig()
        ).num_parameters()
    ours = build_pretrainer(
        **dataclasses.asdict(ModelConfig.from_size("base"))
    ).count_params()
    assert ours == reference


def test_pretrainer_outputs_are_float32_with_expected_shapes():
    x, _ = fake_batch()
    out = build_pretrainer(**TINY)(x)
    assert tuple(out["mlm_logits"].shape) == (BATCH, PREDS, 31)
    assert tuple(out["nsp_logits"].shape) == (BATCH, 2)
    assert all(v.dtype == "float32" for v in out.values())


def test_pretraining_losses_match_numpy():
    rng = np.random.default_rng(3)
    _, y = fake_batch()
    y_pred = {
        "mlm_logits": rng.normal(size=(BATCH, PREDS, 31)).astype("float32"),
        "nsp_logits": rng.normal(size=(BATCH, 2)).astype("float32"),
    }
    got = numpy_outputs(pretraining_losses(y, y_pred))

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    w = y["mask_weights"]
    mlm_ce = -np.take_along_axis(
        log_softmax(y_pred["mlm_logits"]), y["mask_ids"][..., None], -1
    )[..., 0]
    nsp_ce = -np.take_along_axis(
        log_softmax(y_pred["nsp_logits"]), y["next_sentence_label"][:, None], -1
    )[:, 0]
    mlm_hit = y_pred["mlm_logits"].argmax(-1) == y["mask_ids"]
    nsp_hit = y_pred["nsp_logits"].argmax(-1) == y["next_sentence_label"]
    want = {
        "mlm_loss": (mlm_ce * w).sum() / (w.sum() + 1e-5),
        "nsp_loss": nsp_ce.mean(),
        "mlm_accuracy": (mlm_hit * w).sum() / w.sum(),
        "nsp_accuracy": nsp_hit.mean(),
    }
    want["loss"] = want["mlm_loss"] + want["nsp_loss"]
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)


def test_zero_mask_weights_give_finite_loss_and_gradients():
    model = build_pretrainer(**TINY)
    x, y = fake_batch()
    y["mask_weights"] = np.zeros_like(y["mask_weights"])
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x, y, y_pred)
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(float(loss))
    assert all(
        g is None or np.all(np.isfinite(ops.convert_to_numpy(g))) for g in grads
    )
    # Only NSP is left, so the MLM head gets no gradient at all.
    nsp = numpy_outputs(pretraining_losses(y, y_pred))["nsp_loss"]
    np.testing.assert_allclose(float(loss), nsp, rtol=1e-6)


def test_pretrainer_overfits_one_batch():
    model = build_pretrainer(**TINY, hidden_dropout=0.0, attention_dropout=0.0)
    model.compile(optimizer=keras.optimizers.Adam(3e-2))
    x, y = fake_batch()
    steps = 150  # one epoch of the same batch repeated
    xs = {k: np.tile(v, (steps,) + (1,) * (v.ndim - 1)) for k, v in x.items()}
    ys = {k: np.tile(v, (steps,) + (1,) * (v.ndim - 1)) for k, v in y.items()}
    first = model.evaluate(x, y, return_dict=True, verbose=0)
    history = model.fit(xs, ys, batch_size=BATCH, shuffle=False, verbose=0)
    assert METRICS <= set(history.history)
    last = model.evaluate(x, y, return_dict=True, verbose=0)
    assert set(last) == METRICS
    assert first["mlm_loss"] > 2.0 and first["nsp_loss"] > 0.3
    assert last["mlm_loss"] < 0.1 and last["nsp_loss"] < 0.1, last
    assert last["mlm_accuracy"] == 1.0 and last["nsp_accuracy"] == 1.0


def test_metrics_are_weighted_across_batches():
    model = build_pretrainer(**TINY)
    model.compile(optimizer="sgd")
    x, y = fake_batch(batch=6)
    y["mask_weights"][:3] = 1.0  # batches of 3: unequal weight sums
    y["mask_weights"][3:] = [[1, 0, 0]] * 3
    pred = model.predict(x, batch_size=3, verbose=0)
    hits = pred["mlm_logits"].argmax(-1) == y["mask_ids"]
    # Make the two batches' accuracies differ so weighting is visible.
    y["mask_ids"][3:, 0] = np.where(
        hits[3:, 0], y["mask_ids"][3:, 0], pred["mlm_logits"][3:, 0].argmax(-1)
    )
    y["mask_ids"][:3] = np.where(
        hits[:3], (y["mask_ids"][:3] + 1) % 31, y["mask_ids"][:3]
    )
    hits = pred["mlm_logits"].argmax(-1) == y["mask_ids"]
    w = y["mask_weights"]
    result = model.evaluate(x, y, batch_size=3, return_dict=True, verbose=0)
    np.testing.assert_allclose(
        result["mlm_accuracy"], (hits * w).sum() / w.sum(), rtol=1e-5
    )
    per_batch = [
        numpy_outputs(
            pretraining_losses(
                {k: v[s] for k, v in y.items()},
                {k: v[s] for k, v in pred.items()},
            )
        )
        for s in (slice(0, 3), slice(3, 6))
    ]
    assert not np.isclose(  # a plain mean of batch values would differ
        result["mlm_accuracy"], np.mean([b["mlm_accuracy"] for b in per_batch])
    )
    np.testing.assert_allclose(
        result["loss"], np.mean([b["loss"] for b in per_batch]), rtol=1e-5
    )


def test_fit_with_jit_compile():
    model = build_pretrainer(**{**TINY, "num_layers": 1})  # XLA compile time
    model.compile(optimizer="adam", jit_compile=True)
    x, y = fake_batch()
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, batch_size=BATCH, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(
        not np.allclose(a, b)
        for a, b in zip(before, model.get_weights(), strict=True)
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_logits_and_losses_are_float32(
    policy, dtype_policy, tmp_path
):
    dtype_policy(policy)
    model = build_pretrainer(**TINY)
    x, y = fake_batch()
    backbone_out = model.backbone(backbone_inputs(x))
    compute = policy.removeprefix("mixed_")
    assert backbone_out["sequence_output"].dtype == compute
    out = model(x)
    assert out["mlm_logits"].dtype == "float32"
    assert out["nsp_logits"].dtype == "float32"
    losses = pretraining_losses(y, out)
    assert all(v.dtype == "float32" for v in losses.values())
    model.compile(optimizer="adam")
    history = model.fit(x, y, batch_size=BATCH, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")

    # The policy is part of the saved config, not taken from the global one.
    path = str(tmp_path / "mixed.keras")
    model.save(path)
    dtype_policy("float32")
    loaded = keras.saving.load_model(path, safe_mode=True)
    out = loaded.backbone(backbone_inputs(x))["sequence_output"]
    assert out.dtype == compute
    assert loaded(x)["mlm_logits"].dtype == "float32"
    loaded.compile(optimizer="adam")
    assert scaled == isinstance(
        loaded.optimizer, keras.optimizers.LossScaleOptimizer
    )


def test_keras_file_round_trip(tmp_path):
    model = build_pretrainer(**TINY)
    model.compile(optimizer="adam")
    x, y = fake_batch()
    model.fit(x, y, verbose=0)  # move weights off their initial values
    path = str(tmp_path / "pretrainer.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is BertPretrainer
    assert loaded.get_config() == model.get_config()
    # Still tied after loading.
    assert loaded.mlm_head.token_embedding is loaded.backbone.token_embedding
    assert loaded.count_params() == model.count_params()
    want, got = numpy_outputs(model(x)), numpy_outputs(loaded(x))
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_keras_file_from_before_the_fused_qkv_loads_unchanged():
    # Saved with three q/k/v Dense layers and no `activation` (exact GELU);
    # see tests/fixtures/README.md.
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "fixtures", "pretrainer_v0.keras")
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.backbone.activation == "gelu"
    saved = np.load(path.replace(".keras", "_outputs.npz"))
    x = {
        k: saved[k]
        for k in ("token_ids", "segment_ids", "padding_mask", "mask_positions")
    }
    got = numpy_outputs(loaded(x, training=False))
    for key in ("mlm_logits", "nsp_logits"):
        np.testing.assert_allclose(
            got[key], saved[key], rtol=1e-5, atol=1e-5, err_msg=key
        )


def test_classifier_on_sentence_pairs(tmp_path):
    backbone = BertBackbone(**TINY, hidden_dropout=0.0, attention_dropout=0.0)
    model = BertClassifier(backbone, num_classes=3, dropout=0.0)
    x, _ = fake_batch()
    inputs = backbone_inputs(x)
    logits = ops.convert_to_numpy(model(inputs))
    assert logits.shape == (BATCH, 3) and logits.dtype == "float32"
    # Segment ids are an input: the same tokens as one sentence differ.
    single = dict(inputs, segment_ids=np.zeros_like(inputs["segment_ids"]))
    assert not np.allclose(ops.convert_to_numpy(model(single)), logits)

    labels = np.array([0, 1, 2, 1], "int32")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(inputs, labels, epochs=30, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0] / 2

    path = str(tmp_path / "classifier.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is BertClassifier
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded(inputs)),
        ops.convert_to_numpy(model(inputs)),
    )


# One SGD step on 2 logical CPUs under MirroredStrategy must equal one step
# on one device: each replica's loss is scaled by 1/2 and the gradients
# summed. Without the scaling the update would be twice as large. Run in a
# subprocess because logical devices must be set before TF initialises.
_MIRRORED = textwrap.dedent("""
    import sys, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    sys.path.insert(0, sys.argv[1])
    from test_modeling import TINY, fake_batch
    from kerasbert.modeling import build_pretrainer

    x, y = fake_batch(batch=4)
    # Equal mask-weight sums per replica half, so the per-replica
    # normalisation equals the global one.
    y["mask_weights"][:] = 1.0
    def one_step(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = build_pretrainer(**TINY, hidden_dropout=0.0,
                                     attention_dropout=0.0)
            model.compile(optimizer=keras.optimizers.SGD(1.0))
        before = [w.copy() for w in model.get_weights()]
        model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
        return [a - b for a, b in zip(model.get_weights(), before)]
    single = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"))
    mirrored = one_step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    ratio = max(np.abs(m).max() / np.abs(s).max()
                for s, m in zip(single, mirrored) if np.abs(s).max() > 1e-6)
    for s, m in zip(single, mirrored):
        np.testing.assert_allclose(m, s, rtol=1e-3, atol=1e-5)
    print("ok", ratio)
""")


def test_mirrored_strategy_scales_the_loss():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    )
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED, here],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout
