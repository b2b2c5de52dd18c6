"""The `rewardnode` command line: parser, dispatch and the one-line error contract.

User mistakes print one line on stderr and exit 2 (usage) or 1 (failure); a traceback means a bug.
Command bodies live in node/commands/; they are imported lazily so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

PROG = "rewardnode"

MODULES: tuple[str, ...] = ("identity", "data", "rm", "labeling", "federation", "p2p", "rl")
"""Command modules in node/commands/, in --help order. Each declares COMMANDS = {name: help line},
`configure(name, parser)` and `run_<name>(args)`; it imports heavy libraries (torch, flwr, libp2p)
inside its run functions only, so that --help stays fast."""


def commands() -> dict[str, tuple[str, str]]:
    """command name -> (module in node.commands, help line)."""
    found: dict[str, tuple[str, str]] = {}
    for module in MODULES:
        for name, help_line in importlib.import_module(f"node.commands.{module}").COMMANDS.items():
            if name in found:
                raise RuntimeError(f"command {name!r} is declared by node.commands.{found[name][0]} and .{module}")
            found[name] = (module, help_line)
    return found


def _common(sub: argparse.ArgumentParser) -> None:
    # SUPPRESS: a value given before the command is not overwritten by the subparser's default.
    sub.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS,
                     help="node home (default: $REWARDNODE_HOME or ~/.rewardnode)")
    sub.add_argument("--db", metavar="URL", default=argparse.SUPPRESS,
                     help="database URL overriding node.toml, e.g. postgresql+psycopg://user@host/db")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="rewardnode: store preference data, train a private reward model, federate it, fine-tune an LLM.",
    )
    parser.add_argument("--home", metavar="DIR", default=None,
                        help="node home (default: $REWARDNODE_HOME or ~/.rewardnode)")
    parser.add_argument("--db", metavar="URL", default=None, help="database URL overriding node.toml")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module, help_line) in commands().items():
        sub = subparsers.add_parser(name, help=help_line, description=help_line)
        _common(sub)
        group = importlib.import_module(f"node.commands.{module}")
        group.configure(name, sub)
    return parser


def _handler(name: str) -> Callable[[argparse.Namespace], int | None]:
    module = importlib.import_module(f"node.commands.{commands()[name][0]}")
    handler: Callable[[argparse.Namespace], int | None] = getattr(module, "run_" + name.replace("-", "_"))
    return handler


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rewardnode` console script."""
    from node.errors import NodeError, UsageError
    from protocol.errors import ProtocolError
    from storage.errors import StorageError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _handler(args.command)(args) or 0
    except UsageError as exc:
        return _fail(str(exc), 2)
    except (NodeError, StorageError, ProtocolError) as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted; nothing of the interrupted step was stored", 130)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
