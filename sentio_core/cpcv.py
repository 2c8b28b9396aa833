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

from sentio_core.config import Config, reads
from sentio_core.metrics import sharpe
from sentio_core.ranges import Ranges, merge, subtract


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


@reads("folds")
def splitter(cfg: Config, purge_bars: int) -> CombinatorialPurged:
    """The config's splitter (``folds.cpcv_groups``, ``folds.cpcv_test_groups``), purge and embargo ``purge_bars``."""
    return CombinatorialPurged(cfg.folds.cpcv_groups, cfg.folds.cpcv_test_groups, purge_bars, purge_bars)


def path_returns(paths: list[list[int]], group_returns: dict[tuple[int, int], np.ndarray]) -> list[np.ndarray]:
    """Each path's bar returns, its groups in order.

    :param group_returns: ``(split, group)`` -> that split's out-of-sample bar returns on the group.
    """
    return [np.concatenate([group_returns[(split, g)] for g, split in enumerate(path)]) for path in paths]


@dataclass(frozen=True)
class PathSharpes:
    """One strategy's backtest paths: each path's annualised Sharpe ratio and their distribution."""

    strategy: str
    sharpes: list[float]

    def summary(self) -> dict[str, float]:
        x = np.asarray(self.sharpes)
        q = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0])
        return {"paths": float(x.size), "mean": float(x.mean()), "sd": float(x.std(ddof=1)) if x.size > 1 else 0.0,
                "min": float(q[0]), "q25": float(q[1]), "median": float(q[2]), "q75": float(q[3]), "max": float(q[4]),
                "share_positive": float(np.mean(x > 0))}


def split_groups(returns: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """A split's chained test returns cut back into its test groups (``sizes``: each group's bars, in order)."""
    if sum(sizes) != returns.size:
        raise ValueError(f"{returns.size} returns do not cover test groups of {list(sizes)} bars")
    return np.split(returns, np.cumsum(sizes)[:-1])


def path_sharpes(cv: CombinatorialPurged, groups_of: Sequence[tuple[tuple[int, ...], Sequence[int]]],
                 returns: Sequence[dict[str, np.ndarray]], strategies: Sequence[str],
                 periods_per_year: float) -> dict[str, PathSharpes]:
    """Per strategy, the Sharpe ratio of each of the ``phi`` backtest paths.

    :param groups_of: per split (in order), its test groups and their sizes in bars.
    :param returns: per split, strategy -> its chained out-of-sample returns over the test groups.
    """
    out = {}
    for name in strategies:
        by_group = {}
        for i, ((groups, sizes), split) in enumerate(zip(groups_of, returns, strict=True)):
            by_group.update({(i, g): r for g, r in zip(groups, split_groups(split[name], sizes))})
        out[name] = PathSharpes(name, [sharpe(r, periods_per_year) for r in path_returns(cv.paths(), by_group)])
    return out
