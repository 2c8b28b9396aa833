"""Combinatorial purged cross-validation: golden splits on a small example, invariants over random
settings (no training bar inside a purge or embargo; every group on every path once), and the
assembly of backtest paths. ``scripts/crosscheck_cpcv.py`` holds the splits equal to skfolio's."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentio_core.cpcv import CombinatorialPurged, CPCVError, path_returns
from sentio_core.ranges import as_ranges, merge, subtract, take


def test_golden_splits_of_six_groups_two_tested():
    """60 rows, 6 groups of 10, purge 3 before each test block and embargo 2 after it."""
    cv = CombinatorialPurged(6, 2, purge_bars=3, embargo_bars=2)
    splits = cv.splits(60)
    assert cv.n_splits == len(splits) == 15 and cv.n_paths == 5
    assert [(s.groups, s.test_ranges, s.train_ranges) for s in splits[:6]] == [
        ((0, 1), ((0, 20),), ((22, 60),)),  # adjacent test groups are one block: no purge between them
        ((0, 2), ((0, 10), (20, 30)), ((12, 17), (32, 60))),
        ((0, 3), ((0, 10), (30, 40)), ((12, 27), (42, 60))),
        ((0, 4), ((0, 10), (40, 50)), ((12, 37), (52, 60))),
        ((0, 5), ((0, 10), (50, 60)), ((12, 47),)),
        ((1, 2), ((10, 30),), ((0, 7), (32, 60))),
    ]
    assert cv.paths() == [[0, 0, 1, 2, 3, 4], [1, 5, 5, 6, 7, 8], [2, 6, 9, 9, 10, 11], [3, 7, 10, 12, 12, 13],
                          [4, 8, 11, 13, 14, 14]]
    assert cv.groups(63)[-1] == (50, 63)  # the last group holds the remainder


@settings(max_examples=150, deadline=None)
@given(n_groups=st.integers(3, 8), k=st.integers(1, 7), extra=st.integers(0, 200), purge=st.integers(0, 8),
       embargo=st.integers(0, 8))
def test_no_training_bar_lies_in_a_test_block_its_purge_or_its_embargo(n_groups, k, extra, purge, embargo):
    k = min(k, n_groups - 1)
    n = n_groups * 20 + extra
    cv = CombinatorialPurged(n_groups, k, purge, embargo)
    try:
        splits = cv.splits(n)
    except CPCVError:
        return
    for s in splits:
        train = np.concatenate([np.arange(a, b) for a, b in s.train_ranges])
        for a, b in s.test_ranges:
            assert not np.any((train >= a - purge) & (train < b + embargo))
        covered = set(train) | {i for a, b in s.test_ranges for i in range(a, b)}
        lost = {i for a, b in s.test_ranges for i in [*range(max(0, a - purge), a), *range(b, min(n, b + embargo))]}
        assert covered | lost == set(range(n))  # every other row trains
    tested = [[s.index for s in splits if g in s.groups] for g in range(n_groups)]
    assert all(len(t) == math.comb(n_groups - 1, k - 1) for t in tested)
    for path in cv.paths():  # each group once per path, filled by a split that tests it
        assert all(g in splits[split].groups for g, split in enumerate(path))
    uses = sorted((split, g) for path in cv.paths() for g, split in enumerate(path))
    assert uses == sorted((s.index, g) for s in splits for g in s.groups)  # every test result on exactly one path


def test_path_returns_follow_the_groups_in_order():
    cv = CombinatorialPurged(3, 2, 0, 0)  # splits (0,1), (0,2), (1,2); paths [[0,0,1],[1,2,2]]
    returns = {(s, g): np.full(2, 10.0 * s + g) for s, chosen in enumerate([(0, 1), (0, 2), (1, 2)]) for g in chosen}
    assert [p.tolist() for p in path_returns(cv.paths(), returns)] == [[0, 0, 1, 1, 12, 12], [10, 10, 21, 21, 22, 22]]


def test_ranges_helpers():
    assert merge([(5, 7), (0, 2), (2, 3), (6, 9), (4, 4)]) == ((0, 3), (5, 9))
    assert subtract(((0, 10),), ((2, 4), (8, 12))) == ((0, 2), (4, 8))
    assert as_ranges((3, 9)) == ((3, 9),) and as_ranges([(0, 2), (5, 7)]) == ((0, 2), (5, 7))
    x = np.arange(10)
    assert take(x, ((0, 2), (5, 7))).tolist() == [0, 1, 5, 6] and take(x, ((3, 5),)).base is x
    for bad in ([(5, 7), (0, 2)], [(0, 3), (2, 5)], [(2, 2)], []):
        with pytest.raises(ValueError, match="sorted, disjoint, non-empty"):
            as_ranges(bad)


def test_bad_settings_say_what_to_change():
    with pytest.raises(CPCVError, match="cpcv_test_groups must be between 1 and folds.cpcv_groups - 1"):
        CombinatorialPurged(4, 4, 0, 0)
    with pytest.raises(CPCVError, match="no training rows"):
        CombinatorialPurged(3, 2, 50, 50).splits(30)
    with pytest.raises(CPCVError, match="cannot make 6 groups"):
        CombinatorialPurged(6, 2, 0, 0).splits(5)
