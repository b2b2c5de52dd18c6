"""From the bytes of a file to the objects the record parsers take (used by node/importing.py).

The checks a reader makes before a record reaches its parser: the text encoding (UTF-8 only; UTF-16
and UTF-32 are named with the command that converts them), JSON syntax errors and nesting too deep
to decode, unpaired surrogate escapes, NUL characters, and which JSON objects are containers of
records rather than records. Also the CSV row -> record mapping.
"""

from __future__ import annotations

import json
from typing import Any, Final

from node.formats import fields
from node.formats.dispatch import RECORD_KEYS
from node.formats.fields import RecordError

LATIN1_FIX: Final = "re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
"""The fix for bytes that are not UTF-8 in a file without a UTF-16/32 byte-order mark."""
CONTAINER_KEYS: Final = ("records", "data")
"""The keys of a JSON object that holds the records as a list: {"records": [...]} or {"data": [...]}."""

_FOREIGN_BOMS: Final = ((b"\xff\xfe\x00\x00", "UTF-32", "utf-32"), (b"\x00\x00\xfe\xff", "UTF-32", "utf-32"),
                        (b"\xff\xfe", "UTF-16", "utf-16"), (b"\xfe\xff", "UTF-16", "utf-16"))
_CSV_TEXT: Final = frozenset({fields.PROMPT, fields.CHOSEN, fields.REJECTED, fields.RESPONSE,
                              fields.RESPONSE_A, fields.RESPONSE_B, fields.DEMONSTRATION})
_CSV_NUMBERS: Final = frozenset({fields.CONFIDENCE, fields.AGREEMENT, fields.RATING, fields.SCALE_MIN,
                                 fields.SCALE_MAX})
_CSV_BOOLS: Final = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def foreign_encoding(head: bytes) -> RecordError | None:
    """The error for a file that starts like UTF-16 or UTF-32 text (`head`: its first bytes), else None.

    >>> foreign_encoding("prompt".encode("utf-16")).fix
    're-encode the file as UTF-8: iconv -f utf-16 -t utf-8 FILE > NEW_FILE'
    """
    for bom, name, code in _FOREIGN_BOMS:
        if head.startswith(bom):
            return RecordError(f"the file is {name} text (it starts with the {name} byte-order mark "
                               f"{bom.hex(' ').upper()}); only UTF-8 is read", _reencode(code))
    even, odd = head[:64:2], head[1:64:2]  # ASCII in UTF-16: every other byte is 0, and only those
    code = None
    if len(odd) >= 4 and not odd.strip(b"\x00") and 0 not in even:
        code = "utf-16le"
    elif len(odd) >= 4 and not even.strip(b"\x00") and 0 not in odd:
        code = "utf-16be"
    if code is not None:
        return RecordError(f"the file looks like {code.upper()} text without a byte-order mark (every other "
                           "byte is 0); only UTF-8 is read", _reencode(code))
    return None


def _reencode(code: str) -> str:
    return f"re-encode the file as UTF-8: iconv -f {code} -t utf-8 FILE > NEW_FILE"


def too_deep() -> RecordError:
    """The error for JSON nested deeper than the decoder follows (Python's recursion limit, ~1000 levels)."""
    return RecordError("the JSON nests arrays or objects too deeply to be read (about 1000 levels or more)",
                       "remove the deeply nested value: no record format nests more than a few levels")


def is_container(obj: object) -> bool:
    """Whether a decoded JSON value is a {"records": [...]} / {"data": [...]} container rather than a record:
    an object with such a list and none of the keys that make a record.

    >>> is_container({"records": []}), is_container({"prompt": "q", "chosen": "a", "data": []})
    (True, False)
    """
    return (type(obj) is dict and any(type(obj.get(key)) is list for key in CONTAINER_KEYS)
            and RECORD_KEYS.isdisjoint(obj))


def check_surrogates(obj: dict[str, Any]) -> None:
    """Refuse lone UTF-16 surrogates that JSON \\ud800-\\udfff escapes can smuggle into a str."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError("a text holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff), which is not "
                          "valid Unicode", "fix the producer's JSON escaping: such escapes come only in pairs"
                          ) from None
    except RecursionError:
        raise too_deep() from None


def check_nul(obj: object) -> None:
    """Refuse NUL characters (JSON \\u0000): PostgreSQL cannot store them in text, and a store must
    move between SQLite and PostgreSQL unchanged."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if type(o) is str:
            if "\x00" in o:
                raise RecordError("a text holds a NUL character (\\u0000), which a text column cannot store",
                                  "remove the NUL characters (often left by a binary field or a bad "
                                  "converter)")
        elif type(o) is dict:
            stack.extend(o.keys())
            stack.extend(o.values())
        elif type(o) is list:
            stack.extend(o)


def csv_record(header: list[str], row: list[str]) -> dict[str, Any]:
    """A CSV row as the JSON record it stands for: numbers parsed, empty non-text cells left out."""
    d: dict[str, Any] = {}
    for key, value in zip(header, row, strict=True):
        if key in _CSV_TEXT:
            d[key] = value
        elif not value.strip():
            continue
        elif key in _CSV_NUMBERS:
            try:
                d[key] = float(value)
            except ValueError:
                raise RecordError(f"column '{key}' must be a number, got {value[:40]!r}",
                                  f"write '{key}' as a plain number such as 0.8") from None
        elif key == fields.THUMBS:
            lowered = value.strip().lower()
            d[key] = _CSV_BOOLS.get(lowered, lowered)
        else:
            d[key] = value
    return d


def json_error(exc: ValueError, fix: str) -> RecordError:
    """A JSON syntax error as a RecordError: what is malformed and where, then `fix`."""
    if isinstance(exc, json.JSONDecodeError):
        problem = f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})"
        if exc.lineno == 1:
            problem = f"malformed JSON: {exc.msg} at column {exc.colno} (char {exc.pos})"
    else:
        problem = f"malformed JSON: {exc}"
    return RecordError(problem,
                       f"fix the JSON{'; ' + fix if fix else ''} (or skip bad lines with --skip-invalid)")
