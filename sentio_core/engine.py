"""One vectorised trading engine: N portfolios stepped together as arrays.

Each portfolio has its own decision row ``t`` (training draws random episode starts; a backtest
steps every portfolio through the same rows). One :meth:`Engine.step` does, for all N at once,
what :class:`sentio_core.env.TradingEnv` does for one: the stop-out check, every mask rule as an
(N, A) array composed in priority order with the per-rule counts, the override of a forbidden
action to the nearest allowed level, sizing at the close of t, the fill at the open of t+1 (no
fill where the fill bar has no volume), costs through :func:`sentio_core.costs.trade_costs`'s model on
whole columns, marking at the close of t+1, the drawdown rule's peak and cool-down, holding
times and the reward. Observations are gathered from the fold's normalised feature matrix by index
into a preallocated buffer (rows before the first are zeros).

The single-portfolio environment stays the readable reference; the tests drive both with the
same actions and hold them equal to 1e-9 at every step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from sentio_core.config import Config
from sentio_core.costs import CostModel
from sentio_core.env import ObservationLayout
from sentio_core.market import Market
from sentio_core.masks import advance_peak

_EPS = 1e-12


@dataclass(frozen=True)
class Tables:
    """A fold market's arrays laid out for the engine: one (T, L) array per leg field, (T, A)
    tables of each level's risk and volatility, and the feature matrix the windows are gathered from."""

    open: np.ndarray  # (T, L)
    close: np.ndarray  # (T, L)
    dollar_volume: np.ndarray  # (T, L)
    mean_dollar_volume: np.ndarray  # (T, L), floored at 1e-9 (the liquidity rule divides by it)
    sigma: np.ndarray  # (T, L)
    direction: np.ndarray  # (L,)
    symbols: tuple[str, ...]
    levels: np.ndarray  # (A,)
    weights: np.ndarray  # (A, L)
    flat: int
    risk: np.ndarray  # (T, A) plausible one-bar loss of each level (masks.gap_move)
    vol_ann: np.ndarray  # (T, A) annualised volatility of each level's leg
    stale: np.ndarray  # (T,) bool
    high_vol_prob: np.ndarray  # (T,)
    minutes_to_close: np.ndarray | None  # (T,), None for daily bars
    features: np.ndarray  # (T, F) float32, the market's own matrix (not copied: 0.8 GB at 2M bars)

    @classmethod
    def of(cls, market: Market, cfg: Config) -> Tables:
        stack = lambda name: np.stack([getattr(leg, name) for leg in market.legs], axis=1).astype(float)
        return cls(
            open=stack("open"), close=stack("close"), dollar_volume=stack("dollar_volume"),
            mean_dollar_volume=np.maximum(stack("mean_dollar_volume"), 1e-9), sigma=stack("sigma"),
            direction=np.array([leg.direction for leg in market.legs], dtype=float),
            symbols=tuple(leg.symbol for leg in market.legs), levels=market.levels, weights=market.weights,
            flat=int(np.flatnonzero(market.levels == 0)[0]), risk=market.level_risk_table(cfg.masks),
            vol_ann=market.vol_ann_table(), stale=np.asarray(market.stale, dtype=bool),
            high_vol_prob=np.asarray(market.high_vol_prob, dtype=float),
            minutes_to_close=None if market.minutes_to_close is None else np.asarray(market.minutes_to_close, float),
            features=market.features,
        )


class Engine:
    """N portfolios over one fold market. Arrays are public: ``cash (N,)``, ``shares (N, L)``,
    ``equity``, ``peak``, ``level`` (action index), ``held`` (bars the level has been held),
    ``cooldown``, ``t`` (the decision row) and ``end`` (the last decision row + 1 of the episode);
    the counters ``overrides``, ``forced_bars``, ``forced_flat`` and ``constrained (N, R)``."""

    def __init__(self, market: Market, cfg: Config, n: int, tables: Tables | None = None):
        self.cfg, self.n = cfg, n
        self.tab = tables if tables is not None else Tables.of(market, cfg)
        self.rules = list(cfg.masks.rules)
        self.limit = cfg.masks.drawdown_limit if "drawdown" in self.rules else None
        self.lookback = cfg.env.lookback_bars
        self.layout = ObservationLayout(self.lookback, self.tab.features.shape[1])
        self.obs_dim = self.layout.obs_dim
        self._offsets = np.arange(self.lookback) - (self.lookback - 1)  # a window's rows relative to t
        self._static_rules()
        self.reset_all(np.zeros(n, dtype=int), np.ones(n, dtype=int))

    def _static_rules(self) -> None:
        """What the rules read that does not depend on the portfolio's money: tables by current
        level (A, A) and by row (T, A), so a decision gathers rows instead of recomputing them."""
        m, lv = self.cfg.masks, self.tab.levels
        cur = lv[:, None]  # row: the current level; column: the candidate
        self._only_current = np.eye(len(lv), dtype=bool)
        self._regime_gate = lv[None, :] <= np.maximum(cur, 0.0) + _EPS
        same_side = np.sign(lv)[None, :] == np.sign(cur)
        self._reduce_only = (lv == 0)[None, :] | (same_side & (np.abs(lv)[None, :] <= np.abs(cur) + _EPS))
        self._cap = np.abs(lv) <= m.max_abs_exposure + _EPS
        self._cap_binds = not self._cap.all()
        self._vol_ok = (lv == 0)[None, :] | (np.abs(lv)[None, :] * self.tab.vol_ann <= m.vol_target_ann + _EPS)
        self._flat_only = lv == 0
        self._nonflat = lv != 0
        self._index = np.arange(self.n)
        self._no_trade = np.zeros((self.n, len(self.tab.symbols)))  # last_delta of a step where nothing trades
        self._no_trade.flags.writeable = False
        self._costs = CostModel.of(self.cfg.costs, self.tab.symbols)
        free = np.ones((self.n, len(lv)), dtype=bool), np.zeros((self.n, len(self.rules)), dtype=int)
        for a in free:
            a.flags.writeable = False
        self._free = free  # the masks when no rule is enabled: every action allowed, nothing removed

    # --- state -------------------------------------------------------------------------
    def reset_all(self, start: np.ndarray, end: np.ndarray) -> None:
        n, n_legs, eq0 = self.n, len(self.tab.symbols), self.cfg.env.initial_equity_usd
        self.cash, self.shares = np.full(n, eq0), np.zeros((n, n_legs))
        self.equity, self.peak = np.full(n, eq0), np.full(n, eq0)
        self.level = np.full(n, self.tab.flat)
        self.held, self.cooldown = np.zeros(n, dtype=int), np.zeros(n, dtype=int)
        self.t, self.end = np.asarray(start, dtype=int).copy(), np.asarray(end, dtype=int).copy()
        self._lockstep = bool((self.t == self.t[0]).all())  # every portfolio on one row (a backtest): shared rows
        self.overrides, self.forced_bars, self.forced_flat = (np.zeros(n, dtype=int) for _ in range(3))
        self.constrained = np.zeros((n, len(self.rules)), dtype=int)
        self.last_delta = np.zeros((n, n_legs))
        self._mark()

    def reset(self, rows: np.ndarray, start: np.ndarray, end: np.ndarray) -> None:
        """Start portfolios ``rows`` afresh (initial equity, flat) at decision rows ``start``."""
        eq0 = self.cfg.env.initial_equity_usd
        self.cash[rows], self.shares[rows] = eq0, 0.0
        self.equity[rows], self.peak[rows] = eq0, eq0
        self.level[rows], self.held[rows], self.cooldown[rows] = self.tab.flat, 0, 0
        self.t[rows], self.end[rows] = start, end
        self._lockstep = False
        self.overrides[rows] = self.forced_bars[rows] = self.forced_flat[rows] = 0
        self.constrained[rows] = 0
        self._mark()

    def load_state(self, cash: np.ndarray | float, shares: np.ndarray | list, peak: np.ndarray | float,
                   level: np.ndarray | int, held: np.ndarray | int, cooldown: np.ndarray | int) -> None:
        """Set every portfolio's money and position as a live book holds them at the close of its
        decision row (the equity is marked at that close); what a decision on live bars starts from.
        Each is an array with a row per portfolio, or what numpy broadcasts to one (a scalar)."""
        self.cash[:], self.shares[:] = cash, shares
        self.equity = self.cash + (self.shares * self.tab.close[self._row]).sum(axis=1)
        self.peak[:], self.level[:], self.held[:], self.cooldown[:] = peak, level, held, cooldown
        self._mark()

    @property
    def _row(self) -> np.ndarray | int:
        """The decision row(s) to index the tables with: one shared row (the tables' rows broadcast
        over the portfolios) while the portfolios step in lockstep, else each portfolio's own."""
        return int(self.t[0]) if self._lockstep else self.t

    @property
    def drawdown(self) -> np.ndarray:
        """(N,) drawdown from the rule's peak (kept current by every change of equity or peak)."""
        return self._dd

    def _mark(self) -> None:
        if (self.peak > 0).all():  # the usual case, in fewer array calls: the same arithmetic
            self._dd = 1.0 - self.equity / self.peak
        else:
            self._dd = np.where(self.peak > 0, 1.0 - self.equity / np.where(self.peak > 0, self.peak, 1.0), 0.0)

    # --- masks -------------------------------------------------------------------------
    def arm_stop(self, fits: np.ndarray | None = None) -> None:
        """Start the cool-down where the budget fits no level but flat (:func:`masks.stop_out`).

        :param fits: :meth:`_fits` for this state (computed when None).
        """
        if self.limit is None:
            return
        fits = self._fits() if fits is None else fits
        some = (self._nonflat & fits).any(axis=1)
        if not some.all():  # (else no portfolio stops out: the cool-downs stand)
            self.cooldown = np.where((self.cooldown == 0) & ~some, self.cfg.masks.drawdown_cooldown_bars, self.cooldown)

    def _fits(self) -> np.ndarray:
        """(N, A) whether each level's plausible one-bar loss fits the drawdown budget left."""
        dd, limit = self.drawdown, self.cfg.masks.drawdown_limit
        if (dd < 1.0).all():  # the usual case, in fewer array calls: the same arithmetic
            room = 1.0 - (1.0 - limit) / (1.0 - dd)
        else:
            safe = np.where(dd < 1.0, 1.0 - dd, 1.0)
            room = np.where(dd < 1.0, 1.0 - (1.0 - limit) / safe, -1.0)
        return self.tab.risk[self._row] <= room[:, None] + _EPS

    def rule_masks(self, fits: np.ndarray | None = None) -> list[np.ndarray | None]:
        """Each enabled rule's (N, A) mask, in priority order (:data:`masks.RULE_FUNCTIONS`,
        vectorised); None where the rule allows every action of every portfolio at this step (a
        daily bar's session rule, no stale row, no high-volatility row, a one-bar holding period).

        :param fits: :meth:`_fits` for this state (computed when None).
        """
        tab, m, level, row = self.tab, self.cfg.masks, self.level, self._row
        out: list[np.ndarray | None] = []
        for rule in self.rules:
            mask = None
            if rule == "stale":
                mask = _where(tab.stale[row], self._only_current, level)
            elif rule == "drawdown":
                mask = self._flat_only | (self._fits() if fits is None else fits)
                cooling = self.cooldown > 0
                if cooling.any():
                    mask = np.where(cooling[:, None], self._flat_only, mask)
            elif rule == "exposure_cap":
                if self._cap_binds:
                    mask = np.broadcast_to(self._cap, (self.n, len(self._cap)))
            elif rule == "vol_target":
                mask = self._vol_ok[row]
            elif rule == "regime":
                mask = _where(tab.high_vol_prob[row] >= m.regime_high_vol_prob, self._regime_gate, level)
            elif rule == "session":
                if tab.minutes_to_close is not None and m.session_close_minutes > 0:
                    # as the rule reads it (NaN included)
                    mask = _where(~(tab.minutes_to_close[row] > m.session_close_minutes), self._reduce_only, level)
            elif rule == "liquidity":
                mask = self._participation() <= m.max_participation + _EPS
            elif rule == "min_hold":
                if m.min_hold_bars > 1:  # a non-flat level has been held at least one bar
                    hold = self._nonflat[level] & (self.held < m.min_hold_bars)  # binds on a non-flat level only
                    mask = _where(hold, self._only_current, level)
            else:  # the schema admits only the names above
                raise ValueError(f"unknown mask rule {rule!r}")
            out.append(mask)
        return out

    def _participation(self) -> np.ndarray:
        """(N, A) the largest fraction of a leg's mean dollar volume that moving to each level trades
        (the reference's arithmetic per leg, on an (N, A, L) array, then the largest over the legs)."""
        tab, row = self.tab, self._row
        close, mdv = tab.close[row][..., None, :], tab.mean_dollar_volume[row][..., None, :]  # (1, L) or (N, 1, L)
        target = tab.weights[None, :, :] * self.equity[:, None, None] / close  # (N, A, L)
        part = (np.abs(target - self.shares[:, None, :]) * close / mdv).max(axis=2)
        part[self._index, self.level] = 0.0
        return part

    def masks(self, by: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The composed (N, A) mask after the stop-out check, and the actions each rule removed
        beyond those the rules above it removed, (N, R) (0 where it yielded).

        :param by: an (N, A) int array to fill with the index in :attr:`rules` of the rule that
            removed each action, -1 where the action is allowed (why a decision could not take it).
        """
        if not self.rules:
            if by is not None:
                by[:] = -1
            return self._free
        fits = self._fits() if self.limit is not None else None
        self.arm_stop(fits)
        masks = self.rule_masks(fits)
        fast = self._compose_all(masks, by)  # (each composition fills all of ``by``)
        return fast if fast is not None else self._compose(masks, by)

    def _compose_all(self, masks: list[np.ndarray | None], by: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`_compose` in a few whole-array steps when no rule has to yield: each rule's
        running AND is one layer of an (R, N, A) stack, and since the running AND only loses
        actions, a last layer that leaves every portfolio an action means no layer left one
        nothing. None when some portfolio would be left nothing (the caller then composes rule by
        rule; ``tests/test_engine.py`` holds the two equal)."""
        active = [r for r, mask in enumerate(masks) if mask is not None]
        n, a = self.n, len(self.tab.levels)
        if not active:
            if by is not None:
                by[:] = -1
            return np.ones((n, a), dtype=bool), np.zeros((n, len(self.rules)), dtype=int)
        running = np.empty((len(active) + 1, n, a), dtype=bool)
        running[0] = True
        for i, r in enumerate(active):
            np.logical_and(running[i], masks[r], out=running[i + 1])
        left = running.sum(axis=2)  # (R' + 1, N) actions left after each rule
        if not left[-1].all():
            return None
        removed = np.zeros((n, len(self.rules)), dtype=int)
        removed[:, active] = (left[:-1] - left[1:]).T
        if by is not None:  # the layers still holding an action count the rules it passed: the next removed it
            by[:] = _rule_index(tuple(active))[running[1:].sum(axis=0)]
        return running[-1], removed

    def _compose(self, masks: list[np.ndarray | None], by: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The rules' masks composed in priority order, rule by rule (see :meth:`masks`)."""
        if by is not None:
            by[:] = -1  # the rules below mark what they remove
        out = np.ones((self.n, len(self.tab.levels)), dtype=bool)
        removed = np.zeros((self.n, len(self.rules)), dtype=int)
        valid = np.full(self.n, len(self.tab.levels))
        for r, mask in enumerate(masks):
            if mask is None:  # allows everything: removes nothing
                continue
            combined = out & mask
            left = combined.sum(axis=1)
            ok = left > 0
            if ok.all():
                if by is not None:
                    by[out & ~combined] = r
                removed[:, r] = valid - left
                out, valid = combined, left
            else:  # a rule that would leave a portfolio nothing yields for it
                if by is not None:
                    by[out & ~combined & ok[:, None]] = r
                removed[:, r] = np.where(ok, valid - left, 0)
                out = np.where(ok[:, None], combined, out)
                valid = np.where(ok, left, valid)
        return out, removed

    def nearest_allowed(self, mask: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Per row, the allowed level closest to the chosen one; ties go to the smaller absolute
        exposure, then the lower index (:func:`masks.nearest_allowed`)."""
        lv = self.tab.levels
        dist = np.where(mask, np.abs(lv[None, :] - lv[actions][:, None]), np.inf)
        closest = dist == dist.min(axis=1, keepdims=True)
        return np.argmin(np.where(closest, np.abs(lv)[None, :], np.inf), axis=1)

    # --- stepping ------------------------------------------------------------------------
    def step(self, actions: np.ndarray, masks: tuple[np.ndarray, np.ndarray] | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Act for every portfolio: masks, overrides, fill, costs, mark. Returns the reward, the
        costs paid (dollars), terminated and truncated, each (N,).

        :param masks: what :meth:`masks` returned for this very state (saves computing them twice).
        """
        actions = np.array(actions, dtype=int)  # a copy: the caller may reuse its array, the engine keeps the levels
        mask, removed = masks if masks is not None else self.masks()
        if mask is not self._free[0] or mask.shape[1] == 1:  # (no rule: nothing forbidden, forced only with one level)
            one = mask.sum(axis=1) == 1
            self.forced_bars += one
            self.forced_flat += one & mask[:, self.tab.flat]
            self.constrained += removed > 0
            forbidden = ~mask[self._index, actions]
            if forbidden.any():
                actions = np.where(forbidden, self.nearest_allowed(mask, actions), actions)
                self.overrides += forbidden
        before, dd_before = self.equity, self.drawdown
        costs = self._settle(actions)
        self.t = self.t + 1
        penalty = self.cfg.env.drawdown_penalty * np.maximum(0.0, self.drawdown - dd_before)
        reward = np.log(self.equity / before) - penalty
        terminated = self.equity <= 0
        truncated = (self.t >= self.end) & ~terminated
        return reward, costs, terminated, truncated

    def _settle(self, actions: np.ndarray) -> np.ndarray:
        tab, t = self.tab, self._row
        keep = actions == self.level
        if keep.all():  # every portfolio keeps its level: nothing trades, nothing is paid
            self.last_delta, cost = self._no_trade, np.zeros(self.n)
            self.held = self.held + 1
        else:
            target = tab.weights[actions] * self.equity[:, None] / tab.close[t]
            new = np.where(keep[:, None], self.shares, target)
            dead = tab.dollar_volume[t + 1] <= 0
            if dead.any():
                no_fill = ((new != self.shares) & dead).any(axis=1)  # nothing trades in the fill bar
                new = np.where(no_fill[:, None], self.shares, new)
                actions = np.where(no_fill, self.level, actions)
            delta = new - self.shares
            fill = tab.open[t + 1]
            self.last_delta = delta  # what the backtest records of this step
            if delta.any():
                cost = self._costs.costs(delta, fill, tab.dollar_volume[t + 1], tab.sigma[t]).total.sum(axis=1)
            else:  # nothing trades: no commission, spread or impact
                cost = np.zeros(self.n)
            self.cash = self.cash - ((delta * fill).sum(axis=1) + cost)
            self.shares = new
            self.held = np.where(actions == self.level, self.held + 1, 1)
            self.level = actions
        self.equity = self.cash + (self.shares * tab.close[t + 1]).sum(axis=1)
        self.peak, self.cooldown = advance_peak(self.peak, self.equity, self.cooldown, self.limit,
                                                self.cfg.masks.drawdown_cooldown_bars)
        self._mark()
        return cost

    # --- observations --------------------------------------------------------------------
    def observe(self, out: np.ndarray | None = None) -> np.ndarray:
        """(N, obs_dim) float32: the feature window of rows ``t - lookback + 1 .. t`` (zeros before
        the first row) and the state, gathered into ``out`` (allocated when None)."""
        if out is None:
            out = np.empty((self.n, self.obs_dim), dtype=np.float32)
        tab, width = self.tab, self.layout.window_size
        window = out[:, :width]
        window.shape = (self.n, self.lookback, self.layout.n_features)  # a view, never a copy (numpy raises otherwise)
        if self._lockstep:  # one window, broadcast to every portfolio
            first = int(self.t[0]) + 1 - self.lookback
            if first >= 0:  # the rows as they are
                window[0] = tab.features[first: first + self.lookback]
            else:
                rows = self.t[:1, None] + self._offsets[None, :]
                np.take(tab.features, rows, axis=0, out=window[:1], mode="clip")
                window[:1][rows < 0] = 0.0
            window[1:] = window[:1]
        else:
            rows = self.t[:, None] + self._offsets[None, :]  # each window's rows; negative before the first row
            np.take(tab.features, rows, axis=0, out=window, mode="clip")
            if rows[:, 0].min() < 0:  # rows before the first are zeros, as in the reference
                window[rows < 0] = 0.0
        value = (tab.direction[None, :] * self.shares * tab.close[self._row]).sum(axis=1)
        if (self.equity > 0).all():  # the usual case, in fewer array calls: the same arithmetic
            out[:, width] = value / self.equity
        else:
            out[:, width] = np.where(self.equity > 0, value / np.where(self.equity > 0, self.equity, 1.0), 0.0)
        out[:, width + 1] = self.drawdown
        out[:, width + 2] = self.held / (self.held + 20.0)
        out[:, width + 3] = tab.levels[self.level]
        return out


def _where(on: np.ndarray | np.bool_, by_level: np.ndarray, level: np.ndarray) -> np.ndarray | None:
    """A rule's (N, A) mask: each portfolio's row of ``by_level`` (a table by current level) where
    ``on``, every action elsewhere; None when it is on for none. ``on`` is one flag per portfolio,
    or one flag shared by all (a row's, while they step in lockstep)."""
    if not isinstance(on, np.ndarray):  # shared: every portfolio or none
        return by_level[level] if on else None
    return np.where(on[:, None], by_level[level], True) if on.any() else None


@functools.lru_cache(maxsize=64)
def _rule_index(active: tuple[int, ...]) -> np.ndarray:
    """The rule that removed an action, by the number of active rules it passed (-1: it passed all)."""
    out = np.array([*active, -1])
    out.flags.writeable = False
    return out
