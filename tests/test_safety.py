"""Never destroy a user's files (issue 20), through the real commands.

1. The output rule (`files.check_output`): every writing command refuses
   an output that is, contains or lies inside an input (an alias too), and
   an existing output without --overwrite; a replacement is built beside
   the old output and swapped in only when complete.
2. Untrusted model directories: absurd sizes and NaN weights are refused
   before anything is built, naming the limit or the tensor.
3. The last tracebacks: one `error:` line and exit code 2 each.

Models are tiny (16 wide, one layer); the commands run in-process under
`run_cli`, as `python -m` runs them.
"""

import errno
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kerasbert import (
    convert,
    export,
    fill_mask,
    finetune,
    fit,
    predict,
    prepare,
)
from kerasbert.errors import UsageError

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TRAIN = os.path.join(FIXTURES, "finetune", "source_train.tsv")
TEXT = os.path.join(FIXTURES, "wikitext_sample.raw")
TINY = dict(
    hidden_dim=16,
    num_layers=1,
    num_heads=2,
    intermediate_dim=32,
    max_sequence_length=64,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)
FIT = [
    "--sequence-length",
    "32",
    "--max-predictions",
    "5",
    "--batch-size",
    "8",
    "--eval-batches",
    "1",
]
FINETUNE = [
    "--max-examples",
    "48",
    "--epochs",
    "1",
    "--max-length",
    "32",
    "--batch-size",
    "16",
    "--precision",
    "float32",
    "--quiet",
]


def one_error(code, err, *needles, logs=False, exit_code=2):
    """Exit code 2 (1: a run that failed, such as a diverged one) and one
    `error:` line; with `logs` (training commands) progress lines may come
    before it."""
    assert code == exit_code, err
    lines = err.strip().splitlines()
    if logs:
        assert "Traceback" not in err, err
        lines = [line for line in lines if line.startswith("error")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def left(folder):
    """What is in `folder`, the token cache aside."""
    return sorted(set(os.listdir(folder)) - {"cache"})


def snapshot(path):
    """{relative path: sha256} of every file under `path` (or of `path`)."""
    path = str(path)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return {".": hashlib.sha256(f.read()).hexdigest()}
    files = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                files[os.path.relpath(full, path)] = hashlib.sha256(
                    f.read()
                ).hexdigest()
    return files


def tokenizer():
    from kerasbert.text.tokenizer import train_wordpiece

    with open(TRAIN, encoding="utf-8") as f:
        texts = [line.split("\t")[0] for line in f][1:]
    return train_wordpiece(texts, 200, progress=False)


def write_model_dir(path, model, tok, extra=None):
    """What `fit` or `convert` leave: config.json, tokenizer/, model.keras."""
    from kerasbert.serving.modeldir import backbone_of

    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer"))
    model.save(os.path.join(path, "model.keras"))
    config = {
        k: v
        for k, v in backbone_of(model).get_config().items()
        if k in ("vocabulary_size", *TINY)
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model": config, **(extra or {})}, f)
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny pretraining model directory (MLM + NSP heads)."""
    from kerasbert.modeling import build_pretrainer

    tok = tokenizer()
    model = build_pretrainer(vocabulary_size=tok.vocabulary_size, **TINY)
    return write_model_dir(tmp_path_factory.mktemp("m") / "model", model, tok)


def classifier(tok, vocabulary_size=None):
    from kerasbert.modeling import BertBackbone, BertClassifier

    backbone = BertBackbone(
        vocabulary_size=vocabulary_size or tok.vocabulary_size, **TINY
    )
    return BertClassifier(backbone, 2)


CLASSIFIER_CONFIG = {
    "labels": ["tweet", "wiki"],
    "pair": False,
    "finetune": {"max_length": 32, "truncation": "head"},
}


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A tiny fine-tuned classifier directory."""
    tok = tokenizer()
    return write_model_dir(
        tmp_path_factory.mktemp("c") / "clf",
        classifier(tok),
        tok,
        CLASSIFIER_CONFIG,
    )


def copy_tree(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


# --- 1. The output rule -----------------------------------------------------


def layout(kind, src, tmp_path):
    """The output path of each layout, for input `src`."""
    if kind == "same":
        return src
    if kind == "contains":
        return os.path.dirname(src)
    if kind == "inside":
        return os.path.join(src, "out")
    if kind == "alias":
        alias = tmp_path / "alias"
        alias.symlink_to(src)
        return str(alias)
    assert kind == "existing"
    os.makedirs(tmp_path / "existing")
    (tmp_path / "existing" / "keep.txt").write_text("mine")
    return str(tmp_path / "existing")


def command(name, model, out):
    """(main, argv, the input that `out` is laid out against) of a command
    writing `out` from model directory `model`."""
    if name == "finetune":
        return (
            finetune.main,
            [
                "--model",
                model,
                "--train",
                TRAIN,
                "--output-dir",
                out,
                *FINETUNE,
            ],
            model,
        )
    if name == "fit":
        return (
            fit.main,
            [
                "--init-from",
                model,
                "--output-dir",
                out,
                "--corpus",
                TEXT,
                "--max-steps",
                "1",
                *FIT,
                "--quiet",
            ],
            model,
        )
    if name == "convert":
        return convert.main, [model, out], model
    if name == "export":
        return export.main, [model, "--output", out], model
    assert name == "prepare"
    tok = os.path.join(model, "tokenizer")
    return (
        prepare.main,
        [
            "--tokenizer",
            tok,
            "--corpus",
            TEXT,
            "--no-progress",
            "--tokenizer-out",
            out,
        ],
        tok,
    )


EXPECTED = {
    "same": "is the input",
    "contains": "contains the input",
    "inside": "lies inside the input",
    "alias": "(resolved)",
    "existing": "--overwrite",
}


@pytest.mark.parametrize("kind", list(EXPECTED))
@pytest.mark.parametrize(
    "name", ["finetune", "fit", "convert", "export", "prepare"]
)
def test_every_writing_command_refuses_every_layout(
    cli, model_dir, tmp_path, name, kind
):
    model = copy_tree(model_dir, tmp_path / "inputs" / "model")
    (tmp_path / "inputs" / "sibling.txt").write_text("a neighbour")
    before = snapshot(tmp_path / "inputs")
    src = command(name, model, "")[2]
    out = layout(kind, src, tmp_path)
    main, argv, _ = command(name, model, out)
    code, _, err = cli(
        main, [*argv, *([] if kind == "existing" else ["--overwrite"])]
    )
    one_error(code, err, EXPECTED[kind])
    assert snapshot(tmp_path / "inputs") == before
    if kind == "existing":
        assert snapshot(out) == {
            "keep.txt": snapshot(tmp_path / "existing" / "keep.txt")["."]
        }
    assert sorted(set(os.listdir(tmp_path)) - {"cache"}) == sorted(
        {"inputs", "alias", "existing"} & set(os.listdir(tmp_path))
    )


def test_export_of_a_keras_file_onto_itself(cli, model_dir, tmp_path):
    src = copy_tree(model_dir, tmp_path / "model")
    before = snapshot(src)
    path = os.path.join(src, "model.keras")
    code, _, err = cli(
        export.main,
        [path, "--format", "keras", "--output", path, "--overwrite"],
    )
    one_error(code, err, "is the input RUN_DIR")
    assert snapshot(src) == before


def test_finetune_onto_its_own_model_keeps_the_model(cli, model_dir, tmp_path):
    src = copy_tree(model_dir, tmp_path / "model")
    before = snapshot(src)
    code, _, err = cli(
        finetune.main,
        [
            "--model",
            src,
            "--train",
            TRAIN,
            "--output-dir",
            src,
            "--overwrite",
            *FINETUNE,
        ],
    )
    one_error(code, err, f"--output-dir: {src} is the input --model")
    assert snapshot(src) == before


def test_fit_init_from_onto_itself_keeps_the_model(cli, model_dir, tmp_path):
    src = copy_tree(model_dir, tmp_path / "model")
    before = snapshot(src)
    code, _, err = cli(
        fit.main,
        [
            "--init-from",
            src,
            "--output-dir",
            src,
            "--overwrite",
            "--max-steps",
            "1",
            *FIT,
        ],
    )
    one_error(code, err, f"--output-dir: {src} is the input --init-from")
    assert snapshot(src) == before


def test_export_onto_its_own_run_dir_keeps_it(cli, classifier_dir, tmp_path):
    src = copy_tree(classifier_dir, tmp_path / "clf")
    before = snapshot(src)
    for extra in ([], ["--overwrite"]):
        code, _, err = cli(export.main, [src, "--output", src, *extra])
        one_error(code, err, f"--output: {src} is the input RUN_DIR")
    assert snapshot(src) == before


def test_export_replaces_only_with_overwrite(cli, model_dir, tmp_path):
    folder, keras_file = tmp_path / "saved", tmp_path / "m.keras"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    keras_file.write_text("mine")
    code, _, err = cli(export.main, [model_dir, "--output", folder])
    one_error(code, err, "exists (pass --overwrite")
    code, _, err = cli(
        export.main, [model_dir, "--format", "keras", "--output", keras_file]
    )
    one_error(code, err, "exists (pass --overwrite")
    assert (folder / "keep.txt").read_text() == "mine"
    assert keras_file.read_text() == "mine"
    code, _, err = cli(
        export.main,
        [model_dir, "--format", "keras", "--output", keras_file, "--overwrite"],
    )
    assert code == 0, err
    from kerasbert.serving.modeldir import load_model

    assert hasattr(load_model(str(keras_file)), "mlm_head")


def test_convert_into_the_parent_of_its_source_keeps_both(
    cli, model_dir, tmp_path
):
    parent = tmp_path / "models"
    src = copy_tree(model_dir, parent / "model")
    (parent / "other").mkdir()
    (parent / "other" / "weights.bin").write_bytes(b"\x00" * 100)
    before = snapshot(parent)
    code, _, err = cli(convert.main, [src, parent, "--overwrite"])
    one_error(code, err, "contains the input SRC")
    assert snapshot(parent) == before


def test_convert_onto_a_symlink_of_its_source(cli, model_dir, tmp_path):
    src = copy_tree(model_dir, tmp_path / "model")
    (tmp_path / "alias").symlink_to(src)
    before = snapshot(src)
    code, _, err = cli(convert.main, [src, tmp_path / "alias", "--overwrite"])
    one_error(code, err, "is the input SRC", "(resolved)")
    assert snapshot(src) == before


def test_failed_replacement_leaves_the_old_output(
    cli, model_dir, tmp_path, monkeypatch
):
    """A disk that fills during `convert --overwrite`: one line naming the
    output, the old folder as it was, no temp folder left."""
    import kerasbert.interop.hf as hf

    dst = tmp_path / "hf"
    assert cli(convert.main, [model_dir, dst])[0] == 0
    before = snapshot(dst)
    real = hf.write_hf_folder

    def full_disk(model, tok, out):
        real(model, tok, out)  # half of it written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hf, "write_hf_folder", full_disk)
    code, _, err = cli(convert.main, [model_dir, dst, "--overwrite"])
    one_error(code, err, f"{dst}: no space left on device", "MB free")
    assert snapshot(dst) == before
    assert left(tmp_path) == ["hf"]


def test_disk_full_in_export_keras(cli, model_dir, tmp_path, monkeypatch):
    import keras

    out = tmp_path / "m.keras"
    out.write_text("old")

    def full_disk(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", full_disk)
    code, _, err = cli(
        export.main,
        [model_dir, "--format", "keras", "--output", out, "--overwrite"],
    )
    one_error(code, err, f"{out}: no space left on device")
    assert out.read_text() == "old"
    assert left(tmp_path) == ["m.keras"]


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_later_run_removes_what_a_killed_one_left(cli, model_dir, tmp_path):
    pid = dead_pid()
    stale = tmp_path / f".hf.tmp{pid}"
    (stale / "half").mkdir(parents=True)
    (tmp_path / f".m.tmp{pid}.keras").write_text("half")
    assert cli(convert.main, [model_dir, tmp_path / "hf"])[0] == 0
    assert (
        cli(
            export.main,
            [model_dir, "--format", "keras", "--output", tmp_path / "m.keras"],
        )[0]
        == 0
    )
    assert left(tmp_path) == ["hf", "m.keras"]


def test_a_kill_inside_the_swap_keeps_the_old_folder(tmp_path):
    """Killed between moving the old folder aside and the new one in: the
    next writer of that path puts the old one back first."""
    from kerasbert.files import atomic_dir

    pid = dead_pid()
    aside = tmp_path / f".out.old{pid}"
    aside.mkdir()
    (aside / "weights").write_text("old")
    (tmp_path / f".out.tmp{pid}").mkdir()  # the new one, never swapped in
    with pytest.raises(RuntimeError):
        with atomic_dir(str(tmp_path / "out")):
            raise RuntimeError("this write fails too")
    assert os.listdir(tmp_path) == ["out"]
    assert (tmp_path / "out" / "weights").read_text() == "old"


def finetuned(cli, model_dir, out, *extra):
    """(exit code, what finetune printed: progress, then any error)."""
    code, stdout, err = cli(
        finetune.main,
        [
            "--model",
            model_dir,
            "--train",
            TRAIN,
            "--output-dir",
            out,
            *FINETUNE,
            *extra,
        ],
    )
    return code, stdout + err


def test_divergence_then_the_suggested_rerun_then_a_failed_overwrite(
    cli, model_dir, tmp_path
):
    """A first run that diverges leaves no folder, so the rerun it
    suggests is a new run; an --overwrite run that diverges leaves the
    old run as it was."""
    out = tmp_path / "ft"
    code, err = finetuned(cli, model_dir, out, "--learning-rate", "1e30")
    one_error(
        code,
        err,
        "non-finite loss",
        "try a lower --learning-rate",
        logs=True,
        exit_code=1,
    )
    assert left(tmp_path) == []
    code, err = finetuned(cli, model_dir, out, "--learning-rate", "1e-3")
    assert code == 0, err
    before = snapshot(out)
    code, err = finetuned(
        cli, model_dir, out, "--overwrite", "--learning-rate", "1e30"
    )
    one_error(code, err, "non-finite loss", logs=True, exit_code=1)
    assert snapshot(out) == before
    assert left(tmp_path) == ["ft"]


def test_disk_full_in_finetune_says_the_rerun_resumes(
    cli, model_dir, tmp_path, monkeypatch
):
    import keras

    def full_disk(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    code, err = finetuned(cli, model_dir, tmp_path / "ft")
    one_error(
        code,
        err,
        "backup/step-3: no space left on device",
        "the same command resumes",
        logs=True,
    )


# --- 2. Untrusted model directories -----------------------------------------


def hf_folder(path, config, tensors=None):
    """A Hugging Face BERT folder: config.json, vocab.txt, safetensors."""
    from safetensors.numpy import save_file

    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "bert", **config}, f)
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write(
            "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])
            + "\n"
        )
    save_file(
        tensors or {"x": np.zeros(1, "float32")},
        os.path.join(path, "model.safetensors"),
    )
    return str(path)


HF_TINY = dict(
    vocab_size=7,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=64,
)


@pytest.mark.parametrize(
    "sizes,needles",
    [
        (dict(hidden_size=10**8), ["hidden_dim 100000000 is not in 1..16,384"]),
        (dict(num_hidden_layers=10**6), ["num_layers 1000000", "limit"]),
        (
            dict(
                num_hidden_layers=256,
                hidden_size=16384,
                num_attention_heads=16,
                intermediate_size=65536,
            ),
            ["parameters needs about", "GB of memory"],
        ),
    ],
)
def test_convert_refuses_absurd_sizes_before_building(
    cli, tmp_path, sizes, needles
):
    src = hf_folder(tmp_path / "hf", {**HF_TINY, **sizes})
    code, _, err = cli(convert.main, [src, tmp_path / "out"])
    one_error(code, err, "config.json", *needles)
    assert left(tmp_path) == ["hf"]


def test_parameter_count_is_the_models(model_dir):
    from kerasbert.config import parameter_count
    from kerasbert.serving.modeldir import load_model, read_model_config

    config = read_model_config(model_dir).to_dict()
    assert parameter_count(**config) == load_model(model_dir).count_params()


def test_fit_init_from_an_oversized_config_leaves_nothing(
    cli, model_dir, tmp_path
):
    src = copy_tree(model_dir, tmp_path / "model")
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    config["model"].update(hidden_dim=1_000_000, num_heads=2)
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump(config, f)
    code, _, err = cli(
        fit.main, ["--init-from", src, "--output-dir", tmp_path / "run", *FIT]
    )
    one_error(code, err, "hidden_dim 1000000 is not in")
    assert left(tmp_path) == ["model"]


def test_a_keras_file_declaring_absurd_sizes_is_not_built(tmp_path):
    import zipfile

    from kerasbert.serving.modeldir import load_keras_model

    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "config.json",
            json.dumps(
                {
                    "class_name": "BertPretrainer",
                    "config": {
                        "backbone": {
                            "class_name": "BertBackbone",
                            "config": {
                                "vocabulary_size": 10**9,
                                "hidden_dim": 16,
                            },
                        }
                    },
                }
            ),
        )
    with pytest.raises(UsageError, match="vocabulary_size 1000000000"):
        load_keras_model(str(path))


def test_convert_refuses_a_nan_tensor_naming_it(cli, tmp_path):
    table = np.zeros((7, 16), "float32")
    table[3, 5] = np.nan
    src = hf_folder(
        tmp_path / "hf",
        HF_TINY,
        {"bert.embeddings.word_embeddings.weight": table},
    )
    code, _, err = cli(convert.main, [src, tmp_path / "out"])
    one_error(
        code, err, "tensor bert.embeddings.word_embeddings.weight holds NaN"
    )
    assert left(tmp_path) == ["hf"]


@pytest.fixture(scope="module")
def nan_dir(model_dir, tmp_path_factory):
    """The tiny model directory with one NaN in an encoder kernel."""
    from kerasbert.serving.modeldir import load_model, load_tokenizer

    model = load_model(model_dir)
    kernel = model.backbone.blocks[0].qkv_kernel
    value = np.array(kernel.numpy())
    value[0, 0] = np.nan
    kernel.assign(value)
    return write_model_dir(
        tmp_path_factory.mktemp("nan") / "model",
        model,
        load_tokenizer(model_dir),
    )


@pytest.mark.parametrize("name", ["fill_mask", "finetune", "fit", "convert"])
def test_nan_weights_are_refused_on_load(cli, nan_dir, tmp_path, name):
    argv = {
        "fill_mask": (
            fill_mask.main,
            ["--model", nan_dir, "a [MASK] b", "--json"],
        ),
        "finetune": (
            finetune.main,
            [
                "--model",
                nan_dir,
                "--train",
                TRAIN,
                "--output-dir",
                tmp_path / "out",
                *FINETUNE,
            ],
        ),
        "fit": (
            fit.main,
            ["--init-from", nan_dir, "--output-dir", tmp_path / "out", *FIT],
        ),
        "convert": (convert.main, [nan_dir, tmp_path / "out"]),
    }[name]
    code, out, err = cli(*argv)
    one_error(code, err, "qkv_kernel holds NaN or infinite values")
    assert "NaN" not in out
    assert left(tmp_path) == []


# --- 3. The last tracebacks --------------------------------------------------


def test_non_utf8_command_line_text(cli, model_dir, classifier_dir):
    bad = b"caf\xe9 [MASK]".decode("utf-8", "surrogateescape")
    code, _, err = cli(fill_mask.main, ["--model", model_dir, bad])
    one_error(code, err, "text: not valid UTF-8", "caf\\xe9")
    code, _, err = cli(predict.main, ["--model", classifier_dir, "fine", bad])
    one_error(code, err, "text 2: not valid UTF-8")


def test_predict_with_an_empty_file(cli, classifier_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    code, _, err = cli(
        predict.main,
        ["--model", classifier_dir, "--file", tmp_path / "empty.txt"],
    )
    one_error(code, err, "empty.txt: no text in it")


def test_tokenizer_with_more_ids_than_the_model(cli, tmp_path):
    tok = tokenizer()
    src = write_model_dir(
        tmp_path / "clf", classifier(tok, 50), tok, CLASSIFIER_CONFIG
    )
    message = (
        f"the tokenizer has {tok.vocabulary_size} token ids but the "
        "model only 50"
    )
    code, _, err = cli(predict.main, ["--model", src, "some text"])
    one_error(code, err, message)
    code, _, err = cli(export.main, [src, "--output", tmp_path / "out"])
    one_error(code, err, message)
    assert left(tmp_path) == ["clf"]


def test_truncated_google_shard(cli, tmp_path):
    import tensorflow as tf

    src = tmp_path / "google"
    src.mkdir()
    config = {k: v for k, v in HF_TINY.items()}
    (src / "bert_config.json").write_text(json.dumps(config))
    (src / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb")
    table = np.ones((7, 16), np.float32)
    tf.raw_ops.SaveV2(
        prefix=str(src / "bert_model.ckpt"),
        tensor_names=["bert/embeddings/word_embeddings"],
        shape_and_slices=[""],
        tensors=[table],
    )
    data = src / "bert_model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
    code, _, err = cli(convert.main, [src, tmp_path / "out"])
    one_error(code, err, "cannot read bert/embeddings/word_embeddings")
    assert left(tmp_path) == ["google"]


def test_too_little_space_is_said_before_training(
    cli, model_dir, tmp_path, monkeypatch
):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000)
    )
    code, err = finetuned(cli, model_dir, tmp_path / "ft")
    one_error(code, err, "--output-dir", "MB needed, 0 MB free", logs=True)
    assert left(tmp_path) == []


def test_prepare_writes_tokenizer_out_for_a_given_tokenizer(
    cli, model_dir, tmp_path
):
    out = tmp_path / "tok"
    code, stdout, err = cli(
        prepare.main,
        [
            "--tokenizer",
            os.path.join(model_dir, "tokenizer"),
            "--corpus",
            TEXT,
            "--no-progress",
            "--tokenizer-out",
            out,
        ],
    )
    assert code == 0, err
    assert f"tokenizer: {out}" in stdout
    assert (out / "vocab.txt").read_text() == open(
        os.path.join(model_dir, "tokenizer", "vocab.txt")
    ).read()


def test_fit_init_from_refuses_vocab_size(cli, model_dir, tmp_path):
    code, _, err = cli(
        fit.main,
        [
            "--init-from",
            model_dir,
            "--vocab-size",
            "500",
            "--output-dir",
            tmp_path / "run",
        ],
    )
    one_error(code, err, "--vocab-size: not with --init-from")
    assert left(tmp_path) == []


def test_convert_of_a_classifier_says_what_it_drops(
    cli, classifier_dir, tmp_path
):
    code, _, err = cli(convert.main, [classifier_dir, tmp_path / "hf"])
    assert code == 0, err
    note = err.strip().splitlines()[0]
    assert note.startswith("note: ") and "BertClassifier" in note, err
    assert "its head and its labels (tweet, wiki) are not" in note


def test_no_absl_start_up_lines(model_dir):
    """absl's start-up lines (printed by TensorFlow's import whatever
    TF_CPP_MIN_LOG_LEVEL says) are filtered out. Not covered: what oneDNN
    logs later, when an op first runs, on some CPUs."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kerasbert.fill_mask",
            "--model",
            model_dir,
            "a [MASK] b",
            "--top-k",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert out.returncode == 0, out.stderr
    for noise in (
        "absl::InitializeLog",
        "port.cc",
        "cudart_stub.cc",
        "cpu_feature_guard.cc",
        "cuda_platform.cc",
    ):
        assert noise not in out.stderr, out.stderr
    assert len(json.loads(out.stdout)) == 2


# --- 4. Data readers ---------------------------------------------------------


def read(path, **kwargs):
    from kerasbert.data.classification import read_examples

    return read_examples(str(path), flag="--train", **kwargs)


def test_byte_order_marks_are_dropped(tmp_path):
    bom = "\ufeff"
    (tmp_path / "a.txt").write_text(f"{bom}text;label\ni am happy;joy\n")
    (tmp_path / "b.tsv").write_text(f"{bom}text\tlabel\nhello\tpos\n")
    (tmp_path / "c.jsonl").write_text(
        f'{bom}{{"text": "hi", "label": "pos"}}\n'
    )
    assert read(tmp_path / "a.txt").texts == ["i am happy"]
    assert read(tmp_path / "b.tsv").labels == ["pos"]
    assert read(tmp_path / "c.jsonl").texts == ["hi"]


def test_a_list_label_is_refused(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "hi", "label": ["pos"]}\n')
    with pytest.raises(
        UsageError,
        match=r"d.jsonl:1: label \['pos'\] is "
        "not a class name",
    ):
        read(tmp_path / "d.jsonl")


def test_class_folders(tmp_path):
    for label in ("neg", "pos", ".ipynb_checkpoints"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "1.txt").write_text(f"a {label} text")
    assert sorted(set(read(tmp_path).labels)) == ["neg", "pos"]
    (tmp_path / "neutral").mkdir()
    with pytest.raises(
        UsageError,
        match="neutral: no .txt files, so class "
        "'neutral' would have no examples",
    ):
        read(tmp_path)


def test_a_nan_label_is_named(tmp_path):
    from kerasbert.data.classification import label_names

    (tmp_path / "e.tsv").write_text("text\tlabel\na\t0\nb\t1\nc\tNaN\n")
    ex = read(tmp_path / "e.tsv")
    with pytest.raises(
        UsageError,
        match=r"real numbers \('NaN' at "
        r".*e.tsv:4\)",
    ):
        label_names(ex.labels, "--train", ex.where)


def test_a_killed_overwrite_resumes_then_replaces(
    cli, model_dir, tmp_path, monkeypatch
):
    """`finetune --overwrite` stopped after its epoch (as by a kill): the
    old run is whole; the same command resumes the replacement beside it,
    then swaps it in."""
    import kerasbert.training.finetune as ft

    out = tmp_path / "ft"
    assert finetuned(cli, model_dir, out)[0] == 0
    before = snapshot(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ft.ClassificationTask, "finish", killed)
    again = ["--overwrite", "--learning-rate", "2e-3"]
    code, err = finetuned(cli, model_dir, out, *again)
    assert code == 130, err
    assert snapshot(out) == before
    assert left(tmp_path) == [".ft.replacing", "ft"]
    monkeypatch.undo()
    code, err = finetuned(cli, model_dir, out, *again)
    assert code == 0, err
    assert "resuming from step 3" in err
    assert left(tmp_path) == ["ft"]
    with open(out / "config.json") as f:
        config = json.load(f)
    assert config["finetune"]["learning_rate"] == 2e-3
    assert config["finetune"]["output_dir"] == str(out)


def test_fit_overwrite_is_built_beside_the_old_run(cli, tmp_path, monkeypatch):
    from kerasbert.training.trainer import Trainer

    run = tmp_path / "run"
    argv = [
        "--corpus",
        TEXT,
        "--vocab-size",
        "300",
        "--max-steps",
        "1",
        "--output-dir",
        run,
        "--quiet",
        *FIT,
    ]
    code, _, err = cli(fit.main, argv)
    assert code == 0, err
    before = snapshot(run)

    def killed(self, resume=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run", killed)
    code, _, err = cli(fit.main, [*argv, "--overwrite", "--seed", "7"])
    assert code == 130, err
    assert snapshot(run) == before
    assert left(tmp_path) == [".run.replacing", "run"]
    monkeypatch.undo()
    code, _, err = cli(fit.main, [*argv, "--overwrite", "--seed", "7"])
    assert code == 0, err
    assert left(tmp_path) == ["run"]
    with open(run / "config.json") as f:
        config = json.load(f)
    assert config["train"]["seed"] == 7
    assert config["train"]["output_dir"] == str(run)
