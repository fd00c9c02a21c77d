"""The direction of imports: collectors -> store -> base <- dashboard, with the `flowscope`
command importing them all; only the factory knows a backend; and no import is hidden inside
a function to break a cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("base", "store", "collectors", "dashboard", "demo_services", "flowscope")
# What each package may import of the project (itself included).
ALLOWED = {
    "base": {"base"},
    "store": {"base", "store"},
    "collectors": {"base", "store", "collectors"},
    "dashboard": {"base", "store", "dashboard"},
    "demo_services": {"demo_services"},  # somebody's services: OpenTelemetry and aiokafka only
    "flowscope": set(PROJECT),
}
BACKEND_USERS = {"store/factory.py"}  # besides the backend itself


def _imports(path: Path) -> Iterator[tuple[str, int, bool]]:
    """(module imported, line, whether inside a function) of a source file."""
    tree = ast.parse(path.read_text(), str(path))
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in inside
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno, id(node) in inside


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for path in _sources(package) for module, line, _ in _imports(path)
             if module.split(".")[0] in PROJECT
             and module.split(".")[0] not in ALLOWED[package]]
    assert not wrong, "\n".join(wrong)


def test_only_the_factory_opens_a_backend() -> None:
    wrong = [f"{path.relative_to(ROOT)}:{line}"
             for package in PROJECT for path in _sources(package)
             for module, line, _ in _imports(path)
             for backend in ("sqlite", "postgres")
             if module.startswith(f"store.{backend}")
             and not str(path.relative_to(ROOT)).startswith(f"store/{backend}/")
             and str(path.relative_to(ROOT)) not in BACKEND_USERS]
    assert not wrong, "\n".join(wrong)


def test_no_project_module_is_imported_inside_a_function() -> None:
    hidden = [f"{path.relative_to(ROOT)}:{line} imports {module}"
              for package in PROJECT for path in _sources(package)
              for module, line, local in _imports(path)
              if local and module.split(".")[0] in PROJECT]
    assert not hidden, "\n".join(hidden)
