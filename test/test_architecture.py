"""The import rules of docs/architecture.md, read from the source (every import statement, also
those inside functions): which package may import which, and no module circles in ``lens_model``."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lens_model", "lens_ros", "training", "recipes", "benchmarks")
# package -> the project packages it may import (itself always)
ALLOWED = {
    "lens_model": set(),
    "lens_ros": {"lens_model"},
    "training": {"lens_model"},
    "recipes": {"lens_model", "training"},
    "benchmarks": {"lens_model", "lens_ros", "training", "recipes"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES if (REPO / package).is_dir()
            for path in (REPO / package).rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, name, set(modules)) for name, path in modules.items()}


def test_packages_import_only_what_the_architecture_allows(graph):
    wrong = sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                   if target.split(".")[0] != module.split(".")[0]
                   and target.split(".")[0] not in ALLOWED[module.split(".")[0]])
    assert not wrong, wrong


def test_lens_model_has_no_import_circles(graph):
    inner = {m: {t for t in targets if t.startswith("lens_model")} for m, targets in graph.items()
             if m.startswith("lens_model")}
    circles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(inner.get(module, ())):
            if target == "lens_model":  # the package's lazy __init__ names its modules
                continue
            if state.get(target) == "open":
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(inner):
        if module not in state:
            visit(module, [module])
    assert not circles, circles


def test_the_model_is_kept_apart_from_its_predictor_and_its_files(graph):
    """SAM 2's layout: the module knows neither how images become results nor how folders are read."""
    assert not graph["lens_model.modeling"] & {"lens_model.predictor", "lens_model.checkpoints", "lens_model.hub",
                                               "lens_model.released", "lens_model.cli"}
