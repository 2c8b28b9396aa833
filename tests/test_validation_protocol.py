"""The inner validation protocol: the slice inside each training window (never the test window or
its purge), the checkpoint kept by validation results alone, the seeds and the one chosen."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sentio_core.folds import FoldError, FoldSpan, PurgedWalkForward
from sentio_core.train import Budget, ValidationCallback, choose_seed, fold_training, train_policy
from tests.fixtures_market import real_fold
from tests.test_learning import TRAIN, toy_config, toy_market


def span_of(f, offset: int = 0) -> FoldSpan:
    return FoldSpan(fold=f.fold, train_start="", train_end="", test_start="", test_end="", purge_bars=f.purge_bars,
                    embargo_bars=f.embargo_bars, train_bars=f.train_bars, test_bars=f.test_bars,
                    train_rows=(offset + f.train_start, offset + f.train_end),
                    test_rows=(offset + f.test_start, offset + f.test_end))


@settings(max_examples=300, deadline=None)
@given(n=st.integers(200, 3000), k=st.integers(1, 6), test=st.integers(5, 200), purge=st.integers(0, 60),
       embargo=st.integers(0, 20), rolling=st.booleans(), train_bars=st.integers(50, 1500),
       validation=st.integers(0, 400), offset=st.integers(0, 100))
def test_the_validation_slice_never_touches_the_test_window_or_its_purge(n, k, test, purge, embargo, rolling,
                                                                          train_bars, validation, offset):
    splitter = PurgedWalkForward(k, test, purge, embargo, "rolling" if rolling else "expanding",
                                 train_bars if rolling else None, 1)
    try:
        folds = splitter.folds(n)
    except FoldError:
        return
    tests = [set(range(offset + f.test_start - f.purge_bars, offset + f.test_end)) for f in folds]  # test windows and their purges
    for f in folds:
        span = span_of(f, offset)
        try:
            learn, val = span.inner_split(validation)
        except FoldError as exc:
            assert "train.validation_bars" in str(exc) and f"fold {f.fold}" in str(exc)
            continue
        a, b = span.train_rows
        assert learn[0] == a and a < learn[1] <= b
        if val is None:
            assert validation == 0 and learn == (a, b)
            continue
        assert val == (b - validation, b)  # the window's last bars
        assert val[0] - learn[1] == f.purge_bars  # purged from what is learned, as the test window is
        own = set(range(*val))
        assert not own & tests[f.fold]
        assert not set(range(*learn)) & own


def test_a_slice_too_long_for_the_window_is_refused_by_name():
    f = PurgedWalkForward(1, 50, 10).folds(200)[0]
    with pytest.raises(FoldError, match=r"train.validation_bars \(130\).*fold 0"):
        span_of(f).inner_split(130)


class Scripted:
    """A validation score read from a script, call by call, recording the weights it was shown."""

    def __init__(self, scores):
        self.scores, self.seen = list(scores), []

    def __call__(self, model) -> float:
        self.seen.append({k: v.clone() for k, v in model.policy.state_dict().items()})
        return self.scores[len(self.seen) - 1]


def test_the_kept_checkpoint_is_the_best_validation_score():
    cfg, market = toy_config(), toy_market()
    from sentio_core.policies import build_model
    from sentio_core.train import vec_env

    model = build_model("ppo", vec_env(market, cfg, TRAIN), cfg.train, seed=1)
    script = Scripted([0.2, 0.9, 0.4, 0.9])  # the best twice: the earliest is kept
    callback = ValidationCallback(script, every=256)
    model.learn(total_timesteps=1024, callback=callback)
    assert [t for t, _ in callback.history] == [256, 512, 768, 1024]  # the end coincides with the last evaluation
    assert callback.best_timesteps == 512 and callback.best_score == 0.9
    callback.restore_best()
    kept = model.policy.state_dict()
    assert all(torch.equal(kept[k], script.seen[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], script.seen[-1][k]) for k in kept)  # training moved on after it


def test_patience_stops_a_seed_that_stopped_improving():
    cfg, market = toy_config(), toy_market()
    from sentio_core.policies import build_model
    from sentio_core.train import vec_env

    model = build_model("ppo", vec_env(market, cfg, TRAIN), cfg.train, seed=1)
    callback = ValidationCallback(Scripted([1.0, 0.5, 0.4, 0.3, 0.2, 0.1]), every=128, patience=2)
    model.learn(total_timesteps=10_000, callback=callback)
    assert callback.stopped_early and model.num_timesteps < 1000
    assert [round(s, 1) for _, s in callback.history][:3] == [1.0, 0.5, 0.4]


def test_the_best_seed_on_validation_is_chosen():
    runs = [dataclasses.make_dataclass("R", ["validation_sharpe"])(v) for v in (0.3, 1.2, 1.2, -0.5)]
    assert choose_seed(runs) == 1
    assert choose_seed([dataclasses.make_dataclass("R", ["validation_sharpe"])(None)] * 2) == 0


@pytest.fixture(scope="module")
def fold():
    return real_fold(("train.validation_bars=80", "train.eval_every=256", "train.seeds=2", "train.n_envs=4",
                      "train.n_steps=64", "train.batch_size=128"))


def _weights(model):
    return np.concatenate([p.detach().numpy().ravel() for p in model.policy.parameters()])


def test_what_is_trained_and_kept_never_reads_the_test_window(fold):
    """Scramble everything the test window (and its purge) holds: every seed trains, validates and
    is kept exactly as before."""
    budget = Budget(timesteps=768)
    before = fold_training(fold.cfg, fold.market, fold.span, "maskable_ppo", budget)
    c = fold.span.test_rows[0] - fold.span.purge_bars
    rng = np.random.default_rng(0)
    features = fold.market.features.copy()
    features[c:] = rng.normal(size=features[c:].shape).astype(np.float32)
    legs = [dataclasses.replace(leg, close=np.concatenate([leg.close[:c], leg.close[c:] * rng.uniform(0.5, 2.0, len(leg.close) - c)]))
            for leg in fold.market.legs]
    scrambled = dataclasses.replace(fold.market, features=features, legs=legs, _risk={})
    after = fold_training(fold.cfg, scrambled, fold.span, "maskable_ppo", budget)
    assert after.chosen == before.chosen and len(after.runs) == 2
    for x, y in zip(before.runs, after.runs):
        assert x.validation_curve == y.validation_curve and x.kept_timesteps == y.kept_timesteps
        np.testing.assert_array_equal(_weights(x.model), _weights(y.model))
    learn, val = fold.span.inner_split(80)
    assert before.validation_rows == val and val[1] == fold.span.train_rows[1] <= c


def test_seeds_differ_and_each_keeps_its_best_checkpoint(fold):
    training = fold_training(fold.cfg, fold.market, fold.span, "ppo", Budget(timesteps=768))
    seeds = [r.seed for r in training.runs]
    assert seeds == [fold.cfg.fold_seed(fold.span.fold) + k for k in range(2)]
    assert not np.array_equal(_weights(training.runs[0].model), _weights(training.runs[1].model))
    for run in training.runs:
        scores = [s for _, s in run.validation_curve]
        assert run.validation_sharpe == max(scores)
        assert run.kept_timesteps == run.validation_curve[scores.index(max(scores))][0]
    assert training.chosen == int(np.argmax([r.validation_sharpe for r in training.runs]))


def test_without_a_slice_the_last_weights_are_kept():
    cfg, market = toy_config(), toy_market()
    result = train_policy("ppo", market, cfg, TRAIN, seed=1, budget=Budget(timesteps=256))
    assert result.kept_timesteps is None and result.validation_sharpe is None and result.validation_curve == []


def test_the_report_shows_the_spread_over_seeds():
    from sentio_core.report import fold_rows, summary_rows

    f = PurgedWalkForward(1, 50, 10).folds(400)[0]
    metrics = {"maskable_ppo": {"sharpe": 0.9, "max_drawdown": 0.1},
               **{f"maskable_ppo_seed{k}": {"sharpe": s, "max_drawdown": 0.1} for k, s in enumerate((0.9, 0.3, -0.3))},
               "ppo": {"sharpe": 0.1, "max_drawdown": 0.2}}
    row = fold_rows([span_of(f)], fold_metrics=[metrics])[0]
    assert row["maskable_ppo_seeds_sharpe_mean"] == 0.3 and row["maskable_ppo_seeds_sharpe_sd"] == 0.6
    assert (row["maskable_ppo_seeds_sharpe_min"], row["maskable_ppo_seeds_sharpe_max"]) == (-0.3, 0.9)
    assert "ppo_seeds_sharpe_mean" not in row  # one seed: no spread
    assert summary_rows([row])[0]["mppo_seeds"] == "0.30±0.60"


def test_the_backtest_runs_every_seed_and_the_chosen_one_once(tmp_path, monkeypatch):
    """``ALGORITHM_seedK`` for each exported seed; the chosen seed's entry is the chosen policy object."""
    import tasks.backtest as stage
    from sentio_core.metadata import SeedSummary, TrainingSummary

    loaded = []
    monkeypatch.setattr(stage, "_policy", lambda path: loaded.append(path) or (object(), True))
    seeds = [SeedSummary(seed=7 + k, timesteps=1, seconds=1.0, stopped_by="timesteps") for k in range(3)]
    summary = TrainingSummary(fold=0, algorithm="ppo", timesteps=1, episodes=1, seconds=3.0, stopped_by="timesteps",
                              device="cpu", learning_rate=1e-3, budget={}, seed=8, seeds=seeds)
    trained = type("T", (), {"algorithm": "ppo", "training": summary, "seed_paths": ["s0", "s1", "s2"],
                             "require": lambda self: "chosen"})()
    policies = stage._policies([trained])
    assert list(policies) == ["ppo", "ppo_seed0", "ppo_seed1", "ppo_seed2"]
    assert policies["ppo_seed1"] is policies["ppo"] and loaded == ["chosen", "s0", "s2"]
