"""The promotion gate on hand-made fold metrics: each check alone decides, and says why."""

from __future__ import annotations

import pytest

from sentio_core.config import PromotionConfig
from sentio_core.promotion import promotion_gate, summarise


def fold(mppo: tuple[float, float], ppo: tuple[float, float] = (0.0, 0.1), underlying_mdd: float = 0.3) -> dict:
    """One fold's metrics: (Sharpe, max drawdown) of MaskablePPO and PPO; flat and buy-and-hold."""
    def m(sharpe: float, mdd: float) -> dict[str, float]:
        return {"sharpe": sharpe, "total_return": sharpe / 10, "max_drawdown": mdd, "turnover": 1.0, "overrides": 0.0}
    return {"maskable_ppo": m(*mppo), "ppo": m(*ppo), "flat": m(0.0, 0.0), "buy_hold_underlying": m(0.5, underlying_mdd)}


def test_a_policy_better_than_ppo_and_flat_and_no_deeper_than_the_index_is_champion():
    gate = promotion_gate([fold((1.0, 0.2)), fold((0.6, 0.25))], PromotionConfig())
    assert gate.passed and gate.alias == "champion"
    assert gate.reasons == ["pass: mean Sharpe 0.800 vs PPO 0.000 + 0.0", "pass: mean Sharpe 0.800 vs flat 0.000 + 0.0",
                            "pass: worst fold max drawdown 0.250 <= 1.0 x buy-and-hold underlying's 0.300"]


def test_the_drawdown_check_is_relative_to_holding_the_underlying_on_the_same_folds():
    # 0.35 is deeper than the index's worst fold (0.30): challenger, whatever the mask's limit was
    gate = promotion_gate([fold((1.0, 0.35)), fold((1.0, 0.1), underlying_mdd=0.2)], PromotionConfig())
    assert gate.alias == "challenger"
    assert gate.reasons[-1] == "FAIL: worst fold max drawdown 0.350 <= 1.0 x buy-and-hold underlying's 0.300"
    relaxed = promotion_gate([fold((1.0, 0.35))], PromotionConfig(max_drawdown_vs_underlying=1.5))
    assert relaxed.passed
    off = promotion_gate([fold((1.0, 0.9))], PromotionConfig(max_drawdown_vs_underlying=None))
    assert off.passed and len(off.reasons) == 2  # no drawdown line at all


def test_an_absolute_cap_is_a_line_of_its_own_when_set():
    gate = promotion_gate([fold((1.0, 0.25))], PromotionConfig(max_drawdown=0.2))
    assert not gate.passed and "FAIL: worst fold max drawdown 0.250 <= 0.2" in gate.reasons


@pytest.mark.parametrize("mppo, ppo, line", [
    ((0.1, 0.1), (0.2, 0.1), "FAIL: mean Sharpe 0.100 vs PPO 0.200 + 0.0"),
    ((-0.1, 0.1), (-0.5, 0.1), "FAIL: mean Sharpe -0.100 vs flat 0.000 + 0.0"),
])
def test_sharpe_checks(mppo, ppo, line):
    gate = promotion_gate([fold(mppo, ppo)], PromotionConfig())
    assert gate.alias == "challenger" and line in gate.reasons


def test_no_overrides_line_masked_argmax_cannot_override():
    """The masked policy's overrides are an invariant of the backtest (tests/test_backtest.py,
    tests/test_flow.py), not a gate check."""
    gate = promotion_gate([fold((1.0, 0.2))], PromotionConfig())
    assert not any("override" in r for r in gate.reasons)
    assert summarise([fold((1.0, 0.2))])["maskable_ppo"]["overrides"] == 0.0


def test_missing_strategies_are_refused():
    with pytest.raises(ValueError, match="buy_hold_underlying"):
        promotion_gate([{k: v for k, v in fold((1.0, 0.2)).items() if k != "buy_hold_underlying"}], PromotionConfig())
    with pytest.raises(ValueError, match="at least one fold"):
        promotion_gate([], PromotionConfig())
