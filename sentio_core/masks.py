"""Action masks: one pure function per rule, composed in priority order.

Every rule maps the exposure levels (shape ``(A,)``) and a little state to a boolean array of
shape ``(A,)``: True where the level may be chosen. Each rule on its own always leaves flat or the
current level valid. :func:`compose` AND-s the rules in priority order and lets a later rule yield
when it would leave nothing valid, so at least one action is always valid and the higher-priority
rule wins a conflict (a stale bar holds even at the drawdown limit; the drawdown limit beats the
minimum holding period).

The drawdown rule is a budget, not a switch: a level is allowed only when its plausible one-bar
loss fits in what is left of the budget (:func:`drawdown_budget`), so a small budget leaves a
small position. Reaching the limit, or a budget that fits no level but flat (:func:`stop_out`),
stops the policy out for ``drawdown_cooldown_bars`` bars, after which the peak re-bases
(:func:`advance_peak`): the budget holds from peak to trough within each stretch between
re-bases, and a policy is never locked out for good.
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
    :param cooldown: bars of a stop-out's cool-down still to run (0: none).
    :param level_risk: for each level, its plausible one-bar loss as a fraction of equity, shape (A,)
        (0 for flat; see :func:`level_risk`).
    """

    current: int
    drawdown: float
    bars_held: int
    leg_vol_ann: np.ndarray
    high_vol_prob: float
    minutes_to_close: float | None
    trade_participation: np.ndarray
    stale: bool
    cooldown: int = 0
    level_risk: np.ndarray | None = None


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


def budget_left(drawdown: float, limit: float) -> float:
    """The fraction of today's equity that may still be lost before the drawdown reaches ``limit``:
    equity E, peak P, floor (1 - limit) P, so (E - floor) / E = 1 - (1 - limit) / (1 - drawdown)."""
    return 1.0 - (1.0 - limit) / (1.0 - drawdown) if drawdown < 1.0 else -1.0


def drawdown_budget(levels: np.ndarray, drawdown: float, limit: float, cooldown: int,
                    level_risk: np.ndarray | None) -> np.ndarray:
    """Flat during a stop-out's cool-down; otherwise no level whose plausible one-bar loss
    (``level_risk``) exceeds the budget left (:func:`budget_left`). At or past the limit that
    leaves flat only; the stop-out and the re-base are :func:`advance_peak`'s."""
    if cooldown > 0:
        return levels == 0
    room = budget_left(drawdown, limit)
    if level_risk is None:  # no estimate of a bar's move: the budget binds only at the limit
        return (levels == 0) | (room > 0)
    return (levels == 0) | (level_risk <= room + _EPS)


def stop_out(levels: np.ndarray, drawdown: float, limit: float, level_risk: np.ndarray) -> bool:
    """True when what is left of the budget fits no level but flat. The policy is then stopped out
    (flat for the cool-down, then the peak re-bases), as at the limit itself: without this, a
    budget too small for any position would keep the policy flat, and flat equity never makes the
    new peak that would free it."""
    room = budget_left(drawdown, limit)
    return not bool(np.any((levels != 0) & (level_risk <= room + _EPS)))


def advance_peak(peak, equity, cooldown, limit: float | None, cooldown_bars: int):
    """The running peak and the cool-down bars left after marking ``equity`` at a bar's close
    (scalars or arrays of portfolios; the environment and the backtest share this one rule).

    Outside a cool-down the peak follows the equity up; a drawdown at or past ``limit`` stops the
    policy out: ``cooldown_bars`` bars flat. The bar the cool-down ends, the peak re-bases to that
    bar's equity, so the whole budget is available again: a loss is booked, the policy trades on.
    ``limit`` None (the drawdown rule off) only tracks the peak.
    """
    if np.ndim(peak) == 0 and np.ndim(equity) == 0 and np.ndim(cooldown) == 0:  # one portfolio: plain floats
        return _advance_one(float(peak), float(equity), int(cooldown), limit, cooldown_bars)
    peak, equity, cooldown = np.asarray(peak, float), np.asarray(equity, float), np.asarray(cooldown, int)
    cooling = cooldown > 0
    if not cooling.any():  # the common step: the peak follows the equity up, nobody is cooling down
        peak = np.maximum(peak, equity)
        if limit is None:
            return peak, np.zeros_like(cooldown)
        return peak, np.where(equity <= (1.0 - limit) * peak, cooldown_bars, 0)
    left = np.where(cooling, cooldown - 1, 0)
    peak = np.where(cooling, np.where(left == 0, equity, peak), np.maximum(peak, equity))
    if limit is not None:
        stopped = ~cooling & (equity <= (1.0 - limit) * peak)
        left = np.where(stopped, cooldown_bars, left)
    return peak, left


def _advance_one(peak: float, equity: float, cooldown: int, limit: float | None, cooldown_bars: int) -> tuple[float, int]:
    """:func:`advance_peak` for one portfolio in plain Python (the environment's per-step path;
    a test holds it equal to the array form)."""
    if cooldown > 0:
        left = cooldown - 1
        return (equity if left == 0 else peak), left
    peak = max(peak, equity)
    if limit is not None and equity <= (1.0 - limit) * peak:
        return peak, cooldown_bars
    return peak, 0


def level_risk(weights: np.ndarray, drop: np.ndarray, rise: np.ndarray) -> np.ndarray:
    """Each level's plausible one-bar loss, fraction of equity: its legs' weights times the adverse
    move of each leg (a ``drop`` for shares held, a ``rise`` for shares sold short), shape (A,).

    :param weights: (A, L) signed fraction of equity in each leg.
    :param drop: (L,) plausible one-bar fall of each leg, fraction (>= 0); or (T, L), one row per bar.
    :param rise: (L,) plausible one-bar rise of each leg, fraction (>= 0); or (T, L).
    :returns: (A,), or (T, A) for rows of moves.
    """
    return np.asarray(drop) @ np.maximum(weights, 0.0).T + np.asarray(rise) @ np.maximum(-weights, 0.0).T


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
    "drawdown": lambda lv, s, c: drawdown_budget(lv, s.drawdown, c.drawdown_limit, s.cooldown, s.level_risk),
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
    return compose_counted(masks)[0]


def compose_counted(masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`compose`, and for each mask the number of actions it removed beyond those the masks
    ranked above it had removed (0 when it removed none or yielded), shape (R,)."""
    out = np.ones(len(masks[0]), dtype=bool) if masks else np.ones(1, dtype=bool)
    removed = np.zeros(len(masks), dtype=int)
    valid = len(out)
    for r, mask in enumerate(masks):
        combined = out & mask
        left = np.count_nonzero(combined)
        if left:
            removed[r] = valid - left
            out, valid = combined, left
    return out, removed


def removed_by(masks: list[np.ndarray]) -> np.ndarray:
    """For each action, the index of the mask that removed it: the first, in priority order, that
    did not yield (:func:`compose`); -1 where the action stays allowed. Shape (A,)."""
    out = np.ones(len(masks[0]), dtype=bool) if masks else np.ones(1, dtype=bool)
    by = np.full(len(out), -1)
    for r, mask in enumerate(masks):
        combined = out & mask
        if combined.any():
            by[out & ~combined] = r
            out = combined
    return by


def action_mask(levels: np.ndarray, state: MaskState, cfg: MaskConfig) -> np.ndarray:
    """The composed mask, shape (A,): True where the level may be chosen."""
    return counted_mask(levels, state, cfg)[0]


def counted_mask(levels: np.ndarray, state: MaskState, cfg: MaskConfig) -> tuple[np.ndarray, np.ndarray]:
    """The composed mask and the actions each enabled rule removed (``cfg.rules`` order, (R,))."""
    masks = list(rule_masks(levels, state, cfg).values())
    if not masks:
        return np.ones(len(levels), dtype=bool), np.zeros(0, dtype=int)
    return compose_counted(masks)


def nearest_allowed(levels: np.ndarray, mask: np.ndarray, action: int) -> int:
    """The allowed level closest to ``levels[action]``; ties go to the smaller absolute exposure."""
    if mask[action]:
        return action
    allowed = np.flatnonzero(mask)
    key = [(abs(levels[i] - levels[action]), abs(levels[i])) for i in allowed]
    return int(allowed[min(range(len(allowed)), key=key.__getitem__)])
