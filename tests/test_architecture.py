"""The layout is the architecture: no import circle, no upward import between the packages.

The project's own modules (``components``, ``pipelines``, ``serving_image``, ``compile``) are
read with ``ast``, every import included (also those inside functions), and checked against
the layers below, lowest first. A module may import from its own package and from lower
layers only; the library packages of one layer are siblings and do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

SOURCES = ("components", "pipelines", "serving_image", "compile.py")
LIBRARY_PACKAGES = (
    "components.training",
    "components.imaging",
    "components.contract",
    "components.stand_ins",
    "components.rollout",
    "components.capacity",
)
LAYERS: tuple[tuple[str, ...], ...] = (
    ("serving_image",),
    ("components.vertex", "components.images", "components.files", "components.traffic"),
    ("components.runners",),
    LIBRARY_PACKAGES,
    # checked_build joins imaging and contract; release joins rollout, contract, stand_ins
    ("components.checked_build", "components.release"),
    ("components",),  # the component modules: components/<name>.py
    ("pipelines",),
    ("compile",),
)
"""Lowest first. ``serving_image`` ships alone in the image, so it imports nothing of ours."""


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for source in SOURCES:
        root = REPO_ROOT / source
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = project_modules()


def imports_of(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a import b`: b is a module of ours, or a name defined in a
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `from a.b import c` may name a function
                target = target.rpartition(".")[0]
            if target and target != name:
                imported.add(target)
    return imported


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def unit(name: str) -> tuple[int, str]:
    """The layer of a module and the unit (package or module) it belongs to there."""
    best = None
    for level, units in enumerate(LAYERS):
        for prefix in units:
            inside = name == prefix or name.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > len(best[1])):
                best = (level, prefix)
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    if best[1] == "components":  # each component module is its own unit
        return best[0], name
    return best


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        unit(name)


def test_no_module_imports_upward_or_a_sibling() -> None:
    wrong = []
    for name, imported in GRAPH.items():
        level, own = unit(name)
        for target in imported:
            target_level, target_unit = unit(target)
            if target_unit == own or (own == "components" and target == "components"):
                continue
            if target_level >= level:
                wrong.append(f"{name} (layer {level}) imports {target} (layer {target_level})")
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_circle() -> None:
    """Tarjan's strongly connected components: any with two or more modules is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in GRAPH[name]:
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            members = []
            while True:
                member = stack.pop()
                members.append(member)
                if member == name:
                    break
            if len(members) > 1:
                circles.append(sorted(members))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert not circles, f"import circles: {circles}"


def test_the_server_package_imports_only_itself_and_only_relatively() -> None:
    """The image holds ``server/`` alone: ``serving_image.server`` would not import there."""
    for name, path in MODULES.items():
        if not name.startswith("serving_image.server"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            ours = [n for n in names if n.split(".")[0] in ("serving_image", "components")]
            assert not ours, f"{name} imports {ours} absolutely"


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("components.contract.image", "components.runners.base"),
        ("components.runners.detect", "components.runners.process"),
        ("pipelines.vertex_jobs", "pipelines.train_to_serve"),
    ],
)
def test_the_walk_sees_imports_the_checks_rely_on(importer: str, imported: str) -> None:
    """The graph is read right: known imports, absolute and package-relative, are in it."""
    reachable = {importer}
    frontier = [importer]
    while frontier:
        for target in GRAPH[frontier.pop()] - reachable:
            reachable.add(target)
            frontier.append(target)
    assert imported in reachable
