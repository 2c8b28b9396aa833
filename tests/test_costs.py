"""The shared cost model: golden numbers worked by hand, and higher costs never raise net P&L."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentio_core.config import ConfigError, CostConfig, load_config
from sentio_core.costs import CostModel, trade_costs


def cfg(**kw) -> CostConfig:
    base = dict(commission_mode="per_share", commission_per_share_usd=0.005, commission_min_usd=1.0, commission_bps=0.0,
                half_spread_bps={"TQQQ": 1.0, "default": 2.0}, impact_coef=0.5)
    return CostConfig(**(base | kw))


def test_golden_per_share():
    """1,000 shares at $50, $5bn traded, sigma 3%: commission $5, half-spread $5, impact $2.3717."""
    c = trade_costs(cfg(), "TQQQ", 1000, 50.0, 5e9, 0.03)
    assert c.commission == pytest.approx(5.0)
    assert c.spread == pytest.approx(5.0)
    assert c.impact == pytest.approx(0.5 * 0.03 * np.sqrt(50_000 / 5e9) * 50_000)
    assert c.impact == pytest.approx(2.371708245)
    assert c.total == pytest.approx(12.371708245)


def test_golden_minimum_commission_and_sign():
    """100 shares: 0.005 x 100 = $0.50 is below the $1 minimum; selling costs the same as buying."""
    buy, sell = (trade_costs(cfg(), "TQQQ", q, 50.0, 5e9, 0.03) for q in (100, -100))
    assert buy.commission == pytest.approx(1.0) and buy.spread == pytest.approx(0.5)
    assert buy.total == pytest.approx(sell.total)


def test_golden_bps_mode_and_default_spread():
    """$20,000 of an unlisted symbol at 3 bps commission + 2 bps default half-spread, no impact."""
    c = trade_costs(cfg(commission_mode="bps", commission_bps=3.0, impact_coef=0.0), "XYZ", 200, 100.0, 1e9, 0.02)
    assert c.commission == pytest.approx(6.0) and c.spread == pytest.approx(4.0) and c.impact == 0.0


def test_no_trade_costs_nothing():
    c = trade_costs(cfg(), "TQQQ", np.zeros(5), np.full(5, 50.0), np.zeros(5), np.full(5, 0.02))
    assert np.all(c.total == 0.0)


def test_vectorised_equals_scalar_loop():
    rng = np.random.default_rng(0)
    q, p, dv, s = rng.integers(-5000, 5000, 50), rng.uniform(10, 100, 50), rng.uniform(1e7, 1e10, 50), rng.uniform(0.005, 0.05, 50)
    fast = trade_costs(cfg(), "TQQQ", q, p, dv, s).total
    slow = [trade_costs(cfg(), "TQQQ", *args).total for args in zip(q, p, dv, s)]
    np.testing.assert_allclose(fast, slow)


def test_several_legs_at_once_equal_each_leg_alone():
    """The engine's call: (N, L) trades of L symbols in one call, each column as on its own."""
    rng = np.random.default_rng(1)
    c = cfg(half_spread_bps={"TQQQ": 1.5, "SQQQ": 3.0})
    q = rng.integers(-5000, 5000, (40, 2)) * (rng.random((40, 2)) < 0.7)  # some columns trade nothing
    p, dv, s = rng.uniform(10, 100, 2), rng.uniform(1e7, 1e10, 2), rng.uniform(0.005, 0.05, 2)  # one bar: a row per leg
    both = CostModel.of(c, ["TQQQ", "SQQQ"]).costs(q, p, dv, s)
    for j, sym in enumerate(["TQQQ", "SQQQ"]):
        alone = trade_costs(c, sym, q[:, j], np.full(40, p[j]), np.full(40, dv[j]), np.full(40, s[j]))
        for part in ("commission", "spread", "impact"):
            np.testing.assert_array_equal(getattr(both, part)[:, j], getattr(alone, part))
    dead = CostModel.of(c, ["TQQQ", "SQQQ"])
    assert np.all(dead.costs(np.array([[0.0, 5.0]]), p, np.array([0.0, 1e9]), s).impact[:, 0] == 0)  # no trade, no volume: free
    with pytest.raises(ValueError, match="dollar volume"):
        dead.costs(np.array([[5.0, 0.0]]), p, np.array([0.0, 1e9]), s)


def test_missing_spread_and_bad_volume_are_rejected():
    with pytest.raises(KeyError, match="half_spread_bps"):
        trade_costs(cfg(half_spread_bps={"QQQ": 1.0}), "TQQQ", 10, 50.0, 1e9, 0.02)
    with pytest.raises(ValueError, match="dollar volume"):
        trade_costs(cfg(), "TQQQ", [0, 10], [50.0, 50.0], [1e9, 0.0], [0.02, 0.02])


rates = st.floats(0, 50, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(q=st.integers(-100_000, 100_000), price=st.floats(1, 500), dv=st.floats(1e5, 1e11), sigma=st.floats(0, 0.2),
       gross=st.floats(-1e5, 1e5), a=rates, b=rates, mode=st.sampled_from(["per_share", "bps"]),
       which=st.sampled_from(["commission_per_share_usd", "commission_min_usd", "commission_bps", "impact_coef", "spread"]))
def test_higher_costs_never_raise_net_pnl(q, price, dv, sigma, gross, a, b, mode, which):
    low, high = sorted((a, b))

    def net(rate: float) -> float:
        kw = {"half_spread_bps": {"default": rate}} if which == "spread" else {which: rate / 100 if "usd" in which else rate}
        return gross - float(trade_costs(cfg(commission_mode=mode, **kw), "SQQQ", q, price, dv, sigma).total)

    assert net(high) <= net(low) + 1e-9


def test_costs_are_required_in_the_config(tmp_path):
    doc = tmp_path / "c.yaml"
    doc.write_text("data:\n  path: data/daily\n")
    with pytest.raises(ConfigError, match="costs"):
        load_config(doc)
    assert load_config().costs.spread_bps("SQQQ") == 1.5
