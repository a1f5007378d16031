"""The fit CLI's flag and config-file handling (no training here)."""

import dataclasses
import json

import pytest

from kerasbert import fit
from kerasbert.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    validate_pretraining,
)
from kerasbert.errors import UsageError


def test_help_documents_every_field(capsys):
    with pytest.raises(SystemExit) as e:
        fit.build_parser().parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for cls in (ModelConfig, DataConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            assert f.metadata.get("help"), f"no help text for {f.name}"
            if f.metadata.get("flag", True):
                assert flag in text, flag
            else:  # set by the command: accepting it would mislead
                assert flag + " " not in text, flag
    for flag in ("--config", "--size", "--quiet"):
        assert flag in text


def test_no_flags_is_tiny_on_the_bundled_corpus():
    size, model, data, train, quiet = fit.resolve_configs([])
    assert size == "tiny"
    assert (
        model.num_layers,
        model.hidden_dim,
        model.num_heads,
        model.intermediate_dim,
    ) == (2, 128, 2, 512)
    assert data.corpus is None
    assert train == TrainConfig()
    assert not quiet


def test_config_file_then_flags_override(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {
                "size": "mini",
                "batch_size": 7,
                "learning_rate": 1e-3,
                "whole_word": True,
                "hidden_dropout": 0.0,
            }
        )
    )
    size, model, data, train, _ = fit.resolve_configs(
        ["--config", str(path), "--batch-size", "9", "--no-whole-word"]
    )
    assert size == "mini" and model.num_layers == 4
    assert model.hidden_dropout == 0.0
    assert train.batch_size == 9  # the flag wins
    assert train.learning_rate == 1e-3  # the file's value stays
    assert data.whole_word is False


def test_a_runs_nested_config_json_is_accepted(tmp_path):
    nested = {
        "model": dataclasses.asdict(ModelConfig.from_size("small")),
        "data": {"sequence_length": 64},
        "train": {"seed": 5},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(nested))
    _, model, data, train, _ = fit.resolve_configs(["--config", str(path)])
    assert model.hidden_dim == 512 and model.num_heads == 8
    assert data.sequence_length == 64 and train.seed == 5


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--size", "giant"], "--size"),
        (["--batch-size", "x"], "--batch-size"),
        (["--nonsense"], "--nonsense"),
        (["--config", "/no/such.json"], "--config"),
    ],
)
def test_bad_arguments_raise_one_line(argv, message):
    with pytest.raises(UsageError, match=message):
        fit.resolve_configs(argv)


def test_bad_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{oops")
    with pytest.raises(UsageError, match="not valid JSON"):
        fit.resolve_configs(["--config", str(path)])
    path.write_text(json.dumps({"batch_sise": 3}))
    with pytest.raises(UsageError, match="batch_sise"):
        fit.resolve_configs(["--config", str(path)])


@pytest.mark.parametrize(
    "change,flag",
    [
        (dict(train=dict(batch_size=0)), "--batch-size"),
        (dict(train=dict(learning_rate=-1.0)), "--learning-rate"),
        (dict(train=dict(precision="fp8")), "--precision"),
        (dict(train=dict(strategy="ring")), "--strategy"),
        (dict(train=dict(optimizer="sgd")), "--optimizer"),
        (dict(train=dict(mlm_bias_init="random")), "--mlm-bias-init"),
        (dict(model=dict(initializer_range=0.0)), "--initializer-range"),
        (dict(train=dict(adam_epsilon=0.0)), "--adam-epsilon"),
        (
            dict(train=dict(gradient_accumulation_steps=0)),
            "--gradient-accumulation-steps",
        ),
        (dict(data=dict(sequence_length=1024)), "--sequence-length"),
        (dict(data=dict(nsp_probability=2.0)), "--nsp-probability"),
        (dict(model=dict(hidden_dim=129)), "--hidden-dim"),
        (dict(data=dict(max_predictions=200)), "--max-predictions"),
        (dict(data=dict(mask_rate=1.5)), "--mask-rate"),
        (dict(data=dict(holdout_fraction=1.0)), "--holdout-fraction"),
        (dict(train=dict(batch_size=8.5)), "--batch-size"),
        (dict(train=dict(batch_size="eight")), "--batch-size"),
        (dict(train=dict(precision=None)), "--precision"),
    ],
)
def test_validate_names_the_flag(change, flag):
    model = dataclasses.replace(
        ModelConfig.from_size("tiny"), **change.get("model", {})
    )
    data = dataclasses.replace(DataConfig(), **change.get("data", {}))
    train = dataclasses.replace(TrainConfig(), **change.get("train", {}))
    with pytest.raises(UsageError, match=flag):
        validate_pretraining(model, data, train)


def test_mask_rate_zero_is_accepted_as_documented():
    _, _, data, _, _ = fit.resolve_configs(["--mask-rate", "0"])
    assert data.mask_rate == 0.0


def test_vocabulary_size_is_not_a_flag():
    # It comes from the tokenizer; a flag that is then ignored would mislead.
    with pytest.raises(UsageError, match="--vocabulary-size"):
        fit.resolve_configs(["--vocabulary-size", "100"])


def test_choices_come_from_the_config(capsys):
    with pytest.raises(UsageError, match="fp8"):
        fit.resolve_configs(["--precision", "fp8"])
