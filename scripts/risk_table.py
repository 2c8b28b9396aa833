"""Measure what the drawdown budget holds: realised drawdowns, overshoots and bars forced flat.

For each drawdown limit and each fold of each config (by default the default daily run and the
5-minute data), on the fold's test window after costs (or, with ``--window train``, its training
window: the only place settings may be chosen):

* ``--random`` random masked policies (each decision uniform over the allowed actions, seeded):
  the median and worst realised max drawdown (from the all-time peak), the worst overshoot past
  the limit measured as the rule measures it (from the peak since the last re-base) and the bar
  it happened on, and the median number of decisions forced to a single action and forced flat;
* with ``--train``, MaskablePPO retrained for that limit on the fold's training window (the config's
  budget, or ``--timesteps``): the same figures for it.

``--sweep masks.KEY=V1,V2`` (repeatable) repeats every row for each combination of mask settings
(the fold markets are built once). Prints a markdown table. Usage:
  .venv/bin/python scripts/risk_table.py [--config configs/base.yaml --config configs/intraday.yaml]
      [--limits 0.08 0.10 0.20 0.35] [--random 32] [--train] [--timesteps N] [--window train]
      [--sweep masks.gap_sigmas=3,4,6] [--set key=value]
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from sentio_core.backtest import StrategyPath, backtest_fold, sb3_policy
from sentio_core.config import Config, load_config
from sentio_core.data import build_manifest, build_panel
from sentio_core.features import feature_table
from sentio_core.folds import fold_spans
from sentio_core.market import fold_market
from sentio_core.regimes import fold_regimes
from sentio_core.train import Budget, fold_training


def random_policy(seed: int):
    """Uniform over the allowed actions, one generator per policy (reproducible)."""
    rng = np.random.default_rng(seed)

    def act(obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return np.array([rng.choice(np.flatnonzero(m)) for m in masks])
    return act


@dataclass(frozen=True)
class Overshoot:
    """The largest drawdown past the limit, measured from the rule's peak (re-based after each cool-down)."""

    excess: float  # fraction past the limit (0: the limit held)
    timestamp: str  # the bar's close where it happened ("" when it held)


def overshoot(path: StrategyPath, cfg: Config) -> Overshoot:
    """The largest drawdown past the limit, from the rule's own peak (``StrategyPath.rule_drawdown``)."""
    excess = path.rule_drawdown() - cfg.masks.drawdown_limit
    t = int(np.argmax(excess))
    return Overshoot(float(excess[t]), path.timestamps[t]) if excess[t] > 0 else Overshoot(0.0, "")


def with_limit(cfg: Config, limit: float) -> Config:
    return cfg.model_copy(update={"masks": cfg.masks.model_copy(update={"drawdown_limit": limit})})


def folds_of(cfg: Config, only: list[int] | None = None) -> list[tuple]:
    """Each fold's span and market (regimes fitted on its training window), built once."""
    bars, _, freq = build_panel(cfg, build_manifest(cfg))
    feats = feature_table(cfg, bars, freq)
    out = []
    for span in fold_spans(cfg, feats):
        if only is not None and span.fold not in only:
            continue
        with threadpool_limits(limits=1):
            probs = fold_regimes(cfg, bars, span).probabilities
        out.append((span, fold_market(cfg, bars, feats, probs, span, freq.periods_per_year)))
    return out


def row(config: str, setting: str, limit: float, span, name: str, paths: list[StrategyPath], cfg: Config,
        ppy: float) -> str:
    mdd = np.array([p.metrics(ppy)["max_drawdown"] for p in paths])
    shoots = [overshoot(p, cfg) for p in paths]
    worst = max(shoots, key=lambda s: s.excess)
    forced = np.median([p.forced_bars for p in paths])
    flat = np.median([p.forced_flat for p in paths])
    where = f"{worst.excess:.1%} at {worst.timestamp[:16].replace('T00:00', '')}" if worst.excess > 0 else "held"
    spread = f"{np.median(mdd):.1%} / {mdd.max():.1%}" if len(paths) > 1 else f"{mdd[0]:.1%}"
    return (f"| {config} | {setting} | {limit:.0%} | {span.fold} | {name} | {spread} | {where} | {forced:.0f} / {flat:.0f} "
            f"of {len(paths[0].equity) - 1} |")


def sweep(specs: list[str]) -> list[list[str]]:
    """``["masks.a=1,2", "masks.b=x,y"]`` -> every combination as override lists ([[]] when none)."""
    axes = []
    for spec in specs:
        key, _, values = spec.partition("=")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(combo) for combo in itertools.product(*axes)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", action="append", help="config file (repeatable); default: base and intraday")
    ap.add_argument("--limits", type=float, nargs="+", default=[0.08, 0.10, 0.20, 0.35])
    ap.add_argument("--random", type=int, default=32, help="random masked policies per fold")
    ap.add_argument("--train", action="store_true", help="also retrain MaskablePPO for each limit")
    ap.add_argument("--timesteps", type=int, default=None, help="training budget (default: the config's)")
    ap.add_argument("--set", action="append", default=[], help="config overrides for every config")
    ap.add_argument("--sweep", action="append", default=[], help="masks.KEY=V1,V2: one row per combination")
    ap.add_argument("--folds", type=int, nargs="+", default=None, help="only these folds (default: all)")
    ap.add_argument("--window", choices=("test", "train"), default="test", help="the fold window measured")
    args = ap.parse_args()
    configs = args.config or ["configs/base.yaml", "configs/intraday.yaml"]
    print(f"{args.window} windows\n")
    print("| data | setting | limit | fold | policy | max drawdown (median / worst) | worst overshoot past the limit | "
          "bars forced to one action / to flat (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for config in configs:
        overrides = list(args.set) + ([f"train.timesteps={args.timesteps}"] if args.timesteps else [])
        base = load_config(config, overrides)
        for span, market in folds_of(base, args.folds):
            ppy = market.periods_per_year
            rows = span.test_rows if args.window == "test" else (span.train_rows[0] + 1, span.train_rows[1])
            for combo in sweep(args.sweep):
                setting = " ".join(c.removeprefix("masks.") for c in combo) or "-"
                swept = load_config(config, overrides + combo)
                for limit in args.limits:
                    cfg = with_limit(swept, limit)
                    pols = {f"r{i}": (random_policy(1000 * span.fold + i), True) for i in range(args.random)}
                    paths = backtest_fold(market, cfg, rows, pols)
                    print(row(config, setting, limit, span, f"random x{args.random}", [paths[k] for k in pols], cfg, ppy),
                          flush=True)
                    if args.train:
                        start = time.perf_counter()
                        result = fold_training(cfg, market, span, "maskable_ppo", Budget.from_config(cfg)).result
                        trained = backtest_fold(market, cfg, rows,
                                                {"maskable_ppo": (sb3_policy(result.model, True), True)})["maskable_ppo"]
                        print(row(config, setting, limit, span, f"MaskablePPO ({time.perf_counter() - start:.0f} s)",
                                  [trained], cfg, ppy), flush=True)


if __name__ == "__main__":
    main()
