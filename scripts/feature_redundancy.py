"""Measure how redundant the observed features are, on each fold's training window.

For each fold of the config (by default the default daily run), on its training rows normalised as
the observation is (``sentio_core.market.training_matrix``): the number of selected features
(``env.feature_columns``), how many survive the de-duplication (``sentio_core.market.deduplicate``)
at each threshold, the principal components needed for 90 % of the variance of the selected and
of the surviving columns (PCA of the standardised columns: the eigenvalues of their correlation
matrix; constant columns carry none), and the flattened observation's length
(``ObservationLayout.obs_dim``: ``env.lookback_bars`` x (features + ``regimes.n_regimes``
probabilities) + the portfolio state). The regime models are not fitted: their probabilities are
never de-duplicated, so only their count matters. Prints a markdown table. Usage:
  .venv/bin/python scripts/feature_redundancy.py [--config configs/base.yaml]
      [--thresholds 0.99 0.95 0.9 0.8] [--variance 0.9] [--set key=value]
"""

from __future__ import annotations

import argparse

import numpy as np

from sentio_core.config import DEFAULT_CONFIG, Config, load_config
from sentio_core.data import build_manifest, build_panel
from sentio_core.env import ObservationLayout
from sentio_core.features import feature_columns, feature_table
from sentio_core.folds import fold_spans
from sentio_core.market import correlation, deduplicate, select_features, training_matrix


def components_for(corr: np.ndarray, columns: list[int], variance: float) -> int:
    """Principal components of the standardised ``columns`` needed for ``variance`` of their total."""
    if not columns:
        return 0
    eig = np.sort(np.linalg.eigvalsh(corr[np.ix_(columns, columns)]))[::-1]
    share = np.cumsum(eig) / eig.sum()
    return int(np.searchsorted(share, variance - 1e-12) + 1)


def redundancy_rows(cfg: Config, thresholds: list[float], variance: float) -> list[list[str]]:
    """One table row per fold: features, survivors and components per threshold, observation sizes."""
    bars, _, freq = build_panel(cfg, build_manifest(cfg))
    feats = feature_table(cfg, bars, freq)
    names = select_features(feature_columns(feats.columns), cfg.env.feature_columns)
    n_regimes = cfg.regimes.n_regimes

    def obs_dim(n_features: int) -> int:
        return ObservationLayout(cfg.env.lookback_bars, n_features + n_regimes).obs_dim

    rows = []
    for span in fold_spans(cfg, feats):
        z, _, _ = training_matrix(feats.lazy(), names, span.train_rows, cfg.env.clip_obs)
        corr, constant = correlation(z)
        varying = [j for j in range(len(names)) if not constant[j]]
        row = [str(span.fold), f"{span.train_start[:10]} .. {span.train_end[:10]}", str(span.train_rows[1] - span.train_rows[0]),
               str(len(names)), str(int(constant.sum())), str(components_for(corr, varying, variance)), f"{obs_dim(len(names)):,}"]
        for threshold in thresholds:
            kept, _ = deduplicate(corr, constant, threshold)
            row.append(f"{len(kept)} / {components_for(corr, kept, variance)} / {obs_dim(len(kept)):,}")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.99, 0.95, 0.9, 0.8])
    parser.add_argument("--variance", type=float, default=0.9, help="share of the variance the components explain")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    rows = redundancy_rows(cfg, args.thresholds, args.variance)
    pct = f"{args.variance:.0%}"
    print(f"{args.config}: lookback {cfg.env.lookback_bars} bars, {cfg.regimes.n_regimes} regime probabilities "
          f"(never dropped), {len(rows)} folds; the default env.feature_max_corr is {cfg.env.feature_max_corr}.")
    print(f"Per threshold: features kept / PCA components for {pct} of their variance / flattened observation size.\n")
    header = ["fold", "training window", "bars", "features", "constant", f"PCA {pct}", "obs size"]
    header += [f"<= {t:g}" for t in args.thresholds]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
