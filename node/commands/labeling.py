"""Labeling campaigns and labelers."""

from __future__ import annotations

COMMANDS: dict[str, str] = {}
