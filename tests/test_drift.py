"""Drift report: PSI worked by hand, its zero and monotonicity properties, KS against scipy, the
ranking of a shifted feature, features that must be skipped rather than scored NaN, regime
occupancy by hand, finite MLflow metrics, the markdown report and one error per bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from sentio_core.drift import (
    ROW_KEYS,
    DriftTable,
    feature_drift,
    ks,
    psi,
    psi_edges,
    psi_reading,
    regime_occupancy,
    summarise,
    to_markdown,
)

# Reference 0..7 with 4 bins: interior quantiles at positions 0.25*7, 0.5*7, 0.75*7 = 1.75, 3.5,
# 5.25, so the bins are {0,1} {2,3} {4,5} {6,7}: 2/8 = 0.25 of the reference in each.
REF = np.arange(8.0)
NAMES = [f"f{j}" for j in range(5)]


def normal_windows(shift_col: int | None = 3, shift: float = 1.0, seed: int = 0):
    """(2000, 5) reference and (500, 5) recent standard normals; one column shifted by ``shift``."""
    rng = np.random.default_rng(seed)
    ref, rec = rng.normal(size=(2000, 5)), rng.normal(size=(500, 5))
    if shift_col is not None:
        rec[:, shift_col] += shift
    return ref, rec


# --------------------------------------------------------------------------- psi


def test_psi_edges_golden():
    np.testing.assert_allclose(psi_edges(REF, 4), [1.75, 3.5, 5.25])


def test_psi_golden_without_empty_bins():
    """Recent [0, 2,3, 4,5, 6,7,7] -> proportions 1/8, 2/8, 2/8, 3/8 against 0.25 each:
    (0.125 - 0.25) ln(0.125/0.25) + (0.375 - 0.25) ln(0.375/0.25) = 0.125 ln 2 + 0.125 ln 1.5
    = 0.125 ln 3 = 0.13733 (the two middle bins contribute 0)."""
    recent = np.array([0, 2, 3, 4, 5, 6, 7, 7], dtype=float)
    assert psi(REF, recent, bins=4) == pytest.approx(0.125 * math.log(3), rel=1e-12)


def test_psi_golden_shift_with_empty_bin_and_overflow():
    """Recent 2..9 (shifted by 2): {2,3} -> bin 1, {4,5} -> bin 2, {6,7} and 8, 9 (beyond the
    reference's max, so in the top end bin) -> bin 3. Proportions 0, 0.25, 0.25, 0.5; the empty
    bin is floored at eps = 1e-4:
    (1e-4 - 0.25) ln(1e-4 / 0.25) + (0.5 - 0.25) ln(0.5 / 0.25) = 0.2499 ln 2500 + 0.25 ln 2
    = 1.955229 + 0.173287 = 2.128516."""
    expected = 0.2499 * math.log(2500) + 0.25 * math.log(2)
    assert psi(REF, np.arange(2.0, 10.0), bins=4) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(2.128516, abs=1e-6)


def test_psi_of_identical_samples_is_zero():
    x = np.random.default_rng(1).normal(size=1000)
    assert psi(x, x) == 0.0
    assert psi(x, np.random.default_rng(2).permutation(x)) == 0.0


def test_psi_grows_with_mean_shift():
    """Same seeded draws, recent shifted by increasing amounts: PSI strictly increases and
    crosses the conventional readings (stable for no shift, significant for one sigma)."""
    ref, base = normal_windows(shift_col=None)
    values = [psi(ref[:, 0], base[:, 0] + s) for s in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert psi_reading(values[0]) == "stable" and psi_reading(values[4]) == "significant"


def test_psi_drops_nans():
    x = np.random.default_rng(3).normal(size=200)
    y = x[:150] + 0.3
    with_nans = np.concatenate([y, [np.nan, np.inf, -np.inf]])
    assert psi(np.append(x, np.nan), with_nans) == psi(x, y)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=60),
       st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=60))
def test_psi_is_finite_non_negative_and_zero_on_itself(a, b):
    """Every term (r - p) ln(r / p) is >= 0, so PSI is too; a sample against itself scores 0."""
    a = np.array(a)
    if a.min() == a.max():
        a = np.append(a, a[0] + 1.0)
    value = psi(a, np.array(b))
    assert math.isfinite(value) and value >= 0.0
    assert psi(a, a) == 0.0


# --------------------------------------------------------------------------- ks


def test_ks_matches_scipy_on_shifted_normal():
    ref, rec = normal_windows()
    stat, pvalue = ks(ref[:, 3], rec[:, 3])
    expected = stats.ks_2samp(ref[:, 3], rec[:, 3])
    assert (stat, pvalue) == (pytest.approx(expected.statistic), pytest.approx(expected.pvalue))
    assert pvalue < 1e-10 and stat > 0.3


def test_ks_drops_nans():
    ref, rec = normal_windows()
    assert ks(np.append(ref[:, 0], np.nan), np.append(rec[:, 0], np.nan)) == ks(ref[:, 0], rec[:, 0])


# --------------------------------------------------------------------------- feature_drift


def test_feature_drift_ranks_the_shifted_feature_first():
    ref, rec = normal_windows(shift_col=3)
    table = feature_drift(ref, rec, NAMES)
    assert [r["feature"] for r in table.rows][0] == "f3"
    assert sorted(r["feature"] for r in table.rows) == NAMES and table.skipped == []
    psis = [r["psi"] for r in table.rows]
    assert psis == sorted(psis, reverse=True)
    top = table.rows[0]
    assert tuple(top) == ROW_KEYS
    assert top["recent_mean"] - top["ref_mean"] == pytest.approx(1.0, abs=0.15)
    assert top["psi"] > 0.25 and all(r["psi"] < 0.1 for r in table.rows[1:])


def test_feature_drift_skips_uncomparable_features_instead_of_nan():
    """Documented choice: a feature constant in the reference is *skipped* (quantile bins do not
    exist), even when the recent window varies; so is one with < 2 finite values on a side."""
    ref, rec = normal_windows()
    ref[:, 0] = 5.0                 # constant in the reference
    ref[:, 1], rec[:, 1] = 7.0, 7.0  # constant in both
    rec[:, 2] = np.nan
    rec[0, 2] = 1.0                 # one finite recent value
    table = feature_drift(ref, rec, NAMES)
    assert table.skipped == ["f0", "f1", "f2"]
    assert table.skip_reasons["f0"] == "constant in reference"
    assert "recent" in table.skip_reasons["f2"]
    assert [r["feature"] for r in table.rows] == ["f3", "f4"]
    assert all(math.isfinite(r[k]) for r in table.rows for k in ROW_KEYS[1:])


def test_feature_drift_constant_recent_is_scored():
    ref, rec = normal_windows()
    rec[:, 4] = 0.0
    row = {r["feature"]: r for r in feature_drift(ref, rec, NAMES).rows}["f4"]
    assert math.isfinite(row["psi"]) and row["psi"] > 0.25 and row["recent_std"] == 0.0


def test_feature_drift_drops_nans_per_column():
    ref, rec = normal_windows()
    holed_ref, holed_rec = ref.copy(), rec.copy()
    holed_ref[::7, 3], holed_rec[::5, 3] = np.nan, np.inf
    row = feature_drift(holed_ref, holed_rec, NAMES).rows[0]
    keep_ref, keep_rec = ref[np.arange(len(ref)) % 7 != 0, 3], rec[np.arange(len(rec)) % 5 != 0, 3]
    assert row["feature"] == "f3"
    assert row["psi"] == psi(keep_ref, keep_rec)
    assert row["ref_mean"] == pytest.approx(keep_ref.mean()) and row["recent_std"] == pytest.approx(keep_rec.std())


# --------------------------------------------------------------------------- regimes


def test_regime_occupancy_golden():
    """Reference means [0.5, 0.5, 0], recent means [0, 0.25, 0.75];
    TV = 0.5 (|0.5 - 0| + |0.5 - 0.25| + |0 - 0.75|) = 0.5 x 1.5 = 0.75."""
    occ = regime_occupancy(np.array([[1.0, 0, 0], [0, 1.0, 0]]), np.array([[0, 0, 1.0], [0, 0.5, 0.5]]))
    assert occ["reference"] == [0.5, 0.5, 0.0] and occ["recent"] == [0.0, 0.25, 0.75]
    assert occ["tv_distance"] == pytest.approx(0.75)


def test_regime_occupancy_identical_windows():
    p = np.random.default_rng(4).dirichlet(np.ones(3), size=50)
    assert regime_occupancy(p, p)["tv_distance"] == 0.0


# --------------------------------------------------------------------------- summary and report


def _report_inputs():
    ref, rec = normal_windows()
    ref[:, 0] = 1.0
    table = feature_drift(ref, rec, NAMES)
    occ = regime_occupancy(np.array([[0.9, 0.1], [0.7, 0.3]]), np.array([[0.2, 0.8], [0.4, 0.6]]))
    return table, occ


def test_summarise_is_finite_with_expected_keys_and_counts():
    table, occ = _report_inputs()
    s = summarise(table, occ)
    assert all(isinstance(v, float) and math.isfinite(v) for v in s.values())
    assert {"max_psi", "mean_psi", "n_psi_warn", "n_psi_alert", "share_psi_alert", "max_ks",
            "n_ks_reject_1pct", "regime_tv_distance", "regime_0_reference", "regime_1_recent"} <= set(s)
    assert s["max_psi"] == table.rows[0]["psi"]
    assert (s["n_psi_warn"], s["n_psi_alert"], s["share_psi_alert"]) == (1.0, 1.0, 0.25)
    assert s["n_features"] == 4.0 and s["n_skipped"] == 1.0
    # occupancy [0.8, 0.2] vs [0.3, 0.7]: TV = 0.5 (0.5 + 0.5) = 0.5
    assert s["regime_tv_distance"] == pytest.approx(0.5) and s["regime_0_reference"] == pytest.approx(0.8)


def test_summarise_golden_thresholds_and_empty_table():
    rows = [{"feature": n, "psi": p, "ks": 0.1, "ks_pvalue": pv, "ref_mean": 0.0, "recent_mean": 0.0,
             "ref_std": 1.0, "recent_std": 1.0}
            for n, p, pv in [("a", 0.3, 0.001), ("b", 0.25, 0.5), ("c", 0.1, 0.02), ("d", 0.05, 0.009)]]
    occ = {"reference": [1.0], "recent": [1.0], "tv_distance": 0.0}
    s = summarise(DriftTable(rows=rows, skipped=[]), occ)
    # warn: psi >= 0.1 -> a, b, c; alert: psi >= 0.25 -> a, b; p < 0.01 -> a, d
    assert (s["n_psi_warn"], s["n_psi_alert"], s["share_psi_alert"], s["n_ks_reject_1pct"]) == (3.0, 2.0, 0.5, 2.0)
    assert s["mean_psi"] == pytest.approx(0.175)
    empty = summarise(DriftTable(rows=[], skipped=["x"]), occ)
    assert all(math.isfinite(v) for v in empty.values()) and empty["max_psi"] == 0.0


def test_to_markdown_has_top_feature_regime_table_and_legend():
    table, occ = _report_inputs()
    md = to_markdown(table, occ, summarise(table, occ), top=2)
    assert "| f3 |" in md and "significant" in md
    assert md.count("\n| f") == 3  # the header "| feature |" and the top 2 feature rows
    assert "## Regime occupancy" in md and "| 0 | 0.8000 | 0.3000 | -0.5000 |" in md
    assert "- f0: constant in reference" in md
    assert "< 0.1 stable" in md and "- max_psi:" in md


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("reference, recent, match", [
    ([1.0], [1.0, 2.0], "reference needs at least 2 finite"),
    ([1.0, 2.0], [np.nan, 3.0], "recent needs at least 2 finite"),
    ([3.0, 3.0, 3.0], [1.0, 2.0], "reference is constant"),
    (np.ones((3, 2)), [1.0, 2.0], "reference must be 1-D"),
])
def test_psi_bad_inputs(reference, recent, match):
    with pytest.raises(ValueError, match=match):
        psi(np.asarray(reference), np.asarray(recent))


def test_psi_bad_parameters_and_ks_too_few():
    with pytest.raises(ValueError, match="bins"):
        psi(REF, REF, bins=1)
    with pytest.raises(ValueError, match="eps"):
        psi(REF, REF, eps=0.0)
    with pytest.raises(ValueError, match="recent needs at least 2"):
        ks(REF, [np.nan, 1.0])


def test_feature_drift_bad_inputs():
    ref, rec = normal_windows()
    with pytest.raises(ValueError, match="names has 4 entries but the arrays have 5 columns"):
        feature_drift(ref, rec, NAMES[:4])
    with pytest.raises(ValueError, match="reference has 5 columns but recent has 4"):
        feature_drift(ref, rec[:, :4], NAMES)
    with pytest.raises(ValueError, match="distinct"):
        feature_drift(ref, rec, ["a", "a", "b", "c", "d"])
    with pytest.raises(ValueError, match="recent must be 2-D"):
        feature_drift(ref, rec[:, 0], NAMES)


def test_regime_and_summary_bad_inputs():
    p = np.array([[0.5, 0.5]])
    with pytest.raises(ValueError, match="recent_probs rows must sum to 1"):
        regime_occupancy(p, np.array([[0.5, 0.6]]))
    with pytest.raises(ValueError, match="2 regimes but recent_probs has 3"):
        regime_occupancy(p, np.array([[0.2, 0.3, 0.5]]))
    with pytest.raises(ValueError, match="reference_probs has no rows"):
        regime_occupancy(np.empty((0, 2)), p)
    with pytest.raises(ValueError, match="psi_warn <= psi_alert"):
        summarise(DriftTable([], []), {"reference": [], "recent": [], "tv_distance": 0.0}, 0.3, 0.2)
