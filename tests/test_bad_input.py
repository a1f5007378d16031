"""Every bad input a user met (issue 9's list), through the real commands.

Each case: exit code 2, one `error:` line naming the flag or file, no
traceback, nothing written (no run directory, no temp file), and where the
message suggests a fix, that fix works on a rerun of the same command.
The commands run in-process under `run_cli`, as `python -m` runs them.
"""

import json
import os
import subprocess
import sys

import pytest

from kerasbert import export, fill_mask, fit, prepare
from kerasbert.errors import UsageError

pytestmark = pytest.mark.integration

BUNDLED = os.path.join(
    os.path.dirname(fit.__file__), "corpus_data", "wiki.valid.raw"
)
SHORT = [
    "--size",
    "tiny",
    "--vocab-size",
    "1000",
    "--sequence-length",
    "32",
    "--batch-size",
    "8",
    "--max-predictions",
    "5",
    "--max-steps",
    "2",
    "--eval-batches",
    "1",
    "--quiet",
]


def one_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def nothing_but(folder, *names):
    """Only the inputs are left in `folder`: no run dir, lock or temp."""
    left = sorted(p for p in os.listdir(folder) if p != "cache")
    assert left == sorted(names), left


def small_corpus(tmp_path, articles=11):
    """The first `articles` WikiText-2 articles (issue 9's small.raw)."""
    lines, seen = [], 0
    with open(BUNDLED, encoding="utf-8") as f:
        for line in f:
            if line.startswith(" = ") and not line.startswith(" = = "):
                seen += 1
                if seen > articles:
                    break
            lines.append(line)
    path = tmp_path / "small.raw"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_small_corpus_trains_with_default_hold_out(cli, tmp_path):
    corpus = small_corpus(tmp_path)
    code, out, err = cli(
        fit.main,
        [
            "--corpus",
            str(corpus),
            "--output-dir",
            str(tmp_path / "run"),
            *SHORT,
        ],
    )
    assert code == 0, err
    assert (tmp_path / "run" / "summary.json").exists()


def test_batch_larger_than_an_epoch_then_the_suggested_batch(cli, tmp_path):
    corpus = small_corpus(tmp_path)
    run = tmp_path / "run"
    args = ["--corpus", str(corpus), "--output-dir", str(run), *SHORT]
    code, _, err = cli(fit.main, [*args, "--batch-size", "5000"])
    line = one_error(code, err, "--batch-size: 5000 is more than the")
    nothing_but(tmp_path, "small.raw")
    suggested = line.split("use --batch-size ")[1].split()[0]
    code, _, err = cli(
        fit.main, [*args, "--batch-size", suggested, "--max-steps", "1"]
    )
    assert code == 0, err


def test_one_sentence_documents(cli, tmp_path):
    corpus = tmp_path / "lines.txt"
    corpus.write_text(
        "".join(f"Sentence number {i} is alone.\n\n" for i in range(200))
    )
    code, _, err = cli(
        fit.main,
        [
            "--corpus",
            str(corpus),
            "--output-dir",
            str(tmp_path / "run"),
            *SHORT,
        ],
    )
    one_error(code, err, "lines.txt: no sentence pairs", "several sentences")
    nothing_but(tmp_path, "lines.txt")


def test_two_document_jsonl_trains_without_hold_out(cli, tmp_path):
    corpus = tmp_path / "two.jsonl"
    with open(BUNDLED, encoding="utf-8") as f:
        paragraphs = [p.strip() for p in f if len(p.strip()) > 300][:12]
    docs = ["\n".join(paragraphs[:6]), "\n".join(paragraphs[6:])]
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    code, out, err = cli(
        fit.main,
        [
            "--corpus",
            str(corpus),
            "--output-dir",
            str(tmp_path / "run"),
            *SHORT,
        ],
    )
    assert code == 0, err
    assert "too few to hold some out" in out


@pytest.mark.parametrize(
    "flags,needles",
    [
        (
            ["--max-predictions", "200", "--sequence-length", "128"],
            ["--max-predictions: 200 is more than"],
        ),
        (["--holdout-fraction", "0.99"], ["--holdout-fraction"]),
        (["--mask-rate", "1.5"], ["--mask-rate"]),
    ],
)
def test_bad_flag_combinations(cli, tmp_path, flags, needles):
    code, _, err = cli(
        fit.main, [*SHORT, *flags, "--output-dir", str(tmp_path / "run")]
    )
    one_error(code, err, *needles)
    nothing_but(tmp_path)


@pytest.mark.parametrize(
    "value,needle",
    [
        (8.5, "--batch-size: expected int, got 8.5"),
        ("eight", "--batch-size: expected int, got 'eight'"),
    ],
)
def test_bad_value_in_config_file(cli, tmp_path, value, needle):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"batch_size": value}))
    code, _, err = cli(
        fit.main,
        ["--config", str(config), "--output-dir", str(tmp_path / "run")],
    )
    one_error(code, err, needle)
    nothing_but(tmp_path, "c.json")


def test_output_dir_that_cannot_be_a_folder(cli, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = cli(fit.main, [*SHORT, "--output-dir", str(a_file)])
    one_error(code, err, "--output-dir", "is not a folder")
    code, _, err = cli(fit.main, [*SHORT, "--output-dir", "/proc/kb"])
    one_error(code, err, "--output-dir", "/proc")
    nothing_but(tmp_path, "file")


def test_damaged_run_config_then_overwrite(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": {"hidden')
    args = [
        "--corpus",
        str(small_corpus(tmp_path)),
        "--output-dir",
        str(run),
        *SHORT,
        "--max-steps",
        "1",
    ]
    code, _, err = cli(fit.main, args)
    one_error(
        code, err, "config.json: damaged run configuration", "--overwrite"
    )
    code, _, err = cli(fit.main, [*args, "--overwrite"])
    assert code == 0, err


def test_damaged_model_files(cli, tmp_path):
    from kerasbert.text.tokenizer import train_wordpiece

    run = tmp_path / "run"
    train_wordpiece(["a tiny corpus of words ."] * 5, 50, progress=False).save(
        str(run / "tokenizer")
    )
    (run / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    code, _, err = cli(fill_mask.main, ["--model", str(run), "a [MASK] ."])
    one_error(code, err, "model.keras: not a .keras file")
    code, _, err = cli(
        export.main,
        [str(tmp_path / "nothing"), "--output", str(tmp_path / "out")],
    )
    one_error(code, err, "nothing: no such model directory")


def test_export_onto_a_file_and_tokenizer_out_onto_a_file(cli, tmp_path):
    from kerasbert.files import atomic_dir

    target = tmp_path / "x"
    target.write_text("keep me")
    with pytest.raises(UsageError, match="x: exists and is not a folder"):
        with atomic_dir(str(target)):
            pass  # what export --format saved_model writes through
    assert target.read_text() == "keep me"
    code, _, err = cli(
        prepare.main, ["--tokenizer-out", str(target), "--no-progress"]
    )
    one_error(code, err, "--tokenizer-out", "is not a folder")
    nothing_but(tmp_path, "x")


def test_run_lock_follows_symlinks(tmp_path):
    from kerasbert.training.rundir import run_lock

    real = tmp_path / "run"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    script = (
        "import sys, time; from kerasbert.training.rundir import "
        "run_lock\nwith run_lock(sys.argv[1]):\n print('held', "
        "flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(real)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match="in use by another run"):
            with run_lock(str(tmp_path / "alias")):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_fresh_vocabularies_are_byte_identical(tmp_path):
    """Two fresh builds (own processes, own caches) of the bundled corpus."""
    vocabularies = []
    for i in range(2):
        env = dict(os.environ, KERASBERT_CACHE=str(tmp_path / f"cache{i}"))
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "kerasbert.prepare",
                "--vocab-size",
                "2000",
                "--no-progress",
                "--tokenizer-out",
                str(tmp_path / f"tok{i}"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        vocabularies.append((tmp_path / f"tok{i}" / "vocab.txt").read_bytes())
    assert vocabularies[0] == vocabularies[1]
    assert len(vocabularies[0].splitlines()) >= 1000
