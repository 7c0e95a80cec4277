"""Guards on the package's structure, read from the source (nothing is imported or run).

- The import graph of `mdm_jax` has no cycle, counting imports inside functions too (a cycle
  hidden behind a function-local import is still a cycle).
- Every PRNG purpose the code folds in (`rng.fold(key, "purpose", ...)`, `numpy_seed(seed,
  "purpose", ...)`) is listed in `rng.PURPOSES`, so the list stays complete.
"""

from __future__ import annotations

import ast
import fnmatch
import pathlib

from conftest import ROOT
from mdm_jax import rng

PACKAGE = pathlib.Path(ROOT) / "mdm_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _imported_modules(module: str, tree: ast.AST) -> set[str]:
    """The package modules `module` imports, anywhere in its source (with their parent packages,
    which Python runs first)."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import name` imports pkg.name when that is a module, else pkg itself.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            if t in MODULES:
                out |= {t} | (_ancestors(t) & MODULES.keys())
    # A package's own modules run as part of it: importing one's parent is not a cycle.
    return out - {module} - _ancestors(module)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_package_import_graph_has_no_cycle():
    graph = {m: _imported_modules(m, ast.parse(p.read_text())) for m, p in MODULES.items()}
    assert len(graph) > 30 and "mdm_jax.runs" in graph["mdm_jax.likelihood"]  # the graph is real
    assert _cycles(graph) == []


def test_cycle_detection_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _folded_purposes(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, purpose) of every fold / numpy_seed call; f-string purposes come back as globs."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or len(node.args) < 2:
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name not in ("fold", "numpy_seed"):
            continue
        arg = node.args[1]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            out.append((node.lineno, arg.value))
        elif isinstance(arg, ast.JoinedStr):
            glob = "".join(v.value if isinstance(v, ast.Constant) else "*" for v in arg.values)
            out.append((node.lineno, glob))
        else:
            out.append((node.lineno, f"<not a literal: {ast.unparse(arg)}>"))
    return out


def test_every_folded_purpose_is_documented():
    files = [p for p in PACKAGE.rglob("*.py") if p.name != "rng.py"]
    files += sorted((pathlib.Path(ROOT) / "benchmarks").glob("*.py"))
    used = {(str(p.relative_to(ROOT)), line, purpose) for p in files for line, purpose in _folded_purposes(p)}
    assert len(used) > 20  # the scan sees the code's folds
    missing = [u for u in sorted(used) if not fnmatch.filter(rng.PURPOSES, u[2])]
    assert not missing, f"purposes folded in but not listed in rng.PURPOSES: {missing}"
