"""The promotion gate on hand-made returns: each check alone decides, shows its value and threshold,
and a check that cannot judge is reported without gating."""

from __future__ import annotations

import numpy as np
import pytest

from sentio_core.config import PromotionConfig
from sentio_core.promotion import ChampionReturns, GateInputs, champion_overlap, promotion_gate, summarise
from sentio_core.trials import LedgerStats

T = 1000
STAMPS = [f"2020-01-01T00:00:00+{i:06d}" for i in range(T)]  # unique keys in bar order


def fold(mppo: tuple[float, float] = (1.0, 0.2), ppo: tuple[float, float] = (0.0, 0.1), underlying_mdd: float = 0.3) -> dict:
    """One fold's metrics: (Sharpe, max drawdown) of MaskablePPO and PPO; flat and buy-and-hold."""
    def m(sharpe: float, mdd: float) -> dict[str, float]:
        return {"sharpe": sharpe, "total_return": sharpe / 10, "max_drawdown": mdd, "turnover": 1.0, "overrides": 0.0}
    return {"maskable_ppo": m(*mppo), "ppo": m(*ppo), "flat": m(0.0, 0.0), "buy_hold_underlying": m(0.5, underlying_mdd)}


def noise(seed: int, drift: float = 0.0, sd: float = 0.01) -> np.ndarray:
    return np.random.default_rng(seed).normal(drift, sd, T)


def inputs(candidate=None, ppo=None, configurations=None, ledger=LedgerStats(1, 0.0, 1),
           champion=ChampionReturns("no champion")) -> GateInputs:
    cand = noise(0, drift=0.002) if candidate is None else candidate  # per-bar Sharpe 0.2: about 3.2 a year
    confs = configurations if configurations is not None else {"maskable_ppo": cand, "ppo": noise(1)}
    return GateInputs(STAMPS, cand, noise(1) if ppo is None else ppo, noise(2, drift=0.0003), confs, ledger, champion, 252.0)


def verdicts(gate) -> dict[str, str]:
    return {c.name: c.verdict for c in gate.checks}


def test_a_candidate_with_a_real_edge_passes_every_check_and_each_shows_its_value():
    gate = promotion_gate([fold()], inputs(), PromotionConfig(), seed=0)
    assert gate.passed and gate.alias == "champion"
    assert verdicts(gate) == {"deflated Sharpe": "pass", "PBO": "reported", "paired win over PPO": "pass",
                              "paired win over champion": "reported", "paired win over buy-and-hold": "reported",
                              "worst fold max drawdown vs underlying": "pass"}
    dsr = gate.evidence["deflated"]
    assert dsr["n_trials"] == 1 and dsr["expected_max_sharpe_ann"] == 0.0 and dsr["deflated_sharpe"] > 0.99
    assert all(c.threshold for c in gate.checks) and "no champion yet" in gate.reasons[3]


def test_the_same_sharpe_fails_once_the_ledger_holds_enough_trials():
    """Deflation: the candidate's Sharpe (about 0.2 per bar) against the best of 1000 trials whose
    Sharpe ratios vary with sd 0.08 per bar (expected best about 0.26)."""
    weak = noise(0, drift=0.0012)
    alone = promotion_gate([fold()], inputs(weak), PromotionConfig(), seed=0)
    many = promotion_gate([fold()], inputs(weak, ledger=LedgerStats(1000, 0.08**2, 5000)), PromotionConfig(), seed=0)
    assert verdicts(alone)["deflated Sharpe"] == "pass"
    assert verdicts(many)["deflated Sharpe"] == "FAIL" and not many.passed
    assert many.evidence["deflated"]["n_trials"] == 1000 and "1000 skill-free trials" in many.checks[0].detail


def test_pbo_gates_only_with_enough_configurations():
    cfg = PromotionConfig()
    overfit = {f"noise{k}": noise(10 + k) for k in range(6)}  # pure noise: PBO near 0.5
    gated = promotion_gate([fold()], inputs(configurations=overfit), cfg, seed=0)
    check = next(c for c in gated.checks if c.name == "PBO")
    assert check.verdict == "FAIL" and check.value > cfg.max_pbo and not gated.passed
    assert gated.evidence["pbo"]["splits"] == 12870 and len(gated.evidence["pbo"]["logit_quantiles"]) == 7
    three = promotion_gate([fold()], inputs(configurations=dict(list(overfit.items())[:3])), cfg, seed=0)
    assert verdicts(three)["PBO"] == "reported" and "fewer than 4 configurations" in three.reasons[1]
    edge = {**overfit, "edge": noise(0, drift=0.002)}  # one configuration with real edge: PBO near 0
    assert promotion_gate([fold()], inputs(configurations=edge), cfg, seed=0).evidence["pbo"]["pbo"] < 0.05


def test_a_candidate_no_better_than_ppo_fails_the_paired_test():
    same = noise(0, drift=0.001)
    gate = promotion_gate([fold()], inputs(same, ppo=same + noise(5, sd=0.001)), PromotionConfig(), seed=0)
    assert verdicts(gate)["paired win over PPO"] == "FAIL" and not gate.passed
    p = gate.evidence["paired"]["ppo"]
    assert p["low_ann"] < 0 < p["high_ann"] and p["resamples"] == 2000 and p["block_bars"] == pytest.approx(T ** (1 / 3))


def test_the_champion_is_judged_only_on_enough_bars_after_its_training_window():
    cand = noise(0, drift=0.002)
    cfg = PromotionConfig(min_champion_bars=100)
    few = ChampionReturns("scored", STAMPS[-50:], noise(7)[-50:].tolist(), version="3")
    assert verdicts(promotion_gate([fold()], inputs(cand, champion=few), cfg, seed=0))["paired win over champion"] == "reported"
    worse = ChampionReturns("scored", STAMPS[-400:], noise(7, drift=-0.001)[-400:].tolist(), version="3")
    gate = promotion_gate([fold()], inputs(cand, champion=worse), cfg, seed=0)
    assert verdicts(gate)["paired win over champion"] == "pass" and gate.evidence["paired"]["champion"]["bars"] == 400
    better = ChampionReturns("scored", STAMPS[-400:], (cand[-400:] + 0.003).tolist(), version="3")
    lost = promotion_gate([fold()], inputs(cand, champion=better), cfg, seed=0)
    assert verdicts(lost)["paired win over champion"] == "FAIL" and not lost.passed and "version 3" in lost.reasons[3]
    failed = promotion_gate([fold()], inputs(cand, champion=ChampionReturns("failed")), cfg, seed=0)
    assert verdicts(failed)["paired win over champion"] == "reported" and "could not be scored" in failed.reasons[3]


def test_champion_overlap_aligns_by_timestamp():
    cand = np.arange(T, dtype=float)
    champ = ChampionReturns("scored", [STAMPS[5], "elsewhere", STAMPS[2]], [50.0, 99.0, 20.0])
    mine, theirs, stamps = champion_overlap(STAMPS, cand, champ)
    assert mine.tolist() == [2.0, 5.0] and theirs.tolist() == [20.0, 50.0] and stamps == [STAMPS[2], STAMPS[5]]


def test_the_drawdown_check_is_relative_to_holding_the_underlying_on_the_same_folds():
    gate = promotion_gate([fold((1.0, 0.35)), fold((1.0, 0.1), underlying_mdd=0.2)], inputs(), PromotionConfig(), seed=0)
    assert gate.alias == "challenger" and verdicts(gate)["worst fold max drawdown vs underlying"] == "FAIL"
    assert promotion_gate([fold((1.0, 0.35))], inputs(), PromotionConfig(max_drawdown_vs_underlying=1.5), seed=0).passed
    off = promotion_gate([fold((1.0, 0.9))], inputs(), PromotionConfig(max_drawdown_vs_underlying=None), seed=0)
    assert off.passed and not any("drawdown" in c.name for c in off.checks)
    capped = promotion_gate([fold((1.0, 0.25))], inputs(), PromotionConfig(max_drawdown=0.2), seed=0)
    assert verdicts(capped)["worst fold max drawdown"] == "FAIL" and not capped.passed


def test_the_same_inputs_and_seed_give_the_same_verdicts():
    a = promotion_gate([fold()], inputs(), PromotionConfig(), seed=3)
    b = promotion_gate([fold()], inputs(), PromotionConfig(), seed=3)
    assert a.to_dict() == b.to_dict()


def test_no_overrides_line_masked_argmax_cannot_override():
    """The masked policy's overrides are an invariant of the backtest (tests/test_backtest.py,
    tests/test_flow.py), not a gate check."""
    gate = promotion_gate([fold()], inputs(), PromotionConfig(), seed=0)
    assert not any("override" in r for r in gate.reasons)
    assert summarise([fold()])["maskable_ppo"]["overrides"] == 0.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="buy_hold_underlying"):
        promotion_gate([{k: v for k, v in fold().items() if k != "buy_hold_underlying"}], inputs(), PromotionConfig(), seed=0)
    with pytest.raises(ValueError, match="at least one fold"):
        promotion_gate([], inputs(), PromotionConfig(), seed=0)
    with pytest.raises(ValueError, match="same bars"):
        promotion_gate([fold()], inputs(ppo=noise(1)[:-1]), PromotionConfig(), seed=0)
    with pytest.raises(ValueError, match="pbo_blocks must be even"):
        PromotionConfig(pbo_blocks=15)
