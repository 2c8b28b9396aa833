"""The pre-flight check: settings that leave no usable row are refused before any stage runs.

Golden bar counts are computed by hand from the fold layout of ``sentio_core/folds.py``; the
warm-up bound is held to the real feature table of the shipped data (it must never exceed it,
or the check would refuse settings that work).
"""

from __future__ import annotations

import pytest

from sentio_core.config import ConfigError, FeatureConfig, load_config, preflight
from sentio_core.data import load_panel
from sentio_core.features import build_features, feature_columns, first_complete_row
from sentio_core.frequency import bar_frequency

from .conftest import REPO

# a small layout: 2 folds of 100 test bars, 200 training bars, purge = lookback 30 + horizon 1
SMALL = ["env.lookback_bars=30", "folds.n_folds=2", "folds.test_bars=100", "folds.min_train_bars=200", "folds.step_bars=1"]
SMALL_FOLDS = 200 + 31 + 2 * 100  # 431 usable bars
DAILY_WARMUP = 59  # the longest default window, 60 bars (ret_60, rvol_60, skew_60, corr_60), leaves 59 rows


def test_warmup_golden():
    feats = FeatureConfig()
    assert feats.warmup_bars(1.0) == DAILY_WARMUP  # weekly HTF: 14 weeks x >= 4 sessions = 56 < 59
    assert feats.warmup_bars(78.0) == 14 * 78  # intraday: the HTF RSI over 14 sessions of 78 bars
    assert FeatureConfig(higher_timeframe="none").warmup_bars(78.0) == DAILY_WARMUP
    assert FeatureConfig(higher_timeframe="1mo").warmup_bars(1.0) == 14 * 19
    assert FeatureConfig(return_horizons=[1, 300]).warmup_bars(1.0) == 300 - 1
    # the cross-asset windows count only when the leveraged-vs-underlying features exist
    assert FeatureConfig(corr_bars=500).warmup_bars(1.0) == 499
    assert FeatureConfig(corr_bars=500).warmup_bars(1.0, cross_asset=False) == DAILY_WARMUP


@pytest.mark.parametrize("name, data, overrides", [
    ("base", "data/daily", []),
    ("intraday", "data/5min", []),
    ("base", "data/daily", ["features.return_horizons=[1, 250]", "features.higher_timeframe=1mo"]),
], ids=["daily", "5min", "daily-long-windows"])
def test_warmup_is_a_lower_bound_of_the_real_warmup(name, data, overrides):
    cfg = load_config(REPO / "configs" / f"{name}.yaml", overrides)
    panel, _ = load_panel(data, cfg.universe.symbols, cfg.data.timezone)
    freq = bar_frequency(panel["timestamp"].unique())
    feats = build_features(panel, cfg.universe, cfg.features, freq, cfg.data.calendar, cfg.data.timezone)
    assert cfg.features.warmup_bars(freq.bars_per_session) <= first_complete_row(feats)


@pytest.mark.parametrize("name, n_bars, per_session", [("base", 2590, 1.0), ("smoke", 2590, 1.0), ("intraday", 15960, 78.0)])
def test_shipped_configs_pass_on_shipped_data(name, n_bars, per_session):
    preflight(load_config(REPO / "configs" / f"{name}.yaml"), n_bars, per_session)


def test_fold_layout_golden():
    """Warm-up 59 + 431 fold bars: 490 bars are enough, 489 are not."""
    cfg = load_config(None, SMALL)
    need = DAILY_WARMUP + SMALL_FOLDS
    preflight(cfg, need)
    with pytest.raises(ConfigError) as err:
        preflight(cfg, need - 1)
    msg = str(err.value)
    assert f"{need - 1} aligned bars are too few for {need}" in msg
    for key in ("folds.n_folds", "folds.test_bars", "folds.min_train_bars", "features"):
        assert key in msg


def test_step_bars_rounds_the_usable_bars_down():
    """With step_bars 21 the layout uses a multiple of 21 usable bars: 441 >= 431 needs 441 + 59 bars."""
    cfg = load_config(None, SMALL[:-1] + ["folds.step_bars=21"])
    preflight(cfg, 441 + DAILY_WARMUP)
    with pytest.raises(ConfigError, match="folds.step_bars=21"):
        preflight(cfg, 440 + DAILY_WARMUP)


@pytest.mark.parametrize("override", [
    "features.return_horizons=[1, 2500]",  # the longest feature window eats the data
    "env.lookback_bars=900",  # the lookback (and with it the purge)
    "folds.n_folds=10",  # the folds
    "folds.embargo_bars=200",
])
def test_settings_that_leave_no_usable_row(override):
    with pytest.raises(ConfigError, match="aligned bars are too few"):
        preflight(load_config(None, [override]), 2590)


def test_each_feature_glob_must_match():
    names = ["QQQ_ret_1", "QQQ_rsi_14", "TQQQ_ret_1", "TQQQ_corr_60"]
    preflight(load_config(None, ["env.feature_columns=['*_ret_*', 'TQQQ_corr_*']"]), 2590, feature_columns=names)
    with pytest.raises(ConfigError) as err:
        preflight(load_config(None, ["env.feature_columns=['*_ret_*', 'SPY_*']"]), 2590, feature_columns=names)
    assert "env.feature_columns" in str(err.value) and "'SPY_*'" in str(err.value)
    assert "'*_ret_*'" not in str(err.value)  # only the dead pattern is named
    preflight(load_config(None, ["env.feature_columns=['SPY_*']"]), 2590)  # no names given: no glob check


def test_globs_against_the_real_feature_names():
    cfg = load_config(None, ["env.feature_columns=['*_rvol_*', 'QQQ_rsi_14']"])
    panel, _ = load_panel("data/daily", cfg.universe.symbols, cfg.data.timezone)
    freq = bar_frequency(panel["timestamp"].unique())
    names = feature_columns(build_features(panel, cfg.universe, cfg.features, freq, cfg.data.calendar, cfg.data.timezone))
    preflight(cfg, 2590, feature_columns=names)
    with pytest.raises(ConfigError, match="QQQ_rsi_15"):
        preflight(load_config(None, ["env.feature_columns=['QQQ_rsi_15']"]), 2590, feature_columns=names)
