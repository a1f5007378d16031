"""Untrusted model folders and flags at their limits (issue 37).

A model folder from elsewhere is hostile input: every file of it is read
through one guarded reader (regular files only, bounded, UTF-8 named, JSON
of limited size and depth), weight files are checked against their own
headers and only the tensors the architecture needs are read, and every
numeric flag stops at one line where its meaning ends.

Each case: exit code 2, one `error:` line naming the file or flag, no
traceback, nothing of the user's changed. The folders are built once per
module from tiny models (16 wide, one layer) and copied per case; the
commands run in-process under `run_cli`.
"""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import zipfile

import pytest
from test_safety import (
    CLASSIFIER_CONFIG,
    FINETUNE,
    FIT,
    TEXT,
    TINY,
    TRAIN,
    classifier,
    left,
    one_error,
    snapshot,
    tokenizer,
    write_model_dir,
)

from kerasbert import adapt, convert, export, fill_mask, finetune, fit, predict

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{kind: folder}: a pretraining model directory, a fine-tuned
    classifier directory and the Hugging Face folder `convert` writes
    from the first (BertForPreTraining: safetensors, tokenizer.json,
    vocab.txt, tokenizer_config.json)."""
    from kerasbert.interop import convert as convert_folder
    from kerasbert.modeling import build_pretrainer

    base = tmp_path_factory.mktemp("untrusted")
    tok = tokenizer()
    model = build_pretrainer(vocabulary_size=tok.vocabulary_size, **TINY)
    model_dir = write_model_dir(base / "model", model, tok)
    clf = write_model_dir(base / "clf", classifier(tok), tok, CLASSIFIER_CONFIG)
    convert_folder(model_dir, str(base / "hf"))
    return {"model": model_dir, "clf": clf, "hf": str(base / "hf")}


# --- Building hostile folders ----------------------------------------------


def edit_json(path, edit):
    with open(path, encoding="utf-8") as f:
        value = json.load(f)
    value = edit(value) or value
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f)


def deep(levels=5000):
    return '{"a": ' * levels + "1" + "}" * levels


def edit_keras_config(path, edit):
    """Rewrites the config.json inside .keras file `path` through `edit`
    (a function of its text)."""
    with zipfile.ZipFile(path) as archive:
        items = {n: archive.read(n) for n in archive.namelist()}
    items["config.json"] = edit(items["config.json"].decode()).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in items.items():
            archive.writestr(name, data)


def safetensors_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    return header, data


def write_safetensors(path, header, data, size=None):
    """A safetensors file of `header` and `data`; `size` (data bytes)
    extends it sparsely: a hole costs no disk."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
        if size is not None:
            f.truncate(8 + len(text) + size)


def add_tensor(path, name, nbytes, extend=True, shape=None):
    """Adds float32 tensor `name` of `nbytes` after the data; `extend`
    False leaves the file short of it."""
    header, data = safetensors_header(path)
    end = max(
        v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"
    )
    header[name] = {
        "dtype": "F32",
        "shape": shape or [nbytes // 4],
        "data_offsets": [end, end + nbytes],
    }
    write_safetensors(path, header, data, end + nbytes if extend else None)


def vocab_with_gap(folder):
    """tokenizer.json's vocabulary with no token at id 30 (its tokens
    after it one id up), and no vocab.txt."""
    os.remove(os.path.join(folder, "vocab.txt"))

    def gap(spec):
        vocab = spec["model"]["vocab"]
        for token, i in vocab.items():
            if i >= 30:
                vocab[token] = i + 1

    edit_json(os.path.join(folder, "tokenizer.json"), gap)


def shard_outside(folder):
    """An index.json whose one shard is ../other/model.safetensors."""
    other = os.path.join(os.path.dirname(folder), "other")
    os.makedirs(other)
    shutil.move(os.path.join(folder, "model.safetensors"), other)
    header, _ = safetensors_header(os.path.join(other, "model.safetensors"))
    index = {
        "weight_map": {
            k: "../other/model.safetensors"
            for k in header
            if k != "__metadata__"
        }
    }
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)


def index_of(weight_map):
    def make(folder):
        os.remove(os.path.join(folder, "model.safetensors"))
        with open(
            os.path.join(folder, "model.safetensors.index.json"), "w"
        ) as f:
            json.dump({"weight_map": weight_map}, f)

    return make


def pickle_of(value):
    """pytorch_model.bin holding `value` (a function of the state dict)
    instead of model.safetensors."""

    def make(folder):
        import torch
        from safetensors.torch import load_file

        path = os.path.join(folder, "model.safetensors")
        state = load_file(path)
        os.remove(path)
        torch.save(value(state), os.path.join(folder, "pytorch_model.bin"))

    return make


def set_config(**values):
    return lambda folder: edit_json(
        os.path.join(folder, "config.json"), lambda c: c.update(values)
    )


def write_file(name, data):
    def make(folder):
        path = os.path.join(folder, name)
        with open(path, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)

    return make


def special_file(name, kind):
    """`name` replaced by a FIFO or a link to /dev/zero."""

    def make(folder):
        path = os.path.join(folder, name)
        os.remove(path)
        if kind == "fifo":
            os.mkfifo(path)
            unblock(path)
        else:
            os.symlink("/dev/zero", path)

    return make


def unblock(fifo, after=5, until=60):
    """From `after` seconds on, for `until` seconds, opens `fifo` for
    writing whenever a reader waits and closes it at once: an unguarded
    reader blocked on it then sees an empty file instead of hanging the
    suite (a guarded one never opens it)."""

    def run():
        stop = time.monotonic() + until
        while time.monotonic() < stop:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader waiting (ENXIO), or gone
                pass
            time.sleep(0.1)

    timer = threading.Timer(after, run)
    timer.daemon = True
    timer.start()


def sentencepiece_meta(text):
    """tokenizer/ with kerasbert_tokenizer.json `text` and no vocab.txt."""

    def make(folder):
        os.remove(os.path.join(folder, "tokenizer", "vocab.txt"))
        write_file("tokenizer/kerasbert_tokenizer.json", text)(folder)

    return make


def set_finetune(**values):
    def edit(config):
        config["finetune"].update(values)
        for name, value in values.items():
            if value is None:
                config["finetune"].pop(name)

    return lambda folder: edit_json(os.path.join(folder, "config.json"), edit)


def more_tokens(folder):
    """tokenizer/vocab.txt with ids the model has no embedding for."""
    path = os.path.join(folder, "tokenizer", "vocab.txt")
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(f"extra{i}\n" for i in range(40)))


def command(name, folder, out):
    return {
        "convert": (convert.main, [folder, out]),
        "convert_pickle": (convert.main, [folder, out, "--allow-pickle"]),
        "init_from": (
            fit.main,
            ["--init-from", folder, "--output-dir", out, "--corpus", TEXT]
            + ["--max-steps", "1", "--quiet", *FIT],
        ),
        "predict": (predict.main, ["--model", folder, "a text"]),
        "finetune": (
            finetune.main,
            ["--model", folder, "--train", TRAIN, "--output-dir", out]
            + FINETUNE,
        ),
        "fill_mask": (fill_mask.main, ["--model", folder, "a [MASK] ."]),
        "export": (export.main, [folder, "--output", out]),
    }[name]


# case: (folder kind, how it is made hostile, commands, needles)
CASES = {
    "tokenizer.json ids with a gap": (
        "hf",
        vocab_with_gap,
        ["convert"],
        ["tokenizer.json", "no token has id 30"],
    ),
    "a shard outside the folder": (
        "hf",
        shard_outside,
        ["convert"],
        ["model.safetensors.index.json", "outside"],
    ),
    "weight_map a list": (
        "hf",
        index_of([]),
        ["convert"],
        ["index.json", '"weight_map"'],
    ),
    "a shard name not a string": (
        "hf",
        index_of({"bert.embeddings.word_embeddings.weight": 3}),
        ["convert"],
        ["index.json", "3"],
    ),
    "a tensor beyond the file's end": (
        "hf",
        lambda f: add_tensor(
            os.path.join(f, "model.safetensors"), "extra", 4096, extend=False
        ),
        ["convert"],
        ["model.safetensors", "extra", "beyond"],
    ),
    "a tensor's shape not its bytes": (
        "hf",
        lambda f: add_tensor(
            os.path.join(f, "model.safetensors"), "extra", 64, shape=[3, 3]
        ),
        ["convert"],
        ["model.safetensors", "extra", "64 bytes"],
    ),
    "hidden_act a list": (
        "hf",
        set_config(hidden_act=["gelu"]),
        ["convert"],
        ["config.json", "hidden_act"],
    ),
    "a float too big for a float": (
        "hf",
        lambda f: edit_json(
            os.path.join(f, "config.json"),
            lambda c: c.update(layer_norm_eps=10**400),
        ),
        ["convert"],
        ["config.json", "layer-norm-epsilon", "finite"],
    ),
    "a deeply nested HF config.json": (
        "hf",
        write_file("config.json", deep()),
        ["convert"],
        ["config.json", "nested"],
    ),
    "a deeply nested run config.json": (
        "model",
        write_file("config.json", deep()),
        ["init_from"],
        ["config.json", "nested"],
    ),
    "a non-UTF-8 vocab.txt": (
        "hf",
        write_file("vocab.txt", b"[PAD]\n[UNK]\n\xff\xfe\n"),
        ["convert"],
        ["vocab.txt", "UTF-8"],
    ),
    "a list-valued normalizer": (
        "hf",
        lambda f: (
            os.remove(os.path.join(f, "vocab.txt")),
            edit_json(
                os.path.join(f, "tokenizer.json"),
                lambda s: s.update(normalizer=[1, 2]),
            ),
        ),
        ["convert"],
        ["tokenizer.json", '"normalizer"'],
    ),
    "HF do_lower_case a string": (
        "hf",
        write_file("tokenizer_config.json", '{"do_lower_case": "yes"}'),
        ["convert"],
        ["tokenizer_config.json", "do_lower_case"],
    ),
    "a pickle that is no dict": (
        "hf",
        pickle_of(lambda state: list(state.values())),
        ["convert_pickle"],
        ["pytorch_model.bin", "not a dict"],
    ),
    "a pickle with an int beside the tensors": (
        "hf",
        pickle_of(lambda state: {**state, "step": 3}),
        ["convert_pickle"],
        ["pytorch_model.bin", "step"],
    ),
    "config.json a FIFO": (
        "hf",
        special_file("config.json", "fifo"),
        ["convert"],
        ["config.json", "not a regular file"],
    ),
    "run config.json a FIFO": (
        "model",
        special_file("config.json", "fifo"),
        ["init_from"],
        ["config.json", "not a regular file"],
    ),
    "classifier config.json /dev/zero": (
        "clf",
        special_file("config.json", "zero"),
        ["predict"],
        ["config.json", "not a regular file"],
    ),
    "vocab.txt a FIFO": (
        "clf",
        special_file("tokenizer/vocab.txt", "fifo"),
        ["predict"],
        ["vocab.txt", "not a regular file"],
    ),
    "model tokenizer_config.json malformed": (
        "model",
        write_file("tokenizer/tokenizer_config.json", "{no json"),
        ["finetune", "fill_mask"],
        ["tokenizer_config.json", "not valid JSON"],
    ),
    "classifier tokenizer_config.json a list": (
        "clf",
        write_file("tokenizer/tokenizer_config.json", "[]"),
        ["predict"],
        ["tokenizer_config.json", "JSON object"],
    ),
    "do_lower_case a string": (
        "clf",
        write_file(
            "tokenizer/tokenizer_config.json", '{"do_lower_case": "yes"}'
        ),
        ["predict"],
        ["tokenizer_config.json", "do_lower_case"],
    ),
    "kerasbert_tokenizer.json malformed": (
        "clf",
        sentencepiece_meta("{"),
        ["predict"],
        ["kerasbert_tokenizer.json", "not valid JSON"],
    ),
    "kerasbert_tokenizer.json naming a missing model": (
        "clf",
        sentencepiece_meta(
            '{"kind": "sentencepiece", "model_file": "x.model"}'
        ),
        ["predict"],
        ["x.model", "no such file"],
    ),
    "kerasbert_tokenizer.json naming a file outside": (
        "clf",
        sentencepiece_meta(
            '{"kind": "sentencepiece", "model_file": "../../clf.model"}'
        ),
        ["predict"],
        ["kerasbert_tokenizer.json", "outside"],
    ),
    "model.keras nested deeply": (
        "clf",
        lambda f: edit_keras_config(
            os.path.join(f, "model.keras"), lambda text: deep()
        ),
        ["predict"],
        ["model.keras", "nested"],
    ),
    "model.keras declaring 2^31 classes": (
        "clf",
        lambda f: edit_keras_config(
            os.path.join(f, "model.keras"),
            lambda text: text.replace(
                '"num_classes": 2', f'"num_classes": {2**31}'
            ),
        ),
        ["predict"],
        ["model.keras", "num_classes 2147483648"],
    ),
    "model.keras initializer_range Infinity": (
        "model",
        lambda f: edit_keras_config(
            os.path.join(f, "model.keras"),
            lambda text: re.sub(
                r'"initializer_range": [^,}]+',
                '"initializer_range": Infinity',
                text,
            ),
        ),
        ["finetune"],
        ["model.keras", "initializer-range", "finite"],
    ),
    "no labels": (
        "clf",
        set_config(labels=[]),
        ["predict", "export"],
        ["config.json", "labels"],
    ),
    "more labels than classes": (
        "clf",
        set_config(labels=["a", "b", "c"]),
        ["predict"],
        ["config.json", "3 labels", "2 classes"],
    ),
    "no max_length": (
        "clf",
        set_finetune(max_length=None),
        ["predict", "export"],
        ["config.json", "max_length"],
    ),
    "max_length a string": (
        "clf",
        set_finetune(max_length="32"),
        ["predict"],
        ["config.json", "max_length"],
    ),
    "max_length huge": (
        "clf",
        set_finetune(max_length=10**9),
        ["predict"],
        ["config.json", "max_length", "64"],
    ),
    "max_length negative": (
        "clf",
        set_finetune(max_length=-1),
        ["predict"],
        ["config.json", "max_length"],
    ),
    "no truncation": (
        "clf",
        set_finetune(truncation=None),
        ["predict"],
        ["config.json", "truncation"],
    ),
    "a tokenizer larger than the model": (
        "model",
        more_tokens,
        ["fill_mask", "convert"],
        ["token ids but the model only"],
    ),
}

RUNS = [(case, name) for case, spec in CASES.items() for name in spec[2]]


@pytest.mark.parametrize("case, name", RUNS, ids=[f"{c}-{n}" for c, n in RUNS])
def test_a_hostile_folder_is_one_line(cli, folders, tmp_path, case, name):
    kind, make, _, needles = CASES[case]
    folder = str(tmp_path / "m")
    shutil.copytree(folders[kind], folder, symlinks=True)
    make(folder)
    names = left(tmp_path)
    before = {
        n: snapshot(tmp_path / n) for n in names if not is_special(tmp_path / n)
    }
    main, argv = command(name, folder, tmp_path / "out")
    code, _, err = cli(main, argv)
    one_error(code, err, *needles)
    assert not os.path.lexists(tmp_path / "out")
    assert left(tmp_path) == names
    assert {n: snapshot(tmp_path / n) for n in before} == before


def is_special(path):
    """A folder holding a FIFO or a device link, which `snapshot` would
    read (and block on, or read forever)."""
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            if not os.path.isfile(full) or os.path.islink(full):
                return True
    return False


def test_a_google_vocab_txt_not_utf8(cli, tmp_path):
    from test_safety import HF_TINY

    src = tmp_path / "google"
    src.mkdir()
    (src / "bert_config.json").write_text(json.dumps(HF_TINY))
    (src / "vocab.txt").write_bytes(b"[PAD]\n[UNK]\n\xc3\x28\n")
    (src / "bert_model.ckpt.index").write_bytes(b"")
    code, _, err = cli(convert.main, [src, tmp_path / "out"])
    one_error(code, err, "vocab.txt", "not UTF-8")
    assert left(tmp_path) == ["google"]


@pytest.mark.parametrize("name", ["finetune", "fit", "predict"])
def test_a_data_file_that_is_a_fifo(cli, folders, tmp_path, name):
    fifo = tmp_path / "texts.tsv"
    os.mkfifo(fifo)
    unblock(str(fifo))
    out = tmp_path / "out"
    main, argv, flag = {
        "finetune": (
            finetune.main,
            ["--model", folders["model"], "--train", fifo, "--output-dir", out]
            + FINETUNE,
            "--train",
        ),
        "fit": (fit.main, fit_argv(out, "--corpus", fifo), fifo.name),
        "predict": (
            predict.main,
            ["--model", folders["clf"], "--file", fifo],
            "--file",
        ),
    }[name]
    code, _, err = cli(main, argv)
    one_error(code, err, flag, "not a regular file")
    assert left(tmp_path) == ["texts.tsv"]


def test_an_unused_4_gib_tensor_is_never_read(folders, tmp_path):
    """A 0.1 MB model whose safetensors file also holds a 4 GiB tensor
    (a hole on disk): converted, the big tensor ignored, and the peak
    memory of the conversion stays far below its size."""
    src = tmp_path / "hf"
    shutil.copytree(folders["hf"], src)
    add_tensor(str(src / "model.safetensors"), "unused.big", 4 << 30)
    script = (
        "import resource, sys\n"
        "from kerasbert import convert\n"
        "from kerasbert.cli import import_tensorflow_quietly\n"
        "from kerasbert.errors import run_cli\n"
        "import_tensorflow_quietly()\n"
        "import kerasbert.modeling\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    run_cli(convert.main, sys.argv[1:])\n"
        "finally:\n"
        "    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "    print(before, after)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(src), str(tmp_path / "out")],
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "unused.big" in result.stderr  # the note on ignored tensors
    before, after = map(int, result.stdout.split())  # KiB
    # The model is 0.1 MB; building and saving it costs the Keras process
    # some tens of MB; reading the big tensor would cost 4 GiB.
    print(f"peak RSS {before / 1024:.0f} MB before, {after / 1024:.0f} after")
    assert (after - before) * 1024 < 512 << 20, (before, after)


# --- Flags at their limits ---------------------------------------------------


def fit_argv(out, *extra):
    return [
        "--corpus",
        TEXT,
        "--vocab-size",
        "300",
        "--size",
        "tiny",
        "--max-steps",
        "1",
        "--output-dir",
        out,
        "--quiet",
        *FIT,
        *extra,
    ]


def adapt_argv(model, out, *extra):
    return [
        "--model",
        model,
        "--train",
        TRAIN,
        "--output-dir",
        out,
        "--quiet",
        *extra,
    ]


SEEDS = ["-1", str(2**32), str(2**63)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["fit", "finetune", "adapt"])
def test_a_seed_out_of_range(cli, folders, tmp_path, name, seed):
    out = tmp_path / "out"
    main, argv = {
        "fit": (fit.main, fit_argv(out)),
        "finetune": (
            finetune.main,
            ["--model", folders["model"], "--train", TRAIN]
            + ["--output-dir", out, *FINETUNE],
        ),
        "adapt": (adapt.main, adapt_argv(folders["model"], out)),
    }[name]
    code, _, err = cli(main, [*argv, "--seed", seed])
    one_error(code, err, "--seed: must be")
    assert left(tmp_path) == []


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--vocab-size", "10000000000"], ["--vocab-size", "1000000"]),
        (
            ["--max-sequence-length", "65536", "--sequence-length", "65536"]
            + ["--batch-size", "1"],
            ["--sequence-length", "GB"],
        ),
        (["--max-sequence-length", "10000000"], ["--max-sequence-length"]),
    ],
)
def test_fit_sizes_beyond_the_machine(cli, tmp_path, extra, needles):
    code, _, err = cli(fit.main, fit_argv(tmp_path / "out", *extra))
    one_error(code, err, *needles)
    assert left(tmp_path) == []


@pytest.mark.parametrize("rate", ["nan", "inf", "-inf"])
def test_adapt_mask_rate_not_finite(cli, folders, tmp_path, rate):
    argv = adapt_argv(folders["model"], tmp_path / "out", f"--mask-rate={rate}")
    code, _, err = cli(adapt.main, argv)
    one_error(code, err, "--mask-rate", "finite")
    assert left(tmp_path) == []


def test_finetune_vocab_size_bounded(cli, tmp_path):
    argv = ["--from-scratch", "tiny", "--train", TRAIN, "--vocab-size"]
    code, _, err = cli(
        finetune.main,
        [*argv, str(10**10), "--output-dir", tmp_path / "out"],
    )
    one_error(code, err, "--vocab-size", "1000000")
    assert left(tmp_path) == []


# --- A run folder that holds only a killed run's temp files -----------------


def test_a_run_killed_in_its_first_write_restarts(cli, tmp_path):
    """A kill inside a fresh run's first write (its config) leaves only
    `.config.tmpPID.json`: the same command runs, without --overwrite."""
    from test_safety import dead_pid

    out = tmp_path / "out"
    out.mkdir()
    (out / f".config.tmp{dead_pid()}.json").write_text('{"mo')
    code, stdout, err = cli(fit.main, fit_argv(out))
    assert code == 0, err
    assert (out / "summary.json").exists()
    assert not any(".tmp" in n for n in os.listdir(out))


def test_a_deeply_nested_config_file(cli, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(deep())
    argv = ["--config", path, "--output-dir", tmp_path / "out"]
    code, _, err = cli(fit.main, argv)
    one_error(code, err, "--config", "config.json", "nested")
    assert left(tmp_path) == ["config.json"]


def test_an_adapt_folder_killed_in_its_first_writes_is_its_own(tmp_path):
    """adapt.json's temp file beside an empty-but-for-temps first stage:
    the folder is the run's to start, not a folder of the user's files."""
    from test_safety import dead_pid

    from kerasbert.config import FinetuneConfig
    from kerasbert.training.adapt import _output_folder

    out = tmp_path / "out"
    (out / "heads").mkdir(parents=True)
    (out / f".adapt.tmp{dead_pid()}.json").write_text("{")
    (out / "heads" / f".config.tmp{dead_pid()}.json").write_text("{")
    cfg = FinetuneConfig(model="m", train=TRAIN, output_dir=str(out))
    assert _output_folder(cfg, {}, print) == str(out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not an adapt run's"):
        _output_folder(cfg, {}, print)
