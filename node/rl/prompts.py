"""Prompt files for rl, best-of-n and generate.

    .jsonl   one JSON object per line with a non-blank string "prompt" (other keys are ignored)
    .txt     (any other suffix) one prompt per line

Blank lines are skipped in both. A blank "prompt" in a .jsonl line, a prompt with a NUL character, a line
that is not a JSON object or has no string "prompt" is an error naming FILE:LINE.
"""

from __future__ import annotations

import json
from pathlib import Path

from node.errors import UsageError

PROMPT_KEY = "prompt"


def _json_type(value: object) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _jsonl_prompt(line: str, where: str) -> str:
    """The "prompt" of one .jsonl line; UsageError naming `where` (FILE:LINE) when there is none."""
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise UsageError(f"{where}: invalid JSON ({e}); write one JSON object per line, e.g. "
                         '{"prompt": "..."}') from None
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: {_json_type(obj)}, not a JSON object; write one object per line, e.g. "
                         '{"prompt": "..."}')
    if PROMPT_KEY not in obj:
        raise UsageError(f"{where}: no 'prompt' key (keys: {', '.join(map(repr, list(obj)[:5])) or 'none'}); "
                         'give each line a "prompt"')
    prompt = obj[PROMPT_KEY]
    if not isinstance(prompt, str):
        raise UsageError(f"{where}: 'prompt' must be a string, not {_json_type(prompt)}; write the prompt's "
                         "text in quotes")
    if not prompt.strip():
        blank = "empty" if not prompt else "only whitespace"
        raise UsageError(f"{where}: 'prompt' is {blank}; give the prompt's text or remove the line")
    return prompt


def read_prompt_file(path: Path) -> list[str]:
    """The prompts of a .jsonl or text file (see the module docstring), in file order."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--prompts {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as "
                         "UTF-8") from None
    except OSError as e:
        raise UsageError(f"cannot read --prompts {path} ({e.strerror or e}); pass a readable file") from None
    prompts: list[str] = []
    for line_no, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may be in a JSON string
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        prompt = _jsonl_prompt(line, where) if path.suffix == ".jsonl" else line
        if "\x00" in prompt:
            raise UsageError(f"{where}: the prompt holds a NUL character; remove it")
        prompts.append(prompt)
    return prompts
