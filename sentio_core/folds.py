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

import hashlib
import json
from dataclasses import asdict, dataclass
from collections.abc import Callable, Iterator

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, ValidationError

from sentio_core.config import Config, FoldConfig, reads
from sentio_core.features import COLUMN_BLOCK, first_complete_row
from sentio_core.cpcv import CPCVError, splitter
from sentio_core.ranges import Ranges, count, hull, subtract


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

    The settings are checked by the config schema's own rules (:class:`~sentio_core.config.FoldConfig`),
    written once there; a bad value raises :class:`FoldError` naming the ``folds.`` key.

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
        settings = {"n_folds": n_folds, "test_bars": test_bars, "purge_bars": purge_bars, "embargo_bars": embargo_bars,
                    "scheme": scheme, "train_bars": train_bars, "min_train_bars": min_train_bars}
        try:
            FoldConfig.model_validate(settings)
        except ValidationError as exc:
            raise FoldError("; ".join(_describe(err, settings) for err in exc.errors())) from None
        if purge_bars is None:
            raise FoldError("folds.purge_bars: the splitter needs the effective purge (an integer >= 0)")
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


def _describe(err: dict, settings: dict) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if key:
        return f"folds.{key}: {err['msg']} (got {settings.get(err['loc'][0])!r})"
    return err["msg"].removeprefix("Value error, ")


def from_config(folds_cfg: FoldConfig, purge_bars: int) -> PurgedWalkForward:
    """Build the splitter from a :class:`~sentio_core.config.FoldConfig` and the effective purge."""
    return PurgedWalkForward(
        n_folds=folds_cfg.n_folds, test_bars=folds_cfg.test_bars, purge_bars=purge_bars,
        embargo_bars=folds_cfg.embargo_bars, scheme=folds_cfg.scheme, train_bars=folds_cfg.train_bars,
        min_train_bars=folds_cfg.min_train_bars,
    )


SUMMARY_KEYS = ("fold", "train_start", "train_end", "test_start", "test_end", "train_bars", "test_bars",
                "purge_bars", "embargo_bars")


class FoldSpan(BaseModel):
    """A fold in both coordinates: feature-table rows and ISO timestamps, and the fingerprints of
    what its work reads (set by :func:`with_fingerprints`).

    Rows are half-open ``[start, end)`` feature-table rows (the aligned panel's timestamps in
    order); timestamps are the first and last bar inside each window.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    fold: int
    train_start: str
    train_end: str
    test_start: str
    test_end: str
    purge_bars: int
    embargo_bars: int
    train_bars: int
    test_bars: int
    train_rows: tuple[int, int]
    test_rows: tuple[int, int]
    panel_fingerprint: str | None = None  # the panel up to the test end: what the regime fit reads
    fingerprint: str | None = None  # panel and features up to the test end: what training and backtests read
    # a combinatorial purged split (folds.scheme cpcv): its training ranges, and its test groups with
    # their rows; train_rows / test_rows are then the hulls. Empty for a walk-forward fold.
    train_ranges: tuple[tuple[int, int], ...] = ()
    test_groups: tuple[int, ...] = ()
    test_ranges: tuple[tuple[int, int], ...] = ()

    @property
    def training_ranges(self) -> Ranges:
        """The rows the fold's models are fitted on: one range, or a split's several."""
        return self.train_ranges or (self.train_rows,)

    @property
    def testing_ranges(self) -> Ranges:
        """The rows backtested out of sample: one window, or one range per test group of a split."""
        return self.test_ranges or (self.test_rows,)

    @property
    def end_row(self) -> int:
        """One past the last row any of the fold's work reads."""
        return max(self.train_rows[1], self.test_rows[1])

    def inner_split(self, validation_bars: int) -> tuple[tuple[int, int], tuple[int, int] | None]:
        """The training rows policies learn from and the inner validation slice: the training
        window's last ``validation_bars`` rows, purged from the rows before them by the fold's own
        purge, as the test window is from the training window. Both lie inside ``train_rows``, so
        neither touches the test window or its purge. ``validation_bars`` 0: all rows, no slice.

        :raises FoldError: when the slice and its purge leave fewer than ``purge_bars + 2`` rows to learn from.
        """
        if self.train_ranges:
            return self._inner_split_ranges(validation_bars)
        a, b = self.train_rows
        if validation_bars == 0:
            return (a, b), None
        learn_end = b - validation_bars - self.purge_bars
        if learn_end - a < self.purge_bars + 2:
            raise FoldError(f"train.validation_bars ({validation_bars}) and the purge ({self.purge_bars}) leave "
                            f"{learn_end - a} of fold {self.fold}'s {b - a} training bars to learn from; lower "
                            f"train.validation_bars or add data")
        return (a, learn_end), (b - validation_bars, b)

    def _inner_split_ranges(self, validation_bars: int) -> tuple[Ranges, tuple[int, int] | None]:
        """A split's: the slice is the last ``validation_bars`` rows of its longest training range,
        purged on both sides from the rows learned (the rows after it may follow it in time)."""
        ranges = self.train_ranges
        if validation_bars == 0:
            return ranges, None
        a, b = max(ranges, key=lambda r: r[1] - r[0])
        if b - a < validation_bars + self.purge_bars + 2:
            raise FoldError(f"train.validation_bars ({validation_bars}) and the purge ({self.purge_bars}) do not fit "
                            f"split {self.fold}'s longest training range ({b - a} bars); lower train.validation_bars "
                            f"or use fewer folds.cpcv_test_groups")
        slice_ = (b - validation_bars, b)
        learn = subtract(ranges, ((slice_[0] - self.purge_bars, b + self.purge_bars),))
        return learn, slice_

    def summary(self) -> dict:
        """The public description (``sentio folds``): window timestamps and sizes."""
        return {k: getattr(self, k) for k in SUMMARY_KEYS}

    def window(self) -> dict:
        """Everything that places the fold, without its fingerprints (a walk-forward fold's empty
        split fields are left out: its digest is what it was before splits existed)."""
        empty = {k for k in ("train_ranges", "test_groups", "test_ranges") if not getattr(self, k)}
        return self.model_dump(mode="json", exclude={"panel_fingerprint", "fingerprint", *empty})


@reads("folds", "env")
def fold_spans(cfg: Config, feats: pl.DataFrame | pl.LazyFrame) -> list[FoldSpan]:
    """Purged walk-forward folds over the usable rows (every feature defined); the layout ends on
    the last multiple of ``folds.step_bars`` usable bars, so it moves only once every step. The
    feature table may be scanned lazily (its timestamps and a block of columns at a time are read)."""
    offset = first_complete_row(feats)
    stamps = feats.lazy().select("timestamp").collect()["timestamp"][offset:]
    n_used = stamps.len() - stamps.len() % cfg.folds.step_bars

    def iso(i: int) -> str:
        return stamps[i].isoformat()

    if cfg.folds.scheme == "cpcv":
        return _cpcv_spans(cfg, n_used, offset, iso)

    return [FoldSpan(fold=f.fold, train_start=iso(f.train_start), train_end=iso(f.train_end - 1),
                     test_start=iso(f.test_start), test_end=iso(f.test_end - 1), purge_bars=f.purge_bars,
                     embargo_bars=f.embargo_bars, train_bars=f.train_bars, test_bars=f.test_bars,
                     train_rows=(offset + f.train_start, offset + f.train_end),
                     test_rows=(offset + f.test_start, offset + f.test_end))
            for f in from_config(cfg.folds, cfg.purge_bars).folds(n_used)]


def cpcv_purge_bars(cfg: Config, warmup_rows: int) -> int:
    """The purge before and the embargo after each test block of a combinatorial split: the
    observation window and the longest feature window (the table's warm-up, ``warmup_rows``: 68 on
    the daily data, the weekly features) plus the reward horizon, so that no training row's
    observation or reward reaches into a test block; at least the configured purge and embargo."""
    window = cfg.env.lookback_bars + warmup_rows + cfg.env.reward_horizon_bars
    return max(window, cfg.purge_bars, cfg.folds.embargo_bars)


def _cpcv_spans(cfg: Config, n_used: int, offset: int, iso: Callable[[int], str]) -> list[FoldSpan]:
    gap = cpcv_purge_bars(cfg, offset)
    cv = splitter(cfg, gap)
    try:
        splits = cv.splits(n_used)
    except CPCVError as exc:
        raise FoldError(str(exc)) from None
    groups = cv.groups(n_used)
    out = []
    for s in splits:
        train, tests = s.train_ranges, tuple(groups[g] for g in s.groups)
        (a, b), (c, d) = hull(train), hull(tests)
        out.append(FoldSpan(fold=s.index, train_start=iso(a), train_end=iso(b - 1), test_start=iso(c), test_end=iso(d - 1),
                            purge_bars=gap, embargo_bars=gap, train_bars=count(train), test_bars=count(tests),
                            train_rows=(offset + a, offset + b), test_rows=(offset + c, offset + d),
                            train_ranges=tuple((offset + x, offset + y) for x, y in train), test_groups=s.groups,
                            test_ranges=tuple((offset + x, offset + y) for x, y in tests)))
    return out


def with_fingerprints(spans: list[FoldSpan], bars: pl.DataFrame | pl.LazyFrame,
                      feats: pl.DataFrame | pl.LazyFrame) -> list[FoldSpan]:
    """The spans with both fingerprints set (see :func:`fold_fingerprint`)."""
    return [span.model_copy(update={"panel_fingerprint": fold_fingerprint(bars, None, span),
                                    "fingerprint": fold_fingerprint(bars, feats, span)}) for span in spans]


STRING_CHUNK = 1_000_000  # strings hashed at a time: a 2M-bar panel's symbols as one Python list would hold 300 MB


def fold_fingerprint(bars: pl.DataFrame | pl.LazyFrame, feats: pl.DataFrame | pl.LazyFrame | None, span: FoldSpan) -> str:
    """SHA-256 (16 hex) of everything a fold's work reads: the panel rows (and, unless ``feats`` is
    None, the feature rows) up to the end of its test window, and the window itself. Features are
    causal, so bars appended later leave it unchanged and the fold's work stays cached.

    The tables may be scanned lazily: :data:`~sentio_core.features.COLUMN_BLOCK` columns are read at a time."""
    bars = bars.lazy()
    end = span.end_row
    last = bars.select(pl.col("timestamp").unique().sort()).collect()["timestamp"][end - 1]
    digest = hashlib.sha256(json.dumps(span.window(), sort_keys=True).encode())
    # the panel's rows up to the fold's last bar, by symbol then time: their row numbers, once
    order = (bars.with_row_index("_row").filter(pl.col("timestamp") <= last).sort("symbol", "timestamp")
             .select("_row").collect()["_row"])
    names = bars.collect_schema().names()
    blocks: list[Callable[[], pl.DataFrame]] = [
        lambda part=names[i: i + COLUMN_BLOCK]: bars.select(part).collect().select(pl.all().gather(order))
        for i in range(0, len(names), COLUMN_BLOCK)]
    if feats is not None:
        feats = feats.lazy()
        names = feats.collect_schema().names()
        blocks += [lambda part=names[i: i + COLUMN_BLOCK]: feats.select(part).slice(0, end).collect()
                   for i in range(0, len(names), COLUMN_BLOCK)]
    for read in blocks:
        for col in read().get_columns():
            _digest_column(digest, col)
    return digest.hexdigest()[:16]


def _digest_column(digest, col: pl.Series) -> None:
    """Feed one column to the digest: its name, then its values (strings joined by NUL, in chunks)."""
    digest.update(col.name.encode())
    if col.dtype == pl.String:
        for i in range(0, col.len(), STRING_CHUNK):  # the same bytes as one "\x00".join of the column
            digest.update((("\x00" if i else "") + "\x00".join(col.slice(i, STRING_CHUNK).to_list())).encode())
    else:
        values = col.dt.epoch("us") if col.dtype.is_temporal() else col
        digest.update(values.cast(pl.Float64).fill_null(float("nan")).to_numpy().tobytes())
