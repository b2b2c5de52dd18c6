"""Reward-model commands: train, models, eval, score, export, serve."""

from __future__ import annotations

COMMANDS: dict[str, str] = {}
