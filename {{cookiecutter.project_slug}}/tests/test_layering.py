"""The package's import layering, read from the source with `ast`: every import counts, module-level, inside a
function, or under `if TYPE_CHECKING:` (an annotation still ties two modules together).

    core <- data, modeling <- config <- engine <- stages <- students <- kaggle <- cli

A module imports from its own folder and the layers below, never upward; data and modeling are siblings that do
not import each other; a stage (train, predict, cv...) never imports another stage: what several stages run lives
in engine/, and what follows a stage (the CV summary after train or predict) is sequenced by cli. And no cycle, at
any level, inside a folder included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import {{ cookiecutter.package_name }} as package

ROOT = Path(package.__file__).parent
PKG = ROOT.name
# Rank of each layer; a module may import modules of a lower rank, or of its own folder.
LAYERS = {"core": 0, "data": 1, "modeling": 1, "config": 2, "engine": 3, "stages": 4, "students": 5, "kaggle": 6,
          "cli": 7}  # fmt: skip
FOLDERS = {"core", "data", "modeling", "engine", "students", "kaggle"}


def layer(module: str) -> str:
    """'core.runs' -> 'core'; 'config' -> 'config'; 'train' -> 'stages'; 'cli' and '__main__' -> 'cli'."""
    head = module.split(".")[0]
    if head in ("cli", "__main__"):
        return "cli"
    return head if head in LAYERS else "stages"


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name (relative to the package) -> file; a package's __init__ under the package's name."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            found[name] = path
    return found


def imports(path: Path, root: Path, known: set[str]) -> set[str]:
    """The package modules that the file at `path` imports, wherever the import stands."""
    here = path.relative_to(root).with_suffix("").parts
    package_parts = list(here[:-1])  # the package a module (or an __init__) sits in
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.removeprefix(PKG + ".") for a in node.names if a.name.startswith(PKG + ".")}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith(PKG + "."):
                    continue
                base = node.module.removeprefix(PKG + ".").split(".")
            else:
                up = package_parts[: len(package_parts) - (node.level - 1)]
                base = [*up, *(node.module.split(".") if node.module else [])]
            for a in node.names:  # `from . import train` names a module; `from .cv import summarize` a name in one
                child = ".".join([*base, a.name])
                found.add(child if child in known else ".".join(base))
    return {m for m in found if m in known}


def graph(root: Path) -> dict[str, set[str]]:
    mods = modules(root)
    return {m: imports(p, root, set(mods)) - {m} for m, p in mods.items()}


def violations(root: Path) -> list[str]:
    bad = []
    for module, targets in graph(root).items():
        mine = layer(module)
        for imported in sorted(targets):
            theirs = layer(imported)
            if module.split(".")[0] == imported.split(".")[0] and mine in FOLDERS:
                continue  # within one folder: only a cycle is wrong (below)
            if mine == theirs == "stages":
                bad.append(f"stage {module} imports stage {imported}")
            elif LAYERS[theirs] > LAYERS[mine] or (LAYERS[theirs] == LAYERS[mine] and mine != theirs):
                bad.append(f"{module} ({mine}) imports {imported} ({theirs})")
    return bad


def cycles(root: Path) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan), each sorted."""
    g = graph(root)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_upward_and_no_stage_imports_a_stage():
    assert violations(ROOT) == []


def test_no_import_cycle():
    assert cycles(ROOT) == []


def test_every_folder_is_in_a_known_layer():
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == FOLDERS


def _copy_with(tmp_path: Path, module: str, line: str) -> Path:
    copy = tmp_path / PKG
    for path in ROOT.rglob("*.py"):
        target = copy / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (copy / module).write_text((copy / module).read_text() + "\n" + line)
    return copy


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("core/runs.py", "from ..config import Config\n"),  # core imports nothing above it
        ("data/tables.py", "from ..modeling import metrics\n"),  # siblings stay independent
        ("modeling/losses.py", "from ..engine.fold import supervised_step\n"),  # a part importing the engine
        ("data/folds.py", "from ..config import load\n"),  # data below config
        ("engine/fold.py", "from ..train import train_one_fold\n"),  # the engine below the stages
        ("train.py", "from .students import pseudo\n"),  # a stage importing the loops built on it
        ("students/pseudo.py", "from ..kaggle import api\n"),
        ("cv.py", "def f():\n    from .cli import main\n"),  # lazy imports count too
        ("train.py", "def f():\n    from .cv import summarize\n"),  # a stage importing a stage, lazily
        ("predict.py", "from . import export\n"),  # `from . import <stage>`
        ("config.py", "if TYPE_CHECKING:\n    from .engine.fold import FoldSetup\n"),  # type-only imports count
    ],
)
def test_an_upward_or_sideways_import_fails_the_check(tmp_path, module, line):
    assert len(violations(_copy_with(tmp_path, module, line))) == 1


def test_a_cycle_inside_a_folder_fails_the_check(tmp_path):
    copy = _copy_with(tmp_path, "data/tables.py", "if TYPE_CHECKING:\n    from .problem import Problem\n")
    assert violations(copy) == []  # within data/: allowed by the layers, but it closes a loop
    assert any({"data.problem", "data.tables"} <= set(group) for group in cycles(copy))
