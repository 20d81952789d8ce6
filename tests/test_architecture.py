"""The package's shape, checked by parsing its source: no import circle between modules, and no
function longer than ~80 lines of code (its docstring, where the numpydoc equation, parameters
and doctests live, not counted) outside the synthetic-data generator."""

from __future__ import annotations

import ast
from pathlib import Path

import ageest

PACKAGE = Path(ageest.__file__).parent
MAX_FUNCTION_LINES = 80
#: drawing code of the synthetic faces: long straight-line geometry, not logic
LONG_ALLOWED = {"data/synthetic.py"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("ageest", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the ageest modules it imports anywhere in its body (function-level imports
    count: a lazy import still ties the two modules together)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None (iterative three-colour DFS)."""
    colour = dict.fromkeys(graph, 0)
    for root in sorted(graph):
        if colour[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child):] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` to the end, less the docstring's."""
    n = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
            first.value.value, str):
        n -= first.end_lineno - first.lineno + 1
    return n


def test_code_lines_leaves_out_the_docstring():
    fn = ast.parse('def f():\n    """doc\n\n    more"""\n    return 1\n').body[0]
    assert code_lines(fn) == 2


def test_find_cycle_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert "ageest.engine.run" in graph["ageest.engine.grids"]  # the parser sees real edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_train_and_run_do_not_import_the_grid_runner():
    graph = import_graph()
    assert "ageest.engine.grids" not in graph["ageest.engine.train"] | graph["ageest.engine.run"]


def test_no_function_over_80_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in LONG_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = code_lines(node)
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "split these functions:\n" + "\n".join(long)


def test_every_module_is_in_the_architecture_map():
    """docs/architecture.md names every module of the package in its table (a row per module,
    or a row naming several): a new module without its row fails here."""
    import re

    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| `ageest")]
    named = {m for row in rows for m in re.findall(r"`(ageest(?:\.\w+)*)`", row.split("|")[1])}
    modules = {name for name, path in _modules().items()
               if path.name not in ("__init__.py", "__main__.py")}
    assert modules - named == set(), f"add a row for {sorted(modules - named)}"
    assert named - set(_modules()) == set(), f"rows name no module: {sorted(named - set(_modules()))}"


#: the layers, each folder its own rank from the base up: a module imports only modules of a
#: lower rank or its own folder (no sideways imports: two folders never share a rank). The base
#: (rank 0) is the top-level modules: the science (losses, metrics), files, paths, parameters,
#: the official record, the published numbers; cli (the entry point) sits above everything.
RANK = {"data": 1, "engine": 2, "analysis": 3, "plots": 4, "pipeline": 5, "inference": 6,
        "commands": 7}
#: imports against the ranks, each named with why in docs/architecture.md ("Allowed
#: exceptions"); both are lazy, inside one function
ALLOWED = {
    ("ageest.data.benchmark", "ageest.engine.models"),  # a data-speed benchmark times a model
    ("ageest.official", "ageest.engine.models"),  # check_code reads the weights' file name
}


def _layer(module: str) -> int:
    parts = module.split(".")
    if parts[1:] == ["__main__"]:  # `python -m ageest`, which calls cli
        return max(RANK.values()) + 2
    if parts[1:] == ["cli"]:  # the entry point, above every layer
        return max(RANK.values()) + 1
    return RANK.get(parts[1], 0) if len(parts) > 2 else 0


def test_every_folder_has_a_rank():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders - {"resources"} == set(RANK), "give the new folder a rank of its own"


def test_the_science_imports_nothing_else_and_layers_point_strictly_down():
    graph = import_graph()
    assert graph["ageest.losses"] == set() and graph["ageest.metrics"] == set()
    against = {(m, d) for m, deps in graph.items() for d in deps
               if _layer(d) >= _layer(m) and m.split(".")[:2] != d.split(".")[:2]
               and not (_layer(m) == _layer(d) == 0)}
    assert against - ALLOWED == set(), ("an import from the same or a higher layer; see "
                                        "docs/architecture.md: " + str(sorted(against - ALLOWED)))
    assert ALLOWED <= against, f"an allowed exception is gone: {sorted(ALLOWED - against)}"


def test_the_allowed_exceptions_are_explained_in_the_architecture_map():
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = doc.split("## Allowed exceptions", 1)[1] if "## Allowed exceptions" in doc else ""
    for low, high in ALLOWED:
        assert f"`{low}` → `{high}`" in section, (low, high)
