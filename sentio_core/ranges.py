"""Row ranges: a window of rows is a tuple of sorted, disjoint, half-open ``(start, end)`` ranges.

A walk-forward fold trains on one range; a combinatorial purged split (:mod:`sentio_core.cpcv`) on
several, the rows around its test blocks. Functions that fit on training rows (normalisation,
feature de-duplication, the legs' worst moves, the regime model, episode starts) accept either a
single ``(start, end)`` pair or such a tuple, through :func:`as_ranges`; one range takes exactly
the code path it always did.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Ranges = tuple[tuple[int, int], ...]


def as_ranges(rows: tuple[int, int] | Sequence[tuple[int, int]]) -> Ranges:
    """``(a, b)`` -> ``((a, b),)``; a sequence of ranges as a tuple, checked sorted, disjoint and non-empty."""
    if len(rows) == 2 and all(isinstance(v, (int, np.integer)) for v in rows):
        out: Ranges = ((int(rows[0]), int(rows[1])),)
    else:
        out = tuple((int(a), int(b)) for a, b in rows)
    if not out or any(b <= a for a, b in out) or any(out[i][1] > out[i + 1][0] for i in range(len(out) - 1)):
        raise ValueError(f"rows must be sorted, disjoint, non-empty half-open ranges, got {rows!r}")
    return out


def merge(ranges: Sequence[tuple[int, int]]) -> Ranges:
    """Sorted, non-empty, touching or overlapping ranges joined."""
    out: list[list[int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)


def subtract(ranges: Sequence[tuple[int, int]], cut: Sequence[tuple[int, int]]) -> Ranges:
    """``ranges`` less every row in ``cut``."""
    out = []
    for a, b in ranges:
        pieces = [(a, b)]
        for c, d in cut:
            pieces = [p for x, y in pieces for p in ((x, min(y, c)), (max(x, d), y)) if p[1] > p[0]]
        out += pieces
    return merge(out)


def count(ranges: Ranges) -> int:
    return sum(b - a for a, b in ranges)


def hull(ranges: Ranges) -> tuple[int, int]:
    """The smallest single range holding them all."""
    return ranges[0][0], ranges[-1][1]


def take(x: np.ndarray, ranges: Ranges) -> np.ndarray:
    """The rows of ``x`` in the ranges, in order (a view for one range)."""
    if len(ranges) == 1:
        a, b = ranges[0]
        return x[a:b]
    return np.concatenate([x[a:b] for a, b in ranges])
