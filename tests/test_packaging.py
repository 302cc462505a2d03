"""The package declares what it imports: every third-party module has a floor in pyproject."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules() -> set[str]:
    """Top-level names of every absolute import in the callflow package."""
    names: set[str] = set()
    for path in (ROOT / "callflow").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names) - {"callflow", "__future__"}


def _declared() -> dict[str, str]:
    """Every requirement of pyproject.toml (core and extras): normalized name -> text."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements.extend(extra)
    declared: dict[str, str] = {}
    for requirement in requirements:
        match = _NAME.match(requirement)
        assert match is not None, requirement
        declared.setdefault(_normalize(match.group()), requirement)
    return declared


def test_every_imported_distribution_is_declared_with_a_floor() -> None:
    """A module callflow imports itself is declared (not merely pulled in by another
    dependency), with a lower bound, so an install cannot resolve to an older release."""
    distributions = packages_distributions()
    declared = _declared()
    missing: list[str] = []
    for module in sorted(_imported_modules()):
        for distribution in distributions.get(module, [module]):
            requirement = declared.get(_normalize(distribution))
            if requirement is None or ">=" not in requirement:
                missing.append(f"{module} ({distribution}): {requirement or 'not declared'}")
    assert missing == []
