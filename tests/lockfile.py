"""The generated project's `requirements.lock`: the exact versions of every package its `make setup` installs, as this
environment (the one the template's tests run the generated suites in) holds them.

    python tests/lockfile.py      (or `make lock` here) rewrites {{cookiecutter.project_slug}}/requirements.lock

The packages are the generated pyproject's dependencies and its `dev` extra, and everything they require in turn,
each marker evaluated for this interpreter, read from the installed packages' metadata (no network, no resolver)."""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

import jinja2
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "{{cookiecutter.project_slug}}"
LOCK = TEMPLATE / "requirements.lock"
EXTRAS = ("dev",)  # what `make setup` installs: -e ".[dev]"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")


def project_requirements() -> list[Requirement]:
    """The generated pyproject's dependencies and the extras `make setup` installs (the file rendered with
    placeholder answers: its dependency lists hold no Jinja)."""
    import tomllib  # Python 3.11+

    text = jinja2.Template((TEMPLATE / "pyproject.toml").read_text(encoding="utf-8")).render(
        cookiecutter={"project_slug": "p", "package_name": "p", "competition_name": "c", "author": "a"}
    )
    project = tomllib.loads(text)["project"]
    extras = project.get("optional-dependencies", {})
    return [Requirement(r) for r in [*project["dependencies"], *(r for e in EXTRAS for r in extras.get(e, []))]]


def closure(requirements: list[Requirement]) -> dict[str, md.Distribution]:
    """Every installed distribution `requirements` need, by canonical name (markers evaluated for this interpreter)."""
    found: dict[str, md.Distribution] = {}
    walked: set[tuple[str, frozenset[str]]] = set()
    todo = [(r, "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in walked:
            continue
        walked.add((name, frozenset(req.extras)))
        if name not in found:
            try:
                found[name] = md.distribution(req.name)
            except md.PackageNotFoundError:
                raise SystemExit(f"{req.name} (required as {req}) is not installed: nothing to lock it to") from None
        for text in found[name].requires or []:
            sub = Requirement(text)
            for wanted in req.extras or {""}:
                todo.append((sub, wanted))
    return found


def min_python(dists: dict[str, md.Distribution]) -> str:
    """The oldest Python 3 minor release every locked version supports (their Requires-Python)."""
    specs = [SpecifierSet(d.metadata.get("Requires-Python") or "") for d in dists.values()]
    for minor in range(8, 30):
        if all(spec.contains(f"3.{minor}.0", prereleases=True) or not str(spec) for spec in specs):
            return f"3.{minor}"
    raise SystemExit("no Python 3 release satisfies every locked package's Requires-Python")


def lock_text(dists: dict[str, md.Distribution]) -> str:
    version = ".".join(map(str, sys.version_info[:2]))
    lines = [
        "# The exact versions the template's tests ran this project with (Python "
        f"{version}, {sys.platform}): a pip constraints file.",
        "# `make setup` installs with it (pip install -c requirements.lock ...); `make setup LOCK=` installs without.",
        "# `make lock` rewrites it from .venv (pip freeze, this project left out). These versions need Python >= "
        f"{min_python(dists)}.",
        "# torch and torchvision: a CPU or CUDA build of the same version satisfies == (pip ignores the +cpu suffix).",
    ]
    pins = sorted((canonicalize_name(d.metadata["Name"]), f"{d.metadata['Name']}=={d.version}") for d in dists.values())
    return "\n".join([*lines, *(pin for _, pin in pins)]) + "\n"


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """{canonical name: version} of a lock file (comments and blank lines skipped; anything else must be a pin)."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line)
        if match is None:
            raise ValueError(f"{path}: not a name==version pin: {line!r}")
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def main() -> None:
    dists = closure(project_requirements())
    LOCK.write_text(lock_text(dists), encoding="utf-8")
    print(f"{LOCK.relative_to(ROOT)}: {len(dists)} packages")


if __name__ == "__main__":
    main()
