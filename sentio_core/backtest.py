"""Out-of-sample backtest on the one trading engine (:mod:`sentio_core.engine`).

The policies (MaskablePPO, PPO) are portfolios of one :class:`Engine`, stepped together over the
test rows with the masks, costs, stop-outs and overrides training uses. The rule-based baseline
(``trend_vol``, :mod:`sentio_core.baselines`) is one more portfolio of that engine, following a
:class:`Schedule` of targets fixed from data up to each close, under the same masks and costs; the
other baselines (flat, buy-and-hold of the long leg, buy-and-hold of the underlying) are
fixed-action portfolios of an engine over their own instrument, with no masks.
:func:`reference_path` is the slow, obvious version (the gymnasium environment stepped one action
at a time); the tests hold the two to the same equity, bar by bar.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import polars as pl

from sentio_core import baselines
from sentio_core.config import Config, reads
from sentio_core.engine import Engine
from sentio_core.env import TradingEnv
from sentio_core.market import Market
from sentio_core.masks import nearest_allowed
from sentio_core.metrics import drawdown, performance, regime_slices, sharpe_uncertainty

if TYPE_CHECKING:  # a record handed in by the folds stage (data only)
    from sentio_core.folds import FoldSpan


class Policy(Protocol):
    """Maps observations (N, obs_dim) and masks (N, A) to actions (N,)."""

    def __call__(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Schedule:
    """A rule's decisions fixed in advance: the target action (an index into ``market.levels``) for
    the decision after the close of every market row, each chosen from data up to that close. It
    reads the masks: each decision takes the allowed level nearest to its target (ties to the
    smaller exposure, :meth:`Engine.nearest_allowed`), so the engine never has to override it."""

    targets: np.ndarray  # (T,) int, one per market row


def sb3_policy(model, masked: bool) -> Policy:
    """Deterministic actions of an sb3 model; masks are passed to it only when ``masked``."""
    def act(obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        if masked:
            actions, _ = model.predict(obs, action_masks=masks, deterministic=True)
        else:
            actions, _ = model.predict(obs, deterministic=True)
        return np.asarray(actions, dtype=int).reshape(-1)
    return act


@dataclass(frozen=True)
class Fills:
    """A path's fills as columns, in time order (then leg): the fill bar (an index into the path's
    ``timestamps``), the leg's symbol, signed shares and the fill price. Records are made only
    when asked for (:attr:`StrategyPath.trades`), never in the backtest's loop."""

    bar: np.ndarray  # (F,) int
    symbol: np.ndarray  # (F,) str
    shares: np.ndarray  # (F,)
    price: np.ndarray  # (F,)


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
    fills: Fills | None = None  # every trade, as columns (None: none)
    forced_bars: int = 0  # decisions the masks left a single action
    forced_flat: int = 0  # of those, decisions whose single action was flat
    constrained: dict[str, int] = field(default_factory=dict)  # mask rule -> decisions it constrained
    rule_peak: np.ndarray | None = None  # (T+1,) the drawdown rule's peak after each close (re-based after a stop-out)

    @property
    def trades(self) -> list[dict]:
        """Every fill as ``{timestamp, symbol, shares, price}``, in time order."""
        f = self.fills
        if f is None:
            return []
        return [{"timestamp": self.timestamps[b], "symbol": sym, "shares": q, "price": px}
                for b, sym, q, px in zip(f.bar.tolist(), f.symbol.tolist(), f.shares.tolist(), f.price.tolist())]

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


def run_engine(engine: Engine, first: int, last: int, decide: Callable[[Engine, np.ndarray], np.ndarray],
               timestamps: Sequence[str]) -> list[StrategyPath]:
    """Step the engine's portfolios from the close of ``first`` to the close of ``last`` and record
    each one's path. ``decide(engine, mask)`` returns the (N,) actions for the composed (N, A) masks."""
    n, tab = engine.n, engine.tab
    engine.reset_all(np.full(n, first), np.full(n, last))
    T = last - first
    equity, peaks = np.empty((n, T + 1)), np.empty((n, T + 1))
    equity[:, 0], peaks[:, 0] = engine.equity, engine.peak
    cost, lvl = np.zeros((n, T)), np.zeros((n, T))
    delta, shares = np.zeros((T, n, len(tab.symbols))), np.zeros((T, n, len(tab.symbols)))
    fill = tab.open[first + 1: last + 1]  # (T, L) the fill bar of each step
    for k in range(T):
        masks = engine.masks()
        _, cost[:, k], _, _ = engine.step(decide(engine, masks[0]), masks)
        delta[k], shares[k] = engine.last_delta, engine.shares
        equity[:, k + 1], peaks[:, k + 1], lvl[:, k] = engine.equity, engine.peak, tab.levels[engine.level]
    before = equity[:, :-1]  # (n, T) the equity each trade was sized on
    turn = (np.abs(delta) * fill[:, None, :]).sum(axis=2).T / before
    expo = (tab.direction * shares * fill[:, None, :]).sum(axis=2).T / before
    ts = timestamps[first: last + 1]
    owner, ks, legs = np.nonzero(delta.transpose(1, 0, 2))  # by portfolio, then time, then leg
    symbols = np.array(tab.symbols)
    cuts = np.searchsorted(owner, np.arange(n + 1))
    fills = [Fills(ks[a:b] + 1, symbols[legs[a:b]], delta[ks[a:b], i, legs[a:b]], fill[ks[a:b], legs[a:b]]) if b > a else None
             for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]
    rules = engine.rules
    return [StrategyPath("", ts, equity[i], expo[i], turn[i], cost[i], lvl[i], int(engine.overrides[i]), fills[i],
                         forced_bars=int(engine.forced_bars[i]), forced_flat=int(engine.forced_flat[i]),
                         constrained=dict(zip(rules, engine.constrained[i].tolist())), rule_peak=peaks[i])
            for i in range(n)]


def _rows(rows: list[int]) -> slice | np.ndarray:
    """Consecutive rows as a slice (a view of the observations, not a copy), others as an index."""
    if rows == list(range(rows[0], rows[-1] + 1)):
        return slice(rows[0], rows[-1] + 1)
    return np.array(rows)


def policy_decisions(policies: list[tuple[Policy | Schedule, bool]], obs_dim: int) -> Callable[[Engine, np.ndarray], np.ndarray]:
    """Each portfolio follows one policy, which sees its own observation and mask (a forbidden
    choice of an unmasked policy is overridden by the engine to the nearest allowed level), or one
    :class:`Schedule`, which takes the allowed level nearest to its target at the decision row.

    Portfolios that share one policy object are decided in one call, their rows in the order
    given (a trained network over several portfolios, or a population of policies acting row by
    row): one call per distinct policy per bar, never one per portfolio. Observations are gathered
    only when some portfolio follows a policy.
    """
    buf = np.empty((len(policies), obs_dim), dtype=np.float32)
    groups: dict[int, list[int]] = {}
    for i, (policy, _) in enumerate(policies):
        groups.setdefault(id(policy), []).append(i)
    calls: list[tuple[Policy, slice | np.ndarray]] = []
    scheduled: list[tuple[np.ndarray, int]] = []  # (targets, portfolio): a rule is one or a few portfolios
    for rows in groups.values():
        policy = policies[rows[0]][0]
        if isinstance(policy, Schedule):
            scheduled += [(policy.targets, r) for r in rows]
        else:
            calls.append((policy, _rows(rows)))
    actions = np.zeros(len(policies), dtype=int)

    def decide(engine: Engine, mask: np.ndarray) -> np.ndarray:
        if calls:
            obs = engine.observe(buf)
            for policy, rows in calls:
                actions[rows] = np.asarray(policy(obs[rows], mask[rows]), dtype=int).reshape(-1)
        for targets, r in scheduled:  # scalars: cheaper than arrays for one portfolio, and a target is mostly allowed
            target = targets[engine.t[r]]
            actions[r] = target if mask[r, target] else engine.nearest_allowed(mask[r: r + 1], targets[engine.t[r: r + 1]])[0]
        return actions
    return decide


FIXED = ("flat", "buy_hold_long", "buy_hold_underlying")  # the fixed-action baselines, in baseline_paths' action order


def baseline_paths(market: Market, cfg: Config, first: int, last: int) -> dict[str, StrategyPath]:
    """The fixed-action baselines as three portfolios of one engine over a market of two legs (the
    long leg, the underlying): flat, all equity in the long leg, all equity in the underlying,
    bought at the first open and held, with the shared costs and no masks."""
    legs = [market.legs[0], market.underlying]
    held = dataclasses.replace(market, features=np.zeros((market.n_rows, 0), dtype=np.float32), feature_names=[],
                               levels=np.array([0.0, 1.0, 1.0]), weights=np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
                               legs=legs, _risk={})
    bare = cfg.model_copy(update={"masks": cfg.masks.model_copy(update={"rules": []})})
    fixed = np.arange(len(FIXED))
    paths = run_engine(Engine(held, bare, len(FIXED)), first, last, lambda e, m: fixed, market.timestamps)
    for name, path in zip(FIXED, paths):
        path.name = name
        path.constrained = dict.fromkeys(cfg.masks.rules, 0)  # baselines read no masks
    return dict(zip(FIXED, paths))


def trend_vol_schedule(market: Market, cfg: Config) -> Schedule:
    """The rule-based baseline's targets over every row of the market (:func:`baselines.trend_vol_actions`)."""
    return Schedule(baselines.trend_vol_actions(market, cfg.baseline))


def backtest_fold(market: Market, cfg: Config, test_rows: tuple[int, int],
                  policies: dict[str, tuple[Policy, bool]]) -> dict[str, StrategyPath]:
    """Every policy and the baselines over the test rows ``[c, d)``: decisions from the close of
    ``c - 1``, P&L on bars ``c .. d - 1``. Keyed by name: the policies in the order given, then
    :data:`baselines.NAMES`. The rule (``trend_vol``) is one more portfolio of the policies'
    engine, under their masks and costs; the fixed-action baselines run in :func:`baseline_paths`.

    :raises ValueError: when a policy is named like a baseline.
    """
    taken = sorted(set(policies) & set(baselines.NAMES))
    if taken:
        raise ValueError(f"policies named {taken} would hide the baselines of the same names; rename them")
    first, last = test_rows[0] - 1, test_rows[1] - 1
    rule = trend_vol_schedule(market, cfg)
    runners: dict[str, tuple[Policy | Schedule, bool]] = {**policies, baselines.TREND_VOL: (rule, True)}
    engine = Engine(market, cfg, len(runners))
    decide = policy_decisions(list(runners.values()), engine.obs_dim)
    out = dict(zip(runners, run_engine(engine, first, last, decide, market.timestamps)))
    out.update(baseline_paths(market, cfg, first, last))
    for name, path in out.items():
        path.name = name
    return {name: out[name] for name in (*policies, *baselines.NAMES)}


def reference_path(market: Market, cfg: Config, test_rows: tuple[int, int], policy: Policy | Schedule,
                   masked: bool) -> StrategyPath:
    """The slow reference: the gymnasium environment stepped one action at a time (a
    :class:`Schedule` takes the allowed level nearest to its target, :func:`masks.nearest_allowed`)."""
    first, last = test_rows[0] - 1, test_rows[1] - 1
    env = TradingEnv(market, cfg, first, last)
    obs, _ = env.reset(seed=0)
    equity, costs, levels, peaks = [env.book.equity], [], [], [env.book.peak]
    done = False
    while not done:
        mask = env.action_masks()
        if isinstance(policy, Schedule):
            action = nearest_allowed(market.levels, mask, int(policy.targets[env.t]))
        else:
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


@reads("universe", "env", "masks", "costs", "baseline")
def fold_backtest(cfg: Config, market: Market, span: FoldSpan,
                  policies: dict[str, tuple[Policy, bool]]) -> dict[str, StrategyPath]:
    """Policies and baselines over the fold's test rows (see :func:`backtest_fold`). A
    combinatorial split's test groups are backtested one by one, each from flat at the close
    before it, and chained (:func:`chain`)."""
    parts = [backtest_fold(market, cfg, rows, policies) for rows in span.testing_ranges]
    return parts[0] if len(parts) == 1 else {name: chain([p[name] for p in parts]) for name in parts[0]}


def chain(paths: Sequence[StrategyPath]) -> StrategyPath:
    """Backtests of separate windows as one path: each later window's equity (and costs, peak and
    shares) scaled to start where the one before ended, its decision bar dropped, so the path's bar
    returns are the windows' bar returns in order; counts are summed."""
    out = paths[0]
    for p in paths[1:]:
        scale = out.equity[-1] / p.equity[0]
        shift = len(out.timestamps) - 1
        fills = out.fills
        if p.fills is not None:
            moved = Fills(p.fills.bar + shift, p.fills.symbol, p.fills.shares * scale, p.fills.price)
            fills = moved if fills is None else Fills(*(np.concatenate([getattr(fills, f), getattr(moved, f)])
                                                        for f in ("bar", "symbol", "shares", "price")))
        peak = None
        if out.rule_peak is not None and p.rule_peak is not None:
            peak = np.concatenate([out.rule_peak, p.rule_peak[1:] * scale])
        out = StrategyPath(
            out.name, [*out.timestamps, *p.timestamps[1:]], np.concatenate([out.equity, p.equity[1:] * scale]),
            np.concatenate([out.exposure, p.exposure]), np.concatenate([out.turnover, p.turnover]),
            np.concatenate([out.costs, p.costs * scale]), np.concatenate([out.levels, p.levels]),
            out.overrides + p.overrides, fills, out.forced_bars + p.forced_bars, out.forced_flat + p.forced_flat,
            {k: out.constrained.get(k, 0) + p.constrained.get(k, 0) for k in {**out.constrained, **p.constrained}}, peak)
    return out


@reads("regimes", "seed")
def fold_metrics(cfg: Config, market: Market, span: FoldSpan, paths: dict[str, StrategyPath],
                 learned: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each path's out-of-sample metrics; the ``learned`` policies also get their probabilistic
    Sharpe ratio and bootstrap interval (:func:`metrics.sharpe_uncertainty`, seeded by the fold),
    and the named strategies (the learned ones and the baselines, not each seed) their results by
    the filtered regime in force at each decision (:func:`metrics.regime_slices`)."""
    decisions = np.concatenate([np.arange(c - 1, d - 1) for c, d in span.testing_ranges])  # the row before each bar
    out = {}
    for name, p in paths.items():
        m = p.metrics(market.periods_per_year)
        if name in learned:
            m |= sharpe_uncertainty(p.equity, market.periods_per_year, seed=cfg.seed + 1000 * span.fold)
        if market.regime is not None and (name in learned or name in baselines.NAMES):
            m |= regime_slices(p.equity, market.regime[decisions], cfg.regimes.n_regimes, market.periods_per_year)
        out[name] = m
    return out


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
    schema = {"strategy": pl.String, "timestamp": pl.String, "symbol": pl.String, "shares": pl.Float64, "price": pl.Float64}
    parts = [pl.DataFrame({"strategy": [name] * len(p.fills.bar), "timestamp": [p.timestamps[b] for b in p.fills.bar.tolist()],
                           "symbol": p.fills.symbol.tolist(), "shares": p.fills.shares, "price": p.fills.price}, schema=schema)
             for name, p in paths.items() if p.fills is not None]
    return pl.concat(parts) if parts else pl.DataFrame(schema=schema)

