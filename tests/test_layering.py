"""The rooms of ../shared/DESIGN.md, checked from the imports each file makes (read, not run)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("drn", "flows", "serving", "stack", "drn_cli", "benchmarks", "tests")
# Each outside system is touched in one module: (package, the only module of the project that may import it).
ADAPTERS = {"mlflow": "drn/registry.py", "sqlalchemy": "drn/logstore.py"}
FORBIDDEN = {"drn": {"prefect", "fastapi", "httpx", "uvicorn", "starlette", "flows", "serving", "stack", "drn_cli"},
             "flows": {"serving", "fastapi", "uvicorn"},
             "serving": {"flows", "prefect"}}


def imported(path: Path) -> set[str]:
    """Top-level package names `path` imports, wherever in the file (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def sources() -> dict[str, set[str]]:
    return {str(p.relative_to(REPO)): imported(p) for room in ROOMS for p in (REPO / room).rglob("*.py")}


def test_the_check_reads_imports_inside_functions_too(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os.path\ndef f():\n    from prefect import flow\n    import mlflow.tracking\n")
    assert imported(module) == {"os", "prefect", "mlflow"}


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_nothing_it_must_not(room):
    found = {path: sorted(names & FORBIDDEN[room]) for path, names in sources().items()
             if path.startswith(room + "/") and names & FORBIDDEN[room]}
    assert not found


@pytest.mark.parametrize("package", sorted(ADAPTERS))
def test_an_outside_system_is_imported_by_its_adapter_only(package):
    users = {path for path, names in sources().items() if package in names and not path.startswith("tests/")}
    assert users == {ADAPTERS[package]}
