"""Runs every notebooks/*.ipynb top to bottom in short mode.

Each notebook executes in a fresh `python3` kernel (the kernel spec that
ipykernel installs) with `KERASBERT_NOTEBOOK_SHORT=1`, in a temporary
working directory and with a temporary kerasbert cache, so nothing is
written into the repository or the user's cache. Any cell error fails the
test. Outputs are not compared: they change with versions and hardware.

`python tests/test_notebooks.py [NAME.ipynb ...]` executes the notebooks the
same way and writes them back with their outputs (progress bars collapsed to
their final state, TensorFlow's log lines and colour codes dropped): how the
committed outputs are made.
"""

import os
import re
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = (
    sorted(n for n in os.listdir(NOTEBOOK_DIR) if n.endswith(".ipynb"))
    if os.path.isdir(NOTEBOOK_DIR)
    else []
)
CELL_TIMEOUT_S = 600


def execute(path, workdir, cache_dir):
    """Executes the notebook at `path` in `workdir`; returns the notebook.

    Raises nbclient's CellExecutionError on the first failing cell.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # The kernel inherits this process's environment: PYTHONPATH points it
    # at the kerasbert under test (a worktree, or the editable install).
    env = dict(
        os.environ,
        KERASBERT_NOTEBOOK_SHORT="1",
        KERASBERT_CACHE=cache_dir,
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p
    )
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": workdir}},
    )
    client.execute(env=env)
    return nb


# Noise kept out of the committed outputs: TensorFlow's C++ and Python info
# logs (machine-specific) and ANSI colour codes.
_NOISE = re.compile(
    r"^([IWE]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages "
    r"before absl|INFO:tensorflow:)"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _final_text(text):
    """What a terminal shows after the carriage returns and backspaces of
    a progress bar: each line's last state."""
    lines = []
    for line in text.split("\n"):
        screen, cursor = [], 0
        for ch in line:
            if ch == "\r":
                cursor = 0
            elif ch == "\b":
                cursor = max(0, cursor - 1)
            elif cursor < len(screen):
                screen[cursor] = ch
                cursor += 1
            else:
                screen.append(ch)
                cursor += 1
        line = _ANSI.sub("", "".join(screen)).rstrip()
        if not _NOISE.match(line):
            lines.append(line)
    return "\n".join(lines)


def _clean_outputs(nb):
    """Joins consecutive stream outputs and collapses progress bars."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        merged = []
        for output in cell.outputs:
            last = merged[-1] if merged else None
            if (
                output.output_type == "stream"
                and last is not None
                and last.output_type == "stream"
                and last.name == output.name
            ):
                last.text += output.text
            else:
                merged.append(output)
        for output in merged:
            if output.output_type == "stream":
                output.text = _final_text(output.text)
        cell.outputs = [
            o for o in merged if o.output_type != "stream" or o.text.strip()
        ]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
    execute(
        os.path.join(NOTEBOOK_DIR, name), str(tmp_path), str(tmp_path / "cache")
    )


def test_notebooks_exist():
    assert {
        "01_pretrain_from_scratch.ipynb",
        "02_finetune_classification.ipynb",
        "03_korean_pretraining.ipynb",
    } <= set(NOTEBOOKS)


def refresh(names):
    """Executes notebooks and saves them with cleaned outputs."""
    import nbformat

    for name in names or NOTEBOOKS:
        path = os.path.join(NOTEBOOK_DIR, os.path.basename(name))
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as workdir:
            nb = execute(path, workdir, os.path.join(workdir, "cache"))
        _clean_outputs(nb)
        nbformat.write(nb, path)
        print(
            f"{name}: {time.perf_counter() - start:.0f} s, "
            f"{os.path.getsize(path):,} bytes"
        )


if __name__ == "__main__":
    refresh(sys.argv[1:])
