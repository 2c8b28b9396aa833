"""Purged walk-forward folds: golden indices, invariants, and errors that say what to change."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentio_core.folds import FoldError, PurgedWalkForward


def test_golden_expanding_12_rows():
    """2 folds of 3 test bars, purge 2, embargo 1 over 12 bars, worked out by hand."""
    cv = PurgedWalkForward(n_folds=2, test_bars=3, purge_bars=2, embargo_bars=1, min_train_bars=1)
    splits = list(cv.split(12))
    np.testing.assert_array_equal(splits[0][0], [0, 1, 2])
    np.testing.assert_array_equal(splits[0][1], [5, 6, 7])
    np.testing.assert_array_equal(splits[1][0], [0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(splits[1][1], [9, 10, 11])
    # bar 8 is the embargo after fold 0's test window: in no test window, but trained on later


def test_golden_rolling_12_rows():
    cv = PurgedWalkForward(n_folds=2, test_bars=3, purge_bars=2, embargo_bars=1, scheme="rolling", train_bars=2,
                           min_train_bars=1)
    splits = list(cv.split(12))
    np.testing.assert_array_equal(splits[0][0], [1, 2])
    np.testing.assert_array_equal(splits[1][0], [5, 6])
    np.testing.assert_array_equal(splits[1][1], [9, 10, 11])


def test_fold_records_carry_purge_and_embargo():
    f = PurgedWalkForward(n_folds=3, test_bars=10, purge_bars=4, embargo_bars=2, min_train_bars=5).folds(100)
    assert [x.fold for x in f] == [0, 1, 2]
    assert all(x.purge_bars == 4 and x.embargo_bars == 2 for x in f)
    assert f[-1].test_end == 100
    assert all(b.test_start - a.test_end == 2 for a, b in zip(f, f[1:]))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(50, 3000), k=st.integers(1, 8), t=st.integers(1, 200), p=st.integers(0, 60),
    e=st.integers(0, 30), rolling=st.booleans(), train=st.integers(1, 500),
)
def test_invariants(n, k, t, p, e, rolling, train):
    """Train and test disjoint, train before test with >= purge bars between, tests ordered, in range."""
    cv = PurgedWalkForward(k, t, p, e, scheme="rolling" if rolling else "expanding", train_bars=train, min_train_bars=1)
    try:
        folds = cv.folds(n)
    except FoldError:
        assert n - (k - 1) * (t + e) - t - p < 1
        return
    assert len(folds) == k
    for f in folds:
        tr, te = set(range(f.train_start, f.train_end)), set(range(f.test_start, f.test_end))
        assert tr and len(te) == t and not tr & te
        assert f.test_start - f.train_end == p
        assert 0 <= f.train_start < f.train_end <= f.test_start < f.test_end <= n
        if rolling:
            assert f.train_bars <= train
    for a, b in zip(folds, folds[1:]):
        assert a.test_end + e == b.test_start  # ordered, never overlapping
        assert b.train_end >= a.train_end


def test_too_little_data_says_what_to_change():
    with pytest.raises(FoldError) as err:
        PurgedWalkForward(n_folds=5, test_bars=100, purge_bars=10, min_train_bars=200).folds(600)
    msg = str(err.value)
    assert "needs 710" in msg and "folds.n_folds" in msg and "folds.test_bars" in msg


@pytest.mark.parametrize(
    "kwargs, key",
    [({"n_folds": 0}, "folds.n_folds"), ({"test_bars": 0}, "folds.test_bars"), ({"purge_bars": -1}, "purge_bars"),
     ({"embargo_bars": -1}, "embargo_bars"), ({"scheme": "kfold"}, "folds.scheme"),
     ({"scheme": "rolling"}, "train_bars"), ({"min_train_bars": 0}, "min_train_bars")],
)
def test_invalid_settings_are_rejected(kwargs, key):
    args = {"n_folds": 2, "test_bars": 10, "purge_bars": 2} | kwargs
    with pytest.raises(FoldError, match=key):
        PurgedWalkForward(**args)
