"""Drift between a reference window (one fold's training rows) and recent bars.

:func:`drift_report` is the stage: it selects the observed features and filters the regime
probabilities, then builds the report from four numpy/scipy pieces, in the order they are called:

* :func:`feature_drift` compares every feature column with :func:`psi` (Population Stability
  Index) and :func:`ks` (two-sample Kolmogorov-Smirnov) and returns a :class:`DriftTable`.
* :func:`regime_occupancy` compares the mean filtered regime probabilities of the two windows.
* :func:`summarise` flattens both into finite floats for MLflow.
* :func:`to_markdown` renders the human report.

Conventions:

* Reference arrays have N rows, recent arrays M rows; feature matrices have F columns, regime
  probability matrices K columns. Values are in the features' own units; PSI and KS are unitless.
* NaN and +/-inf are dropped per feature (per column) before anything is computed.
* Nothing here returns NaN. A feature that cannot be compared (fewer than 2 finite values on a
  side, or a constant reference, for which quantile bins do not exist) is *skipped*: it is listed
  in :attr:`DriftTable.skipped` with its reason in :attr:`DriftTable.skip_reasons`, never given a
  NaN score.
* Conventional PSI reading: below 0.1 stable, 0.1 to 0.25 moderate shift, above 0.25 significant
  (a value of exactly 0.25 counts as significant, as in :func:`summarise`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from scipy import stats

from sentio_core.config import Config, reads
from sentio_core.features import COLUMN_BLOCK, feature_columns
from sentio_core.market import Frame, select_features
from sentio_core.regimes import RegimeModel, forward_filter, underlying_returns

if TYPE_CHECKING:  # a record handed in by the folds stage (data only)
    from sentio_core.folds import FoldSpan

#: Conventional PSI reading: below this the distribution is stable.
PSI_STABLE = 0.1
#: Conventional PSI reading: above this the shift is significant.
PSI_SIGNIFICANT = 0.25
#: Keys of one :attr:`DriftTable.rows` entry, in order.
ROW_KEYS: tuple[str, ...] = (
    "feature", "psi", "ks", "ks_pvalue", "ref_mean", "recent_mean", "ref_std", "recent_std",
)


@dataclass(frozen=True)
class DriftTable:
    """Per-feature drift scores.

    :param rows: one dict per compared feature (keys :data:`ROW_KEYS`), sorted by PSI descending;
        every number is a finite float.
    :param skipped: names of features that could not be compared, in column order.
    :param skip_reasons: feature name -> why it was skipped.
    """

    rows: list[dict]
    skipped: list[str]
    skip_reasons: dict[str, str] = field(default_factory=dict)

    @classmethod
    def merged(cls, tables: list[DriftTable]) -> DriftTable:
        """One table from tables of consecutive column blocks, as :func:`feature_drift` over all the
        columns would give: rows by PSI descending, ties (and skipped features) in column order."""
        rows = sorted((row for t in tables for row in t.rows), key=lambda row: -row["psi"])
        return cls(rows=rows, skipped=[n for t in tables for n in t.skipped],
                   skip_reasons={k: v for t in tables for k, v in t.skip_reasons.items()})


# --------------------------------------------------------------------------- validation


def _finite(x, name: str, min_count: int = 2) -> np.ndarray:
    """The finite values of a 1-D array, or ValueError naming ``name``."""
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    a = a[np.isfinite(a)]
    if a.size < min_count:
        raise ValueError(f"{name} needs at least {min_count} finite values, got {a.size}")
    return a


def _matrix(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), got shape {a.shape}")
    return a


# --------------------------------------------------------------------------- scores


def psi_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Interior bin edges from the reference's quantiles, deduplicated, ascending.

    The quantiles at ``1/bins, ..., (bins-1)/bins`` (linear interpolation) split the real line into
    ``len(edges) + 1`` bins ``(-inf, e_1), [e_1, e_2), ..., [e_k, +inf)``; values beyond the
    reference's range therefore fall in the end bins. Ties in the reference (discrete features)
    collapse edges, giving fewer bins.

    :param reference: 1-D finite values (NaN already dropped).
    :param bins: number of equal-frequency bins requested, at least 2.
    :return: shape (k,), k <= bins - 1.
    """
    if not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    return np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def bin_proportions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` (1-D) in each bin of :func:`psi_edges`, shape (len(edges) + 1,)."""
    idx = np.searchsorted(edges, values, side="right")
    return np.bincount(idx, minlength=edges.size + 1) / values.size


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """Population Stability Index of ``recent`` against ``reference``.

    ``PSI = sum_b (r_b - p_b) * ln(r_b / p_b)`` with ``p`` and ``r`` the reference and recent
    proportions in the bins of :func:`psi_edges`, each floored at ``eps`` (no renormalisation), so
    an empty bin contributes a large but finite term. Every term is >= 0, hence PSI >= 0, and it is
    exactly 0 when both samples fill the bins in the same proportions.

    :param reference: shape (N,), the training window's values; NaN/inf dropped.
    :param recent: shape (M,), the recent bars' values; NaN/inf dropped.
    :param bins: equal-frequency bins requested (fewer when the reference has ties).
    :param eps: floor on a bin proportion, > 0.
    :return: PSI, a unitless finite float >= 0.
    :raises ValueError: a side with fewer than 2 finite values, a constant reference (no quantile
        bins exist), ``bins < 2`` or ``eps <= 0``.
    """
    ref = _finite(reference, "reference")
    rec = _finite(recent, "recent")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if ref.min() == ref.max():
        raise ValueError(f"reference is constant ({ref[0]!r}): quantile bins cannot be formed")
    edges = psi_edges(ref, bins)
    p = np.maximum(bin_proportions(ref, edges), eps)
    r = np.maximum(bin_proportions(rec, edges), eps)
    return float(np.sum((r - p) * np.log(r / p)))


def ks(reference: np.ndarray, recent: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``, two-sided).

    :param reference: shape (N,); NaN/inf dropped.
    :param recent: shape (M,); NaN/inf dropped.
    :return: (statistic in [0, 1], p-value in [0, 1]).
    :raises ValueError: a side with fewer than 2 finite values.
    """
    res = stats.ks_2samp(_finite(reference, "reference"), _finite(recent, "recent"))
    return float(res.statistic), float(res.pvalue)


# --------------------------------------------------------------------------- tables


def _skip_reason(ref: np.ndarray, rec: np.ndarray) -> str | None:
    if ref.size < 2:
        return f"fewer than 2 finite reference values ({ref.size})"
    if rec.size < 2:
        return f"fewer than 2 finite recent values ({rec.size})"
    if ref.min() == ref.max():
        return "constant in reference"
    return None


def _row(name: str, ref: np.ndarray, rec: np.ndarray, bins: int) -> dict:
    stat, pvalue = ks(ref, rec)
    return {
        "feature": name, "psi": psi(ref, rec, bins), "ks": stat, "ks_pvalue": pvalue,
        "ref_mean": float(ref.mean()), "recent_mean": float(rec.mean()),
        "ref_std": float(ref.std()), "recent_std": float(rec.std()),
    }


def feature_drift(reference: np.ndarray, recent: np.ndarray, names: list[str], bins: int = 10) -> DriftTable:
    """PSI, KS and moments of every feature column, most drifted first.

    Means and standard deviations (population, ``ddof=0``) are over each column's finite values,
    in the feature's units. A column with fewer than 2 finite values on either side, or constant
    in the reference, is skipped (see the module docstring), never scored NaN.

    :param reference: shape (N, F), the fold's training rows.
    :param recent: shape (M, F), the recent bars, same column order.
    :param names: F distinct feature names.
    :param bins: passed to :func:`psi`.
    :return: a :class:`DriftTable`, rows sorted by PSI descending (ties keep column order).
    :raises ValueError: non-2-D inputs, mismatched column counts, or names of the wrong length or
        with duplicates.
    """
    ref, rec = _matrix(reference, "reference"), _matrix(recent, "recent")
    if ref.shape[1] != rec.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} columns but recent has {rec.shape[1]}")
    names = list(names)
    if len(names) != ref.shape[1]:
        raise ValueError(f"names has {len(names)} entries but the arrays have {ref.shape[1]} columns")
    if len(set(names)) != len(names):
        raise ValueError(f"names must be distinct; duplicated: {sorted({n for n in names if names.count(n) > 1})}")
    rows, reasons = [], {}
    for j, name in enumerate(names):
        a, b = ref[:, j][np.isfinite(ref[:, j])], rec[:, j][np.isfinite(rec[:, j])]
        reason = _skip_reason(a, b)
        if reason is None:
            rows.append(_row(name, a, b, bins))
        else:
            reasons[name] = reason
    rows.sort(key=lambda row: -row["psi"])
    return DriftTable(rows=rows, skipped=list(reasons), skip_reasons=reasons)


def _probs(x, name: str) -> np.ndarray:
    a = _matrix(x, name)
    if a.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must hold finite, non-negative probabilities")
    if not np.allclose(a.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError(f"{name} rows must sum to 1 (filtered regime probabilities)")
    return a


def regime_occupancy(reference_probs: np.ndarray, recent_probs: np.ndarray) -> dict:
    """Mean filtered probability of each regime in both windows, and how far apart they are.

    :param reference_probs: shape (N, K), rows sum to 1.
    :param recent_probs: shape (M, K), rows sum to 1, same regime order.
    :return: ``{"reference": [K floats], "recent": [K floats], "tv_distance": float}``; the total
        variation distance ``0.5 * sum_k |reference_k - recent_k|`` lies in [0, 1].
    :raises ValueError: non-2-D, empty, non-finite, negative or unnormalised rows, or K mismatch.
    """
    ref, rec = _probs(reference_probs, "reference_probs"), _probs(recent_probs, "recent_probs")
    if ref.shape[1] != rec.shape[1]:
        raise ValueError(f"reference_probs has {ref.shape[1]} regimes but recent_probs has {rec.shape[1]}")
    a, b = ref.mean(axis=0), rec.mean(axis=0)
    return {"reference": a.tolist(), "recent": b.tolist(), "tv_distance": float(0.5 * np.abs(a - b).sum())}


# --------------------------------------------------------------------------- reporting


def summarise(table: DriftTable, occupancy: dict, psi_warn: float = PSI_STABLE,
              psi_alert: float = PSI_SIGNIFICANT) -> dict[str, float]:
    """Flat, finite metrics for MLflow.

    ``n_psi_warn`` counts features with PSI >= ``psi_warn`` (alerts included); ``n_psi_alert``
    those with PSI >= ``psi_alert``; ``share_psi_alert`` is the latter over compared features.
    ``n_ks_reject_1pct`` counts KS p-values below 0.01. With no compared feature every PSI/KS
    figure is 0.0. Also ``n_features``, ``n_skipped``, ``regime_tv_distance`` and
    ``regime_{k}_reference`` / ``regime_{k}_recent`` for each regime k.

    :raises ValueError: unless ``0 < psi_warn <= psi_alert``.
    """
    if not 0 < psi_warn <= psi_alert:
        raise ValueError(f"need 0 < psi_warn <= psi_alert, got {psi_warn!r} and {psi_alert!r}")
    p = np.array([r["psi"] for r in table.rows], dtype=float)
    k = np.array([r["ks"] for r in table.rows], dtype=float)
    pv = np.array([r["ks_pvalue"] for r in table.rows], dtype=float)
    n = p.size
    out = {
        "max_psi": float(p.max()) if n else 0.0,
        "mean_psi": float(p.mean()) if n else 0.0,
        "n_psi_warn": float(np.sum(p >= psi_warn)),
        "n_psi_alert": float(np.sum(p >= psi_alert)),
        "share_psi_alert": float(np.sum(p >= psi_alert) / n) if n else 0.0,
        "max_ks": float(k.max()) if n else 0.0,
        "n_ks_reject_1pct": float(np.sum(pv < 0.01)),
        "n_features": float(n),
        "n_skipped": float(len(table.skipped)),
        "regime_tv_distance": float(occupancy["tv_distance"]),
    }
    for i, (a, b) in enumerate(zip(occupancy["reference"], occupancy["recent"])):
        out[f"regime_{i}_reference"], out[f"regime_{i}_recent"] = float(a), float(b)
    return out


def psi_reading(value: float) -> str:
    """Conventional reading of a PSI value: stable below 0.1, moderate up to 0.25, significant from
    0.25 (the same boundaries as :func:`summarise`'s defaults)."""
    if value < PSI_STABLE:
        return "stable"
    return "moderate" if value < PSI_SIGNIFICANT else "significant"


def _md(name: str) -> str:
    return str(name).replace("|", "\\|")


def to_markdown(table: DriftTable, occupancy: dict, summary: dict[str, float], top: int = 15) -> str:
    """A markdown drift report: summary bullets, the ``top`` most drifted features, regime occupancy,
    skipped features and the PSI legend.

    :param table: from :func:`feature_drift`.
    :param occupancy: from :func:`regime_occupancy`.
    :param summary: from :func:`summarise`; listed as bullets in its own key order.
    :param top: how many feature rows to show, at least 1.
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top!r}")
    lines = ["# Drift report", "", "## Summary", ""]
    lines += [f"- {key}: {value:.4g}" for key, value in summary.items()]
    lines += ["", f"## Top {min(top, len(table.rows))} features by PSI", "",
              "| feature | PSI | reading | KS | KS p-value | ref mean | recent mean | ref std | recent std |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {_md(r['feature'])} | {r['psi']:.4f} | {psi_reading(r['psi'])} | {r['ks']:.4f} | "
              f"{r['ks_pvalue']:.2e} | {r['ref_mean']:.4g} | {r['recent_mean']:.4g} | "
              f"{r['ref_std']:.4g} | {r['recent_std']:.4g} |" for r in table.rows[:top]]
    lines += ["", "## Regime occupancy", "", f"Total variation distance: {occupancy['tv_distance']:.4f}", "",
              "| regime | reference | recent | change |", "|---|---:|---:|---:|"]
    lines += [f"| {i} | {a:.4f} | {b:.4f} | {b - a:+.4f} |"
              for i, (a, b) in enumerate(zip(occupancy["reference"], occupancy["recent"]))]
    if table.skipped:
        lines += ["", "## Skipped features", ""]
        lines += [f"- {_md(n)}: {table.skip_reasons.get(n, 'not compared')}" for n in table.skipped]
    lines += ["", f"PSI reading: < {PSI_STABLE} stable, {PSI_STABLE}-{PSI_SIGNIFICANT} moderate, "
              f">= {PSI_SIGNIFICANT} significant.", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class DriftReport:
    """Feature and regime drift of the newest bars against the latest training window."""

    table: DriftTable
    occupancy: dict
    summary: dict[str, float]
    markdown: str


@reads("drift", "env", "universe")
def drift_report(cfg: Config, bars: Frame, feats: Frame, span: FoldSpan,
                 regime_model: RegimeModel) -> DriftReport:
    """Feature and regime drift between the latest fold's training window and the newest
    ``drift.recent_bars`` bars (the observed features, ``env.feature_columns``).

    The tables may be scanned lazily: features are read :data:`COLUMN_BLOCK` columns at a time and
    the per-block tables merged (:meth:`DriftTable.merged`), equal to comparing the whole table."""
    feats = feats.lazy()
    names = select_features(feature_columns(feats), cfg.env.feature_columns)
    a, b = span.train_rows
    blocks = []
    for i in range(0, len(names), COLUMN_BLOCK):
        x = feats.select(names[i: i + COLUMN_BLOCK]).collect().to_numpy().astype(float)
        blocks.append(feature_drift(x[a:b], x[-cfg.drift.recent_bars:], names[i: i + COLUMN_BLOCK], bins=cfg.drift.psi_bins))
    table = DriftTable.merged(blocks)
    probs = forward_filter(regime_model, underlying_returns(cfg, bars)[a:])
    occupancy = regime_occupancy(probs[: b - a], probs[-cfg.drift.recent_bars:])
    summary = summarise(table, occupancy, cfg.drift.psi_warn, cfg.drift.psi_alert)
    return DriftReport(table, occupancy, summary, to_markdown(table, occupancy, summary))
