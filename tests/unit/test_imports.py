"""Every import of a project name resolves, including the ones inside functions.

Many modules import lazily (heavy libraries, optional extras), so a renamed or moved name only fails when that
function runs, perhaps minutes into a job. This walks every `from <project module> import name` in the product,
bench and tests, and checks the module imports and has the name.
"""

from __future__ import annotations

import ast
import importlib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("producers", "consumers", "streams", "inference", "retrain", "schemas", "deploy", "bench", "tests")


@cache
def project_imports() -> tuple[tuple[str, int, str, str], ...]:
    """(file, line, module, name) of every absolute import of a project module (parsed once per run)."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    if node.module.split(".")[0] in PACKAGES:
                        rel = str(path.relative_to(ROOT))
                        found += [(rel, node.lineno, node.module, alias.name) for alias in node.names]
    return tuple(found)


def resolves(module: str, name: str) -> bool:
    loaded = importlib.import_module(module)
    if name == "*" or hasattr(loaded, name):
        return True
    try:  # `from package import submodule`
        importlib.import_module(f"{module}.{name}")
    except ModuleNotFoundError:
        return False
    return True


def test_the_walk_finds_lazy_imports():
    found = project_imports()
    assert len(found) > 200
    # an import inside a function body, as the walk must see it
    assert any(f == "retrain/pipeline.py" and m == "retrain.sft" and n == "train_sft" for f, _, m, n in found)


def test_every_project_import_resolves():
    broken = [f"{f}:{line}: from {m} import {n}" for f, line, m, n in project_imports() if not resolves(m, n)]
    assert broken == []


# Who may import whom (README's layout): the services meet on topics, never in code.
ALLOWED = {
    "schemas": {"schemas"},
    "producers": {"schemas", "producers"},
    "consumers": {"schemas", "producers", "consumers"},
    "streams": {"schemas", "producers", "streams"},
    "inference": {"schemas", "producers", "inference"},
    "retrain": {"schemas", "producers", "retrain"},
}


def test_the_dependency_direction_holds():
    wrong = [
        f"{f}:{line}: from {m} import {n}"
        for f, line, m, n in project_imports()
        if f.split("/")[0] in ALLOWED and m.split(".")[0] not in ALLOWED[f.split("/")[0]]
    ]
    assert wrong == []


ROOMS = ("inference.gateway", "inference.worker", "inference.controller")


def test_the_inference_processes_share_only_the_top_modules():
    def room(module: str) -> str | None:
        return next((r for r in ROOMS if module == r or module.startswith(r + ".")), None)

    wrong = [
        f"{f}:{line}: from {m} import {n}"
        for f, line, m, n in project_imports()
        if f.startswith("inference/") and room(m) not in (None, room(f[:-3].replace("/", ".")))
    ]
    assert wrong == []


def test_tests_and_benchmarks_do_not_lean_on_each_other():
    """What both need (a sandbox stack, simulated users) is product code in deploy/; a bench's own test is the
    one exception."""
    wrong = [
        f"{f}:{line}: from {m} import {n}"
        for f, line, m, n in project_imports()
        if (f.startswith("tests/") and m.startswith("bench") and not f.endswith("_bench.py"))
        or (f.startswith("bench/") and m.startswith("tests"))
    ]
    assert wrong == []
