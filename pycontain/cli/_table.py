"""Tables for the terminal, as docker and podman print them: left-aligned
columns under upper-case headers, times as "3 minutes ago", no index.

(pandas' ``to_string`` right-aligns every column and prints whole
timestamps: right for a notebook, not for ``pycontain ps``.) The leading
underscore keeps this module out of the command topics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

#: Columns are at least this far apart (docker's spacing).
GAP = "   "

_UNITS = (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400), ("day", 86400),
          ("hour", 3600), ("minute", 60), ("second", 1))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """``rows`` under ``headers``, each column as wide as its widest cell
    (None prints as nothing).

    Example::

        table(["NAME", "STATUS"], [["web", "running"]])
        # 'NAME   STATUS\\nweb    running'
    """
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(GAP.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def ago(then: float | None, now: float | None = None) -> str:
    """How long ago the Unix time ``then`` was, in docker's words ("2 hours
    ago", "About a minute ago"); "" for None or NaN."""
    if then is None or then != then:
        return ""
    s = max(0.0, (time.time() if now is None else now) - then)
    for unit, size in _UNITS:
        if s >= size:
            n = int(s // size)
            if n == 1 and unit in ("minute", "hour"):
                return f"About {'an' if unit == 'hour' else 'a'} {unit} ago"
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "Less than a second ago"


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in "…" when it was longer."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"
