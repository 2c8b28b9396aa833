"""Action masks: one pure function per rule, composed in priority order.

Every rule maps the exposure levels (shape ``(A,)``) and a little state to a boolean array of
shape ``(A,)``: True where the level may be chosen. Each rule on its own always leaves flat or the
current level valid. :func:`compose` AND-s the rules in priority order and lets a later rule yield
when it would leave nothing valid, so at least one action is always valid and the higher-priority
rule wins a conflict (a stale bar holds even at the drawdown limit; the drawdown limit beats the
minimum holding period).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sentio_core.config import MASK_RULES, MaskConfig

RULES = MASK_RULES  # named once, in the config schema (the values ``masks.rules`` accepts), in default priority order
_EPS = 1e-12


@dataclass(frozen=True)
class MaskState:
    """What the rules look at, at one decision (after the close of bar t).

    :param current: index of the level currently held.
    :param drawdown: equity below its running peak, fraction in [0, 1).
    :param bars_held: bars the current level has been held.
    :param leg_vol_ann: annualised volatility of the leg each level trades, shape (A,) (0 for flat).
    :param high_vol_prob: filtered probability of the highest-variance regime.
    :param minutes_to_close: minutes from the bar's close to the session close (None for daily bars).
    :param trade_participation: for each level, the largest fraction of a leg's recent mean dollar
        volume that moving to it would trade, shape (A,) (0 for the current level).
    :param stale: the bar is stale or missing (no volume, or no price change in any field).
    """

    current: int
    drawdown: float
    bars_held: int
    leg_vol_ann: np.ndarray
    high_vol_prob: float
    minutes_to_close: float | None
    trade_participation: np.ndarray
    stale: bool


def _only(n: int, index: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[index] = True
    return out


def reduce_only(levels: np.ndarray, current: int) -> np.ndarray:
    """Levels that do not add risk: flat, or the current side at the same or a smaller size."""
    cur = levels[current]
    same_side = np.sign(levels) == np.sign(cur)
    return (levels == 0) | (same_side & (np.abs(levels) <= abs(cur) + _EPS))


def stale_bar(levels: np.ndarray, current: int, stale: bool) -> np.ndarray:
    """On a stale or missing bar, hold: only the current level."""
    return _only(len(levels), current) if stale else np.ones(len(levels), dtype=bool)


def drawdown_budget(levels: np.ndarray, current: int, drawdown: float, limit: float, reduce_frac: float) -> np.ndarray:
    """Flat only at the drawdown limit; reduce-only from ``reduce_frac x limit`` on."""
    if drawdown >= limit:
        return levels == 0
    if drawdown >= reduce_frac * limit:
        return reduce_only(levels, current)
    return np.ones(len(levels), dtype=bool)


def exposure_cap(levels: np.ndarray, cap: float) -> np.ndarray:
    """No level whose absolute exposure exceeds ``cap`` (fraction of equity)."""
    return np.abs(levels) <= cap + _EPS


def vol_target(levels: np.ndarray, leg_vol_ann: np.ndarray, budget: float) -> np.ndarray:
    """No level whose |exposure| x annualised volatility of its leg exceeds ``budget``."""
    return (levels == 0) | (np.abs(levels) * leg_vol_ann <= budget + _EPS)


def regime_gate(levels: np.ndarray, current: int, high_vol_prob: float, threshold: float) -> np.ndarray:
    """In the high-volatility regime, no new or larger long (levels above max(current, 0))."""
    if high_vol_prob < threshold:
        return np.ones(len(levels), dtype=bool)
    return levels <= max(levels[current], 0.0) + _EPS


def session_window(levels: np.ndarray, current: int, minutes_to_close: float | None, window_minutes: float) -> np.ndarray:
    """Intraday: reduce-only within ``window_minutes`` of the session close (off for daily bars)."""
    if minutes_to_close is None or window_minutes <= 0 or minutes_to_close > window_minutes:
        return np.ones(len(levels), dtype=bool)
    return reduce_only(levels, current)


def liquidity(trade_participation: np.ndarray, max_participation: float) -> np.ndarray:
    """No trade above ``max_participation`` of the traded leg's recent mean dollar volume."""
    return trade_participation <= max_participation + _EPS


def min_hold(levels: np.ndarray, current: int, bars_held: int, min_bars: int) -> np.ndarray:
    """A non-flat position is held at least ``min_bars`` bars before it may change."""
    if levels[current] != 0 and bars_held < min_bars:
        return _only(len(levels), current)
    return np.ones(len(levels), dtype=bool)


# each rule name (config.MASK_RULES) -> its mask from (levels, state, config); a test holds the two equal
RULE_FUNCTIONS: dict[str, Callable[[np.ndarray, MaskState, MaskConfig], np.ndarray]] = {
    "stale": lambda lv, s, c: stale_bar(lv, s.current, s.stale),
    "drawdown": lambda lv, s, c: drawdown_budget(lv, s.current, s.drawdown, c.drawdown_limit, c.drawdown_reduce_frac),
    "exposure_cap": lambda lv, s, c: exposure_cap(lv, c.max_abs_exposure),
    "vol_target": lambda lv, s, c: vol_target(lv, s.leg_vol_ann, c.vol_target_ann),
    "regime": lambda lv, s, c: regime_gate(lv, s.current, s.high_vol_prob, c.regime_high_vol_prob),
    "session": lambda lv, s, c: session_window(lv, s.current, s.minutes_to_close, c.session_close_minutes),
    "liquidity": lambda lv, s, c: liquidity(s.trade_participation, c.max_participation),
    "min_hold": lambda lv, s, c: min_hold(lv, s.current, s.bars_held, c.min_hold_bars),
}


def rule_masks(levels: np.ndarray, state: MaskState, cfg: MaskConfig) -> dict[str, np.ndarray]:
    """Each enabled rule's own mask, in the configured priority order."""
    return {name: RULE_FUNCTIONS[name](levels, state, cfg) for name in cfg.rules}


def compose(masks: list[np.ndarray]) -> np.ndarray:
    """AND the masks in priority order; a mask that would leave no action valid yields."""
    out = np.ones(len(masks[0]), dtype=bool) if masks else np.ones(1, dtype=bool)
    for mask in masks:
        combined = out & mask
        if combined.any():
            out = combined
    return out


def action_mask(levels: np.ndarray, state: MaskState, cfg: MaskConfig) -> np.ndarray:
    """The composed mask, shape (A,): True where the level may be chosen."""
    masks = list(rule_masks(levels, state, cfg).values())
    return compose(masks) if masks else np.ones(len(levels), dtype=bool)


def nearest_allowed(levels: np.ndarray, mask: np.ndarray, action: int) -> int:
    """The allowed level closest to ``levels[action]``; ties go to the smaller absolute exposure."""
    if mask[action]:
        return action
    allowed = np.flatnonzero(mask)
    key = [(abs(levels[i] - levels[action]), abs(levels[i])) for i in allowed]
    return int(allowed[min(range(len(allowed)), key=key.__getitem__)])
