"""Causal features as polars expressions.

Every feature at bar t reads bars up to and including t only: rolling windows look back,
exponential averages run forward from the first bar (``adjust=False``), higher-timeframe
features come from the last *completed* higher-timeframe bar, and the intraday clock comes
from the exchange calendar, never from the data's own last bar of the day.

Indicators are written once as ``pl.Expr -> pl.Expr`` functions of one series and evaluated on a
wide frame of the symbols' bars (``SYMBOL_close``, ...), each symbol's expressions reading its own
columns; cross-asset features (each leveraged leg against ``leverage`` x the underlying) read two
symbols' columns. Everything runs on polars' in-memory engine. The result has one row per
timestamp, a ``timestamp`` column and one column per feature, named ``SYMBOL_feature``
(``tests/test_features.py`` holds it bit for bit to the former long-panel query, every expression
``.over("symbol")``).
"""

from __future__ import annotations

import datetime as dt
import functools
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from sentio_core import files
from sentio_core.config import Config, FeatureConfig, UniverseConfig, reads
from sentio_core.frequency import BarFrequency

# --- indicator expressions (one symbol's series) ---------------------------------------------

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


OHLCV = ("open", "high", "low", "close", "volume")


def _ohlcv(symbol: str | None) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
    """``close, open, high, low, volume`` of one symbol's long frame (None) or of ``symbol``'s columns
    of a wide frame (``SYMBOL_close``, ...)."""
    return tuple(pl.col(n if symbol is None else f"{symbol}_{n}") for n in ("close", "open", "high", "low", "volume"))  # type: ignore[return-value]


def per_symbol_exprs(cfg: FeatureConfig, symbol: str | None = None) -> list[pl.Expr]:
    """All per-symbol features: of a one-symbol frame, named without the symbol prefix; or, with
    ``symbol``, of that symbol's columns of a wide frame, named ``SYMBOL_feature``."""
    C, O, H, L, V = _ohlcv(symbol)  # the bars' usual letters
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
    return exprs if symbol is None else [e.name.prefix(f"{symbol}_") for e in exprs]


# --- higher timeframe --------------------------------------------------------------------

def htf_period(cfg: FeatureConfig, freq: BarFrequency) -> str | None:
    """Higher-timeframe period string, or None when switched off."""
    if cfg.higher_timeframe == "none":
        return None
    if cfg.higher_timeframe == "auto":
        return "1d" if freq.intraday else "1w"
    return cfg.higher_timeframe


def htf_names(cfg: FeatureConfig) -> list[str]:
    """The higher-timeframe features of one symbol, without the symbol prefix."""
    return ["htf_ret_1", f"htf_rsi_{cfg.htf_rsi_bars}", f"htf_rvol_{cfg.htf_vol_bars}", "htf_range", "htf_close_loc"]


def htf_exprs(cfg: FeatureConfig, symbol: str) -> list[pl.Expr]:
    """:func:`htf_names` of ``symbol``, on a frame of higher-timeframe bars (``SYMBOL_close``, ...)."""
    C, _, H, L, _ = _ohlcv(symbol)
    r1 = log_return(C, 1)
    # the volatility windowed over one group: polars' grouped rolling std differs from the plain one in
    # the last bits, and these are the values the per-symbol (grouped) evaluation always gave
    exprs = [r1, rsi(C, cfg.htf_rsi_bars), realised_vol(r1, cfg.htf_vol_bars).over(pl.lit(0)), (H / L).log(),
             ((C - L) / (H - L)).fill_nan(0.5)]
    return [e.alias(f"{symbol}_{name}") for e, name in zip(exprs, htf_names(cfg))]


def htf_queries(wide: pl.LazyFrame, period: str, symbols: list[str], exprs: list[pl.Expr]) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """The higher-timeframe features of ``wide`` (``timestamp`` and each symbol's ``SYMBOL_open``,
    ...) as two queries: one row per period with each expression (of :func:`htf_exprs` of
    ``symbols``) of the period *before* it, and each bar's period number (:func:`htf_rows` puts
    them together).

    A period's bar is complete only once a later period has started, so bars of period p see
    the features of the period before p. Appending bars never changes an earlier row.
    """
    period_bar = {"open": "first", "high": "max", "low": "min", "close": "last"}  # from the period's bars
    aggs = [getattr(pl.col(f"{sym}_{c}"), how)() for sym in symbols for c, how in period_bar.items()]
    # the bars are in time order, so their periods are too: number them, compute each period's
    # features, and give the bars of the k-th period the (k-1)-th's
    numbered = wide.with_columns(pl.col("timestamp").dt.truncate(period).rle_id().alias("_period"))
    periods = numbered.group_by("_period", maintain_order=True).agg(aggs).select([e.shift(1) for e in exprs])
    return periods, numbered.select("_period")


def htf_rows(periods: pl.DataFrame, number: pl.DataFrame, last: int | None = None) -> pl.DataFrame:
    """:func:`htf_queries`' results as one row per bar (only the ``last`` rows when given)."""
    at = number["_period"].to_numpy()
    return periods[at if last is None else at[max(len(at) - last, 0):]]


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
    # whole calendar years (and a week: the calendar refuses start == end): a live loop's window moves
    # a bar at a time, and each new table would cost about 0.1 s of exchange_calendars
    start = str(dt.date(timestamps.min().year, 1, 1))
    end = str(dt.date(timestamps.max().year, 12, 31) + dt.timedelta(days=7))
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
        lc, uc = pl.col(f"{leg}_close"), pl.col(f"{u}_close")
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


@dataclass(frozen=True)
class _Plan:
    """Every feature expression of a configuration, with its column name, built once (building them
    costs about a millisecond of Python per table, which a live decision would pay on every bar)."""

    per_symbol: dict[str, tuple[tuple[str, pl.Expr], ...]]
    htf: dict[str, tuple[tuple[str, pl.Expr], ...]]
    cross: tuple[tuple[str, pl.Expr], ...]


_PLANS: dict[tuple[int, int], tuple[FeatureConfig, UniverseConfig, _Plan]] = {}  # by the (frozen) configs' identity


def _plan(cfg: FeatureConfig, universe: UniverseConfig) -> _Plan:
    """The expressions of ``cfg`` on ``universe``'s symbols: found by the configs' identity (they are
    frozen; the entry holds them, so their ids are not reused), else by their JSON (a decision
    would pay 0.1 ms per table to dump them)."""
    key = (id(cfg), id(universe))
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is cfg and hit[1] is universe:
        return hit[2]
    plan = _cached_plan(cfg.model_dump_json(), universe.model_dump_json())
    if len(_PLANS) >= 16:
        _PLANS.pop(next(iter(_PLANS)))
    _PLANS[key] = (cfg, universe, plan)
    return plan


@functools.lru_cache(maxsize=16)
def _cached_plan(cfg_json: str, universe_json: str) -> _Plan:
    cfg, universe = FeatureConfig.model_validate_json(cfg_json), UniverseConfig.model_validate_json(universe_json)

    def named(exprs: list[pl.Expr]) -> tuple[tuple[str, pl.Expr], ...]:
        return tuple((e.meta.output_name(), e) for e in exprs)

    symbols = universe.panel_symbols
    return _Plan(per_symbol={sym: named(per_symbol_exprs(cfg, sym)) for sym in symbols},
                 htf={sym: named(htf_exprs(cfg, sym)) for sym in symbols}, cross=named(cross_asset_exprs(universe, cfg)))


def feature_names(universe: UniverseConfig, cfg: FeatureConfig, freq: BarFrequency) -> list[str]:
    """The feature table's columns after ``timestamp``, in order: each symbol's per-symbol and
    higher-timeframe features, the cross-asset features, the intraday clock."""
    plan, htf = _plan(cfg, universe), htf_period(cfg, freq) is not None
    names = [n for sym in universe.panel_symbols for n, _ in plan.per_symbol[sym] + (plan.htf[sym] if htf else ())]
    return names + [n for n, _ in plan.cross] + (["time_of_day", "minutes_to_close"] if freq.intraday else [])


def _feature_parts(panel: pl.DataFrame | pl.LazyFrame | SymbolBars, universe: UniverseConfig, cfg: FeatureConfig, freq: BarFrequency,
                   calendar: str, tz: str, columns: Collection[str] | None = None,
                   group: int | None = None, last: int | None = None) -> Iterator[pl.DataFrame]:
    """The feature table in blocks of columns, each with the panel's rows in time order (NaN not yet
    nulled: :func:`_floats`); the last block holds ``timestamp`` and the clock features, and the
    cross-asset ones when ``group`` is given (else they come in the first block).

    The expressions run on a wide frame of the symbols' bars (``SYMBOL_close``, ...): with ``group``
    None every symbol's at once, one query per kind of feature, all collected in one call (a live
    decision pays per call);
    with ``group``, a symbol at a time, ``group`` expressions per block (the streamed table's
    memory), in the table's column order. Each symbol's features read its whole series; ``columns``
    keeps only those features (the others are never computed); ``last`` keeps only the last rows.

    :raises ValueError: when the symbols' timestamps differ (the blocks are placed side by side by row).
    """
    keep = (lambda name: True) if columns is None else set(columns).__contains__
    period = htf_period(cfg, freq)
    symbols = universe.panel_symbols
    plan = _plan(cfg, universe)
    by_symbol = panel if isinstance(panel, SymbolBars) else SymbolBars(panel)
    closes: dict[str, pl.Series] = {}
    stamps: pl.Series | None = None
    for batch in [symbols] if group is None else [[sym] for sym in symbols]:
        series: dict[str, pl.Series] = {}
        for sym in batch:
            bars = by_symbol(sym, ("timestamp", *OHLCV))
            if stamps is None:
                stamps = bars["timestamp"]
            elif not bars["timestamp"].equals(stamps):
                raise ValueError("the panel is not aligned: every symbol must have the same timestamps")
            series.update({f"{sym}_{c}": bars[c] for c in OHLCV})
        wide = pl.DataFrame({"timestamp": stamps, **series})
        exprs = [e for sym in batch for name, e in plan.per_symbol[sym] if keep(name)]
        if group is None:  # every symbol is in the frame: the cross-asset features in the same query
            exprs += [e for name, e in plan.cross if keep(name)]
        step = group or max(len(exprs), 1)
        blocks = [wide.lazy().select(exprs[at: at + step]) for at in range(0, len(exprs), step)]
        chosen = [e for sym in batch for name, e in plan.htf[sym] if keep(name)] if period is not None else []
        htf = list(htf_queries(wide.lazy(), period, batch, chosen)) if chosen else []
        if group is None:  # every query in one call, run side by side (a live decision pays per call)
            done = pl.collect_all([*blocks, *htf], engine="in-memory")
            blocks, htf = done[:len(blocks)], done[len(blocks):]
        for block in blocks:  # when streaming, one block in memory at a time
            block = block if isinstance(block, pl.DataFrame) else block.collect(engine="in-memory")
            yield block if last is None else block.tail(last)
        if htf:
            yield htf_rows(*(q if isinstance(q, pl.DataFrame) else q.collect(engine="in-memory") for q in htf), last)
        closes.update({f"{sym}_close": series[f"{sym}_close"] for sym in batch})
    assert stamps is not None
    if group is not None:  # the cross-asset features read the closes
        rest = pl.DataFrame({"timestamp": stamps, **closes}).with_columns([e for name, e in plan.cross if keep(name)])
    else:
        rest = stamps.to_frame("timestamp")
    if last is not None:
        rest = rest.tail(last)
    if freq.intraday:  # the join may reorder rows
        rest = clock_features(rest.lazy(), rest["timestamp"], freq, calendar, tz).sort("timestamp").collect(engine="in-memory")
    yield rest.select("timestamp", *[n for n in rest.columns[1:] if n not in closes and keep(n)])


SMALL_PANEL_VALUES = 1_000_000  # an in-memory panel this small (a live decision's window) is partitioned once


class SymbolBars:
    """Each symbol's bars of a long panel, in time order. A small panel in memory (a live decision's
    window) is partitioned by symbol once: no query per read, and a read gives the symbol's whole
    frame (read its columns by name). Any other is read per call, the columns asked for of one
    symbol at a time (the memory bound of a 2M-bar panel, scanned or not)."""

    def __init__(self, panel: pl.DataFrame | pl.LazyFrame):
        self.panel = panel
        small = isinstance(panel, pl.DataFrame) and panel.height * panel.width <= SMALL_PANEL_VALUES
        self.parts = panel.partition_by("symbol", as_dict=True) if small else None

    @classmethod
    def of(cls, parts: dict[str, pl.DataFrame]) -> SymbolBars:
        """Bars already held per symbol (a live session's window), each in time order: no partition."""
        bars = cls.__new__(cls)
        bars.panel = next(iter(parts.values())).clear()
        bars.parts = {(sym,): frame for sym, frame in parts.items()}
        return bars

    def __call__(self, symbol: str, columns: tuple[str, ...]) -> pl.DataFrame:
        if self.parts is None:
            return self.panel.lazy().filter(pl.col("symbol") == symbol).sort("timestamp").select(columns).collect()
        part = self.parts.get((symbol,))
        if part is None:
            return self.panel.clear().select(columns)
        return part if part["timestamp"].is_sorted() else part.sort("timestamp")  # the held frame: no query


def _floats(frame: pl.DataFrame) -> pl.DataFrame:
    """Every feature column as Float64, NaN as null (a window that could not be computed), in a pass
    of its own (cheaper in polars than a cast inside each windowed expression)."""
    return frame.with_columns([_float(pl.col(c)) for c in frame.columns if c != "timestamp"])


def build_features(panel: pl.DataFrame | SymbolBars, universe: UniverseConfig, cfg: FeatureConfig, freq: BarFrequency,
                   calendar: str, tz: str, columns: Collection[str] | None = None, last: int | None = None) -> pl.DataFrame:
    """Feature table: one row per timestamp, ``timestamp`` plus one float column per feature.

    :param panel: aligned long panel (``timestamp, symbol, open, high, low, close, volume``), or
        its bars already held per symbol (:meth:`SymbolBars.of`).
    :param columns: compute only these features (a decision on live bars needs its policy's only),
        in the table's order; None for all.
    :param last: only the last rows (each still computed from the whole panel: what a decision
        on the latest bar reads); None for all.
    :returns: rows in time order; the first rows hold nulls until each window has filled.
    """
    if isinstance(columns, str) or (last is not None and last < 1):
        raise ValueError(f"columns must be a collection of names and last a positive row count, got {columns!r}, {last!r}")
    *blocks, rest = _feature_parts(panel, universe, cfg, freq, calendar, tz, columns, last=last)
    out = pl.concat([*blocks, rest], how="horizontal")
    present = set(out.columns)
    order = [n for n in feature_names(universe, cfg, freq) if n in present]
    schema = out.schema  # (a dict built on every access)
    if order and out.height * len(order) <= SMALL_TABLE_VALUES and all(schema[n] == pl.Float64 for n in order):
        # a decision's rows: the columns put in order as they are, and only those holding a NaN
        # given a pass (a query costs more than the whole table here)
        cols = {n: out.get_column(n) for n in ("timestamp", *order)}
        nan = np.isnan(np.column_stack([cols[n].to_numpy() for n in order])).any(axis=0)
        for n in [n for n, has in zip(order, nan) if has]:
            cols[n] = cols[n].fill_nan(None)
        return pl.DataFrame(cols)
    return out.select("timestamp", *[_float(pl.col(n)) for n in order])


SMALL_TABLE_VALUES = 10_000  # a feature table this small (a decision's last rows) is made floats in numpy


def _float(column: pl.Expr) -> pl.Expr:
    return column.cast(pl.Float64).fill_nan(None)


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
            _floats(frame).write_parquet(parts[-1])
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
