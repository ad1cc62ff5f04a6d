"""The README's code works as written: its Python blocks run, its configuration is valid, its commands exist.

The convention for Python blocks: each runs on its own, in a fresh interpreter, in an empty directory. A
block may loop over one input it does not define, provided the README names it (in backticks in the text
just before the block, or in a comment of the block: ``# stream: ...``); the test supplies a small one of
the kind described. The inputs it knows are :data:`INPUTS`; any other name a block uses without defining it
(a missing import) fails the test before the block is run.
"""

from __future__ import annotations

import ast
import builtins
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from service_support import child_env

from streammas.config import parse_config

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)

#: What the test supplies for each input a block may use without defining it: small, a second to learn.
INPUTS = {
    # batches of 10 samples of 64 features, around four prototypes
    "batches": (
        "import numpy as _np\n"
        "_rng = _np.random.default_rng(0)\n"
        "_protos = _rng.random((4, 64), dtype=_np.float32)\n"
        "batches = [_protos[_rng.integers(0, 4, 10)] + 0.05 * _rng.standard_normal((10, 64), dtype=_np.float32)"
        " for _ in range(60)]\n"
    ),
    # river feature dicts
    "stream": (
        "import random as _random\n"
        "_r = _random.Random(0)\n"
        "stream = [{'a': _r.random(), 'b': _r.random(), 'c': _r.choice((0.0, 1.0))} for _ in range(300)]\n"
    ),
}


def blocks(language: str) -> list[tuple[str, str]]:
    """``(text before the block, the block)`` for each fenced block of ``language``."""
    found, end = [], 0
    for match in BLOCK.finditer(TEXT):
        if match.group(1) == language:
            found.append((TEXT[end:match.start()], match.group(2)))
        end = match.end()
    return found


def free_names(code: str) -> set[str]:
    """Names a block reads but never binds (imports, assignments, loop targets, definitions)."""
    tree = ast.parse(code)
    bound, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, ast.Store) else read).add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return read - bound - set(dir(builtins))


PYTHON = blocks("python")


def test_the_readme_has_python_blocks():
    assert len(PYTHON) >= 2


@pytest.mark.slow  # each block in a fresh interpreter
@pytest.mark.parametrize(("before", "code"), PYTHON, ids=[f"block{i + 1}" for i in range(len(PYTHON))])
def test_python_block_runs_as_written(before: str, code: str, tmp_path: Path) -> None:
    inputs = free_names(code)
    unknown = inputs - set(INPUTS)
    assert not unknown, f"the block uses {sorted(unknown)} without defining or importing them:\n{code}"
    context = before.strip().rsplit("\n\n", 1)[-1]
    for name in inputs:
        assert f"`{name}`" in context or f"# {name}:" in code, f"the README does not say what `{name}` is"
    script = "".join(INPUTS[name] for name in sorted(inputs)) + code
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=child_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{done.stderr}\n--- the block:\n{code}"
    if "state.pt" in code:  # the block promises a file that loads without unpickling code
        state = torch.load(tmp_path / "state.pt", weights_only=True)
        assert state["samples_seen"] == 600


def test_the_configuration_example_is_valid():
    configs = [code for _, code in blocks("toml") if "[source]" in code]
    assert configs
    for code in configs:
        cfg = parse_config(code)
        assert cfg.source.uri


def section(title: str) -> str:
    return TEXT.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_quick_start_is_two_commands_and_says_how_to_get_the_cpu_build():
    quick = section("Quick start")
    code = BLOCK.search(quick).group(2)
    commands = [line.split("#", 1)[0].strip() for line in code.splitlines() if line.split("#", 1)[0].strip()]
    assert len(commands) == 2
    assert "streammas demo" in commands[0] and "pytest" in commands[1]
    before = " ".join(quick[:quick.index("```")].split())
    # first a line that works with whatever index pip is configured for (an offline mirror, a proxy), then
    # PyTorch's CPU index as the option it is: one that cannot be reached makes pip retry for minutes
    installs = re.findall(r"`(pip install torch[^`]*)`", before)
    assert installs == ["pip install torch", "pip install torch --index-url https://download.pytorch.org/whl/cpu"]


def shell_commands() -> set[tuple[str, ...]]:
    """``streammas`` subcommands (and benchmarks) that the README's shell blocks run."""
    found = set()
    for _, code in blocks("bash"):
        for line in code.splitlines():
            for part in line.split("#", 1)[0].split("&&"):
                words = shlex.split(part)
                if len(words) >= 2 and words[0] == "streammas":
                    found.add(tuple(words[1:3]) if words[1] == "bench" else (words[1],))
    return found


@pytest.mark.slow  # a fresh interpreter
def test_the_commands_the_readme_runs_exist():
    commands = shell_commands()
    assert {("demo",), ("run",), ("send",), ("bench", "memory")} <= commands
    # one interpreter for all of them: argparse answers --help by exiting 0
    script = (
        "import sys\nfrom streammas.cli import main\nfailed = []\n"
        f"for argv in {sorted(commands)!r}:\n"
        "    try:\n        main([*argv, '--help'])\n"
        "    except SystemExit as e:\n        failed += [] if e.code in (0, None) else [argv]\n"
        "sys.exit(f'no such command: {failed}' if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=child_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_bench_help_lists_every_benchmark():
    from streammas.cli import COMMANDS
    from streammas.tools.bench import BENCHMARKS

    assert all(name in COMMANDS["bench"][1] for name in BENCHMARKS)


def test_the_examples_follow_the_threads_advice():
    """The README says the examples run torch on one thread, as it advises for micro-batches."""
    examples = sorted((README.parent / "examples").glob("*.py"))
    assert examples
    for path in examples:
        source = path.read_text(encoding="utf-8")
        if "import torch" in source:
            assert "torch.set_num_threads(1)" in source, path.name
