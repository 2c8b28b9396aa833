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
    q = np.abs(np.asarray(shares, dtype=float))
    px = np.asarray(price, dtype=float)
    notional = q * px
    traded = q > 0
    if cfg.commission_mode == "per_share":
        commission = np.where(traded, np.maximum(cfg.commission_min_usd, cfg.commission_per_share_usd * q), 0.0)
    else:
        commission = notional * cfg.commission_bps / 1e4
    bps = cfg.spread_bps(symbol) if isinstance(symbol, str) else np.array([cfg.spread_bps(s) for s in symbol])
    spread = notional * bps / 1e4
    dv = np.broadcast_to(np.asarray(dollar_volume, dtype=float), notional.shape)
    if np.any(traded & (dv <= 0)):
        raise ValueError(f"{symbol}: dollar volume must be positive on every bar that trades")
    participation = np.divide(notional, dv, out=np.zeros_like(notional), where=dv > 0)
    impact = cfg.impact_coef * np.asarray(sigma, dtype=float) * np.sqrt(participation) * notional
    return TradeCosts(np.asarray(commission, dtype=float), spread, impact)
