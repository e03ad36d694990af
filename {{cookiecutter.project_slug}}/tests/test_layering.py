"""The package's import layering: core <- data, modeling <- config and the stages <- students <- kaggle, cli.

A module may import from its own layer and the layers below; never upward (a module's runtime imports, lazy ones
inside functions included; `if TYPE_CHECKING:` imports are annotations only). data and modeling are siblings that
do not import each other, so either can change without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import {{ cookiecutter.package_name }} as package

ROOT = Path(package.__file__).parent
PKG = ROOT.name
# Rank of each layer; a module may import modules of a lower rank, or of its own folder.
LAYERS = {"core": 0, "data": 1, "modeling": 1, "stages": 2, "students": 3, "kaggle": 4, "cli": 5}


def layer(module: str) -> str:
    """'core.runs' -> 'core'; 'train' -> 'stages'; 'cli' and '__main__' -> 'cli'."""
    head = module.split(".")[0]
    if head == "__main__":
        return "cli"
    return head if head in LAYERS else "stages"


def runtime_imports(path: Path, root: Path) -> set[str]:
    """The package modules that the file at `path` imports at run time (dotted, relative to the package `root`)."""
    tree = ast.parse(path.read_text())
    here = path.relative_to(root).with_suffix("").parts
    type_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only or not isinstance(node, ast.ImportFrom | ast.Import):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name.removeprefix(PKG + ".") for a in node.names if a.name.startswith(PKG + ".")}
            continue
        if node.level == 0:
            if node.module and node.module.startswith(PKG + "."):
                found.add(node.module.removeprefix(PKG + "."))
            continue
        base = list(here[:-1])[: len(here) - node.level]  # the package `from .` (level 1) refers to, and up
        target = [*base, *(node.module.split(".") if node.module else [])]
        if node.module is None:  # from . import a, b: each name is a module of that package
            found |= {".".join([*target, a.name]) for a in node.names}
        else:
            found.add(".".join(target))
    return {m for m in found if m}


def violations(root: Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        if module.endswith("__init__"):
            continue
        mine = layer(module)
        for imported in sorted(runtime_imports(path, root)):
            theirs = layer(imported)
            same_folder = module.split(".")[0] == imported.split(".")[0]
            upward = LAYERS[theirs] > LAYERS[mine] or (LAYERS[theirs] == LAYERS[mine] and mine != theirs)
            if upward and not same_folder:
                bad.append(f"{module} ({mine}) imports {imported} ({theirs})")
    return bad


def test_no_module_imports_upward():
    assert violations(ROOT) == []


def test_every_module_is_in_a_known_layer():
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == {"core", "data", "modeling", "students", "kaggle"}


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("core/runs.py", "from ..config import Config\n"),  # core imports nothing above it
        ("data/tables.py", "from ..modeling import metrics\n"),  # siblings stay independent
        ("modeling/losses.py", "from ..train import supervised_step\n"),  # a part importing a stage
        ("train.py", "from .students import pseudo\n"),  # a stage importing the loops built on it
        ("students/pseudo.py", "from ..kaggle import api\n"),
        ("cv.py", "def f():\n    from .cli import main\n"),  # lazy imports count too
    ],
)
def test_an_upward_import_fails_the_check(tmp_path, module, line):
    copy = tmp_path / PKG
    for path in ROOT.rglob("*.py"):
        target = copy / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (copy / module).write_text((copy / module).read_text() + "\n" + line)
    assert len(violations(copy)) == 1
