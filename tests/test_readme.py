"""README checks: code examples run, tables match the code.

`readme_section(name)` returns the text between `<!-- section:NAME -->` and
`<!-- /section:NAME -->`, so every section's example can get a test.
"""

import os
import re
import subprocess
import sys

import pytest

from kerasbert.config import SIZES, ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_section(name):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    match = re.search(rf"<!-- section:{re.escape(name)} -->\n(.*?)"
                      rf"<!-- /section:{re.escape(name)} -->", text, re.S)
    assert match, f"README.md has no section {name!r}"
    return match.group(1)


def python_blocks(section):
    return re.findall(r"```python\n(.*?)```", section, re.S)


def run_example(code, tmp_path):
    """Runs `code` in a fresh interpreter; returns its stdout lines.

    A subprocess (not exec) keeps the example's imports and dtype policy
    out of the test process and runs it the way a reader would.
    """
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT, os.environ.get("PYTHONPATH", "")]),
        KERASBERT_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                            env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def expected_output(code):
    """The trailing `# ...` comment lines: what the example prints."""
    lines = code.rstrip().splitlines()
    expected = []
    while lines and lines[-1].startswith("# "):
        expected.insert(0, lines.pop()[2:])
    return expected


@pytest.mark.parametrize("section", ["model", "data"])
def test_readme_python_example_runs(section, tmp_path):
    blocks = python_blocks(readme_section(section))
    assert blocks, f"section {section!r} has no python example"
    for code in blocks:
        stdout = run_example(code, tmp_path)
        expected = expected_output(code)
        if expected:
            assert stdout == expected


def test_readme_sizes_table_matches_config():
    rows = re.findall(r"^\| (\w+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$",
                      readme_section("model"), re.M)
    table = {name: tuple(map(int, values)) for name, *values in rows}
    want = {}
    for name in SIZES:
        c = ModelConfig.from_size(name)
        want[name] = (c.num_layers, c.hidden_dim, c.num_heads,
                      c.intermediate_dim)
    assert table == want
