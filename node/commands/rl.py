"""RL fine-tuning commands: rl, best-of-n, generate, sft."""

from __future__ import annotations

COMMANDS: dict[str, str] = {}
