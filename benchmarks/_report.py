"""What every benchmark's report shares: target verdicts and a plain-text table."""

from __future__ import annotations


def verdict(value: float, limit: float, *, at_most: bool = False) -> str:
    """ "ok" when ``value`` meets the target ``limit`` (``>=``, or ``<=`` with ``at_most``), else "MISSED"."""
    ok = value <= limit if at_most else value >= limit
    return "ok" if ok else "MISSED"


def target(value: float, limit: float, *, at_most: bool = False) -> str:
    """The target and its verdict, e.g. ">= 0.7 MISSED"."""
    return f"{'<=' if at_most else '>='} {limit:g} {verdict(value, limit, at_most=at_most)}"


def table(rows: list[tuple[str, ...]]) -> str:
    """Rows as left-aligned columns, the first row a header underlined with dashes."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
