"""Action masks: each rule alone on explicit examples, then properties of the composition over
random reachable states (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentio_core.config import MaskConfig
from sentio_core.masks import (
    RULES, MaskState, action_mask, advance_peak, budget_left, compose, compose_counted, counted_mask, drawdown_budget,
    exposure_cap, level_risk, liquidity, min_hold, nearest_allowed, reduce_only, regime_gate, rule_masks,
    session_window, stale_bar, vol_target,
)

LV = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
FLAT = 2


def idx(levels, *values) -> np.ndarray:
    """Boolean mask over ``levels`` that is True exactly at ``values``."""
    return np.isin(levels, np.array(values, dtype=float))


def eq(mask, expected):
    assert mask.dtype == bool and mask.shape == expected.shape
    np.testing.assert_array_equal(mask, expected)


# --------------------------------------------------------------------------- rules alone

def test_exposure_cap():
    eq(exposure_cap(LV, 0.5), idx(LV, -0.5, 0, 0.5))
    eq(exposure_cap(LV, 1.0), np.ones(5, bool))  # the cap itself is allowed
    eq(exposure_cap(LV, 0.49), idx(LV, 0))
    eq(exposure_cap(LV, 0.75), idx(LV, -0.5, 0, 0.5))


def test_vol_target_forbids_exposure_times_vol_above_budget():
    vol = np.array([0.9, 0.9, 0.0, 0.6, 0.6])  # short leg 90 %/yr, long leg 60 %/yr
    # budget 0.5: |-1| x .9 = .9 X, .5 x .9 = .45 ok, .5 x .6 = .3 ok, 1 x .6 = .6 X
    eq(vol_target(LV, vol, 0.5), idx(LV, -0.5, 0, 0.5))
    # budget exactly 0.6: 1 x 0.6 is at the budget, allowed; 0.9 is not
    eq(vol_target(LV, vol, 0.6), idx(LV, -0.5, 0, 0.5, 1.0))
    # flat is always allowed, whatever the volatility reported for it
    eq(vol_target(LV, np.full(5, 50.0), 0.01), idx(LV, 0))


def test_budget_left_by_hand():
    # limit 20 %: at the peak 20 % of equity may be lost; at 10 % down, 1 - 0.8 / 0.9 = 1/9 of today's equity
    assert budget_left(0.0, 0.2) == pytest.approx(0.2)
    assert budget_left(0.1, 0.2) == pytest.approx(1 / 9)
    assert budget_left(0.2, 0.2) == pytest.approx(0.0)
    assert budget_left(0.3, 0.2) < 0


def test_drawdown_budget_sizes_each_level_to_the_budget_left():
    limit = 0.2
    # one-bar plausible loss of each level (flat 0): 1 x 12 %, 0.5 x 12 %, 0, 0.5 x 8 %, 1 x 8 %
    risk = np.array([0.12, 0.06, 0.0, 0.04, 0.08])
    eq(drawdown_budget(LV, 0.0, limit, 0, risk), np.ones(5, bool))  # 20 % left: everything fits
    eq(drawdown_budget(LV, 0.1, limit, 0, risk), idx(LV, -0.5, 0, 0.5, 1))  # 11.1 % left: -1 (12 %) does not
    eq(drawdown_budget(LV, 0.15, limit, 0, risk), idx(LV, 0, 0.5))  # 5.9 % left: only 4 % fits
    eq(drawdown_budget(LV, 0.2, limit, 0, risk), idx(LV, 0))  # at the limit: flat
    eq(drawdown_budget(LV, 0.5, limit, 0, risk), idx(LV, 0))
    # a cool-down is flat whatever is left
    eq(drawdown_budget(LV, 0.0, limit, 3, risk), idx(LV, 0))
    # finer levels leave a small position where coarse ones leave none
    fine = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    fine_risk = fine * 0.08
    eq(drawdown_budget(fine, 0.18, limit, 0, fine_risk), np.isin(fine, [0.0, 0.25]))  # 2.4 % left: 0.25 x 8 % = 2 %


def test_level_risk_takes_each_legs_adverse_side():
    weights = np.array([[0.0, 1.0], [0.0, 0.5], [0.0, 0.0], [0.5, 0.0], [1.0, 0.0]])  # (A, L): long leg, short leg
    eq_risk = level_risk(weights, drop=np.array([0.1, 0.2]), rise=np.array([0.3, 0.4]))
    np.testing.assert_allclose(eq_risk, [0.2, 0.1, 0.0, 0.05, 0.1])  # shares held: their drop
    short_underlying = np.array([[-1.0], [0.0], [1.0]])  # negative shares: the rise is adverse
    np.testing.assert_allclose(level_risk(short_underlying, drop=np.array([0.1]), rise=np.array([0.3])), [0.3, 0.0, 0.1])


def test_advance_peak_stops_out_cools_down_and_rebases():
    """Limit 20 %, cool-down 3 bars, walked bar by bar."""
    peak, cool = 100.0, 0
    steps = []
    for equity in [110, 95, 88, 87, 86, 85, 90]:
        peak, cool = advance_peak(peak, equity, cool, 0.2, 3)
        steps.append((float(peak), int(cool)))
    assert steps == [
        (110, 0),  # new peak
        (110, 0),  # 13.6 % down
        (110, 3),  # 20 % down: stopped out, 3 bars flat
        (110, 2),
        (110, 1),
        (85, 0),  # the cool-down ends: the peak re-bases to this bar's equity
        (90, 0),  # and follows the equity up again
    ]
    # arrays of portfolios follow the same rule; no limit (rule off) only tracks the peak
    p, c = advance_peak(np.array([100.0, 100.0]), np.array([79.0, 81.0]), np.array([0, 0]), 0.2, 5)
    assert p.tolist() == [100.0, 100.0] and c.tolist() == [5, 0]
    p, c = advance_peak(100.0, 50.0, 0, None, 5)
    assert float(p) == 100.0 and int(c) == 0


def test_compose_counted_reports_what_each_rule_removed_beyond_those_above():
    a, b, c = idx(LV, -0.5, 0, 0.5, 1), idx(LV, 0, 0.5), idx(LV, -1)
    mask, removed = compose_counted([a, b, c])
    eq(mask, idx(LV, 0, 0.5))
    assert removed.tolist() == [1, 2, 0]  # c would empty the mask: it yields and removes nothing
    cfg = MaskConfig(rules=["exposure_cap", "drawdown"], max_abs_exposure=0.5, drawdown_limit=0.2)
    mask, removed = counted_mask(LV, state(drawdown=0.2, level_risk=np.array([0.1, 0.05, 0, 0.05, 0.1])), cfg)
    eq(mask, idx(LV, 0))
    assert removed.tolist() == [2, 2]  # the cap removes +-1, the drawdown then removes +-0.5 (not +-1 again)


def test_reduce_only_never_flips_side():
    eq(reduce_only(LV, 4), idx(LV, 0, 0.5, 1))
    eq(reduce_only(LV, 0), idx(LV, -1, -0.5, 0))
    eq(reduce_only(LV, FLAT), idx(LV, 0))


def test_regime_gate():
    thr = 0.6
    # above (and at) the threshold: nothing above max(current, 0)
    eq(regime_gate(LV, FLAT, 0.7, thr), idx(LV, -1, -0.5, 0))
    eq(regime_gate(LV, 3, 0.6, thr), idx(LV, -1, -0.5, 0, 0.5))
    eq(regime_gate(LV, 4, 0.99, thr), np.ones(5, bool))
    eq(regime_gate(LV, 0, 0.99, thr), idx(LV, -1, -0.5, 0))  # short held: max(-1, 0) = 0
    # below the threshold: everything
    for cur in range(5):
        eq(regime_gate(LV, cur, 0.5999, thr), np.ones(5, bool))


def test_session_window():
    for cur in range(5):
        eq(session_window(LV, cur, None, 30.0), np.ones(5, bool))  # daily bars
        eq(session_window(LV, cur, 10.0, 0.0), np.ones(5, bool))  # window 0 = off
        eq(session_window(LV, cur, 45.0, 30.0), np.ones(5, bool))  # outside the window
    eq(session_window(LV, 4, 30.0, 30.0), idx(LV, 0, 0.5, 1))  # at the window edge: reduce-only
    eq(session_window(LV, 3, 5.0, 30.0), idx(LV, 0, 0.5))
    eq(session_window(LV, 1, 0.0, 30.0), idx(LV, -0.5, 0))
    eq(session_window(LV, FLAT, 5.0, 30.0), idx(LV, 0))


def test_liquidity():
    part = np.array([0.2, 0.1, 0.05, 0.0, 0.051])  # level 0.5 held: participation 0
    eq(liquidity(part, 0.05), idx(LV, 0, 0.5))  # 0.05 itself allowed; 0.051 not
    eq(liquidity(part, 0.01), idx(LV, 0.5))  # the current level always passes
    eq(liquidity(part, 1.0), np.ones(5, bool))


def test_min_hold():
    eq(min_hold(LV, 4, 1, 3), idx(LV, 1.0))
    eq(min_hold(LV, 1, 2, 3), idx(LV, -0.5))
    eq(min_hold(LV, 4, 3, 3), np.ones(5, bool))  # held long enough
    eq(min_hold(LV, FLAT, 0, 3), np.ones(5, bool))  # flat is never held in place
    eq(min_hold(LV, 4, 1, 1), np.ones(5, bool))  # min 1 bar = no constraint (a new position has bars_held 1)


def test_stale_bar():
    for cur in range(5):
        eq(stale_bar(LV, cur, True), np.eye(5, dtype=bool)[cur])
        eq(stale_bar(LV, cur, False), np.ones(5, bool))


def state(**kw) -> MaskState:
    base = dict(current=FLAT, drawdown=0.0, bars_held=0, leg_vol_ann=np.array([0.9, 0.9, 0.0, 0.6, 0.6]),
                high_vol_prob=0.0, minutes_to_close=None, trade_participation=np.zeros(5), stale=False)
    return MaskState(**(base | kw))


def test_rule_masks_wires_config_to_the_rules():
    cfg = MaskConfig(max_abs_exposure=0.5, vol_target_ann=0.5, drawdown_limit=0.2,
                     regime_high_vol_prob=0.6, session_close_minutes=30, max_participation=0.05, min_hold_bars=3)
    s = state(current=4, drawdown=0.12, bars_held=5, high_vol_prob=0.7, minutes_to_close=10.0,
              trade_participation=np.array([0.2, 0.1, 0.04, 0.02, 0.0]), level_risk=np.array([0.2, 0.1, 0, 0.05, 0.1]))
    m = rule_masks(LV, s, cfg)
    assert list(m) == list(RULES)
    eq(m["stale"], np.ones(5, bool))
    eq(m["drawdown"], idx(LV, 0, 0.5))  # 1 - 0.8 / 0.88 = 9.1 % left: 0.5 long (5 %) fits, 1.0 (10 %) does not
    eq(m["exposure_cap"], idx(LV, -0.5, 0, 0.5))
    eq(m["vol_target"], idx(LV, -0.5, 0, 0.5))
    eq(m["regime"], np.ones(5, bool))
    eq(m["session"], idx(LV, 0, 0.5, 1))
    eq(m["liquidity"], idx(LV, 0, 0.5, 1))
    eq(m["min_hold"], np.ones(5, bool))
    eq(action_mask(LV, s, cfg), idx(LV, 0, 0.5))


def test_priority_stale_beats_drawdown_and_drawdown_beats_min_hold():
    cfg = MaskConfig(drawdown_limit=0.2, min_hold_bars=5)
    # at the drawdown limit on a stale bar: hold (stale ranks first)
    eq(action_mask(LV, state(current=4, drawdown=0.3, stale=True, bars_held=1), cfg), idx(LV, 1.0))
    # at the drawdown limit inside the minimum holding period: flat (drawdown ranks before min_hold)
    eq(action_mask(LV, state(current=4, drawdown=0.3, bars_held=1), cfg), idx(LV, 0))
    # reversing the priority lets min_hold win
    rev = MaskConfig(rules=["min_hold", "drawdown"], drawdown_limit=0.2, min_hold_bars=5)
    eq(action_mask(LV, state(current=4, drawdown=0.3, bars_held=1), rev), idx(LV, 1.0))


def test_compose_yields_and_empty_rules():
    a, b, c = idx(LV, 0, 1), idx(LV, -1), idx(LV, 1, -1)
    eq(compose([a, b, c]), idx(LV, 1))  # b would empty the mask: it yields
    eq(action_mask(LV, state(stale=True), MaskConfig(rules=[])), np.ones(5, bool))


def test_nearest_allowed_examples():
    mask = idx(LV, -0.5, 0)
    assert nearest_allowed(LV, mask, 4) == 2  # +1 -> 0 (closest allowed)
    assert nearest_allowed(LV, mask, 0) == 1  # -1 -> -0.5
    assert nearest_allowed(LV, mask, 1) == 1  # allowed: unchanged
    # a tie at the same distance and the same absolute exposure picks one of the two
    assert nearest_allowed(LV, idx(LV, -1, 1), FLAT) in (0, 4)
    lv = np.array([-0.5, 0.0, 0.25, 0.5])
    assert nearest_allowed(lv, np.array([False, True, False, True]), 2) == 1  # |0.25| tie: 0 beats 0.5


# --------------------------------------------------------------------------- properties

LEVEL_GRID = [-2.0, -1.5, -1.0, -0.75, -0.5, -0.25, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]


@st.composite
def reachable(draw):
    """Levels containing 0, a state a portfolio can be in, and a MaskConfig with a random subset
    and order of rules."""
    others = draw(st.lists(st.sampled_from(LEVEL_GRID), min_size=1, max_size=6, unique=True))
    levels = np.array(sorted(others + [0.0]))
    n = len(levels)
    cur = draw(st.integers(0, n - 1))
    frac = st.floats(0.0, 3.0, allow_nan=False)
    vols = np.array([draw(frac) for _ in range(n)]) * (levels != 0)
    part = np.array([draw(st.floats(0.0, 0.5)) for _ in range(n)])
    part[cur] = 0.0  # moving to the level already held trades nothing
    s = MaskState(
        current=cur, drawdown=draw(st.floats(0.0, 0.999)),
        bars_held=draw(st.integers(0 if levels[cur] == 0 else 1, 10)),  # a new position has been held 1 bar
        leg_vol_ann=vols, high_vol_prob=draw(st.floats(0.0, 1.0)),
        minutes_to_close=draw(st.one_of(st.none(), st.floats(0.0, 390.0))),
        trade_participation=part, stale=draw(st.booleans()), cooldown=draw(st.integers(0, 5)),
        level_risk=np.array([draw(st.floats(0.0, 1.0)) for _ in range(n)]) * np.abs(levels),
    )
    rules = draw(st.permutations(list(RULES)))
    rules = rules[: draw(st.integers(0, len(rules)))]
    cfg = MaskConfig(
        rules=rules, max_abs_exposure=draw(st.floats(0.05, 2.5)), vol_target_ann=draw(st.floats(0.05, 3.0)),
        drawdown_limit=draw(st.floats(0.01, 0.99)), drawdown_cooldown_bars=draw(st.integers(1, 30)),
        regime_high_vol_prob=draw(st.floats(0.01, 1.0)), session_close_minutes=draw(st.floats(0.0, 120.0)),
        max_participation=draw(st.floats(0.001, 0.3)), min_hold_bars=draw(st.integers(1, 6)),
    )
    return levels, s, cfg


PROP = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(reachable())
def test_composed_mask_is_never_empty(case):
    levels, s, cfg = case
    mask = action_mask(levels, s, cfg)
    assert mask.shape == levels.shape and mask.dtype == bool
    assert mask.any()


@PROP
@given(reachable())
def test_compose_is_the_plain_and_when_that_is_not_empty(case):
    levels, s, cfg = case
    masks = list(rule_masks(levels, s, cfg).values())
    plain = np.logical_and.reduce(masks) if masks else np.ones(len(levels), bool)
    if plain.any():
        eq(action_mask(levels, s, cfg), plain)
    else:  # the composed mask is then strictly larger, never empty
        mask = action_mask(levels, s, cfg)
        assert mask.any() and np.all(mask >= plain)


@PROP
@given(reachable())
def test_each_rule_alone_leaves_flat_or_current(case):
    levels, s, cfg = case
    flat = int(np.flatnonzero(levels == 0)[0])
    for rule in RULES:
        alone = MaskConfig(**(cfg.model_dump() | {"rules": [rule]}))
        m = rule_masks(levels, s, alone)[rule]
        assert m[flat] or m[s.current], rule


@PROP
@given(reachable())
def test_composed_mask_is_within_the_first_rule(case):
    """The first rule never yields (it alone is never empty), so it always has its way."""
    levels, s, cfg = case
    if not cfg.rules:
        return
    first = rule_masks(levels, s, cfg)[cfg.rules[0]]
    mask = action_mask(levels, s, cfg)
    assert np.all(mask <= first)
    # and every composed mask is a subset of each prefix AND that is non-empty
    masks = list(rule_masks(levels, s, cfg).values())
    prefix = np.ones(len(levels), bool)
    for m in masks:
        if (prefix & m).any():
            prefix &= m
            assert np.all(mask <= prefix)


@PROP
@given(reachable(), st.data())
def test_nearest_allowed_properties(case, data):
    levels, s, cfg = case
    mask = action_mask(levels, s, cfg)
    a = data.draw(st.integers(0, len(levels) - 1))
    b = nearest_allowed(levels, mask, a)
    assert mask[b]
    if mask[a]:
        assert b == a
    dist = np.abs(levels - levels[a])
    assert dist[b] == pytest.approx(dist[mask].min())
    # among the closest, the smallest absolute exposure
    closest = mask & np.isclose(dist, dist[mask].min())
    assert abs(levels[b]) == pytest.approx(np.abs(levels[closest]).min())


def test_every_rule_name_has_its_function_and_no_other():
    """The rule names are written once (``config.MASK_RULES``, the values ``masks.rules`` accepts);
    the masks module implements exactly those."""
    from sentio_core.config import MASK_RULES, MaskConfig
    from sentio_core.masks import RULE_FUNCTIONS

    assert set(RULE_FUNCTIONS) == set(MASK_RULES) and RULES is MASK_RULES
    assert MaskConfig().rules == list(MASK_RULES)


@settings(max_examples=300, deadline=None)
@given(peak=st.floats(1.0, 1e6), ratio=st.floats(0.0, 2.0), cooldown=st.integers(0, 5),
       limit=st.one_of(st.none(), st.floats(0.01, 0.99)), bars=st.integers(1, 30))
def test_one_portfolio_path_of_advance_peak_equals_the_array_form(peak, ratio, cooldown, limit, bars):
    equity = peak * ratio
    one = advance_peak(peak, equity, cooldown, limit, bars)
    arrays = advance_peak(np.array([peak, peak]), np.array([equity, equity]), np.array([cooldown, cooldown]), limit, bars)
    assert isinstance(one[0], float) and isinstance(one[1], int)
    assert one == (float(arrays[0][0]), int(arrays[1][0]))


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.floats(1.0, 1e6), st.floats(0.0, 2.0), st.integers(0, 5)), min_size=1, max_size=6),
       limit=st.one_of(st.none(), st.floats(0.01, 0.99)), bars=st.integers(1, 30))
def test_array_advance_peak_equals_each_portfolio_alone(rows, limit, bars):
    """Portfolios in and out of a cool-down side by side (the array form's fast path applies only
    when none is cooling)."""
    peak, equity, cool = (np.array(col) for col in zip(*[(p, p * r, c) for p, r, c in rows]))
    arrays = advance_peak(peak, equity, cool, limit, bars)
    for i in range(len(rows)):
        assert advance_peak(float(peak[i]), float(equity[i]), int(cool[i]), limit, bars) == (arrays[0][i], arrays[1][i])


def test_level_risk_of_rows_equals_each_row():
    weights = np.array([[0.0, 1.0], [0.0, 0.0], [0.5, 0.0], [-1.0, 0.0]])
    rng = np.random.default_rng(0)
    drop, rise = rng.random((7, 2)), rng.random((7, 2))
    rows = level_risk(weights, drop, rise)
    assert rows.shape == (7, 4)
    for t in range(7):
        np.testing.assert_array_equal(rows[t], level_risk(weights, drop[t], rise[t]))
