"""The architecture targets, checked statically: ``ast`` and text only, nothing of the project is imported.

- No import cycle among the modules of ``streammas/`` and ``connectors/``. Every ``import`` and ``from ... import``
  statement counts, at module level, inside a function (a lazy import still runs the other module's top level,
  and a cycle through it can meet a half-initialised module) or under ``if TYPE_CHECKING:`` (a cycle the type
  checker needs is one the code's design has, and the next runtime import along it closes it). A package's
  ``__init__`` importing its own submodules is an edge like any other.
- Layers: a module imports only modules of its own layer or of a lower one (:data:`LAYERS`), and ``connectors``
  nothing of ``streammas``.
- No source file in those packages over 400 lines.
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
MAX_LINES = 400
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


class _Imports(ast.NodeVisitor):
    """Every import statement of a file, wherever it is: ``if TYPE_CHECKING:`` included."""

    def __init__(self) -> None:
        self.found: list[tuple[int, int, str, list[str]]] = []  # (line, level, module, names from it)

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


def _write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_cycle_finder_sees_lazy_imports_package_inits_and_type_checking(tmp_path):
    _write_package(tmp_path / "pkg", {
        "__init__.py": "",
        "a.py": "def f():\n    from pkg import b  # lazy\n",
        "b.py": "import pkg.a\nimport pkg.f\n",
        "f.py": "from pkg.a import f\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\nelse:\n    import os\n",
        "d.py": "from .c import TYPE_CHECKING\n",
        "g.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg import h\n",
        "h.py": "import pkg.g\n",
        "sub/__init__.py": "from . import e\n",
        "sub/e.py": "from pkg.sub import something  # not a module: the package itself\n",
    })
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.c"] == {"pkg.a": (tmp_path / "pkg" / "c.py", 3)} and set(graph["pkg.d"]) == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.g", "pkg.h", "pkg.g"],
                             ["pkg.sub", "pkg.sub.e", "pkg.sub"]]
    message = describe(cycles(graph)[0], graph, tmp_path)
    assert message.splitlines() == ["pkg.a -> pkg.b -> pkg.a  (one of the cycles among pkg.a, pkg.b, pkg.f)",
                                    f"    {Path('pkg/a.py')}:2 imports pkg.b",
                                    f"    {Path('pkg/b.py')}:1 imports pkg.a"]


# -- layers ---------------------------------------------------------------------------------------------------------
#: Lowest first. A name covers its package and every module under it, but for those in :data:`ONLY_ITSELF`.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("connectors", "streammas.backend"),
    ("streammas.collective",),
    ("streammas.learner",),
    ("streammas.models", "streammas.river"),
    ("streammas.config",),
    ("streammas.service",),
    ("streammas.tools",),
    ("streammas.cli", "streammas.__main__", "streammas"),
)
#: The top package's ``__init__`` is the front door, above everything: its submodules are placed by name.
ONLY_ITSELF = frozenset({"streammas"})
#: Packages that import nothing of another package of the project, even of their own layer or a lower one.
STANDALONE = frozenset({"connectors"})


def layer_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS,
             only_itself: frozenset[str] = ONLY_ITSELF) -> tuple[int, str] | None:
    """``(index, name)`` of the most specific entry of ``layers`` that covers ``module``; None: none does."""
    found = None
    for index, names in enumerate(layers):
        for name in names:
            covers = module == name or (module.startswith(f"{name}.") and name not in only_itself)
            if covers and (found is None or len(name) > len(found[1])):
                found = (index, name)
    return found


def layer_violations(graph: Edges, layers: tuple[tuple[str, ...], ...] = LAYERS,
                     only_itself: frozenset[str] = ONLY_ITSELF, standalone: frozenset[str] = STANDALONE,
                     root: Path = ROOT) -> list[str]:
    """One line per import that goes up a layer or out of a standalone package, and per module with no layer."""
    found = []
    for module in sorted(graph):
        own = layer_of(module, layers, only_itself)
        if own is None:
            found.append(f"{module}: in no layer (add it to LAYERS)")
            continue
        top = module.split(".")[0]
        for target, (path, line) in sorted(graph[module].items()):
            theirs = layer_of(target, layers, only_itself)
            where = f"{path.relative_to(root)}:{line}: {module} imports {target}"
            if top in standalone and target.split(".")[0] != top:
                found.append(f"{where}, but {top} imports nothing of the rest of the project")
            elif theirs is not None and theirs[0] > own[0]:
                found.append(f"{where}, a higher layer ({theirs[1]} is above {own[1]})")
    return found


def test_every_module_imports_only_its_own_layer_or_lower():
    graph = import_graph()
    assert layer_of("streammas.learner.online") == (2, "streammas.learner")  # LAYERS does cover the project
    found = layer_violations(graph)
    assert not found, f"{len(found)} import(s) against the layers:\n  " + "\n  ".join(found)


def test_the_layer_check_names_the_file_and_line_of_each_import_up(tmp_path):
    _write_package(tmp_path / "app", {
        "__init__.py": "from app.top import run\n",
        "low/__init__.py": "",
        "low/a.py": "import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.high import b\n",
        "high.py": "from app.low import a\nimport app\n",
        "top.py": "import app.high\ndef run():\n    import app.low.a\n",
        "stray.py": "",
    })
    _write_package(tmp_path / "alone", {"__init__.py": "", "c.py": "import os\nfrom app.low import a\n"})
    layers = (("alone", "app.low"), ("app.high",), ("app.top", "app"))
    graph = import_graph(tmp_path, ("app", "alone"))
    assert layer_of("app.top", layers) == (2, "app.top") and layer_of("app.low.a", layers) == (0, "app.low")
    assert layer_of("app.stray", layers, frozenset({"app"})) is None
    assert layer_of("app.stray", layers, frozenset()) == (2, "app")
    assert layer_violations(graph, layers, frozenset({"app"}), frozenset({"alone"}), tmp_path) == [
        f"{Path('alone/c.py')}:2: alone.c imports app.low.a, but alone imports nothing of the rest of the project",
        f"{Path('app/high.py')}:2: app.high imports app, a higher layer (app is above app.high)",
        f"{Path('app/low/a.py')}:4: app.low.a imports app.high, a higher layer (app.high is above app.low)",
        "app.stray: in no layer (add it to LAYERS)",
    ]


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
