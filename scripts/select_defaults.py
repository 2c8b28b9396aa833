"""Choose training defaults by the inner validation protocol, never by the test windows.

For every point of a grid of config overrides and every fold, trains ``--seeds`` seeds on the rows
before the fold's inner validation slice (``FoldSpan.inner_split``) and scores each seed's
deterministic policy on that slice only: the Sharpe of the checkpoint the protocol keeps (the best
evaluation, optimistic by construction and equally so for every point) and of the last evaluation.
Prints one row per point: mean and standard deviation over folds x seeds, and training steps/s.
The test windows are never stepped: only ``fold_training`` runs, which reads the inner split.

Usage:
  .venv/bin/python scripts/select_defaults.py [--config configs/base.yaml] [--timesteps 100000] [--seeds 2]
      [--folds 0,1,2,3,4] --grid "env.lookback_bars=10,30" --grid "train.gamma=0.9,0.99"

A grid value with commas inside brackets is one value: ``--grid "env.feature_columns=[QQQ_*],null"``.
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
import time

from sentio_core.config import load_config
from sentio_core.data import build_manifest, build_panel
from sentio_core.features import feature_table
from sentio_core.folds import fold_spans
from sentio_core.market import fold_market
from sentio_core.policies import pin_threads
from sentio_core.regimes import fold_regimes
from sentio_core.train import Budget, fold_training


def grid_values(spec: str) -> tuple[str, list[str]]:
    """``key=v1,v2,[a,b]`` -> (key, [v1, v2, [a,b]])."""
    key, _, values = spec.partition("=")
    return key, re.findall(r"\[[^\]]*\]|[^,]+", values)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/base.yaml")
    ap.add_argument("--timesteps", type=int, default=100_000, help="per seed")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--folds", default=None, help="comma-separated fold numbers (default: all)")
    ap.add_argument("--algorithm", default="maskable_ppo")
    ap.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,... (repeatable: the product is run)")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE applied to every point")
    args = ap.parse_args()

    axes = [grid_values(g) for g in args.grid]
    points = [list(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])] or [[]]
    base = load_config(args.config, args.set)
    bars, _, freq = build_panel(base, build_manifest(base))
    feats = feature_table(base, bars, freq)
    regimes: dict[tuple, object] = {}  # a fold's regime fit depends on its rows only
    print(f"{args.algorithm}, {args.seeds} seeds x {args.timesteps:,} steps per fold; validation Sharpe of the kept "
          f"checkpoint and of the last evaluation, mean (sd) over folds x seeds")
    for point in points:
        overrides = [*args.set, f"train.seeds={args.seeds}", *(f"{k}={v}" for k, v in point)]
        cfg = load_config(args.config, overrides)
        pin_threads(cfg.train)
        spans = fold_spans(cfg, feats)
        chosen = spans if args.folds is None else [spans[int(i)] for i in args.folds.split(",")]
        kept, last, steps, seconds = [], [], 0, 0.0
        for span in chosen:
            key = (span.train_rows, span.test_rows)
            if key not in regimes:
                regimes[key] = fold_regimes(cfg, bars, span).probabilities
            market = fold_market(cfg, bars, feats, regimes[key], span, freq.periods_per_year)
            start = time.perf_counter()
            training = fold_training(cfg, market, span, args.algorithm, Budget(timesteps=args.timesteps))
            seconds += time.perf_counter() - start
            for run in training.runs:
                kept.append(run.validation_sharpe)
                last.append(run.validation_curve[-1][1])
                steps += run.timesteps
        label = " ".join(f"{k}={v}" for k, v in point) or "(config)"
        sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
        print(f"{label:<60} kept {statistics.mean(kept):+.2f} ({sd(kept):.2f})   last {statistics.mean(last):+.2f} "
              f"({sd(last):.2f})   {steps / seconds:,.0f} steps/s incl. evaluation", flush=True)


if __name__ == "__main__":
    main()
