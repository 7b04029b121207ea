"""The one text-table formatter: columns padded to their widest cell, trailing space trimmed."""
from __future__ import annotations

from typing import Sequence


def format_table(rows: Sequence[Sequence[str]], indent: str = "  ", gap: str = "  ") -> list[str]:
    """Each row as one line, cells left-aligned under each other (the first row is usually a header)."""
    if not rows:
        return []
    columns = max(len(row) for row in rows)
    widths = [max((len(row[i]) for row in rows if i < len(row)), default=0) for i in range(columns)]
    return [(indent + gap.join(cell.ljust(w) for cell, w in zip(row, widths))).rstrip() for row in rows]
