"""No import cycles in the ``ferrotune`` package.

The graph is read from the source, not from ``sys.modules``: every ``import`` and ``from ...
import`` of a ferrotune module anywhere in a file (at the top, inside functions, under
``TYPE_CHECKING``), relative imports resolved. A cycle, even one that works today because one
side imports late, is a design knot: it is reported as ``a -> b -> a``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "ferrotune"
ROOT = PACKAGE.name


def module_names() -> dict[str, Path]:
    """Every module of the package (``ferrotune.data.prep``, ...) and its source file."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def extension_names() -> set[str]:
    """Compiled modules (``ferrotune._native``): nodes that import nothing of ours."""
    return {
        ".".join((*path.relative_to(PACKAGE.parent).parts[:-1], path.name.split(".")[0]))
        for pattern in ("*.so", "*.pyd", "*.pyi")
        for path in PACKAGE.rglob(pattern)
    }


def known(name: str, modules: set[str]) -> str | None:
    """``name`` if it is a module of ours, else its nearest enclosing one (for an attribute)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The ferrotune modules ``module`` (whose source is ``path``) imports, anywhere in it."""
    source = path.read_text(encoding="utf-8")
    return imports_in(module, source, modules, is_package=path.name == "__init__.py")


def imports_in(module: str, source: str, modules: set[str], *, is_package: bool) -> set[str]:
    """The ferrotune modules the source of ``module`` imports (``is_package``: an __init__)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # `from . import x` in a package's __init__ is the package itself; in a module,
                # its parent. Each further dot climbs one package.
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            # `from a import b`: the module a.b when it is one, else a (b is its attribute).
            names = [f"{target}.{alias.name}" for alias in node.names if alias.name != "*"]
            names = [name if name in modules else target for name in names] or [target]
        else:
            continue
        for name in names:
            if name == ROOT or name.startswith(ROOT + "."):
                target = known(name, modules)
                if target is not None and target != module:
                    found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    sources = module_names()
    modules = set(sources) | extension_names()
    graph = {name: imports_of(name, path, modules) for name, path in sources.items()}
    for name in modules - set(sources):
        graph[name] = set()
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle ``[a, b, ..., a]`` of ``graph``, or ``None``."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_every_kind_of_import():
    """Imports at the top, inside functions, under TYPE_CHECKING and relative ones are all
    read, so that a cycle cannot hide from the check."""
    graph = import_graph()
    assert "ferrotune.errors" in graph["ferrotune"]  # top level
    assert "ferrotune._native" in graph["ferrotune.data.prep"]  # `from ferrotune import _native`
    assert "ferrotune.data.shards" in graph["ferrotune.data"]  # in a function, TYPE_CHECKING
    assert "ferrotune.train.run" in graph["ferrotune.train"]  # TYPE_CHECKING
    modules = set(graph)
    source = (
        "from . import prep\n"
        "from .manifest import read_manifest\n"
        "from .. import errors\n"
        "from ..bench import cases\n"
        "def f():\n"
        "    import ferrotune.train.run as run\n"
        "    from ferrotune.data import prep_pt\n"
    )
    as_module = imports_in("ferrotune.data.command", source, modules, is_package=False)
    assert as_module == {
        "ferrotune.data.prep", "ferrotune.data.manifest", "ferrotune.errors",
        "ferrotune.bench.cases", "ferrotune.train.run", "ferrotune.data",
    }  # fmt: skip
    as_package = imports_in("ferrotune.data", "from . import prep\nfrom .. import stages\n",
                            modules, is_package=True)  # fmt: skip
    assert as_package == {"ferrotune.data.prep", "ferrotune.stages"}


def test_find_cycle_reports_the_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
