"""Backtest metrics: golden numbers worked by hand, a slow reference for drawdowns, edge cases
that must not produce NaN, seeded bootstrap determinism and the probabilistic Sharpe's anchors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sentio_core.frequency import BarFrequency
from sentio_core.metrics import (
    METRIC_KEYS,
    MetricsError,
    bar_returns,
    block_bootstrap_ci,
    cvar,
    drawdown,
    max_drawdown,
    max_drawdown_bars,
    performance,
    probabilistic_sharpe,
    sharpe,
    sortino,
)

# Up 10%, down 10%, up 10%: r = [0.1, -0.1, 0.1], T = 3.
EQUITY = np.array([100.0, 110.0, 99.0, 108.9])
DAILY_PPY = BarFrequency(None, 1.0).periods_per_year  # 252
FIVE_MIN_PPY = BarFrequency(5.0, 78.0).periods_per_year  # 252 x 78 = 19,656


def test_frequency_contract():
    assert DAILY_PPY == 252.0 and FIVE_MIN_PPY == 252.0 * 78


def test_golden_path_metrics():
    """Peaks 100, 110, 110, 110 -> drawdown 0, 0, 1 - 99/110 = 0.1, 1 - 108.9/110 = 0.01;
    two consecutive points under water; total return 108.9 / 100 - 1 = 0.089."""
    np.testing.assert_allclose(bar_returns(EQUITY), [0.1, -0.1, 0.1])
    np.testing.assert_allclose(drawdown(EQUITY), [0.0, 0.0, 0.1, 0.01], atol=1e-15)
    assert max_drawdown(EQUITY) == pytest.approx(0.1)
    assert max_drawdown_bars(EQUITY) == 2
    m = performance(EQUITY, periods_per_year=DAILY_PPY)
    assert m["total_return"] == pytest.approx(0.089)
    # 3 bars = 3/252 years -> CAGR = 1.089^(252/3) - 1 = 1.089^84 - 1 (about 1,287)
    assert m["cagr"] == pytest.approx(1.089**84 - 1)
    assert m["calmar"] == pytest.approx((1.089**84 - 1) / 0.1)
    assert m["max_drawdown"] == pytest.approx(0.1) and m["max_drawdown_bars"] == 2.0
    assert m["n_bars"] == 3.0


def test_golden_sharpe_sortino_and_intraday_scaling():
    """mean = 0.1/3 = 1/30; deviations 2/30, -4/30, 2/30 -> var (ddof=1) = (4+16+4)/900/2 = 12/900,
    std = sqrt(12)/30; per-bar Sharpe = 1/sqrt(12); annual: sqrt(252/12) = sqrt(21) = 4.5826.
    Downside deviation = sqrt(mean(0, 0.01, 0)) = 0.1/sqrt(3); per-bar Sortino = (1/30) / (0.1/sqrt(3))
    = 1/sqrt(3); annual: sqrt(252/3) = sqrt(84) = 9.1652. Volatility = sqrt(12)/30 x sqrt(252) = 1.8330."""
    daily = performance(EQUITY, periods_per_year=DAILY_PPY)
    assert daily["sharpe"] == pytest.approx(math.sqrt(21))
    assert daily["sortino"] == pytest.approx(math.sqrt(84))
    assert daily["volatility"] == pytest.approx(math.sqrt(12) / 30 * math.sqrt(252))
    # the same bars read as 5-minute bars: 78 per session -> every ratio scales by sqrt(78)
    intraday = performance(EQUITY, periods_per_year=FIVE_MIN_PPY)
    assert intraday["sharpe"] == pytest.approx(math.sqrt(252 * 78 / 12))  # 40.472
    assert intraday["sharpe"] / daily["sharpe"] == pytest.approx(math.sqrt(78))
    assert intraday["sortino"] / daily["sortino"] == pytest.approx(math.sqrt(78))
    assert intraday["volatility"] / daily["volatility"] == pytest.approx(math.sqrt(78))


def test_golden_cvar():
    """T = 3: worst max(1, floor(0.15)) = 1 return, -0.1 -> CVaR 0.1. T = 40: worst floor(2.0) = 2
    returns, -0.05 and -0.03 -> CVaR = 0.04."""
    assert performance(EQUITY, periods_per_year=DAILY_PPY)["cvar_5"] == pytest.approx(0.1)
    r = np.array([0.01] * 19 + [-0.05] + [0.01] * 19 + [-0.03])
    equity = 100 * np.concatenate(([1.0], np.cumprod(1 + r)))
    assert cvar(r) == pytest.approx(0.04)
    assert performance(equity, periods_per_year=DAILY_PPY)["cvar_5"] == pytest.approx(0.04)


def test_golden_trading_metrics():
    """exposure [1, -1, 0] -> mean |x| = 2/3; exposed bars 1 and 2 returned +0.1 and -0.1 -> win rate 1/2.
    turnover [0, 0.5, 0.25] -> mean 0.25 x 252 = 63 per year; 2 bars traded.
    costs $[0, 1, 0.5] -> 1.5 / 100 = 0.015 of initial equity; per year 0.015 x 252 / 3 = 1.26."""
    m = performance(EQUITY, periods_per_year=DAILY_PPY, exposure=np.array([1.0, -1.0, 0.0]),
                    turnover=np.array([0.0, 0.5, 0.25]), costs=np.array([0.0, 1.0, 0.5]), overrides=4)
    assert m["exposure"] == pytest.approx(2 / 3) and m["win_rate"] == pytest.approx(0.5)
    assert m["turnover"] == pytest.approx(63.0) and m["n_trades"] == 2.0
    assert m["cost_drag"] == pytest.approx(0.015) and m["cost_drag_ann"] == pytest.approx(1.26)
    assert m["overrides"] == 4.0
    assert performance(EQUITY, periods_per_year=DAILY_PPY, turnover=np.ones(3), n_trades=7)["n_trades"] == 7.0


def _assert_clean(m: dict) -> None:
    assert tuple(m) == METRIC_KEYS
    assert all(type(v) is float and math.isfinite(v) for v in m.values()), m


def test_flat_path_is_zero_not_nan():
    """Zero variance, no loss, no drawdown: every ratio is defined as 0.0."""
    m = performance(np.full(10, 100.0), periods_per_year=DAILY_PPY)
    _assert_clean(m)
    for k in ("total_return", "cagr", "volatility", "sharpe", "sortino", "calmar", "max_drawdown",
              "max_drawdown_bars", "cvar_5", "turnover", "cost_drag", "exposure", "win_rate", "n_trades"):
        assert m[k] == 0.0, k


@pytest.mark.parametrize("equity", [
    100 * 1.01 ** np.arange(20),           # constant return: std is rounding noise -> Sharpe 0
    np.array([100.0, 150.0, 400.0]),       # a short intraday rally: CAGR overflow is capped
    np.array([100.0, 90.0]),               # a single bar: std undefined
    np.array([100.0, 1e-3, 1e3]),          # near-total loss then recovery
])
def test_edge_paths_stay_finite(equity):
    m = performance(equity, periods_per_year=FIVE_MIN_PPY, exposure=np.ones(equity.size - 1))
    _assert_clean(m)


def test_constant_return_has_zero_sharpe():
    """Returns all 1% differ only by rounding (std ~1e-17): zero variance, so Sharpe is 0.0, not 1e15."""
    r = bar_returns(100 * 1.01 ** np.arange(20))
    assert sharpe(r, DAILY_PPY) == 0.0


def test_monotone_rise_has_no_sortino_or_calmar():
    m = performance(np.array([100.0, 101.0, 103.0, 104.0]), periods_per_year=DAILY_PPY)
    assert m["sortino"] == 0.0 and m["calmar"] == 0.0 and m["max_drawdown_bars"] == 0.0
    assert m["sharpe"] > 0


def _slow_drawdown(equity) -> tuple[float, int]:
    """Obvious loop: track the peak, the deepest fall and the longest run below the peak."""
    peak, worst, run, longest = equity[0], 0.0, 0, 0
    for x in equity:
        if x >= peak:
            peak, run = x, 0
        else:
            run += 1
            worst = max(worst, (peak - x) / peak)
            longest = max(longest, run)
    return worst, longest


def test_drawdown_matches_slow_reference():
    rng = np.random.default_rng(7)
    for _ in range(200):
        t = int(rng.integers(1, 60))
        equity = 100 * np.cumprod(np.concatenate(([1.0], 1 + rng.normal(0.0, 0.02, t))))
        worst, longest = _slow_drawdown(equity)
        assert max_drawdown(equity) == pytest.approx(worst, abs=1e-12)
        assert max_drawdown_bars(equity) == longest


def test_bootstrap_contains_estimate_and_is_deterministic():
    rng = np.random.default_rng(0)
    r = rng.normal(0.0005, 0.01, 2000)
    stat = lambda x: sharpe(x, DAILY_PPY)
    lo, hi = block_bootstrap_ci(r, stat, block=10, n=300, seed=1)
    assert lo < stat(r) < hi
    assert block_bootstrap_ci(r, stat, block=10, n=300, seed=1) == (lo, hi)
    assert block_bootstrap_ci(r, stat, block=10, n=300, seed=2) != (lo, hi)
    # narrower coverage gives a narrower interval
    lo90, hi90 = block_bootstrap_ci(r, stat, block=10, n=300, alpha=0.5, seed=1)
    assert lo <= lo90 < hi90 <= hi


def test_bootstrap_of_constant_series_is_a_point():
    assert block_bootstrap_ci(np.full(50, 0.01), np.mean, n=50, seed=0) == pytest.approx((0.01, 0.01))


def test_psr_anchor_and_monotonicity():
    """SR equal to the benchmark gives Phi(0) = 0.5; shifting returns up raises SR (std, skew and
    kurtosis unchanged) and so raises PSR."""
    r = np.random.default_rng(3).normal(0.0, 0.01, 500)
    sr = r.mean() / r.std(ddof=1)
    assert probabilistic_sharpe(r, benchmark_sharpe=sr) == pytest.approx(0.5)
    psrs = [probabilistic_sharpe(r + shift) for shift in (-0.001, 0.0, 0.0005, 0.001, 0.002)]
    assert all(a < b for a, b in zip(psrs, psrs[1:]))
    assert 0.0 <= psrs[0] and psrs[-1] <= 1.0
    assert probabilistic_sharpe(np.zeros(10)) == pytest.approx(0.5)


@pytest.mark.parametrize("equity, match", [
    ([100.0], "at least 2 points"),
    ([[100.0, 101.0]], "1-D"),
    ([100.0, np.nan, 101.0], "finite"),
    ([100.0, np.inf], "finite"),
    ([100.0, 0.0, 101.0], "strictly positive"),
    ([100.0, -5.0], "strictly positive"),
])
def test_bad_equity(equity, match):
    with pytest.raises(MetricsError, match=f"equity.*{match}"):
        performance(np.array(equity), periods_per_year=252)


@pytest.mark.parametrize("kw, match", [
    (dict(exposure=np.ones(2)), "exposure must have shape \\(3,\\)"),
    (dict(turnover=np.ones(4)), "turnover must have shape"),
    (dict(costs=np.array([0.0, np.nan, 0.0])), "costs must be finite"),
    (dict(turnover=np.array([0.0, -0.1, 0.0])), "turnover must be >= 0"),
    (dict(periods_per_year=0.0), "periods_per_year"),
    (dict(n_trades=-1), "n_trades"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        performance(EQUITY, **({"periods_per_year": 252} | kw))


def test_bad_uncertainty_arguments():
    r = np.zeros(20)
    with pytest.raises(MetricsError, match="block"):
        block_bootstrap_ci(r, np.mean, block=0, seed=0)
    with pytest.raises(MetricsError, match="alpha"):
        block_bootstrap_ci(r, np.mean, alpha=1.5, seed=0)
    with pytest.raises(MetricsError, match="returns"):
        probabilistic_sharpe(np.array([0.01]))
    with pytest.raises(MetricsError, match="level"):
        cvar(r, level=0.0)
    with pytest.raises(MetricsError, match="returns must be finite"):
        sortino(np.array([0.1, np.nan]), 252)


# --------------------------------------------------------------------------- slices and intervals


def test_regime_slices_by_hand():
    from sentio_core.metrics import regime_slices

    r = np.array([0.01, -0.02, 0.03, 0.00, 0.02])
    equity = 100 * np.concatenate([[1.0], np.cumprod(1 + r)])
    out = regime_slices(equity, np.array([0, 1, 0, 1, 0]), 3, 252)
    calm = r[[0, 2, 4]]
    assert out["regime_0_bars"] == 3 and out["regime_0_mean"] == pytest.approx(0.02)
    assert out["regime_0_sd"] == pytest.approx(0.01)  # sd of (0.01, 0.03, 0.02)
    assert out["regime_0_sharpe"] == pytest.approx(2.0 * np.sqrt(252))
    assert out["regime_0_return"] == pytest.approx(np.prod(1 + calm) - 1)
    assert out["regime_1_return"] == pytest.approx(0.98 * 1.0 - 1)
    assert out["regime_2_bars"] == 0 and out["regime_2_sharpe"] == 0.0 and out["regime_2_return"] == 0.0
    with pytest.raises(MetricsError, match="one regime per bar"):
        regime_slices(equity, np.zeros(4, dtype=int), 3, 252)


def test_pooled_regime_slices_equal_the_slices_of_the_joined_series():
    from sentio_core.metrics import pool_regime_slices, regime_slices

    rng = np.random.default_rng(0)
    parts = [(rng.normal(0.001, 0.01, n), rng.integers(0, 3, n)) for n in (40, 55, 31)]
    eq = lambda r: np.concatenate([[1.0], np.cumprod(1 + r)])
    pooled = pool_regime_slices([regime_slices(eq(r), g, 3, 252) for r, g in parts], 3, 252)
    joined = regime_slices(eq(np.concatenate([r for r, _ in parts])), np.concatenate([g for _, g in parts]), 3, 252)
    for key, value in joined.items():
        assert pooled[key] == pytest.approx(value, rel=1e-9, abs=1e-15), key


def test_sharpe_uncertainty_is_the_psr_and_a_seeded_bootstrap_interval():
    from sentio_core.metrics import sharpe_uncertainty

    r = np.random.default_rng(3).normal(0.001, 0.01, 250)
    equity = np.concatenate([[1.0], np.cumprod(1 + r)])
    out = sharpe_uncertainty(equity, 252, seed=4)
    assert out["psr"] == pytest.approx(probabilistic_sharpe(r))
    assert out["sharpe_low"] < sharpe(r, 252) < out["sharpe_high"]
    assert out == sharpe_uncertainty(equity, 252, seed=4)
    assert sharpe_uncertainty(np.array([1.0, 1.01, 1.02]), 252, seed=0) == {"psr": probabilistic_sharpe([0.01, 1.02 / 1.01 - 1]),
                                                                          "sharpe_low": 0.0, "sharpe_high": 0.0}
