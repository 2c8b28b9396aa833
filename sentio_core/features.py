"""Causal features as polars expressions.

Every feature at bar t reads bars up to and including t only: rolling windows look back,
exponential averages run forward from the first bar (``adjust=False``), higher-timeframe
features come from the last *completed* higher-timeframe bar, and the intraday clock comes
from the exchange calendar, never from the data's own last bar of the day.

Per-symbol indicators are written once as ``pl.Expr -> pl.Expr`` functions and evaluated
``.over("symbol")`` on the long panel; cross-asset features (each leveraged leg against
``leverage`` x the underlying) are computed on the wide frame. The result has one row per
timestamp, a ``timestamp`` column and one column per feature, named ``SYMBOL_feature``.
"""

from __future__ import annotations

import datetime as dt
import functools
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

import polars as pl

from sentio_core import files
from sentio_core.config import Config, FeatureConfig, UniverseConfig, reads
from sentio_core.frequency import BarFrequency

C, O, H, L, V = (pl.col(n) for n in ("close", "open", "high", "low", "volume"))


# --- indicator expressions (one symbol's series; evaluated .over("symbol")) -----------------

def log_return(close: pl.Expr, bars: int) -> pl.Expr:
    """log(close_t / close_{t-bars})."""
    return (close / close.shift(bars)).log()


def realised_vol(ret: pl.Expr, bars: int) -> pl.Expr:
    """Rolling sample standard deviation of 1-bar log returns (per bar, not annualised)."""
    return ret.rolling_std(bars, min_samples=bars)


def ewma_vol(ret: pl.Expr, halflife: float) -> pl.Expr:
    """sqrt of the exponentially weighted mean of squared 1-bar log returns (RiskMetrics style)."""
    return (ret**2).ewm_mean(half_life=halflife, adjust=False, min_samples=max(int(halflife), 2)).sqrt()


def wilder(expr: pl.Expr, bars: int) -> pl.Expr:
    """Wilder smoothing: EMA with alpha = 1/bars, started at the first value."""
    return expr.ewm_mean(alpha=1.0 / bars, adjust=False, min_samples=bars)


def rsi(close: pl.Expr, bars: int) -> pl.Expr:
    """Wilder RSI in [0, 100]; 50 when the window held no price change at all."""
    delta = close.diff()
    gain = wilder(delta.clip(lower_bound=0.0), bars)
    loss = wilder((-delta).clip(lower_bound=0.0), bars)
    return (100.0 * gain / (gain + loss)).fill_nan(50.0)


def ema(expr: pl.Expr, bars: int) -> pl.Expr:
    return expr.ewm_mean(span=bars, adjust=False, min_samples=bars)


def macd(close: pl.Expr, fast: int, slow: int, signal: int) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """MACD line, signal and histogram, divided by the close (scale-free)."""
    line = (ema(close, fast) - ema(close, slow)) / close
    sig = ema(line, signal)
    return line, sig, line - sig


def bollinger_pctb(close: pl.Expr, bars: int, k: float) -> pl.Expr:
    """%B = (close - lower) / (upper - lower) with bands mean +- k sample std."""
    mean = close.rolling_mean(bars, min_samples=bars)
    std = close.rolling_std(bars, min_samples=bars)
    return (close - (mean - k * std)) / (2.0 * k * std)


def true_range(high: pl.Expr, low: pl.Expr, close: pl.Expr) -> pl.Expr:
    prev = close.shift(1)
    return pl.max_horizontal(high - low, (high - prev).abs(), (low - prev).abs())


def atr_pct(high: pl.Expr, low: pl.Expr, close: pl.Expr, bars: int) -> pl.Expr:
    """Wilder average true range divided by the close."""
    return wilder(true_range(high, low, close), bars) / close


def stochastic(high: pl.Expr, low: pl.Expr, close: pl.Expr, bars: int, smooth: int) -> tuple[pl.Expr, pl.Expr]:
    """%K in [0, 100] over ``bars`` and %D, its ``smooth``-bar mean."""
    lo = low.rolling_min(bars, min_samples=bars)
    hi = high.rolling_max(bars, min_samples=bars)
    k = (100.0 * (close - lo) / (hi - lo)).fill_nan(50.0)
    return k, k.rolling_mean(smooth, min_samples=smooth)


def zscore(expr: pl.Expr, bars: int) -> pl.Expr:
    return (expr - expr.rolling_mean(bars, min_samples=bars)) / expr.rolling_std(bars, min_samples=bars)


def obv_slope(close: pl.Expr, volume: pl.Expr, bars: int) -> pl.Expr:
    """Change of on-balance volume over ``bars``, divided by the volume traded in them."""
    obv = (close.diff().sign().fill_null(0.0) * volume).cum_sum()
    return (obv - obv.shift(bars)) / volume.rolling_sum(bars, min_samples=bars)


def lag_autocorr(ret: pl.Expr, bars: int) -> pl.Expr:
    """Rolling lag-1 autocorrelation of returns."""
    return pl.rolling_corr(ret, ret.shift(1), window_size=bars, min_samples=bars)


def per_symbol_exprs(cfg: FeatureConfig) -> list[pl.Expr]:
    """All per-symbol features, named without the symbol prefix."""
    r1 = log_return(C, 1)
    line, sig, hist = macd(C, cfg.macd_fast_bars, cfg.macd_slow_bars, cfg.macd_signal_bars)
    k, d = stochastic(H, L, C, cfg.stoch_bars, cfg.stoch_smooth_bars)
    m = cfg.moments_bars
    exprs = [log_return(C, h).alias(f"ret_{h}") for h in cfg.return_horizons]
    exprs += [realised_vol(r1, w).alias(f"rvol_{w}") for w in cfg.vol_windows]
    exprs += [
        ewma_vol(r1, cfg.ewma_halflife_bars).alias("ewma_vol"),
        rsi(C, cfg.rsi_bars).alias(f"rsi_{cfg.rsi_bars}"),
        line.alias("macd"), sig.alias("macd_signal"), hist.alias("macd_hist"),
        bollinger_pctb(C, cfg.bollinger_bars, cfg.bollinger_k).alias(f"bb_pctb_{cfg.bollinger_bars}"),
        atr_pct(H, L, C, cfg.atr_bars).alias(f"atr_{cfg.atr_bars}"),
        k.alias(f"stoch_k_{cfg.stoch_bars}"), d.alias(f"stoch_d_{cfg.stoch_smooth_bars}"),
        zscore(V.log1p(), cfg.volume_z_bars).alias(f"volume_z_{cfg.volume_z_bars}"),
        obv_slope(C, V, cfg.obv_slope_bars).alias(f"obv_slope_{cfg.obv_slope_bars}"),
        r1.rolling_skew(m, min_samples=m).alias(f"skew_{m}"),
        r1.rolling_kurtosis(m, min_samples=m).alias(f"kurt_{m}"),
        lag_autocorr(r1, m).alias(f"autocorr_{m}"),
        (C / C.rolling_mean(cfg.trend_bars, min_samples=cfg.trend_bars) - 1.0).alias(f"trend_{cfg.trend_bars}"),
        (C / H.rolling_max(cfg.trend_bars, min_samples=cfg.trend_bars) - 1.0).alias(f"from_high_{cfg.trend_bars}"),
        (H / L).log().alias("range"),
        ((C - L) / (H - L)).fill_nan(0.5).alias("close_loc"),
        (O / C.shift(1)).log().alias("gap"),
    ]
    return exprs


# --- higher timeframe --------------------------------------------------------------------

def htf_period(cfg: FeatureConfig, freq: BarFrequency) -> str | None:
    """Higher-timeframe period string, or None when switched off."""
    if cfg.higher_timeframe == "none":
        return None
    if cfg.higher_timeframe == "auto":
        return "1d" if freq.intraday else "1w"
    return cfg.higher_timeframe


def htf_features(panel: pl.LazyFrame, cfg: FeatureConfig, period: str) -> pl.LazyFrame:
    """Features of completed higher-timeframe bars, keyed to the bars of the *next* period.

    A period's bar is complete only once a later period has started, so bars of period p see
    the features of the period before p. Appending bars never changes an earlier row.
    """
    keyed = panel.with_columns(pl.col("timestamp").dt.truncate(period).alias("_period"))
    htf = (
        keyed.group_by("symbol", "_period")
        .agg(O.first(), H.max(), L.min(), C.last())
        .sort("symbol", "_period")
    )
    r1 = log_return(C, 1)
    htf = htf.with_columns(
        r1.over("symbol").alias("htf_ret_1"),
        rsi(C, cfg.htf_rsi_bars).over("symbol").alias(f"htf_rsi_{cfg.htf_rsi_bars}"),
        realised_vol(r1, cfg.htf_vol_bars).over("symbol").alias(f"htf_rvol_{cfg.htf_vol_bars}"),
        (H / L).log().alias("htf_range"),
        ((C - L) / (H - L)).fill_nan(0.5).alias("htf_close_loc"),
        pl.col("_period").shift(-1).over("symbol").alias("_next_period"),
    ).drop("_period", "open", "high", "low", "close")
    return keyed.join(htf, left_on=["symbol", "_period"], right_on=["symbol", "_next_period"], how="left").drop("_period")


# --- intraday clock ----------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _session_table(calendar: str, start: str, end: str, tz: str) -> pl.DataFrame:
    import exchange_calendars as xc

    sched = xc.get_calendar(calendar, start=start, end=end).schedule
    return pl.DataFrame({
        "_session": [d.date() for d in sched.index],
        "_open": sched["open"].dt.tz_convert(tz).tolist(),
        "_close": sched["close"].dt.tz_convert(tz).tolist(),
    }).with_columns(pl.col("_open").dt.convert_time_zone(tz), pl.col("_close").dt.convert_time_zone(tz))


def clock_features(wide: pl.LazyFrame, timestamps: pl.Series, freq: BarFrequency, calendar: str, tz: str) -> pl.LazyFrame:
    """Time of day (fraction of the session elapsed) and minutes to the close, from the calendar.

    Timestamps are bar starts; the decision is made at the bar's end (start + bar length).
    """
    # the calendar refuses start == end (a single session), so ask it for a week more than needed
    start, end = str(timestamps.min().date()), str(timestamps.max().date() + dt.timedelta(days=7))
    table = _session_table(calendar, start, end, tz).lazy()
    bar_end = pl.col("timestamp") + pl.duration(minutes=freq.bar_minutes)
    session_minutes = (pl.col("_close") - pl.col("_open")).dt.total_minutes()
    return (
        wide.with_columns(pl.col("timestamp").dt.date().alias("_session"))
        .join(table.with_columns(pl.col("_open").dt.replace_time_zone(None), pl.col("_close").dt.replace_time_zone(None)),
              on="_session", how="left")
        .with_columns(
            ((bar_end.dt.replace_time_zone(None) - pl.col("_open")).dt.total_minutes() / session_minutes).alias("time_of_day"),
            (pl.col("_close") - bar_end.dt.replace_time_zone(None)).dt.total_minutes().cast(pl.Float64).alias("minutes_to_close"),
        )
        .drop("_session", "_open", "_close")
    )


# --- cross-asset -------------------------------------------------------------------------

def cross_asset_exprs(universe: UniverseConfig, cfg: FeatureConfig) -> list[pl.Expr]:
    """Each leveraged leg against ``beta`` x the underlying (beta = +leverage long, -leverage short)."""
    u = universe.underlying
    out: list[pl.Expr] = []
    if universe.synthesize:  # synthetic legs track by construction: nothing to measure
        return out
    for leg in (universe.long_leg, universe.short_leg):
        if leg is None or leg == u:
            continue
        beta = universe.leg_beta(leg)
        lc, uc = pl.col(f"_{leg}_close"), pl.col(f"_{u}_close")
        diff = (lc / lc.shift(1) - 1.0) - beta * (uc / uc.shift(1) - 1.0)
        n = cfg.cross_bars
        out += [
            diff.rolling_sum(n, min_samples=n).alias(f"{leg}_track_{n}"),
            diff.rolling_std(n, min_samples=n).alias(f"{leg}_te_{n}"),
            (log_return(lc, n) - beta * log_return(uc, n)).alias(f"{leg}_decay_{n}"),
            pl.rolling_corr(log_return(lc, 1), log_return(uc, 1), window_size=cfg.corr_bars,
                            min_samples=cfg.corr_bars).alias(f"{leg}_corr_{cfg.corr_bars}"),
        ]
    return out


def _feature_parts(panel: pl.DataFrame | pl.LazyFrame, universe: UniverseConfig, cfg: FeatureConfig, freq: BarFrequency,
                   calendar: str, tz: str, columns: Collection[str] | None = None,
                   group: int | None = None) -> Iterator[pl.DataFrame]:
    """The feature table in blocks of columns, each with the panel's rows in time order: each
    symbol's per-symbol features (``group`` expressions at a time, all when None) and higher-timeframe
    features, then last ``timestamp`` with the cross-asset and clock features.

    Each symbol's features are computed over that symbol's whole series, with the expressions
    evaluated ``.over("symbol")`` as on the long panel (polars' rolling kernels differ in the last
    bits between grouped and plain evaluation). ``columns`` keeps only those features (the others
    are never computed).

    :raises ValueError: when the symbols' timestamps differ (the blocks are placed side by side by row).
    """
    keep = (lambda name: True) if columns is None else set(columns).__contains__
    period = htf_period(cfg, freq)
    exprs = per_symbol_exprs(cfg)
    closes: dict[str, pl.Series] = {}
    stamps: pl.Series | None = None
    for sym in universe.panel_symbols:
        # the symbol's bars read once (a few columns: 2M bars, about 100 MB), not once per group
        bars = panel.lazy().filter(pl.col("symbol") == sym).sort("timestamp").collect()
        if stamps is None:
            stamps = bars["timestamp"]
        elif not bars["timestamp"].equals(stamps):
            raise ValueError("the panel is not aligned: every symbol must have the same timestamps")
        mine = [e for e in exprs if keep(f"{sym}_{e.meta.output_name()}")]
        step = group or max(len(mine), 1)
        for at in range(0, len(mine), step):
            yield _floats(bars.select([e.over("symbol").name.prefix(f"{sym}_") for e in mine[at: at + step]]))
        if period is not None:
            htf = htf_features(bars.lazy(), cfg, period)
            names = [n for n in htf.collect_schema().names() if n not in bars.columns and keep(f"{sym}_{n}")]
            if names:
                yield _floats(htf.sort("timestamp").select(pl.col(names).name.prefix(f"{sym}_")).collect())
        closes[f"_{sym}_close"] = bars["close"]
    assert stamps is not None
    wide = pl.DataFrame({"timestamp": stamps, **closes}).lazy()
    wide = wide.with_columns([e for e in cross_asset_exprs(universe, cfg) if keep(e.meta.output_name())])
    if freq.intraday:
        wide = clock_features(wide, stamps, freq, calendar, tz).sort("timestamp")  # the join may reorder rows
    names = [n for n in wide.collect_schema().names() if n != "timestamp" and n not in closes and keep(n)]
    yield _floats(wide.select("timestamp", *names).collect())


def _floats(frame: pl.DataFrame) -> pl.DataFrame:
    """Every feature column as Float64, NaN as null (a window that could not be computed): one pass
    over the block (cheaper in polars than a cast inside each windowed expression)."""
    floats = [c for c in frame.columns if c != "timestamp"]
    return frame.with_columns(pl.col(floats).cast(pl.Float64).fill_nan(None)) if floats else frame


def build_features(panel: pl.DataFrame, universe: UniverseConfig, cfg: FeatureConfig, freq: BarFrequency,
                   calendar: str, tz: str, columns: Collection[str] | None = None) -> pl.DataFrame:
    """Feature table: one row per timestamp, ``timestamp`` plus one float column per feature.

    :param panel: aligned long panel (``timestamp, symbol, open, high, low, close, volume``).
    :param columns: compute only these features (a decision on live bars needs its policy's only),
        in the table's order; None for all.
    :returns: rows in time order; the first rows hold nulls until each window has filled.
    """
    parts = list(_feature_parts(panel, universe, cfg, freq, calendar, tz, columns))
    *blocks, last = parts
    return pl.concat([last.select("timestamp"), *blocks, last.drop("timestamp")], how="horizontal")


COLUMN_BLOCK = 8  # columns of a scanned table read at a time: 2M bars x 8 floats, 128 MB
EXPR_GROUP = 8  # per-symbol features computed at a time when streaming: 2M bars x 8 floats, 128 MB
SLICE_ROWS = 262_144  # rows per written row group when streaming


def write_features(panel: pl.DataFrame | pl.LazyFrame, universe: UniverseConfig, cfg: FeatureConfig, freq: BarFrequency,
                   calendar: str, tz: str, out: str | Path) -> Path:
    """:func:`build_features` written to ``out`` (Parquet) without holding the table in memory.

    The blocks of :func:`build_features` (:data:`EXPR_GROUP` per-symbol expressions at a time over
    that symbol's whole history: the same expressions, so the same values) are parked in Parquet
    parts, then read back :data:`SLICE_ROWS` rows at a time and written side by side. The panel
    may be scanned lazily. Peak memory: one group of one symbol, or one slice of every column.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        parts: list[Path] = []
        for frame in _feature_parts(panel, universe, cfg, freq, calendar, tz, group=EXPR_GROUP):
            parts.append(Path(tmp) / f"part-{len(parts):03d}.parquet")
            frame.write_parquet(parts[-1])
        rows = pl.scan_parquet(parts[-1]).select(pl.len()).collect().item()
        stamps = pl.scan_parquet(parts[-1]).select("timestamp")
        order = [stamps] + [pl.scan_parquet(p) for p in parts[:-1]] + [pl.scan_parquet(parts[-1]).drop("timestamp")]

        def slices() -> Iterator[pl.DataFrame]:
            for at in range(0, rows, SLICE_ROWS):
                yield pl.concat([s.slice(at, SLICE_ROWS).collect() for s in order], how="horizontal")

        return files.write_parquet_slices(slices(), out)


def feature_columns(features: pl.DataFrame | pl.LazyFrame | list[str]) -> list[str]:
    """The feature columns of a feature table (or of its column names): all but ``timestamp``."""
    names = features if isinstance(features, list) else features.collect_schema().names()
    return [c for c in names if c != "timestamp"]


def first_complete_row(features: pl.DataFrame | pl.LazyFrame, block: int = COLUMN_BLOCK) -> int:
    """Index of the first row where every feature is defined (the end of the warm-up).

    The table may be scanned lazily: it is read ``block`` columns at a time."""
    features = features.lazy()
    names = feature_columns(features)
    complete: pl.Series | None = None
    for i in range(0, len(names), block):
        ok = features.select(pl.all_horizontal(pl.col(names[i: i + block]).is_not_null()).alias("ok")).collect()["ok"]
        complete = ok if complete is None else complete & ok
    idx = complete.arg_true() if complete is not None else pl.Series([], dtype=pl.UInt32)
    if idx.len() == 0:
        raise ValueError("no row has every feature defined: the data is shorter than the longest feature window")
    return int(idx[0])


@reads("features", "universe", "data")
def feature_table(cfg: Config, bars: pl.DataFrame, freq: BarFrequency) -> pl.DataFrame:
    """The feature table of the aligned panel (the features stage)."""
    return build_features(bars, cfg.universe, cfg.features, freq, cfg.data.calendar, cfg.data.timezone)


@reads("features", "universe", "data")
def write_feature_table(cfg: Config, bars: pl.DataFrame | pl.LazyFrame, freq: BarFrequency, out: str | Path) -> Path:
    """The features stage: the feature table of the aligned panel, streamed to ``out`` (Parquet)."""
    return write_features(bars, cfg.universe, cfg.features, freq, cfg.data.calendar, cfg.data.timezone, out)
