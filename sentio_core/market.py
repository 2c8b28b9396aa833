"""Market arrays for one fold: what the environment and the backtest read, as numpy.

Every array is indexed by feature-table row (the aligned panel's timestamps in order). Anything
fitted, here the choice of feature columns (near-collinear and constant ones dropped) and their
normalisation, uses the fold's training rows only and is applied forward.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from sentio_core.config import Config, MaskConfig, reads
from sentio_core.features import COLUMN_BLOCK, SMALL_PANEL_VALUES, SymbolBars, feature_columns
from sentio_core.masks import level_risk
from sentio_core.ranges import Ranges, as_ranges, count, take
from sentio_core.metadata import LegSpec, Normalisation, ObservationSpec, PolicySpec

if TYPE_CHECKING:  # a record handed in by the folds stage (data only)
    from sentio_core.folds import FoldSpan


@dataclass(frozen=True)
class Leg:
    """A traded instrument. ``direction`` is +1 when its value counts as long exposure, -1 for an
    inverse product; ``weight_sign`` is the sign of the shares held for negative exposure."""

    symbol: str
    open: np.ndarray  # (T,) dollars
    close: np.ndarray  # (T,) dollars
    dollar_volume: np.ndarray  # (T,) dollars traded in the bar
    mean_dollar_volume: np.ndarray  # (T,) trailing mean up to and including the bar
    sigma: np.ndarray  # (T,) trailing per-bar std of log returns, up to and including the bar
    direction: int
    worst_drop: float = 0.0  # largest one-bar fall, close to close, in the fold's training rows (fraction)
    worst_rise: float = 0.0  # largest one-bar rise, likewise


@dataclass(frozen=True)
class Market:
    """One fold's arrays.

    :param features: (T, F) float32, normalised with training statistics, clipped, NaN -> 0.
    :param levels: (A,) target net exposure per action.
    :param weights: (A, L) signed fraction of equity held in each leg for each action.
    :param legs: the traded legs (one when both sides use the same symbol).
    :param feature_names: the F observed columns: the features kept by :func:`deduplicate`, then the
        regime probabilities.
    :param dropped_features: the selected features :func:`deduplicate` dropped on the training rows,
        in table order, each with the kept column it is near-collinear with, or ``"constant"``.
    """

    timestamps: Sequence[str]  # ISO strings (:class:`Stamps`)
    features: np.ndarray
    feature_names: list[str]
    levels: np.ndarray
    weights: np.ndarray
    legs: list[Leg]
    high_vol_prob: np.ndarray  # (T,)
    minutes_to_close: np.ndarray | None  # (T,) intraday only
    stale: np.ndarray  # (T,) bool
    periods_per_year: float
    underlying: Leg  # for the buy-and-hold baseline
    norm_mean: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    norm_std: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    feature_max_corr: float | None = None  # the de-duplication threshold fitted with (None: none fitted)
    dropped_features: dict[str, str] = field(default_factory=dict)  # dropped column -> the kept one it duplicates, or "constant"
    regime: np.ndarray | None = field(repr=False, default=None)  # (T,) the most probable filtered regime after each close
    _risk: dict = field(repr=False, compare=False, default_factory=dict)  # per-row tables: level risk by setting, volatility

    @property
    def n_rows(self) -> int:
        return len(self.timestamps)

    def level_risk(self, t: int, masks: MaskConfig) -> np.ndarray:
        """(A,) each level's plausible one-bar loss at the decision after the close of ``t``, fraction
        of equity (``masks.gap_move``: ``gap_sigmas`` x each leg's trailing volatility, or its worst
        bar of the training rows): a row of :meth:`level_risk_table`."""
        return self.level_risk_table(masks)[t]

    def leg_vol_ann(self, t: int) -> np.ndarray:
        """(A,) annualised volatility of the leg each level trades (weighted, 0 for flat)."""
        return self.vol_ann_table()[t]

    def vol_ann_table(self) -> np.ndarray:
        """(T, A) :meth:`leg_vol_ann` of every row, computed once (the engine reads the same table)."""
        table = self._risk.get("vol_ann")
        if table is None:
            sig = np.nan_to_num(np.stack([leg.sigma for leg in self.legs], axis=1), nan=0.0) * np.sqrt(self.periods_per_year)
            weighted = (np.abs(self.weights)[None, :, :] * sig[:, None, :]).sum(axis=2)  # (T, A)
            table = self._risk["vol_ann"] = weighted / np.maximum(np.abs(self.levels), 1e-12) * (self.levels != 0)
        return table

    def level_risk_table(self, masks: MaskConfig) -> np.ndarray:
        """(T, A) :meth:`level_risk` of every row, computed once per setting (the engine reads it whole)."""
        key = (masks.gap_move, masks.gap_sigmas)
        table = self._risk.get(key)
        if table is None:
            if masks.gap_move == "sigma":
                move = masks.gap_sigmas * np.stack([leg.sigma for leg in self.legs], axis=1)  # (T, L)
                drop, rise = -np.expm1(-move), np.expm1(move)  # log-return moves as price fractions
            else:
                drop = np.broadcast_to([leg.worst_drop for leg in self.legs], (self.n_rows, len(self.legs)))
                rise = np.broadcast_to([leg.worst_rise for leg in self.legs], (self.n_rows, len(self.legs)))
            table = self._risk[key] = level_risk(self.weights, drop, rise)  # (T, A)
        return table


Frame = pl.DataFrame | pl.LazyFrame  # a table in memory, or a Parquet file scanned lazily (pl.scan_parquet)


class Stamps(Sequence[str]):
    """A fold's timestamps as ISO strings, made on demand: 2M bars as strings would hold 150 MB."""

    def __init__(self, series: pl.Series):
        self._series = series

    def __len__(self) -> int:
        return self._series.len()

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [t.isoformat() for t in self._series[item].to_list()]
        return self._series[item].isoformat()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and list(self[:]) == list(other)

    __hash__ = None  # type: ignore[assignment]  # equal to lists, so not hashable

    def __repr__(self) -> str:
        return f"Stamps({len(self)} bars, {self[0] if len(self) else ''} .. {self[-1] if len(self) else ''})"


def _legs(bars: SymbolBars, specs: list[tuple[str, int]], vol_bars: int, liquidity_bars: int,
          train_rows: tuple[int, int] | Ranges) -> list[Leg]:
    """The legs ``(symbol, direction)`` with their trailing volatility and dollar volume: every
    symbol's in one query when the panel is small and in memory (a live decision pays per query),
    else a symbol at a time (the memory bound of a 2M-bar panel)."""
    symbols = list(dict.fromkeys(sym for sym, _ in specs))
    arrays: dict[str, tuple[np.ndarray, ...]] = {}
    for batch in [symbols] if bars.parts is not None else [[sym] for sym in symbols]:
        read = {sym: bars(sym, ("open", "close", "volume")) for sym in batch}
        closes = {sym: f["close"].to_numpy().astype(float) for sym, f in read.items()}
        dvs = {sym: closes[sym] * f["volume"].to_numpy().astype(float) for sym, f in read.items()}
        columns: dict[str, np.ndarray] = {}
        for sym in batch:
            columns[f"r_{sym}"] = np.concatenate([[np.nan], np.diff(np.log(closes[sym]))])
            columns[f"dv_{sym}"] = dvs[sym]
        trailing = pl.DataFrame(columns).select(
            *[pl.col(f"r_{sym}").rolling_std(vol_bars, min_samples=2) for sym in batch],
            *[pl.col(f"dv_{sym}").rolling_mean(liquidity_bars, min_samples=1) for sym in batch])
        for sym in batch:
            arrays[sym] = (read[sym]["open"].to_numpy().astype(float), closes[sym], dvs[sym], trailing[f"dv_{sym}"].to_numpy(),
                           np.nan_to_num(trailing[f"r_{sym}"].to_numpy(), nan=0.0))
        del read, closes, dvs, columns, trailing
    out = []
    for sym, direction in specs:
        close = arrays[sym][1]
        # one-bar moves inside the training rows (each range on its own: no move across a gap)
        moves = np.concatenate([close[a + 1: b] / close[a: b - 1] - 1.0 for a, b in as_ranges(train_rows)])
        worst_drop = float(max(0.0, -moves.min())) if moves.size else 0.0
        worst_rise = float(max(0.0, moves.max())) if moves.size else 0.0
        out.append(Leg(sym, *arrays[sym], direction, worst_drop, worst_rise))
    return out


def _stale(bars: SymbolBars, symbols: list[str]) -> np.ndarray:
    """Rows where a leg did not trade: no volume, or open = high = low = close."""
    out = None
    for sym in symbols:
        s = bars(sym, ("open", "high", "low", "close", "volume"))
        o, h, lo, c, v = (s[name].to_numpy() for name in ("open", "high", "low", "close", "volume"))
        flag = (v <= 0) | ((o == h) & (h == lo) & (lo == c))
        out = flag if out is None else out | flag
    return out


def select_features(columns: list[str], patterns: list[str] | None) -> list[str]:
    """Feature columns matching any glob pattern (all when ``patterns`` is None), in table order."""
    if patterns is None:
        return columns
    chosen = [c for c in columns if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    if not chosen:
        raise ValueError(f"env.feature_columns {patterns} match no feature column")
    return chosen


def normalise(x: np.ndarray, train_rows: tuple[int, int] | Ranges, clip: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score ``x`` (T, F) with the mean and std of ``train_rows`` only; clip; NaN -> 0."""
    mean, std = train_statistics(np.asfortranarray(x, dtype=float), train_rows)
    return apply_normalisation(x, mean, std, clip), mean, std


def train_statistics(x: np.ndarray, train_rows: tuple[int, int] | Ranges) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``x`` (T, F), the mean and std of ``train_rows`` (one range or several), NaN
    ignored; a column with no spread gets std 1. Each column is summed on its own (contiguous:
    numpy's pairwise sums), so a block of columns gives the same statistics as the whole table."""
    x = np.asfortranarray(take(x, as_ranges(train_rows)))
    mean = np.nan_to_num(np.nanmean(x, axis=0), nan=0.0)
    std = np.nanstd(x, axis=0)
    return mean, np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)


def apply_normalisation(x: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: float) -> np.ndarray:
    """``(x - mean) / std`` clipped to ``+-clip``, NaN -> 0, as float32 (T, F)."""
    return np.nan_to_num(np.clip((x - mean) / std, -clip, clip), nan=0.0).astype(np.float32)


CORRELATION_ROWS = 65_536  # rows per float64 chunk of :func:`correlation` (50 MB at 100 columns)


def correlation(z: np.ndarray, chunk_rows: int = CORRELATION_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation of the columns of ``z`` (n, F), e.g. the normalised training rows.

    Sums run in float64 over chunks of ``chunk_rows`` rows (a mean pass, then the centred cross
    products), so a float32 ``z`` is never copied whole as float64.

    :returns: ``(corr, constant)``: the (F, F) correlation, in [-1, 1], with 1 on the diagonal and 0
        in the rows and columns of constant columns; and (F,) bool, the columns whose values are all
        equal (NaN-free input assumed: the normalised matrix has no NaN).
    """
    n, f = z.shape
    constant = (z.min(axis=0) == z.max(axis=0)) if n else np.ones(f, dtype=bool)
    chunks = range(0, n, chunk_rows)
    mean = sum((z[i: i + chunk_rows].sum(axis=0, dtype=np.float64) for i in chunks), np.zeros(f)) / max(n, 1)
    gram = np.zeros((f, f))
    for i in chunks:
        c = z[i: i + chunk_rows].astype(np.float64) - mean
        gram += c.T @ c
    scale = np.sqrt(np.where(constant, 1.0, np.diag(gram)))
    corr = np.clip(gram / np.outer(scale, scale), -1.0, 1.0)
    corr[constant, :] = 0.0
    corr[:, constant] = 0.0
    np.fill_diagonal(corr, 1.0)
    return corr, constant


def deduplicate(corr: np.ndarray, constant: np.ndarray, max_corr: float) -> tuple[list[int], dict[int, int | None]]:
    """Greedy de-duplication of columns in their order: a column is kept only if its absolute
    correlation with every column kept before it is at most ``max_corr``; constant columns are dropped.

    :param corr: (F, F) from :func:`correlation`.
    :param constant: (F,) bool from :func:`correlation`.
    :returns: the kept column indices (ascending), and each dropped index -> the kept column with
        which it is most correlated, or None for a constant column.
    """
    kept: list[int] = []
    dropped: dict[int, int | None] = {}
    for j in range(len(constant)):
        if constant[j]:
            dropped[j] = None
            continue
        if kept:
            r = np.abs(corr[j, kept])
            twin = int(np.argmax(r))
            if r[twin] > max_corr:
                dropped[j] = kept[twin]
                continue
        kept.append(j)
    return kept, dropped


def training_matrix(feats: pl.LazyFrame, names: list[str], train_rows: tuple[int, int] | Ranges,
                    clip: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training rows of columns ``names``, normalised as the observation will be.

    Reads :data:`COLUMN_BLOCK` columns of the training rows at a time; each column's statistics are
    :func:`train_statistics` of the training rows (the numbers :func:`build_market` fits on the whole
    table), applied by :func:`apply_normalisation` (clipped; a value still undefined counts as the
    training mean).

    :returns: ``(z, mean, std)``: (n_train, F) float32, and (F,) each.
    """
    ranges = as_ranges(train_rows)
    n = count(ranges)
    z = np.empty((n, len(names)), dtype=np.float32)
    mean, std = np.empty(len(names)), np.empty(len(names))
    for at in range(0, len(names), COLUMN_BLOCK):
        block = names[at: at + COLUMN_BLOCK]
        x = np.concatenate([feats.slice(a, b - a).select(block).collect().to_numpy().astype(float) for a, b in ranges])
        cols = slice(at, at + len(block))
        mean[cols], std[cols] = train_statistics(x, (0, n))
        z[:, cols] = apply_normalisation(x, mean[cols], std[cols], clip)
    return z, mean, std


def fit_features(feats: pl.LazyFrame, names: list[str], train_rows: tuple[int, int] | Ranges, clip: float,
                 max_corr: float) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, str]]:
    """The feature columns kept by :func:`deduplicate` and their normalisation, fitted on the
    training rows only (:func:`training_matrix`, then :func:`correlation`; the float32 training
    matrix is freed on return).

    :returns: the kept names (in table order), their (mean, std), and the dropped names -> the
        kept name each duplicates, or ``"constant"``.
    """
    z, mean, std = training_matrix(feats, names, train_rows, clip)
    kept, dropped = deduplicate(*correlation(z), max_corr)
    return ([names[j] for j in kept], mean[kept], std[kept],
            {names[j]: "constant" if twin is None else names[twin] for j, twin in dropped.items()})


def action_weights(cfg: Config) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """Exposure levels, the (A, L) leg weights of each and the legs (symbol, direction).

    Positive levels are held in the long leg; negative levels in the short leg, as positive shares
    of an inverse product or negative shares of the underlying. Negative levels are dropped when
    the universe has no short side.
    """
    u = cfg.universe
    short = u.short_leg
    levels = np.array(sorted(lv for lv in cfg.env.exposure_levels if lv >= 0 or short is not None), dtype=float)
    legs: list[tuple[str, int]] = [(u.long_leg, 1)]
    if short is not None and short != u.long_leg:
        legs.append((short, -1 if u.short_sign == 1 else 1))
    index = {sym: i for i, (sym, _) in enumerate(legs)}
    weights = np.zeros((len(levels), len(legs)))
    for a, lv in enumerate(levels):
        if lv > 0:
            weights[a, index[u.long_leg]] += lv
        elif lv < 0:
            weights[a, index[short]] += u.short_sign * abs(lv)
    return levels, weights, legs


def build_market(cfg: Config, bars: Frame | SymbolBars, feats: Frame, regime_probs: pl.DataFrame | None,
                 train_rows: tuple[int, int] | Ranges, periods_per_year: float,
                 fitted: tuple[list[str], np.ndarray, np.ndarray] | None = None) -> Market:
    """Arrays of one fold.

    The observed features are the ``env.feature_columns`` globs' columns, less those
    :func:`fit_features` drops on the training rows (``env.feature_max_corr``), then the regime
    probabilities (never dropped).

    :param bars: the aligned long panel (synthetic legs included), in memory or scanned lazily, or
        its bars already held per symbol (:meth:`SymbolBars.of`).
    :param feats: the feature table (same timestamps as the panel), in memory or scanned lazily:
        it is read :data:`COLUMN_BLOCK` columns at a time, so the float32 observation matrix is the
        only copy of the table held (2M bars x 100 features: 0.8 GB; the de-duplication first holds
        the training rows of the selected columns, float32, and frees them).
    :param regime_probs: ``timestamp, regime_0..K-1`` filtered probabilities (train start to test end)
        or None; rows outside get a uniform prior and are never observed by a fold's episodes.
    :param train_rows: feature-table rows ``[a, b)`` of the training window, or several such ranges
        (a combinatorial split's), for the normalisation statistics and the de-duplication.
    :param fitted: ``(feature names, mean, std)`` of an already trained policy: its features and
        normalisation are applied instead of fitting new ones, and nothing is de-duplicated
        (re-scoring a champion).
    """
    in_memory = feats if isinstance(feats, pl.DataFrame) else None  # read eagerly (no query planning)
    feats = feats.lazy()
    columns = in_memory.columns if in_memory is not None else feats.collect_schema().names()
    max_corr: float | None = None
    dropped: dict[str, str] = {}
    given = (np.zeros(0), np.zeros(0))  # (mean, std) of the leading observed columns, fitted before
    if fitted is None:
        names = select_features(feature_columns(columns), cfg.env.feature_columns)
        if cfg.env.feature_max_corr is not None:
            max_corr = cfg.env.feature_max_corr
            names, kept_mean, kept_std, dropped = fit_features(feats, names, train_rows, cfg.env.clip_obs, max_corr)
            given = (kept_mean, kept_std)
    else:
        names = [n for n in fitted[0] if not n.startswith("regime_")]
        missing = sorted(set(names) - set(columns))
        if missing:
            raise ValueError(f"the policy observes features this feature table lacks: {missing[:5]}")
    timestamps = (in_memory if in_memory is not None else feats.select("timestamp").collect())["timestamp"]
    blocks = [names[i: i + COLUMN_BLOCK] for i in range(0, len(names), COLUMN_BLOCK)]
    if regime_probs is not None:
        same = regime_probs.height == len(timestamps) and regime_probs["timestamp"].equals(timestamps)  # no join to pay
        probs = (regime_probs if same else timestamps.to_frame().join(regime_probs, on="timestamp", how="left")).drop("timestamp")
        k = probs.width
        p = np.nan_to_num(probs.to_numpy().astype(float), nan=1.0 / k)
        names = names + probs.columns
        high_vol = p[:, -1]  # regimes are ordered by variance: the last is the most volatile
    else:
        p, high_vol = None, np.zeros(len(timestamps))
    if fitted is not None:
        given = (np.asarray(fitted[1], dtype=float), np.asarray(fitted[2], dtype=float))
        if len(given[0]) != len(names):
            raise ValueError(f"the policy's normalisation has {len(given[0])} columns, the observation {len(names)}")
    z = np.empty((len(timestamps), len(names)), dtype=np.float32)
    stats: list[tuple[np.ndarray, np.ndarray]] = []
    at = 0
    for x in _blocks(in_memory if in_memory is not None else feats, blocks, p):
        cols = slice(at, at + x.shape[1])
        if cols.stop <= len(given[0]):
            stats.append((given[0][cols], given[1][cols]))
        else:
            stats.append(train_statistics(x, train_rows))
        z[:, cols] = apply_normalisation(x, *stats[-1], cfg.env.clip_obs)
        at += x.shape[1]
    mean, std = (np.concatenate(parts) for parts in zip(*stats)) if stats else (np.zeros(0), np.zeros(0))
    levels, weights, leg_specs = action_weights(cfg)
    symbols = bars if isinstance(bars, SymbolBars) else SymbolBars(bars)
    *legs, underlying = _legs(symbols, [*leg_specs, (cfg.universe.underlying, 1)], cfg.env.vol_bars, cfg.env.liquidity_bars,
                              train_rows)
    mtc = ((in_memory if in_memory is not None else feats.select("minutes_to_close").collect())["minutes_to_close"]
           .to_numpy().astype(float) if "minutes_to_close" in columns else None)
    return Market(
        timestamps=Stamps(timestamps), features=z, feature_names=names,
        levels=levels, weights=weights, legs=legs, high_vol_prob=high_vol, minutes_to_close=mtc,
        stale=_stale(symbols, [sym for sym, _ in leg_specs]), periods_per_year=periods_per_year,
        underlying=underlying,
        norm_mean=mean, norm_std=std, feature_max_corr=max_corr, dropped_features=dropped,
        regime=np.argmax(p, axis=1).astype(np.int8) if p is not None and p.shape[1] else None,
    )


ONE_READ_VALUES = SMALL_PANEL_VALUES  # an in-memory feature block this small (a live decision's rows) is read in one query


def _blocks(feats: Frame, blocks: list[list[str]], regime_probs: np.ndarray | None) -> Iterator[np.ndarray]:
    """The observed columns as float64 (T, k) blocks, in order: the features, then the regime probabilities."""
    names = [n for block in blocks for n in block]
    if isinstance(feats, pl.DataFrame) and feats.height * len(names) <= ONE_READ_VALUES:  # one read, sliced: the same floats
        every = np.column_stack([feats.get_column(n).to_numpy() for n in names]).astype(float) if names else \
            np.zeros((feats.height, 0))
        at = 0
        for block in blocks:
            yield every[:, at: at + len(block)]
            at += len(block)
    else:
        for block in blocks:
            yield feats.lazy().select(block).collect().to_numpy().astype(float)
    if regime_probs is not None:
        yield regime_probs


@reads("universe", "env")
def fold_market(cfg: Config, bars: pl.DataFrame, feats: pl.DataFrame, regime_probs: pl.DataFrame | None,
                span: FoldSpan, periods_per_year: float) -> Market:
    """The fold's market arrays, normalised with its training rows only."""
    return build_market(cfg, bars, feats, regime_probs, span.training_ranges, periods_per_year)


def action_meanings(cfg: Config, market: Market) -> list[str]:
    """Human-readable meaning of each action index."""
    out = []
    for level in market.levels:
        if level == 0:
            out.append("flat (cash)")
        elif level > 0:
            out.append(f"{level:+.0%} of equity in {cfg.universe.long_leg}")
        else:
            how = "short" if cfg.universe.short_sign < 0 else "in"
            out.append(f"{level:+.0%} exposure: {abs(level):.0%} of equity {how} {cfg.universe.short_leg}")
    return out


def policy_spec(cfg: Config, market: Market, span: FoldSpan) -> PolicySpec:
    """What a user of a policy trained on this fold needs to build its inputs and read its outputs."""
    normalisation = Normalisation(mean=market.norm_mean.tolist(), std=market.norm_std.tolist(), clip=cfg.env.clip_obs,
                                  fitted_on=(span.train_start, span.train_end))
    observation = ObservationSpec(
        lookback_bars=cfg.env.lookback_bars, features=market.feature_names,
        layout="lookback_bars x features (oldest first, row-major), then state",
        state=["exposure", "drawdown", "bars_held/(bars_held+20)", "current_level"], normalisation=normalisation,
        feature_max_corr=market.feature_max_corr, dropped_features=market.dropped_features)
    legs = [LegSpec(symbol=leg.symbol, direction=leg.direction, worst_drop=leg.worst_drop, worst_rise=leg.worst_rise)
            for leg in market.legs]
    return PolicySpec(action_meanings=action_meanings(cfg, market), exposure_levels=market.levels.tolist(),
                      observation=observation, legs=legs,
                      fold=span.fold, train_window=(span.train_start, span.train_end),
                      test_window=(span.test_start, span.test_end))
