"""Ablation of the advanced model: one factor at a time from the default, on the default daily folds.

``run`` trains one variant (config overrides on top of ``--config``) for every fold and both
algorithms, ``train.seeds`` seeds each with the config's budget, exactly as the pipeline does
(:func:`fold_training`: inner validation slice, best checkpoint, best seed), then backtests every
seed's policy on the fold's test window beside the baselines, and writes one JSON file. ``table``
reads those files and prints the README's table: per variant and algorithm, the out-of-sample
Sharpe, max drawdown and CVaR 5 % over folds x seeds (mean and sd), the chosen seeds' test Sharpe,
the validation Sharpe that chooses (the selection criterion: a variant becomes the default only
if it wins there) and its paired difference from the first file's (the default) over the folds,
and training throughput; then the rule-based baseline and buy-and-hold.

Usage:
  .venv/bin/python scripts/ablation.py run --name transformer --set train.policy=transformer --out ablation/
  .venv/bin/python scripts/ablation.py table ablation/*.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from sentio_core import algorithms, baselines
from sentio_core.backtest import fold_backtest, sb3_policy
from sentio_core.config import load_config
from sentio_core.data import build_manifest, build_panel
from sentio_core.features import feature_table
from sentio_core.folds import fold_spans
from sentio_core.market import fold_market
from sentio_core.policies import pin_threads, reads_masks
from sentio_core.regimes import fold_regimes
from sentio_core.train import fold_training

METRICS = ("sharpe", "max_drawdown", "cvar_5")
SHOWN_BASELINES = (baselines.TREND_VOL, "buy_hold_underlying", "buy_hold_long")


def run(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.set)
    pin_threads(cfg.train)
    bars, _, freq = build_panel(cfg, build_manifest(cfg))
    feats = feature_table(cfg, bars, freq)
    spans = fold_spans(cfg, feats)
    out: dict = {"name": args.name, "overrides": args.set, "timesteps": cfg.train.timesteps, "seeds": cfg.train.seeds,
                 "folds": [], "baselines": {}}
    for span in spans:
        regimes = fold_regimes(cfg, bars, span)
        market = fold_market(cfg, bars, feats, regimes.probabilities, span, freq.periods_per_year)
        fold: dict = {"fold": span.fold, "algorithms": {}}
        for algorithm in cfg.train.algorithms:
            start = time.perf_counter()
            training = fold_training(cfg, market, span, algorithm)
            seconds = time.perf_counter() - start
            masked = reads_masks(algorithm)
            policies = {algorithms.seed_name(algorithm, k): (sb3_policy(r.model, masked), masked)
                        for k, r in enumerate(training.runs)}
            paths = fold_backtest(cfg, market, span, policies)
            seeds = []
            for k, r in enumerate(training.runs):
                m = paths[algorithms.seed_name(algorithm, k)].metrics(market.periods_per_year)
                seeds.append({"seed": r.seed, "validation_sharpe": r.validation_sharpe, "timesteps": r.timesteps,
                              "seconds": r.seconds, **{k2: m[k2] for k2 in METRICS}})
            fold["algorithms"][algorithm] = {"chosen": training.chosen, "seeds": seeds, "seconds": seconds,
                                             "steps_per_s": sum(r.timesteps for r in training.runs) / seconds}
            print(f"{args.name} fold {span.fold} {algorithm}: test Sharpe by seed "
                  f"{[round(s['sharpe'], 2) for s in seeds]}, chosen {training.chosen}, "
                  f"{fold['algorithms'][algorithm]['steps_per_s']:,.0f} steps/s", file=sys.stderr, flush=True)
            for name in SHOWN_BASELINES:
                m = paths[name].metrics(market.periods_per_year)
                out["baselines"].setdefault(name, []).append({k2: m[k2] for k2 in METRICS})
        out["folds"].append(fold)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"{args.name}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}", file=sys.stderr)


def _ms(xs: list[float], pct: bool = False) -> str:
    mean, sd = statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{mean:.1%} ± {sd:.1%}" if pct else f"{mean:.2f} ± {sd:.2f}"


def table(args: argparse.Namespace) -> None:
    runs = [json.loads(Path(p).read_text()) for p in args.files]
    reference = runs[0]  # the first file is the default the others are compared with
    print("| variant | algorithm | test Sharpe, all seeds | chosen seeds' Sharpe | max drawdown | CVaR 5 % (daily loss) "
          f"| validation Sharpe (chosen) | vs {reference['name']}, paired over folds (± se) | steps/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run_ in runs:
        algs = list(run_["folds"][0]["algorithms"])
        for algorithm in algs:
            per = [f["algorithms"][algorithm] for f in run_["folds"]]
            seeds = [s for p in per for s in p["seeds"]]
            chosen = [p["seeds"][p["chosen"]] for p in per]
            base = [f["algorithms"][algorithm] for f in reference["folds"]]
            diff = [c["validation_sharpe"] - b["seeds"][b["chosen"]]["validation_sharpe"] for c, b in zip(chosen, base)]
            paired = "" if run_ is reference else f"{statistics.mean(diff):+.2f} ± {statistics.stdev(diff) / len(diff) ** 0.5:.2f}"
            print(f"| {run_['name']} | {algorithm} | {_ms([s['sharpe'] for s in seeds])} "
                  f"| {statistics.mean(s['sharpe'] for s in chosen):.2f} "
                  f"| {_ms([s['max_drawdown'] for s in seeds], True)} | {_ms([s['cvar_5'] for s in seeds], True)} "
                  f"| {statistics.mean(s['validation_sharpe'] for s in chosen):.2f} | {paired} "
                  f"| {statistics.mean(p['steps_per_s'] for p in per):,.0f} |")
    for name, rows in runs[0]["baselines"].items():
        print(f"| baseline | {name} | {_ms([r['sharpe'] for r in rows])} | | {_ms([r['max_drawdown'] for r in rows], True)} "
              f"| {_ms([r['cvar_5'] for r in rows], True)} | | | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train and backtest one variant on every fold; write NAME.json")
    p.add_argument("--name", required=True)
    p.add_argument("--config", default="configs/base.yaml")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE config override (repeatable)")
    p.add_argument("--out", default="ablation")
    p = sub.add_parser("table", help="print the table of the variants' JSON files")
    p.add_argument("files", nargs="+")
    args = ap.parse_args()
    run(args) if args.command == "run" else table(args)


if __name__ == "__main__":
    main()
