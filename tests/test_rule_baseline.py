"""The rule-based baseline (``trend_vol``): its targets worked by hand, no look-ahead, the masks it
trades under, its path against the slow reference, its config, and where it is reported."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentio_core import baselines
from sentio_core.backtest import backtest_fold, paths_frame, reference_path, trades_frame, trend_vol_schedule
from sentio_core.baselines import realised_vol_ann, trend_vol_actions
from sentio_core.config import BaselineConfig, ConfigError, load_config
from sentio_core.registration import child_metrics
from sentio_core.report import SHORT, STRATEGIES, fold_rows, summary_rows
from tests.fixtures_market import leg, real_fold, toy_market, with_cfg
from tests.test_backtest import CASE_NAMES, build_case

QUARTERS = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)


def closes(first: float, log_returns) -> np.ndarray:
    """Closes from a first close and the one-bar log returns after it."""
    return first * np.exp(np.concatenate([[0.0], np.cumsum(log_returns)]))


def pair_market(under, long_close, short_close=None, levels=QUARTERS):
    """A toy market: the long leg (and an inverse short leg) over ``under`` as the underlying."""
    long_leg = leg("TQQQ", long_close, long_close)
    short_leg = None if short_close is None else leg("SQQQ", short_close, short_close, direction=-1)
    m = toy_market(long_leg, short_leg, levels=levels if short_leg is not None else [lv for lv in levels if lv >= 0])
    return dataclasses.replace(m, underlying=leg("QQQ", under, under))


def level_of(market, targets) -> np.ndarray:
    return market.levels[targets]


# --------------------------------------------------------------------------- the rule by hand

# long leg: one-bar log returns alternating 3 % and 1 %: any two in a row have sample std
# 0.02 / sqrt(2), annualised 0.02 / sqrt(2) x sqrt(252) = 0.2245
ALTERNATING = np.tile([0.03, 0.01], 5)  # 10 returns, 11 rows
VOL_2 = 0.02 / np.sqrt(2) * np.sqrt(252)


def test_realised_vol_by_hand():
    vol = realised_vol_ann(closes(50.0, ALTERNATING), 2, 252.0)
    assert np.isnan(vol[:2]).all()  # rows 0 and 1: fewer than two returns
    np.testing.assert_allclose(vol[2:], VOL_2, rtol=1e-12)


def test_rising_series_is_long_at_the_vol_targeted_level():
    """0.17 / 0.2245 = 0.757: floored to the 0.75 level; flat while the windows fill (rows 0, 1)."""
    under = np.linspace(100.0, 110.0, 11)
    m = pair_market(under, closes(50.0, ALTERNATING), closes(40.0, -ALTERNATING))
    cfg = BaselineConfig(trend_bars=3, vol_bars=2, vol_target_ann=0.17)
    assert 0.17 / VOL_2 == pytest.approx(0.75724, abs=1e-5)
    np.testing.assert_array_equal(level_of(m, trend_vol_actions(m, cfg)), [0, 0] + [0.75] * 9)
    # 0.1 / 0.2245 = 0.445: 0.25; 0.3 / 0.2245 = 1.34: capped at max_exposure 1, or 0.5
    assert set(level_of(m, trend_vol_actions(m, cfg.model_copy(update={"vol_target_ann": 0.1})))[2:]) == {0.25}
    assert set(level_of(m, trend_vol_actions(m, cfg.model_copy(update={"vol_target_ann": 0.3})))[2:]) == {1.0}
    capped = cfg.model_copy(update={"vol_target_ann": 0.3, "max_exposure": 0.6})
    assert set(level_of(m, trend_vol_actions(m, capped))[2:]) == {0.5}
    # on the default levels (0, +-0.5, +-1) a 0.757 target floors to 0.5; below 0.5 it is flat
    coarse = pair_market(under, closes(50.0, ALTERNATING), closes(40.0, -ALTERNATING), levels=(-1.0, -0.5, 0.0, 0.5, 1.0))
    assert set(level_of(coarse, trend_vol_actions(coarse, cfg))[2:]) == {0.5}
    assert set(level_of(coarse, trend_vol_actions(coarse, cfg.model_copy(update={"vol_target_ann": 0.1})))) == {0.0}


def test_falling_series_is_flat_or_short_when_asked():
    under = np.linspace(110.0, 100.0, 11)
    m = pair_market(under, closes(50.0, -ALTERNATING), closes(40.0, ALTERNATING))
    cfg = BaselineConfig(trend_bars=3, vol_bars=2, vol_target_ann=0.17)
    assert set(level_of(m, trend_vol_actions(m, cfg))) == {0.0}
    short = trend_vol_actions(m, cfg.model_copy(update={"short_when_down": True}))
    np.testing.assert_array_equal(level_of(m, short), [0, 0] + [-0.75] * 9)  # sized on the short leg's volatility
    alone = pair_market(under, closes(50.0, -ALTERNATING))  # no short side: flat even when asked
    assert set(level_of(alone, trend_vol_actions(alone, cfg.model_copy(update={"short_when_down": True})))) == {0.0}


def test_trend_filter_by_hand():
    """3-bar averages of 10, 11, 12, 11, 10, 9, 10, 12 from row 2: 11, 11.33, 11, 10, 9.67, 10.33;
    the close is above them on rows 2, 6 and 7 only (row 4: 10 < 11)."""
    under = np.array([10.0, 11, 12, 11, 10, 9, 10, 12])
    m = pair_market(under, closes(50.0, ALTERNATING[:7]), closes(40.0, -ALTERNATING[:7]))
    cfg = BaselineConfig(trend_bars=3, vol_bars=2, vol_target_ann=0.17)
    up, down = 0.75, -0.75
    np.testing.assert_array_equal(level_of(m, trend_vol_actions(m, cfg)), [0, 0, up, 0, 0, 0, up, up])
    both = trend_vol_actions(m, cfg.model_copy(update={"short_when_down": True}))
    np.testing.assert_array_equal(level_of(m, both), [0, 0, up, down, down, down, up, up])


def test_a_close_on_its_average_and_zero_volatility():
    """On the average: neither above nor below, flat. No volatility: the largest exposure allowed."""
    flat_under = np.full(8, 100.0)
    m = pair_market(flat_under, closes(50.0, ALTERNATING[:7]), closes(40.0, -ALTERNATING[:7]))
    cfg = BaselineConfig(trend_bars=3, vol_bars=2, short_when_down=True)
    assert set(level_of(m, trend_vol_actions(m, cfg))) == {0.0}
    still = pair_market(np.linspace(100.0, 107.0, 8), np.full(8, 50.0), np.full(8, 40.0))
    assert list(level_of(still, trend_vol_actions(still, cfg.model_copy(update={"max_exposure": 0.5})))) == [0, 0] + [0.5] * 6


def test_flat_until_the_trend_window_is_full():
    under = np.linspace(100.0, 130.0, 31)
    m = pair_market(under, closes(50.0, np.tile([0.03, 0.01], 15)), closes(40.0, -np.tile([0.03, 0.01], 15)))
    levels = level_of(m, trend_vol_actions(m, BaselineConfig(trend_bars=20, vol_bars=2, vol_target_ann=0.17)))
    assert set(levels[:19]) == {0.0} and set(levels[19:]) == {0.75}  # row 19 is the first with 20 closes


# --------------------------------------------------------------------------- no look-ahead

def _market_from_returns(under_r, long_r, short_r):
    return pair_market(closes(100.0, under_r), closes(50.0, long_r), closes(40.0, short_r))


@settings(max_examples=80, deadline=None)
@given(data=st.data(), n=st.integers(12, 60), trend_bars=st.integers(2, 15), vol_bars=st.integers(2, 8),
       vol_target=st.floats(0.02, 2.0), short=st.booleans())
def test_no_look_ahead(data, n, trend_bars, vol_bars, vol_target, short):
    """Changing (or cutting) the bars after t never changes a decision at t or before."""
    ret = st.lists(st.floats(-0.08, 0.08), min_size=n - 1, max_size=n - 1).map(np.array)
    under, long_, short_ = data.draw(ret), data.draw(ret), data.draw(ret)
    t = data.draw(st.integers(0, n - 2))
    cfg = BaselineConfig(trend_bars=trend_bars, vol_bars=vol_bars, vol_target_ann=vol_target, short_when_down=short)
    full = trend_vol_actions(_market_from_returns(under, long_, short_), cfg)
    future = [data.draw(ret)[t:] for _ in range(3)]  # returns of rows t + 1 .. n - 1, redrawn
    changed = [np.concatenate([x[:t], f]) for x, f in zip((under, long_, short_), future)]
    np.testing.assert_array_equal(trend_vol_actions(_market_from_returns(*changed), cfg)[: t + 1], full[: t + 1])
    cut = trend_vol_actions(_market_from_returns(under[:t], long_[:t], short_[:t]), cfg)
    np.testing.assert_array_equal(cut, full[: t + 1])


def test_no_look_ahead_on_the_real_fold():
    """The fold market runs to the end of the data: cutting it after the test window's first bar
    leaves every decision up to that bar as it was."""
    f = real_fold()
    c = f.test_rows[0]
    cut = dataclasses.replace(f.market, timestamps=list(f.market.timestamps[: c + 1]),
                              legs=[_cut_leg(lg, c + 1) for lg in f.market.legs],
                              underlying=_cut_leg(f.market.underlying, c + 1))
    full = trend_vol_schedule(f.market, f.cfg).targets
    np.testing.assert_array_equal(trend_vol_schedule(cut, f.cfg).targets, full[: c + 1])
    assert len(set(full[c:].tolist())) > 1  # the rule moves in the test window


def _cut_leg(lg, n):
    return dataclasses.replace(lg, open=lg.open[:n], close=lg.close[:n], dollar_volume=lg.dollar_volume[:n],
                               mean_dollar_volume=lg.mean_dollar_volume[:n], sigma=lg.sigma[:n])


# --------------------------------------------------------------------------- in the backtest

def rule_case(name: str, short_when_down: bool = False):
    """A backtest case of tests/test_backtest.py with the rule's config (shorter windows on the
    120-row toy market, so it trades there too)."""
    market, cfg, rows = build_case(name)
    fields = {"short_when_down": short_when_down}
    if name == "toy":
        fields |= {"trend_bars": 10, "vol_bars": 5, "vol_target_ann": 1.0}
    return market, with_cfg(cfg, baseline=fields), rows


@pytest.mark.parametrize("short_when_down", [False, True])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_rule_path_equals_the_reference(name, short_when_down):
    """The rule as a portfolio of the policies' engine equals the gymnasium environment stepped with
    the same schedule, one action at a time: equity, costs, levels, peaks and every count."""
    market, cfg, rows = rule_case(name, short_when_down)
    schedule = trend_vol_schedule(market, cfg)
    fast = backtest_fold(market, cfg, rows, {})["trend_vol"]
    ref = reference_path(market, cfg, rows, schedule, True)
    assert fast.timestamps == ref.timestamps
    np.testing.assert_allclose(fast.equity, ref.equity, rtol=1e-9)
    np.testing.assert_allclose(fast.costs, ref.costs, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(fast.levels, ref.levels)
    np.testing.assert_allclose(fast.rule_peak, ref.rule_peak, rtol=1e-9)
    assert (fast.overrides, fast.forced_bars, fast.forced_flat, fast.constrained) == \
        (ref.overrides, ref.forced_bars, ref.forced_flat, ref.constrained)
    assert fast.overrides == 0  # it reads the masks
    assert len(fast.trades) > 0 and len(set(fast.levels.tolist())) > 1, "the rule did not trade"


def test_rule_beside_policies_is_the_rule_alone():
    """One more portfolio of the policies' engine: its path does not depend on the policies beside it."""
    from tests.test_backtest import policies

    market, cfg, rows = build_case("tight_masks")
    alone = backtest_fold(market, cfg, rows, {})
    beside = backtest_fold(market, cfg, rows, policies(market, cfg))
    np.testing.assert_array_equal(alone["trend_vol"].equity, beside["trend_vol"].equity)
    assert list(beside) == [*policies(market, cfg), *baselines.NAMES]


TIGHT_CAP = ("masks.drawdown_limit=0.15", "masks.drawdown_cooldown_bars=5", "masks.max_abs_exposure=0.5",
             "env.exposure_levels=[-1.0,-0.75,-0.5,-0.25,0.0,0.25,0.5,0.75,1.0]", "baseline.vol_target_ann=0.6")


class Follow:
    """An unmasked policy playing a schedule's raw targets from decision row ``first``, one row per
    call (a backtest calls it once per bar, in order)."""

    def __init__(self, targets: np.ndarray, first: int):
        self.targets, self.t = targets, first

    def __call__(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        out = np.full(len(obs), self.targets[self.t])
        self.t += 1
        return out


def test_rule_never_holds_a_forbidden_level():
    """Non-vacuous: under a 0.5 exposure cap and a 15 % drawdown budget the rule's targets go above
    the cap, yet it never holds above it and is never overridden, and the rules it met are counted.
    Its raw targets played by an unmasked policy land on the same levels, each forbidden one
    overridden and counted, in the engine as in the reference."""
    f = real_fold(TIGHT_CAP)
    c, d = f.test_rows
    targets = trend_vol_schedule(f.market, f.cfg).targets
    assert (f.market.levels[targets[c - 1: d - 1]] > 0.5).any()
    paths = backtest_fold(f.market, f.cfg, f.test_rows, {"raw": (Follow(targets, c - 1), False)})
    rule, raw = paths["trend_vol"], paths["raw"]
    assert np.abs(rule.levels).max() <= 0.5 and rule.overrides == 0
    assert rule.constrained["exposure_cap"] > 0 and rule.constrained["drawdown"] > 0
    assert rule.forced_flat > 0  # stopped out by the budget once
    assert rule.metrics(f.market.periods_per_year)["overrides"] == 0
    np.testing.assert_array_equal(raw.levels, rule.levels)
    np.testing.assert_array_equal(raw.equity, rule.equity)
    ref = reference_path(f.market, f.cfg, f.test_rows, Follow(targets, c - 1), False)
    assert raw.overrides == ref.overrides > 0


def test_a_policy_may_not_take_a_baselines_name():
    market, cfg, rows = build_case("toy")
    with pytest.raises(ValueError, match="trend_vol"):
        backtest_fold(market, cfg, rows, {"trend_vol": (lambda o, m: np.zeros(len(o), dtype=int), True)})


# --------------------------------------------------------------------------- config

def test_defaults():
    b = load_config().baseline
    assert (b.trend_bars, b.vol_bars, b.vol_target_ann, b.max_exposure, b.short_when_down) == (200, 20, 0.25, 1.0, False)


@pytest.mark.parametrize("override, key", [
    ("baseline.trend_bars=1", "baseline.trend_bars"),
    ("baseline.trend_bars=100000", "baseline.trend_bars"),
    ("baseline.vol_bars=1", "baseline.vol_bars"),
    ("baseline.vol_target_ann=0", "baseline.vol_target_ann"),
    ("baseline.vol_target_ann=25", "baseline.vol_target_ann"),  # percent instead of a fraction
    ("baseline.max_exposure=0", "baseline.max_exposure"),
    ("baseline.short_when_down=sometimes", "baseline.short_when_down"),
    ("baseline.trend_window=50", "baseline.trend_window"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value), str(err.value)


def test_the_rule_config_moves_only_the_backtest_key():
    from sentio_core.backtest import fold_backtest
    from sentio_core.config import sections_of

    assert "baseline" in sections_of(fold_backtest)[0]
    base, changed = load_config(), load_config(None, ["baseline.trend_bars=100"])
    assert base.section_hash("universe", "env", "masks", "costs") == changed.section_hash("universe", "env", "masks", "costs")
    assert base.section_hash("baseline") != changed.section_hash("baseline")


# --------------------------------------------------------------------------- where it is reported

def test_reported_beside_the_other_baselines():
    f = real_fold()
    paths = backtest_fold(f.market, f.cfg, f.test_rows, {})
    metrics = {k: p.metrics(f.market.periods_per_year) for k, p in paths.items()}
    assert set(metrics) == set(baselines.NAMES) and "trend_vol" in STRATEGIES and SHORT["trend_vol"] == "trend"
    assert {"trend_vol_equity", "trend_vol_drawdown", "trend_vol_level"} <= set(paths_frame(paths).columns)
    assert "trend_vol" in set(trades_frame(paths)["strategy"])
    row = fold_rows([f.span], fold_metrics=[metrics])[0]
    assert row["trend_vol_sharpe"] == round(metrics["trend_vol"]["sharpe"], 4)
    assert "trend_sharpe" in summary_rows([row])[0]

    training = type("T", (), {"timesteps": 1, "episodes": 1, "seconds": 1.0})()
    child = child_metrics("flat", metrics, training)
    assert child["trend_vol.sharpe"] == metrics["trend_vol"]["sharpe"]
    assert {f"{name}.max_drawdown" for name in baselines.NAMES} <= set(child)
