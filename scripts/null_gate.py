"""The promotion gate's null test on the real folds: skill-free random policies presented to the gate
as a night's retraining would present them (:mod:`sentio_core.nulltest`). Prints each null run's
checks and how many were promoted (the answer must be none).

Usage:
  .venv/bin/python scripts/null_gate.py [--config configs/base.yaml] [--runs 20] [--seeds 3] [--switch 0.1]
"""

from __future__ import annotations

import argparse
import time

from threadpoolctl import threadpool_limits

from sentio_core.config import load_config
from sentio_core.nulltest import fold_markets, null_gate
from sentio_core.report import format_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/base.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--switch", type=float, default=0.1, help="probability of a new random target after each close")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    start = time.perf_counter()
    with threadpool_limits(limits=1):
        folds = fold_markets(cfg)
    result = null_gate(cfg, folds, n_runs=args.runs, seeds=args.seeds, switch_prob=args.switch, seed=cfg.seed)
    rows = []
    for i, g in enumerate(result.gates):
        row = {"run": i, "sharpe_ann": f"{g.evidence['deflated']['sharpe_ann']:.2f}"}
        row.update({c.name.replace("paired win over ", "vs ").replace("worst fold max drawdown", "mdd"):
                    ("n/a" if c.value is None else f"{c.value:.3f}") + f" {c.verdict}" for c in g.checks})
        row["promoted"] = "YES" if g.passed else "no"
        rows.append(row)
    print(format_table(rows))
    print(f"\n{args.runs} null runs x {2 * args.seeds} random policies on {len(folds)} folds "
          f"({sum(r[1] - r[0] for r, _ in folds)} test bars): {result.promoted} promoted; "
          f"stopped by: {result.failed_checks()} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
