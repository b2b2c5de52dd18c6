"""Errors a node reports to its user: each message says what is wrong and how to fix it."""

from __future__ import annotations


class NodeError(Exception):
    """A failure the user can act on; the CLI prints it as one line and exits 1."""


class UsageError(NodeError):
    """The command was called wrongly (bad flag combination, missing file); the CLI exits 2."""


class ImportFormatError(NodeError):
    """A record in an input file is invalid; `line` is 1-based (0 when the whole file is wrong)."""

    def __init__(self, path: str, line: int, problem: str, fix: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        self.fix = fix
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {problem}; {fix}")
