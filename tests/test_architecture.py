"""The layout draws the architecture: imports only go one way, privates stay private, slide backends
stand on `slides.base` alone.

The import graph is read from the source with `ast` (absolute ``persam_lib.`` imports and relative
ones, including imports inside functions), so a circle is found even where a lazy import hides it
at run time. Imports under ``if TYPE_CHECKING:`` never run; they are checked separately.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "persam_lib"
BACKENDS = ("openslide_reader", "tiled_tiff", "memory")


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root`` by dotted name (a package by its ``__init__.py``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST, type_checking: bool):
    """Every import statement under ``node``, in functions too; ``if TYPE_CHECKING:`` bodies only when asked."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif not type_checking and _is_type_checking(child):
            for branch in child.orelse:
                yield from _import_nodes(ast.Module(body=[branch], type_ignores=[]), type_checking)
        else:
            yield from _import_nodes(child, type_checking)


def imports_of(module: str, path: Path, modules: dict[str, Path], *, type_checking: bool = True) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every import statement anywhere in the file.

    ``from a.b import c`` names module ``a.b.c`` when that is a module of the package, else name
    ``c`` of ``a.b``; relative imports are resolved against the importing module's package.
    ``type_checking=False`` leaves out imports under ``if TYPE_CHECKING:``, which never run.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path)), type_checking):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append((submodule, None) if submodule in modules else (source, alias.name))
    return found


def import_graph(root: Path, *, type_checking: bool = False) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (third-party and standard-library imports dropped).

    By default the imports that run (at module level or inside functions); ``type_checking=True``
    adds those made only for type annotations.
    """
    modules = module_files(root)
    return {
        name: {target for target, _ in imports_of(name, path, modules, type_checking=type_checking) if target in modules and target != name}
        for name, path in modules.items()
    }


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each circle of the graph as a list of modules, the first repeated at the end (Tarjan's components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_one_circle(graph, set(component)) for component in components]


def _one_circle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest circle through the component's first module, staying inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    nxt.append(target)
        frontier = nxt
    raise AssertionError(f"no circle through {start} in {sorted(component)}")


def private_imports(root: Path) -> list[str]:
    """``module: from source import _name`` for every private name one module takes from another."""
    modules = module_files(root)
    found = []
    for name, path in modules.items():
        for source, imported in imports_of(name, path, modules):
            leaf = imported if imported is not None else source.rpartition(".")[2]
            if leaf.startswith("_") and not (leaf.startswith("__") and leaf.endswith("__")):
                found.append(f"{name}: from {source} import {imported}" if imported else f"{name}: import {source}")
    return found


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# --- the checks themselves can fail -------------------------------------------------------------------


def test_the_cycle_check_finds_a_circle_hidden_in_a_function_and_a_relative_import(tmp_path):
    """The old slides circle in miniature: reader imports the fast backend lazily, which imports reader back."""
    pkg = _write_package(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "slides/__init__.py": "",
            "slides/reader.py": "def open_slide():\n    from pkg.slides.tiled_tiff import TiledTiffReader\n",
            "slides/tiled_tiff.py": "from .reader import open_slide\n",
            "slides/tissue.py": "from pkg.slides import reader\n",
        },
    )
    assert import_cycles(import_graph(pkg)) == [["pkg.slides.reader", "pkg.slides.tiled_tiff", "pkg.slides.reader"]]


def test_an_import_only_for_type_annotations_is_no_runtime_circle_but_is_seen_when_asked(tmp_path):
    pkg = _write_package(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "extract.py": "from pkg import settings\n",
            "settings.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.extract import Config\nelse:\n    from pkg import store\n",
            "store.py": "",
        },
    )
    assert import_cycles(import_graph(pkg)) == [] and "pkg.store" in import_graph(pkg)["pkg.settings"]
    assert import_cycles(import_graph(pkg, type_checking=True)) == [["pkg.extract", "pkg.settings", "pkg.extract"]]


def test_the_private_import_check_finds_a_private_name_and_a_private_module(tmp_path):
    pkg = _write_package(
        tmp_path / "pkg",
        {
            "__init__.py": "from . import _hidden\n",
            "_hidden.py": "",
            "writer.py": "def _downsample():\n    pass\n",
            "reader.py": "from __future__ import annotations\n\ndef f():\n    from .writer import _downsample\n",
        },
    )
    assert sorted(private_imports(pkg)) == ["pkg.reader: from pkg.writer import _downsample", "pkg: import pkg._hidden"]


# --- the package ----------------------------------------------------------------------------------------


def test_persam_lib_has_no_import_circle():
    graph = import_graph(PACKAGE_ROOT)
    assert "persam_lib.slides.factory" in graph and graph["persam_lib.slides.factory"]  # the graph was read
    cycles = import_cycles(graph)
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_persam_lib_has_no_circle_even_through_imports_for_type_annotations():
    cycles = import_cycles(import_graph(PACKAGE_ROOT, type_checking=True))
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_a_private_name_from_another():
    assert private_imports(PACKAGE_ROOT) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_slides_backend_imports_only_slides_base(backend):
    modules = module_files(PACKAGE_ROOT)
    name = f"persam_lib.slides.{backend}"
    slides_imports = {target for target, _ in imports_of(name, modules[name], modules) if target.startswith("persam_lib.slides")}
    assert slides_imports == {"persam_lib.slides.base"}


def test_slides_base_imports_no_other_slides_module_and_the_factory_sits_above_every_backend():
    graph = import_graph(PACKAGE_ROOT)
    assert not {m for m in graph["persam_lib.slides.base"] if m.startswith("persam_lib.slides")}
    assert {f"persam_lib.slides.{b}" for b in ("openslide_reader", "tiled_tiff")} <= graph["persam_lib.slides.factory"]
    assert not any("persam_lib.slides.factory" in graph[f"persam_lib.slides.{b}"] for b in BACKENDS)
