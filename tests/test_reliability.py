"""The --overwrite swap under kills, adapt's up-front checks, the last
tracebacks and misleading messages (issue 28), through the real commands.

Kills are placed with the project's fault hook (`KERASBERT_FAULT`, see
`files.fault_point`) in a subprocess; what follows a kill runs in-process
under `run_cli`, as `python -m` runs it. Models are tiny (16 or 32 wide,
one layer) and runs take one to four steps.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
from test_safety import (
    FINETUNE,
    FIT,
    TEXT,
    TRAIN,
    hf_folder,
    left,
    one_error,
    snapshot,
)

from kerasbert import adapt, convert, export, finetune, fit, predict
from kerasbert.errors import run_cli

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "finetune")
VALIDATION = os.path.join(FIXTURES, "source_val.tsv")


def run_in(main, argv, cache):
    """(exit code) of a command run in-process, for module fixtures (the
    `cli` fixture is per test)."""
    os.environ["KERASBERT_CACHE"] = str(cache)
    try:
        return run_cli(main, [str(a) for a in argv]) or 0
    except SystemExit as e:
        return e.code
    finally:
        os.environ.pop("KERASBERT_CACHE", None)


def run_module(module, argv, cwd, fault=None, limit=None, prefix=()):
    """`python -m kerasbert.MODULE ARGV` in `cwd`: with `fault` the fault
    hook's place, with `limit` a file-size limit (RLIMIT_FSIZE, bytes)."""
    env = {**os.environ, "PYTHONPATH": ROOT, "KERASBERT_CACHE": "cache"}
    env.pop("KERASBERT_FAULT", None)
    if fault:
        env["KERASBERT_FAULT"] = fault

    def limited():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [*prefix, sys.executable, "-m", f"kerasbert.{module}"]
        + [str(a) for a in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limited if limit else None,
    )


def no_traceback(result, *needles):
    """Exit code 2, one `error:` line, no traceback or crash."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [
        line for line in result.stderr.splitlines() if line.startswith("error")
    ]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


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


# --- 1. Prior output hidden, replaced or mixed -------------------------------


# Per command: (main, argv of a run into OUT, its config.json section,
# the swap_in call that swaps the run in: after its two backups, the
# epoch's and the last step's, or fit's backup and export).
RUNS = {
    "fit": (fit.main, lambda model, out: fit_argv(out), "train", 3),
    "finetune": (
        finetune.main,
        lambda model, out: (
            ["--model", model, "--train", TRAIN]
            + ["--output-dir", out, *FINETUNE]
        ),
        "finetune",
        3,
    ),
}


@pytest.fixture(scope="module", params=list(RUNS))
def killed_run_swap(request, tmp_path_factory, pretrained):
    """A run, then the same command with `--overwrite` (another seed)
    killed between the two renames of its final swap: (command, folder,
    the old run's files)."""
    name = request.param
    main, argv, _, swap = RUNS[name]
    base = tmp_path_factory.mktemp("swap")
    if name == "fit":
        shutil.copytree(pretrained, base / "run")
    else:
        code = run_in(main, argv(pretrained, base / "run"), base / "cache")
        assert code == 0
    before = snapshot(base / "run")
    result = run_module(
        name,
        [*argv(pretrained, "run"), "--overwrite", "--seed", "7"],
        base,
        fault=f"swap_in:{swap}",
    )
    assert result.returncode == -9, result.stderr
    names = left(base)
    assert "run" not in names and ".run.replacing" in names, names
    assert any(n.startswith(".run.old") for n in names), names
    return name, base, before


@pytest.mark.parametrize("again", ["original", "overwrite"])
def test_a_kill_inside_the_run_swap(
    cli, killed_run_swap, pretrained, tmp_path, again
):
    """The original command finds the old run (complete) and removes the
    abandoned replacement, saying so; the --overwrite command swaps in the
    complete replacement without training again."""
    name, base, before = killed_run_swap
    main, argv, section, _ = RUNS[name]
    folder = tmp_path / "w"
    shutil.copytree(base, folder, symlinks=True)
    extra = [] if again == "original" else ["--overwrite", "--seed", "7"]
    code, out, err = cli(main, [*argv(pretrained, folder / "run"), *extra])
    assert code == 0, err
    assert left(folder) == ["run"]
    assert "complete (" in out and "resuming" not in out
    config = json.loads((folder / "run" / "config.json").read_text())
    if again == "original":
        assert snapshot(folder / "run") == before
        assert "removed" in out and ".run.replacing" in out
    else:
        assert config[section]["seed"] == 7


def test_an_abandoned_fit_overwrite_is_removed(cli, pretrained, tmp_path):
    """`fit --overwrite` killed mid-run, then the original command: the
    old run is kept and the hidden replacement removed, with a note."""
    run = tmp_path / "run"
    shutil.copytree(pretrained, run)
    before = snapshot(run)
    result = run_module(
        "fit",
        fit_argv("run", "--overwrite", "--seed", "7"),
        tmp_path,
        fault="train_step:1",
    )
    assert result.returncode == -9, result.stderr
    assert left(tmp_path) == [".run.replacing", "run", "run.lock"]
    code, out, err = cli(fit.main, fit_argv(run))
    assert code == 0, err
    assert "removed" in out and ".run.replacing" in out
    assert left(tmp_path) == ["run"]
    assert snapshot(run) == before


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny model directory with MLM and NSP heads (a 1-step fit run)."""
    base = tmp_path_factory.mktemp("pretrained")
    assert run_in(fit.main, fit_argv(base / "run"), base / "cache") == 0
    return base / "run"


@pytest.fixture(scope="module")
def killed_convert_swap(tmp_path_factory, pretrained):
    base = tmp_path_factory.mktemp("convert")
    assert run_in(convert.main, [pretrained, base / "hf"], base / "cache") == 0
    (base / "hf" / "mine.txt").write_text("the old output")
    before = snapshot(base / "hf")
    result = run_module(
        "convert", [pretrained, "hf", "--overwrite"], base, fault="swap_in:1"
    )
    assert result.returncode == -9, result.stderr
    assert "hf" not in left(base)
    return base, before


@pytest.mark.parametrize("again", ["plain", "overwrite"])
def test_a_kill_inside_the_convert_swap(
    cli, killed_convert_swap, pretrained, tmp_path, again
):
    """Without --overwrite the old DST is back and refused as existing
    (not replaced); with it, replaced. Nothing hidden is left."""
    base, before = killed_convert_swap
    folder = tmp_path / "w"
    shutil.copytree(base, folder, symlinks=True)
    extra = ["--overwrite"] if again == "overwrite" else []
    code, _, err = cli(convert.main, [pretrained, folder / "hf", *extra])
    if again == "plain":
        one_error(code, err, "exists (pass --overwrite")
        assert snapshot(folder / "hf") == before
    else:
        assert code == 0, err
        assert not (folder / "hf" / "mine.txt").exists()
    assert left(folder) == ["hf"]


@pytest.mark.parametrize("command", ["export", "export_keras", "convert"])
def test_two_writers_of_one_new_output(
    cli, pretrained, tmp_path, monkeypatch, command
):
    """Two commands write the same new output at once: the one that
    finishes second says it exists and leaves the first one's output."""
    import kerasbert.files as files

    out = tmp_path / ("out.keras" if command == "export_keras" else "out")
    real = files.fault_point

    def other_process_finishes_first(name):
        if name == "atomic_write" and not os.path.lexists(out):
            if command == "export_keras":
                out.write_text("the other one's")
            else:
                out.mkdir()
                (out / "theirs.txt").write_text("the other one's")
        real(name)

    monkeypatch.setattr(files, "fault_point", other_process_finishes_first)
    main, argv = {
        "export": (export.main, [pretrained, "--output", out]),
        "export_keras": (
            export.main,
            [pretrained, "--format", "keras", "--output", out],
        ),
        "convert": (convert.main, [pretrained, out]),
    }[command]
    code, _, err = cli(main, argv)
    one_error(code, err, f"{out} exists (pass --overwrite")
    assert "wrote" not in err
    theirs = out if command == "export_keras" else out / "theirs.txt"
    assert theirs.read_text() == "the other one's"
    assert left(tmp_path) == [out.name]


# --- adapt: one folder, replaced whole -------------------------------------


def adapt_argv(model, out, *extra):
    return [
        "--model",
        model,
        "--train",
        TRAIN,
        "--validation",
        VALIDATION,
        "--output-dir",
        out,
        "--head-steps",
        "2",
        "--adapt-steps",
        "2",
        "--adapt-batch-size",
        "8",
        "--adapt-sequence-length",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-length",
        "32",
        "--precision",
        "float32",
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, source):
    """An adapt folder, then `adapt --overwrite` (another seed) killed in
    its stage 2: (folder, the first run's files)."""
    base = tmp_path_factory.mktemp("adapt")
    code = run_in(adapt.main, adapt_argv(source, base / "out"), base / "cache")
    assert code == 0
    before = snapshot(base / "out")
    result = run_module(
        "adapt",
        adapt_argv(source, "out", "--overwrite", "--seed", "1"),
        base,
        fault="train_step:3",  # stage 1 has 2 steps
    )
    assert result.returncode == -9, result.stderr
    return base, before


def test_adapt_overwrite_killed_in_stage_2_keeps_the_old_folder(
    cli, adapted, source, tmp_path
):
    """The old folder stays whole (no new heads/ beside old stages); the
    same command resumes the replacement, and killed again inside the
    swap of the whole folder, then rerun, swaps it in without training;
    the folder, moved, still resumes (nothing trains again)."""
    base, before = adapted
    folder = tmp_path / "w"
    shutil.copytree(base, folder, symlinks=True)
    out = folder / "out"
    assert snapshot(out) == before
    replacing = folder / ".out.replacing"
    assert (replacing / "heads" / "summary.json").exists()
    assert not (replacing / "adapted" / "summary.json").exists()
    # Swaps of the resumed session: stage 2's last backup and its export,
    # stage 3's two backups, then the adapt folder.
    result = run_module(
        "adapt",
        adapt_argv(source, "out", "--overwrite", "--seed", "1"),
        folder,
        fault="swap_in:5",
    )
    assert result.returncode == -9, result.stderr
    assert "resuming the replacement" in result.stdout
    assert "out" not in left(folder)
    assert (replacing / "classifier" / "metrics.json").exists()
    argv = adapt_argv(source, out, "--overwrite", "--seed", "1")
    code, stdout, err = cli(adapt.main, argv)
    assert code == 0, err
    assert "resuming" in stdout and "precision: " not in err
    assert "stage 2/3" in stdout and "complete (" in stdout
    assert left(folder) == ["out"]
    assert sorted(os.listdir(out)) == [
        "adapt.json",
        "adapted",
        "classifier",
        "heads",
    ]
    for stage, part in (("heads", "train"), ("classifier", "finetune")):
        config = json.loads((out / stage / "config.json").read_text())
        assert config[part]["seed"] == 1
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    stamp = os.path.getmtime(moved / "classifier" / "model.keras")
    code, _, err = cli(adapt.main, adapt_argv(source, moved, "--seed", "1"))
    assert code == 0, err
    assert os.path.getmtime(moved / "classifier" / "model.keras") == stamp


# --- 2. Checked late, or not at all ------------------------------------------


def write(path, text):
    path.write_text(text)
    return path


ADAPT_BAD = {
    "missing test": (["--test", "missing.tsv"], "missing.tsv"),
    "no label column": (["--label-column", "topic"], "topic"),
    "unseen validation label": ([], "--validation"),
    "user's classifier folder": ([], "classifier"),
    "user's files": ([], "not an adapt run's (notes.txt)"),
    "output is a file": ([], "not a folder"),
    "read-only output": ([], "cannot write"),
}


@pytest.mark.parametrize("case", list(ADAPT_BAD))
def test_adapt_checks_everything_first(cli, source, tmp_path, case):
    """One line, before stage 1 starts, and nothing written."""
    extra, needle = ADAPT_BAD[case]
    out = tmp_path / "out"
    validation = VALIDATION
    if case == "unseen validation label":
        validation = write(tmp_path / "val.tsv", "text\tlabel\na b c\tnews\n")
    if case == "user's classifier folder":
        (out / "classifier").mkdir(parents=True)
        (out / "classifier" / "mine.txt").write_text("mine")
    if case == "user's files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    if case == "output is a file":
        out.write_text("mine")
    if case == "read-only output":
        out = "/proc/kerasbert-adapt"
    before = snapshot(tmp_path)
    argv = adapt_argv(source, out, *extra)
    argv[argv.index("--validation") + 1] = validation
    code, stdout, err = cli(adapt.main, argv)
    one_error(code, err, needle)
    assert "stage 1/3" not in stdout
    assert snapshot(tmp_path) == before
    assert not os.path.exists(str(out) + ".lock")


def test_free_space_counts_what_the_run_holds(tmp_path, monkeypatch):
    """The rerun that a full disk suggests is not refused by the up-front
    estimate: the run folder holds most of it already."""
    import collections

    from kerasbert.errors import UsageError
    from kerasbert.files import check_free_space

    run = tmp_path / "run"
    run.mkdir()
    (run / "weights").write_bytes(b"\0" * 9000)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: usage(10**9, 10**9, 2000)
    )
    check_free_space(str(run), 10000, "--output-dir")
    with pytest.raises(UsageError, match="MB needed"):
        check_free_space(str(tmp_path / "new"), 10000, "--output-dir")


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("initializer_range", "Infinity", "Infinity is no JSON number"),
        ("initializer_range", "NaN", "NaN is no JSON number"),
        ("layer_norm_eps", "-Infinity", "-Infinity is no JSON number"),
        ("initializer_range", "1e30", "initializer-range: must be <= 1"),
        ("layer_norm_eps", "1e9", "layer-norm-epsilon: must be <= 1"),
    ],
)
def test_convert_refuses_non_finite_or_absurd_floats(
    cli, tmp_path, field, value, needle
):
    from test_safety import HF_TINY

    src = hf_folder(tmp_path / "hf", HF_TINY)
    config = (tmp_path / "hf" / "config.json").read_text()
    (tmp_path / "hf" / "config.json").write_text(
        config.rstrip("}") + f', "{field}": {value}}}'
    )
    code, _, err = cli(convert.main, [src, tmp_path / "out"])
    one_error(code, err, "config.json", needle)
    assert left(tmp_path) == ["hf"]


def test_a_non_finite_flag_is_refused(cli, tmp_path):
    code, _, err = cli(
        finetune.main,
        [
            "--from-scratch",
            "tiny",
            "--train",
            TRAIN,
            "--output-dir",
            tmp_path / "ft",
            "--learning-rate",
            "inf",
        ],
    )
    one_error(code, err, "--learning-rate: must be a finite number")
    assert left(tmp_path) == []


# --- 3. Tracebacks instead of one line ---------------------------------------


def efbig_argv(name, pretrained, source):
    """(module, argv) of each writing command, small enough that its
    weights are the first file over a 256 KB limit."""
    return {
        "fit": ("fit", fit_argv("out")),
        "finetune": (
            "finetune",
            ["--model", pretrained, "--train", TRAIN, "--output-dir", "out"]
            + FINETUNE,
        ),
        "adapt": ("adapt", adapt_argv(source, "out")),
        "convert": ("convert", [pretrained, "out"]),
        "export": ("export", [pretrained, "--output", "out"]),
    }[name]


@pytest.mark.parametrize(
    "name", ["fit", "finetune", "adapt", "convert", "export"]
)
def test_a_file_size_limit_is_one_line(name, pretrained, source, tmp_path):
    """`ulimit -f` (EFBIG) is said like a full disk (ENOSPC): one line,
    and the folder it would have written is not left half done."""
    module, argv = efbig_argv(name, pretrained, source)
    result = run_module(module, argv, tmp_path, limit=256 * 1024)
    no_traceback(result, "file-size limit (ulimit -f)")
    assert not any(n.startswith(".out.") for n in left(tmp_path))


def test_a_disk_that_fills_during_fit(tmp_path):
    """A disk filled by another process while fit writes a backup: one
    line, no h5py tracebacks, no crash. The file system is a small tmpfs
    in a private mount namespace; the up-front estimate is switched off
    (it would refuse to start), as if the disk filled after it."""
    if (
        not shutil.which("unshare")
        or subprocess.run(["unshare", "-rm", "true"]).returncode
    ):
        pytest.skip("no unprivileged mount namespace here (unshare -rm)")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (
        "import sys\n"
        "import kerasbert.training.pretrain as p\n"
        "p.check_free_space = lambda *a: None\n"
        "from kerasbert import fit\n"
        "from kerasbert.errors import run_cli\n"
        "run_cli(fit.main)\n"
    )
    argv = fit_argv(disk / "run", "--max-steps", "3", "--backup-every", "1")
    result = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            f'mount -t tmpfs -o size=8m tmpfs "{disk}" && exec "$@"',
            "sh",
            sys.executable,
            "-c",
            script,
            *map(str, argv),
        ],
        env={**os.environ, "PYTHONPATH": ROOT, "KERASBERT_CACHE": "cache"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    no_traceback(result, "no space left on device", "resumes")
    assert "h5py" not in result.stderr, result.stderr


def test_a_tokenizer_json_whose_model_is_a_list(cli, tmp_path):
    from test_safety import HF_TINY

    src = hf_folder(tmp_path / "hf", HF_TINY)
    os.remove(os.path.join(src, "vocab.txt"))
    write(tmp_path / "hf" / "tokenizer.json", '{"model": [1, 2, 3]}')
    code, _, err = cli(convert.main, [src, tmp_path / "out"])
    one_error(code, err, "tokenizer.json", '"model" is not a JSON object')
    assert left(tmp_path) == ["hf"]


@pytest.mark.parametrize("name", ["predict", "fit", "adapt"])
def test_a_symlink_loop_as_the_model(cli, tmp_path, name):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    main, argv = {
        "predict": (predict.main, ["--model", loop, "some text"]),
        "fit": (fit.main, ["--init-from", loop, "--output-dir", "o"]),
        "adapt": (
            adapt.main,
            ["--model", loop, "--train", TRAIN, "--output-dir", "o"],
        ),
    }[name]
    code, _, err = cli(main, argv)
    one_error(code, err, str(loop), "symbolic links")
    assert left(tmp_path) == ["loop"]


# --- 4. Misleading messages ---------------------------------------------------


@pytest.mark.parametrize(
    "theirs, ours",
    [
        ("--corpus: a.tsv: no column 'x'", "--train: a.tsv: no column 'x'"),
        (
            "--corpus-format tsv: needs --corpus",
            "--data-format tsv: needs --train",
        ),
        (
            "a.tsv: corpus has 1 document; next-sentence pairs need at least "
            "2 (separate documents with a blank line, or set "
            "--one-doc-per-line)",
            "a.tsv: corpus has 1 document; next-sentence pairs need at least "
            "2 (each --train example is one: give more examples)",
        ),
        ("--max-steps: 0", "--adapt-steps: 0"),
    ],
)
def test_adapt_translates_pretraining_flags(theirs, ours):
    from kerasbert.errors import UsageError
    from kerasbert.training.adapt import ours_named

    with pytest.raises(UsageError) as caught:
        with ours_named():
            raise UsageError(theirs)
    assert str(caught.value) == ours


def test_adapt_names_its_own_flags(cli, source, tmp_path):
    argv = adapt_argv(source, tmp_path / "out")
    argv[argv.index("--adapt-sequence-length") + 1] = "128"
    code, _, err = cli(adapt.main, argv)
    line = one_error(
        code,
        err,
        "--adapt-sequence-length: 128 is above --model's "
        "max_sequence_length 64",
    )
    assert "--sequence-length:" not in line
    assert left(tmp_path) == []


def test_a_tokenizer_json_without_cls_names_the_input(cli, tmp_path):
    from test_safety import HF_TINY

    src = hf_folder(tmp_path / "hf", HF_TINY)
    os.remove(os.path.join(src, "vocab.txt"))
    tokens = ["[PAD]", "[UNK]", "[SEP]", "[MASK]", "a", "b", "c"]
    spec = {
        "model": {
            "type": "WordPiece",
            "vocab": {t: i for i, t in enumerate(tokens)},
        }
    }
    write(tmp_path / "hf" / "tokenizer.json", json.dumps(spec))
    code, _, err = cli(convert.main, [src, tmp_path / "out"])
    one_error(code, err, f"{src}: vocabulary has no [CLS] token")
    assert ".tmp" not in err
    assert left(tmp_path) == ["hf"]


def test_export_of_a_model_without_heads_names_the_model(cli, source, tmp_path):
    code, _, err = cli(export.main, [source, "--output", tmp_path / "x"])
    one_error(code, err, f"RUN_DIR {source}: has no MLM/NSP heads")
    assert left(tmp_path) == []


def test_predict_on_an_adapt_folder_points_at_its_classifier(cli, tmp_path):
    (tmp_path / "out" / "classifier").mkdir(parents=True)
    (tmp_path / "out" / "classifier" / "config.json").write_text("{}")
    code, _, err = cli(predict.main, ["--model", tmp_path / "out", "hi"])
    one_error(code, err, f"its fine-tuned classifier is {tmp_path}/out/")


def help_text(module):
    from kerasbert import adapt as a
    from kerasbert import finetune as f
    from kerasbert import fit as t

    return (
        {"adapt": a, "finetune": f, "fit": t}[module]
        .build_parser()
        .format_help()
    )


@pytest.mark.parametrize("module", ["fit", "finetune", "adapt"])
def test_help_says_what_overwrite_does(module):
    text = " ".join(help_text(module).split())
    assert "built beside it" in text and "swapped in when complete" in text
    assert "delete" not in text


def test_adapt_help_lists_only_what_it_takes():
    text = help_text("adapt")
    for flag in ("--from-scratch", "--vocab-size", "--hf-config", "jsonl"):
        assert flag not in text, flag


def test_the_safety_table_lists_every_writing_command():
    with open(os.path.join(ROOT, "docs", "safety.md"), encoding="utf-8") as f:
        rows = [line for line in f if line.startswith("| `")]
    commands = {row.split("`")[1] for row in rows}
    assert {"fit", "finetune", "adapt", "convert", "export", "prepare"} <= (
        commands
    )


@pytest.mark.parametrize("name", ["fit", "finetune"])
def test_progress_is_on_stdout_as_fit_and_adapt_print_it(
    cli, pretrained, tmp_path, name
):
    """Every training command logs progress on stdout; stderr is for the
    one error line (adapt's progress: the adapt tests above)."""
    main, argv = {
        "fit": (fit.main, fit_argv(tmp_path / "out")),
        "finetune": (
            finetune.main,
            ["--model", pretrained, "--train", TRAIN]
            + ["--output-dir", tmp_path / "out", *FINETUNE],
        ),
    }[name]
    code, out, err = cli(main, argv)
    assert code == 0, err
    assert "precision: " in out and "precision: " not in err
