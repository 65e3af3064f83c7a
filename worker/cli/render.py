"""Text rendering shared by the commands: JSON, aligned tables, sizes, durations, timestamps."""

from __future__ import annotations

import time
from typing import Any

import orjson


def dumps(data: Any) -> str:
    """``data`` as indented JSON (what ``--json`` prints)."""
    options = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
    return orjson.dumps(data, option=options, default=str).decode()


def table(headers: list[str], rows: list[list[Any]], right: set[int] | None = None) -> list[str]:
    """Lines of a table whose columns are as wide as their widest cell; ``right``: right-aligned columns."""
    right = right or set()
    cells = [[str(value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))]
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(row) for row in cells)]


def indented(lines: list[str], by: str = "  ") -> list[str]:
    return [by + line for line in lines]


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


def ms(value: float) -> str:
    """Milliseconds with as many decimals as are meaningful."""
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def size(n: int) -> str:
    """Bytes in B, KiB, MiB or GiB."""
    amount = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{int(amount)} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{n} B"


def ratio(value: float) -> str:
    return f"{value:.1%}"


def when(at: Any) -> str:
    """A Unix time as UTC date and time; ``?`` if it is not one."""
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not at:
        return "?"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))
    except (OverflowError, OSError, ValueError):
        return "?"


def clip(value: Any, width: int) -> str:
    """``value`` on one line, cut to ``width`` characters."""
    text = " ".join(str(value if value is not None else "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def parked(counts: dict[str, int]) -> str:
    """`` (parked so far: postgres 2, redis 1)``, or nothing."""
    if not counts:
        return ""
    return " (parked so far: " + ", ".join(f"{source} {n}" for source, n in sorted(counts.items())) + ")"
