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

# command name -> (module in node.commands, help line)
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("identity", "create a node: node.toml, the database and an Ed25519 identity key"),
    "identity": ("identity", "show this node's public key and fingerprint"),
    "import": ("data", "import preference data (JSONL/JSON/CSV, gzip too) into the store"),
    "export-data": ("data", "export the stored preference data to a file"),
    "stats": ("data", "counts per source: prompts, responses, comparisons, annotators"),
    "aggregate": ("data", "Bradley-Terry strengths, soft labels, agreement, reliability, ambiguity queue"),
}


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
    for name, (module, help_line) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_line, description=help_line)
        _common(sub)
        commands = importlib.import_module(f"node.commands.{module}")
        commands.configure(name, sub)
    return parser


def _handler(name: str) -> Callable[[argparse.Namespace], int | None]:
    module = importlib.import_module(f"node.commands.{COMMANDS[name][0]}")
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
