"""Federation commands: create, join, run, verify."""

from __future__ import annotations

COMMANDS: dict[str, str] = {}
