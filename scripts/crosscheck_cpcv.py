"""Cross-check of Sentio's combinatorial purged splits against skfolio's ``CombinatorialPurgedCV``
(an independent implementation), over random settings: the same training and test rows in every
split, and the same assignment of split test groups to backtest paths.

skfolio is not a dependency; run this with a Python that has it and can import ``sentio_core``:
  python -m venv /tmp/skv && /tmp/skv/bin/pip install skfolio numpy polars pydantic
  /tmp/skv/bin/python scripts/crosscheck_cpcv.py

Conventions mapped: skfolio drops ``purged_size`` rows before each test fold and ``purged_size +
embargo_size`` after it; Sentio drops ``purge_bars`` before each test block and ``embargo_bars``
after it, so Sentio (purge P, embargo E >= P) is skfolio (purged_size P, embargo_size E - P).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skfolio.model_selection import CombinatorialPurgedCV  # noqa: E402

from sentio_core.cpcv import CombinatorialPurged, CPCVError  # noqa: E402


def main(cases: int = 300) -> None:
    rng = np.random.default_rng(0)
    checked = skipped = 0
    for _ in range(cases):
        n_groups = int(rng.integers(3, 9))
        k = int(rng.integers(2, n_groups))  # skfolio asks for at least 2 test groups
        n = int(rng.integers(n_groups * 8, 400))
        purge = int(rng.integers(0, 6))
        embargo = purge + int(rng.integers(0, 6))
        ours = CombinatorialPurged(n_groups, k, purge, embargo)
        theirs = CombinatorialPurgedCV(n_folds=n_groups, n_test_folds=k, purged_size=purge, embargo_size=embargo - purge)
        X = np.zeros((n, 1))
        try:
            splits = ours.splits(n)
        except CPCVError:  # a split with no training row left: refused here, not compared
            skipped += 1
            continue
        path_ids = theirs.get_path_ids()
        paths = ours.paths()
        for s, (train, tests) in zip(splits, theirs.split(X), strict=True):
            mine_train = np.concatenate([np.arange(a, b) for a, b in s.train_ranges])
            assert np.array_equal(mine_train, np.sort(train)), (n, n_groups, k, purge, embargo, s.index)
            assert [t.tolist() for t in tests] == [list(range(*ours.groups(n)[g])) for g in s.groups]
            for j, g in enumerate(s.groups):  # skfolio's path of this split's j-th test group
                assert paths[path_ids[s.index][j]][g] == s.index
        checked += len(splits)
    print(f"{cases - skipped} settings ({skipped} refused: no training row left), {checked} splits: Sentio's training rows, test groups and path assignment "
          f"equal skfolio's CombinatorialPurgedCV in every split")


if __name__ == "__main__":
    main()
