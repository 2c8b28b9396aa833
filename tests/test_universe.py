"""Synthetic daily-reset legs: golden numbers by hand, a plain-loop reference, invariants, and tracking of real TQQQ/SQQQ."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentio_core.config import load_config
from sentio_core.data import load_panel
from sentio_core.universe import add_synthetic_legs, session_closes, synthesize_leg, tracking_report

TZ = "America/New_York"
PRICES = ["open", "high", "low", "close"]


def bars(stamps: list[datetime], ohlc: list[tuple[float, float, float, float]], volume: list[float] | None = None,
         symbol: str = "U") -> pl.DataFrame:
    """Bars shaped like sentio_core.data.to_bars: tz-aware us timestamps, float OHLCV."""
    o, h, lo, c = ([float(x) for x in col] for col in zip(*ohlc))
    return pl.DataFrame({
        "timestamp": pl.Series(stamps, dtype=pl.Datetime("us")).dt.replace_time_zone(TZ),
        "symbol": [symbol] * len(stamps),
        "open": o, "high": h, "low": lo, "close": c,
        "volume": [float(v) for v in (volume or [1000.0] * len(stamps))],
    })


# Three daily bars. Each session's moves are round multiples of its reference price:
#   bar 0: reference = its own open 100 (no previous close): O +0 %, H +4 %, L -2 %, C +2 %
#   bar 1: reference = close 102:   O 103.02 (+1 %), H 104.04 (+2 %), L 96.9 (-5 %), C 99.96 (-2 %)
#   bar 2: reference = close 99.96: O 99.96 (+0 %), H 104.958 (+5 %), L 98.9604 (-1 %), C 103.9584 (+4 %)
DAYS = [datetime(2024, 1, 2), datetime(2024, 1, 3), datetime(2024, 1, 4)]
DAILY = bars(DAYS, [(100, 104, 98, 102), (103.02, 104.04, 96.9, 99.96), (99.96, 104.958, 98.9604, 103.9584)],
             volume=[1000, 2000, 3000])


def test_golden_daily_long_leg():
    """L = +3, no fee: price = previous synthetic close x (1 + 3 x move since the previous close).

    bar 0 (ref 100):    O 100 x 1.00 = 100,     H 100 x 1.12 = 112,     L 100 x 0.94 = 94,     C 100 x 1.06 = 106
    bar 1 (ref 106):    O 106 x 1.03 = 109.18,  H 106 x 1.06 = 112.36,  L 106 x 0.85 = 90.1,   C 106 x 0.94 = 99.64
    bar 2 (ref 99.64):  O 99.64 x 1 = 99.64,    H 99.64 x 1.15 = 114.586, L 99.64 x 0.97 = 96.6508, C 99.64 x 1.12 = 111.5968
    """
    out = synthesize_leg(DAILY, 3.0, 0.0, "L3")
    expected = [[100, 112, 94, 106], [109.18, 112.36, 90.1, 99.64], [99.64, 114.586, 96.6508, 111.5968]]
    np.testing.assert_allclose(out.select(PRICES).to_numpy(), expected, rtol=1e-12)
    assert out["symbol"].to_list() == ["L3"] * 3
    assert out.schema == DAILY.schema and out["timestamp"].equals(DAILY["timestamp"])


def test_golden_daily_inverse_leg_swaps_high_and_low():
    """L = -3: the synthetic high comes from the underlying's low, its low from the underlying's high.

    bar 0 (ref 100):   O 100,  H 100 x (1 + 0.06) = 106 (from L -2 %),  L 100 x (1 - 0.12) = 88 (from H +4 %),  C 100 x 0.94 = 94
    bar 1 (ref 94):    O 94 x 0.97 = 91.18,  H 94 x 1.15 = 108.1 (L -5 %),  L 94 x 0.94 = 88.36 (H +2 %),  C 94 x 1.06 = 99.64
    bar 2 (ref 99.64): O 99.64,  H 99.64 x 1.03 = 102.6292 (L -1 %),  L 99.64 x 0.85 = 84.694 (H +5 %),  C 99.64 x 0.88 = 87.6832
    """
    out = synthesize_leg(DAILY, -3.0, 0.0, "S3")
    expected = [[100, 106, 88, 94], [91.18, 108.1, 88.36, 99.64], [99.64, 102.6292, 84.694, 87.6832]]
    np.testing.assert_allclose(out.select(PRICES).to_numpy(), expected, rtol=1e-12)


def test_expense_ratio_charged_once_per_session():
    """2.52 %/yr over 252 sessions = 0.0001 per session, charged from the second session on.

    close 0 = 106 (no fee), close 1 = 106 x (0.94 - 0.0001) = 99.6294, close 2 = 99.6294 x (1.12 - 0.0001) = 111.57496...
    and every price of a session carries the same fee: open 1 = 106 x (1.03 - 0.0001).
    """
    out = synthesize_leg(DAILY, 3.0, 2.52, "L3", sessions_per_year=252)
    c = out["close"].to_numpy()
    assert c[0] == pytest.approx(106.0)
    assert c[1] == pytest.approx(106 * 0.9399) == pytest.approx(99.6294)
    assert c[2] == pytest.approx(99.6294 * 1.1199)
    assert out["open"][1] == pytest.approx(106 * 1.0299)
    no_fee = synthesize_leg(DAILY, 3.0, 0.0, "L3")["close"].to_numpy()
    np.testing.assert_allclose(c[1:] / c[:-1], no_fee[1:] / no_fee[:-1] - 1e-4, rtol=1e-12)


def test_expense_ratio_on_a_flat_year():
    """A flat underlying for 253 sessions (252 resets) keeps (1 - 0.0084/252)^252 = 0.991635 of its value at 0.84 %/yr."""
    stamps = pl.date_range(datetime(2023, 1, 2), datetime(2023, 9, 11), eager=True).to_list()[:253]
    flat = bars([datetime(d.year, d.month, d.day) for d in stamps], [(50.0, 50.0, 50.0, 50.0)] * 253)
    out = synthesize_leg(flat, 3.0, 0.84, "L3")
    assert out["close"][-1] == pytest.approx(100 * (1 - 0.0084 / 252) ** 252)
    assert out["close"][-1] == pytest.approx(99.16350, abs=1e-5)


def stamp(day: int, minute: int) -> datetime:
    return datetime(2024, 1, day, 9, 30 + minute)


# Two sessions of three 5-minute bars.
#   session 1, reference = first open 100; session 2, reference = session-1 close 101:
#   d: +2 % (O=H=C 103.02, L 101), e: H +5 % (106.05), C +3 % (104.03), f: L -2 % (98.98), C -1 % (99.99)
INTRADAY = bars(
    [stamp(2, 0), stamp(2, 5), stamp(2, 10), stamp(3, 0), stamp(3, 5), stamp(3, 10)],
    [(100, 101, 99, 101), (101, 103, 100, 102), (102, 102, 99, 101),
     (103.02, 103.02, 101, 103.02), (103.02, 106.05, 101, 104.03), (104.03, 104.03, 98.98, 99.99)],
)


def test_golden_intraday_reset_to_previous_session_close():
    """L = +3: every bar is measured against the previous session close, never the previous bar.

    session 1 (ref 100 -> synthetic 100):  a O 100 H 103 L 97 C 103;  b O 103 H 109 L 100 C 106;  c O 106 H 106 L 97 C 103
    session 2 (ref 101 -> synthetic 103):  d O 103 x 1.06 = 109.18 (H, C too), L 103;
                                            e H 103 x 1.15 = 118.45, L 103, C 103 x 1.09 = 112.27;
                                            f O 112.27, H 112.27, L 103 x 0.94 = 96.82, C 103 x 0.97 = 99.91
    Bar-to-bar compounding would give f's close 112.27 x (1 + 3 x (99.99 / 104.03 - 1)) = 99.19..., not 99.91.
    """
    out = synthesize_leg(INTRADAY, 3.0, 0.0, "L3")
    expected = [[100, 103, 97, 103], [103, 109, 100, 106], [106, 106, 97, 103],
                [109.18, 109.18, 103, 109.18], [109.18, 118.45, 103, 112.27], [112.27, 112.27, 96.82, 99.91]]
    np.testing.assert_allclose(out.select(PRICES).to_numpy(), expected, rtol=1e-12)
    compounded = 112.27 * (1 + 3 * (99.99 / 104.03 - 1))
    assert abs(compounded - 99.91) > 0.5


def reference_loop(u: pl.DataFrame, lev: float, er_pct: float, start: float = 100.0) -> np.ndarray:
    """Slow, obvious reference: walk the bars, reset at each new local date."""
    fee = er_pct / 100 / 252
    dates = u["timestamp"].dt.date().to_list()
    rows = u.select(PRICES).rows()
    out = []
    ref_u, ref_s, f = rows[0][0], start, 0.0
    for i, (o, h, lo, c) in enumerate(rows):
        if i > 0 and dates[i] != dates[i - 1]:
            ref_s = ref_s * (1 + lev * (rows[i - 1][3] / ref_u - 1) - f)
            ref_u, f = rows[i - 1][3], fee
        m = [ref_s * (1 + lev * (p / ref_u - 1) - f) for p in (o, h, lo, c)]
        out.append([m[0], max(m[1], m[2]), min(m[1], m[2]), m[3]])
    return np.array(out)


def random_walk(n_sessions: int, bars_per_session: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_sessions * bars_per_session
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, n)))
    opn = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.001, n))
    high = np.maximum(opn, close) * np.exp(np.abs(rng.normal(0, 0.002, n)))
    low = np.minimum(opn, close) * np.exp(-np.abs(rng.normal(0, 0.002, n)))
    stamps = [datetime(2024, 3, 4, 9, 30) + timedelta(days=d, minutes=5 * b)
              for d in range(n_sessions) for b in range(bars_per_session)]
    return bars(stamps, list(zip(opn, high, low, close)), volume=list(rng.integers(100, 10_000, n)))


@pytest.mark.parametrize("lev", [3.0, -3.0, 2.0, -1.0])
def test_matches_plain_loop_reference(lev):
    u = random_walk(n_sessions=5, bars_per_session=6, seed=int(abs(lev) * 10) + (lev < 0))
    fast = synthesize_leg(u, lev, 0.95, "X").select(PRICES).to_numpy()
    np.testing.assert_allclose(fast, reference_loop(u, lev, 0.95), rtol=1e-12)


def test_intraday_session_closes_equal_daily_synthesis_on_real_5min():
    """Reducing 5-min synthetic bars to sessions gives the synthesis of the daily (session) bars of the underlying."""
    qqq, _ = load_panel("data/5min", ["QQQ"], TZ)
    qqq = qqq.filter(pl.col("timestamp").dt.date() <= datetime(2025, 7, 31).date())
    intraday = synthesize_leg(qqq, -3.0, 0.95, "S")
    session = pl.col("timestamp").dt.date()
    agg = [pl.col("timestamp").first(), pl.col("open").first(), pl.col("high").max(), pl.col("low").min(),
           pl.col("close").last(), pl.col("volume").sum()]
    daily_u = qqq.group_by(session.alias("d"), maintain_order=True).agg(pl.col("symbol").first(), *agg).drop("d")
    daily_s = synthesize_leg(daily_u.select(qqq.columns), -3.0, 0.95, "S")
    reduced = intraday.group_by(session.alias("d"), maintain_order=True).agg(*agg[:-1])
    np.testing.assert_allclose(reduced.select(PRICES).to_numpy(), daily_s.select(PRICES).to_numpy(), rtol=1e-10)


def assert_ohlc_consistent(frame: pl.DataFrame) -> None:
    o, h, lo, c = (frame[col].to_numpy() for col in PRICES)
    tol = 1e-9 * h
    assert np.all(h + tol >= np.maximum(o, c)) and np.all(np.minimum(o, c) + tol >= lo) and np.all(lo > 0)


@pytest.mark.parametrize("lev", [3.0, -3.0])
@pytest.mark.parametrize("folder", ["data/daily", "data/5min"])
def test_high_low_consistent_on_real_data(folder, lev):
    qqq, _ = load_panel(folder, ["QQQ"], TZ)
    assert_ohlc_consistent(synthesize_leg(qqq, lev, 0.9, "X"))


@settings(max_examples=40, deadline=None)
@given(lev=st.sampled_from([3.0, -3.0, 2.0, -2.0, 0.5, -1.0]), seed=st.integers(0, 10_000),
       per_session=st.integers(1, 8))
def test_high_low_consistent_property(lev, seed, per_session):
    assert_ohlc_consistent(synthesize_leg(random_walk(4, per_session, seed), lev, 0.95, "X"))


@pytest.mark.parametrize("lev", [3.0, -3.0])
def test_dollar_volume_preserved(lev):
    u = random_walk(3, 4, seed=5)
    out = synthesize_leg(u, lev, 0.84, "X")
    np.testing.assert_allclose((out["volume"] * out["close"]).to_numpy(), (u["volume"] * u["close"]).to_numpy(), rtol=1e-12)
    assert synthesize_leg(DAILY, 3.0, 0.0, "X")["volume"].to_list() == pytest.approx([1000 * 102 / 106, 2000 * 99.96 / 99.64,
                                                                                        3000 * 103.9584 / 111.5968])


def test_start_price_scales_every_price():
    a = synthesize_leg(DAILY, -3.0, 0.84, "X").select(PRICES).to_numpy()
    b = synthesize_leg(DAILY, -3.0, 0.84, "X", start_price=25.0).select(PRICES).to_numpy()
    np.testing.assert_allclose(b, a / 4, rtol=1e-12)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="no bars"):
        synthesize_leg(DAILY.head(0), 3.0, 0.0, "X")
    with pytest.raises(ValueError, match="one symbol"):
        synthesize_leg(pl.concat([DAILY, DAILY.with_columns(pl.lit("V").alias("symbol"))]), 3.0, 0.0, "X")
    with pytest.raises(ValueError, match="sorted"):
        synthesize_leg(DAILY.reverse(), 3.0, 0.0, "X")
    with pytest.raises(ValueError, match="non-zero"):
        synthesize_leg(DAILY, 0.0, 0.0, "X")
    crash = bars(DAYS[:2], [(100, 100, 100, 100), (70, 70, 60, 65)])  # -35 % x 3 = -105 %
    with pytest.raises(ValueError, match="lose everything"):
        synthesize_leg(crash, 3.0, 0.0, "X")
    spike = bars(DAYS[:2], [(100, 100, 100, 100), (100, 140, 100, 110)])  # intraday +40 % x -3 = -120 %
    with pytest.raises(ValueError, match="at or below zero"):
        synthesize_leg(spike, -3.0, 0.0, "X")


SYNTH = ["universe.synthesize=true", "universe.long=null", "universe.short=null"]


def test_add_synthetic_legs_on_daily_data():
    cfg = load_config(None, SYNTH)
    panel, _ = load_panel(cfg.data.path, cfg.universe.symbols, cfg.data.timezone)
    out = add_synthetic_legs(panel, cfg.universe)
    assert cfg.universe.symbols == ["QQQ"]
    assert out["symbol"].unique(maintain_order=True).to_list() == ["QQQ", "QQQ_L3X", "QQQ_S3X"] == cfg.universe.panel_symbols
    assert out.schema == panel.schema
    assert out.equals(out.sort("symbol", "timestamp"))
    stamps = [out.filter(pl.col("symbol") == s)["timestamp"] for s in ("QQQ", "QQQ_L3X", "QQQ_S3X")]
    assert stamps[0].equals(stamps[1]) and stamps[0].equals(stamps[2])
    assert out.filter(pl.col("symbol") == "QQQ").equals(panel)
    long_leg = out.filter(pl.col("symbol") == "QQQ_L3X")
    assert long_leg.equals(synthesize_leg(panel, 3.0, cfg.universe.expense_ratio_pct, "QQQ_L3X"))


def test_add_synthetic_legs_off_or_clashing():
    off = load_config(None, [])
    assert add_synthetic_legs(DAILY, off.universe) is DAILY
    named = load_config(None, ["universe.synthesize=true", "universe.underlying=U", "universe.long=U3", "universe.short=null"])
    out = add_synthetic_legs(DAILY, named.universe)
    assert out["symbol"].unique(maintain_order=True).to_list() == ["U", "U3", "U_S3X"]
    with pytest.raises(ValueError, match="already in the panel"):
        add_synthetic_legs(pl.concat([DAILY, DAILY.with_columns(pl.lit("U3").alias("symbol"))]), named.universe)
    with pytest.raises(ValueError, match="no bars of the underlying QQQ"):
        add_synthetic_legs(DAILY, load_config(None, SYNTH).universe)


def test_tracking_report_of_a_leg_against_itself_is_perfect():
    """A 'real' ETF that is exactly the synthesis: zero tracking error, zero gap, correlation 1."""
    u = random_walk(30, 3, seed=11)
    real = synthesize_leg(u, -3.0, 0.95, "REAL")
    r = tracking_report(pl.concat([u, real]), "U", "REAL", -3.0, 0.95)
    assert r["n_days"] == 29
    assert r["tracking_error_ann"] == pytest.approx(0.0, abs=1e-12)
    assert r["return_gap_ann"] == pytest.approx(0.0, abs=1e-12)
    assert r["correlation"] == pytest.approx(1.0)
    assert r["total_return_real"] == pytest.approx(r["total_return_synthetic"])
    closes = session_closes(real)["close"].to_numpy()
    assert r["total_return_real"] == pytest.approx(closes[-1] / closes[0] - 1)


def test_tracking_report_golden_gap():
    """A real leg that earns an extra 0.01 % every session: gap 0.0001 x 252 = 2.52 %/yr, no tracking error."""
    u = random_walk(20, 1, seed=3)
    syn = synthesize_leg(u, 3.0, 0.0, "REAL")
    real = syn.with_columns(pl.col("close") * 1.0001 ** np.arange(20))
    r = tracking_report(pl.concat([u, real]), "U", "REAL", 3.0, 0.0)
    assert r["return_gap_ann"] == pytest.approx(np.log(1.0001) * 252)
    assert r["tracking_error_ann"] == pytest.approx(0.0, abs=1e-10)


def test_tracking_report_needs_both_symbols():
    with pytest.raises(ValueError, match="no bars of TQQQ"):
        tracking_report(DAILY, "U", "TQQQ", 3.0, 0.84)


@pytest.mark.parametrize("real, lev, er", [("TQQQ", 3.0, 0.84), ("SQQQ", -3.0, 0.95)])
def test_synthesis_tracks_real_etfs_on_daily_data(real, lev, er):
    """Measured on data/daily 2015-2025: TE 2.8 % (TQQQ) / 3.7 % (SQQQ), correlation 0.999 / 0.9986."""
    panel, _ = load_panel("data/daily", ["QQQ", real], TZ)
    r = tracking_report(panel, "QQQ", real, lev, er)
    assert r["n_days"] == 2589
    assert r["tracking_error_ann"] < 0.05
    assert r["correlation"] > 0.99
    assert abs(r["return_gap_ann"]) < 0.08  # financing at 0-5 % short rates: -5.0 % / +5.3 % measured
