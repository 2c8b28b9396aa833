"""Tests of ``sentio_core.features`` on the shipped real bars (QQQ, TQQQ, SQQQ; daily and 5-minute).

The key property is causality: the feature row of bar t must be the same whether or not any
bar after t exists. Indicator formulas are checked against plain pandas reference code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import polars as pl
import polars.testing
import pytest

from sentio_core.config import REPO_ROOT, FeatureConfig, UniverseConfig
from sentio_core.data import load_panel
from sentio_core.features import SymbolBars, build_features, feature_columns, first_complete_row
from sentio_core.frequency import BarFrequency, bar_frequency

SYMBOLS = ["QQQ", "TQQQ", "SQQQ"]
TZ = "America/New_York"
CALENDAR = "XNYS"
# About 29 sessions (~2,200 bars) around the 2025-07-03 early close and the 2025-07-04 holiday.
INTRADAY_SLICE = ("2025-06-09", "2025-07-18")
RTOL, ATOL = 1e-9, 1e-12  # causality: recomputation must give the same numbers
REF_RTOL, REF_ATOL = 1e-7, 1e-10  # reference formulas: different summation order in pandas


@dataclass(frozen=True)
class Dataset:
    panel: pl.DataFrame
    freq: BarFrequency
    features: pl.DataFrame


def build(panel: pl.DataFrame, freq: BarFrequency, cfg: FeatureConfig | None = None) -> pl.DataFrame:
    return build_features(panel, UniverseConfig(), cfg or FeatureConfig(), freq, CALENDAR, TZ)


def load(folder: str) -> tuple[pl.DataFrame, BarFrequency]:
    panel, _ = load_panel(REPO_ROOT / "data" / folder, SYMBOLS, TZ)
    return panel, bar_frequency(panel.filter(pl.col("symbol") == "QQQ")["timestamp"])


def local_date(col: str = "timestamp") -> pl.Expr:
    return pl.col(col).dt.replace_time_zone(None).dt.date()


def row_index(features: pl.DataFrame, when: str | int) -> int:
    """Row of a local time 'YYYY-MM-DD[ HH:MM]', or a (possibly negative) row number."""
    if isinstance(when, int):
        return when % features.height
    fmt = "%Y-%m-%d %H:%M" if " " in when else "%Y-%m-%d"
    hits = features["timestamp"].dt.strftime(fmt).eq(when).arg_true()
    assert hits.len() == 1, f"{when} is not exactly one bar of the data"
    return int(hits[0])


def symbol_frame(panel: pl.DataFrame, symbol: str) -> pd.DataFrame:
    """One symbol's bars as pandas, indexed by timestamp."""
    return panel.filter(pl.col("symbol") == symbol).sort("timestamp").to_pandas().set_index("timestamp")


def assert_same_features(actual: pl.DataFrame, expected: pl.DataFrame, context: str) -> None:
    """Same columns, timestamps, null positions, and values within RTOL/ATOL (null == null)."""
    assert actual.columns == expected.columns, context
    assert actual["timestamp"].equals(expected["timestamp"]), context
    cols = feature_columns(expected)
    null_a = actual.select(pl.col(cols).is_null()).to_numpy()
    null_e = expected.select(pl.col(cols).is_null()).to_numpy()
    a = actual.select(cols).to_numpy()
    e = expected.select(cols).to_numpy()
    close = np.isclose(a, e, rtol=RTOL, atol=ATOL) | (null_a & null_e)
    bad = np.argwhere(~close | (null_a != null_e))
    details = [f"{cols[c]} @ {expected['timestamp'][r]}: {a[r, c]!r} != {e[r, c]!r}" for r, c in bad[:8]]
    assert not len(bad), f"{context}: {len(bad)} feature values differ, e.g.\n" + "\n".join(details)


def assert_matches_reference(feature: pl.Series, reference: pd.Series, what: str) -> None:
    """Same warm-up (null) positions and equal values where both are defined."""
    got = feature.to_numpy().astype(float)
    want = reference.to_numpy().astype(float)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: null (warm-up) positions differ")
    defined = ~np.isnan(want)
    assert defined.sum() > 0.9 * len(want), f"{what}: reference is almost never defined"
    np.testing.assert_allclose(got[defined], want[defined], rtol=REF_RTOL, atol=REF_ATOL, err_msg=what)


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def daily() -> Dataset:
    panel, freq = load("daily")
    return Dataset(panel, freq, build(panel, freq))


@pytest.fixture(scope="module")
def intraday() -> Dataset:
    """All 5-minute bars (206 sessions)."""
    panel, freq = load("5min")
    return Dataset(panel, freq, build(panel, freq))


@pytest.fixture(scope="module")
def intraday_slice(intraday: Dataset) -> Dataset:
    """A few thousand 5-minute bars, to keep repeated rebuilding fast."""
    lo, hi = (pd.Timestamp(d).date() for d in INTRADAY_SLICE)
    panel = intraday.panel.filter(local_date().is_between(lo, hi))
    return Dataset(panel, intraday.freq, build(panel, intraday.freq))


# --- 1. shape of the feature table -----------------------------------------------------------

@pytest.mark.parametrize("name", ["daily", "intraday"])
def test_feature_table_shape(name: str, request: pytest.FixtureRequest) -> None:
    """>= 40 float features, one strictly increasing row per panel timestamp, complete after warm-up."""
    data: Dataset = request.getfixturevalue(name)
    f = data.features
    cols = feature_columns(f)
    assert f.columns[0] == "timestamp"
    assert len(cols) >= 40
    assert len(set(cols)) == len(cols)
    assert all(f.schema[c] == pl.Float64 for c in cols)

    panel_ts = data.panel["timestamp"].unique().sort()
    assert f.height == panel_ts.len()
    assert f["timestamp"].equals(panel_ts)
    assert (f["timestamp"].diff().drop_nulls().dt.total_microseconds() > 0).all()

    start = first_complete_row(f)
    assert 0 < start < f.height // 2
    assert any(v is None for v in f.row(start - 1)), "first_complete_row is not the first complete row"
    after = f.slice(start).select(cols)
    assert after.null_count().sum_horizontal().item() == 0
    assert after.select(pl.all().is_finite().all()).row(0) == (True,) * len(cols)


# --- 2. no look-ahead ------------------------------------------------------------------------

DAILY_CUTS = [
    0, 1, 5, 13, 14, 25, 33, 49, 60, 67, 68,  # inside the warm-up (first bar, window edges)
    "2015-01-09", "2015-01-12",  # first complete week: Friday, Monday
    "2018-03-02", "2018-03-05",  # Friday / Monday
    "2019-05-24", "2019-05-28",  # Friday before Memorial Day / Tuesday = first bar of the week
    "2019-12-31", "2020-01-02",  # year end inside one week
    "2020-04-09", "2020-04-13",  # Thursday before Good Friday / Monday
    "2022-06-15",  # mid-week
    -6, -2, -1,  # near the end: 2025-04-17 (Thursday, Good Friday follows), 2025-04-21 (Monday)
]


@pytest.mark.parametrize("cut", DAILY_CUTS, ids=str)
def test_daily_no_lookahead(daily: Dataset, cut: str | int) -> None:
    """Features built from bars up to t equal the full-data features on every row up to t."""
    t = row_index(daily.features, cut)
    ts = daily.features["timestamp"][t]
    truncated = build(daily.panel.filter(pl.col("timestamp") <= ts), daily.freq)
    assert truncated.height == t + 1
    assert_same_features(truncated, daily.features.head(t + 1), f"daily cut at {ts}")


INTRADAY_CUTS = [
    "2025-06-10 09:30",  # first bar of the second session (warm-up)
    "2025-06-10 12:00",  # mid-session, warm-up
    "2025-06-27 15:55",  # last bar of a Friday session
    "2025-06-30 09:30",  # first bar of the next session / week
    "2025-07-03 09:30",  # first bar of the early-close day
    "2025-07-03 12:55",  # last bar of the early-close day (13:00 close)
    "2025-07-07 09:30",  # first bar after the early close and the 07-04 holiday
    "2025-07-10 13:05",  # mid-session
    -1,  # last bar of the slice
]


@pytest.mark.parametrize("cut", INTRADAY_CUTS, ids=str)
def test_intraday_no_lookahead(intraday_slice: Dataset, cut: str | int) -> None:
    """Same as the daily test on 5-minute bars, around session ends, starts and an early close."""
    data = intraday_slice
    t = row_index(data.features, cut)
    ts = data.features["timestamp"][t]
    truncated = build(data.panel.filter(pl.col("timestamp") <= ts), data.freq)
    assert truncated.height == t + 1
    assert_same_features(truncated, data.features.head(t + 1), f"5-minute cut at {ts}")


def test_intraday_single_session_builds(intraday: Dataset) -> None:
    """A 5-minute panel holding a single session still builds (clock features need no history)."""
    panel = intraday.panel.filter(local_date() == pd.Timestamp("2025-06-10").date())
    f = build(panel, intraday.freq)
    assert f.height == 78
    assert f["minutes_to_close"][-1] == 0.0


# --- 3. higher timeframe: completed periods only -----------------------------------------------

def test_daily_htf_uses_previous_completed_week(daily: Dataset) -> None:
    """Weekly features are constant within an ISO week and come from the week before (pandas check)."""
    f = daily.features
    q = symbol_frame(daily.panel, "QQQ")
    iso = q.index.tz_localize(None).isocalendar()
    week = pd.Series(list(zip(iso["year"], iso["week"])), index=q.index)

    weekly = q.groupby(week, sort=True).agg(close=("close", "last"), high=("high", "max"), low=("low", "min"))
    prev_ret = np.log(weekly["close"] / weekly["close"].shift(1)).shift(1)  # week k sees k-1 over k-2
    prev_range = np.log(weekly["high"] / weekly["low"]).shift(1)

    assert_matches_reference(f["QQQ_htf_ret_1"], week.map(prev_ret), "QQQ_htf_ret_1")
    assert_matches_reference(f["QQQ_htf_range"], week.map(prev_range), "QQQ_htf_range")
    assert_matches_reference(f["QQQ_htf_rsi_14"], week.map(ref_rsi(weekly["close"], 14).shift(1)), "QQQ_htf_rsi_14")

    per_week = f.with_columns(pl.Series("week", week.astype(str).to_numpy())).group_by("week").agg(
        pl.col("QQQ_htf_ret_1", "TQQQ_htf_rvol_10", "SQQQ_htf_close_loc").n_unique()
    )
    assert per_week.drop("week").max().row(0) == (1, 1, 1)


def test_intraday_htf_uses_previous_completed_session(intraday: Dataset) -> None:
    """On 5-minute bars the higher timeframe is the session: every bar sees the session before."""
    q = symbol_frame(intraday.panel, "QQQ")
    session = pd.Series(q.index.tz_localize(None).date, index=q.index)
    closes = q["close"].groupby(session).last()
    expected = session.map(np.log(closes / closes.shift(1)).shift(1))
    assert_matches_reference(intraday.features["QQQ_htf_ret_1"], expected, "QQQ_htf_ret_1 (5-minute)")


# --- 4. indicator formulas against a pandas reference ------------------------------------------

def wilder(x: pd.Series, n: int) -> pd.Series:
    return x.ewm(alpha=1.0 / n, adjust=False, min_periods=n).mean()


def ema(x: pd.Series, n: int) -> pd.Series:
    return x.ewm(span=n, adjust=False, min_periods=n).mean()


def ref_rsi(close: pd.Series, n: int) -> pd.Series:
    delta = close.diff()
    gain, loss = wilder(delta.clip(lower=0), n), wilder((-delta).clip(lower=0), n)
    return (100 * gain / (gain + loss)).where(gain + loss != 0, 50.0).where(gain.notna())


def ref_macd(q: pd.DataFrame) -> pd.Series:
    return (ema(q["close"], 12) - ema(q["close"], 26)) / q["close"]


def ref_bollinger(q: pd.DataFrame, n: int = 20, k: float = 2.0) -> pd.Series:
    mean, std = q["close"].rolling(n).mean(), q["close"].rolling(n).std(ddof=1)
    lower, upper = mean - k * std, mean + k * std
    return (q["close"] - lower) / (upper - lower)


def ref_atr(q: pd.DataFrame, n: int = 14) -> pd.Series:
    prev = q["close"].shift(1)
    tr = pd.concat([q["high"] - q["low"], (q["high"] - prev).abs(), (q["low"] - prev).abs()], axis=1).max(axis=1)
    return wilder(tr, n) / q["close"]  # first bar: no previous close, so TR = high - low


def ref_stoch_k(q: pd.DataFrame, n: int = 14) -> pd.Series:
    lo, hi = q["low"].rolling(n).min(), q["high"].rolling(n).max()
    return 100 * (q["close"] - lo) / (hi - lo)


def ref_rvol(q: pd.DataFrame, n: int) -> pd.Series:
    return np.log(q["close"]).diff().rolling(n).std(ddof=1)


def ref_volume_z(q: pd.DataFrame, n: int = 20) -> pd.Series:
    v = np.log1p(q["volume"])
    return (v - v.rolling(n).mean()) / v.rolling(n).std(ddof=1)


def ref_obv_slope(q: pd.DataFrame, n: int = 20) -> pd.Series:
    obv = (np.sign(q["close"].diff()).fillna(0.0) * q["volume"]).cumsum()
    return (obv - obv.shift(n)) / q["volume"].rolling(n).sum()


REFERENCES = {
    "QQQ_rsi_14": lambda q: ref_rsi(q["close"], 14),
    "QQQ_macd": ref_macd,
    "QQQ_macd_signal": lambda q: ema(ref_macd(q), 9),
    "QQQ_bb_pctb_20": ref_bollinger,
    "QQQ_atr_14": ref_atr,
    "QQQ_stoch_k_14": ref_stoch_k,
    "QQQ_stoch_d_3": lambda q: ref_stoch_k(q).rolling(3).mean(),
    "QQQ_rvol_20": lambda q: ref_rvol(q, 20),
    "QQQ_rvol_60": lambda q: ref_rvol(q, 60),
    "QQQ_volume_z_20": ref_volume_z,
    "QQQ_obv_slope_20": ref_obv_slope,
    "QQQ_ret_20": lambda q: np.log(q["close"] / q["close"].shift(20)),
}


@pytest.mark.parametrize("column", list(REFERENCES))
def test_indicator_matches_pandas_reference(daily: Dataset, column: str) -> None:
    """The feature equals a straightforward pandas implementation, warm-up included."""
    q = symbol_frame(daily.panel, "QQQ")
    assert_matches_reference(daily.features[column], REFERENCES[column](q), column)


def test_oscillators_stay_in_range(daily: Dataset) -> None:
    """RSI (daily and weekly) and stochastic %K/%D lie in [0, 100] (up to rounding) on every symbol."""
    cols = [c for c in daily.features.columns if "_rsi_" in c or "_stoch_" in c]
    assert len(cols) == 3 * 3 + 3  # rsi_14, stoch_k_14, stoch_d_3 and htf_rsi_14 per symbol
    values = daily.features.select(cols).to_numpy()
    assert np.nanmin(values) >= 0.0 and np.nanmax(values) <= 100.0 + 1e-9


def test_leveraged_decay_matches_reference(daily: Dataset) -> None:
    """TQQQ_decay_20 = log(TQQQ_t/TQQQ_{t-20}) - 3 log(QQQ_t/QQQ_{t-20}); SQQQ uses beta = -3."""
    q, tq, sq = (symbol_frame(daily.panel, s)["close"] for s in SYMBOLS)
    log20 = lambda s: np.log(s / s.shift(20))
    assert_matches_reference(daily.features["TQQQ_decay_20"], log20(tq) - 3 * log20(q), "TQQQ_decay_20")
    assert_matches_reference(daily.features["SQQQ_decay_20"], log20(sq) + 3 * log20(q), "SQQQ_decay_20")


# --- 5. intraday clock -----------------------------------------------------------------------

def test_minutes_to_close_from_calendar(intraday: Dataset) -> None:
    """The bar ending at the close has 0 minutes left (13:00 on early-close days); 09:30 has 385."""
    f = intraday.features

    def at(when: str) -> float:
        return f["minutes_to_close"][row_index(f, when)]

    assert at("2025-07-02 15:55") == 0.0
    assert at("2025-07-02 09:30") == 385.0
    assert at("2025-07-03 12:55") == 0.0  # early close
    assert at("2025-07-03 09:30") == 205.0
    assert at("2025-11-03 15:55") == 0.0  # first session after the DST change
    assert at("2025-11-03 09:30") == 385.0

    sessions = f.group_by(local_date().alias("day")).agg(
        pl.col("minutes_to_close").last().alias("last"),
        pl.col("minutes_to_close").diff().drop_nulls().eq(-5.0).all().alias("steps_of_5"),
        pl.len().alias("bars"),
    )
    assert sessions.height == 206
    assert (sessions["last"] == 0.0).all(), "every session in the data ends at the calendar close"
    assert sessions["steps_of_5"].all()
    assert sorted(sessions.filter(pl.col("bars") == 42)["day"].cast(pl.String).to_list()) == [
        "2025-07-03", "2025-11-28", "2025-12-24"]


def test_time_of_day(intraday: Dataset, daily: Dataset) -> None:
    """time_of_day lies in (0, 1], is 1 at the session's last bar and 5/390 at a normal 09:30 bar."""
    f = intraday.features
    tod = f["time_of_day"]
    assert tod.null_count() == 0
    assert tod.min() > 0.0 and tod.max() == pytest.approx(1.0)
    assert tod[row_index(f, "2025-07-03 12:55")] == pytest.approx(1.0)
    assert tod[row_index(f, "2025-07-02 09:30")] == pytest.approx(5 / 390)
    assert tod[row_index(f, "2025-07-03 09:30")] == pytest.approx(5 / 210)
    assert "time_of_day" not in daily.features.columns and "minutes_to_close" not in daily.features.columns


# --- 6. stable column set --------------------------------------------------------------------

def test_columns_do_not_depend_on_data_length(daily: Dataset, intraday: Dataset, intraday_slice: Dataset) -> None:
    """Downstream code can rely on the column list: it is the same for short and long data."""
    short_daily = build(daily.panel.filter(pl.col("timestamp") <= daily.features["timestamp"][119]), daily.freq)
    assert short_daily.height == 120
    assert short_daily.columns == daily.features.columns
    assert intraday_slice.features.columns == intraday.features.columns
    assert [c for c in intraday.features.columns if c not in daily.features.columns] == ["time_of_day", "minutes_to_close"]


def test_rsi_bars_renames_columns(daily: Dataset) -> None:
    """FeatureConfig(rsi_bars=10) yields SYMBOL_rsi_10 in place of SYMBOL_rsi_14, with 10-bar values."""
    f10 = build(daily.panel, daily.freq, FeatureConfig(rsi_bars=10))
    renamed = {f"{s}_rsi_14": f"{s}_rsi_10" for s in SYMBOLS}  # the weekly QQQ_htf_rsi_14 keeps its name
    assert f10.columns == [renamed.get(c, c) for c in daily.features.columns]
    assert "QQQ_rsi_10" in f10.columns and "QQQ_rsi_14" not in f10.columns
    q = symbol_frame(daily.panel, "QQQ")
    assert_matches_reference(f10["QQQ_rsi_10"], ref_rsi(q["close"], 10), "QQQ_rsi_10")
    assert_same_features(f10.drop(f"{s}_rsi_10" for s in SYMBOLS),
                         daily.features.drop(f"{s}_rsi_14" for s in SYMBOLS), "rsi_bars changes only RSI")


# --- 7. the per-symbol assembly equals the long-panel query; a column subset equals its columns ----

def long_panel_features(panel: pl.DataFrame, cfg: FeatureConfig, freq: BarFrequency) -> pl.DataFrame:
    """The reference: every expression ``.over("symbol")`` on the long panel in one lazy query (the
    weekly or daily bars too), each symbol's columns joined on the timestamp, then the cross-asset
    and clock features (the library runs the same expressions on a wide frame of the symbols'
    columns, and only the columns asked for)."""
    from sentio_core.features import (
        clock_features,
        cross_asset_exprs,
        htf_period,
        log_return,
        per_symbol_exprs,
        realised_vol,
        rsi,
    )

    C, O, H, L = (pl.col(n) for n in ("close", "open", "high", "low"))
    universe = UniverseConfig()
    lazy = panel.lazy().sort("symbol", "timestamp").with_columns([e.over("symbol") for e in per_symbol_exprs(cfg)])
    period = htf_period(cfg, freq)
    if period is not None:
        keyed = lazy.with_columns(pl.col("timestamp").dt.truncate(period).alias("_period"))
        htf = keyed.group_by("symbol", "_period").agg(O.first(), H.max(), L.min(), C.last()).sort("symbol", "_period")
        r1 = log_return(C, 1)
        htf = htf.with_columns(
            r1.over("symbol").alias("htf_ret_1"),
            rsi(C, cfg.htf_rsi_bars).over("symbol").alias(f"htf_rsi_{cfg.htf_rsi_bars}"),
            realised_vol(r1, cfg.htf_vol_bars).over("symbol").alias(f"htf_rvol_{cfg.htf_vol_bars}"),
            (H / L).log().alias("htf_range"),
            ((C - L) / (H - L)).fill_nan(0.5).alias("htf_close_loc"),
            pl.col("_period").shift(-1).over("symbol").alias("_next_period"),
        ).drop("_period", "open", "high", "low", "close")
        lazy = keyed.join(htf, left_on=["symbol", "_period"], right_on=["symbol", "_next_period"], how="left").drop("_period")
    names = [n for n in lazy.collect_schema().names() if n not in ("timestamp", "symbol", "open", "high", "low")]
    wide = None
    for sym in universe.panel_symbols:
        part = lazy.filter(pl.col("symbol") == sym).select(
            "timestamp", *[pl.col(n).alias(f"{sym}_{n}") for n in names if n not in ("close", "volume")],
            pl.col("close").alias(f"{sym}_close"))
        wide = part if wide is None else wide.join(part, on="timestamp", how="inner")
    wide = wide.sort("timestamp").with_columns(cross_asset_exprs(universe, cfg))
    if freq.intraday:
        wide = clock_features(wide, panel["timestamp"], freq, CALENDAR, TZ)
    out = wide.drop([f"{s}_close" for s in universe.panel_symbols]).sort("timestamp").collect(engine="in-memory")
    return out.with_columns(pl.col(feature_columns(out)).cast(pl.Float64).fill_nan(None))


@pytest.mark.parametrize("name", ["daily", "intraday_slice"])
def test_features_equal_the_long_panel_reference_bit_for_bit(name: str, request: pytest.FixtureRequest) -> None:
    data: Dataset = request.getfixturevalue(name)
    pl.testing.assert_frame_equal(data.features, long_panel_features(data.panel, FeatureConfig(), data.freq),
                                  check_exact=True)


@pytest.mark.parametrize("name", ["daily", "intraday_slice"])
def test_a_column_subset_is_those_columns_of_the_whole_table(name: str, request: pytest.FixtureRequest) -> None:
    """What a live decision computes (its policy's columns only) is exactly those columns, in table order."""
    data: Dataset = request.getfixturevalue(name)
    wanted = ["SQQQ_from_high_50", "QQQ_htf_rsi_14", "QQQ_ret_1", "TQQQ_corr_60", "QQQ_macd_hist"]
    if name != "daily":
        wanted.append("minutes_to_close")
    got = build_features(data.panel, UniverseConfig(), FeatureConfig(), data.freq, CALENDAR, TZ, columns=wanted)
    order = [c for c in data.features.columns if c in wanted]
    assert got.columns == ["timestamp", *order]
    pl.testing.assert_frame_equal(got, data.features.select("timestamp", *order), check_exact=True)


@pytest.mark.parametrize("name", ["daily", "intraday_slice"])
def test_the_last_rows_are_those_of_the_whole_table(name: str, request: pytest.FixtureRequest) -> None:
    """What a live decision reads (its latest rows, each computed from the whole window)."""
    data: Dataset = request.getfixturevalue(name)
    got = build_features(data.panel, UniverseConfig(), FeatureConfig(), data.freq, CALENDAR, TZ, last=31)
    pl.testing.assert_frame_equal(got, data.features.tail(31), check_exact=True)
    held = SymbolBars.of({sym: f for (sym,), f in data.panel.partition_by("symbol", as_dict=True).items()})  # a session's
    pl.testing.assert_frame_equal(build_features(held, UniverseConfig(), FeatureConfig(), data.freq, CALENDAR, TZ, last=31),
                                  got, check_exact=True)
    with pytest.raises(ValueError, match="positive row count"):
        build_features(data.panel, UniverseConfig(), FeatureConfig(), data.freq, CALENDAR, TZ, last=0)
