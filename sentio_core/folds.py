"""Purged walk-forward folds (scikit-learn convention: ``__init__`` stores and validates, ``split`` yields).

Layout over ``n`` usable bars (indices 0..n-1), for fold k of K, test length T, embargo E, purge P::

    test_end_k   = n - (K - 1 - k) * (T + E)        (exclusive)
    test_start_k = test_end_k - T
    train_end_k  = test_start_k - P                  (exclusive: P purged bars in between)
    train_start  = 0 (expanding) or train_end_k - train_bars (rolling)

Test windows are ordered and never overlap; ``E`` bars after each test window belong to no test
window (they stay available for training later folds). Nothing chosen for a fold looks at its
test window.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np


class FoldError(ValueError):
    """Fold settings that cannot work; the message says what to change."""


@dataclass(frozen=True)
class Fold:
    """Index bounds of one fold (half-open ranges over the usable bars)."""

    fold: int
    train_start: int
    train_end: int
    test_start: int
    test_end: int
    purge_bars: int
    embargo_bars: int

    @property
    def train_bars(self) -> int:
        return self.train_end - self.train_start

    @property
    def test_bars(self) -> int:
        return self.test_end - self.test_start

    def to_dict(self) -> dict:
        return asdict(self)


class PurgedWalkForward:
    """Walk-forward splitter with a purge before each test window and an embargo after it.

    :param n_folds: number of test windows, at the end of the data.
    :param test_bars: bars per test window.
    :param purge_bars: bars dropped between a training window and its test window
        (at least lookback + reward horizon, so no training label overlaps test inputs).
    :param embargo_bars: bars after each test window that belong to no test window.
    :param scheme: ``expanding`` (train from the first bar) or ``rolling`` (the last ``train_bars``).
    :param min_train_bars: the smallest training window accepted for any fold.
    """

    def __init__(self, n_folds: int, test_bars: int, purge_bars: int, embargo_bars: int = 0,
                 scheme: str = "expanding", train_bars: int | None = None, min_train_bars: int = 1):
        if n_folds < 1:
            raise FoldError(f"folds.n_folds must be at least 1 (got {n_folds})")
        if test_bars < 1:
            raise FoldError(f"folds.test_bars must be at least 1 (got {test_bars})")
        if purge_bars < 0 or embargo_bars < 0:
            raise FoldError(f"folds.purge_bars and folds.embargo_bars must be >= 0 (got {purge_bars}, {embargo_bars})")
        if scheme not in ("expanding", "rolling"):
            raise FoldError(f"folds.scheme must be 'expanding' or 'rolling' (got {scheme!r})")
        if scheme == "rolling" and (train_bars is None or train_bars < 1):
            raise FoldError("folds.scheme 'rolling' needs folds.train_bars >= 1")
        if min_train_bars < 1:
            raise FoldError(f"folds.min_train_bars must be at least 1 (got {min_train_bars})")
        self.n_folds, self.test_bars = n_folds, test_bars
        self.purge_bars, self.embargo_bars = purge_bars, embargo_bars
        self.scheme, self.train_bars, self.min_train_bars = scheme, train_bars, min_train_bars

    def folds(self, n: int) -> list[Fold]:
        """The folds over ``n`` bars; raises :class:`FoldError` saying what to change if they do not fit."""
        k, t, e, p = self.n_folds, self.test_bars, self.embargo_bars, self.purge_bars
        first_test = n - (k - 1) * (t + e) - t
        first_train = first_test - p
        if first_train < self.min_train_bars:
            need = self.min_train_bars + p + k * t + (k - 1) * e
            raise FoldError(
                f"{n} usable bars cannot hold {k} folds of {t} test bars with purge {p}, embargo {e} "
                f"and at least {self.min_train_bars} training bars (needs {need}); lower folds.n_folds, "
                f"folds.test_bars or folds.min_train_bars, or add data"
            )
        out = []
        for i in range(k):
            test_end = n - (k - 1 - i) * (t + e)
            test_start = test_end - t
            train_end = test_start - p
            train_start = 0 if self.scheme == "expanding" else max(0, train_end - int(self.train_bars))
            out.append(Fold(i, train_start, train_end, test_start, test_end, p, e))
        return out

    def split(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train_idx, test_idx)`` index arrays, fold by fold."""
        for f in self.folds(n):
            yield np.arange(f.train_start, f.train_end), np.arange(f.test_start, f.test_end)


def from_config(folds_cfg, purge_bars: int) -> PurgedWalkForward:
    """Build the splitter from a :class:`~sentio_core.config.FoldConfig` and the effective purge."""
    return PurgedWalkForward(
        n_folds=folds_cfg.n_folds, test_bars=folds_cfg.test_bars, purge_bars=purge_bars,
        embargo_bars=folds_cfg.embargo_bars, scheme=folds_cfg.scheme, train_bars=folds_cfg.train_bars,
        min_train_bars=folds_cfg.min_train_bars,
    )
