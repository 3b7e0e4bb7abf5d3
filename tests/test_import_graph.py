"""The package's shape: no import cycle through the Keras front end, no oversized Keras front-end module.

The import graph is read statically (``ast``), every ``import`` counted wherever it stands, inside functions
too: a lazy import that closes a cycle is still a cycle, only hidden from the interpreter.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "weightzip"
MAX_KERAS_MODULE_LINES = 300


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(node, module: str, is_package: bool, modules) -> list[str]:
    """The weightzip modules an import statement names: the submodule itself when it names one."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".")
            anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    found = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_imported(node, module, path.name == "__init__.py", modules))
        edges.discard(module)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_sees_a_cycle_closed_by_a_lazy_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    lazy = ast.parse("def f():\n    from weightzip.keras import _rewrite\n")
    (node,) = [n for n in ast.walk(lazy) if isinstance(n, ast.ImportFrom)]
    modules = {"weightzip.keras": None, "weightzip.keras._rewrite": None}
    assert _imported(node, "weightzip.keras.x", False, modules) == ["weightzip.keras._rewrite"]


def test_the_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert "weightzip.keras._rewrite" in graph and "weightzip.torch.palettized" in graph, sorted(graph)[:10]
    assert cycles(graph) == []



def test_no_keras_front_end_module_exceeds_the_line_limit():
    lengths = {str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
               for path in sorted((PACKAGE / "keras").rglob("*.py"))}
    assert len(lengths) > 20, lengths
    assert {name: lines for name, lines in lengths.items() if lines > MAX_KERAS_MODULE_LINES} == {}
