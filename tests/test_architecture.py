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


#: the edges from a lower layer to a higher one that docs/architecture.md names (each lazy);
#: layers from the base up: data, engine, pipeline / analysis / plots / inference
UPWARD_ALLOWED = {
    ("ageest.engine.grids", "ageest.analysis.comparisons"),  # `ageest run`'s summary table
    ("ageest.engine.grids", "ageest.pipeline.artefacts"),
    ("ageest.data.prepare", "ageest.pipeline.artefacts"),  # `ageest data`'s face grid
    ("ageest.data.prepare", "ageest.plots"),
    ("ageest.data.benchmark", "ageest.engine.models"),  # a benchmark times a model step
    ("ageest.official", "ageest.engine.models"),  # check_code reads the weights' name
}
_RANK = {"data": 1, "engine": 2, "pipeline": 3, "analysis": 3, "plots": 3, "inference": 3}


def _layer(module: str) -> int:
    parts = module.split(".")
    return _RANK.get(parts[1], 0) if len(parts) > 1 else 0


def test_the_science_imports_nothing_else_and_layers_point_down():
    graph = import_graph()
    assert graph["ageest.losses"] == set() and graph["ageest.metrics"] == set()
    upward = {(m, d) for m, deps in graph.items() for d in deps
              if _layer(d) > _layer(m) and _layer(m) > 0}
    base_up = {(m, d) for m, deps in graph.items() for d in deps
               if _layer(m) == 0 and _layer(d) > 0 and m not in ("ageest.cli", "ageest.official")}
    assert upward - UPWARD_ALLOWED == set(), "import from a higher layer; see docs/architecture.md"
    assert base_up == set(), f"a base module imports a layer: {sorted(base_up)}"
