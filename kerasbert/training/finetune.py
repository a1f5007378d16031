"""Fine-tuning a `BertClassifier`: the classification task of the run
framework (trainer.py), and its data.

`finetune(cfg)` is what `python -m kerasbert.finetune` calls. It reads and
checks every input (data files, labels, source model, output folder)
before it creates the output directory, so bad input leaves nothing
behind. The directory is a run directory (rundir.py) and, once complete, a
model directory (`kerasbert.serving.modeldir`) of a classifier:

    config.json   {"model": ModelConfig, "finetune": FinetuneConfig,
                   "labels": [name of class 0, 1, ...], "pair": bool}
    tokenizer/    copied from --model, or trained (--from-scratch)
    model.keras   the best epoch's BertClassifier, float32
    metrics.json  per-epoch metrics, best epoch, epochs trained (fewer than
                  --epochs after an early stop, --patience), validation
                  and test metrics of the best epoch (written last)
    metrics.csv   a train and a validation row per epoch, a test row
    confusion.png; logs/ (TensorBoard)
    checkpoints/, backup/   resume state, removed once complete

Resume is the framework's: a backup every `--backup-every` steps (default:
each epoch's end) holds everything that decides the next step, so a run
killed anywhere and rerun with the same command ends with the metrics and
weights of an uninterrupted run (tests/test_resume.py). `--overwrite` of an
existing directory builds the new run beside it (rundir.open_run).
"""

import dataclasses
import json
import os
import shutil
import sys

import numpy as np

from kerasbert.config import FinetuneConfig, ModelConfig, parameter_count
from kerasbert.data import classification as cls_data
from kerasbert.errors import DiskFull, UsageError
from kerasbert.files import (
    check_free_space,
    check_output,
    check_writable_dir,
    fault_point,
    swap_in,
)
from kerasbert.serving.classifier import Predictor, flagged
from kerasbert.training.rundir import RunDir, open_run, run_lock


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

    with flagged("--model"):
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


def _configs(cfg, model_cfg, labels, pair):
    return {
        "model": model_cfg.to_dict(),
        "finetune": cfg.to_dict(),
        "labels": labels,
        "pair": pair,
    }


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
    # One process per output directory, as for pretraining runs.
    with run_lock(cfg.output_dir):
        try:
            return _finetune(cfg, model_overrides, verbose, log)
        except DiskFull as e:
            raise DiskFull(
                f"{e} (the same command resumes from the last backup)"
            ) from None


def _finetune(cfg, model_overrides, verbose, log):
    data = read_data(cfg)
    run = RunDir(cfg.output_dir, summary="metrics.json")
    from kerasbert.serving.modeldir import load_tokenizer

    if cfg.model:
        with flagged("--model"):
            tokenizer = load_tokenizer(cfg.model)
    elif os.path.isdir(run.tokenizer) and not cfg.overwrite:
        tokenizer = load_tokenizer(run.path)  # this run trained it already
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
    if (
        not cfg.overwrite
        and os.path.exists(os.path.join(run.checkpoints, "state.json"))
        and not os.path.exists(run.summary)
    ):
        raise UsageError(
            f"--output-dir: {run.path} holds an unfinished run of an older "
            "kerasbert (checkpoints/state.json), which this one cannot "
            "resume; pass --overwrite to start it afresh"
        )
    state, run, final = open_run(run, configs, cfg.overwrite, log)
    if state == "done":
        log(
            f"{run.path}: this run is complete (metrics.json); pass "
            "--overwrite to start again"
        )
        with open(run.summary, encoding="utf-8") as f:
            return json.load(f)
    # model.keras, two checkpoints and two backups with Adam's two slots:
    # a disk that fills inside h5py can crash the process, so check first.
    check_free_space(
        run.path,
        14 * 4 * parameter_count(**model_cfg.to_dict()),
        "--output-dir",
    )
    # Everything is checked: from here on the folder is written.
    run.prepare(configs, overwrite=False)
    if not os.path.isdir(run.tokenizer):
        staging = run.join(".tokenizer.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        if cfg.model:
            shutil.copytree(os.path.join(cfg.model, "tokenizer"), staging)
        else:
            tokenizer.save(staging)
        os.replace(staging, run.tokenizer)

    from kerasbert.training.trainer import Schedule, Trainer

    task = ClassificationTask(cfg, model_cfg, weights, tokenizer, data, log)
    steps = task.steps_per_epoch
    trainer = Trainer(
        task,
        Schedule(
            total_steps=steps * cfg.epochs,
            steps_per_epoch=steps,
            log_every=steps,  # a train row per epoch: its mean
            backup_every=cfg.backup_every or steps,
            patience=cfg.patience,
        ),
        run,
        precision=cfg,
        strategy=cfg.strategy,
        verbose=verbose if verbose < 1 or sys.stdout.isatty() else 2,
        log=log,
    )
    result = trainer.run(resume=state == "resume")
    if final is not None:
        swap_in(run.path, final.path)
    return result


def classification_metrics(predict, encoded, truth, labels, batch_size):
    """Accuracy, macro-F1, MCC, per-class and confusion (metrics.py) and
    the mean cross-entropy `loss` of `predict` (a Predictor)."""
    from kerasbert.training.metrics import classification_metrics as scores

    probs = predict(encoded, batch_size)
    result = scores(truth, probs.argmax(-1), labels)
    picked = probs[np.arange(len(truth)), truth]
    result["loss"] = float(-np.mean(np.log(np.maximum(picked, 1e-12))))
    return result


class ClassificationTask:
    """Text (or text-pair) classification, as trainer.py's task.

    Its part of the run directory: `metrics.json` (the summary),
    `confusion.png`; checkpoints/ and backup/ go once complete.
    """

    metric_names = ("loss", "accuracy", "macro_f1", "mcc")
    unit = "examples"
    validation_split = "validation"
    mode = "max"
    keep_training_state = False

    def __init__(self, cfg, model_cfg, weights, tokenizer, data, log=print):
        self.cfg = cfg
        self.model_cfg = model_cfg
        self.weights = weights  # the starting backbone's, or None
        self.tokenizer = tokenizer
        self.data = data
        self.log = log
        self.monitor = cfg.metric
        self.units_per_step = cfg.batch_size
        self.steps_per_epoch = cls_data.steps_per_epoch(
            len(data.train), cfg.batch_size
        )
        self.train_encoded, self.validation_encoded = (
            cls_data.encode(tokenizer, ex, cfg.max_length, cfg.truncation)
            for ex in (data.train, data.validation)
        )
        self.predict = None  # the trained model's Predictor
        self.jit = False  # XLA: batches in fixed shapes (build_model's)

    def build_model(self, jit):
        from kerasbert.training.build import compile_classifier

        cfg, data = self.cfg, self.data
        self.jit = jit
        self.log(
            f"{len(data.train)} training / {len(data.validation)} validation"
            f"{f' / {len(data.test)} test' if data.test else ''} examples; "
            f"labels: {', '.join(data.labels)}"
        )
        model = compile_classifier(
            self.model_cfg,
            len(data.labels),
            cfg,
            self.steps_per_epoch * cfg.epochs,
            jit,
            self.weights,
        )
        # Optimizer slots and the compiled metrics' sums exist only after
        # a first step; a resume loads into them, so make them now.
        model.optimizer.build(model.trainable_variables)
        x, y, w = next(iter(self.train_dataset(0).take(1)))
        model.compute_metrics(x, y, model(x, training=False), w)
        model.reset_metrics()
        self.predict = Predictor(model)
        return model

    def train_dataset(self, start_step, num_workers=1, worker_index=0):
        cfg = self.cfg
        first_epoch, skip = divmod(start_step, self.steps_per_epoch)
        return cls_data.training_dataset(
            self.train_encoded,
            self.data.train_ids,
            cfg.batch_size,
            cfg.bucketing,
            cfg.max_length,
            cfg.seed,
            first_epoch,
            cfg.epochs,
            skip=skip,
            fixed_shapes=self.jit,
        )

    def evaluate(self, model) -> dict:
        fault_point("evaluation")
        result = classification_metrics(
            self.predict,
            self.validation_encoded,
            self.data.validation_ids,
            self.data.labels,
            self.cfg.batch_size * 2,
        )
        return {k: result[k] for k in self.metric_names}

    def finish(self, model, finished) -> dict:
        """Best epoch -> float32 model.keras, its validation and test
        metrics, confusion.png; returns metrics.json's dict."""
        from kerasbert.serving.export import float32_copy
        from kerasbert.training.callbacks import (
            load_model_weights,
            save_model_atomic,
        )
        from kerasbert.training.plots import plot_confusion

        cfg, data, run = self.cfg, self.data, finished.run
        best_epoch = finished.best_step // self.steps_per_epoch
        load_model_weights(model, run.best)
        # Saved in float32 whatever the training precision (the variables
        # are float32 either way), so it computes the same on every machine.
        best = float32_copy(model)
        save_model_atomic(best, run.model)
        fault_point("export")
        predict = Predictor(best)
        epochs = self._epochs(finished.rows)
        result = {
            "metric": cfg.metric,
            "best_epoch": best_epoch,
            "labels": data.labels,
            # Fewer than --epochs when --patience stopped the run.
            "epochs_trained": len(epochs),
            "stopped_early": finished.stopped_at is not None,
            "epochs": epochs,
            # As the epoch-end evaluation that chose the epoch saw it (in
            # the training precision), now with the confusion matrix.
            "validation": classification_metrics(
                self.predict,
                self.validation_encoded,
                data.validation_ids,
                data.labels,
                cfg.batch_size * 2,
            ),
        }
        shown, title = result["validation"], "validation"
        if data.test is not None:
            encoded = cls_data.encode(
                self.tokenizer, data.test, cfg.max_length, cfg.truncation
            )
            test = classification_metrics(
                predict, encoded, data.test_ids, data.labels, cfg.batch_size * 2
            )
            finished.log_row(
                finished.best_step, "test", test, epoch=best_epoch - 1
            )
            result["test"] = {**test, "epoch": best_epoch}
            shown, title = test, "test"
        plot_confusion(
            shown["confusion"],
            data.labels,
            run.join("confusion.png"),
            f"{title}, epoch {best_epoch}",
        )
        self.log(
            f"best epoch {best_epoch} by {cfg.metric}; {title}: "
            + ", ".join(
                f"{k} {shown[k]:.4f}" for k in ("accuracy", "macro_f1", "mcc")
            )
        )
        return result

    def _epochs(self, rows):
        """metrics.json's per-epoch entries, from metrics.csv's rows (as
        written: what a resumed run reads too)."""
        validation = {
            r["step"]: r for r in rows if r["split"] == self.validation_split
        }
        epochs = []
        for row in rows:
            if row["split"] != "train":
                continue
            train = {
                k: float(row[k])
                for k in (
                    "loss",
                    "accuracy",
                    "learning_rate",
                    "examples_per_second",
                    "seconds",
                )
            }
            val = validation.get(row["step"], {})
            epochs.append(
                {
                    "epoch": int(row["epoch"]) + 1,
                    "train": train,
                    "validation": {
                        k: float(val[k]) for k in self.metric_names if k in val
                    },
                }
            )
        return epochs
