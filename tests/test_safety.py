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

import pytest

from kerasbert import (
    convert,
    export,
    finetune,
    fit,
    prepare,
)
from kerasbert.errors import run_cli

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TRAIN = os.path.join(FIXTURES, "finetune", "source_train.tsv")
TEXT = os.path.join(FIXTURES, "wikitext_sample.raw")
TINY = dict(hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
            max_sequence_length=64, hidden_dropout=0.0,
            attention_dropout=0.0)
FIT = ["--sequence-length", "32", "--max-predictions", "5", "--batch-size",
       "8", "--eval-batches", "1"]
FINETUNE = ["--max-examples", "48", "--epochs", "1", "--max-length", "32",
            "--batch-size", "16", "--precision", "float32", "--quiet"]


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Runs a command's main under run_cli; returns (code, stdout, stderr)."""
    monkeypatch.setenv("KERASBERT_CACHE", str(tmp_path / "cache"))

    def run(main, argv):
        try:
            code = run_cli(main, [str(a) for a in argv]) or 0
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def one_error(code, err, *needles, logs=False):
    """Exit code 2 and one `error:` line; with `logs` (training commands)
    progress lines may come before it."""
    assert code == 2, err
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
                    f.read()).hexdigest()
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
    config = {k: v for k, v in backbone_of(model).get_config().items()
              if k in ("vocabulary_size", *TINY)}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model": config, **(extra or {})}, f)
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny pretraining model directory (MLM + NSP heads)."""
    from kerasbert.modeling import build_pretrainer

    tok = tokenizer()
    model = build_pretrainer(vocabulary_size=tok.vocabulary_size, **TINY)
    return write_model_dir(tmp_path_factory.mktemp("m") / "model", model,
                           tok)


def classifier(tok, vocabulary_size=None):
    from kerasbert.modeling import BertBackbone, BertClassifier

    backbone = BertBackbone(
        vocabulary_size=vocabulary_size or tok.vocabulary_size, **TINY)
    return BertClassifier(backbone, 2)


CLASSIFIER_CONFIG = {"labels": ["tweet", "wiki"], "pair": False,
                     "finetune": {"max_length": 32, "truncation": "head"}}


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A tiny fine-tuned classifier directory."""
    tok = tokenizer()
    return write_model_dir(tmp_path_factory.mktemp("c") / "clf",
                           classifier(tok), tok, CLASSIFIER_CONFIG)


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
        return finetune.main, ["--model", model, "--train", TRAIN,
                               "--output-dir", out, *FINETUNE], model
    if name == "fit":
        return fit.main, ["--init-from", model, "--output-dir", out,
                          "--corpus", TEXT, "--max-steps", "1", *FIT,
                          "--quiet"], model
    if name == "convert":
        return convert.main, [model, out], model
    if name == "export":
        return export.main, [model, "--output", out], model
    assert name == "prepare"
    tok = os.path.join(model, "tokenizer")
    return prepare.main, ["--tokenizer", tok, "--corpus", TEXT,
                          "--no-progress", "--tokenizer-out", out], tok


EXPECTED = {"same": "is the input", "contains": "contains the input",
            "inside": "lies inside the input", "alias": "(resolved)",
            "existing": "--overwrite"}


@pytest.mark.parametrize("kind", list(EXPECTED))
@pytest.mark.parametrize("name", ["finetune", "fit", "convert", "export",
                                  "prepare"])
def test_every_writing_command_refuses_every_layout(cli, model_dir,
                                                    tmp_path, name, kind):
    model = copy_tree(model_dir, tmp_path / "inputs" / "model")
    (tmp_path / "inputs" / "sibling.txt").write_text("a neighbour")
    before = snapshot(tmp_path / "inputs")
    src = command(name, model, "")[2]
    out = layout(kind, src, tmp_path)
    main, argv, _ = command(name, model, out)
    code, _, err = cli(main, [*argv, *([] if kind == "existing" else
                                       ["--overwrite"])])
    one_error(code, err, EXPECTED[kind])
    assert snapshot(tmp_path / "inputs") == before
    if kind == "existing":
        assert snapshot(out) == {"keep.txt": snapshot(
            tmp_path / "existing" / "keep.txt")["."]}
    assert sorted(set(os.listdir(tmp_path)) - {"cache"}) == sorted(
        {"inputs", "alias", "existing"} & set(os.listdir(tmp_path)))


def test_export_of_a_keras_file_onto_itself(cli, model_dir, tmp_path):
    src = copy_tree(model_dir, tmp_path / "model")
    before = snapshot(src)
    path = os.path.join(src, "model.keras")
    code, _, err = cli(export.main, [path, "--format", "keras", "--output",
                                     path, "--overwrite"])
    one_error(code, err, "is the input RUN_DIR")
    assert snapshot(src) == before


def test_finetune_onto_its_own_model_keeps_the_model(cli, model_dir,
                                                     tmp_path):
    src = copy_tree(model_dir, tmp_path / "model")
    before = snapshot(src)
    code, _, err = cli(finetune.main, ["--model", src, "--train", TRAIN,
                                       "--output-dir", src, "--overwrite",
                                       *FINETUNE])
    one_error(code, err, f"--output-dir: {src} is the input --model")
    assert snapshot(src) == before


def test_fit_init_from_onto_itself_keeps_the_model(cli, model_dir, tmp_path):
    src = copy_tree(model_dir, tmp_path / "model")
    before = snapshot(src)
    code, _, err = cli(fit.main, ["--init-from", src, "--output-dir", src,
                                  "--overwrite", "--max-steps", "1", *FIT])
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
    code, _, err = cli(export.main, [model_dir, "--format", "keras",
                                     "--output", keras_file])
    one_error(code, err, "exists (pass --overwrite")
    assert (folder / "keep.txt").read_text() == "mine"
    assert keras_file.read_text() == "mine"
    code, _, err = cli(export.main, [model_dir, "--format", "keras",
                                     "--output", keras_file, "--overwrite"])
    assert code == 0, err
    from kerasbert.serving.modeldir import load_model

    assert hasattr(load_model(str(keras_file)), "mlm_head")


def test_convert_into_the_parent_of_its_source_keeps_both(cli, model_dir,
                                                          tmp_path):
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
    code, _, err = cli(convert.main, [src, tmp_path / "alias",
                                      "--overwrite"])
    one_error(code, err, "is the input SRC", "(resolved)")
    assert snapshot(src) == before


def test_failed_replacement_leaves_the_old_output(cli, model_dir, tmp_path,
                                                  monkeypatch):
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
    code, _, err = cli(export.main, [model_dir, "--format", "keras",
                                     "--output", out, "--overwrite"])
    one_error(code, err, f"{out}: no space left on device")
    assert out.read_text() == "old"
    assert left(tmp_path) == ["m.keras"]


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_later_run_removes_what_a_killed_one_left(cli, model_dir,
                                                    tmp_path):
    pid = dead_pid()
    stale = tmp_path / f".hf.tmp{pid}"
    (stale / "half").mkdir(parents=True)
    (tmp_path / f".m.tmp{pid}.keras").write_text("half")
    assert cli(convert.main, [model_dir, tmp_path / "hf"])[0] == 0
    assert cli(export.main, [model_dir, "--format", "keras", "--output",
                             tmp_path / "m.keras"])[0] == 0
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
    code, _, err = cli(finetune.main, ["--model", model_dir, "--train",
                                       TRAIN, "--output-dir", out,
                                       *FINETUNE, *extra])
    return code, err


def test_divergence_then_the_suggested_rerun_then_a_failed_overwrite(
        cli, model_dir, tmp_path):
    """A first run that diverges leaves no folder, so the rerun it
    suggests is a new run; an --overwrite run that diverges leaves the
    old run as it was."""
    out = tmp_path / "ft"
    code, err = finetuned(cli, model_dir, out, "--learning-rate", "1e30")
    one_error(code, err, "non-finite loss", "try a lower --learning-rate",
              logs=True)
    assert left(tmp_path) == []
    code, err = finetuned(cli, model_dir, out, "--learning-rate", "1e-3")
    assert code == 0, err
    before = snapshot(out)
    code, err = finetuned(cli, model_dir, out, "--overwrite",
                          "--learning-rate", "1e30")
    one_error(code, err, "non-finite loss", logs=True)
    assert snapshot(out) == before
    assert left(tmp_path) == ["ft"]


def test_disk_full_in_finetune_says_the_rerun_resumes(cli, model_dir,
                                                      tmp_path, monkeypatch):
    import keras

    def full_disk(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    code, err = finetuned(cli, model_dir, tmp_path / "ft")
    one_error(code, err, "epoch-1.weights.h5: no space left on device",
              "the same command resumes", logs=True)
