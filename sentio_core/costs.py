"""Transaction costs: one function, used by the environment's reward and by the backtest.

For a trade of ``shares`` at ``price`` (dollars), the cost in dollars is the sum of

* commission: ``max(minimum, per_share x |shares|)`` (per-share mode) or ``bps x notional``
  (basis-point mode); zero when nothing trades;
* half-spread: ``half_spread_bps[symbol] x notional`` (crossing half the quoted spread);
* impact: ``impact_coef x sigma x sqrt(participation) x notional``, the square-root law, where
  ``participation = notional / dollar_volume`` of the bar the order fills in and ``sigma`` is the
  per-bar volatility of returns.

All three grow with the traded notional, so a higher rate never lowers a cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sentio_core.config import CostConfig


@dataclass(frozen=True)
class TradeCosts:
    """Cost components in dollars, each shaped like the trades."""

    commission: np.ndarray
    spread: np.ndarray
    impact: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.commission + self.spread + self.impact


def trade_costs(cfg: CostConfig, symbol: str | Sequence[str], shares, price, dollar_volume, sigma) -> TradeCosts:
    """Costs of trading ``shares`` (signed; the sign does not matter) of ``symbol``.

    :param symbol: one symbol, or one per column of the last axis (several legs at once: each
        column is costed exactly as it would be on its own).
    :param shares: shares traded per bar, shape (T,) or scalar.
    :param price: fill price in dollars, same shape.
    :param dollar_volume: dollars traded in the fill bar (> 0), same shape.
    :param sigma: per-bar return volatility (fraction), same shape.
    :returns: commission, half-spread and impact in dollars.
    """
    return CostModel.of(cfg, symbol).costs(shares, price, dollar_volume, sigma)


@dataclass(frozen=True)
class CostModel:
    """:func:`trade_costs` with the symbols' half-spreads looked up once: the engine costs a
    step's trades of every portfolio with one call and no per-symbol lookups."""

    cfg: CostConfig
    symbol: str | tuple[str, ...]
    half_spread_bps: float | np.ndarray  # one value, or one per column

    @classmethod
    def of(cls, cfg: CostConfig, symbol: str | Sequence[str]) -> CostModel:
        if isinstance(symbol, str):
            return cls(cfg, symbol, cfg.spread_bps(symbol))
        return cls(cfg, tuple(symbol), np.array([cfg.spread_bps(s) for s in symbol]))

    def costs(self, shares, price, dollar_volume, sigma) -> TradeCosts:
        """The components of trading ``shares`` at ``price`` (shapes broadcast against each other;
        the last axis is the symbols' when the model has several)."""
        cfg = self.cfg
        q = np.abs(np.asarray(shares, dtype=float))
        notional = q * np.asarray(price, dtype=float)
        traded = q > 0
        if cfg.commission_mode == "per_share":
            commission = np.where(traded, np.maximum(cfg.commission_min_usd, cfg.commission_per_share_usd * q), 0.0)
        else:
            commission = notional * cfg.commission_bps / 1e4
        spread = notional * self.half_spread_bps / 1e4
        dv = np.asarray(dollar_volume, dtype=float)
        positive = dv > 0
        if not positive.all() and np.any(traded & ~positive):
            raise ValueError(f"{self.symbol}: dollar volume must be positive on every bar that trades")
        participation = notional / np.where(positive, dv, np.inf)  # 0 where nothing can trade
        impact = cfg.impact_coef * np.asarray(sigma, dtype=float) * np.sqrt(participation) * notional
        return TradeCosts(np.asarray(commission, dtype=float), spread, impact)
