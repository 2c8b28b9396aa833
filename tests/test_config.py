"""The config schema: presets load, unknown keys and bad values are rejected with their key path."""

from __future__ import annotations

import pytest

from sentio_core.config import Config, ConfigError, flatten, load_config, parse_override

from .conftest import REPO


@pytest.mark.parametrize("name", ["base", "smoke", "intraday"])
def test_presets_load(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert isinstance(cfg, Config)
    assert cfg.universe.symbols == ["QQQ", "TQQQ", "SQQQ"]


def test_smoke_extends_base():
    base, smoke = load_config(REPO / "configs/base.yaml"), load_config(REPO / "configs/smoke.yaml")
    assert smoke.data == base.data and smoke.seed == base.seed
    assert smoke.folds.n_folds == 2 and smoke.regimes.backend == "hmm"


def test_default_is_base():
    assert load_config() == load_config(REPO / "configs/base.yaml")


@pytest.mark.parametrize(
    "raw, expected",
    [("a.b=null", None), ("a.b=3", 3), ("a.b=2.5", 2.5), ("a.b=true", True), ("a.b=false", False),
     ("a.b=text", "text"), ("a.b=[1, 2]", [1, 2]), ("a.b=x=y", "x=y")],
)
def test_override_values_are_yaml_scalars(raw, expected):
    path, value = parse_override(raw)
    assert path == ["a", "b"] and value == expected


def test_overrides_apply():
    cfg = load_config(None, ["folds.n_folds=3", "universe.short=null", "features.rsi_bars=10", "seed=11"])
    assert cfg.folds.n_folds == 3 and cfg.universe.short is None
    assert cfg.universe.symbols == ["QQQ", "TQQQ"]
    assert cfg.features.rsi_bars == 10 and cfg.seed == 11


def test_unknown_key_is_rejected_with_its_path():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["folds.n_fold=3"])
    assert "folds.n_fold" in str(err.value) and "unknown key" in str(err.value)


def test_unknown_section_is_rejected():
    with pytest.raises(ConfigError, match="trainer"):
        load_config(None, ["trainer.lr=0.1"])


def test_bad_value_names_the_key_path():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["folds.test_bars=-5", "regimes.backend=gmm"])
    msg = str(err.value)
    assert "folds.test_bars" in msg and "regimes.backend" in msg


def test_override_into_a_value_is_rejected():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["seed.x=1"])


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["folds.n_folds"])


def test_purge_defaults_to_lookback_plus_horizon():
    cfg = load_config(None, ["env.lookback_bars=20", "env.reward_horizon_bars=3"])
    assert cfg.folds.purge_bars is None and cfg.purge_bars == 23


def test_purge_below_lookback_plus_horizon_is_rejected():
    with pytest.raises(ConfigError, match="purge_bars"):
        load_config(None, ["folds.purge_bars=5"])


def test_rolling_needs_train_bars():
    with pytest.raises(ConfigError, match="train_bars"):
        load_config(None, ["folds.scheme=rolling"])


def test_macd_fast_must_be_below_slow():
    with pytest.raises(ConfigError, match="macd_fast_bars"):
        load_config(None, ["features.macd_fast_bars=30"])


def test_extends_loop_and_missing_file(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(a)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_section_hash_only_moves_with_its_section():
    base = load_config()
    changed = load_config(None, ["features.rsi_bars=10"])
    assert base.section_hash("data", "validation") == changed.section_hash("data", "validation")
    assert base.section_hash("features") != changed.section_hash("features")


def test_flatten_names_every_leaf():
    flat = flatten(load_config())
    assert flat["folds.n_folds"] == "5" and flat["data.timezone"] == "America/New_York"
    assert flat["features.return_horizons"] == "[1, 5, 20, 60]"


@pytest.mark.parametrize("override, key", [
    ("features.return_horizons=[-5]", "features.return_horizons.0"),  # a look-ahead feature
    ("features.return_horizons=[1, 0]", "features.return_horizons.1"),
    ("features.return_horizons=[]", "features.return_horizons"),
    ("features.return_horizons=[5, 5]", "features.return_horizons"),
    ("features.vol_windows=[1]", "features.vol_windows.0"),
    ("features.vol_windows=[20, 100000]", "features.vol_windows.1"),
    ("features.rsi_bars=1000000", "features.rsi_bars"),
    ("features.ewma_halflife_bars=1e9", "features.ewma_halflife_bars"),
    ("env.lookback_bars=5000", "env.lookback_bars"),
    ("env.vol_bars=0", "env.vol_bars"),
    ("folds.n_folds=1000", "folds.n_folds"),
    ("folds.step_bars=0", "folds.step_bars"),
    ("regimes.max_iter=10000000", "regimes.max_iter"),
    ("drift.recent_bars=100000000", "drift.recent_bars"),
    ("masks.min_hold_bars=0", "masks.min_hold_bars"),
    ("masks.session_close_minutes=1000", "masks.session_close_minutes"),
    ("train.net_arch=[64, 0]", "train.net_arch.1"),
    ("train.net_arch=[-1]", "train.net_arch.0"),
    ("train.device=gpu", "train.device"),
    ("train.device=cuda:x", "train.device"),
    ("seed=-1", "seed"),
    ("seed=4294967296", "seed"),
    ("seed=4294967295", "seed"),  # fold 4 would use seed + 4000
    ("registry.model_name=../evil", "registry.model_name"),
    ("registry.model_name=a/b", "registry.model_name"),
    ("registry.model_name=a..b", "registry.model_name"),
    ("registry.model_name=", "registry.model_name"),
    ("costs.half_spread_bps={QQQ: 0.5}", "costs.half_spread_bps"),
    ("costs.half_spread_bps.TQQQ=-1", "costs.half_spread_bps.TQQQ"),
    ("validation.max_jump_sigmas=0", "validation.max_jump_sigmas"),
    ("validation.jump_window_bars=5", "validation.jump_window_bars"),
    ("validation.max_zero_volume_bars=-1", "validation.max_zero_volume_bars"),
    ("validation.max_price_usd=0", "validation.max_price_usd"),
])
def test_out_of_bounds_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value), str(err.value)


@pytest.mark.parametrize("override", [
    "train.device=cpu", "train.device=cuda", "train.device=cuda:1", "train.device=auto",
    "seed=4294963295",  # the largest seed whose five fold seeds stay below 2**32
    "registry.model_name=my_model-2.1",
    "costs.half_spread_bps={default: 1.0}",
    "costs.half_spread_bps={QQQ: 0.5, TQQQ: 1.0, SQQQ: 1.5}",  # every traded leg, no default
    "features.return_horizons=[1, 2520]",
])
def test_in_bounds_values_load(override):
    load_config(None, [override])


def test_spread_needed_only_for_traded_legs():
    """With universe.short=null the short side is gone: TQQQ alone needs a spread."""
    cfg = load_config(None, ["universe.short=null", "costs.half_spread_bps={TQQQ: 1.0}"])
    assert cfg.costs.spread_bps("TQQQ") == 1.0
    with pytest.raises(ConfigError, match="TQQQ"):
        load_config(None, ["universe.short=null", "costs.half_spread_bps={QQQ: 1.0}"])


def test_cli_bad_window_is_a_usage_error(capsys):
    """`--set features.return_horizons=[-5]` once built a look-ahead feature; now it exits 2 naming the key."""
    from sentio.cli import main

    code = main(["folds", "--config", str(REPO / "configs/base.yaml"), "--set", "features.return_horizons=[-5]"])
    assert code == 2
    out, err = capsys.readouterr()
    assert "features.return_horizons.0" in err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("value", ["0", "-0.5", "1.01", "5"])
def test_feature_max_corr_outside_0_1_is_rejected(value):
    with pytest.raises(ConfigError, match=r"env\.feature_max_corr"):
        load_config(None, [f"env.feature_max_corr={value}"])


@pytest.mark.parametrize("value, expected", [("1.0", 1.0), ("0.5", 0.5), ("null", None)])
def test_feature_max_corr_in_0_1_or_null_loads(value, expected):
    assert load_config(None, [f"env.feature_max_corr={value}"]).env.feature_max_corr == expected
