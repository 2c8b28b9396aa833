"""The trading environment: API checkers, accounting identity at every step, costs, timing
(no look-ahead, fill at the next open), reward, overrides, one side at a time, single-instrument
universes. Golden numbers on a hand-made market; invariants on the real smoke fold."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

import sentio_core.env as env_module
from sentio_core.backtest import backtest_fold, reference_path
from sentio_core.costs import TradeCosts, trade_costs
from sentio_core.env import N_STATE, ObservationLayout, TradingEnv
from sentio_core.market import Market, action_weights
from sentio_core.masks import nearest_allowed
from tests.fixtures_market import leg, real_fold, single_blas_thread, smoke_cfg, synthetic_cfg, toy_market, with_cfg

SHORT_NULL = ("universe.short=null",)
ALLOW_SHORT = ("universe.short=null", "universe.allow_short=true")
SYNTH = ("universe.synthesize=true", "universe.long=null", "universe.short=null")


@pytest.fixture(scope="module")
def fold():
    return real_fold()


def train_env(fold, cfg=None, episode_bars=50) -> TradingEnv:
    a, b = fold.train_rows
    return TradingEnv(fold.market, cfg or fold.cfg, a, b, episode_bars=episode_bars)


def eval_env(fold, cfg=None) -> TradingEnv:
    """The whole test window, from the close of the bar before it (as the backtest runs it)."""
    c, d = fold.test_rows
    return TradingEnv(fold.market, cfg or fold.cfg, c - 1, d - 1)


def step_checked(env: TradingEnv, action: int):
    """One step, with the accounting identity and the observation checked."""
    m, t = env.market, env.t
    before_shares, before_equity = env.book.shares.copy(), env.book.equity
    obs, reward, term, trunc, info = env.step(action)
    after = env.book.shares
    pnl = sum(o * (lg.open[t + 1] - lg.close[t]) + n * (lg.close[t + 1] - lg.open[t + 1])
              for lg, o, n in zip(m.legs, before_shares, after))
    assert info["equity"] - before_equity == pytest.approx(pnl - info["costs"], rel=1e-6, abs=1e-6)
    assert info["equity"] == env.book.equity and info["t"] == t + 1 == env.t
    assert info["costs"] >= 0
    assert obs.shape == env.observation_space.shape and obs.dtype == np.float32
    assert env.observation_space.contains(obs), f"observation outside its space at t={t + 1}"
    return obs, reward, term, trunc, info, before_shares, before_equity


def run_random(env: TradingEnv, seed: int, bias=None):
    """Random actions until the episode ends; returns per-step records."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    out, done = [], False
    while not done:
        n = env.action_space.n
        a = int(rng.choice(n, p=bias)) if bias is not None else int(rng.integers(n))
        mask = env.action_masks()
        level_before, overrides_before, shares_before = env.book.level, env.book.overrides, env.book.shares.copy()
        obs, reward, term, trunc, info, _, eq_before = step_checked(env, a)
        out.append(dict(action=a, mask=mask, level_before=level_before, overrides_before=overrides_before,
                        shares_before=shares_before, shares=env.book.shares.copy(), info=info, reward=reward,
                        equity_before=eq_before))
        done = term or trunc
    return out


# --------------------------------------------------------------------------- API checkers

def test_gymnasium_env_checker(fold):
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(train_env(fold), skip_render_check=True)
    bad = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert not bad, bad  # e.g. "obs is not within the observation space", wrong dtype or precision


def test_sb3_env_checker(fold):
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(train_env(fold), warn=True)
    bad = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert not bad, bad


def test_reset_is_seeded_and_episodes_stay_in_the_training_window(fold):
    env = train_env(fold)
    a, b = fold.train_rows
    starts = set()
    for seed in range(20):
        obs1, _ = env.reset(seed=seed)
        t1 = env.t
        obs2, _ = env.reset(seed=seed)
        assert env.t == t1 and np.array_equal(obs1, obs2)
        assert a <= env.t and env.end == env.t + 50 <= b
        starts.add(env.t)
    assert len(starts) > 10


# --------------------------------------------------------------------------- accounting

@pytest.mark.parametrize("seed", [0, 1])
def test_accounting_identity_every_step_training_episode(fold, seed):
    recs = run_random(train_env(fold), seed)
    assert len(recs) == 50
    assert any(r["info"]["costs"] > 0 for r in recs)


def test_accounting_identity_every_step_whole_test_window(fold):
    env = eval_env(fold)
    recs = run_random(env, 3)
    c, d = fold.test_rows
    assert len(recs) == d - c and env.t == d - 1


def test_never_both_legs_and_holding_keeps_shares(fold):
    cfg = with_cfg(fold.cfg, masks={"rules": ["exposure_cap"], "max_abs_exposure": 1.0})
    held = 0
    for seed in range(3):
        # sticky random actions: half the time repeat the level held
        env = train_env(fold, cfg)
        rng = np.random.default_rng(seed)
        env.reset(seed=seed)
        done = False
        while not done:
            a = env.book.level if rng.random() < 0.5 else int(rng.integers(env.action_space.n))
            level_before, shares_before, trades_before = env.book.level, env.book.shares.copy(), len(env.book.trades)
            *_, term, trunc, info, _, _ = step_checked(env, a)
            sh = env.book.shares
            assert not (sh[0] != 0 and sh[1] != 0), f"both legs held: {sh}"
            if a == level_before:
                held += 1
                np.testing.assert_array_equal(sh, shares_before)
                assert info["costs"] == 0.0 and len(env.book.trades) == trades_before
            done = term or trunc
    assert held > 20


def test_costs_come_from_trade_costs(fold, monkeypatch):
    calls = []

    def fake(cfg, symbol, shares, price, dollar_volume, sigma):
        calls.append((symbol, shares, price))
        return TradeCosts(np.asarray(7.0), np.asarray(0.25), np.asarray(0.0))

    monkeypatch.setattr(env_module, "trade_costs", fake)
    env = train_env(fold, with_cfg(fold.cfg, masks={"rules": []}))
    env.reset(seed=5)
    for a in [4, 4, 0, 2, 3, 1]:
        n0 = len(calls)
        *_, info, _, _ = step_checked(env, a)
        traded = len(calls) - n0
        assert info["costs"] == pytest.approx(7.25 * traded)
    assert len(calls) == 1 + 0 + 2 + 1 + 1 + 2  # buy; hold; switch sides; flat; buy; switch sides


def test_higher_costs_never_give_higher_equity(fold):
    cfg = with_cfg(fold.cfg, masks={"rules": []})
    c = cfg.costs
    dear = with_cfg(cfg, costs={
        "commission_per_share_usd": 2 * c.commission_per_share_usd, "commission_min_usd": 2 * c.commission_min_usd,
        "commission_bps": 2 * c.commission_bps + 1.0, "impact_coef": 2 * c.impact_coef,
        "half_spread_bps": {k: 2 * v for k, v in c.half_spread_bps.items()}})
    free = with_cfg(cfg, costs={"commission_per_share_usd": 0.0, "commission_min_usd": 0.0, "commission_bps": 0.0,
                                "impact_coef": 0.0, "half_spread_bps": {"default": 0.0}})
    for seed in range(3):
        runs = [run_random(train_env(fold, cc), seed) for cc in (free, cfg, dear)]
        levels = [[r["info"]["level"] for r in recs] for recs in runs]
        assert levels[0] == levels[1] == levels[2]  # same actions and no mask: same positions
        paths = [np.array([r["info"]["equity"] for r in recs]) for recs in runs]
        free_eq, base_eq, dear_eq = paths
        assert np.all(base_eq <= free_eq + 1e-9) and np.all(dear_eq <= base_eq + 1e-9)
        assert dear_eq[-1] < base_eq[-1] < free_eq[-1]


def test_costs_of_a_known_trade_match_a_direct_call(fold):
    cfg = with_cfg(fold.cfg, masks={"rules": []})
    env = train_env(fold, cfg)
    env.reset(seed=11)
    t, eq = env.t, env.book.equity
    *_, info, _, _ = step_checked(env, 4)  # flat -> +1 in TQQQ
    m = fold.market
    lg = m.legs[0]
    shares = eq / lg.close[t]
    direct = trade_costs(cfg.costs, "TQQQ", shares, lg.open[t + 1], lg.dollar_volume[t + 1], lg.sigma[t])
    assert info["costs"] == pytest.approx(float(direct.total), rel=1e-12)
    assert env.book.shares[0] == pytest.approx(shares) and env.book.shares[1] == 0


# --------------------------------------------------------------------------- golden fill on a toy market

def golden_market():
    tqqq = leg("TQQQ", open_=[50, 51, 50, 49], close=[50, 52, 49, 49.5],
               dollar_volume=[1e10, 1.02e7, 1e10, 1e10], sigma=[0.02, 0.04, 0.04, 0.04])
    sqqq = leg("SQQQ", open_=[40, 39, 40.5, 41], close=[40, 38, 41, 40], dollar_volume=2e9, sigma=0.05, direction=-1)
    return toy_market(tqqq, sqqq)


def test_fill_at_next_open_golden():
    m, cfg = golden_market(), synthetic_cfg()
    env = TradingEnv(m, cfg, 0, 3)
    env.reset(seed=0)
    # decision after the close of bar 0 (TQQQ 50): +1 = 100,000 / 50 = 2,000 shares, filled at open[1] = 51
    # commission max(1, 0.005 x 2000) = 10; half-spread 1 bp x 102,000 = 10.2;
    # impact 0.5 x sigma[0] 0.02 x sqrt(102,000 / 10,200,000) x 102,000 = 102  -> 122.2
    obs, r, term, trunc, info = env.step(2)
    assert env.book.shares.tolist() == [2000.0, 0.0]
    assert info["costs"] == pytest.approx(122.2)
    assert env.book.cash == pytest.approx(100_000 - 2000 * 51 - 122.2)
    assert info["equity"] == pytest.approx(-2122.2 + 2000 * 52) == pytest.approx(101_877.8)
    assert r == pytest.approx(np.log(101_877.8 / 100_000))
    assert env.book.trades == [(1, "TQQQ", 2000.0, 51.0, pytest.approx(122.2))]
    # decision after the close of bar 1: -1 = 101,877.8 / SQQQ close 38 shares of SQQQ, sell 2,000 TQQQ;
    # both fill at the open of bar 2 (TQQQ 50, SQQQ 40.5). TQQQ: commission 10, spread 10,
    # impact 0.5 x 0.04 x sqrt(100,000 / 1e10) x 100,000 = 6.32456
    n_s = 101_877.8 / 38
    cash_before = env.book.cash
    obs, r, term, trunc, info = env.step(0)
    sq_cost = float(trade_costs(cfg.costs, "SQQQ", n_s, 40.5, 2e9, 0.05).total)
    tq_cost = 10 + 10 + 0.5 * 0.04 * np.sqrt(1e-5) * 100_000
    assert info["costs"] == pytest.approx(tq_cost + sq_cost)
    assert env.book.shares[0] == 0 and env.book.shares[1] == pytest.approx(n_s)
    assert env.book.cash - cash_before == pytest.approx(2000 * 50 - n_s * 40.5 - tq_cost - sq_cost)
    assert info["equity"] == pytest.approx(env.book.cash + n_s * 41)
    # hold -1: the shares stay, nothing is paid, equity follows SQQQ's close (41 -> 40)
    eq2 = info["equity"]
    obs, r, term, trunc, info = env.step(0)
    assert info["costs"] == 0 and env.book.shares[1] == pytest.approx(n_s)
    assert info["equity"] - eq2 == pytest.approx(n_s * (40 - 41))
    assert trunc and not term


def test_exposure_in_the_observation_golden():
    m, cfg = golden_market(), synthetic_cfg()
    env = TradingEnv(m, cfg, 0, 3)
    env.reset(seed=0)
    obs, *_ = env.step(2)
    # state: exposure = 2000 x 52 / 101,877.8; drawdown 0; bars held 1 -> 1/21; level +1
    np.testing.assert_allclose(obs[-4:], [104_000 / 101_877.8, 0.0, 1 / 21, 1.0], rtol=1e-6)
    # features: rows 0 and 1 (lookback 2), oldest first
    np.testing.assert_array_equal(obs[:-4], m.features[0:2].ravel())
    obs, *_ = env.step(0)
    assert obs[-4] < 0 and obs[-1] == -1.0  # an inverse product held long is negative exposure


# --------------------------------------------------------------------------- reward

@pytest.mark.parametrize("penalty", [0.0, 2.0])
def test_reward_is_log_return_minus_drawdown_penalty(fold, penalty):
    cfg = with_cfg(fold.cfg, env={"drawdown_penalty": penalty})
    recs = run_random(train_env(fold, cfg), 4)
    eq = np.r_[cfg.env.initial_equity_usd, [r["info"]["equity"] for r in recs]]
    dd = 1 - eq / np.maximum.accumulate(eq)
    expected = np.log(eq[1:] / eq[:-1]) - penalty * np.maximum(0.0, np.diff(dd))
    np.testing.assert_allclose([r["reward"] for r in recs], expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose([r["info"]["drawdown"] for r in recs], dd[1:], atol=1e-12)
    assert np.any(np.diff(dd) > 0)  # the penalty term was exercised


# --------------------------------------------------------------------------- timing

def perturbed_after(market, t: int, seed: int = 0):
    """The same market with every array after row ``t`` replaced by other numbers."""
    rng = np.random.default_rng(seed)
    n = market.n_rows

    def shake(x):
        x = np.array(x, dtype=float, copy=True)
        x[t + 1:] *= rng.uniform(0.5, 1.5, n - t - 1)
        return x

    def leg_(lg):
        return dataclasses.replace(lg, open=shake(lg.open), close=shake(lg.close),
                                   dollar_volume=shake(lg.dollar_volume),
                                   mean_dollar_volume=shake(lg.mean_dollar_volume), sigma=shake(lg.sigma))

    feats = market.features.copy()
    feats[t + 1:] = rng.normal(size=feats[t + 1:].shape).astype(np.float32)
    hv = market.high_vol_prob.copy()
    hv[t + 1:] = 1.0 - hv[t + 1:]
    stale = market.stale.copy()
    stale[t + 1:] = ~stale[t + 1:]
    return dataclasses.replace(market, features=feats, legs=[leg_(lg) for lg in market.legs],
                               underlying=leg_(market.underlying), high_vol_prob=hv, stale=stale)


def replay(env: TradingEnv, actions):
    env.reset(seed=0)
    obs, masks = [env._obs()], [env.action_masks()]
    for a in actions:
        o, *_ = env.step(a)
        obs.append(o)
        masks.append(env.action_masks())
    return obs, masks


def test_no_look_ahead_later_bars_do_not_change_observation_or_mask(fold):
    c, d = fold.test_rows
    first, k = c - 1, 40
    t = first + k  # the decision after the close of bar t
    actions = list(np.random.default_rng(8).integers(0, 5, k + 1))
    cfg = with_cfg(fold.cfg, masks={"vol_target_ann": 0.8, "regime_high_vol_prob": 0.3})
    obs_a, masks_a = replay(TradingEnv(fold.market, cfg, first, d - 1), actions)
    obs_b, masks_b = replay(TradingEnv(perturbed_after(fold.market, t), cfg, first, d - 1), actions)
    for s in range(k + 1):  # every decision up to and including t
        np.testing.assert_array_equal(obs_a[s], obs_b[s])
        np.testing.assert_array_equal(masks_a[s], masks_b[s])
    # the perturbation is real: the next observation differs
    assert not np.array_equal(obs_a[k + 1], obs_b[k + 1])


def test_no_look_ahead_with_the_data_cut_after_t(fold):
    """End to end: the panel cut after bar t (features, regimes and market rebuilt on it) gives
    the same observation and mask at decision t as the full data."""
    import polars as pl

    from sentio_core.features import feature_table
    from sentio_core.market import fold_market
    from sentio_core.regimes import fold_regimes

    cfg = fold.cfg
    c, d = fold.test_rows
    first, t = c - 1, c + 30
    cutoff = fold.bars["timestamp"].unique().sort()[t]
    bars = fold.bars.filter(pl.col("timestamp") <= cutoff)
    assert bars["timestamp"].n_unique() == t + 1
    feats = feature_table(cfg, bars, fold.freq)
    with single_blas_thread():
        reg = fold_regimes(cfg, bars, fold.span)
    cut = fold_market(cfg, bars, feats, reg.probabilities, fold.span, fold.freq.periods_per_year)
    assert cut.n_rows == t + 1 and cut.timestamps == fold.market.timestamps[: t + 1]
    actions = list(np.random.default_rng(9).integers(0, 5, t - first))
    obs_full, masks_full = replay(TradingEnv(fold.market, cfg, first, d - 1), actions)
    obs_cut, masks_cut = replay(TradingEnv(cut, cfg, first, t), actions)
    np.testing.assert_allclose(obs_cut[-1], obs_full[t - first], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(masks_cut[-1], masks_full[t - first])


# --------------------------------------------------------------------------- overrides

def test_forbidden_action_goes_to_nearest_allowed_and_is_counted():
    m = toy_market(leg("TQQQ", [50] * 6, [50, 51, 52, 53, 54, 55]),
                   leg("SQQQ", [40] * 6, [40, 39, 38, 37, 36, 35], direction=-1), levels=(-1, -0.5, 0, 0.5, 1))
    cfg = synthetic_cfg(masks={"rules": ["exposure_cap"], "max_abs_exposure": 0.5})
    env = TradingEnv(m, cfg, 0, 5)
    env.reset(seed=0)
    *_, info = env.step(4)  # +1 is above the cap -> +0.5
    assert info["overrides"] == 1 and info["level"] == 0.5 and env.book.level == 3
    *_, info = env.step(2)  # flat is allowed
    assert info["overrides"] == 1 and info["level"] == 0.0
    *_, info = env.step(0)  # -1 -> -0.5
    assert info["overrides"] == 2 and info["level"] == -0.5
    *_, info = env.step(1)
    assert info["overrides"] == 2 and info["level"] == -0.5


def test_overrides_happen_exactly_when_the_mask_forbids(fold):
    cfg = with_cfg(fold.cfg, masks={"vol_target_ann": 0.8, "max_abs_exposure": 0.75, "min_hold_bars": 3,
                                    "regime_high_vol_prob": 0.4})
    n_over = n_free = 0
    for seed in range(3):
        for r in run_random(train_env(fold, cfg), seed):
            a, mask = r["action"], r["mask"]
            assert mask.any()
            if mask[a]:
                n_free += 1
                assert r["info"]["overrides"] == r["overrides_before"]
                assert r["info"]["level"] == fold.market.levels[a]
            else:
                n_over += 1
                assert r["info"]["overrides"] == r["overrides_before"] + 1
                assert r["info"]["level"] == fold.market.levels[nearest_allowed(fold.market.levels, mask, a)]
    assert n_over > 10 and n_free > 10


def test_no_rules_no_overrides(fold):
    recs = run_random(train_env(fold, with_cfg(fold.cfg, masks={"rules": []})), 6)
    assert recs[-1]["info"]["overrides"] == 0
    assert all(r["mask"].all() for r in recs)


# --------------------------------------------------------------------------- universes

def test_long_only_universe_has_no_negative_levels():
    f = real_fold(SHORT_NULL)
    m = f.market
    assert m.levels.tolist() == [0.0, 0.5, 1.0] and [lg.symbol for lg in m.legs] == ["TQQQ"]
    recs = [r for seed in range(4) for r in run_random(train_env(f), seed)]  # episodes at several random starts
    assert all(r["shares"][0] >= 0 and r["info"]["level"] >= 0 for r in recs)
    assert any(r["shares"][0] > 0 for r in recs)


def test_allow_short_sells_the_underlying():
    f = real_fold(ALLOW_SHORT)
    m = f.market
    assert m.levels.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert [(lg.symbol, lg.direction) for lg in m.legs] == [("TQQQ", 1), ("QQQ", 1)]
    cfg = with_cfg(f.cfg, masks={"rules": []})
    env = train_env(f, cfg)
    env.reset(seed=1)
    t, eq = env.t, env.book.equity
    obs, *_ = step_checked(env, 0)  # -1: sell QQQ short
    qqq = m.legs[1]
    assert env.book.shares[0] == 0 and env.book.shares[1] == pytest.approx(-eq / qqq.close[t])
    assert obs[-4] < 0 and obs[-1] == -1.0
    assert env.book.cash > eq  # the short sale's proceeds are cash
    recs = run_random(env, 2)  # the accounting identity holds with negative shares too
    assert any(r["shares"][1] < 0 for r in recs)
    for r in recs:
        assert (r["info"]["level"] < 0) == (r["shares"][1] < 0)
        assert r["shares"][0] == 0 or r["shares"][1] == 0


def test_single_instrument_both_sides_weights():
    cfg = smoke_cfg(("universe.long=null", "universe.short=null", "universe.allow_short=true"))
    levels, weights, legs = action_weights(cfg)
    assert legs == [("QQQ", 1)]
    np.testing.assert_array_equal(weights[:, 0], levels)


def test_synthesized_legs_build_and_step():
    f = real_fold(SYNTH)
    m = f.market
    assert [(lg.symbol, lg.direction) for lg in m.legs] == [("QQQ_L3X", 1), ("QQQ_S3X", -1)]
    assert m.underlying.symbol == "QQQ" and np.all(np.isfinite(m.features))
    recs = run_random(train_env(f, with_cfg(f.cfg, masks={"rules": []})), 0)
    assert len(recs) == 50 and any(r["shares"][1] > 0 for r in recs) and any(r["shares"][0] > 0 for r in recs)
    recs = run_random(eval_env(f), 1)
    assert len(recs) == f.test_rows[1] - f.test_rows[0]


def test_an_order_into_a_zero_volume_bar_does_not_crash():
    tqqq = leg("TQQQ", open_=[50, 51, 50, 49], close=[50, 52, 49, 49.5], dollar_volume=[1e10, 1e10, 0.0, 1e10])
    sqqq = leg("SQQQ", open_=[40, 39, 40.5, 41], close=[40, 38, 41, 40], direction=-1)
    m = toy_market(tqqq, sqqq, stale=[False, False, True, False])  # bar 2 has no volume: it is stale
    env = TradingEnv(m, synthetic_cfg(masks={"rules": ["stale"]}), 0, 3)
    env.reset(seed=0)
    env.step(1)  # flat over bar 1
    assert env.t == 1 and env.action_masks().all()  # the decision bar 1 is not stale: buying is allowed
    shares = env.book.shares.copy()
    step_checked(env, 2)  # decided after the close of bar 1, fills at the open of bar 2 (no volume)
    np.testing.assert_array_equal(env.book.shares, shares)  # the order did not fill: nothing traded
    assert env.book.level == 1


# --------------------------------------------------------------------------- drawdown budget: stop-out, cool-down, re-base

def _crash_market(n: int = 40, crash_bar: int = 5) -> Market:
    """A long leg that drifts up 0.1 % a bar and falls 25 % in one bar (open and close) at ``crash_bar``."""
    close = 100.0 * np.cumprod(np.r_[1.0, np.full(n - 1, 1.001)])
    close[crash_bar:] *= 0.75
    open_ = np.r_[close[0], close[:-1]]
    open_[crash_bar] = close[crash_bar]  # the fall is an overnight gap: it fills at the bottom
    return toy_market(leg("TQQQ", open_, close, sigma=0.001), levels=(0.0, 1.0))


def test_a_policy_stopped_out_trades_again_after_the_cool_down_and_not_before():
    """Limit 20 %, cool-down 5 bars: an always-long policy gaps 25 % down (the rule could not see it
    coming: its sigma is 0.1 %), is stopped out, held flat for exactly 5 decisions, and is long again
    from the first decision after the re-base."""
    cfg = synthetic_cfg(masks={"rules": ["drawdown"], "drawdown_limit": 0.2, "drawdown_cooldown_bars": 5,
                               "gap_move": "sigma", "gap_sigmas": 4.0})
    market = _crash_market()
    env = TradingEnv(market, cfg, 0, market.n_rows - 1)
    env.reset(seed=0)
    held, allowed = [], []
    done = False
    while not done:
        mask = env.action_masks()
        allowed.append(mask.tolist())
        _, _, term, trunc, info = env.step(1)  # always asks for 100 % long
        held.append(info["level"])
        done = term or trunc
    # decisions 0..3 long; the close of bar 5 (decision 4's P&L bar) is 25 % down: stopped out
    assert held[:5] == [1.0] * 5
    assert held[5:10] == [0.0] * 5 and all(a == [True, False] for a in allowed[5:10])  # the cool-down: flat only
    assert held[10] == 1.0 and allowed[10] == [True, True]  # re-based: long again at once, and not before
    assert env.book.overrides == 5 and env.book.forced_bars == env.book.forced_flat == 5
    assert env.book.constrained.tolist() == [5]


def test_the_backtest_holds_the_same_cool_down_as_the_environment():
    cfg = synthetic_cfg(masks={"rules": ["drawdown"], "drawdown_limit": 0.2, "drawdown_cooldown_bars": 5})
    market = _crash_market()
    always_long = lambda obs, masks: np.ones(len(obs), dtype=int)  # noqa: E731
    fast = backtest_fold(market, cfg, (1, market.n_rows), {"long": (always_long, False)})["long"]
    slow = reference_path(market, cfg, (1, market.n_rows), always_long, False)
    np.testing.assert_allclose(fast.equity, slow.equity, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(fast.levels, slow.levels)
    assert fast.overrides == slow.overrides == 5
    assert fast.forced_bars == slow.forced_bars == fast.forced_flat == slow.forced_flat == 5 and fast.constrained == slow.constrained == {"drawdown": 5}
    m = fast.metrics(252.0)
    assert m["forced_bars"] == m["forced_flat"] == 5.0 and m["mask_drawdown"] == 5.0


def test_a_budget_too_small_for_any_position_stops_out_and_rearms_instead_of_locking():
    """Limit 20 %: a 15 % gap leaves 1 - 0.8 / 0.85 = 5.9 % of the budget, and the leg's trailing
    volatility jumps to 2 % a bar (4 sigma: 7.7 %), so no long level fits. Without a stop-out the
    policy would sit flat for good (flat equity makes no new peak); instead it is held flat for the
    5-bar cool-down, the peak re-bases, and it is long again."""
    n, crash = 40, 5
    close = 100.0 * np.cumprod(np.r_[1.0, np.full(n - 1, 1.001)])
    close[crash:] *= 0.85
    open_ = np.r_[close[0], close[:-1]]
    open_[crash] = close[crash]
    sigma = np.where(np.arange(n) >= crash, 0.02, 0.001)
    sigma[crash + 8:] = 0.001  # the market calms down again during the cool-down
    market = toy_market(leg("TQQQ", open_, close, sigma=sigma), levels=(0.0, 1.0))
    cfg = synthetic_cfg(masks={"rules": ["drawdown"], "drawdown_limit": 0.2, "drawdown_cooldown_bars": 5})
    env = TradingEnv(market, cfg, 0, n - 1)
    env.reset(seed=0)
    held = []
    done = False
    while not done:
        _, _, term, trunc, info = env.step(1)
        held.append(info["level"])
        done = term or trunc
    assert held[:5] == [1.0] * 5  # long into the gap (decision 4's P&L bar is the 15 % fall)
    assert held[5:10] == [0.0] * 5  # sized out: stopped out, flat for the cool-down
    assert held[10] == 1.0  # re-based: trading again, never locked
    assert env.book.forced_bars == 5


# --------------------------------------------------------------------------- observation layout

def test_layout_split_reads_the_env_and_engine_observations_bar_by_bar(fold):
    """Window row k of decision t is feature row t - lookback + 1 + k (zeros before row 0), the state
    follows it; the env's and the engine's observations split the same way, into views."""
    from sentio_core.engine import Engine

    m, cfg = fold.market, fold.cfg
    layout = ObservationLayout.of(m, cfg)
    lookback, n_features = cfg.env.lookback_bars, m.features.shape[1]
    assert (layout.lookback, layout.n_features, layout.n_state) == (lookback, n_features, N_STATE)
    assert layout.obs_dim == lookback * n_features + N_STATE == Engine(m, cfg, 1).obs_dim
    starts = np.array([0, 3, lookback - 1, fold.train_rows[0] + 7, fold.test_rows[0]])
    engine = Engine(m, cfg, len(starts))
    engine.reset_all(starts, starts + 20)
    engine.step(np.arange(len(starts)) % len(m.levels))  # some portfolios hold a position: the state is not zeros
    obs = engine.observe()
    window, state = layout.split(obs)
    assert window.shape == (len(starts), lookback, n_features) and state.shape == (len(starts), N_STATE)
    assert np.shares_memory(window, obs) and np.shares_memory(state, obs)
    for i, t in enumerate(engine.t):
        for k in range(lookback):
            row = t - lookback + 1 + k
            expected = m.features[row] if row >= 0 else np.zeros(n_features, dtype=np.float32)
            np.testing.assert_array_equal(window[i, k], expected)
        env = TradingEnv(m, cfg, int(starts[i]), int(starts[i]) + 20)
        env.reset(seed=0)
        env.step(int(i % len(m.levels)))
        env_window, env_state = layout.split(env._obs())
        assert env.observation_space.shape == (layout.obs_dim,)
        np.testing.assert_array_equal(env_window, window[i])
        np.testing.assert_allclose(env_state, state[i], rtol=1e-6, atol=1e-7)
    assert (state[:, 3] != 0).any()


def test_layout_split_of_torch_tensors_and_wrong_lengths():
    import torch

    layout = ObservationLayout(lookback=3, n_features=2)
    assert (layout.window_size, layout.obs_dim) == (6, 10)
    obs = torch.arange(20.0).reshape(2, 10)
    window, state = layout.split(obs)
    assert window.tolist()[1] == [[10.0, 11.0], [12.0, 13.0], [14.0, 15.0]] and state.tolist()[1] == [16.0, 17.0, 18.0, 19.0]
    assert window.data_ptr() == obs.data_ptr()  # a view
    one_window, one_state = layout.split(np.arange(10.0))  # one observation, no batch axis
    assert one_window.shape == (3, 2) and one_state.tolist() == [6.0, 7.0, 8.0, 9.0]
    with pytest.raises(ValueError, match="3 bars x 2 features"):
        layout.split(np.zeros((4, 11)))
