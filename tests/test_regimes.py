"""Regime models: ordered by volatility, filtered (never smoothed), fitted on the training window only."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from sentio_core.config import RegimeConfig, load_config
from sentio_core.regimes import RegimeModel, fit_regimes, fold_regimes, forward_filter, predict_next, regime_frame, regime_shares


def synthetic_returns(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of calm (0.5%), normal (1.5%) and stressed (4%) daily returns with known labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.tile([0, 1, 2, 1, 0, 2], 4), 60)
    vols = np.array([0.005, 0.015, 0.04])[labels]
    return rng.normal(0.0, vols), labels


@pytest.mark.parametrize("backend", ["markov", "hmm"])
def test_recovers_known_regimes_in_volatility_order(backend):
    r, labels = synthetic_returns()
    model = fit_regimes(r, RegimeConfig(backend=backend, n_starts=2), seed=1)
    vols = np.sqrt(model.variances) / 100
    assert list(vols) == sorted(vols)
    np.testing.assert_allclose(vols, [0.005, 0.015, 0.04], rtol=0.25)
    probs = forward_filter(model, r)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert (probs.argmax(axis=1) == labels).mean() > 0.8


@pytest.mark.parametrize("backend", ["markov", "hmm"])
def test_same_seed_same_model(backend):
    r, _ = synthetic_returns(3)
    cfg = RegimeConfig(backend=backend, n_starts=2, max_iter=50)
    assert fit_regimes(r[:720], cfg, seed=5) == fit_regimes(r[:720], cfg, seed=5)


def test_filtered_probability_at_t_ignores_later_bars():
    r, _ = synthetic_returns(1)
    model = fit_regimes(r[:600], RegimeConfig(backend="hmm", n_starts=2), seed=0)
    full = forward_filter(model, r)
    for t in (1, 50, 333, 600, 1000, len(r) - 1):
        np.testing.assert_array_equal(forward_filter(model, r[: t + 1])[t], full[t])


def test_a_carried_filter_equals_one_run_bit_for_bit():
    """A live decision advances the filter one return at a time from the last row's prediction."""
    r, _ = synthetic_returns(2)
    model = fit_regimes(r[:600], RegimeConfig(backend="hmm", n_starts=2), seed=0)
    full = forward_filter(model, r)
    carried = [forward_filter(model, r[:500])]
    for x in r[500:]:
        carried.append(forward_filter(model, np.array([x]), prior=predict_next(model, carried[-1][-1])))
    np.testing.assert_array_equal(np.concatenate(carried), full)


def test_forward_filter_matches_statsmodels_filtered_probabilities():
    """Our recursion equals statsmodels' Hamilton filter (not its smoother) with the same parameters."""
    from statsmodels.tsa.regime_switching.markov_regression import MarkovRegression

    r, _ = synthetic_returns(2)
    model = fit_regimes(r, RegimeConfig(backend="markov", n_starts=1), seed=0)
    x = r * 100
    mod = MarkovRegression(x, k_regimes=3, trend="c", switching_variance=True)
    params = []
    for name in mod.param_names:
        kind, idx = name.split("[")
        idx = idx.rstrip("]")
        if kind == "p":
            i, j = (int(v) for v in idx.split("->"))
            params.append(model.transition[i][j])
        elif kind == "const":
            params.append(model.means[int(idx)])
        else:
            params.append(model.variances[int(idx)])
    expected = mod.filter(np.array(params)).filtered_marginal_probabilities
    np.testing.assert_allclose(forward_filter(model, r), expected, atol=1e-8)


def test_model_round_trips_through_dict():
    r, _ = synthetic_returns(4)
    model = fit_regimes(r, RegimeConfig(backend="hmm", n_starts=1), seed=0)
    assert RegimeModel.from_dict(model.to_dict()) == model


def test_too_few_returns_and_nan_are_rejected():
    with pytest.raises(ValueError, match="too few"):
        fit_regimes(np.zeros(10), RegimeConfig(), seed=0)
    with pytest.raises(ValueError, match="NaN"):
        fit_regimes(np.array([0.01, np.nan] * 50), RegimeConfig(), seed=0)


def test_regime_shares():
    probs = np.array([[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    assert regime_shares(probs) == [0.5, 0.25, 0.25]


@pytest.fixture(scope="module")
def daily():
    cfg = load_config(None, ["regimes.backend=hmm", "regimes.n_starts=2", "folds.n_folds=2"])
    from sentio_core.data import build_manifest, build_panel
    from sentio_core.features import feature_table
    from sentio_core.folds import fold_spans

    bars, _, freq = build_panel(cfg, build_manifest(cfg))
    spans = fold_spans(cfg, feature_table(cfg, bars, freq))
    return cfg, bars, spans


def test_fold_regimes_are_fitted_on_the_training_window_only(daily):
    """Scrambling every bar after the training window leaves the fitted model and train probabilities as they were."""
    cfg, bars, spans = daily
    span = spans[0]
    a, b = span.train_rows
    before = fold_regimes(cfg, bars, span)
    rng = np.random.default_rng(0)
    scrambled = bars.with_columns(
        pl.when(pl.int_range(pl.len()).over("symbol") >= b)
        .then(pl.col("close") * pl.Series(np.exp(rng.normal(0, 0.05, bars.height))))
        .otherwise(pl.col("close"))
        .alias("close")
    )
    after = fold_regimes(cfg, scrambled, span)
    assert after.model == before.model
    assert before.train_shares == after.train_shares
    n_train = b - a
    np.testing.assert_array_equal(before.probabilities[:n_train, 1:].to_numpy(), after.probabilities[:n_train, 1:].to_numpy())
    assert not np.allclose(before.probabilities[n_train:, 1:].to_numpy(), after.probabilities[n_train:, 1:].to_numpy())


def test_fold_regime_frame_covers_train_start_to_test_end(daily):
    cfg, bars, spans = daily
    span = spans[1]
    out = fold_regimes(cfg, bars, span)
    assert out.probabilities.height == span.test_rows[1] - span.train_rows[0]
    assert out.probabilities["timestamp"][0].isoformat() == span.train_start
    assert out.probabilities["timestamp"][-1].isoformat() == span.test_end
    assert abs(sum(out.test_shares) - 1) < 1e-9


def test_regime_frame_names_each_regime_and_refuses_a_length_mismatch():
    stamps = pl.datetime_range(pl.datetime(2024, 1, 1), pl.datetime(2024, 1, 3), "1d", time_zone="UTC", eager=True)
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    frame = regime_frame(stamps, probs)
    assert frame.columns == ["timestamp", "regime_0", "regime_1"]
    assert frame["timestamp"].equals(stamps.alias("timestamp")) and np.array_equal(frame.drop("timestamp").to_numpy(), probs)
    with pytest.raises(ValueError, match="3 timestamps for 2 rows of regime probabilities"):
        regime_frame(stamps, probs[:2])
