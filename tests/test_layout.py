"""The package layout is the pipeline: imports point one way.

    modeling <- text <- data <- serving <- interop <- training <- commands

A package may import its own modules, earlier stages and the base modules
(errors, files, config); no library module imports a command (the top-level
`kerasbert/<name>.py` files run by `python -m`) or the flag helpers in
`cli.py`; and no import cycle exists, lazy (function-level) imports included.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "kerasbert"
STAGES = ["modeling", "text", "data", "serving", "interop", "training"]
BASE = {"errors", "files", "config"}


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path):
    """Every kerasbert module `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {
                a.name for a in node.names if a.name.startswith("kerasbert")
            }
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("kerasbert")
        ):
            for alias in node.names:  # `from kerasbert.x import module`
                sub = f"{node.module}.{alias.name}"
                found.add(
                    sub
                    if (PACKAGE.parent / sub.replace(".", "/"))
                    .with_suffix(".py")
                    .exists()
                    else node.module
                )
    return found


def graph():
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def kind(module):
    """('stage', i), ('base',), ('command',) or ('root',)."""
    parts = module.split(".")
    if len(parts) == 1:
        return ("root",)
    if parts[1] in STAGES:
        return ("stage", STAGES.index(parts[1]))
    if parts[1] in BASE:
        return ("base",)
    if parts[1] in ("cli", "__main__"):
        return ("cli",)
    return ("command",)


def test_stages_import_only_earlier_stages():
    bad = []
    for module, deps in graph().items():
        k = kind(module)
        if k[0] in ("command", "root"):
            continue
        for dep in deps:
            d = kind(dep)
            if d[0] in ("command", "cli") or (
                d[0] == "stage" and (k[0] != "stage" or d[1] > k[1])
            ):
                bad.append(f"{module} imports {dep}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    deps = graph()
    state = {}

    def visit(module, stack):
        state[module] = "open"
        for dep in sorted(deps.get(module, ())):
            if dep not in deps:
                continue
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError(" -> ".join(cycle))
            if dep not in state:
                visit(dep, [*stack, dep])
        state[module] = "done"

    for module in sorted(deps):
        if module not in state:
            visit(module, [module])


def test_every_command_is_runnable():
    for module, _ in graph().items():
        if kind(module) == ("command",):
            text = (PACKAGE / f"{module.split('.')[1]}.py").read_text()
            assert 'if __name__ == "__main__":' in text, module
