"""Unit tests of kerasbert.training: plan, backups, checkpoints, schedule,
optimizer, policy."""

import json
import os

import keras
import numpy as np
import pytest

from kerasbert.errors import UsageError
from kerasbert.modeling.schedules import WarmupLinearDecay
from kerasbert.training import callbacks, hardware, optimization, plan


@pytest.mark.parametrize(
    "total,per_epoch,start,expected",
    [
        (30, 10, 0, [(0, 3, 10)]),
        (25, 10, 0, [(0, 2, 10), (2, 3, 5)]),
        (30, 10, 17, [(1, 2, 3), (2, 3, 10)]),
        (25, 10, 22, [(2, 3, 3)]),
        (30, 10, 30, []),
        (5, 10, 0, [(0, 1, 5)]),
    ],
)
def test_plan_fit_calls(total, per_epoch, start, expected):
    calls = plan.plan_fit_calls(total, per_epoch, start)
    assert calls == expected
    # Whatever the split, the calls run exactly the remaining steps.
    assert sum((e - i) * s for i, e, s in calls) == total - start


def test_schedule_warms_up_then_decays_to_zero():
    schedule = WarmupLinearDecay(1e-3, warmup_steps=10, total_steps=100)
    lrs = np.array([float(schedule(s)) for s in range(101)])
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[9] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[:10]) > 0)
    assert np.all(np.diff(lrs[10:]) < 0)
    assert lrs[100] == pytest.approx(0.0)
    # Serialisable, so .keras files with the optimizer reload.
    again = WarmupLinearDecay.from_config(schedule.get_config())
    assert float(again(50)) == pytest.approx(float(schedule(50)))


def test_optimizer_skips_decay_for_layernorm_and_bias():
    from kerasbert.modeling import build_pretrainer

    model = build_pretrainer(
        vocabulary_size=31,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        max_sequence_length=16,
    )
    optimizer = optimization.make_optimizer("adamw", 1e-3, total_steps=10)
    decayed = {
        v.path
        for v in model.trainable_variables
        if optimizer._use_weight_decay(v)
    }
    assert decayed, "kernels and embeddings must be decayed"
    for v in model.trainable_variables:
        short = v.path.split("/")[-1]
        if short in ("gamma", "beta") or "bias" in short:
            assert v.path not in decayed, v.path
    assert any("kernel" in p for p in decayed)
    lamb = optimization.make_optimizer("lamb", 1e-3, total_steps=10)
    assert isinstance(lamb, keras.optimizers.Lamb)
    with pytest.raises(UsageError, match="--optimizer"):
        optimization.make_optimizer("sgd", 1e-3, total_steps=10)


@pytest.mark.parametrize("accumulate", [None, 2])
def test_fused_adamw_is_keras_adamw_in_one_kernel(accumulate):
    """FusedAdamW (make_optimizer's "adamw") updates weights and slots as
    Keras' AdamW does, to float32 rounding, with a warm-up schedule,
    weight decay, decay exclusions, global clipping, a sparse (embedding)
    gradient and gradient accumulation; under TensorFlow the update is the
    fused ResourceApplyAdam op and the schedule runs once per step."""
    import tensorflow as tf

    from kerasbert.modeling import FusedAdamW

    class Counted(WarmupLinearDecay):
        calls = 0

        def __call__(self, step):
            Counted.calls += 1
            return super().__call__(step)

    def train(cls):
        rng = np.random.default_rng(0)
        shapes = {"kernel": (20, 8), "bias": (8,), "embeddings": (300, 4)}
        variables = [
            keras.Variable(rng.normal(size=s).astype("float32"), name=n)
            for n, s in shapes.items()
        ]
        opt = cls(
            learning_rate=Counted(1e-2, warmup_steps=2, total_steps=10),
            weight_decay=0.1,
            global_clipnorm=1.0,
            gradient_accumulation_steps=accumulate,
        )
        opt.exclude_from_weight_decay(var_names=["bias"])
        opt.build(variables)
        step = tf.function(lambda grads: opt.apply(grads, variables))
        Counted.calls = 0
        for _ in range(6):
            grads = [
                tf.constant(rng.normal(size=shapes[n]).astype("float32"))
                for n in ("kernel", "bias")
            ] + [
                tf.IndexedSlices(  # a repeated row, as in a batch of ids
                    tf.constant(rng.normal(size=(3, 4)).astype("float32")),
                    tf.constant([7, 7, 250]),
                    tf.constant([300, 4]),
                )
            ]
            step(grads)
        graph = step.get_concrete_function(grads).graph.as_graph_def()
        ops = {n.op for n in graph.node} | {
            n.op for f in graph.library.function for n in f.node_def
        }
        return (
            [v.numpy() for v in variables + opt.variables],
            ops,
            Counted.calls,
        )

    expected, keras_ops, keras_calls = train(keras.optimizers.AdamW)
    got, fused_ops, fused_calls = train(FusedAdamW)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    # The tolerance is far below what the steps moved the weights.
    start = np.random.default_rng(0).normal(size=(20, 8))
    assert np.abs(got[0] - start).mean() > 1e-3
    assert "ResourceApplyAdam" in fused_ops
    assert "ResourceApplyAdam" not in keras_ops
    # One trace: Keras runs the schedule for the update and again for each
    # decayed variable (kernel, embeddings); FusedAdamW once per step.
    assert (keras_calls, fused_calls) == (3, 1)


def test_load_model_weights_reads_a_keras_file_like_keras(tmp_path):
    """Weights and optimizer slots come back from a `.keras` checkpoint as
    `model.load_weights` gives them; the extracted copy does not stay."""

    def model():
        m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        m.compile(optimizer="adam", loss="mse")
        m.optimizer.build(m.trainable_variables)
        return m

    saved = model()
    saved.train_on_batch(np.ones((4, 3)), np.zeros((4, 2)))
    path = str(tmp_path / "best.keras")
    saved.save(path)
    loaded, reference = model(), model()
    callbacks.load_model_weights(loaded, path)
    reference.load_weights(path)
    values = [v.numpy() for v in loaded.weights + loaded.optimizer.variables]
    assert values[0].tolist() == saved.weights[0].numpy().tolist()
    expected = reference.weights + reference.optimizer.variables
    for got, want in zip(values, expected):
        np.testing.assert_array_equal(got, want.numpy())
    assert os.listdir(tmp_path) == ["best.keras"]


def test_unigram_prior_starts_the_mlm_head_at_word_frequencies():
    """The prior is a distribution ordered like the counts, finite for unseen
    tokens, and a model starting from it scores the unigram entropy instead
    of ln V on targets drawn from those frequencies."""
    from kerasbert.modeling import build_pretrainer, pretraining_losses

    vocab = 50
    rng = np.random.default_rng(0)
    freqs = np.zeros(vocab)
    freqs[5:25] = 1.0 / np.arange(1, 21)  # Zipf over 20 tokens, 30 unseen
    freqs /= freqs.sum()
    tokens = rng.choice(vocab, size=20_000, p=freqs)
    prior = optimization.unigram_log_prior(np.bincount(tokens, minlength=vocab))
    assert prior.shape == (vocab,) and prior.dtype == np.float32
    assert np.isfinite(prior).all()
    assert np.exp(prior.astype(np.float64)).sum() == pytest.approx(1.0)
    assert np.argmax(prior) == 5 and prior[5] > prior[24] > prior[0]

    model = build_pretrainer(
        vocabulary_size=vocab,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    x = {
        "token_ids": rng.integers(5, 25, (64, 16)).astype("int32"),
        "segment_ids": np.zeros((64, 16), "int32"),
        "padding_mask": np.ones((64, 16), "int32"),
        "mask_positions": rng.integers(1, 16, (64, 3)).astype("int32"),
    }
    y = {
        "mask_ids": rng.choice(vocab, size=(64, 3), p=freqs).astype("int32"),
        "mask_weights": np.ones((64, 3), "float32"),
        "next_sentence_label": np.zeros(64, "int32"),
    }

    def mlm_loss():
        out = model(x, training=False)
        return float(pretraining_losses(y, out)["mlm_loss"])

    uniform = mlm_loss()
    model.mlm_head.output_bias.assign(prior)
    entropy = -(freqs[freqs > 0] * np.log(freqs[freqs > 0])).sum()
    # Random logits at init (std ~0.5 at this width) add about half their
    # variance to both: 3.89-4.25 over 8 seeds here, for ln 50 = 3.91.
    assert uniform == pytest.approx(np.log(vocab), abs=0.4)
    assert mlm_loss() == pytest.approx(entropy, abs=0.4)
    assert mlm_loss() < uniform - 0.5


def test_select_precision_and_jit():
    assert hardware.select_precision("float32") == ("float32", "requested")
    policy, why = hardware.select_precision("auto")
    assert policy in ("float32", "mixed_bfloat16", "mixed_float16")
    assert why
    with pytest.raises(UsageError, match="--precision"):
        hardware.select_precision("fp8")
    assert hardware.select_jit_compile("on") is True
    assert hardware.select_jit_compile("off") is False
    with pytest.raises(UsageError, match="--jit-compile"):
        hardware.select_jit_compile("maybe")
    with pytest.raises(UsageError, match="--strategy"):
        hardware.make_strategy("ring")


def test_default_strategy_is_tfs_default():
    # `default` (and its former name `one_device`) is TF's default
    # strategy, not OneDeviceStrategy (see hardware.make_strategy).
    import tensorflow as tf

    for name in ("default", "one_device"):
        assert hardware.make_strategy(name) is tf.distribute.get_strategy()
    if len(tf.config.list_physical_devices("GPU")) < 2:
        assert hardware.make_strategy("auto") is tf.distribute.get_strategy()


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UsageError, match="TF_CONFIG"):
        hardware.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UsageError, match="TF_CONFIG"):
        hardware.make_strategy("multi_worker")


def _tiny_pretrainer():
    from kerasbert.modeling import build_pretrainer

    keras.utils.set_random_seed(0)
    model = build_pretrainer(
        vocabulary_size=31,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        max_sequence_length=16,
        hidden_dropout=0.2,
    )
    model.compile(optimizer=optimization.make_optimizer("adamw", 1e-2, 10))
    x = {
        "token_ids": np.ones((2, 9), "int32"),
        "segment_ids": np.zeros((2, 9), "int32"),
        "padding_mask": np.ones((2, 9), "int32"),
        "mask_positions": np.array([[1, 2], [3, 4]], "int32"),
    }
    y = {
        "mask_ids": np.array([[5, 6], [7, 8]], "int32"),
        "mask_weights": np.ones((2, 2), "float32"),
        "next_sentence_label": np.array([0, 1], "int32"),
    }
    model(x)
    model.optimizer.build(model.trainable_variables)
    return model, x, y


def _state(model):
    return [
        keras.ops.convert_to_numpy(v.value)
        for v in [
            *model.variables,
            *model.optimizer.variables,
            *model.metrics_variables,
        ]
    ]


def test_step_backup_restores_every_state_and_skips_a_damaged_one(tmp_path):
    model, x, y = _tiny_pretrainer()
    backup_dir = tmp_path / "backup"
    counter = callbacks.StepCounter()
    backup = callbacks.StepBackup(str(backup_dir), every=1, counter=counter)
    model.fit(x, y, epochs=4, verbose=0, callbacks=[counter, backup])
    # The last two, whole: no temp folders left.
    assert sorted(os.listdir(backup_dir)) == ["step-3", "step-4"]
    meta = json.loads((backup_dir / "step-4" / "meta.json").read_text())
    assert meta["step"] == 4
    saved = _state(model)

    messages = []
    fresh, _, _ = _tiny_pretrainer()
    assert not all(np.array_equal(a, b) for a, b in zip(saved, _state(fresh)))
    restore = callbacks.StepBackup(
        str(backup_dir), every=1, counter=None, log=messages.append
    )
    restore.set_model(fresh)
    assert restore.restore()["step"] == 4
    # Weights, optimizer slots and step, dropout seed states, metric sums.
    for a, b in zip(saved, _state(fresh)):
        np.testing.assert_array_equal(a, b)
    assert callbacks.optimizer_step(fresh) == 4
    assert not messages

    # A truncated newest backup is named in one line; the one before is used.
    weights = backup_dir / "step-4" / "weights.weights.h5"
    weights.write_bytes(weights.read_bytes()[:100])
    other, _, _ = _tiny_pretrainer()
    restore = callbacks.StepBackup(
        str(backup_dir), every=1, counter=None, log=messages.append
    )
    restore.set_model(other)
    assert restore.restore()["step"] == 3
    assert len(messages) == 1 and "step-4: damaged backup" in messages[0]


def test_gradient_accumulation_updates_every_k_steps():
    from kerasbert.modeling import build_pretrainer

    model = build_pretrainer(
        vocabulary_size=31,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        max_sequence_length=16,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    optimizer = optimization.make_optimizer(
        "adamw",
        1e-2,
        total_steps=10,
        warmup_ratio=0.0,
        gradient_accumulation_steps=2,
    )
    model.compile(optimizer=optimizer)
    x = {
        "token_ids": np.array([[2, 7, 8, 3, 9, 3, 0]], "int32"),
        "segment_ids": np.array([[0, 0, 0, 0, 1, 1, 0]], "int32"),
        "padding_mask": np.array([[1, 1, 1, 1, 1, 1, 0]], "int32"),
        "mask_positions": np.array([[1, 4]], "int32"),
    }
    y = {
        "mask_ids": np.array([[7, 9]], "int32"),
        "mask_weights": np.ones((1, 2), "float32"),
        "next_sentence_label": np.array([0], "int32"),
    }
    kernel = model.backbone.token_embedding.embeddings

    def snapshot():
        return np.array(keras.ops.convert_to_numpy(kernel))

    start = snapshot()
    model.train_on_batch(x, y)
    after_one = snapshot()
    model.train_on_batch(x, y)
    after_two = snapshot()
    np.testing.assert_array_equal(after_one, start)  # only accumulated
    assert not np.allclose(after_two, start)  # applied on the 2nd step


def test_checkpoints_never_saved_with_a_non_finite_loss(tmp_path):
    model, _, _ = _tiny_pretrainer()
    saver = callbacks.CheckpointSaver(
        str(tmp_path / "latest.keras"),
        str(tmp_path / "best.keras"),
        callbacks.StepCounter(),
    )
    saver.set_model(model)
    saver.save(float("nan"))
    saver.save(float("inf"))
    assert not os.listdir(tmp_path)
    saver.save(2.5)
    kept = [np.array(w) for w in model.get_weights()]
    model.set_weights([w + 1 for w in kept])
    saver.save(3.0)  # worse: latest only
    assert sorted(os.listdir(tmp_path)) == [
        "best.json",
        "best.keras",
        "latest.keras",
    ]
    assert json.loads((tmp_path / "best.json").read_text()) == {
        "loss": 2.5,
        "step": 0,
    }
    # best.keras (a link to the latest of its time) kept its weights when
    # latest.keras was replaced.
    load = lambda name: keras.saving.load_model(  # noqa: E731
        str(tmp_path / name), safe_mode=True
    ).get_weights()
    for a, b in zip(load("best.keras"), kept):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(load("latest.keras"), kept):
        np.testing.assert_array_equal(a, b + 1)


def test_heldout_evaluation_matches_keras_evaluate():
    import tensorflow as tf

    from kerasbert.training import evaluation

    model, x, y = _tiny_pretrainer()
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):
        bx = dict(x, token_ids=rng.integers(0, 31, (2, 9)).astype("int32"))
        by = dict(
            y,
            mask_ids=rng.integers(0, 31, (2, 2)).astype("int32"),
            mask_weights=rng.integers(0, 2, (2, 2)).astype("float32"),
        )
        batches.append((bx, by))
    ds = tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda *a: np.stack(a), *batches)
    )
    held = evaluation.HeldoutSet(ds, 10)
    assert len(held) == 3
    ours = held.evaluate(model)
    keras_ = model.evaluate(ds, verbose=0, return_dict=True)
    # `fill` is the rows' share of real tokens, a property of the data
    # that metrics.csv's train rows carry; the held-out rows report the
    # model's losses and accuracies.
    keras_.pop("fill")
    assert sorted(ours) == sorted(keras_)
    for k in ours:
        assert ours[k] == pytest.approx(keras_[k], rel=1e-5, abs=1e-6), k
    first = held.evaluate(model, batches=1)
    one = model.evaluate(ds.take(1), verbose=0, return_dict=True)
    assert first["mlm_loss"] == pytest.approx(one["mlm_loss"], rel=1e-5)


def test_resume_accepts_only_bookkeeping_changes():
    from kerasbert.config import DataConfig, ModelConfig, TrainConfig
    from kerasbert.training.rundir import config_changes, run_config

    def configs(**train):
        return run_config(
            ModelConfig.from_size("tiny"), DataConfig(), TrainConfig(**train)
        )

    saved = configs()
    for free in (
        dict(log_every=3),
        dict(backup_every=7),
        dict(eval_batches=4),
        dict(jit_compile="off"),
        dict(output_dir="elsewhere"),
        dict(overwrite=True),
    ):
        assert config_changes(saved, configs(**free)) == [], free
    changed = config_changes(saved, configs(learning_rate=1e-3, seed=2))
    assert sorted(c.split(":")[0] for c in changed) == ["learning_rate", "seed"]


def test_run_saved_before_the_activation_field_was_exact_gelu():
    from kerasbert.config import DataConfig, ModelConfig, TrainConfig
    from kerasbert.training.rundir import config_changes, run_config

    def configs(**model):
        return run_config(
            ModelConfig.from_size("tiny", **model), DataConfig(), TrainConfig()
        )

    old = configs()
    del old["model"]["activation"]
    assert config_changes(old, configs(activation="gelu")) == []
    # The new default would change what the backup's weights compute.
    assert config_changes(old, configs()) == [
        "activation: 'gelu' -> 'gelu_tanh'"
    ]


def test_heldout_documents_never_enter_the_unigram_prior(bundled):
    from kerasbert.config import DataConfig, ModelConfig, TrainConfig
    from kerasbert.training.plan import make_plan
    from kerasbert.training.pretrain import PretrainingTask

    tokenizer, corpus = bundled
    data_cfg = DataConfig(holdout_fraction=0.2, sequence_length=64)
    train_cfg = TrainConfig(batch_size=8, seed=3)
    training_plan = make_plan(corpus, data_cfg, train_cfg)
    assert len(training_plan.heldout_ids) >= 2
    model_cfg = ModelConfig.from_size(
        "tiny", vocabulary_size=tokenizer.vocabulary_size
    )
    task = PretrainingTask(
        model_cfg, data_cfg, train_cfg, tokenizer, corpus, training_plan
    )
    counts = task.train_token_counts()
    train_tokens = corpus.select_documents(training_plan.train_ids).tokens
    expected = np.bincount(train_tokens, minlength=len(counts))
    np.testing.assert_array_equal(counts, expected)
    heldout = corpus.select_documents(training_plan.heldout_ids).tokens
    assert counts.sum() == corpus.num_tokens - len(heldout)


def test_gradient_accumulation_survives_backup_and_restore(tmp_path):
    """k=3, backed up after 4 batches: mid-accumulation. The restored
    model has the same step (batches, not updates) and the same partial
    gradient sums, so the next update is the uninterrupted one."""
    model, x, y = _tiny_pretrainer()
    model.compile(
        optimizer=optimization.make_optimizer(
            "adamw", 1e-2, 10, gradient_accumulation_steps=3
        )
    )
    model.optimizer.build(model.trainable_variables)
    counter = callbacks.StepCounter()
    backup = callbacks.StepBackup(
        str(tmp_path / "backup"), every=4, counter=counter
    )
    model.fit(x, y, epochs=4, verbose=0, callbacks=[counter, backup])
    assert counter.step == callbacks.optimizer_step(model) == 4
    assert int(model.optimizer.iterations.numpy()) == 1  # updates
    saved = _state(model)

    fresh, _, _ = _tiny_pretrainer()
    fresh.compile(
        optimizer=optimization.make_optimizer(
            "adamw", 1e-2, 10, gradient_accumulation_steps=3
        )
    )
    fresh.optimizer.build(fresh.trainable_variables)
    restore = callbacks.StepBackup(
        str(tmp_path / "backup"), every=4, counter=None
    )
    restore.set_model(fresh)
    assert restore.restore()["step"] == 4
    for a, b in zip(saved, _state(fresh)):
        np.testing.assert_array_equal(a, b)
    accumulators = [
        v for v in fresh.optimizer.variables if "accumulat" in v.path
    ]
    assert accumulators and any(
        np.abs(keras.ops.convert_to_numpy(v)).sum() > 0 for v in accumulators
    )
    # Two more batches: both finish the second update identically.
    model.fit(x, y, epochs=2, verbose=0)
    fresh.fit(x, y, epochs=2, verbose=0)
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_run_saved_before_the_adaptation_fields_resumes():
    """Runs written before --nsp, --heads-only and --columns existed
    trained with NSP, the whole model and no column list: they resume."""
    from kerasbert.config import DataConfig, ModelConfig, TrainConfig
    from kerasbert.training.rundir import config_changes, run_config

    current = run_config(
        ModelConfig.from_size("tiny"), DataConfig(), TrainConfig()
    )
    old = json.loads(json.dumps(current))
    for part, key in (
        ("train", "nsp"),
        ("train", "heads_only"),
        ("data", "columns"),
    ):
        del old[part][key]
    assert config_changes(old, current) == []
    masked_lm_only = run_config(
        ModelConfig.from_size("tiny"), DataConfig(), TrainConfig(nsp=False)
    )
    assert config_changes(old, masked_lm_only) == ["nsp: True -> False"]


def test_step_counter_under_loss_scaling(tmp_path, dtype_policy):
    """mixed_float16 compiles a LossScaleOptimizer, whose own counter never
    moves and whose inner one skips overflowing steps: the StepCounter
    still counts batches, backups are named by it, and a restore checks
    the optimizer state by the innermost counter."""
    dtype_policy("mixed_float16")
    model, x, y = _tiny_pretrainer()
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    # A large starting scale: the first steps overflow and are skipped.
    model.optimizer.dynamic_scale.assign(2.0**19)
    counter = callbacks.StepCounter()
    backup = callbacks.StepBackup(
        str(tmp_path / "backup"), every=2, counter=counter
    )
    model.fit(x, y, epochs=6, verbose=0, callbacks=[counter, backup])
    assert counter.step == 6
    assert int(model.optimizer._iterations.numpy()) == 0
    applied = callbacks.optimizer_step(model)
    assert 0 < applied < 6  # some steps were skipped
    assert sorted(os.listdir(tmp_path / "backup")) == ["step-4", "step-6"]
    meta = json.loads((tmp_path / "backup/step-6/meta.json").read_text())
    assert meta["optimizer_step"] == applied

    fresh, _, _ = _tiny_pretrainer()
    restore = callbacks.StepBackup(
        str(tmp_path / "backup"), every=2, counter=None
    )
    restore.set_model(fresh)
    assert restore.restore()["step"] == 6
    assert callbacks.optimizer_step(fresh) == applied
    for a, b in zip(_state(model), _state(fresh)):
        np.testing.assert_array_equal(a, b)
