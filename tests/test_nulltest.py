"""The promotion gate's null test on the real smoke folds: 20 nights of skill-free random policies,
none promoted; and the gate's power: a policy that peeks at the next bar (an oracle no real policy
can be) does pass it, so the null result is not a gate that rejects everything."""

from __future__ import annotations

import numpy as np
import pytest

from sentio_core.algorithms import BASELINE, PRIMARY, seed_name
from sentio_core.backtest import Schedule, backtest_fold
from sentio_core.nulltest import fold_markets, null_gate, sticky_random_targets
from sentio_core.promotion import UNDERLYING, ChampionReturns, GateInputs, promotion_gate
from sentio_core.trials import Trial, ledger_stats

from .fixtures_market import single_blas_thread, smoke_cfg


@pytest.fixture(scope="module")
def folds():
    cfg = smoke_cfg()
    with single_blas_thread():
        return cfg, fold_markets(cfg)


def test_twenty_nights_of_random_policies_promote_none(folds):
    cfg, markets = folds
    result = null_gate(cfg, markets, n_runs=20, seeds=3, seed=cfg.seed)
    assert len(result.gates) == 20 and result.promoted == 0
    stopped = result.failed_checks()
    assert stopped["deflated Sharpe"] >= 15 and stopped["paired win over PPO"] >= 15  # each stops most on its own
    assert all(g.evidence["deflated"]["n_trials"] == 6 for g in result.gates)


def test_the_same_seed_gives_the_same_null_runs(folds):
    cfg, markets = folds
    a, b = (null_gate(cfg, markets, n_runs=2, seeds=2, seed=5) for _ in range(2))
    assert [g.to_dict() for g in a.gates] == [g.to_dict() for g in b.gates]


def test_sticky_targets_switch_at_the_asked_rate():
    t = sticky_random_targets(100_000, 5, 0.1, np.random.default_rng(0))
    changes = np.mean(t[1:] != t[:-1])
    assert changes == pytest.approx(0.1 * 4 / 5, abs=0.005)  # a redraw lands on the same level 1 time in 5
    assert set(np.unique(t)) == set(range(5))


def test_an_oracle_that_sees_the_next_bar_passes_the_gate(folds):
    """The gate's power: full exposure in the direction of the next bar's underlying move."""
    cfg, markets = folds
    rng = np.random.default_rng(1)
    per_fold = []
    for rows, m in markets:
        nxt = np.append(m.underlying.close[1:] / m.underlying.close[:-1] - 1.0, 0.0)
        oracle = np.where(nxt > 0, int(np.argmax(m.levels)), int(np.argmin(m.levels)))
        policies = {seed_name(PRIMARY, 0): (Schedule(oracle), True)}
        policies |= {seed_name(a, k): (Schedule(sticky_random_targets(m.n_rows, len(m.levels), 0.1, rng)), True)
                     for a, k in ((PRIMARY, 1), (PRIMARY, 2), (BASELINE, 0), (BASELINE, 1), (BASELINE, 2))}
        per_fold.append(backtest_fold(m, cfg, rows, policies))
    ppy = markets[0][1].periods_per_year
    ret = lambda p: p.equity[1:] / p.equity[:-1] - 1.0
    cols = {name: np.concatenate([ret(paths[name]) for paths in per_fold]) for name in per_fold[0]
            if name.startswith((PRIMARY, BASELINE))}
    stamps = [t for paths in per_fold for t in paths["flat"].timestamps[1:]]
    metrics = [{PRIMARY: p[seed_name(PRIMARY, 0)].metrics(ppy), BASELINE: p[seed_name(BASELINE, 0)].metrics(ppy),
                UNDERLYING: p[UNDERLYING].metrics(ppy), "flat": p["flat"].metrics(ppy)} for p in per_fold]
    x = GateInputs(stamps, cols[seed_name(PRIMARY, 0)], cols[seed_name(BASELINE, 0)],
                   np.concatenate([ret(p[UNDERLYING]) for p in per_fold]), cols,
                   ledger_stats([Trial((n,), (0, 1), r) for n, r in cols.items()]), ChampionReturns("no champion"), ppy)
    gate = promotion_gate(metrics, x, cfg.promotion, seed=cfg.seed)
    assert gate.passed, gate.reasons
