"""The package's layers (pyproject's import-linter contract), no import cycles, no hidden deferred imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parents[1] / "src" / "anydistill"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_import_linter_contracts_hold():
    """``lint-imports`` (installed beside this interpreter) keeps every contract in pyproject.toml."""
    script = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(script), "--no-cache", "--config", str(PYPROJECT)], capture_output=True, text=True,
                         cwd=PYPROJECT.parent, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    adj = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in adj:
        if root in index:
            continue
        work = [(root, iter(adj[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(adj[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph("anydistill")
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b"]]


def _deferred_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, guarded) of every import inside a function; guarded = inside a ``try`` that
    handles ImportError (an optional dependency) or with a comment on its line."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    out = []
    guarded_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            h.type is not None and "ImportError" in ast.unparse(h.type) for h in node.handlers
        ):
            for inner in node.body:
                guarded_lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Import | ast.ImportFrom):
                name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                commented = "#" in lines[node.lineno - 1]
                out.append((node.lineno, name or "", node.lineno in guarded_lines or commented))
    return out


def test_deferred_imports_only_for_optional_dependencies_and_the_cli():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for line, module, guarded in _deferred_imports(path):
            if rel == "cli.py" and module.startswith("anydistill"):
                continue  # the CLI's commands import their layers when run (see its docstring)
            if module.startswith("anydistill") or not guarded:
                bad.append(f"{rel}:{line} {module}")
    assert bad == []


def test_loading_a_student_for_prediction_does_not_import_lightning(tmp_path):
    """A fresh interpreter loads a depth checkpoint and predicts; Lightning must stay out of sys.modules."""
    from tiny_students import save_tiny_depth_student

    ckpt = save_tiny_depth_student(tmp_path / "student.ckpt")
    code = f"""
import sys, numpy as np
from anydistill.inference import Predictor, load_student
student = load_student({str(ckpt)!r})
pred = Predictor(student).predict([np.zeros((40, 50, 3), np.uint8)])[0]
assert pred.shape == (40, 50), pred.shape
print(sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
