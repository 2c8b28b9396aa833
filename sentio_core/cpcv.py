"""Combinatorial purged cross-validation (Lopez de Prado, 2018, "Advances in Financial Machine
Learning", ch. 12): a research evaluation scheme that yields many backtest paths instead of one.

The usable rows are cut into ``N`` contiguous groups. Every choice of ``k`` test groups is one
split (``C(N, k)`` of them); its training rows are all the other rows, less a purge before each
test block and an embargo after it (adjacent test groups form one block). Each group is tested
in ``C(N-1, k-1)`` splits, so the splits' test results assemble into ``phi = C(N-1, k-1)`` complete
backtest paths over all ``N`` groups: path ``j`` takes, for each group, the ``j``-th split (in
order) that tests it. A path's Sharpe ratio is one draw of what the walk-forward backtest shows
as a single number.

Training windows are non-contiguous: a split trains on the rows before, between and after its
test blocks. The purge before and the embargo after each block are wide enough that no training
row's observation reaches into a test block (lookback + the longest feature window) and no
training row's reward does (reward horizon): ``sentio_core.folds.cpcv_spans`` sizes them.
Recursive quantities (exponential averages, the regime filter) forget a test block geometrically
rather than exactly; the README says so.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

Ranges = tuple[tuple[int, int], ...]


class CPCVError(ValueError):
    """Settings that leave a split without training rows or a group without bars."""


@dataclass(frozen=True)
class Split:
    """One split: its test groups and, in row indices (half-open), its test blocks and training ranges."""

    index: int
    groups: tuple[int, ...]
    test_ranges: Ranges
    train_ranges: Ranges

    @property
    def train_bars(self) -> int:
        return sum(b - a for a, b in self.train_ranges)

    @property
    def test_bars(self) -> int:
        return sum(b - a for a, b in self.test_ranges)


def merge(ranges: Sequence[tuple[int, int]]) -> Ranges:
    """Sorted, non-empty, touching or overlapping ranges joined."""
    out: list[list[int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)


def subtract(ranges: Ranges, cut: Ranges) -> Ranges:
    """``ranges`` less every row in ``cut``."""
    out = []
    for a, b in ranges:
        pieces = [(a, b)]
        for c, d in cut:
            pieces = [p for x, y in pieces for p in ((x, min(y, c)), (max(x, d), y)) if p[1] > p[0]]
        out += pieces
    return merge(out)


class CombinatorialPurged:
    """CPCV splitter over ``n`` usable rows (scikit-learn convention: ``__init__`` stores, ``split`` yields).

    :param n_groups: N contiguous groups of ``n // N`` rows, the last holding the remainder too.
    :param n_test_groups: k test groups per split.
    :param purge_bars: training rows dropped before each test block.
    :param embargo_bars: training rows dropped after each test block.
    """

    def __init__(self, n_groups: int, n_test_groups: int, purge_bars: int, embargo_bars: int):
        if n_groups < 2 or not 1 <= n_test_groups < n_groups:
            raise CPCVError(f"folds.cpcv_test_groups must be between 1 and folds.cpcv_groups - 1 "
                            f"(got {n_test_groups} of {n_groups})")
        if purge_bars < 0 or embargo_bars < 0:
            raise CPCVError(f"purge and embargo must be >= 0 bars, got {purge_bars} and {embargo_bars}")
        self.n_groups, self.k, self.purge_bars, self.embargo_bars = n_groups, n_test_groups, purge_bars, embargo_bars

    @property
    def n_splits(self) -> int:
        return math.comb(self.n_groups, self.k)

    @property
    def n_paths(self) -> int:
        """phi = C(N-1, k-1) = k C(N, k) / N backtest paths."""
        return math.comb(self.n_groups - 1, self.k - 1)

    def groups(self, n: int) -> list[tuple[int, int]]:
        if n < self.n_groups:
            raise CPCVError(f"{n} usable bars cannot make {self.n_groups} groups")
        size = n // self.n_groups
        return [(g * size, n if g == self.n_groups - 1 else (g + 1) * size) for g in range(self.n_groups)]

    def splits(self, n: int) -> list[Split]:
        """Every split over ``n`` rows, test groups in lexicographic order."""
        groups = self.groups(n)
        out = []
        for i, chosen in enumerate(itertools.combinations(range(self.n_groups), self.k)):
            tests = merge([groups[g] for g in chosen])
            cut = merge([(max(0, a - self.purge_bars), min(n, b + self.embargo_bars)) for a, b in tests])
            train = subtract(((0, n),), cut)
            if not train:
                raise CPCVError(f"split {i} (test groups {chosen}) has no training rows left after the purge "
                                f"({self.purge_bars}) and embargo ({self.embargo_bars}); use fewer test groups or more data")
            out.append(Split(i, chosen, tests, train))
        return out

    def split(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train_idx, test_idx)`` index arrays, split by split."""
        for s in self.splits(n):
            yield (np.concatenate([np.arange(a, b) for a, b in s.train_ranges]),
                   np.concatenate([np.arange(a, b) for a, b in s.test_ranges]))

    def paths(self) -> list[list[int]]:
        """``paths[j][g]``: the split whose test result fills group ``g`` on path ``j``."""
        testing: list[list[int]] = [[] for _ in range(self.n_groups)]
        for i, chosen in enumerate(itertools.combinations(range(self.n_groups), self.k)):
            for g in chosen:
                testing[g].append(i)
        return [[testing[g][j] for g in range(self.n_groups)] for j in range(self.n_paths)]


def path_returns(paths: list[list[int]], group_returns: dict[tuple[int, int], np.ndarray]) -> list[np.ndarray]:
    """Each path's bar returns, its groups in order.

    :param group_returns: ``(split, group)`` -> that split's out-of-sample bar returns on the group.
    """
    return [np.concatenate([group_returns[(split, g)] for g, split in enumerate(path)]) for path in paths]
