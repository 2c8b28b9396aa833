"""The gate's null test: skill-free policies run through the promotion gate exactly as a retraining
would present them, and none may be promoted.

Each null *run* stands for one night of the pipeline: ``seeds`` random policies per algorithm
(MaskablePPO's seed 0 is the candidate, PPO's seed 0 its baseline), backtested on the real folds'
test windows under the same masks and costs, with a ledger holding only that run's trials (the
most lenient ledger, a first night) and no champion. The random policies are *sticky*: after each
close, with probability ``switch_prob``, a new target level is drawn uniformly, else the last one is
kept, and the masks move it to the nearest allowed level. They trade about as often as the learned
policies, so costs alone do not reject them: the statistics have to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sentio_core.algorithms import BASELINE, PRIMARY, seed_name
from sentio_core.backtest import Schedule, backtest_fold
from sentio_core.config import Config
from sentio_core.market import Market
from sentio_core.promotion import UNDERLYING, ChampionReturns, GateInputs, GateResult, promotion_gate
from sentio_core.trials import Trial, ledger_stats


def fold_markets(cfg: Config) -> list[tuple[tuple[int, int], Market]]:
    """Every fold's test rows and market on the configured data, built as the pipeline builds them."""
    from sentio_core.data import build_manifest, build_panel
    from sentio_core.features import feature_table
    from sentio_core.folds import fold_spans
    from sentio_core.market import fold_market
    from sentio_core.regimes import fold_regimes

    bars, _, freq = build_panel(cfg, build_manifest(cfg))
    feats = feature_table(cfg, bars, freq)
    return [(span.test_rows, fold_market(cfg, bars, feats, fold_regimes(cfg, bars, span).probabilities, span,
                                         freq.periods_per_year)) for span in fold_spans(cfg, feats)]


def sticky_random_targets(n_rows: int, n_levels: int, switch_prob: float, rng: np.random.Generator) -> np.ndarray:
    """(n_rows,) target action per row: a new uniform draw with probability ``switch_prob``, else the last one."""
    draws = rng.integers(0, n_levels, n_rows)
    switch = rng.random(n_rows) < switch_prob
    switch[0] = True
    last = np.maximum.accumulate(np.where(switch, np.arange(n_rows), 0))
    return draws[last]


@dataclass(frozen=True)
class NullResult:
    gates: list[GateResult]

    @property
    def promoted(self) -> int:
        return sum(g.passed for g in self.gates)

    def failed_checks(self) -> dict[str, int]:
        """How many null runs each check stopped (a run can be stopped by several)."""
        out: dict[str, int] = {}
        for g in self.gates:
            for c in g.checks:
                out[c.name] = out.get(c.name, 0) + (c.verdict == "FAIL")
        return out


def null_gate(cfg: Config, folds: Sequence[tuple[tuple[int, int], Market]], n_runs: int = 20, seeds: int = 3,
              switch_prob: float = 0.1, seed: int = 0) -> NullResult:
    """Run ``n_runs`` null runs through :func:`promotion_gate` with ``cfg.promotion``.

    :param folds: each fold's test rows and market, in fold order (as the pipeline builds them).
    """
    rng = np.random.default_rng(seed)
    names = [(run, algo, k) for run in range(n_runs) for algo in (PRIMARY, BASELINE) for k in range(seeds)]
    targets = [[sticky_random_targets(m.n_rows, len(m.levels), switch_prob, rng) for _ in names] for _, m in folds]
    per_fold = []  # fold -> {name: path}
    for (rows, market), fold_targets in zip(folds, targets):
        policies = {f"null{run}_{seed_name(algo, k)}": (Schedule(t), True) for (run, algo, k), t in zip(names, fold_targets)}
        per_fold.append(backtest_fold(market, cfg, rows, policies))
    ppy = folds[0][1].periods_per_year
    returns = lambda p: p.equity[1:] / p.equity[:-1] - 1.0
    stamps = [t for paths in per_fold for t in paths["flat"].timestamps[1:]]
    under = np.concatenate([returns(paths[UNDERLYING]) for paths in per_fold])
    gates = []
    for run in range(n_runs):
        cols = {seed_name(algo, k): np.concatenate([returns(paths[f"null{run}_{seed_name(algo, k)}"]) for paths in per_fold])
                for algo in (PRIMARY, BASELINE) for k in range(seeds)}
        metrics = [{PRIMARY: paths[f"null{run}_{seed_name(PRIMARY, 0)}"].metrics(ppy),
                    BASELINE: paths[f"null{run}_{seed_name(BASELINE, 0)}"].metrics(ppy),
                    UNDERLYING: paths[UNDERLYING].metrics(ppy), "flat": paths["flat"].metrics(ppy)} for paths in per_fold]
        trials = [Trial((name,), tuple(range(len(folds))), r) for name, r in cols.items()]
        x = GateInputs(stamps, cols[seed_name(PRIMARY, 0)], cols[seed_name(BASELINE, 0)], under, cols,
                       ledger_stats(trials), ChampionReturns("no champion"), ppy)
        gates.append(promotion_gate(metrics, x, cfg.promotion, seed=cfg.seed + run))
    return NullResult(gates)
