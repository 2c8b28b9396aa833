"""Combinatorial purged splits through the pipeline on the real daily data: spans whose purge and
embargo cover the longest feature window, training, normalisation and regimes fitted on several
ranges without reading a test block, test groups backtested one by one and chained, and a whole
``folds.scheme: cpcv`` run ending in its backtest paths."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from sentio_core.backtest import Schedule, backtest_fold, chain, fold_backtest
from sentio_core.cpcv import CombinatorialPurged
from sentio_core.folds import cpcv_purge_bars, fold_spans
from sentio_core.market import train_statistics
from sentio_core.ranges import take

from .conftest import SMOKE
from .fixtures_market import single_blas_thread, smoke_cfg

CPCV = ("folds.scheme=cpcv", "folds.cpcv_groups=4", "folds.cpcv_test_groups=2")


@functools.lru_cache(maxsize=None)
def _data(overrides: tuple[str, ...] = CPCV):
    from sentio_core.data import build_manifest, build_panel
    from sentio_core.features import feature_table, first_complete_row

    cfg = smoke_cfg(overrides)
    bars, _, freq = build_panel(cfg, build_manifest(cfg))
    feats = feature_table(cfg, bars, freq)
    return cfg, bars, feats, freq, first_complete_row(feats)


def test_splits_purge_and_embargo_cover_the_longest_feature_window():
    cfg, _, feats, _, warmup = _data()
    spans = fold_spans(cfg, feats)
    gap = cpcv_purge_bars(cfg, warmup)
    assert warmup >= 60 and gap == cfg.env.lookback_bars + warmup + cfg.env.reward_horizon_bars  # weekly features included
    assert len(spans) == 6 and {s.test_groups for s in spans} == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)}
    for s in spans:
        train = np.concatenate([np.arange(a, b) for a, b in s.train_ranges])
        for a, b in s.test_ranges:
            assert not np.any((train >= a - gap) & (train < b + gap))
        assert s.purge_bars == s.embargo_bars == gap and s.train_bars == len(train)
        learn, validation = s.inner_split(cfg.train.validation_bars)
        rows = np.concatenate([np.arange(a, b) for a, b in learn])
        assert validation is not None and not np.any((rows >= validation[0] - gap) & (rows < validation[1] + gap))
        assert set(rows) < set(train)


def test_normalisation_over_several_ranges_is_the_statistics_of_their_rows():
    x = np.random.default_rng(0).normal(size=(50, 3))
    x[7, 1] = np.nan
    ranges = ((2, 10), (20, 31))
    mean, std = train_statistics(x, ranges)
    joined = np.concatenate([x[2:10], x[20:31]])
    np.testing.assert_allclose(mean, np.nanmean(joined, axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, np.nanstd(joined, axis=0), rtol=1e-12)
    assert np.array_equal(train_statistics(x, ((2, 10),))[0], train_statistics(x, (2, 10))[0])


def test_the_regime_model_of_a_split_never_reads_its_test_blocks():
    """Scramble the underlying's closes inside a split's test groups: the fitted model is the same."""
    import polars as pl

    from sentio_core.regimes import fold_regimes

    cfg, bars, feats, _, _ = _data()
    span = fold_spans(cfg, feats)[1]  # test groups (0, 2): training rows before, between and after
    stamps = feats["timestamp"]
    inside = np.zeros(len(stamps), dtype=bool)
    for a, b in span.test_ranges:
        inside[a + 1: b - 1] = True  # the test bars' own returns (the block's edges stay: their returns span the gap)
    hidden = set(stamps.filter(pl.Series(inside)).to_list())
    rng = np.random.default_rng(0)
    scrambled = bars.with_columns(pl.when(pl.col("timestamp").is_in(list(hidden)) & (pl.col("symbol") == "QQQ"))
                                  .then(pl.col("close") * pl.Series(rng.uniform(0.9, 1.1, bars.height)))
                                  .otherwise(pl.col("close")).alias("close"))
    with single_blas_thread():
        a, b = fold_regimes(cfg, bars, span), fold_regimes(cfg, scrambled, span)
    assert a.model == b.model
    assert a.probabilities.height == span.end_row - min(span.train_rows[0], span.test_rows[0])


@functools.lru_cache(maxsize=None)
def _split_market(index: int = 1):
    """A split's market (test groups (0, 2) for index 1: training rows before, between and after)."""
    from sentio_core.market import fold_market
    from sentio_core.regimes import fold_regimes

    cfg, bars, feats, freq, _ = _data()
    span = fold_spans(cfg, feats)[index]
    with single_blas_thread():
        reg = fold_regimes(cfg, bars, span)
    return cfg, span, fold_market(cfg, bars, feats, reg.probabilities, span, freq.periods_per_year)


def test_test_groups_are_backtested_one_by_one_and_chained():
    cfg, span, market = _split_market()
    rule = {"hold": (Schedule(np.full(market.n_rows, len(market.levels) - 1)), True)}
    chained = fold_backtest(cfg, market, span, rule)
    parts = [backtest_fold(market, cfg, rows, rule) for rows in span.testing_ranges]
    for name in ("hold", "trend_vol", "buy_hold_underlying"):
        r = chained[name].equity[1:] / chained[name].equity[:-1] - 1
        expected = np.concatenate([p[name].equity[1:] / p[name].equity[:-1] - 1 for p in parts])
        np.testing.assert_allclose(r, expected, rtol=1e-12, atol=1e-15)
        assert len(chained[name].timestamps) == sum(b - a for a, b in span.testing_ranges) + 1
    assert chained["hold"].overrides == sum(p["hold"].overrides for p in parts)
    assert chain([parts[0]["flat"]]) is parts[0]["flat"]


def test_training_episodes_stay_inside_the_training_ranges():
    from sentio_core.vec_env import EngineVecEnv

    cfg, span, market = _split_market()
    windows = [(a, b - 1) for a, b in span.train_ranges]
    env = EngineVecEnv(market, cfg, *windows[0], 64, 50, windows=windows)
    env.seed(0)
    start, end = env._windows(20_000)
    inside = np.zeros(len(start), dtype=bool)
    for a, b in windows:
        inside |= (start >= a) & (end <= b)
    assert inside.all() and np.all(end - start == 50)
    # every start a window holds is drawn about equally often
    counts = np.array([np.sum((start >= a) & (start <= b - 50)) for a, b in windows])
    holds = np.array([b - a - 50 + 1 for a, b in windows])
    np.testing.assert_allclose(counts / counts.sum(), holds / holds.sum(), atol=0.02)


@pytest.mark.slow
def test_a_cpcv_run_ends_in_its_backtest_paths_and_registers_nothing(prefect_harness, tmp_path):
    from flows.retrain import sentio_retrain

    out = sentio_retrain(config=str(SMOKE), overrides=[f"run.work_dir={tmp_path}", f"registry.export_dir={tmp_path}/x",
                                                       "folds.scheme=cpcv", "folds.cpcv_groups=3", "folds.cpcv_test_groups=1",
                                                       "train.timesteps=512", "train.seeds=1", "train.eval_every=256"])
    assert out.registration is None and out.cpcv is not None and not (tmp_path / "x").exists()
    assert out.cpcv.splits == 3 and out.cpcv.paths == 1 and out.cpcv.n_trials_logged == 6
    assert "cpcv-paths" in out.stages and "register" not in out.stages and "drift" not in out.stages
    summary = out.cpcv.summary["maskable_ppo"]
    assert summary["paths"] == 1 and summary["min"] == summary["max"] == out.cpcv.sharpes["maskable_ppo"][0]
    assert [row["test_groups"] for row in out.folds] == ["0", "1", "2"]
    # with one test group per split the single path is the three splits' test windows in order
    cv = CombinatorialPurged(3, 1, 0, 0)
    assert cv.paths() == [[0, 1, 2]]
