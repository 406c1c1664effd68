"""The package's import graph, read from the source with `ast` (nothing imported): layers point one way
(cli -> features -> core -> utilities), no import cycles, and imports inside functions only where they
earn it (the CLI's lazy commands, or a dependency beyond numpy and click that some paths never need),
each with a one-line reason."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "haaqicli"

# Layer of each module, by longest matching prefix; a module may import its own layer or lower ones.
LAYERS = {"cli": 3, "features": 2, "core": 1, "utilities": 0}
LAYER_OF = {
    "haaqicli.cli": "cli", "haaqicli.__main__": "cli",  # `python -m haaqicli`: the command line
    # features: what is built on scoring (the Python API, CI, benchmarks, training and its data, reports)
    "haaqicli.api": "features", "haaqicli.ci": "features", "haaqicli.bench": "features",
    "haaqicli.training": "features", "haaqicli.data": "features", "haaqicli.output": "features",
    # core: file -> windows -> model or exact HAAQI -> rows
    "haaqicli.engine": "core", "haaqicli.scoring": "core", "haaqicli.audio": "core",
    "haaqicli.audiogram": "core", "haaqicli.models": "core", "haaqicli.reference": "core",
    "haaqicli.output.tables": "core",  # the rows' one schema: the core writes tables, reports read them
    "haaqicli.util": "utilities", "haaqicli": "utilities",
}
# Within core: the exact HAAQI stands alone (it must not need the neural models to parse a device).
FORBIDDEN = {"haaqicli.reference": ("haaqicli.models", "haaqicli.engine", "haaqicli.scoring")}
# Third-party modules every path needs anyway: importing them inside a function buys nothing.
LIGHT_THIRD_PARTY = {"numpy", "click"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (a haaqicli module, or a third-party/stdlib top-level name)
    line: int
    in_function: bool
    type_checking: bool
    has_reason: bool  # a comment on the import line or on the line above its block


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _lazy_exports() -> dict[str, dict[str, str]]:
    """Packages whose __init__ maps names to submodules (`_EXPORTS`, imported on first access):
    `from haaqicli.reference import compute_haaqi` imports `haaqicli.reference.haaqi`."""
    found = {}
    for module, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
                found[module] = {name: f"{module}.{sub}" for name, sub in ast.literal_eval(node.value).items()}
    return found


LAZY_EXPORTS = _lazy_exports()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    lazy = LAZY_EXPORTS.get(base, {})
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else lazy.get(alias.name, base)
            for alias in node.names]


def _imports(module: str) -> Iterator[Import]:
    source = MODULES[module].read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    in_function: set[int] = set()
    type_checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_checking.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        # the reason: a comment ending the import's first line, or the comment line above its block
        above = node.lineno - 2
        while above >= 0 and lines[above].strip().startswith(("import ", "from ")):
            above -= 1
        before = lines[above].strip() if above >= 0 else ""
        has_reason = "#" in lines[node.lineno - 1] or before.startswith("#") or (before.startswith("try:") and "#" in before)
        for target in _targets(module, node):
            yield Import(module, target, node.lineno, id(node) in in_function, id(node) in type_checking,
                         has_reason)


IMPORTS = [imp for module in sorted(MODULES) for imp in _imports(module)]


def _layer(module: str) -> str:
    prefix = max((p for p in LAYER_OF if module == p or module.startswith(p + ".")), key=len)
    return LAYER_OF[prefix]


def _internal(target: str) -> bool:
    return target == "haaqicli" or target.startswith("haaqicli.")


def test_every_module_has_a_layer() -> None:
    """A new module is placed on purpose: only the package itself falls back to the bare prefix."""
    unplaced = [m for m in MODULES if m != "haaqicli" and
                not any(m == p or m.startswith(p + ".") for p in LAYER_OF if p != "haaqicli")]
    assert unplaced == []


def test_no_module_imports_a_higher_layer() -> None:
    upward = [f"{i.module}:{i.line} ({_layer(i.module)}) imports {i.target} ({_layer(i.target)})"
              for i in IMPORTS if _internal(i.target) and LAYERS[_layer(i.target)] > LAYERS[_layer(i.module)]]
    assert upward == []


def test_forbidden_imports_within_a_layer() -> None:
    found = [f"{i.module}:{i.line} imports {i.target}" for i in IMPORTS
             for package, banned in FORBIDDEN.items()
             if (i.module == package or i.module.startswith(package + ".")) and i.target.startswith(banned)]
    assert found == []


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges)))

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    """Counting imports inside functions too: a cycle hidden by a function-level import is still one."""
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    for i in IMPORTS:
        if i.target in MODULES and i.target != i.module and not i.type_checking:
            # a package's __init__ importing its own submodules is not a cycle of the design
            if not (MODULES[i.module].name == "__init__.py" and i.target.startswith(i.module + ".")):
                edges[i.module].add(i.target)
    assert _cycles(edges) == []


def test_cycle_finder_finds_a_hidden_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _heavy_third_party(target: str) -> bool:
    root = target.split(".")[0]
    return root != "haaqicli" and root not in sys.stdlib_module_names and root not in LIGHT_THIRD_PARTY


def _dependency(target: str) -> str:
    """The name an import's cost goes by: the top-level package, but scipy's subpackages each
    (scipy.signal costs what scipy.fft does not)."""
    parts = target.split(".")
    return ".".join(parts[:2]) if parts[0] == "scipy" and len(parts) > 1 else parts[0]


def _heavy_dependencies() -> dict[str, frozenset[str]]:
    """Per haaqicli module, the dependencies beyond numpy and click that importing it pulls in (its
    module-level imports, transitively)."""
    top: dict[str, set[str]] = {module: set() for module in MODULES}
    for i in IMPORTS:
        if not i.in_function and not i.type_checking:
            top[i.module].add(i.target)
    pulled = {m: {_dependency(t) for t in targets if _heavy_third_party(t)} for m, targets in top.items()}
    changed = True
    while changed:
        changed = False
        for module, targets in top.items():
            more = set().union(*(pulled[t] for t in targets if t in pulled)) - pulled[module]
            if more:
                pulled[module] |= more
                changed = True
    return {module: frozenset(deps) for module, deps in pulled.items()}


HEAVY = _heavy_dependencies()
HEAVY_MODULES = {module for module, deps in HEAVY.items() if deps}


def _saves_something(i: Import) -> bool:
    """A function-level import earns its place when it defers a dependency the importing module does
    not already pull in at module level."""
    deferred = {_dependency(i.target)} if _heavy_third_party(i.target) else HEAVY.get(i.target, frozenset())
    return bool(deferred - HEAVY[i.module])


def _function_level_imports_outside_the_cli() -> list[Import]:
    return [i for i in IMPORTS if i.in_function and _layer(i.module) != "cli"]


def test_function_level_imports_only_for_heavy_dependencies() -> None:
    needless = [f"{i.module}:{i.line} imports {i.target} inside a function" for i in
                _function_level_imports_outside_the_cli() if not _saves_something(i)]
    assert needless == []


def _optional_extras() -> set[str]:
    """Import names of the optional extras (pyproject's [project.optional-dependencies], dev aside): a
    function-level import of one of those is its own reason, it exists only where that extra is installed."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    extras = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0] for extra, specs in extras.items() if extra != "dev"
             for spec in specs}
    return {name.replace("-", "_") for name in names}


OPTIONAL_EXTRAS = _optional_extras()


def test_function_level_imports_say_why() -> None:
    silent = [f"{i.module}:{i.line} ({i.target})" for i in _function_level_imports_outside_the_cli()
              if not i.has_reason and i.target.split(".")[0] not in OPTIONAL_EXTRAS]
    assert silent == []


def test_optional_extras_are_read_from_pyproject() -> None:
    assert {"mido", "music21", "distributed"} <= OPTIONAL_EXTRAS and "pytest" not in OPTIONAL_EXTRAS


@pytest.mark.parametrize("module", ["haaqicli.util.constants", "haaqicli.util.errors", "haaqicli.audiogram"])
def test_light_modules_are_light(module: str) -> None:
    assert module not in HEAVY_MODULES
