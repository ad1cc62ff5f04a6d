"""The ``streammas`` command.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and
``run_command(args) -> int``. Only the chosen subcommand's module is imported, so ``streammas --help``
answers at once and a broken optional dependency of one command cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("streammas.tools.demo", "run the service on built-in data with a built-in producer and report"),
    "run": ("streammas.service", "run the long-lived service from a TOML configuration"),
    "send": ("connectors.send", "stream a file into a ZeroMQ source (the producer side)"),
    "inspect": ("streammas.tools.inspect", "summarise a state directory (samples, consolidations, importance)"),
    "evaluate": ("streammas.tools.evaluation.cli", "task-free continual-learning benchmarks with no boundaries given"),
    "bench": ("streammas.tools.bench",
              "speed and memory benchmarks (step, importance, memory, ingest, daemon, river, scale)"),
}


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless the help already says it or there is none to show (an
    unset option, a flag that is off, an empty list).

    >>> parser = argparse.ArgumentParser(prog="p", formatter_class=DefaultsFormatter)
    >>> _ = parser.add_argument("--seed", type=int, default=0, help="the seed")
    >>> _ = parser.add_argument("--quick", action="store_true", help="a short run")
    >>> "the seed (default: 0)" in parser.format_help(), "short run (default" in parser.format_help()
    (True, False)
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default is None or default is False
                or default == argparse.SUPPRESS or default == []):
            return text
        return f"{text} (default: %(default)s)"


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of the subcommand ``name`` (its module imported; ``name`` one of :data:`COMMANDS`)."""
    module_name, help_ = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"streammas {name}", description=help_, formatter_class=DefaultsFormatter)
    importlib.import_module(module_name).add_arguments(parser)
    return parser


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streammas",
        description="Online learning on unlabeled streams that remembers what mattered.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command", help="one of the commands below")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streammas")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0].startswith("-"):
        top.parse_args(argv or ["--help"])
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        top.error(f"unknown command {name!r}; choose from {', '.join(sorted(COMMANDS))}")
    if name == "run":
        # before torch loads (seconds): a SIGTERM during start-up then stops the service cleanly
        from streammas.service.signals import install_early

        install_early()
    args = command_parser(name).parse_args(rest)
    return int(importlib.import_module(COMMANDS[name][0]).run_command(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
