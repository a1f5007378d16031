"""A third task trains through the run framework with no change to it.

Token classification (is each token id above 12?) on synthetic
sequences, with a one-layer, 8-wide backbone: the task below is all the
code it takes. The framework gives it what it gives pretraining and
fine-tuning: metrics.csv with the task's columns, checkpoints, backups, a
summary, and a resume after an interruption that ends with the numbers
and weights of an uninterrupted run.
"""

import csv
import dataclasses
import json
import os

import keras
import numpy as np
import pytest

from kerasbert.training.rundir import RunDir
from kerasbert.training.trainer import Schedule, Trainer

LENGTH, VOCAB, BATCH = 8, 20, 4


def _batch(seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, (BATCH, LENGTH)).astype("int32")
    x = {
        "token_ids": ids,
        "segment_ids": np.zeros_like(ids),
        "padding_mask": np.ones_like(ids),
    }
    return x, (ids > 12).astype("int32")


class TokenTagging:
    """The toy task: per-token binary labels on random token ids."""

    metric_names = ("loss", "accuracy")
    unit = "tokens"
    units_per_step = BATCH * LENGTH
    validation_split = "validation"
    monitor, mode = "accuracy", "max"
    keep_training_state = True

    def __init__(self, seed=0):
        self.seed = seed
        self.validation = [_batch([seed, 10**6, i]) for i in range(2)]

    def build_model(self, jit):
        from kerasbert.modeling import BertBackbone

        keras.utils.set_random_seed(self.seed)
        backbone = BertBackbone(
            vocabulary_size=VOCAB,
            hidden_dim=8,
            num_layers=1,
            num_heads=2,
            intermediate_dim=16,
            max_sequence_length=LENGTH,
            hidden_dropout=0.1,
        )
        backbone.pooler.trainable = False  # no loss reaches it
        inputs = {
            k: keras.Input((None,), dtype="int32", name=k)
            for k in ("token_ids", "segment_ids", "padding_mask")
        }
        logits = keras.layers.Dense(2, dtype="float32")(
            backbone(inputs)["sequence_output"]
        )
        model = keras.Model(inputs, logits)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=jit,
        )
        # Slots and metric sums exist before a resume loads into them.
        model.optimizer.build(model.trainable_variables)
        x, y = self.validation[0]
        model.compute_metrics(x, y, model(x, training=False))
        model.reset_metrics()
        return model

    def train_dataset(self, start_step, num_workers=1, worker_index=0):
        import tensorflow as tf

        def batches():
            step = start_step
            while True:
                yield _batch([self.seed, step])
                step += 1

        spec = tf.TensorSpec((None, None), tf.int32)
        return tf.data.Dataset.from_generator(
            batches,
            output_signature=(
                {k: spec for k in ("token_ids", "segment_ids", "padding_mask")},
                spec,
            ),
        )

    def evaluate(self, model):
        # Not model.evaluate: it would reset the training metric sums.
        right = total = 0
        losses = []
        for x, y in self.validation:
            logits = np.asarray(model(x, training=False))
            right += int((logits.argmax(-1) == y).sum())
            total += y.size
            losses.append(
                float(
                    keras.losses.SparseCategoricalCrossentropy(
                        from_logits=True
                    )(y, logits)
                )
            )
        return {"loss": float(np.mean(losses)), "accuracy": right / total}

    def finish(self, model, finished):
        model.save(finished.run.model)
        return {
            "validation": self.evaluate(model),
            "best_step": finished.best_step,
        }


@dataclasses.dataclass
class Precision:
    precision: str = "float32"
    jit_compile: str = "off"


SCHEDULE = Schedule(
    total_steps=24, steps_per_epoch=8, log_every=3, backup_every=5
)


def train(path, resume=False, callbacks=()):
    run = RunDir(str(path))
    os.makedirs(run.path, exist_ok=True)
    trainer = Trainer(
        TokenTagging(),
        SCHEDULE,
        run,
        Precision(),
        verbose=0,
        log=lambda message: None,
        extra_callbacks=callbacks,
    )
    return trainer.run(resume=resume)


class StopAt(keras.callbacks.Callback):
    """Interrupts the session after global step `step` (as a kill would)."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer._iterations.numpy()) == self.step:
            raise KeyboardInterrupt


def rows(path):
    with open(path / "metrics.csv", newline="") as f:
        return [
            {
                k: v
                for k, v in r.items()
                if k not in ("seconds",) and "per" not in k
            }
            for r in csv.DictReader(f)
        ]


def test_a_toy_task_trains_and_resumes_through_the_framework(tmp_path):
    clean = tmp_path / "clean"
    summary = train(clean)
    assert summary["validation"]["accuracy"] > 0.8  # chance: about 0.5
    with open(clean / "metrics.csv") as f:
        header = f.readline().strip().split(",")
    assert header == [
        "step",
        "epoch",
        "split",
        "loss",
        "accuracy",
        "learning_rate",
        "tokens_per_second",
        "seconds",
    ]
    splits = [r["split"] for r in rows(clean)]
    assert splits.count("validation") == 3 and splits.count("train") == 8
    assert json.loads((clean / "summary.json").read_text()) == summary
    for name in ("checkpoints/best.keras", "checkpoints/latest.keras"):
        assert (clean / name).exists(), name
    assert sorted(os.listdir(clean / "backup")) == ["step-20", "step-24"]

    resumed = tmp_path / "resumed"
    for stop in (7, 13):  # mid-epoch, mid-window, after a backup
        with pytest.raises(KeyboardInterrupt):
            train(resumed, resume=True, callbacks=[StopAt(stop)])
    assert train(resumed, resume=True) == summary
    assert rows(resumed) == rows(clean)
    a = keras.saving.load_model(str(clean / "model.keras"), compile=False)
    b = keras.saving.load_model(str(resumed / "model.keras"), compile=False)
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


class ScriptedTagging(TokenTagging):
    """The toy task with a scripted validation accuracy per epoch: best at
    epoch 2, then two epochs without a better one."""

    ACCURACY = (0.5, 0.7, 0.6, 0.7, 0.9, 0.95)

    def __init__(self, crash_in_finish=False):
        super().__init__()
        self.crash_in_finish = crash_in_finish

    def evaluate(self, model):
        epoch = int(model.optimizer.iterations.numpy()) // 8
        return {"loss": 1.0, "accuracy": self.ACCURACY[epoch - 1]}

    def finish(self, model, finished):
        if self.crash_in_finish:
            raise KeyboardInterrupt  # killed after the stop, before the end
        return {
            "best_step": finished.best_step,
            "stopped_at": finished.stopped_at,
        }


def train_with_patience(path, resume=False, callbacks=(), **task):
    run = RunDir(str(path))
    os.makedirs(run.path, exist_ok=True)
    messages = []
    trainer = Trainer(
        ScriptedTagging(**task),
        dataclasses.replace(SCHEDULE, total_steps=48, patience=2),
        run,
        Precision(),
        verbose=0,
        log=messages.append,
        extra_callbacks=callbacks,
    )
    return trainer.run(resume=resume), messages


def test_patience_stops_at_the_same_epoch_after_any_interruption(tmp_path):
    clean = tmp_path / "clean"
    summary, messages = train_with_patience(clean)
    # Epoch 2 is best; epochs 3 and 4 bring nothing better (a tie is not
    # better), so training ends after epoch 4 of 6.
    assert summary == {"best_step": 16, "stopped_at": 32}
    assert any("early stop after epoch 4" in m for m in messages), messages
    assert [r["step"] for r in rows(clean) if r["split"] == "validation"] == [
        "8",
        "16",
        "24",
        "32",
    ]
    assert sorted(os.listdir(clean / "backup")) == ["step-30", "step-32"]

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train_with_patience(resumed, resume=True, callbacks=[StopAt(27)])
    # Killed after the stop: the rerun trains nothing and ends the same.
    with pytest.raises(KeyboardInterrupt):
        train_with_patience(resumed, resume=True, crash_in_finish=True)
    summary_again, messages = train_with_patience(resumed, resume=True)
    assert summary_again == summary
    assert any("resuming from step 32" in m for m in messages), messages
    assert rows(resumed) == rows(clean)
    a, b = (
        keras.saving.load_model(
            str(p / "checkpoints/best.keras"), compile=False
        )
        for p in (clean, resumed)
    )
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)
