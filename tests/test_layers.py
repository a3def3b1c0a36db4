"""Imports point one way: server, longform -> speech -> synth -> voices -> model -> runtime.

Read from the package's own source with `ast`, so a new upward import fails here
before a reviewer has to spot it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "wyoming_tts"

#: Module prefix -> layer; a module may import only from its own layer or lower ones.
LAYERS = {
    "wyoming_tts.__main__": 6,
    "wyoming_tts.health_check": 6,
    "wyoming_tts.server": 6,
    "wyoming_tts.longform": 6,
    "wyoming_tts.speech": 5,
    "wyoming_tts.info": 5,
    "wyoming_tts.discovery": 5,
    "wyoming_tts.docs": 5,
    "wyoming_tts.config": 5,
    "wyoming_tts.metrics": 5,
    "wyoming_tts.synth": 4,
    "wyoming_tts.voices": 3,
    "wyoming_tts.model": 2,
    "wyoming_tts.runtime": 1,
    "wyoming_tts.errors": 0,
    "wyoming_tts.audio": 0,
    "wyoming_tts": 0,
}


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(module: str, source: str, is_package: bool) -> set[str]:
    """Package modules that ``source`` imports, as absolute names."""
    found: set[str] = set()
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "wyoming_tts")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "wyoming_tts":
                continue
            found.add(target)
            # `from . import x` may name a submodule rather than an attribute.
            found.update(
                f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")
            )
    found.discard(module)
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def package_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        graph[name] = imports_of(name, path.read_text(), path.name == "__init__.py")
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer(target) > layer(module)
    ]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles among package modules (a package's own __init__ re-exports excepted)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if node.startswith(target + "."):
                continue  # a module importing its own package's __init__
            if state.get(target) == 1:
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_imports_point_down_only() -> None:
    graph = package_graph()
    assert len(graph) > 20  # the walk really saw the package
    assert upward_imports(graph) == []


def test_no_import_cycles() -> None:
    assert cycles(package_graph()) == []


def test_every_module_has_a_layer() -> None:
    for module in package_graph():
        assert layer(module) >= 0
    assert layer("wyoming_tts.server.handler") > layer("wyoming_tts.speech")


@pytest.mark.parametrize(
    ("module", "source", "upward"),
    [
        ("wyoming_tts.voices.pool", "from ..synth.engine import Synthesizer", True),
        ("wyoming_tts.runtime.scheduler", "from ..errors import Busy", False),
        ("wyoming_tts.model.vits", "import wyoming_tts.speech", True),
        ("wyoming_tts.speech", "from .synth import text", False),
    ],
)
def test_the_check_catches_an_upward_import(module: str, source: str, upward: bool) -> None:
    graph = {module: imports_of(module, source, is_package=False)}
    assert bool(upward_imports(graph)) is upward


def test_the_check_catches_a_cycle() -> None:
    graph = {"wyoming_tts.a": {"wyoming_tts.b"}, "wyoming_tts.b": {"wyoming_tts.a"}}
    assert cycles(graph) == [["wyoming_tts.a", "wyoming_tts.b", "wyoming_tts.a"]]
