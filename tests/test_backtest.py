"""The batch backtest engine against the slow reference (the environment stepped one action at a
time), the baselines worked by hand, the out-of-sample window and the metrics of the paths."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from sentio_core import baselines
from sentio_core.backtest import backtest_fold, reference_path, trades_frame
from sentio_core.costs import trade_costs
from sentio_core.env import ObservationLayout
from sentio_core.metrics import METRIC_KEYS
from tests.fixtures_market import random_walk_market, real_fold, synthetic_cfg, with_cfg

ALLOW_SHORT = ("universe.short=null", "universe.allow_short=true")


def linear_policy(obs_dim: int, n_actions: int, seed: int, masked: bool):
    """A fixed random linear map of the observation; argmax over the (masked) logits."""
    w = np.random.default_rng(seed).normal(size=(obs_dim, n_actions)) / np.sqrt(obs_dim)
    b = np.random.default_rng(seed + 1).normal(size=n_actions) * 0.5

    def act(obs, masks):
        logits = obs.astype(float) @ w + b
        if masked:
            logits = np.where(masks, logits, -np.inf)
        return np.argmax(logits, axis=1)
    return act


def max_long(masked: bool):
    def act(obs, masks):
        if masked:  # the largest allowed level
            return np.array([np.flatnonzero(m)[-1] for m in masks])
        return np.full(len(obs), masks.shape[1] - 1)
    return act


def policies(market, cfg):
    obs_dim = ObservationLayout.of(market, cfg).obs_dim
    a = len(market.levels)
    return {
        "lin_masked": (linear_policy(obs_dim, a, 1, True), True),
        "lin_unmasked": (linear_policy(obs_dim, a, 1, False), False),
        "lin2_masked": (linear_policy(obs_dim, a, 2, True), True),
        "max_long_masked": (max_long(True), True),
        "max_long": (max_long(False), False),
    }


TIGHT = {"vol_target_ann": 0.9, "regime_high_vol_prob": 0.4, "min_hold_bars": 3, "max_abs_exposure": 0.75}


CASE_NAMES = ["default", "tight_masks", "tight_budget", "short_underlying", "toy"]
# an 8 % budget on quarter-step levels, 5-bar cool-down: the real fold stops out and re-bases
TIGHT_BUDGET = ("masks.drawdown_limit=0.08", "masks.drawdown_cooldown_bars=5",
                "env.exposure_levels=[-1.0,-0.75,-0.5,-0.25,0.0,0.25,0.5,0.75,1.0]")


@functools.lru_cache(maxsize=None)
def build_case(name: str):
    """(market, cfg, test rows) of a named case."""
    if name == "default":
        f = real_fold()
        return f.market, f.cfg, f.test_rows
    if name == "tight_masks":
        f = real_fold()
        return f.market, with_cfg(f.cfg, masks=TIGHT), f.test_rows
    if name == "tight_budget":
        f = real_fold(TIGHT_BUDGET)
        return f.market, f.cfg, f.test_rows
    if name == "short_underlying":  # negative shares of QQQ for negative levels
        s = real_fold(ALLOW_SHORT)
        return s.market, with_cfg(s.cfg, masks=TIGHT), s.test_rows
    m = random_walk_market(120, seed=3)
    cfg = synthetic_cfg(masks={"rules": ["drawdown", "exposure_cap", "min_hold"], "drawdown_limit": 0.1, "gap_sigmas": 4.0,
                               "max_abs_exposure": 0.75, "min_hold_bars": 2})
    return m, cfg, (5, 110)


@pytest.fixture(scope="module", params=CASE_NAMES)
def case(request):
    market, cfg, rows = build_case(request.param)
    pols = policies(market, cfg)
    return request.param, market, cfg, rows, pols, backtest_fold(market, cfg, rows, pols)


def test_batch_engine_equals_reference(case):
    name, market, cfg, rows, pols, paths = case
    for key, (policy, masked) in pols.items():
        ref = reference_path(market, cfg, rows, policy, masked)
        fast = paths[key]
        assert fast.timestamps == ref.timestamps
        np.testing.assert_allclose(fast.equity, ref.equity, rtol=1e-9, err_msg=f"{name}/{key}")
        np.testing.assert_allclose(fast.costs, ref.costs, rtol=1e-9, atol=1e-9, err_msg=f"{name}/{key}")
        np.testing.assert_array_equal(fast.levels, ref.levels, err_msg=f"{name}/{key}")
        np.testing.assert_allclose(fast.rule_peak, ref.rule_peak, rtol=1e-9, err_msg=f"{name}/{key}")
        assert fast.overrides == ref.overrides, key
        assert (fast.forced_bars, fast.forced_flat, fast.constrained) == (ref.forced_bars, ref.forced_flat, ref.constrained), key
        if masked:
            assert fast.overrides == 0, key
    # the policies did trade, and not all alike
    assert len({tuple(paths[k].levels) for k in pols}) >= 3
    assert all(len(paths[k].trades) > 0 for k in pols)


def test_path_levels_are_exposure_levels_like_the_reference():
    f = real_fold()
    pol = linear_policy(ObservationLayout.of(f.market, f.cfg).obs_dim, len(f.market.levels), 1, True)
    fast = backtest_fold(f.market, f.cfg, f.test_rows, {"p": (pol, True)})["p"]
    ref = reference_path(f.market, f.cfg, f.test_rows, pol, True)
    assert set(np.unique(ref.levels)) <= set(f.market.levels)
    np.testing.assert_array_equal(fast.levels, ref.levels)


def test_masks_bite_the_unmasked_policies():
    """Non-vacuous: with tight masks the always-max-long policy is overridden, the masked one is not."""
    market, cfg, rows = build_case("tight_masks")
    paths = backtest_fold(market, cfg, rows, {"max_long": (max_long(False), False),
                                              "max_long_masked": (max_long(True), True)})
    assert paths["max_long"].overrides > 0 and paths["max_long_masked"].overrides == 0
    np.testing.assert_array_equal(paths["max_long"].levels, paths["max_long_masked"].levels)
    assert paths["max_long"].metrics(market.periods_per_year)["overrides"] == paths["max_long"].overrides


def test_out_of_sample_window(case):
    name, market, cfg, (c, d), pols, paths = case
    for key, p in paths.items():
        assert p.timestamps[0] == market.timestamps[c - 1]  # the close before the first test bar
        assert p.timestamps[-1] == market.timestamps[d - 1]  # the last test bar
        assert len(p.timestamps) == len(p.equity) == d - c + 1
        assert len(p.costs) == len(p.levels) == len(p.exposure) == len(p.turnover) == d - c
        assert p.equity[0] == cfg.env.initial_equity_usd
        for tr in p.trades:  # every fill is inside the test window
            assert tr["timestamp"] in market.timestamps[c:d]


def test_trades_frame_holds_every_fill_in_order(case):
    name, market, cfg, rows, pols, paths = case
    frame = trades_frame(paths)
    records = [{"strategy": k, **t} for k, p in paths.items() for t in p.trades]
    assert frame.to_dicts() == records and len(records) > 0
    for p in paths.values():  # per path: time order, and every fill bar inside the path
        stamps = [t["timestamp"] for t in p.trades]
        assert stamps == sorted(stamps, key=p.timestamps.index)


def test_out_of_sample_window_matches_the_fold_span():
    f = real_fold()
    paths = backtest_fold(f.market, f.cfg, f.test_rows, {})
    p = paths["flat"]
    assert p.timestamps[1] == f.span.test_start and p.timestamps[-1] == f.span.test_end
    assert p.timestamps[0] < f.span.test_start
    assert list(paths) == list(baselines.NAMES)  # the rule and the fixed-action baselines


def test_metrics_are_finite(case):
    name, market, cfg, rows, pols, paths = case
    for key, p in paths.items():
        m = p.metrics(market.periods_per_year)
        assert list(m) == [*METRIC_KEYS, "forced_bars", "forced_flat", *(f"mask_{rule}" for rule in cfg.masks.rules)]
        assert all(np.isfinite(v) for v in m.values()), (key, m)
        if key in baselines.SPECS and not baselines.SPECS[key].reads_masks:  # fixed-action baselines read no masks
            assert m["forced_bars"] == m["forced_flat"] == 0 and all(m[f"mask_{rule}"] == 0 for rule in cfg.masks.rules)
        assert m["n_bars"] == rows[1] - rows[0]
        if key in pols and pols[key][1]:
            assert m["overrides"] == 0


# --------------------------------------------------------------------------- baselines

def test_flat_baseline(case):
    name, market, cfg, rows, pols, paths = case
    p = paths["flat"]
    assert np.all(p.equity == cfg.env.initial_equity_usd)
    assert p.trades == [] and np.all(p.costs == 0) and np.all(p.turnover == 0) and np.all(p.exposure == 0)
    assert p.metrics(market.periods_per_year)["n_trades"] == 0


def test_buy_hold_long_baseline_by_hand(case):
    name, market, cfg, (c, d), pols, paths = case
    p = paths["buy_hold_long"]
    lg = market.legs[0]
    eq0 = cfg.env.initial_equity_usd
    shares = eq0 / lg.close[c - 1]  # sized at the close before the window, filled at the first open
    cost = float(trade_costs(cfg.costs, lg.symbol, shares, lg.open[c], lg.dollar_volume[c], lg.sigma[c - 1]).total)
    assert len(p.trades) == 1
    tr = p.trades[0]
    assert tr["timestamp"] == market.timestamps[c] and tr["symbol"] == lg.symbol
    assert tr["shares"] == pytest.approx(shares) and tr["price"] == lg.open[c]
    cash = eq0 - shares * lg.open[c] - cost
    np.testing.assert_allclose(p.equity[1:], cash + shares * lg.close[c:d], rtol=1e-12)
    assert p.costs[0] == pytest.approx(cost) and np.all(p.costs[1:] == 0)
    assert p.turnover[0] == pytest.approx(shares * lg.open[c] / eq0) and np.all(p.turnover[1:] == 0)
    assert np.all(p.levels == 1)
    assert p.metrics(market.periods_per_year)["n_trades"] == 1


def test_buy_hold_underlying_trades_the_underlying(case):
    name, market, cfg, (c, d), pols, paths = case
    p = paths["buy_hold_underlying"]
    u = market.underlying
    assert [t["symbol"] for t in p.trades] == [u.symbol]
    shares = cfg.env.initial_equity_usd / u.close[c - 1]
    assert p.trades[0]["shares"] == pytest.approx(shares) and p.trades[0]["timestamp"] == market.timestamps[c]
    # after the fill, equity moves by shares x close change, bar by bar
    np.testing.assert_allclose(np.diff(p.equity[1:]), shares * np.diff(u.close[c:d]), rtol=1e-9, atol=1e-6)
    if name != "toy":
        assert u.symbol == "QQQ" != market.legs[0].symbol


def test_tight_budget_case_stops_out_and_rebases_on_the_real_fold():
    """Non-vacuous: under the 8 % budget the real fold's policies are stopped out (forced flat) and
    the rule's peak re-bases below an earlier peak, so the equality above covers both paths."""
    market, cfg, rows = build_case("tight_budget")
    paths = backtest_fold(market, cfg, rows, policies(market, cfg))
    assert any(p.forced_flat > 0 for k, p in paths.items() if k in ("lin_masked", "max_long_masked"))
    assert any((np.diff(paths[k].rule_peak) < 0).any() for k in ("lin_masked", "max_long_masked", "max_long"))
