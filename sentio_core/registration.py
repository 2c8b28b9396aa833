"""What registration records, decided before anything is written: the promotion gate, the MLflow
params, tags and metrics of the parent and child runs, and the out-of-sample evidence and data
provenance of the export. Pure; ``tasks/register.py`` writes it to MLflow and the export folder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sentio_core.algorithms import BASELINE, PRIMARY, seed_name
from sentio_core.baselines import NAMES as CHILD_BASELINES  # every baseline's headline metrics go with each child run
from sentio_core.config import MODEL_SECTIONS, Config, TrainConfig, flatten, reads, stable_hash
from sentio_core.evidence import bootstrap_equity_band
from sentio_core.metadata import DataProvenance, FoldResult, OutOfSample, TrainingSummary
from sentio_core.metrics import pool_regime_slices
from sentio_core.promotion import UNDERLYING, ChampionReturns, GateInputs, GateResult, promotion_gate
from sentio_core.returns import FoldReturns
from sentio_core.trials import TrialRecord, group, ledger_stats

if TYPE_CHECKING:  # records handed in by the stages (data only)
    from sentio_core.data import Manifest
    from sentio_core.folds import FoldSpan

CHILD_BASELINE_METRICS = ("sharpe", "total_return", "max_drawdown")
CHILD_TRAINING_METRICS = ("timesteps", "episodes", "seconds")


def child_metrics(algorithm: str, fold_metrics: dict[str, dict[str, float]], training: TrainingSummary) -> dict[str, float]:
    """An algorithm's child-run metrics for one fold: its own out-of-sample metrics, the baselines'
    headline metrics (``flat.sharpe``, ...) and the training's length (``train.timesteps``, ...)."""
    out = {k: float(v) for k, v in fold_metrics[algorithm].items()}
    for base in CHILD_BASELINES:
        out.update({f"{base}.{k}": float(v) for k, v in fold_metrics[base].items() if k in CHILD_BASELINE_METRICS})
    out.update({f"train.{k}": float(getattr(training, k)) for k in CHILD_TRAINING_METRICS})
    return out


def run_tags(cfg: Config, data_fingerprint: str, code_version: str) -> dict[str, str]:
    """What identifies a run's models: ``data_fingerprint``, ``config_hash`` and ``code_version``."""
    return {"data_fingerprint": data_fingerprint, "config_hash": stable_hash(cfg.identity()), "code_version": code_version}


def variant_label(train: TrainConfig) -> str:
    """The network and objective in a few words: ``mlp``, ``transformer+quantile+gating+cvar0.3+akl``."""
    parts = [train.policy] + (["quantile"] if train.critic == "quantile" else [])
    parts += (["gating"] if train.regime_gating else []) + ([f"cvar{train.cvar_weight:g}"] if train.cvar_weight > 0 else [])
    return "+".join(parts + (["akl"] if train.adaptive_kl else []))


def seed_columns(algorithm: str, returns: dict[str, np.ndarray]) -> list[str]:
    """The backtest's names of an algorithm's seeds: ``ALGO_seedK`` with several seeds, else its own name."""
    seeds, k = [], 0
    while seed_name(algorithm, k) in returns:
        seeds.append(seed_name(algorithm, k))
        k += 1
    return seeds or [algorithm]


@reads(*MODEL_SECTIONS)
def run_trials(cfg: Config, folds: Sequence[FoldReturns], trainings: dict[tuple[int, str], TrainingSummary],
               tags: dict[str, str], universe: str, bar_frequency: str,
               policies: dict[tuple[int, str], list[str]] | None = None) -> dict[tuple[int, str], list[TrialRecord]]:
    """This run's trials: every seed of every fold and algorithm, with its out-of-sample returns.

    :param tags: the run's ``config_hash``, ``data_fingerprint`` and ``code_version``.
    :param policies: ``(fold, algorithm)`` -> each seed's weights SHA-256, in seed order.
    :returns: ``(fold, algorithm)`` -> its seeds' records, in seed order.
    """
    policies = policies or {}
    out: dict[tuple[int, str], list[TrialRecord]] = {}
    for f in folds:
        for algo in cfg.train.algorithms:
            training = trainings[(f.fold, algo)]
            seeds = [s.seed for s in training.seeds] or [training.seed if training.seed is not None else cfg.seed]
            columns = seed_columns(algo, f.returns)
            out[(f.fold, algo)] = [TrialRecord(
                experiment=cfg.registry.experiment, universe=universe, bar_frequency=bar_frequency,
                config_hash=tags["config_hash"], algorithm=algo, variant=variant_label(cfg.train),
                seed=seeds[k] if k < len(seeds) else -1, seed_index=k, fold=f.fold,
                chosen=len(columns) == 1 or (k < len(seeds) and seeds[k] == training.seed),
                data_fingerprint=tags["data_fingerprint"], code_version=tags["code_version"],
                timestamps=f.timestamps, returns=f.returns[col].tolist(),
                policy_sha256=(policies.get((f.fold, algo)) or [""] * len(columns))[k]) for k, col in enumerate(columns)]
    return out


@reads("train")
def gate_inputs(cfg: Config, folds: Sequence[FoldReturns], ledger: Sequence[TrialRecord], champion: ChampionReturns,
                periods_per_year: float) -> GateInputs:
    """The gate's inputs: the folds' test bars concatenated, the run's configurations (algorithm x
    seed) as the PBO matrix, and the ledger's statistics (every relevant trial, this run's included)."""
    cat = lambda name: np.concatenate([f.returns[name] for f in folds])
    configurations = {col: cat(col) for algo in cfg.train.algorithms for col in seed_columns(algo, folds[0].returns)}
    trials = group(ledger)
    return GateInputs(timestamps=[t for f in folds for t in f.timestamps], candidate=cat(PRIMARY), ppo=cat(BASELINE),
                      underlying=cat(UNDERLYING), configurations=configurations,
                      ledger=ledger_stats(trials, len(ledger)), champion=champion, periods_per_year=periods_per_year)


@dataclass(frozen=True)
class ChildRun:
    fold: int
    algorithm: str
    metrics: dict[str, float]

    @property
    def name(self) -> str:
        return f"{self.algorithm}-fold-{self.fold}"


@dataclass(frozen=True)
class RegistrationPlan:
    gate: GateResult
    params: dict[str, str]  # the flattened config, operational sections left out
    tags: dict[str, str]  # data_fingerprint, config_hash, code_version
    children: list[ChildRun]  # fold by fold, in train.algorithms order
    parent_metrics: dict[str, float]  # the gate's summary over folds, ``strategy.metric``
    out_of_sample: OutOfSample
    data: DataProvenance
    regimes: dict[str, dict[str, float]]  # strategy -> results by filtered regime in force, pooled over folds


@reads(*MODEL_SECTIONS)
def plan_registration(cfg: Config, manifest: Manifest, data_fingerprint: str, spans: Sequence[FoldSpan],
                      folds: Sequence[FoldResult], trainings: dict[tuple[int, str], TrainingSummary],
                      code_version: str, evidence: GateInputs) -> RegistrationPlan:
    """Gate the primary algorithm on the folds' out-of-sample metrics and lay out what to record.

    :param data_fingerprint: the SHA-256 of the written manifest (``Manifest.fingerprint``).
    :param folds: one result per fold, in fold order.
    :param trainings: ``(fold, algorithm)`` -> the training's summary, for every fold and ``train.algorithms`` entry.
    :param evidence: the out-of-sample returns and the ledger (:func:`gate_inputs`).
    """
    gate = promotion_gate([f.metrics for f in folds], evidence, cfg.promotion, cfg.seed)
    regimes = pooled_regimes(cfg, folds, evidence.periods_per_year)
    tags = run_tags(cfg, data_fingerprint, code_version)
    children = [ChildRun(f.fold, algo, child_metrics(algo, f.metrics, trainings[(f.fold, algo)]))
                for f in folds for algo in cfg.train.algorithms]
    data = DataProvenance(fingerprint=data_fingerprint,
                          files=[r.model_dump() for r in manifest.files],
                          first_train=spans[0].train_start, last_test=spans[-1].test_end)
    return RegistrationPlan(
        gate=gate, params=flatten(cfg, operational=False), tags=tags, children=children,
        parent_metrics={**{f"{name}.{k}": v for name, s in gate.summary.items() for k, v in s.items()}, **gate_metrics(gate),
                        **regime_metrics(regimes)},
        out_of_sample=OutOfSample(folds=list(folds), summary=gate.summary, gate=gate.reasons,
                                  evidence={**gate_record(gate), "regimes": regimes}), data=data, regimes=regimes)


def regime_metrics(regimes: dict[str, dict[str, float]]) -> dict[str, float]:
    """``regime_K.STRATEGY.sharpe`` (and ``bars``, ``return``) for the parent run."""
    out = {}
    for name, m in regimes.items():
        for key, v in m.items():
            k, _, stat = key.removeprefix("regime_").partition("_")
            if stat in ("bars", "sharpe", "return"):
                out[f"regime_{k}.{name}.{stat}"] = v
    return out


@reads("regimes")
def pooled_regimes(cfg: Config, folds: Sequence[FoldResult], periods_per_year: float) -> dict[str, dict[str, float]]:
    """Results by filtered regime in force over all folds, per strategy that the backtest sliced."""
    out = {}
    for name in folds[0].metrics:
        parts = [f.metrics[name] for f in folds if "regime_0_bars" in f.metrics.get(name, {})]
        if len(parts) == len(folds):
            out[name] = pool_regime_slices(parts, cfg.regimes.n_regimes, periods_per_year)
    return out


def gate_metrics(gate: GateResult) -> dict[str, float]:
    """The parent run's ``n_trials`` and each check's value (``gate.deflated_sharpe``, ...) and verdict (1 pass, 0 not)."""
    out = {"n_trials": float(gate.evidence["deflated"]["n_trials"])}
    for c in gate.checks:
        key = "gate." + c.name.lower().replace(" ", "_").replace("-", "_")
        if c.value is not None:
            out[key] = float(c.value)
        out[f"{key}.passed"] = float(c.verdict == "pass")
    return out


def gate_record(gate: GateResult) -> dict:
    """What the export metadata keeps of the gate: every check and the statistics behind it."""
    return {"passed": gate.passed, "checks": [{"name": c.name, "value": c.value, "threshold": c.threshold,
                                               "verdict": c.verdict, "detail": c.detail} for c in gate.checks],
            "deflated": gate.evidence["deflated"],
            "pbo": {k: v for k, v in (gate.evidence.get("pbo") or {}).items() if k != "logit_histogram"},
            "paired": gate.evidence["paired"], "champion_status": gate.evidence["champion_status"]}


def evidence_curves(x: GateInputs, cfg: Config) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Growth of 1 over the concatenated test bars: the candidate, PPO, buy-and-hold of the
    underlying and the champion (from the first bar after its training window and purge, started at
    the candidate's level there; NaN before), and the candidate's stationary-bootstrap band
    (90 %, the paired tests' block length)."""
    grow = lambda r: np.cumprod(1.0 + r)
    curves = {PRIMARY: grow(x.candidate), BASELINE: grow(x.ppo), UNDERLYING: grow(x.underlying)}
    if x.champion.status == "scored":
        theirs = dict(zip(x.champion.timestamps, x.champion.returns))
        rows = [i for i, ts in enumerate(x.timestamps) if ts in theirs]
        if rows:
            champ = np.full(x.candidate.size, np.nan)
            start = curves[PRIMARY][rows[0] - 1] if rows[0] > 0 else 1.0
            champ[rows] = start * grow(np.array([theirs[x.timestamps[i]] for i in rows]))
            curves[f"champion v{x.champion.version or '?'}"] = champ
    band = bootstrap_equity_band(x.candidate, block=cfg.promotion.bootstrap_block_bars, n=1000, alpha=0.1, seed=cfg.seed)
    return curves, band
