"""Progress bars (tqdm) that read well in a terminal and in a log file.

In a terminal a bar redraws itself in place. In a log (stderr not a terminal) tqdm's in-place
redraws become one long line of carriage returns, and a warning printed next lands glued to the
end of it: there every update is written as its own line, at most one per 5 s, the final state
is kept, and the blank "clear the bar" writes are dropped.
"""

from __future__ import annotations

import sys
from typing import Iterable, TextIO


class _Lines:
    """A file for tqdm that turns each in-place redraw into a whole line."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
                 unit: str = "it", enabled: bool = True):
    """A tqdm bar on stderr: redrawn in place and cleared at the end in a terminal; in a log, its
    first line, one line per 5 s and its final line."""
    from tqdm import tqdm

    terminal = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled,
                file=sys.stderr if terminal else _Lines(sys.stderr), leave=not terminal, dynamic_ncols=terminal,
                mininterval=0.1 if terminal else 5.0, ascii=None if terminal else True)
