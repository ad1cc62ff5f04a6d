"""The architecture targets, checked statically: ``ast`` and text only, nothing of the project is imported.

- No import cycle among the modules of ``streammas/`` and ``connectors/``. Every ``import`` and ``from ... import``
  statement counts, at module level or inside a function (a lazy import still runs the other module's top level,
  and a cycle through it can meet a half-initialised module), except those under ``if TYPE_CHECKING:``. A
  package's ``__init__`` importing its own submodules is an edge like any other.
- No source file in those packages over 450 lines.
- Nothing in the repository points at a ``shared`` folder beside it, or cites a design document it does not hold.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("streammas", "connectors")
MAX_LINES = 450
SELF = Path(__file__).resolve()

Edges = dict[str, dict[str, tuple[Path, int]]]  # module -> imported module -> (file, line of the first such import)


# -- the import graph -----------------------------------------------------------------------------------------------
def source_files(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    return sorted(p for package in packages for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Every import statement of a file, wherever it is, but for the body of ``if TYPE_CHECKING:``."""

    def __init__(self) -> None:
        self.found: list[tuple[int, int, str, list[str]]] = []  # (line, level, module, names from it)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((node.lineno, 0, alias.name, []))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.found.append((node.lineno, node.level, node.module or "", [a.name for a in node.names]))


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> Edges:
    files = {module_name(p, root): p for p in source_files(root, packages)}

    def known(name: str) -> str | None:
        """The module ``name`` runs: itself, else its longest prefix that is a module here (None: not ours)."""
        parts = name.split(".")
        while parts:
            if ".".join(parts) in files:
                return ".".join(parts)
            parts.pop()
        return None

    graph: Edges = {}
    for module, path in files.items():
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        edges = graph.setdefault(module, {})
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for line, level, name, names in visitor.found:
            if level:  # relative: from the package, up level - 1 more
                base = package[: len(package) - (level - 1)]
                name = ".".join([*base, name] if name else base)
            targets = []
            for imported in names:  # from pkg import name: pkg.name when that is a module, else pkg
                targets.append(f"{name}.{imported}" if f"{name}.{imported}" in files else known(name))
            if not names:
                targets.append(known(name))
            for target in targets:
                if target is not None and target != module:
                    edges.setdefault(target, (path, line))
    return graph


def components(graph: Edges) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycles(graph: Edges) -> list[list[str]]:
    """One shortest cycle through each strongly connected component of more than one module."""
    found = []
    for component in components(graph):
        start = min(component)
        came_from: dict[str, str] = {}
        queue = deque([start])
        while queue:  # breadth first inside the component, back to the start
            v = queue.popleft()
            if start in graph[v]:
                path = [v]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                found.append([*reversed(path), start])
                break
            for w in sorted(graph[v]):
                if w in component and w not in came_from and w != start:
                    came_from[w] = v
                    queue.append(w)
    return sorted(found)


def describe(cycle: list[str], graph: Edges, root: Path = ROOT) -> str:
    lines = [" -> ".join(cycle)]
    tangle = next(c for c in components(graph) if cycle[0] in c)
    if len(tangle) > len(cycle) - 1:
        lines[0] += f"  (one of the cycles among {', '.join(sorted(tangle))})"
    for a, b in zip(cycle, cycle[1:]):
        path, line = graph[a][b]
        lines.append(f"    {path.relative_to(root)}:{line} imports {b}")
    return "\n".join(lines)


def test_no_import_cycle_among_the_modules():
    graph = import_graph()
    assert len(graph) > 10 and "streammas.learner" in graph  # it did find the project
    found = cycles(graph)
    assert not found, f"{len(found)} import cycle(s):\n" + "\n".join(describe(c, graph) for c in found)


def test_the_cycle_finder_sees_lazy_imports_and_package_inits_but_not_type_checking(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from pkg import b  # lazy\n",
        "b.py": "import pkg.a\nimport pkg.f\n",
        "f.py": "from pkg.a import f\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\nelse:\n    import os\n",
        "d.py": "from .c import TYPE_CHECKING\n",
        "sub/__init__.py": "from . import e\n",
        "sub/e.py": "from pkg.sub import something  # not a module: the package itself\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.c"] == {} and set(graph["pkg.d"]) == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.sub", "pkg.sub.e", "pkg.sub"]]
    message = describe(cycles(graph)[0], graph, tmp_path)
    assert message.splitlines() == ["pkg.a -> pkg.b -> pkg.a  (one of the cycles among pkg.a, pkg.b, pkg.f)",
                                    f"    {Path('pkg/a.py')}:2 imports pkg.b",
                                    f"    {Path('pkg/b.py')}:1 imports pkg.a"]


# -- file sizes -----------------------------------------------------------------------------------------------------
def test_no_source_file_over_the_line_limit():
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in source_files()}
    assert len(sizes) > 10
    over = [f"{p.relative_to(ROOT)}: {n} lines" for p, n in sorted(sizes.items()) if n > MAX_LINES]
    assert not over, f"over {MAX_LINES} lines:\n  " + "\n  ".join(over)


# -- references out of the repository -------------------------------------------------------------------------------
def _skipped_dir(path: Path) -> bool:
    return path.name.startswith(".") or path.name in {"__pycache__", "build", "dist", "node_modules"} or (
        path.name.endswith(".egg-info") or (path / "pyvenv.cfg").exists())


def repository_files(root: Path = ROOT) -> list[Path]:
    """The files git tracks (and new ones it does not ignore); outside a git checkout, a walk of the tree."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, check=True, timeout=60).stdout
        paths = [root / name for name in sorted(set(out.decode("utf-8", "replace").split("\0"))) if name]
    except (OSError, subprocess.SubprocessError):
        paths = []
        for top, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if not _skipped_dir(Path(top, d))]
            paths += [Path(top, n) for n in names]
    return [p for p in paths if p.is_file() and p.resolve() != SELF]  # deleted but still tracked: gone


def text_lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # removed since it was listed (an editor's temporary file)
        return []
    if b"\0" in data:
        return []
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return []


SHARED = re.compile(r"\.\.[/\\]shared\b")
DESIGN = re.compile(r"(?<![\w.-])((?:[\w.-]+/)*)DESIGN\.md")


def test_nothing_points_at_a_shared_folder_outside_the_repository():
    files = repository_files()
    assert any(p.name == "pyproject.toml" for p in files)
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:120]}"
            for p in files for i, line in enumerate(text_lines(p), 1) if SHARED.search(line)]
    assert not hits, "points outside the repository:\n  " + "\n  ".join(hits)


def test_every_cited_design_document_is_in_the_repository():
    files = repository_files()
    held = {p.resolve() for p in files if p.name == "DESIGN.md"}
    missing = []
    for p in files:
        for i, line in enumerate(text_lines(p), 1):
            for match in DESIGN.finditer(line):
                prefix = match.group(1)
                if prefix:  # a path: from the citing file's folder or from the repository's root
                    ok = any((base / prefix / "DESIGN.md").resolve() in held for base in (p.parent, ROOT))
                else:
                    ok = bool(held)
                if not ok:
                    missing.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()[:120]}")
    assert not missing, ("cites a DESIGN.md the repository does not hold:\n  " + "\n  ".join(missing))
