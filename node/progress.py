"""Progress bars that also report when nobody watches a terminal.

On a terminal `bar` is an ordinary tqdm bar on stderr. Redirected to a file or a service log, a tqdm bar
either vanishes (disable=None) or writes carriage-return frames that a log shows as one endless line; here
it writes a plain line every LOG_INTERVAL_S seconds instead (and one at the end), so a long training run
started with `> train.log 2>&1` or under systemd still says how far it is and how fast it goes. A job
done within LOG_INTERVAL_S writes nothing, so a quick command's output (or its one-line error) stays
clean, unless its caller refreshes the bar itself (training does after each dev evaluation: a line with
the dev accuracy).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0
"""Seconds between two progress lines when stderr is not a terminal."""


class _Lines:
    """A file for tqdm that turns its carriage-return frames into whole lines, leaving out a frame that
    says nothing new (the one tqdm repeats when it closes: same count and postfix, later clock)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        news = _without_clock(line)
        if line and news != self.last:
            self.stream.write(line + "\n")
            self.last = news

    def flush(self) -> None:
        self.stream.flush()


def _without_clock(line: str) -> str:
    """A frame without the clock and rate that open its brackets.

    >>> _without_clock("training: 4/4 (100%) [00:54<00:00,  1.35s/step, loss=0.69, dev_acc=0.48]")
    'training: 4/4 (100%) [loss=0.69, dev_acc=0.48]'
    """
    head, sep, inner = line.partition(" [")
    return head + sep + ", ".join(inner.removesuffix("]").split(", ")[2:]) + "]" if sep else line


def bar(*, disable: bool = False, stream: TextIO | None = None, **kwargs: Any) -> Any:
    """tqdm(**kwargs) on stream (default stderr): a live bar on a terminal, a line every LOG_INTERVAL_S
    seconds elsewhere. disable=True shows nothing."""
    stream = stream or sys.stderr
    if disable:
        return tqdm(disable=True, **kwargs)
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(file=stream, dynamic_ncols=True, **kwargs)
    counted = "{n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, " if kwargs.get("total") else \
        "{n_fmt} [{elapsed}, "
    return tqdm(file=_Lines(stream), delay=LOG_INTERVAL_S, mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S,
                bar_format="{desc}: " + counted + "{rate_fmt}{postfix}]", **kwargs)
