"""Peer-to-peer commands: peers."""

from __future__ import annotations

COMMANDS: dict[str, str] = {}
