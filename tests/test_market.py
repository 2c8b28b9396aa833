"""The observed feature columns: de-duplication fitted on the training rows only, and what the
fold market and the policy's metadata say about it."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentio_core.market import build_market, correlation, deduplicate, fit_features, policy_spec, training_matrix
from tests.fixtures_market import real_fold, smoke_cfg

TRAIN = (20, 140)  # training rows of the toy tables below (200 rows)


def toy_table(seed: int = 0, n: int = 200) -> pl.DataFrame:
    """Columns with known relations on every row: ``a``; ``a_affine`` = 2a + 1 (identical once
    normalised); ``a_mirror`` = -a + 1 % noise (|r| ~ 0.9999); ``b`` independent; ``const``."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    return pl.DataFrame({"a": a, "a_affine": 2.0 * a + 1.0, "a_mirror": -a + 0.01 * rng.normal(size=n), "b": b,
                         "const": np.full(n, 3.0)})


def fit(table: pl.DataFrame, names: list[str], max_corr: float = 0.95, rows: tuple[int, int] = TRAIN):
    return fit_features(table.lazy(), names, rows, 10.0, max_corr)


def test_the_first_of_near_collinear_columns_is_kept():
    names = ["a", "a_affine", "a_mirror", "b", "const"]
    kept, mean, std, dropped = fit(toy_table(), names)
    assert kept == ["a", "b"]
    assert dropped == {"a_affine": "a", "a_mirror": "a", "const": "constant"}
    # the statistics are the kept columns' own training statistics
    x = toy_table().select(kept).to_numpy()[TRAIN[0]: TRAIN[1]]
    np.testing.assert_array_equal(mean, x.mean(axis=0))
    # the order of the columns decides which twin stays
    kept, _, _, dropped = fit(toy_table(), ["a_mirror", "b", "a", "a_affine"])
    assert kept == ["a_mirror", "b"] and dropped == {"a": "a_mirror", "a_affine": "a_mirror"}


def test_the_threshold_bounds_the_absolute_correlation_of_kept_columns():
    """Every kept pair is at most the threshold apart; every dropped column is above it with its twin."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(300, 3))
    mix = rng.normal(size=(3, 12))
    table = pl.DataFrame(base @ mix + 0.3 * rng.normal(size=(300, 12)), schema=[f"f{j}" for j in range(12)])
    z, _, _ = training_matrix(table.lazy(), table.columns, (0, 300), 10.0)
    corr, constant = correlation(z)
    for threshold in (0.99, 0.9, 0.7, 0.5):
        kept, dropped = deduplicate(corr, constant, threshold)
        pairs = np.abs(corr[np.ix_(kept, kept)])[np.triu_indices(len(kept), 1)]
        assert (pairs <= threshold).all()
        assert all(abs(corr[j, twin]) > threshold for j, twin in dropped.items())
        assert sorted(kept + list(dropped)) == list(range(12))
    assert deduplicate(corr, constant, 1.0)[0] == list(range(12))  # 1.0 drops constant columns only


def test_constant_columns_are_dropped_even_when_they_vary_outside_the_training_rows():
    table = toy_table().with_columns(
        pl.when(pl.int_range(pl.len()) >= TRAIN[1]).then(pl.col("b") * 5).otherwise(7.0).alias("late"),
        pl.when(pl.int_range(pl.len()) < TRAIN[0] + 3).then(None).otherwise(0.5).alias("gappy"))  # NaN, then constant
    kept, _, _, dropped = fit(table, ["a", "late", "gappy", "const", "b"], max_corr=1.0)
    assert kept == ["a", "b"] and dropped == {"late": "constant", "gappy": "constant", "const": "constant"}


def test_correlation_in_float64_chunks_equals_numpy():
    """The chunked float64 sums against np.corrcoef of a float64 copy (the obvious reference)."""
    rng = np.random.default_rng(5)
    z = (rng.normal(size=(1_003, 6)) @ rng.normal(size=(6, 6))).astype(np.float32)
    z[:, 4] = 2.5
    corr, constant = correlation(z, chunk_rows=100)
    reference = np.corrcoef(z[:, [0, 1, 2, 3, 5]].astype(np.float64), rowvar=False)
    np.testing.assert_allclose(corr[np.ix_([0, 1, 2, 3, 5], [0, 1, 2, 3, 5])], reference, atol=1e-12)
    assert constant.tolist() == [False, False, False, False, True, False]
    assert corr[4, 4] == 1.0 and not corr[4, [0, 1, 2, 3, 5]].any()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), start=st.integers(0, 60), length=st.integers(30, 100),
       change=st.sampled_from(["noise", "copy", "nan", "constant", "scale"]))
def test_dedup_is_fitted_on_the_training_rows_only(seed, start, length, change):
    """Changing every value outside the training rows (noise, a copy of another column, NaN, a
    constant, a scale) never changes which columns are kept, nor their statistics."""
    rows = (start, start + length)
    rng = np.random.default_rng(seed)
    n, names = 200, [f"f{j}" for j in range(8)]
    x = rng.normal(size=(n, 3)) @ rng.normal(size=(3, 8)) + rng.uniform(0.01, 1.0) * rng.normal(size=(n, 8))
    outside = np.ones(n, dtype=bool)
    outside[rows[0]: rows[1]] = False
    y = x.copy()
    if change == "noise":
        y[outside] = rng.normal(size=(outside.sum(), 8)) * 100
    elif change == "copy":
        y[outside] = x[outside][:, [0]]  # every column collinear outside
    elif change == "nan":
        y[outside] = np.nan
    elif change == "constant":
        y[outside] = 1.0
    else:
        y[outside] *= rng.uniform(-10, 10, size=8)
    before = fit(pl.DataFrame(x, schema=names), names, 0.9, rows)
    after = fit(pl.DataFrame(y, schema=names), names, 0.9, rows)
    assert after[0] == before[0] and after[3] == before[3]
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[2], before[2])


# --- the fold market ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_tables():
    from sentio_core.data import build_manifest, build_panel
    from sentio_core.features import feature_table
    from sentio_core.folds import fold_spans

    cfg = smoke_cfg()
    bars, _, freq = build_panel(cfg, build_manifest(cfg))
    feats = feature_table(cfg, bars, freq)
    return bars, feats, fold_spans(cfg, feats)[0], freq


def collinear_regimes(feats: pl.DataFrame) -> pl.DataFrame:
    """Regime probabilities the de-duplication would drop if it saw them: regime_1 = 1 - regime_0,
    regime_2 constant."""
    p = np.linspace(0.0, 1.0, feats.height)
    return pl.DataFrame({"timestamp": feats["timestamp"], "regime_0": p, "regime_1": 1.0 - p,
                         "regime_2": np.zeros(feats.height)})


def test_market_observes_the_kept_features_then_every_regime_column(smoke_tables):
    bars, feats, span, freq = smoke_tables
    probs = collinear_regimes(feats)
    every = build_market(smoke_cfg(("env.feature_max_corr=null",)), bars, feats, probs, span.train_rows, freq.periods_per_year)
    lean = build_market(smoke_cfg(("env.feature_max_corr=0.95",)), bars, feats, probs, span.train_rows, freq.periods_per_year)
    selected = [c for c in feats.columns if c != "timestamp"]
    assert every.feature_names == selected + ["regime_0", "regime_1", "regime_2"] and every.dropped_features == {}
    assert every.feature_max_corr is None
    kept, _, _, dropped = fit_features(feats.lazy(), selected, span.train_rows, 10.0, 0.95)
    assert lean.feature_names == kept + ["regime_0", "regime_1", "regime_2"]
    assert lean.dropped_features == dropped and lean.feature_max_corr == 0.95
    assert set(dropped) | set(kept) == set(selected) and len(kept) < len(selected) // 2
    assert dropped["TQQQ_ret_1"] == "QQQ_ret_1"  # the 3x leg's return mirrors the underlying's
    # the kept columns, their statistics and the regime columns are the all-features market's, bit for bit
    cols = [every.feature_names.index(name) for name in lean.feature_names]
    np.testing.assert_array_equal(lean.features, every.features[:, cols])
    np.testing.assert_array_equal(lean.norm_mean, every.norm_mean[cols])
    np.testing.assert_array_equal(lean.norm_std, every.norm_std[cols])


def test_rescoring_with_fitted_features_fits_nothing(smoke_tables):
    """``fitted=`` re-applies a policy's own columns and statistics whatever the config's threshold."""
    bars, feats, span, freq = smoke_tables
    probs = collinear_regimes(feats)
    lean = build_market(smoke_cfg(("env.feature_max_corr=0.95",)), bars, feats, probs, span.train_rows, freq.periods_per_year)
    fitted = (lean.feature_names, lean.norm_mean, lean.norm_std)
    later = (span.train_rows[0] + 100, span.train_rows[1] + 100)  # another window: nothing is refitted on it
    for overrides in ((), ("env.feature_max_corr=0.5",), ("env.feature_max_corr=null",)):
        again = build_market(smoke_cfg(overrides), bars, feats, probs, later, freq.periods_per_year, fitted=fitted)
        assert again.feature_names == lean.feature_names
        np.testing.assert_array_equal(again.features, lean.features)
        np.testing.assert_array_equal(again.norm_mean, lean.norm_mean)
        assert again.dropped_features == {} and again.feature_max_corr is None


def test_policy_metadata_names_the_dropped_features():
    fold = real_fold()
    spec = policy_spec(fold.cfg, fold.market, fold.span)
    obs = spec.observation
    assert obs.features == fold.market.feature_names and obs.feature_max_corr == fold.cfg.env.feature_max_corr
    assert obs.dropped_features == fold.market.dropped_features and obs.dropped_features
    assert set(obs.dropped_features).isdisjoint(obs.features)
    assert type(spec).model_validate_json(spec.model_dump_json()) == spec
