"""Benchmark: the batch backtest engine against the slow reference (the env stepped one action at a time).

Prints seconds for N random linear policies over one fold's test window, and the ratio.
Usage: .venv/bin/python scripts/bench_backtest.py [--config configs/smoke.yaml] [--policies 32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sentio_core.backtest import backtest_fold, reference_path
from sentio_core.config import load_config
from sentio_core.data import build_manifest, build_panel
from sentio_core.features import feature_table
from sentio_core.folds import fold_spans
from sentio_core.market import fold_market
from sentio_core.regimes import fold_regimes


def linear_policy(obs_dim: int, n_actions: int, seed: int):
    w = np.random.default_rng(seed).normal(size=(obs_dim, n_actions)) / np.sqrt(obs_dim)

    def act(obs, masks):
        logits = np.where(masks, obs @ w, -np.inf)
        return logits.argmax(axis=1)
    return act


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--policies", type=int, default=32)
    args = ap.parse_args()
    cfg = load_config(args.config)
    bars, _, freq = build_panel(cfg, build_manifest(cfg))
    feats = feature_table(cfg, bars, freq)
    span = fold_spans(cfg, feats)[-1]
    market = fold_market(cfg, bars, feats, fold_regimes(cfg, bars, span).probabilities, span, freq.periods_per_year)
    obs_dim = cfg.env.lookback_bars * market.features.shape[1] + 4
    pols = {f"p{i}": (linear_policy(obs_dim, len(market.levels), i), True) for i in range(args.policies)}
    rows = span.test_rows
    t0 = time.perf_counter()
    fast = backtest_fold(market, cfg, rows, pols)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = {k: reference_path(market, cfg, rows, p, m) for k, (p, m) in pols.items()}
    t_ref = time.perf_counter() - t0
    worst = max(float(np.max(np.abs(fast[k].equity / ref[k].equity - 1))) for k in pols)
    bars_n = rows[1] - rows[0]
    print(f"{args.policies} policies x {bars_n} bars ({args.config})")
    print(f"batch engine (+3 baselines): {t_fast:.3f}s   reference env loop: {t_ref:.3f}s   "
          f"ratio {t_ref / t_fast:.2f}x   max relative equity difference {worst:.1e}")


if __name__ == "__main__":
    main()
