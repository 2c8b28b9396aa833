"""The leveraged-pair trading environment (gymnasium).

Timing: the agent decides after the close of bar ``t``; the order (a number of shares per leg,
sized with the equity and prices at that close) fills at the open of bar ``t + 1``, paying the
costs of :mod:`sentio_core.costs`; equity is marked at the close of ``t + 1``. So

    equity[t+1] - equity[t] = old shares x (open[t+1] - close[t]) + new shares x (close[t+1] - open[t+1]) - costs

and the reward is ``log(equity[t+1] / equity[t]) - drawdown_penalty x max(0, dd[t+1] - dd[t])``.
Choosing the level already held keeps the shares (no rebalancing of drift). An order whose fill
bar has no volume does not fill (the position is kept).

An action the mask forbids is moved to the nearest allowed level and counted in ``overrides``
(this is how the unmasked PPO baseline meets the same risk rules); MaskablePPO reads the mask
from :meth:`TradingEnv.action_masks` and never triggers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from sentio_core.config import Config, MaskConfig
from sentio_core.costs import trade_costs
from sentio_core.market import Market
from sentio_core.masks import MaskState, advance_peak, counted_mask, nearest_allowed, stop_out

N_STATE = 4  # exposure, drawdown, time in position, current level


@dataclass(frozen=True)
class ObservationLayout:
    """How a flat observation is laid out: ``lookback`` bars of ``n_features`` values, then ``n_state``
    portfolio values.

    The window holds feature rows ``t - lookback + 1 .. t`` (oldest first) of the decision at the
    close of ``t``, row-major, so one bar's features are contiguous: ``obs[k * n_features + j]`` is
    feature ``j`` of row ``t - lookback + 1 + k`` (zeros before the first row), and
    ``obs[lookback * n_features + i]`` is state value ``i`` (exposure, drawdown, time in position,
    current level). The observation stays flat for stable-baselines3's Box space; :meth:`split`
    gives a sequence model its tokens, one per bar.
    """

    lookback: int
    n_features: int
    n_state: int = N_STATE

    @classmethod
    def of(cls, market: Market, cfg: Config) -> ObservationLayout:
        """The layout of a fold's observations: ``env.lookback_bars`` rows of the market's feature columns."""
        return cls(lookback=cfg.env.lookback_bars, n_features=market.features.shape[1])

    @property
    def window_size(self) -> int:
        """Values of the feature window: ``lookback * n_features``."""
        return self.lookback * self.n_features

    @property
    def obs_dim(self) -> int:
        """Length of the flat observation: ``lookback * n_features + n_state``."""
        return self.window_size + self.n_state

    def split(self, obs):
        """The window and the state of observations ``obs`` (..., obs_dim), numpy or torch.

        :returns: ``(window (..., lookback, n_features), state (..., n_state))``: views of ``obs``
            when its last axis is contiguous (what the env, the engine and a rollout buffer give).
        :raises ValueError: when the last axis is not ``obs_dim`` long.
        """
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"observations have {obs.shape[-1]} values, the layout {self.obs_dim} "
                             f"({self.lookback} bars x {self.n_features} features + {self.n_state} state)")
        lead = tuple(obs.shape[:-1])
        window = obs[..., : self.window_size].reshape(lead + (self.lookback, self.n_features))
        return window, obs[..., self.window_size:]


@dataclass
class Book:
    """Holdings and history of one portfolio at the close of the current bar."""

    cash: float
    shares: np.ndarray  # (L,)
    level: int
    peak: float
    equity: float
    bars_held: int = 0
    overrides: int = 0
    cooldown: int = 0  # bars of a stop-out's cool-down still to run
    forced_bars: int = 0  # decisions the masks left a single action
    forced_flat: int = 0  # of those, decisions whose single action was flat
    constrained: np.ndarray | None = None  # (R,) decisions each mask rule constrained (masks.rules order)
    trades: list = field(default_factory=list)

    @property
    def drawdown(self) -> float:
        return 1.0 - self.equity / self.peak if self.peak > 0 else 0.0


def new_book(market: Market, equity: float) -> Book:
    flat = int(np.flatnonzero(market.levels == 0)[0])
    return Book(cash=equity, shares=np.zeros(len(market.legs)), level=flat, peak=equity, equity=equity)


def exposure(market: Market, t: int, shares: np.ndarray, equity: float) -> float:
    """Net exposure to the direction of the underlying, fraction of equity, at the close of ``t``."""
    value = sum(leg.direction * n * leg.close[t] for leg, n in zip(market.legs, shares))
    return float(value / equity) if equity > 0 else 0.0


def target_shares(market: Market, t: int, action: int, equity: float) -> np.ndarray:
    """Shares per leg for ``action``, sized with the equity and closes of bar ``t``."""
    closes = np.array([leg.close[t] for leg in market.legs])
    return market.weights[action] * equity / closes


def observation(market: Market, t: int, lookback: int, book: Book) -> np.ndarray:
    """Flattened features of rows ``t - lookback + 1 .. t`` then the portfolio state (float32), laid
    out as :class:`ObservationLayout` says."""
    lo = t - lookback + 1
    window = market.features[max(lo, 0): t + 1]
    if lo < 0:
        window = np.concatenate([np.zeros((-lo, market.features.shape[1]), dtype=np.float32), window])
    state = np.array([
        exposure(market, t, book.shares, book.equity),
        book.drawdown,
        book.bars_held / (book.bars_held + 20.0),
        market.levels[book.level],
    ], dtype=np.float32)
    return np.concatenate([window.ravel(), state])


def mask_state(market: Market, t: int, book: Book, masks: MaskConfig) -> MaskState:
    """The state the mask rules read at the decision after the close of ``t``."""
    participation = np.zeros(len(market.levels))
    for a in range(len(market.levels)):
        if a == book.level:
            continue
        delta = np.abs(target_shares(market, t, a, book.equity) - book.shares)
        per_leg = [d * leg.close[t] / max(leg.mean_dollar_volume[t], 1e-9) for d, leg in zip(delta, market.legs)]
        participation[a] = max(per_leg)
    mtc = None if market.minutes_to_close is None else float(market.minutes_to_close[t])
    return MaskState(
        current=book.level, drawdown=book.drawdown, bars_held=book.bars_held, leg_vol_ann=market.leg_vol_ann(t),
        high_vol_prob=float(market.high_vol_prob[t]), minutes_to_close=mtc,
        trade_participation=participation, stale=bool(market.stale[t]),
        cooldown=book.cooldown, level_risk=market.level_risk(t, masks),
    )


def arm_stop(market: Market, t: int, book: Book, masks: MaskConfig) -> None:
    """Before the decision after the close of ``t``: start the cool-down when the drawdown budget
    fits no level but flat (:func:`sentio_core.masks.stop_out`). Idempotent for a given state."""
    if book.cooldown == 0 and "drawdown" in masks.rules and stop_out(
            market.levels, book.drawdown, masks.drawdown_limit, market.level_risk(t, masks)):
        book.cooldown = masks.drawdown_cooldown_bars


def drawdown_limit(masks: MaskConfig) -> float | None:
    """The limit that stops a policy out, or None when the drawdown rule is off."""
    return masks.drawdown_limit if "drawdown" in masks.rules else None


class TradingEnv(gym.Env):
    """Target-exposure trading over decision rows ``[first, last)`` of a :class:`Market`.

    :param market: the fold's arrays.
    :param cfg: run config (env, masks and costs sections are read).
    :param first: first decision row (its P&L bar is ``first + 1``).
    :param last: last P&L row; decisions run up to ``last - 1``.
    :param episode_bars: decisions per episode, starting at a random row (training); None runs
        the whole window from ``first`` (evaluation).
    """

    metadata = {"render_modes": []}

    def __init__(self, market: Market, cfg: Config, first: int, last: int, episode_bars: int | None = None):
        super().__init__()
        if not 0 <= first < last <= market.n_rows - 1:
            raise ValueError(f"decision window [{first}, {last}) does not fit {market.n_rows} rows")
        self.market, self.cfg = market, cfg
        self.first, self.last = first, last
        self.episode_bars = episode_bars if episode_bars is not None and episode_bars < last - first else None
        self.lookback = cfg.env.lookback_bars
        self.layout = ObservationLayout.of(market, cfg)
        bound = max(cfg.env.clip_obs, 10.0)  # features are clipped; exposure and state stay well inside
        self.observation_space = gym.spaces.Box(-bound, bound, shape=(self.layout.obs_dim,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(len(market.levels))
        self.book = new_book(market, cfg.env.initial_equity_usd)
        self.t = first
        self.end = last

    # --- gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self.episode_bars is None:
            self.t, self.end = self.first, self.last
        else:
            self.t = int(self.np_random.integers(self.first, self.last - self.episode_bars + 1))
            self.end = self.t + self.episode_bars
        self.book = new_book(self.market, self.cfg.env.initial_equity_usd)
        return self._obs(), self._info(0.0)

    def action_masks(self) -> np.ndarray:
        """(A,) bool: the composed mask for the decision after the close of the current bar."""
        return self._counted_masks()[0]

    def _counted_masks(self) -> tuple[np.ndarray, np.ndarray]:
        arm_stop(self.market, self.t, self.book, self.cfg.masks)
        return counted_mask(self.market.levels, mask_state(self.market, self.t, self.book, self.cfg.masks), self.cfg.masks)

    def step(self, action):
        action = int(action)
        mask, removed = self._counted_masks()
        forced = bool(mask.sum() == 1)
        self.book.forced_bars += forced
        self.book.forced_flat += forced and self.market.levels[mask][0] == 0
        self.book.constrained = (removed > 0).astype(int) + (0 if self.book.constrained is None else self.book.constrained)
        if not mask[action]:
            action = nearest_allowed(self.market.levels, mask, action)
            self.book.overrides += 1
        before = self.book.equity
        dd_before = self.book.drawdown
        costs = self._settle(action)
        self.t += 1
        reward = float(np.log(self.book.equity / before)) - self.cfg.env.drawdown_penalty * max(0.0, self.book.drawdown - dd_before)
        terminated = self.book.equity <= 0
        truncated = self.t >= self.end and not terminated
        return self._obs(), reward, bool(terminated), bool(truncated), self._info(costs)

    # --- accounting ----------------------------------------------------------------------
    def _settle(self, action: int) -> float:
        """Fill at the open of ``t + 1``, mark at its close; returns the costs paid (dollars)."""
        m, b, t = self.market, self.book, self.t
        new = b.shares.copy() if action == b.level else target_shares(m, t, action, b.equity)
        if any(d != 0 and leg.dollar_volume[t + 1] <= 0 for leg, d in zip(m.legs, new - b.shares)):
            new, action = b.shares.copy(), b.level  # nothing trades in the fill bar: the order does not fill
        delta = new - b.shares
        cost = 0.0
        for leg, d in zip(m.legs, delta):
            if d != 0:
                c = trade_costs(self.cfg.costs, leg.symbol, d, leg.open[t + 1], leg.dollar_volume[t + 1], leg.sigma[t])
                cost += float(c.total)
                b.trades.append((t + 1, leg.symbol, float(d), float(leg.open[t + 1]), float(c.total)))
        b.cash -= float(sum(d * leg.open[t + 1] for leg, d in zip(m.legs, delta))) + cost
        b.shares = new
        b.bars_held = b.bars_held + 1 if action == b.level else 1
        b.level = action
        b.equity = b.cash + float(sum(n * leg.close[t + 1] for leg, n in zip(m.legs, new)))
        peak, cooldown = advance_peak(b.peak, b.equity, b.cooldown, drawdown_limit(self.cfg.masks),
                                      self.cfg.masks.drawdown_cooldown_bars)
        b.peak, b.cooldown = float(peak), int(cooldown)
        return cost

    def _obs(self) -> np.ndarray:
        return observation(self.market, min(self.t, self.market.n_rows - 1), self.lookback, self.book)

    def _info(self, costs: float) -> dict:
        return {"equity": self.book.equity, "costs": costs, "level": float(self.market.levels[self.book.level]),
                "overrides": self.book.overrides, "drawdown": self.book.drawdown, "t": self.t,
                "forced_bars": self.book.forced_bars, "forced_flat": self.book.forced_flat, "cooldown": self.book.cooldown}
