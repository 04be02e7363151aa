"""The rooms of ../shared/DESIGN.md, checked from the imports each file makes (read, not run)."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
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


PRODUCT = ("drn", "flows", "serving", "stack", "drn_cli")
# Declared and used, but never imported by name: uvicorn picks up its HTTP parser, SQLAlchemy its PostgreSQL driver.
USED_WITHOUT_IMPORT = {"httptools", "psycopg"}


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=~!\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def distributions(modules: set[str]) -> set[str]:
    """The installed distributions that provide the third-party `modules` (the first named, for namespace packages)."""
    provided = importlib.metadata.packages_distributions()
    third_party = {m for m in modules if m not in sys.stdlib_module_names and m not in (*ROOMS, *PRODUCT)}
    missing = {m for m in third_party if m not in provided}
    assert not missing, f"imported but not installed: {missing}"
    names = {provided[m][0].lower().replace("_", "-") for m in third_party}
    # mlflow's package is shared by three distributions; the first found may be one that mlflow depends on
    return {"mlflow" if name.startswith("mlflow") else name for name in names}


def test_the_dependency_list_says_exactly_what_is_imported():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = requirement_names(project["dependencies"])
    extras = {name: requirement_names(reqs) for name, reqs in project["optional-dependencies"].items()}
    found = sources()
    product = distributions({m for path, names in found.items() if path.split("/")[0] in PRODUCT for m in names})
    assert product - extras["peers"] == runtime - USED_WITHOUT_IMPORT
    local = {Path(p).stem for p in found}  # the suite's and the benchmarks' own helper modules
    checks = distributions({m for path, names in found.items() if path.split("/")[0] in ("tests", "benchmarks")
                            for m in names} - local)
    assert checks <= runtime | extras["dev"] | extras["peers"]
