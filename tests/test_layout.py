"""The package's layout shows its architecture: no import cycle (lazy imports count), modules of a readable
size, ``models/`` below the engine, consumers on the engine's interface only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deconvnet"
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package that ``name`` imports, at the top or inside a function (both count)."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                if f"{mod}.{a.name}" in known:  # ``from . import graph``: the submodule
                    out.add(f"{mod}.{a.name}")
                elif mod in known:  # ``from .core import X``, ``from .. import __version__``: that module
                    out.add(mod)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_lazy_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    src = "def f():\n    from . import b\n"
    tree_imports = {n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}
    assert tree_imports == {None}  # the finder reads function bodies too (ast.walk), as _imports does


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_models_never_import_the_engine():
    graph = import_graph()
    bad = {m: sorted(d for d in deps if d.startswith("deconvnet.engine"))
           for m, deps in graph.items() if m.startswith("deconvnet.models")}
    assert not any(bad.values()), bad


def test_consumers_use_the_engine_interface():
    """Scan, figures, atlas, explorer, analyses import the engine package (its facade and types), not one
    engine's internals (``engine.chain``, ``engine.graph``)."""
    graph = import_graph()
    offenders = {m: sorted(d for d in deps if d in ("deconvnet.engine.chain", "deconvnet.engine.graph"))
                 for m, deps in graph.items() if not m.startswith("deconvnet.engine")}
    # the resolution lesson walks VGG's own layers step by step: it may use the chain engine's steps
    offenders = {m: d for m, d in offenders.items() if d and not m.startswith("deconvnet.resolution")}
    assert not offenders, offenders


def test_no_module_over_500_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


MAX_FUNCTION_LINES = 100


def test_no_function_over_100_lines():
    long = {f"{name}.{node.name}": n
            for name, path in _modules().items() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES}
    assert not long, long


#: test files at the top of tests/ that test the repository rather than one module of the package
REPOSITORY_TESTS = {"test_layout.py", "test_packaging.py"}


def test_tests_mirror_the_package():
    """tests/ is laid out like the package: tests/<subpackage>/test_*.py for deconvnet/<subpackage>/ (tests/docs/
    for the docs site and notebooks), tests/test_<module>.py for deconvnet/<module>.py; every basename once
    (pytest imports test files by basename, without __init__.py)."""
    tests = Path(__file__).resolve().parent
    files = sorted(tests.rglob("test_*.py"))
    folders = {p.parent.name for p in files if p.parent != tests}
    assert folders <= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} | {"docs"}, folders
    top = {p.name for p in files if p.parent == tests} - REPOSITORY_TESTS
    modules = {f"test_{p.stem}.py" for p in PACKAGE.glob("*.py")}
    assert top <= modules, sorted(top - modules)
    names = [p.name for p in files]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
    assert not list(tests.rglob("__init__.py"))


#: other lanes' modules that still ask which kind of net they have; the lead replaces their reads at merge
#: (``explore/tiles.py``: ``net.can_show_stages``; ``scan.py``: ``net.deepest_index(layers)``) and empties this
_IS_CHAIN_PENDING: set[str] = set()


def test_no_consumer_asks_which_kind_of_net():
    """Only the engine and the models read ``Net.is_chain``: a consumer asks what it means (``net.pools()``,
    ``net.first_conv()``, ``net.can_show_stages``, ``Deconvnet.can_show_stages``), not which engine it has."""
    readers = set()
    for name, path in _modules().items():
        if name.startswith(("deconvnet.engine", "deconvnet.models")) or name in _IS_CHAIN_PENDING:
            continue
        if any(isinstance(node, ast.Attribute) and node.attr == "is_chain"
               for node in ast.walk(ast.parse(path.read_text()))):
            readers.add(name)
    assert not readers, sorted(readers)
