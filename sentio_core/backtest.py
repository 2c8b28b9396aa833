"""Out-of-sample backtest: many portfolios stepped together, with the environment's cost model.

The engine keeps ``B`` portfolios as arrays (cash, shares per leg, equity, peak, level) and
advances them one bar at a time: target shares, trades, costs (:func:`sentio_core.costs.trade_costs`
on whole columns) and marks are numpy operations over ``B``. Policies (MaskablePPO, PPO) and the
baselines (flat, buy-and-hold of the long leg, buy-and-hold of the underlying) run through it in
one pass. :func:`reference_path` is the slow, obvious version (the gymnasium environment stepped
one action at a time); the tests hold the two to the same equity, bar by bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np
import polars as pl

from sentio_core.config import Config, reads
from sentio_core.costs import trade_costs
from sentio_core.env import Book, TradingEnv, arm_stop, drawdown_limit, mask_state, observation
from sentio_core.market import Leg, Market
from sentio_core.masks import advance_peak, counted_mask, nearest_allowed
from sentio_core.metrics import drawdown, performance

if TYPE_CHECKING:  # a record handed in by the folds stage (data only)
    from sentio_core.folds import FoldSpan


class Policy(Protocol):
    """Maps observations (N, obs_dim) and masks (N, A) to actions (N,)."""

    def __call__(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray: ...


def sb3_policy(model, masked: bool) -> Policy:
    """Deterministic actions of an sb3 model; masks are passed to it only when ``masked``."""
    def act(obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        if masked:
            actions, _ = model.predict(obs, action_masks=masks, deterministic=True)
        else:
            actions, _ = model.predict(obs, deterministic=True)
        return np.asarray(actions, dtype=int).reshape(-1)
    return act


@dataclass
class StrategyPath:
    """One portfolio's out-of-sample path over bars ``first + 1 .. last``."""

    name: str
    timestamps: list[str]  # (T+1,) the decision bar's close, then each P&L bar's close
    equity: np.ndarray  # (T+1,)
    exposure: np.ndarray  # (T,) net exposure over each bar (at the fill)
    turnover: np.ndarray  # (T,) traded notional / equity
    costs: np.ndarray  # (T,) dollars
    levels: np.ndarray  # (T,) level held over each bar
    overrides: int = 0
    trades: list[dict] = field(default_factory=list)
    forced_bars: int = 0  # decisions the masks left a single action
    forced_flat: int = 0  # of those, decisions whose single action was flat
    constrained: dict[str, int] = field(default_factory=dict)  # mask rule -> decisions it constrained
    rule_peak: np.ndarray | None = None  # (T+1,) the drawdown rule's peak after each close (re-based after a stop-out)

    def rule_drawdown(self) -> np.ndarray:
        """(T+1,) drawdown from the rule's peak: what ``masks.drawdown_limit`` promises to bound."""
        return 1.0 - self.equity / self.rule_peak

    def metrics(self, periods_per_year: float) -> dict[str, float]:
        """:func:`performance` of the path, the bars forced to one action (and to flat) and, per mask rule, the
        decisions it constrained (``mask_RULE``: it removed an action the rules above it allowed)."""
        out = performance(self.equity, periods_per_year=periods_per_year, exposure=self.exposure,
                          turnover=self.turnover, costs=self.costs, overrides=self.overrides)
        out["forced_bars"] = float(self.forced_bars)
        out["forced_flat"] = float(self.forced_flat)
        out.update({f"mask_{rule}": float(n) for rule, n in self.constrained.items()})
        return out


@dataclass
class _State:
    cash: np.ndarray  # (B,)
    shares: np.ndarray  # (B, L)
    equity: np.ndarray  # (B,)
    peak: np.ndarray  # (B,)
    level: np.ndarray  # (B,) int
    held: np.ndarray  # (B,) int
    cooldown: np.ndarray  # (B,) int, bars of a stop-out's cool-down still to run

    def book(self, i: int) -> Book:
        return Book(cash=float(self.cash[i]), shares=self.shares[i], level=int(self.level[i]),
                    peak=float(self.peak[i]), equity=float(self.equity[i]), bars_held=int(self.held[i]),
                    cooldown=int(self.cooldown[i]))


# A decider gets (t, state) and returns (target weights (B, L), trade? (B,), new level (B,), overrides (B,)).
Decider = Callable[[int, _State], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def simulate(legs: list[Leg], weights: np.ndarray, levels: np.ndarray, cfg: Config, first: int, last: int, n: int,
             decide: Decider, timestamps: list[str]) -> list[StrategyPath]:
    """Step ``n`` portfolios from the close of ``first`` to the close of ``last``.

    :param weights: (A, L) leg weights of each level (for the flat start level).
    :param levels: (A,) net exposure of each level (recorded in the paths).
    """
    flat = int(np.flatnonzero(~weights.any(axis=1))[0])
    eq0 = cfg.env.initial_equity_usd
    s = _State(np.full(n, eq0), np.zeros((n, len(legs))), np.full(n, eq0), np.full(n, eq0),
               np.full(n, flat), np.zeros(n, dtype=int), np.zeros(n, dtype=int))
    limit = drawdown_limit(cfg.masks)
    T = last - first
    equity = np.empty((n, T + 1))
    equity[:, 0] = eq0
    peaks = np.empty((n, T + 1))
    peaks[:, 0] = eq0
    expo, turn, cost, lvl = (np.zeros((n, T)) for _ in range(4))
    overrides = np.zeros(n, dtype=int)
    trades: list[list[dict]] = [[] for _ in range(n)]
    direction = np.array([leg.direction for leg in legs], dtype=float)
    for k, t in enumerate(range(first, last)):
        target_w, trade, new_level, over = decide(t, s)
        overrides += over
        close_t = np.array([leg.close[t] for leg in legs])
        open_n = np.array([leg.open[t + 1] for leg in legs])
        close_n = np.array([leg.close[t + 1] for leg in legs])
        dead = np.array([leg.dollar_volume[t + 1] <= 0 for leg in legs])
        target = target_w * s.equity[:, None] / close_t
        trade = trade & ~((target != s.shares) & dead).any(axis=1)  # no volume in the fill bar: no fill
        new_level = np.where(trade | (new_level == s.level), new_level, s.level)
        new = np.where(trade[:, None], target, s.shares)
        delta = new - s.shares
        c = np.zeros(n)
        for j, leg in enumerate(legs):
            c += trade_costs(cfg.costs, leg.symbol, delta[:, j], open_n[j], leg.dollar_volume[t + 1], leg.sigma[t]).total
        for i in np.flatnonzero((delta != 0).any(axis=1)):
            for j in np.flatnonzero(delta[i]):
                trades[i].append({"timestamp": timestamps[t + 1], "symbol": legs[j].symbol, "shares": float(delta[i, j]),
                                  "price": float(open_n[j])})
        turn[:, k] = (np.abs(delta) * open_n).sum(axis=1) / s.equity
        expo[:, k] = (direction * new * open_n).sum(axis=1) / s.equity
        s.cash = s.cash - (delta * open_n).sum(axis=1) - c
        s.shares = new
        s.held = np.where(new_level == s.level, s.held + 1, 1)
        s.level = new_level
        s.equity = s.cash + (new * close_n).sum(axis=1)
        s.peak, s.cooldown = advance_peak(s.peak, s.equity, s.cooldown, limit, cfg.masks.drawdown_cooldown_bars)
        equity[:, k + 1], peaks[:, k + 1], cost[:, k], lvl[:, k] = s.equity, s.peak, c, levels[new_level]
    ts = timestamps[first: last + 1]
    return [StrategyPath("", ts, equity[i], expo[i], turn[i], cost[i], lvl[i], int(overrides[i]), trades[i], rule_peak=peaks[i])
            for i in range(n)]


class PolicyDecider:
    """Each portfolio follows one policy; ``masked`` policies are given the masks, the others are
    overridden to the nearest allowed level when they pick a forbidden one. It counts, per
    portfolio, the decisions each mask rule constrained and those forced to a single action (and
    of those, to flat)."""

    def __init__(self, market: Market, cfg: Config, policies: list[tuple[Policy, bool]]):
        self.market, self.cfg, self.policies = market, cfg, policies
        self.constrained = np.zeros((len(policies), len(cfg.masks.rules)), dtype=int)
        self.forced = np.zeros(len(policies), dtype=int)
        self.forced_flat = np.zeros(len(policies), dtype=int)
        self._flat = int(np.flatnonzero(market.levels == 0)[0])

    def __call__(self, t: int, s: _State):
        market, cfg, levels = self.market, self.cfg, self.market.levels
        n = len(self.policies)
        books = [s.book(i) for i in range(n)]
        for i, book in enumerate(books):  # the same stop-out rule as the environment's
            arm_stop(market, t, book, cfg.masks)
            s.cooldown[i] = book.cooldown
        obs = np.stack([observation(market, t, cfg.env.lookback_bars, b) for b in books])
        counted = [counted_mask(levels, mask_state(market, t, b, cfg.masks), cfg.masks) for b in books]
        masks = np.stack([m for m, _ in counted])
        for i, (_, removed) in enumerate(counted):
            self.constrained[i, : len(removed)] += removed > 0
        one = masks.sum(axis=1) == 1
        self.forced += one
        self.forced_flat += one & masks[:, self._flat]
        actions = np.empty(n, dtype=int)
        over = np.zeros(n, dtype=int)
        for i, (policy, masked) in enumerate(self.policies):
            a = int(policy(obs[i: i + 1], masks[i: i + 1])[0])
            if not masks[i, a]:
                a, over[i] = nearest_allowed(levels, masks[i], a), 1
            actions[i] = a
        trade = actions != s.level
        return market.weights[actions], trade, actions, over


def policy_decider(market: Market, cfg: Config, policies: list[tuple[Policy, bool]]) -> PolicyDecider:
    """A :class:`PolicyDecider` for ``policies``."""
    return PolicyDecider(market, cfg, policies)


def hold_decider(weights: np.ndarray, level: int) -> Decider:
    """Buy-and-hold: move to ``weights[level]`` at the first decision, then keep the shares."""
    def decide(t: int, s: _State):
        n = len(s.cash)
        trade = s.level != level
        return np.repeat(weights[level][None, :], n, axis=0), trade, np.full(n, level), np.zeros(n, dtype=int)
    return decide


def backtest_fold(market: Market, cfg: Config, test_rows: tuple[int, int],
                  policies: dict[str, tuple[Policy, bool]]) -> dict[str, StrategyPath]:
    """Every policy and the baselines over the test rows ``[c, d)``: decisions from the close of
    ``c - 1``, P&L on bars ``c .. d - 1``."""
    first, last = test_rows[0] - 1, test_rows[1] - 1
    names = list(policies)
    out = {}
    if names:
        decider = policy_decider(market, cfg, [policies[k] for k in names])
        paths = simulate(market.legs, market.weights, market.levels, cfg, first, last, len(names), decider, market.timestamps)
        for i, (k, p) in enumerate(zip(names, paths)):
            p.forced_bars = int(decider.forced[i])
            p.forced_flat = int(decider.forced_flat[i])
            p.constrained = dict(zip(cfg.masks.rules, decider.constrained[i].tolist()))
            out[k] = p
    long_w = np.zeros((2, len(market.legs)))
    long_w[1, 0] = 1.0  # all equity in the long leg
    hold = np.array([0.0, 1.0])
    out["flat"] = simulate(market.legs, long_w, hold, cfg, first, last, 1, hold_decider(long_w, 0), market.timestamps)[0]
    out["buy_hold_long"] = simulate(market.legs, long_w, hold, cfg, first, last, 1, hold_decider(long_w, 1), market.timestamps)[0]
    under_w = np.array([[0.0], [1.0]])
    out["buy_hold_underlying"] = simulate([market.underlying], under_w, hold, cfg, first, last, 1, hold_decider(under_w, 1),
                                          market.timestamps)[0]
    for name, path in out.items():
        path.name = name
        path.constrained = path.constrained or dict.fromkeys(cfg.masks.rules, 0)  # baselines read no masks
    return out


def reference_path(market: Market, cfg: Config, test_rows: tuple[int, int], policy: Policy, masked: bool) -> StrategyPath:
    """The slow reference: the gymnasium environment stepped one action at a time."""
    first, last = test_rows[0] - 1, test_rows[1] - 1
    env = TradingEnv(market, cfg, first, last)
    obs, _ = env.reset(seed=0)
    equity, costs, levels, peaks = [env.book.equity], [], [], [env.book.peak]
    done = False
    while not done:
        mask = env.action_masks()
        action = int(policy(obs[None, :], mask[None, :])[0])
        obs, _, term, trunc, info = env.step(action)
        equity.append(info["equity"])
        peaks.append(env.book.peak)
        costs.append(info["costs"])
        levels.append(info["level"])
        done = term or trunc
    T = len(costs)
    constrained = env.book.constrained if env.book.constrained is not None else np.zeros(len(cfg.masks.rules), dtype=int)
    return StrategyPath("reference", market.timestamps[first: last + 1], np.array(equity), np.zeros(T), np.zeros(T),
                        np.array(costs), np.array(levels), env.book.overrides, forced_bars=env.book.forced_bars,
                        forced_flat=env.book.forced_flat, rule_peak=np.array(peaks),
                        constrained=dict(zip(cfg.masks.rules, constrained.tolist())))


@reads("universe", "env", "masks", "costs")
def fold_backtest(cfg: Config, market: Market, span: FoldSpan,
                  policies: dict[str, tuple[Policy, bool]]) -> dict[str, StrategyPath]:
    """Policies and baselines over the fold's test rows (see :func:`backtest_fold`)."""
    return backtest_fold(market, cfg, span.test_rows, policies)


def paths_frame(paths: dict[str, StrategyPath]) -> pl.DataFrame:
    """One row per bar: ``timestamp`` and, per strategy, ``NAME_equity``, ``NAME_drawdown`` and
    ``NAME_level`` (the level held over the bar; null on the first row, the decision bar)."""
    first = next(iter(paths.values()))
    cols: dict[str, object] = {"timestamp": first.timestamps}
    for name, p in paths.items():
        cols[f"{name}_equity"] = p.equity
        cols[f"{name}_drawdown"] = drawdown(p.equity)
        cols[f"{name}_level"] = np.concatenate([[np.nan], p.levels])
    return pl.DataFrame(cols)


def trades_frame(paths: dict[str, StrategyPath]) -> pl.DataFrame:
    """Every fill: ``strategy, timestamp, symbol, shares, price``."""
    rows = [{"strategy": name, **t} for name, p in paths.items() for t in p.trades]
    schema = {"strategy": pl.String, "timestamp": pl.String, "symbol": pl.String, "shares": pl.Float64, "price": pl.Float64}
    return pl.DataFrame(rows, schema=schema)
