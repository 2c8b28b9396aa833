"""The baselines a learned policy is reported beside, named in one place, and the rule's decisions.

* ``trend_vol``: the rule a trader would try first, trend plus volatility targeting on the same
  legs (:func:`trend_vol_actions`). It is one more portfolio of the policies' engine in the
  backtest, under their masks and costs, so a policy has to beat something that tries.
* ``buy_hold_underlying``, ``buy_hold_long``, ``flat``: fixed-action portfolios with the same costs
  and no masks (:func:`sentio_core.backtest.baseline_paths`).

The table's order is the report's. Adding a baseline is adding an entry here and its path in
:func:`sentio_core.backtest.backtest_fold`; the report, the MLflow child runs and the paths,
trades and plots of a fold read the names from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # types only: the rule reads the market's arrays and its config section
    from sentio_core.config import BaselineConfig
    from sentio_core.market import Market

_EPS = 1e-12  # a target that lands on a level (0.25 / 0.5) is not floored below it by rounding


@dataclass(frozen=True)
class BaselineSpec:
    name: str  # the key of its path and metrics
    short: str  # prefix in the terminal's fold summary
    reads_masks: bool  # trades under the risk rules (a rule), or holds one action with no masks


TREND_VOL = "trend_vol"  # the rule (trend_vol_actions)
REGISTRY: tuple[BaselineSpec, ...] = (
    BaselineSpec(TREND_VOL, "trend", True),
    BaselineSpec("buy_hold_underlying", "bh_u", False),
    BaselineSpec("buy_hold_long", "bh_l", False),
    BaselineSpec("flat", "flat", False),
)
SPECS: dict[str, BaselineSpec] = {spec.name: spec for spec in REGISTRY}
NAMES: tuple[str, ...] = tuple(SPECS)


def _window_sums(x: np.ndarray, n: int) -> np.ndarray:
    """(len(x) - n + 1,) the sums of ``x[j : j + n]``, as differences of one running sum: each
    reads only values up to its window's end (a running sum's prefix does not move with later values)."""
    running = np.concatenate([[0.0], np.cumsum(x)])
    return running[n:] - running[:-n]


def moving_average(x: np.ndarray, n: int) -> np.ndarray:
    """(T,) the simple moving average of the last ``n`` values up to and including each row; NaN
    before ``n`` values exist."""
    out = np.full(len(x), np.nan)
    out[n - 1:] = _window_sums(np.asarray(x, dtype=float), n) / n
    return out


def realised_vol_ann(close: np.ndarray, bars: int, periods_per_year: float) -> np.ndarray:
    """(T,) annualised realised volatility at each close: the sample standard deviation of the last
    ``bars`` one-bar log returns (closes ``t - bars .. t``) x sqrt(``periods_per_year``); NaN on the
    rows before ``bars`` returns exist (``t < bars``)."""
    returns = np.diff(np.log(np.asarray(close, dtype=float)))
    out = np.full(len(returns) + 1, np.nan)
    if len(returns) >= bars:
        s1, s2 = _window_sums(returns, bars), _window_sums(returns * returns, bars)
        variance = np.maximum(s2 - s1 * s1 / bars, 0.0) / (bars - 1)  # >= 0: a flat stretch may round below
        out[bars:] = np.sqrt(variance * periods_per_year)
    return out


def _side_vol(market: Market, side: int, vol_bars: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The levels of one side (+1 long, -1 short) sorted by size, and (T,) the annualised realised
    volatility of one unit of exposure on it (of the legs its largest level holds, by weight); None
    when the side has no level."""
    levels = market.levels
    on_side = np.flatnonzero(np.sign(levels) == side)
    if on_side.size == 0:
        return None
    on_side = on_side[np.argsort(np.abs(levels[on_side]))]
    largest = on_side[-1]
    unit = sum(abs(w) * realised_vol_ann(leg.close, vol_bars, market.periods_per_year)
               for w, leg in zip(market.weights[largest], market.legs) if w != 0) / abs(levels[largest])
    return on_side, unit


def _floor_to_level(target: np.ndarray, on_side: np.ndarray, levels: np.ndarray, flat: int) -> np.ndarray:
    """(T,) per row the level of ``on_side`` (sorted by size) with the largest size not above
    ``target`` (>= 0, fraction of equity); ``flat`` when even the smallest is above it."""
    k = np.searchsorted(np.abs(levels[on_side]), target + _EPS, side="right") - 1
    return np.where(k >= 0, on_side[np.maximum(k, 0)], flat)


def trend_vol_actions(market: Market, cfg: BaselineConfig) -> np.ndarray:
    """The rule's target action (an index into ``market.levels``) for the decision after the close
    of every row, (T,) int, each from data up to and including that close.

    Long when the underlying's close is above its simple moving average of the last
    ``cfg.trend_bars`` closes, at ``min(cfg.max_exposure, cfg.vol_target_ann / vol)``, where ``vol``
    is the long leg's annualised realised volatility over the last ``cfg.vol_bars`` bars
    (:func:`realised_vol_ann`; volatility 0 gives ``max_exposure``). Otherwise flat; with
    ``cfg.short_when_down`` and a short side in the universe, short when the close is below the
    average, sized the same way on the short leg's volatility. The target is floored to the level of
    its side with the largest size that does not exceed it (flat when none fits). Flat until both
    windows are full (rows before ``max(trend_bars - 1, vol_bars)``). Nothing is fitted.
    """
    levels = market.levels
    flat = int(np.flatnonzero(levels == 0)[0])
    under = np.asarray(market.underlying.close, dtype=float)
    average = moving_average(under, cfg.trend_bars)  # NaN until the window is full
    out = np.full(market.n_rows, flat, dtype=int)
    sides = [(1, under > average)]  # a comparison with NaN is False: flat before the window is full
    if cfg.short_when_down:
        sides.append((-1, under < average))
    for side, signal in sides:
        found = _side_vol(market, side, cfg.vol_bars)
        if found is None:  # no level on this side (no short side in the universe): flat
            continue
        on_side, vol = found
        ready = signal & np.isfinite(vol)
        sized = np.where(vol > 0, cfg.vol_target_ann / np.where(vol > 0, vol, 1.0), np.inf)  # NaN vol: not ready
        target = np.minimum(cfg.max_exposure, sized)
        out = np.where(ready, _floor_to_level(np.where(ready, target, 0.0), on_side, levels, flat), out)
    return out
