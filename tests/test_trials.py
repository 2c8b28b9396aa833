"""The trial ledger's records: what one trial is, how records group, and what the gate reads from them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sentio_core.metadata import SeedSummary
from sentio_core.registration import gate_inputs, run_trials, seed_columns, variant_label
from sentio_core.returns import FoldReturns, strategy_returns
from sentio_core.trials import TrialRecord, frequency_label, group, ledger_stats, relevant, universe_label

from .fixtures_market import smoke_cfg


def record(seed_index: int = 0, fold: int = 0, data: str = "d1", returns=(0.01, -0.02, 0.005), **kw) -> TrialRecord:
    base = dict(experiment="sentio", universe="QQQ/TQQQ/SQQQ", bar_frequency="1d", config_hash="h1",
                algorithm="maskable_ppo", variant="mlp", seed=7 + seed_index, seed_index=seed_index, fold=fold,
                chosen=seed_index == 0, data_fingerprint=data, code_version="c1",
                timestamps=[f"t{fold}-{i}" for i in range(len(returns))], returns=list(returns))
    return TrialRecord(**(base | kw))


def test_a_trial_is_a_configuration_seed_data_and_code_with_its_folds_concatenated():
    recs = [record(0, 1, returns=(0.3, 0.4)), record(0, 0, returns=(0.1, 0.2)), record(1, 0), record(0, 0, data="d2")]
    trials = group(recs)
    assert len(trials) == 3  # seed 0 on d1, seed 1 on d1, seed 0 on d2 (a night with new data is a new trial)
    assert trials[0].folds == (0, 1) and trials[0].returns.tolist() == [0.1, 0.2, 0.3, 0.4]  # in fold order


def test_the_same_trial_logged_twice_counts_once():
    assert len(group([record(), record(), record(fold=1)])) == 1
    stats = ledger_stats(group([record(), record()]))
    assert stats.n_trials == 1 and stats.var_sharpe == 0.0


def test_the_same_trained_policies_registered_again_are_one_trial():
    """A registration re-run after a code change elsewhere logs the same weights under a new code
    version: the same policies looked at again, not a new try. New weights are a new trial."""
    first = [record(fold=f, policy_sha256=f"w{f}") for f in (0, 1)]
    again = [record(fold=f, policy_sha256=f"w{f}", code_version="c2") for f in (0, 1)]
    retrained = [record(fold=f, policy_sha256=f"x{f}", code_version="c3") for f in (0, 1)]
    assert len(group(first + again)) == 1 and len(group(first + again + retrained)) == 2
    unknown = [record(fold=f, code_version="c4") for f in (0, 1)]  # records from before weights were recorded
    assert len(group(first + unknown)) == 2


def test_ledger_stats_is_the_count_and_the_sample_variance_of_per_bar_sharpe():
    rs = [(0.01, 0.02, 0.03), (0.01, -0.01, 0.0, 0.02), (-0.02, 0.01, -0.01)]
    trials = group([record(k, returns=r) for k, r in enumerate(rs)])
    sharpes = [np.mean(r) / np.std(r, ddof=1) for r in rs]
    stats = ledger_stats(trials)
    assert stats.n_trials == 3 and stats.var_sharpe == pytest.approx(np.var(sharpes, ddof=1), rel=1e-12)
    with pytest.raises(ValueError, match="no trial"):
        ledger_stats([])


def test_relevant_is_same_experiment_universe_and_bar_frequency():
    recs = [record(), record(1, universe="SPY/UPRO/SPXU"), record(2, bar_frequency="5min"), record(3, experiment="x")]
    assert [r.seed_index for r in relevant(recs, "sentio", "QQQ/TQQQ/SQQQ", "1d")] == [0]


def test_labels():
    assert universe_label("QQQ", "TQQQ", "SQQQ", False) == "QQQ/TQQQ/SQQQ"
    assert universe_label("QQQ", None, None, True) == "QQQ/-/-+synthetic"
    assert frequency_label(None) == "1d" and frequency_label(5.0) == "5min"
    cfg = smoke_cfg(("train.policy=transformer", "train.critic=quantile", "train.cvar_weight=0.3"))
    assert variant_label(cfg.train) == "transformer+quantile+cvar0.3" and variant_label(smoke_cfg().train) == "mlp"


def _fold(fold: int, seeds: int) -> FoldReturns:
    rng = np.random.default_rng(fold)
    names = [f"{a}_seed{k}" for a in ("maskable_ppo", "ppo") for k in range(seeds)] if seeds > 1 else []
    names += ["maskable_ppo", "ppo", "buy_hold_underlying", "flat"]
    return FoldReturns(fold, [f"f{fold}-{i}" for i in range(40)], {n: rng.normal(0, 0.01, 40) for n in names})


def test_run_trials_records_every_seed_and_marks_the_chosen_one():
    cfg = smoke_cfg()
    summary = lambda chosen: SimpleNamespace(
        seed=chosen, seeds=[SeedSummary(seed=s, timesteps=1, seconds=1.0, stopped_by="timesteps") for s in (7, 8)])
    folds = [_fold(0, 2), _fold(1, 2)]
    trainings = {(f, a): summary(8 if a == "ppo" else 7) for f in (0, 1) for a in cfg.train.algorithms}
    tags = {"config_hash": "h", "data_fingerprint": "d", "code_version": "c"}
    hashes = {k: [f"{k[0]}{k[1]}-{s}" for s in (0, 1)] for k in trainings}
    out = run_trials(cfg, folds, trainings, tags, "QQQ/TQQQ/SQQQ", "1d", hashes)
    assert sorted(out) == [(0, "maskable_ppo"), (0, "ppo"), (1, "maskable_ppo"), (1, "ppo")]
    ppo = out[(1, "ppo")]
    assert [(r.seed, r.seed_index, r.chosen, r.policy_sha256) for r in ppo] == [(7, 0, False, "1ppo-0"), (8, 1, True, "1ppo-1")]
    assert ppo[1].returns == folds[1].returns["ppo_seed1"].tolist() and ppo[1].timestamps == folds[1].timestamps
    assert seed_columns("ppo", folds[0].returns) == ["ppo_seed0", "ppo_seed1"]
    assert seed_columns("ppo", _fold(0, 1).returns) == ["ppo"]


def test_gate_inputs_concatenate_the_folds_and_count_the_ledger():
    from sentio_core.promotion import ChampionReturns

    cfg = smoke_cfg()
    folds = [_fold(0, 2), _fold(1, 2)]
    ledger = [record(k, fold=f, returns=folds[f].returns[f"maskable_ppo_seed{k}"]) for f in (0, 1) for k in (0, 1)]
    x = gate_inputs(cfg, folds, ledger, ChampionReturns("no champion"), 252.0)
    assert x.candidate.tolist() == [*folds[0].returns["maskable_ppo"], *folds[1].returns["maskable_ppo"]]
    assert list(x.configurations) == ["maskable_ppo_seed0", "maskable_ppo_seed1", "ppo_seed0", "ppo_seed1"]
    assert x.ledger.n_trials == 2 and x.ledger.n_records == 4 and len(x.timestamps) == 80


def test_strategy_returns_reads_the_backtest_paths():
    import polars as pl

    frame = pl.DataFrame({"timestamp": ["a", "b", "c"], "x_equity": [100.0, 110.0, 99.0], "x_level": [None, 1.0, 1.0]})
    stamps, returns = strategy_returns(frame)
    assert stamps == ["b", "c"] and returns["x"].tolist() == pytest.approx([0.1, -0.1])
