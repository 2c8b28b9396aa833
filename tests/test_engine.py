"""The vectorised engine against the reference environment, step by step.

N portfolios run through the engine at once; each runs through its own reference
:class:`TradingEnv` too, with the same random actions (forbidden ones included, so overrides are
exercised) across episode resets. Masks, rewards, equity, costs, levels, observations, overrides
and the per-rule counts agree at every step.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentio_core.engine import Engine
from sentio_core.env import TradingEnv, mask_state
from sentio_core.masks import removed_by, rule_masks

from .fixtures_market import random_walk_market, real_fold, synthetic_cfg, with_cfg

ALL_RULES = {"rules": ["stale", "drawdown", "exposure_cap", "vol_target", "regime", "session", "liquidity", "min_hold"],
             "drawdown_limit": 0.12, "drawdown_cooldown_bars": 3, "gap_sigmas": 3.0, "max_abs_exposure": 0.75,
             "vol_target_ann": 0.45, "regime_high_vol_prob": 0.5, "min_hold_bars": 2, "max_participation": 0.03,
             "session_close_minutes": 20.0}
FINE = "env.exposure_levels=[-1.0,-0.75,-0.5,-0.25,0.0,0.25,0.5,0.75,1.0]"


def _sessions(n: int) -> np.ndarray:
    """Minutes to the close of 5-minute bars: full sessions (78 bars, 390 minutes) and, every third
    day, an early close (42 bars, 13:00), as on the half days before holidays."""
    days, k = [], 0
    while sum(map(len, days)) < n:
        bars = 42 if k % 3 == 2 else 78
        days.append(np.arange(bars * 5, 0, -5, dtype=float) - 5.0)  # 0 at the last bar of the day
        k += 1
    return np.concatenate(days)[:n]


def _toy_intraday():
    """A toy pair with what real data rarely shows together: zero-volume fill bars, stale bars,
    session ends and early closes (minutes to close) and thin liquidity."""
    n = 260
    base = random_walk_market(n, seed=11)
    rng = np.random.default_rng(5)
    dead = rng.random(n) < 0.06
    legs = []
    for leg in base.legs:
        dv = np.where(dead, 0.0, leg.dollar_volume)
        legs.append(dataclasses.replace(leg, dollar_volume=dv, mean_dollar_volume=np.full(n, 2e6)))
    minutes = _sessions(n)
    return dataclasses.replace(base, legs=legs, stale=rng.random(n) < 0.05, minutes_to_close=minutes,
                               high_vol_prob=rng.random(n))


@functools.lru_cache(maxsize=None)
def case(name: str):
    """(market, cfg) of a named case; every mask rule is on."""
    if name == "toy_intraday":
        return _toy_intraday(), synthetic_cfg(masks=ALL_RULES)
    overrides = {"pair": (FINE,), "single": ("universe.short=null",),
                 "allow_short": ("universe.short=null", "universe.allow_short=true"),
                 "synthesized": ("universe.synthesize=true", "universe.long=null", "universe.short=null")}[name]
    f = real_fold(overrides)
    return f.market, with_cfg(f.cfg, masks=ALL_RULES)


CASES = ["pair", "single", "allow_short", "synthesized", "toy_intraday"]


def _episode(rng, first: int, last: int) -> tuple[int, int]:
    start = int(rng.integers(first, last - 5))
    return start, int(min(last, start + rng.integers(5, 40)))


def drive(market, cfg, n: int, steps: int, seed: int, lockstep: bool = False) -> None:
    """``lockstep``: every portfolio starts on one row (0, where the window is padded, or another),
    as in a backtest, until its first episode ends."""
    rng = np.random.default_rng(seed)
    first, last = cfg.env.lookback_bars, market.n_rows - 1
    if lockstep:
        start = int(rng.choice([0, int(rng.integers(first, last - 40))]))
        episodes = [(start, start + 40)] * n
    else:
        episodes = [_episode(rng, first, last) for _ in range(n)]
    engine = Engine(market, cfg, n)
    engine.reset_all(np.array([s for s, _ in episodes]), np.array([e for _, e in episodes]))
    envs = []
    for start, end in episodes:
        env = TradingEnv(market, cfg, start, end)
        env.reset(seed=0)
        envs.append(env)
    n_actions = len(market.levels)
    for _ in range(steps):
        obs = engine.observe()
        by = np.empty((n, len(market.levels)), dtype=int)
        masks, _ = engine.masks(by)
        for i, env in enumerate(envs):
            np.testing.assert_array_equal(obs[i], env._obs())
            np.testing.assert_array_equal(masks[i], env.action_masks())
            # the rule each forbidden action was forbidden by (what a live decision reports)
            state = mask_state(market, env.t, env.book, cfg.masks)
            np.testing.assert_array_equal(by[i], removed_by(list(rule_masks(market.levels, state, cfg.masks).values())))
        actions = rng.integers(0, n_actions, n)
        reward, costs, term, trunc = engine.step(actions)
        for i, env in enumerate(envs):
            _, r, te, tr, info = env.step(int(actions[i]))
            b = env.book
            np.testing.assert_allclose(reward[i], r, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(costs[i], info["costs"], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose([engine.equity[i], engine.cash[i], engine.peak[i]], [b.equity, b.cash, b.peak],
                                       rtol=1e-9)
            np.testing.assert_allclose(engine.shares[i], b.shares, rtol=1e-9)
            assert (engine.level[i], engine.held[i], engine.cooldown[i], engine.t[i]) == (b.level, b.bars_held, b.cooldown, env.t)
            assert (engine.overrides[i], engine.forced_bars[i], engine.forced_flat[i]) == (b.overrides, b.forced_bars,
                                                                                        b.forced_flat)
            assert engine.constrained[i].tolist() == b.constrained.tolist()
            assert (bool(term[i]), bool(trunc[i])) == (te, tr)
        done = np.flatnonzero(term | trunc)
        for i in done:  # a new episode for this portfolio, in both
            start, end = _episode(rng, first, last)
            engine.reset(np.array([i]), np.array([start]), np.array([end]))
            envs[i] = TradingEnv(market, cfg, start, end)
            envs[i].reset(seed=0)


@pytest.mark.parametrize("name", CASES)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), lockstep=st.booleans())
def test_engine_equals_the_reference_environment(name, seed, lockstep):
    market, cfg = case(name)
    drive(market, cfg, n=6, steps=60, seed=seed, lockstep=lockstep)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), lockstep=st.booleans())
def test_engine_equals_the_reference_environment_at_scale(name, seed, lockstep):
    """More portfolios, longer runs, many more resets."""
    market, cfg = case(name)
    drive(market, cfg, n=16, steps=100, seed=seed, lockstep=lockstep)


def test_the_cases_exercise_every_path():
    """Non-vacuous: over the cases, portfolios are overridden, stopped out, forced flat, refused a
    fill on a zero-volume bar and constrained by every rule."""
    seen = np.zeros(len(ALL_RULES["rules"]), dtype=int)
    stops = forced = overrides = 0
    for name in CASES:
        market, cfg = case(name)
        rng = np.random.default_rng(3)
        engine = Engine(market, cfg, 16)
        first, last = cfg.env.lookback_bars, market.n_rows - 1
        engine.reset_all(rng.integers(first, last - 80, 16), np.full(16, last))
        for _ in range(60):
            engine.step(rng.integers(0, len(market.levels), 16))
            stops += int((engine.cooldown == cfg.masks.drawdown_cooldown_bars).sum())
        seen += engine.constrained.sum(axis=0)
        forced += int(engine.forced_flat.sum())
        overrides += int(engine.overrides.sum())
    assert stops > 0 and forced > 0 and overrides > 0
    assert (seen > 0).all(), dict(zip(ALL_RULES["rules"], seen.tolist()))
    market, _ = case("toy_intraday")
    assert (np.stack([leg.dollar_volume for leg in market.legs]) <= 0).any()
    closes = np.flatnonzero(market.minutes_to_close == 0)
    assert 42 in np.diff(closes) and 78 in np.diff(closes)  # an early close and a full session


def test_whole_array_composition_equals_rule_by_rule():
    """``Engine._compose_all`` (a running AND per rule in one stack) gives the rule-by-rule
    composition's mask, counts and reasons whenever no rule yields, and declines (None) exactly
    when some portfolio would be left nothing; both cases occur among the draws."""
    market, cfg = case("pair")
    rng = np.random.default_rng(5)
    a, outcomes = len(market.levels), {"composed": 0, "declined": 0}
    for _ in range(300):
        n = int(rng.integers(1, 6))
        engine = Engine(market, cfg, n)
        masks = []
        for _ in engine.rules:
            kind = rng.integers(0, 3)
            masks.append(None if kind == 0 else rng.random((n, a) if kind == 1 else (a,)) < rng.uniform(0.3, 1.0))
        fast_by, slow_by = np.full((n, a), 7), np.full((n, a), -1)  # masks() starts the reasons at -1
        fast, slow = engine._compose_all(masks, fast_by), engine._compose(masks, slow_by)
        running = np.ones((n, a), dtype=bool)
        for mask in masks:
            running = running if mask is None else running & mask
        if fast is None:
            assert not running.any(axis=1).all()
            outcomes["declined"] += 1
        else:
            assert running.any(axis=1).all()
            np.testing.assert_array_equal(fast[0], slow[0])
            np.testing.assert_array_equal(fast[1], slow[1])
            np.testing.assert_array_equal(fast_by, slow_by)
            outcomes["composed"] += 1
    assert min(outcomes.values()) > 20, outcomes
    by = np.full((2, a), 7)  # no rule active: every action allowed, no reason left behind
    mask, removed = Engine(market, cfg, 2)._compose_all([None] * len(cfg.masks.rules), by)
    assert mask.all() and not removed.any() and (by == -1).all()


def test_observations_are_gathered_into_the_buffer_given():
    market, cfg = case("pair")
    engine = Engine(market, cfg, 3)
    engine.reset_all(np.array([0, 5, 100]), np.array([50, 50, 150]))  # row 0 and 5: windows padded with zeros
    buf = np.full((3, engine.obs_dim), np.nan, dtype=np.float32)
    out = engine.observe(buf)
    assert out is buf and np.isfinite(buf).all()
    for i in range(3):
        env = TradingEnv(market, cfg, int(engine.t[i]), int(engine.end[i]))
        env.reset(seed=0)
        np.testing.assert_array_equal(buf[i], env._obs())
