"""The layout's rules, checked on the source: `app/` never imports torch, vLLM, transformers or
`workers`; no two modules import each other (directly or around a loop), counting module-level and
type-checking imports; and the product reads or cites nothing outside its repository."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "workers")
FORBIDDEN_IN_APP = ("torch", "vllm", "transformers", "peft", "workers")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _module_level_imports(path: Path, module: str) -> Iterator[str]:
    """Imports outside function bodies (module level, class bodies, `if TYPE_CHECKING:` blocks)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(nodes: list[ast.stmt]) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                yield base
                yield from (f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If | ast.Try | ast.With | ast.ClassDef):
                for body in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, body, [])
                    for child in children:
                        yield from visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    yield from visit(tree.body)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = {
            target for target in _module_level_imports(path, name) if target in modules and target != name
        }
        graph[name] = targets
    return graph


def test_app_never_imports_the_compute_stack() -> None:
    offenders = []
    for name, path in _modules().items():
        if not name.startswith("app"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # function-level imports too: app must run without them installed
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            offenders += [f"{name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN_IN_APP]
    assert not offenders, offenders


def test_no_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
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
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            connect(node)
    # A package's __init__ importing its own submodules is how packages expose them, not a cycle.
    real = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not real, real


def test_importing_the_api_does_not_import_torch() -> None:
    code = "import sys, app.main; assert 'torch' not in sys.modules and 'workers' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_the_product_reads_and_cites_nothing_outside_the_repository() -> None:
    paths = [
        p for package in PACKAGES for p in (ROOT / package).rglob("*") if p.suffix in (".py", ".md", ".html")
    ]
    paths += [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "bench").glob("*.py")]
    offenders = [str(p.relative_to(ROOT)) for p in paths if "shared/" in p.read_text(errors="replace")]
    assert not offenders, offenders
