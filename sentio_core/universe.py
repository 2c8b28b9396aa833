"""Synthetic daily-reset leveraged legs built from their underlying, and how well they track real ETFs.

A daily-reset ``L`` x product (``L < 0`` for an inverse one) resets its exposure at every session
close: during session ``s`` its price is

    P_s(bar) = C_s[s-1] * (1 + L * (P_u(bar) / C_u[s-1] - 1) - fee)

where ``C_s[s-1]`` and ``C_u[s-1]`` are the synthetic and underlying closes of the previous session
and ``fee = expense_ratio_pct / 100 / sessions_per_year`` is the expense ratio charged once per
session. With one bar per session (daily bars) this is the familiar
``close_s[t] = close_s[t-1] * (1 + L * r_u[t] - fee)``, and open, high and low follow from the same
map; with intraday bars every bar of a session is measured against the previous session close (no
bar-to-bar compounding). The first session has no previous close: its reference is its first open,
where the synthetic price is ``start_price``, and no fee is charged in it.

The map is increasing in the underlying's price for ``L > 0`` and decreasing for ``L < 0``, so an
inverse leg's high comes from the underlying's low and its low from the underlying's high.
Sessions are the local dates of the (tz-aware) timestamps. Everything here is pure.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from sentio_core.config import UniverseConfig

SESSIONS_PER_YEAR = 252.0
PRICE_COLUMNS = ("open", "high", "low", "close")


def _session_index(timestamps: pl.Series) -> np.ndarray:
    """Session number (0, 1, ...) of each bar: consecutive local dates of sorted tz-aware timestamps."""
    dates = timestamps.dt.date()
    new = (dates != dates.shift(1)).fill_null(True).to_numpy()
    return np.cumsum(new) - 1


def synthesize_leg(underlying: pl.DataFrame, leverage: float, expense_ratio_pct: float, symbol: str,
                   sessions_per_year: float = SESSIONS_PER_YEAR, start_price: float = 100.0) -> pl.DataFrame:
    """Bars of a daily-reset ``leverage`` x product built from one underlying's bars.

    :param underlying: bars of one symbol (``timestamp`` tz-aware, ``open, high, low, close, volume``),
        sorted by time; daily or intraday.
    :param leverage: exposure per dollar, e.g. 3.0 (TQQQ-like) or -3.0 (SQQQ-like); not 0.
    :param expense_ratio_pct: annual expense ratio in percent (0.84 = 0.84 %/year).
    :param symbol: the name written to the ``symbol`` column.
    :param sessions_per_year: sessions over which the expense ratio is spread (fee per session
        = expense_ratio_pct / 100 / sessions_per_year).
    :param start_price: synthetic price at the first session's first open, in the same currency units.
    :return: the same columns, rows and dtypes as ``underlying``; prices in currency units, volume in
        shares chosen so that each bar's dollar volume equals the underlying's
        (``volume_s = volume_u * close_u / close_s``).
    :raises ValueError: empty, several symbols, unsorted timestamps, ``leverage == 0``, or a move
        that would take the product to zero or below (it would be wiped out).
    """
    if underlying.height == 0:
        raise ValueError("synthesize_leg: the underlying has no bars")
    if underlying["symbol"].n_unique() != 1:
        raise ValueError(f"synthesize_leg: pass one symbol's bars, got {sorted(underlying['symbol'].unique().to_list())}")
    if not underlying["timestamp"].is_sorted():
        raise ValueError("synthesize_leg: the underlying's bars must be sorted by timestamp")
    if leverage == 0:
        raise ValueError("synthesize_leg: leverage must be non-zero (negative for an inverse product)")

    session = _session_index(underlying["timestamp"])
    px = {c: underlying[c].to_numpy().astype("float64") for c in PRICE_COLUMNS}
    n_sessions = int(session[-1]) + 1
    last_bar = np.flatnonzero(np.r_[session[1:] != session[:-1], True])  # last bar of each session
    session_close_u = px["close"][last_bar]

    ref_u = np.empty(n_sessions)  # underlying reference price of each session
    ref_u[0] = px["open"][0]
    ref_u[1:] = session_close_u[:-1]
    fee = np.full(n_sessions, expense_ratio_pct / 100.0 / sessions_per_year)
    fee[0] = 0.0
    growth = 1.0 + leverage * (session_close_u / ref_u - 1.0) - fee  # synthetic close / reference
    if np.any(growth <= 0):
        bad = int(np.flatnonzero(growth <= 0)[0])
        raise ValueError(f"synthesize_leg: {symbol} would lose everything in the session of "
                         f"{underlying['timestamp'][int(last_bar[bad])]} (underlying move x {leverage:g} <= -100 %)")
    ref_s = start_price * np.r_[1.0, np.cumprod(growth[:-1])]  # synthetic reference of each session

    def mapped(price_u: np.ndarray) -> np.ndarray:
        return ref_s[session] * (1.0 + leverage * (price_u / ref_u[session] - 1.0) - fee[session])

    hi_src, lo_src = ("high", "low") if leverage > 0 else ("low", "high")
    out = {"open": mapped(px["open"]), "high": mapped(px[hi_src]), "low": mapped(px[lo_src]), "close": mapped(px["close"])}
    if np.any(out["low"] <= 0):
        bad = int(np.flatnonzero(out["low"] <= 0)[0])
        raise ValueError(f"synthesize_leg: {symbol} would trade at or below zero at {underlying['timestamp'][bad]}")
    volume = underlying["volume"].to_numpy().astype("float64") * px["close"] / out["close"]

    return underlying.with_columns(
        pl.lit(symbol, dtype=underlying.schema["symbol"]).alias("symbol"),
        *(pl.Series(c, out[c]).cast(underlying.schema[c]) for c in PRICE_COLUMNS),
        _cast_volume(pl.Series("volume", volume), underlying.schema["volume"]),
    )


def _cast_volume(volume: pl.Series, dtype: pl.DataType) -> pl.Series:
    """Volume in the panel's dtype (rounded when the panel holds integer shares)."""
    return volume.round(0).cast(dtype) if dtype.is_integer() else volume.cast(dtype)


def add_synthetic_legs(panel: pl.DataFrame, universe: UniverseConfig,
                       sessions_per_year: float = SESSIONS_PER_YEAR) -> pl.DataFrame:
    """The panel with the synthetic long (+leverage) and short (-leverage) legs appended.

    Unchanged unless ``universe.synthesize``. The legs are named ``universe.long_leg`` and
    ``universe.short_leg`` and built from ``universe.underlying``'s bars; the result has the
    panel's columns and dtypes, sorted by symbol then timestamp (as :func:`sentio_core.data.align`).

    :param panel: aligned long panel holding at least the underlying.
    :param universe: the universe section of the run config.
    :raises ValueError: the underlying is missing, or a leg's name is already in the panel.
    """
    if not universe.synthesize:
        return panel
    present = set(panel["symbol"].unique().to_list())
    if universe.underlying not in present:
        raise ValueError(f"add_synthetic_legs: the panel has no bars of the underlying {universe.underlying}")
    base = panel.filter(pl.col("symbol") == universe.underlying).sort("timestamp")
    legs = [(universe.long_leg, universe.leverage), (universe.short_leg, -universe.leverage)]
    clash = [name for name, _ in legs if name in present]
    if clash:
        raise ValueError(f"add_synthetic_legs: {', '.join(clash)} already in the panel; rename the leg "
                         f"(universe.long / universe.short) or drop universe.synthesize")
    built = [synthesize_leg(base, lev, universe.expense_ratio_pct, name, sessions_per_year) for name, lev in legs]
    return pl.concat([panel, *built]).sort("symbol", "timestamp")


def session_closes(bars: pl.DataFrame) -> pl.DataFrame:
    """Last bar's ``timestamp`` and ``close`` of each session (local date) of one symbol's sorted bars."""
    return (bars.with_columns(pl.col("timestamp").dt.date().alias("_session"))
            .group_by("_session", maintain_order=True).agg(pl.col("timestamp").last(), pl.col("close").last())
            .drop("_session"))


def tracking_report(panel: pl.DataFrame, underlying: str, real: str, leverage: float, expense_ratio_pct: float,
                    sessions_per_year: float = SESSIONS_PER_YEAR) -> dict:
    """How a synthetic ``leverage`` x leg tracks the real ETF ``real``, on session closes.

    The synthetic leg is built from the underlying's bars at the real ETF's timestamps; both are
    reduced to session closes (every bar for daily data) and compared through their
    close-to-close log returns ``d = log(1 + r_real) - log(1 + r_synthetic)``.

    :return: ``n_days`` (number of session returns), ``start`` / ``end`` (ISO dates),
        ``tracking_error_ann`` (std of d, ddof 1, x sqrt(sessions_per_year); a fraction, 0.02 = 2 %/yr),
        ``return_gap_ann`` (mean of d x sessions_per_year: real minus synthetic, log return per year),
        ``correlation`` (of the two log-return series), ``max_abs_daily_diff`` (max |d|),
        ``total_return_real`` and ``total_return_synthetic`` (last close / first close - 1 over the window).
    :raises ValueError: a symbol is missing or fewer than three common sessions remain.
    """
    for sym in (underlying, real):
        if panel.filter(pl.col("symbol") == sym).height == 0:
            raise ValueError(f"tracking_report: the panel has no bars of {sym}")
    real_bars = panel.filter(pl.col("symbol") == real).sort("timestamp")
    base = (panel.filter(pl.col("symbol") == underlying)
            .join(real_bars.select("timestamp"), on="timestamp", how="semi").sort("timestamp"))
    synth = synthesize_leg(base, leverage, expense_ratio_pct, f"{underlying}_synthetic", sessions_per_year)
    closes = session_closes(real_bars).join(session_closes(synth), on="timestamp", how="inner", suffix="_syn")
    if closes.height < 3:
        raise ValueError(f"tracking_report: {real} and {underlying} share only {closes.height} sessions; need 3 or more")
    c_real, c_syn = closes["close"].to_numpy(), closes["close_syn"].to_numpy()
    r_real, r_syn = np.diff(np.log(c_real)), np.diff(np.log(c_syn))
    diff = r_real - r_syn
    return {
        "real": real,
        "underlying": underlying,
        "leverage": leverage,
        "expense_ratio_pct": expense_ratio_pct,
        "start": str(closes["timestamp"][0].date()),
        "end": str(closes["timestamp"][-1].date()),
        "n_days": int(diff.size),
        "tracking_error_ann": float(np.std(diff, ddof=1) * np.sqrt(sessions_per_year)),
        "return_gap_ann": float(np.mean(diff) * sessions_per_year),
        "correlation": float(np.corrcoef(r_real, r_syn)[0, 1]),
        "max_abs_daily_diff": float(np.max(np.abs(diff))),
        "total_return_real": float(c_real[-1] / c_real[0] - 1.0),
        "total_return_synthetic": float(c_syn[-1] / c_syn[0] - 1.0),
    }
