"""Documentation checks: the README's tour and every Python example in
docs/ run, and tables match the code.

`doc_section(name)` returns the text between `<!-- section:NAME -->` and
`<!-- /section:NAME -->` in README.md or a page of docs/, so a section can
move between pages without its test changing.
"""

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from kerasbert.config import SIZES, ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def doc_section(name):
    pattern = (
        rf"<!-- section:{re.escape(name)} -->\n(.*?)"
        rf"<!-- /section:{re.escape(name)} -->"
    )
    for path in [os.path.join(ROOT, "README.md"), *PAGES]:
        match = re.search(pattern, read(path), re.S)
        if match:
            return match.group(1)
    raise AssertionError(f"no section {name!r} in README.md or docs/")


def code_blocks(text, languages=("python",)):
    """[(language, code)] of the fenced blocks in `text`, in order."""
    return [
        (lang, code)
        for lang, code in re.findall(r"```(\w*)\n(.*?)```", text, re.S)
        if lang in languages
    ]


def environment(tmp_path, root=ROOT):
    """The variables a reader's shell would have: this checkout's (or the
    copy's) kerasbert, this interpreter as `python`, a fresh cache."""
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
        PATH=os.pathsep.join(
            [os.path.dirname(sys.executable), os.environ.get("PATH", "")]
        ),
        KERASBERT_CACHE=str(tmp_path / "cache"),
        TF_CPP_MIN_LOG_LEVEL="3",
    )


def run_example(code, tmp_path, cwd=None, env=None):
    """Runs `code` in a fresh interpreter; returns its stdout lines.

    A subprocess (not exec) keeps the example's imports and dtype policy
    out of the test process and runs it the way a reader would.
    """
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd or tmp_path,
        env=env or environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, code + result.stderr[-3000:]
    return result.stdout.splitlines()


def expected_output(code):
    """The trailing `# ...` comment lines: what the example prints."""
    lines = code.rstrip().splitlines()
    expected = []
    while lines and lines[-1].startswith("# "):
        expected.insert(0, lines.pop()[2:])
    return expected


def test_every_page_is_linked_from_the_readme():
    readme = read(os.path.join(ROOT, "README.md"))
    for page in PAGES:
        assert f"docs/{os.path.basename(page)}" in readme, page


def test_readme_is_short():
    assert os.path.getsize(os.path.join(ROOT, "README.md")) <= 12 * 1024


@pytest.mark.parametrize(
    "page", [p for p in PAGES if code_blocks(read(p))], ids=os.path.basename
)
def test_docs_python_examples_run(page, tmp_path):
    """A page's Python blocks run in order, in one empty directory."""
    for _, code in code_blocks(read(page)):
        stdout = run_example(code, tmp_path)
        expected = expected_output(code)
        if expected:
            assert stdout == expected


def test_sizes_table_matches_config():
    rows = re.findall(
        r"^\| (\w+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$",
        doc_section("model"),
        re.M,
    )
    table = {name: tuple(map(int, values)) for name, *values in rows}
    want = {}
    for name in SIZES:
        c = ModelConfig.from_size(name)
        want[name] = (
            c.num_layers,
            c.hidden_dim,
            c.num_heads,
            c.intermediate_dim,
        )
    assert table == want


# The tour's commands at test sizes: flags appended to each command (the
# last value of a flag wins), so the tour runs in a few minutes on 2 cores.
FAST = {
    "kerasbert.fit": "--max-steps 4 --sequence-length 32 --batch-size 8 "
    "--vocab-size 2000 --max-predictions 5 "
    "--eval-batches 2 --quiet",
    "kerasbert.finetune": "--epochs 1 --max-examples 64 --max-length 32 "
    "--quiet",
    "kerasbert.adapt": "--adapt-steps 3 --adapt-sequence-length 32 "
    "--adapt-batch-size 8 --epochs 1 --max-examples 64 "
    "--max-length 32 --quiet",
}


def shell_commands(code):
    """The commands of a bash block: continuation lines joined, comments
    and blank lines dropped."""
    code = code.replace("\\\n", " ")
    return [
        line
        for line in code.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def fast(command):
    words = shlex.split(command, comments=True)
    if words[:2] == ["python", "-m"] and words[2] in FAST:
        words += shlex.split(FAST[words[2]])
    return shlex.join(words)


def fresh_clone(destination):
    """The files a `git clone` of this checkout would have, working-tree
    versions (committed or not), copied to `destination`; ../shared and
    ignored files (runs/, caches) are left behind. Outside a git checkout
    (an unpacked archive) everything but runs/ and caches is copied."""
    try:
        listed = subprocess.run(
            [
                "git",
                "ls-files",
                "--cached",
                "--others",
                "--exclude-standard",
                "-z",
            ],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(
            ROOT,
            destination,
            ignore=shutil.ignore_patterns(
                ".git", "runs", "__pycache__", ".*cache"
            ),
        )
        return
    for name in filter(None, listed.decode().split("\0")):
        source = os.path.join(ROOT, name)
        if os.path.isfile(source):
            target = os.path.join(destination, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(source, target)


@pytest.mark.integration
def test_readme_tour_runs_on_a_fresh_clone(tmp_path):
    clone = tmp_path / "kerasbert"
    fresh_clone(clone)
    assert not (tmp_path / "shared").exists()
    env = environment(tmp_path, root=str(clone))
    tour = code_blocks(doc_section("tour"), ("bash", "python"))
    assert [lang for lang, _ in tour].count("bash") >= 2
    for lang, code in tour:
        if lang == "python":
            run_example(code, tmp_path, cwd=clone, env=env)
            continue
        for command in shell_commands(code):
            result = subprocess.run(
                ["bash", "-c", fast(command)],
                cwd=clone,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
            if "kerasbert.predict" in command:  # label, probability, text
                rows = [line.split("\t") for line in result.stdout.splitlines()]
                assert len(rows) == 2
                assert {row[0] for row in rows} <= {"joy", "sadness"}
                assert all(0.5 <= float(row[1]) <= 1 for row in rows)
    # What each step leaves behind, where the next step looks for it.
    for path in (
        "runs/tiny/summary.json",
        "runs/emotion/model.keras",
        "runs/emotion-adapted/classifier/model.keras",
        "exported/emotion/saved_model.pb",
        "hf/tiny/model.safetensors",
    ):
        assert (clone / path).exists(), path
