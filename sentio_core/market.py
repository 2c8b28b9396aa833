"""Market arrays for one fold: what the environment and the backtest read, as numpy.

Every array is indexed by feature-table row (the aligned panel's timestamps in order). Anything
fitted, here the feature normalisation, uses the fold's training rows only and is applied forward.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from sentio_core.config import Config, MaskConfig, reads
from sentio_core.features import COLUMN_BLOCK, feature_columns
from sentio_core.masks import level_risk
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


def _symbol(bars: Frame, symbol: str, columns: tuple[str, ...]) -> pl.DataFrame:
    return bars.lazy().filter(pl.col("symbol") == symbol).sort("timestamp").select(columns).collect()


def _leg(bars: Frame, symbol: str, direction: int, vol_bars: int, liquidity_bars: int,
         train_rows: tuple[int, int]) -> Leg:
    s = _symbol(bars, symbol, ("open", "close", "volume"))
    close = s["close"].to_numpy().astype(float)
    dv = close * s["volume"].to_numpy().astype(float)
    logret = np.concatenate([[np.nan], np.diff(np.log(close))])
    sigma = pl.Series(logret).rolling_std(vol_bars, min_samples=2).to_numpy()
    mean_dv = pl.Series(dv).rolling_mean(liquidity_bars, min_samples=1).to_numpy()
    a, b = train_rows
    moves = close[a + 1: b] / close[a: b - 1] - 1.0  # one-bar moves inside the training rows
    worst_drop = float(max(0.0, -moves.min())) if moves.size else 0.0
    worst_rise = float(max(0.0, moves.max())) if moves.size else 0.0
    return Leg(symbol, s["open"].to_numpy().astype(float), close, dv, mean_dv, np.nan_to_num(sigma, nan=0.0), direction,
               worst_drop, worst_rise)


def _stale(bars: Frame, symbols: list[str]) -> np.ndarray:
    out = None
    for sym in symbols:
        s = _symbol(bars, sym, ("open", "high", "low", "close", "volume"))
        flat = (s["open"] == s["high"]) & (s["high"] == s["low"]) & (s["low"] == s["close"])
        flag = ((s["volume"] <= 0) | flat).to_numpy()
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


def normalise(x: np.ndarray, train_rows: tuple[int, int], clip: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score ``x`` (T, F) with the mean and std of ``train_rows`` only; clip; NaN -> 0."""
    mean, std = train_statistics(np.asfortranarray(x, dtype=float), train_rows)
    return apply_normalisation(x, mean, std, clip), mean, std


def train_statistics(x: np.ndarray, train_rows: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``x`` (T, F), the mean and std of ``train_rows``, NaN ignored; a column with
    no spread gets std 1. Each column is summed on its own (contiguous: numpy's pairwise sums), so
    a block of columns gives the same statistics as the whole table."""
    a, b = train_rows
    x = np.asfortranarray(x[a:b])
    mean = np.nan_to_num(np.nanmean(x, axis=0), nan=0.0)
    std = np.nanstd(x, axis=0)
    return mean, np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)


def apply_normalisation(x: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: float) -> np.ndarray:
    """``(x - mean) / std`` clipped to ``+-clip``, NaN -> 0, as float32 (T, F)."""
    return np.nan_to_num(np.clip((x - mean) / std, -clip, clip), nan=0.0).astype(np.float32)


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


def build_market(cfg: Config, bars: Frame, feats: Frame, regime_probs: pl.DataFrame | None,
                 train_rows: tuple[int, int], periods_per_year: float,
                 fitted: tuple[list[str], np.ndarray, np.ndarray] | None = None) -> Market:
    """Arrays of one fold.

    :param bars: the aligned long panel (synthetic legs included), in memory or scanned lazily.
    :param feats: the feature table (same timestamps as the panel), in memory or scanned lazily:
        it is read :data:`COLUMN_BLOCK` columns at a time, so the float32 observation matrix is the
        only copy of the table held (2M bars x 100 features: 0.8 GB).
    :param regime_probs: ``timestamp, regime_0..K-1`` filtered probabilities (train start to test end)
        or None; rows outside get a uniform prior and are never observed by a fold's episodes.
    :param train_rows: feature-table rows ``[a, b)`` of the training window (normalisation statistics).
    :param fitted: ``(feature names, mean, std)`` of an already trained policy: its features and
        normalisation are applied instead of fitting new ones (re-scoring a champion).
    """
    feats = feats.lazy()
    columns = feats.collect_schema().names()
    if fitted is None:
        names = select_features(feature_columns(columns), cfg.env.feature_columns)
    else:
        names = [n for n in fitted[0] if not n.startswith("regime_")]
        missing = sorted(set(names) - set(columns))
        if missing:
            raise ValueError(f"the policy observes features this feature table lacks: {missing[:5]}")
    timestamps = feats.select("timestamp").collect()["timestamp"]
    blocks = [names[i: i + COLUMN_BLOCK] for i in range(0, len(names), COLUMN_BLOCK)]
    if regime_probs is not None:
        probs = timestamps.to_frame().join(regime_probs, on="timestamp", how="left").drop("timestamp")
        k = probs.width
        p = np.nan_to_num(probs.to_numpy().astype(float), nan=1.0 / k)
        names = names + probs.columns
        high_vol = p[:, -1]  # regimes are ordered by variance: the last is the most volatile
    else:
        p, high_vol = None, np.zeros(len(timestamps))
    if fitted is not None:
        mean, std = np.asarray(fitted[1], dtype=float), np.asarray(fitted[2], dtype=float)
        if len(mean) != len(names):
            raise ValueError(f"the policy's normalisation has {len(mean)} columns, the observation {len(names)}")
    z = np.empty((len(timestamps), len(names)), dtype=np.float32)
    stats: list[tuple[np.ndarray, np.ndarray]] = []
    at = 0
    for x in _blocks(feats, blocks, p):
        cols = slice(at, at + x.shape[1])
        if fitted is None:
            stats.append(train_statistics(x, train_rows))
            z[:, cols] = apply_normalisation(x, *stats[-1], cfg.env.clip_obs)
        else:
            z[:, cols] = apply_normalisation(x, mean[cols], std[cols], cfg.env.clip_obs)
        at += x.shape[1]
    if fitted is None:
        mean, std = (np.concatenate(parts) for parts in zip(*stats)) if stats else (np.zeros(0), np.zeros(0))
    levels, weights, leg_specs = action_weights(cfg)
    legs = [_leg(bars, sym, d, cfg.env.vol_bars, cfg.env.liquidity_bars, train_rows) for sym, d in leg_specs]
    mtc = (feats.select("minutes_to_close").collect()["minutes_to_close"].to_numpy().astype(float)
           if "minutes_to_close" in columns else None)
    return Market(
        timestamps=Stamps(timestamps), features=z, feature_names=names,
        levels=levels, weights=weights, legs=legs, high_vol_prob=high_vol, minutes_to_close=mtc,
        stale=_stale(bars, [sym for sym, _ in leg_specs]), periods_per_year=periods_per_year,
        underlying=_leg(bars, cfg.universe.underlying, 1, cfg.env.vol_bars, cfg.env.liquidity_bars, train_rows),
        norm_mean=mean, norm_std=std,
    )


def _blocks(feats: pl.LazyFrame, blocks: list[list[str]], regime_probs: np.ndarray | None) -> Iterator[np.ndarray]:
    """The observed columns as float64 (T, k) blocks, in order: the features, then the regime probabilities."""
    for block in blocks:
        yield feats.select(block).collect().to_numpy().astype(float)
    if regime_probs is not None:
        yield regime_probs


@reads("universe", "env")
def fold_market(cfg: Config, bars: pl.DataFrame, feats: pl.DataFrame, regime_probs: pl.DataFrame | None,
                span: FoldSpan, periods_per_year: float) -> Market:
    """The fold's market arrays, normalised with its training rows only."""
    return build_market(cfg, bars, feats, regime_probs, span.train_rows, periods_per_year)


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
        state=["exposure", "drawdown", "bars_held/(bars_held+20)", "current_level"], normalisation=normalisation)
    return PolicySpec(action_meanings=action_meanings(cfg, market), exposure_levels=market.levels.tolist(),
                      observation=observation, legs=[LegSpec(symbol=leg.symbol, direction=leg.direction) for leg in market.legs],
                      fold=span.fold, train_window=(span.train_start, span.train_end),
                      test_window=(span.test_start, span.test_end))
