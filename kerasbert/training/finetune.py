"""Fine-tuning a `BertClassifier`, and predicting with the result.

`finetune(cfg)` is what `python -m kerasbert.finetune` calls. It reads and
checks every input (data files, labels, source model, output folder)
before it creates the output directory, so bad input leaves nothing
behind. The directory it writes is a model directory
(`kerasbert.serving.modeldir`) of a classifier:

    config.json   {"model": ModelConfig, "finetune": FinetuneConfig,
                   "labels": [name of class 0, 1, ...], "pair": bool}
    tokenizer/    copied from --model, or trained (--from-scratch)
    model.keras   the best epoch's BertClassifier, float32
    metrics.json  per-epoch validation metrics, best epoch, test metrics
    metrics.csv   one row per epoch and split; confusion.png; logs/
    checkpoints/  resume state (removed once the run is complete)

`--overwrite` of an existing directory builds the new run beside it, in
`.OUT.replacing/`, and swaps it in when complete: a failure or kill leaves
the old one as it was, and the same command resumes the replacement.

Resume: after every epoch the weights with the optimizer state
(`epoch-N.weights.h5`), the dropout seed states (`epoch-N.state.npz`,
as pretraining's backups keep them) and `state.json` (history, best
epoch) are written; rerunning the same command continues after the last
finished epoch. A kill mid-epoch repeats that epoch with the same batches
(each epoch's order depends only on seed and epoch) and the same dropout
draws, so the result equals an uninterrupted run's (tested).
"""

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import weakref

import keras
import numpy as np

from kerasbert.config import FinetuneConfig, ModelConfig, parameter_count
from kerasbert.data import classification as cls_data
from kerasbert.errors import DiskFull, UsageError
from kerasbert.files import (
    atomic_path,
    check_free_space,
    check_output,
    check_writable_dir,
    fault_point,
    replacement_dir,
    swap_in,
    write_json_atomic,
    write_text_atomic,
)

CSV_COLUMNS = (
    "epoch",
    "split",
    "loss",
    "accuracy",
    "macro_f1",
    "mcc",
    "learning_rate",
    "examples_per_second",
    "seconds",
)
# Fields that do not change what a run computes: a resumed run may differ
# in them.
_RESUMABLE = ("overwrite",)


@dataclasses.dataclass
class Data:
    labels: list[str]
    train: cls_data.Examples
    train_ids: np.ndarray
    validation: cls_data.Examples
    validation_ids: np.ndarray
    test: cls_data.Examples | None
    test_ids: np.ndarray | None


def read_data(cfg: FinetuneConfig) -> Data:
    """Reads and checks --train/--validation/--test (labels included)."""
    read = dict(
        data_format=cfg.data_format,
        text_column=cfg.text_column,
        text_pair_column=cfg.text_pair_column,
        label_column=cfg.label_column,
        columns=cfg.columns,
        hf_config=cfg.hf_config,
    )

    def read_sample(path, flag):
        """A file's examples, seeded-sampled to --max-examples."""
        return cls_data.sample(
            cls_data.read_examples(path, flag=flag, **read),
            cfg.max_examples,
            cfg.seed,
        )

    train = read_sample(cfg.train, "--train")
    labels = cls_data.label_names(train.labels, "--train", train.where)
    if len(labels) < 2:
        raise UsageError(
            f"--train: {cfg.train}: only one label "
            f"({labels[0]!r}); a classifier needs two or more"
        )
    train_ids = cls_data.label_ids(train, labels, "--train")
    if cfg.validation:
        validation = read_sample(cfg.validation, "--validation")
        validation_ids = cls_data.label_ids(validation, labels, "--validation")
    else:
        keep, held = cls_data.stratified_split(
            train_ids, cfg.holdout_fraction, cfg.seed
        )
        if not len(held) or not len(keep):
            raise UsageError(
                f"--train: {cfg.train}: too few examples "
                f"({len(train)}) to hold out a validation "
                "share; pass --validation"
            )
        validation, validation_ids = train.subset(held), train_ids[held]
        train, train_ids = train.subset(keep), train_ids[keep]
    test = test_ids = None
    if cfg.test:
        test = read_sample(cfg.test, "--test")
        test_ids = cls_data.label_ids(test, labels, "--test")
    return Data(
        labels, train, train_ids, validation, validation_ids, test, test_ids
    )


def _source_backbone(cfg: FinetuneConfig, tokenizer, model_overrides):
    """(ModelConfig, backbone weights or None) of the starting point."""
    if cfg.from_scratch:
        model_cfg = ModelConfig.from_size(
            cfg.from_scratch,
            **{
                **(model_overrides or {}),
                "vocabulary_size": tokenizer.vocabulary_size,
            },
        )
        return model_cfg.validate(), None
    if model_overrides:
        raise UsageError(
            f"{', '.join('--' + k.replace('_', '-') for k in model_overrides)}"
            ": architecture flags only apply with --from-scratch"
        )
    from kerasbert.serving.modeldir import backbone_of, load_model

    with _flag("--model"):
        backbone = backbone_of(load_model(cfg.model))
    if not hasattr(backbone, "hidden_dim"):
        raise UsageError(f"--model: {cfg.model}: holds no BERT backbone")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    model_cfg = ModelConfig(
        **{k: v for k, v in backbone.get_config().items() if k in names}
    )
    if model_cfg.vocabulary_size != tokenizer.vocabulary_size:
        raise UsageError(
            f"--model: {cfg.model}: the model has "
            f"{model_cfg.vocabulary_size} token ids but its tokenizer "
            f"{tokenizer.vocabulary_size}"
        )
    return model_cfg, backbone.get_weights()


def build_classifier(
    model_cfg: ModelConfig,
    num_classes: int,
    dropout: float = 0.1,
    weights=None,
    dtype=None,
):
    from kerasbert.modeling import BertBackbone, BertClassifier

    backbone = BertBackbone(**model_cfg.to_dict(), dtype=dtype)
    if weights is not None:
        backbone.set_weights(weights)
    return BertClassifier(backbone, num_classes, dropout=dropout)


@contextlib.contextmanager
def _flag(flag):
    """Prefixes the flag to a `UsageError` that names only a path."""
    try:
        yield
    except UsageError as e:
        if str(e).startswith("--"):
            raise
        raise UsageError(f"{flag}: {e}") from None


def _configs(cfg, model_cfg, labels, pair):
    return {
        "model": model_cfg.to_dict(),
        "finetune": cfg.to_dict(),
        "labels": labels,
        "pair": pair,
    }


def _same_run(saved: dict, configs: dict) -> bool:
    def strip(c):
        c = json.loads(json.dumps(c))
        for name in _RESUMABLE:
            c.get("finetune", {}).pop(name, None)
        return c

    return strip(saved) == strip(configs)


def _output_state(output_dir: str, configs: dict, overwrite: bool) -> str:
    """ "new", "resume" or "done"; a folder holding something else (or a
    different run) is an error unless `overwrite`."""
    if not os.path.exists(output_dir) or not os.listdir(output_dir):
        return "new"
    if overwrite:
        return "overwrite"
    path = os.path.join(output_dir, "config.json")
    if not os.path.exists(path):
        raise UsageError(
            f"--output-dir: {output_dir} is not empty and "
            "holds no fine-tuning run; pass --overwrite or "
            "another folder"
        )
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if not _same_run(saved, configs):
        raise UsageError(
            f"--output-dir: {output_dir} holds a run with "
            "other settings; pass --overwrite or another "
            "folder"
        )
    done = all(
        os.path.exists(os.path.join(output_dir, name))
        for name in ("model.keras", "metrics.json")
    )
    return "done" if done else "resume"


def inputs(cfg: FinetuneConfig) -> dict:
    """{flag: path} of everything a fine-tuning run reads."""
    return {
        "--model": cfg.model,
        "--train": cfg.train,
        "--validation": cfg.validation,
        "--test": cfg.test,
    }


def finetune(
    cfg: FinetuneConfig,
    model_overrides: dict | None = None,
    verbose: int = 1,
    log=print,
) -> dict:
    """Runs (or resumes) one fine-tuning run; returns metrics.json's dict.

    `model_overrides`: ModelConfig fields for --from-scratch (e.g. a tiny
    `hidden_dim`)."""
    cfg.validate()
    check_output(cfg.output_dir, "--output-dir", inputs(cfg))
    check_writable_dir(cfg.output_dir, "--output-dir")
    from kerasbert.training.rundir import run_lock

    # One process per output directory, as for pretraining runs.
    with run_lock(cfg.output_dir):
        try:
            return _finetune(cfg, model_overrides, verbose, log)
        except DiskFull as e:
            raise DiskFull(
                f"{e} (the same command resumes after the last finished epoch)"
            ) from None


def _finetune(cfg, model_overrides, verbose, log):
    data = read_data(cfg)
    out = cfg.output_dir
    tokenizer_dir = os.path.join(out, "tokenizer")
    from kerasbert.serving.modeldir import load_tokenizer

    if cfg.model:
        with _flag("--model"):
            tokenizer = load_tokenizer(cfg.model)
    elif os.path.isdir(tokenizer_dir) and not cfg.overwrite:
        tokenizer = load_tokenizer(out)  # this run trained it already
    else:
        from kerasbert.text.tokenizer import train_wordpiece

        texts = data.train.texts + (data.train.pairs or [])
        tokenizer = train_wordpiece(texts, cfg.vocab_size, progress=False)
    model_cfg, weights = _source_backbone(cfg, tokenizer, model_overrides)
    if cfg.max_length > model_cfg.max_sequence_length:
        raise UsageError(
            f"--max-length: {cfg.max_length} is above the "
            "model's max_sequence_length "
            f"{model_cfg.max_sequence_length}"
        )
    configs = _configs(
        cfg, model_cfg, data.labels, data.train.pairs is not None
    )
    state = _output_state(out, configs, cfg.overwrite)
    if state == "done":
        log(
            f"{out}: this run is complete (metrics.json); pass --overwrite "
            "to start again"
        )
        with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
            return json.load(f)
    final = out
    if state == "overwrite":
        # Built beside the old run, which stays whole until the swap.
        out = replacement_dir(final)
        try:
            state = _output_state(out, configs, False)
        except (UsageError, OSError, ValueError):  # another one, or damaged
            state = "new"
        if state == "new" and os.path.isdir(out):
            shutil.rmtree(out)
        cfg = dataclasses.replace(cfg, output_dir=out)
        tokenizer_dir = os.path.join(out, "tokenizer")
    # model.keras, and two epoch checkpoints with Adam's two slots: a disk
    # that fills inside h5py can crash the process, so check first.
    check_free_space(
        out, 8 * 4 * parameter_count(**model_cfg.to_dict()), "--output-dir"
    )
    # Everything is checked: from here on the folder is written.
    os.makedirs(out, exist_ok=True)
    if not os.path.isdir(tokenizer_dir):
        staging = os.path.join(out, ".tokenizer.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        if cfg.model:
            shutil.copytree(os.path.join(cfg.model, "tokenizer"), staging)
        else:
            tokenizer.save(staging)
        os.replace(staging, tokenizer_dir)
    write_json_atomic(os.path.join(out, "config.json"), configs)
    if state != "done":
        result = _train(cfg, model_cfg, weights, tokenizer, data, verbose, log)
    else:  # a replacement that finished, killed before its swap
        with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
            result = json.load(f)
    if out != final:
        swap_in(out, final)
    return result


def _train(cfg, model_cfg, weights, tokenizer, data, verbose, log):
    from kerasbert.training import hardware
    from kerasbert.training.optimization import make_optimizer

    out = cfg.output_dir
    policy, why = hardware.select_precision(cfg.precision)
    jit = hardware.select_jit_compile(cfg.jit_compile)
    log(
        f"precision: {policy} ({why}); jit_compile: {jit}; "
        f"{len(data.train)} training / {len(data.validation)} validation"
        f"{f' / {len(data.test)} test' if data.test else ''} examples; "
        f"labels: {', '.join(data.labels)}"
    )
    train_encoded, validation_encoded = (
        cls_data.encode(tokenizer, ex, cfg.max_length, cfg.truncation)
        for ex in (data.train, data.validation)
    )

    keras.utils.set_random_seed(cfg.seed)
    model = build_classifier(
        model_cfg, len(data.labels), cfg.dropout, weights, dtype=policy
    )
    steps = cls_data.steps_per_epoch(len(data.train), cfg.batch_size)
    optimizer = make_optimizer(
        "adamw",
        cfg.learning_rate,
        steps * cfg.epochs,
        cfg.warmup_ratio,
        cfg.weight_decay,
        cfg.clipnorm,
        epsilon=cfg.adam_epsilon,
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit,
    )

    checkpoints = os.path.join(out, "checkpoints")
    epoch_state = _load_state(checkpoints)
    first_epoch = epoch_state["epoch"]
    if first_epoch:
        from kerasbert.training.callbacks import load_hidden_state

        optimizer.build(model.trainable_variables)
        latest = os.path.join(checkpoints, epoch_state["latest"])
        model.load_weights(latest)
        if os.path.exists(_state_file(latest)):
            load_hidden_state(model, _state_file(latest), metrics=False)
        log(f"resuming after epoch {first_epoch}")
    evaluator = _EpochEnd(
        cfg, data, validation_encoded, checkpoints, epoch_state, len(data.train)
    )
    callbacks = [
        evaluator,
        keras.callbacks.TensorBoard(
            os.path.join(out, "logs"), write_graph=False
        ),
    ]
    if first_epoch < cfg.epochs:
        dataset = cls_data.training_dataset(
            train_encoded,
            data.train_ids,
            cfg.batch_size,
            cfg.bucketing,
            cfg.max_length,
            cfg.seed,
            first_epoch,
            cfg.epochs,
        )
        model.fit(
            dataset,
            epochs=cfg.epochs,
            initial_epoch=first_epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            shuffle=False,
            verbose=verbose if verbose < 1 or sys.stdout.isatty() else 2,
        )
    return _finish(cfg, model, model_cfg, tokenizer, data, evaluator.state, log)


def _state_file(weights: str) -> str:
    """The dropout seed states saved beside an epoch's weights."""
    return weights.removesuffix(".weights.h5") + ".state.npz"


def _load_state(checkpoints: str) -> dict:
    path = os.path.join(checkpoints, "state.json")
    if not os.path.exists(path):
        return {"epoch": 0, "history": [], "best": None}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _row(epoch, split, values):
    row = {"epoch": epoch, "split": split}
    for key in CSV_COLUMNS[2:]:
        value = values.get(key)
        row[key] = "" if value is None else f"{float(value):.6g}"
    return row


def _write_csv(path, rows):
    import csv
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


class _EpochEnd(keras.callbacks.Callback):
    """Validation metrics, best epoch and the resume checkpoint, after
    each epoch. It puts val_* into the epoch's logs, so the TensorBoard
    callback after it records them too."""

    def __init__(self, cfg, data, encoded, checkpoints, state, n_train):
        super().__init__()
        self.cfg, self.data, self.encoded = cfg, data, encoded
        self.checkpoints, self.state, self.n_train = (
            checkpoints,
            state,
            n_train,
        )
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        fault_point("finetune_step")

    def on_epoch_end(self, epoch, logs=None):
        from kerasbert.training.metrics import classification_metrics

        seconds = time.perf_counter() - self._start
        logs = logs if logs is not None else {}
        if not math.isfinite(float(logs.get("loss", 0.0))):
            self.model.stop_training = True  # keep the last good epoch
            return
        probs = predict_proba(self.model, self.encoded, self.cfg.batch_size * 2)
        truth = self.data.validation_ids
        val = classification_metrics(truth, probs.argmax(-1), self.data.labels)
        val["loss"] = float(
            -np.mean(
                np.log(np.maximum(probs[np.arange(len(truth)), truth], 1e-12))
            )
        )
        for key in ("loss", "accuracy", "macro_f1", "mcc"):
            logs[f"val_{key}"] = val[key]
        lr = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        )
        number = epoch + 1
        history = self.state["history"]
        history.append(
            {
                "epoch": number,
                "train": {
                    "loss": float(logs["loss"]),
                    "accuracy": float(logs.get("accuracy", float("nan"))),
                    "examples_per_second": self.n_train / seconds,
                    "seconds": seconds,
                    "learning_rate": lr,
                },
                "validation": val,
            }
        )
        best = self.state["best"]
        score = val[self.cfg.metric]
        os.makedirs(self.checkpoints, exist_ok=True)
        latest = f"epoch-{number}.weights.h5"
        self._save(latest)
        if best is None or score > best["score"]:
            best = {"epoch": number, "score": score, "weights": latest}
        # state.json names the files; switching it is the commit point, so
        # a kill before it resumes from the previous epoch.
        self.state.update(epoch=number, latest=latest, best=best)
        write_json_atomic(
            os.path.join(self.checkpoints, "state.json"), self.state
        )
        fault_point("finetune_epoch")
        keep = {latest, best["weights"], "state.json"}
        keep |= {_state_file(name) for name in keep}
        for name in os.listdir(self.checkpoints):
            if name not in keep:
                os.remove(os.path.join(self.checkpoints, name))
        _write_csv(
            os.path.join(self.cfg.output_dir, "metrics.csv"), _csv_rows(history)
        )

    def _save(self, name):
        from kerasbert.training.callbacks import save_hidden_state

        path = os.path.join(self.checkpoints, name)
        with atomic_path(_state_file(path)) as tmp:
            save_hidden_state(self.model, tmp, metrics=False)
        with atomic_path(path) as tmp:
            self.model.save_weights(tmp)


def _csv_rows(history, test=None):
    rows = []
    for h in history:
        rows.append(_row(h["epoch"], "train", h["train"]))
        rows.append(_row(h["epoch"], "validation", h["validation"]))
    if test is not None:
        rows.append(_row(test["epoch"], "test", test))
    return rows


def _finish(cfg, trained, model_cfg, tokenizer, data, state, log):
    """Best epoch -> float32 model.keras, test metrics, metrics files."""
    from kerasbert.training.metrics import classification_metrics
    from kerasbert.training.plots import plot_confusion

    out = cfg.output_dir
    best = state["best"]
    if best is None:
        # Nothing learned is lost: without the folder the suggested rerun
        # is a new run, not one "with other settings".
        shutil.rmtree(out, ignore_errors=True)
        raise UsageError(
            "training stopped before a first epoch finished "
            "(non-finite loss); try a lower --learning-rate"
        )
    trained.load_weights(os.path.join(out, "checkpoints", best["weights"]))
    # Rebuilt in float32 whatever the training precision (the variables
    # are float32 either way), so the saved model computes the same on
    # every machine.
    model = build_classifier(
        model_cfg, len(data.labels), cfg.dropout, dtype="float32"
    )
    model.set_weights(trained.get_weights())
    with atomic_path(os.path.join(out, "model.keras")) as tmp:
        model.save(tmp)
    result = {
        "metric": cfg.metric,
        "best_epoch": best["epoch"],
        "labels": data.labels,
        "epochs": state["history"],
        "validation": state["history"][best["epoch"] - 1]["validation"],
    }
    shown, title = result["validation"], "validation"
    if data.test is not None:
        encoded = cls_data.encode(
            tokenizer, data.test, cfg.max_length, cfg.truncation
        )
        probs = predict_proba(model, encoded, cfg.batch_size * 2)
        test = classification_metrics(
            data.test_ids, probs.argmax(-1), data.labels
        )
        test["loss"] = float(
            -np.mean(
                np.log(
                    np.maximum(
                        probs[np.arange(len(data.test_ids)), data.test_ids],
                        1e-12,
                    )
                )
            )
        )
        test["epoch"] = best["epoch"]
        result["test"] = test
        shown, title = test, "test"
    plot_confusion(
        shown["confusion"],
        data.labels,
        os.path.join(out, "confusion.png"),
        f"{title}, epoch {best['epoch']}",
    )
    _write_csv(
        os.path.join(out, "metrics.csv"),
        _csv_rows(state["history"], result.get("test")),
    )
    write_json_atomic(os.path.join(out, "metrics.json"), result)
    shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)
    summary = {k: shown[k] for k in ("accuracy", "macro_f1", "mcc")}
    log(
        f"best epoch {best['epoch']} by {cfg.metric}; {title}: "
        + ", ".join(f"{k} {v:.4f}" for k, v in summary.items())
    )
    return result


_PREDICTORS = weakref.WeakKeyDictionary()


def _predictor(model):
    """One traced graph per model for every batch shape (a new
    tf.function per call would retrace each time)."""
    import tensorflow as tf

    if model not in _PREDICTORS:
        spec = tf.TensorSpec((None, None), tf.int32)
        _PREDICTORS[model] = tf.function(
            lambda x: tf.nn.softmax(
                tf.cast(model(x, training=False), tf.float32)
            ),
            input_signature=[
                {k: spec for k in ("token_ids", "segment_ids", "padding_mask")}
            ],
        )
    return _PREDICTORS[model]


def predict_proba(
    model,
    encoded,
    batch_size: int = 64,
    bucketing: bool = True,
    max_length: int | None = None,
) -> np.ndarray:
    """Class probabilities `[n, classes]` of packed examples, in order.

    With bucketing the examples run sorted by length, each batch padded
    to its longest; without it every batch is padded to `max_length`."""
    lengths = np.array([len(ids) for ids, _ in encoded])
    order = (
        np.argsort(lengths, kind="stable")
        if bucketing
        else np.arange(len(lengths))
    )
    call = _predictor(model)
    probs = np.zeros((len(encoded), model.num_classes), np.float32)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = cls_data.pad_batch(
            encoded, index, None if bucketing else max_length
        )
        probs[index] = call(batch).numpy()
    return probs


def load_classifier(directory: str):
    """(model, tokenizer, config dict) of a fine-tuned directory."""
    from kerasbert.config import read_json_object
    from kerasbert.serving.modeldir import (
        check_tokenizer_fits,
        load_model,
        load_tokenizer,
    )

    config = read_json_object(
        os.path.join(directory, "config.json"),
        f"--model: {directory}/config.json",
    )
    if "labels" not in config or "finetune" not in config:
        raise UsageError(
            f"--model: {directory}: not a fine-tuned "
            "classifier (config.json has no labels)"
        )
    tokenizer = load_tokenizer(directory)
    model = load_model(directory)
    if not hasattr(model, "num_classes"):
        raise UsageError(f"--model: {directory}: model.keras is no classifier")
    with _flag("--model"):
        check_tokenizer_fits(model, tokenizer, directory)
    return model, tokenizer, config
