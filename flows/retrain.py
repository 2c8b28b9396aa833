"""The ``sentio-retrain`` flow.

ingest -> validate -> panel -> features -> folds -> re-score the champion on the newest bars
-> per fold (sub-flow ``sentio-folds`` on the configured task runner): regimes -> train MaskablePPO
and PPO -> backtest -> drift report -> register (gate, MLflow, export) -> report. With
``folds.scheme: cpcv`` the folds are the combinatorial splits and the run ends with their backtest
paths (``cpcv-paths``) instead of drift and registration: a research evaluation.

A training task that crashes is retried (``run.train_retries``); a fold that still fails is
reported by fold while the other folds finish, and the run then fails without registering
anything. Trainings hold a slot of the global concurrency limit ``sentio-training``
(``run.training_slots``, one GPU by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_client
from prefect.futures import as_completed

from sentio_core import registry
from sentio_core.config import Config, check_feature_patterns, load_config, preflight
from sentio_core.report import fold_rows
from tasks import report
from tasks.backtest import BacktestOutput, backtest
from tasks.cpcv import CPCVOutput, cpcv
from tasks.drift import drift
from tasks.features import FeaturesOutput, features
from tasks.folds import FoldsOutput, folds
from tasks.ingest import ingest
from tasks.panel import PanelOutput, panel
from tasks.regimes import RegimesOutput, regimes
from tasks.register import RegisterOutput, register
from tasks.rescore import RescoreOutput, rescore
from tasks.runners import task_runner
from tasks.train import TRAINING_LIMIT, TrainOutput, train
from tasks.validate import validate


class FoldFailure(RuntimeError):
    """One or more folds failed after their retries; nothing was registered."""


@dataclass
class FoldWork:
    """One fold's outputs (all None when it failed) and its tasks' final states."""

    states: dict[str, str] = field(default_factory=dict)
    regimes: RegimesOutput | None = None
    trained: list[TrainOutput] = field(default_factory=list)
    backtest: BacktestOutput | None = None
    error: str | None = None


@dataclass(frozen=True)
class RunResult:
    """What ``sentio run`` prints: stage states, the fold table, data notes, the decision."""

    stages: dict[str, str]
    folds: list[dict]
    alignment: list[str]
    n_features: int
    registration: RegisterOutput | None  # None for a combinatorial evaluation (folds.scheme cpcv)
    drift: dict[str, float]
    champion: RescoreOutput
    cpcv: CPCVOutput | None = None


def _call(task, states: dict[str, str], name: str, refresh: bool, *args: Any):
    """Run a task, record its final state name (Completed / Cached), and return its result."""
    state = task.with_options(refresh_cache=refresh)(*args, return_state=True)
    states[name] = state.name
    return state.result()


def _ensure_training_limit(cfg: Config) -> None:
    """Create or resize the ``sentio-training`` limit. On the embedded API (no server) this run is
    its only user and the API keeps no leases between processes, so slots left occupied by a
    killed run are freed here; a real server expires a dead holder's lease itself."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.settings import get_current_settings

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(TRAINING_LIMIT, cfg.run.training_slots)
        if get_current_settings().api.url is None:
            client.update_global_concurrency_limit(TRAINING_LIMIT, GlobalConcurrencyLimitUpdate(active_slots=0))


@flow(name="sentio-folds", persist_result=False)  # records are cached by their tasks; nothing to read back
def fold_work(cfg: Config, bars: PanelOutput, feats: FeaturesOutput, spans: FoldsOutput, refresh: bool) -> list[FoldWork]:
    """Every fold's regimes, trainings and backtest, submitted to the task runner."""
    # the timeout is enforced inside training (a Prefect timeout cannot interrupt a worker thread)
    train_task = train.with_options(refresh_cache=refresh, retries=cfg.run.train_retries)
    per_fold, submitted, futures = [], [], {}
    n_folds = len(spans.folds)
    progress = report.Progress(n_folds * (len(cfg.train.algorithms) + 2))
    for i in range(n_folds):
        reg = regimes.with_options(refresh_cache=refresh).submit(cfg, bars, spans, i)
        trained = [train_task.submit(cfg, bars, feats, spans, reg, i, algo) for algo in cfg.train.algorithms]
        test = backtest.with_options(refresh_cache=refresh).submit(cfg, bars, feats, spans, reg, trained, i)
        names = [f"regimes-fold-{i}", *[f"train-{a}-fold-{i}" for a in cfg.train.algorithms], f"backtest-fold-{i}"]
        futures.update({f: (i, n) for f, n in zip([reg, *trained, test], names)})
        per_fold.append(FoldWork())
        submitted.append((reg, trained, test))
    for fut in as_completed(list(futures)):
        i, name = futures[fut]
        fut.wait()
        progress.step(name, fut.state.name)
    progress.close()
    for fut, (i, name) in futures.items():
        per_fold[i].states[name] = fut.state.name
    for work, (reg, trained, test) in zip(per_fold, submitted):
        failed = [f for f in (reg, *trained, test) if not f.state.is_completed()]
        if failed:
            work.error = _first_error(failed)
            continue
        work.regimes, work.trained, work.backtest = reg.result(), [t.result() for t in trained], test.result()
    return per_fold


def _first_error(futures) -> str:
    for fut in futures:
        try:
            fut.result()
        except Exception as exc:  # the task's own error, reported by fold
            return f"{type(exc).__name__}: {exc}"
    return "upstream task failed"


@flow(name="sentio-retrain", log_prints=True, persist_result=False)
def sentio_retrain(config: str = "configs/base.yaml", overrides: list[str] | None = None, refresh: bool = False) -> RunResult:
    """Retrain on the configured data.

    :param config: config file path.
    :param overrides: ``key=value`` strings applied on top of the file.
    :param refresh: recompute every stage instead of reading the cache.
    """
    cfg = load_config(config, list(overrides or []))
    registry.check_store(cfg.registry)  # a store that cannot be opened fails now, not after the trainings
    states: dict[str, str] = {}
    man = _call(ingest, states, "ingest", refresh, cfg)
    checked = _call(validate, states, "validate", refresh, cfg, man)
    bars = _call(panel, states, "panel", refresh, cfg, man, checked)
    # pre-flight: settings that leave no usable row stop here (ConfigError), before the features
    preflight(cfg, bars.alignment.common_rows, bars.frequency.bars_per_session)
    feats = _call(features, states, "features", refresh, cfg, bars)
    check_feature_patterns(cfg, feats.columns)
    spans = _call(folds, states, "folds", refresh, cfg, bars, feats)
    rescored = _call(rescore, states, "rescore-champion", refresh, cfg, man, bars, feats)
    _ensure_training_limit(cfg)
    per_fold = fold_work.with_options(task_runner=task_runner(cfg.run))(cfg, bars, feats, spans, refresh)
    for work in per_fold:
        states.update(work.states)
    failures = {i: work.error for i, work in enumerate(per_fold) if work.error}
    if failures:
        report.publish(fold_rows(spans.folds, failures=failures), bars, feats, states)
        raise FoldFailure("; ".join(f"fold {i} failed: {err}" for i, err in failures.items())
                          + " (no model registered, nothing exported)")
    regime_outputs = [work.regimes for work in per_fold]
    trained = [t for work in per_fold for t in work.trained]
    backtests = [work.backtest for work in per_fold]
    rows = fold_rows(spans.folds, [(r.train_shares, r.test_shares) for r in regime_outputs],
                     [b.result.metrics for b in backtests])
    if cfg.folds.scheme == "cpcv":  # research evaluation: the paths, no registration, no drift (walk-forward only)
        evaluated = _call(cpcv, states, "cpcv-paths", refresh, cfg, man, bars, spans, trained, backtests)
        report.publish(rows, bars, feats, states, backtests=backtests, champion=rescored, cpcv=evaluated)
        return RunResult(stages=states, folds=rows, alignment=bars.alignment.lines(), n_features=feats.n_features,
                         registration=None, drift={}, champion=rescored, cpcv=evaluated)
    drifted = _call(drift, states, "drift", refresh, cfg, bars, feats, spans, regime_outputs[-1])
    registered = _call(register, states, "register", refresh, cfg, man, bars, spans, trained, backtests, rescored,
                       registry.tracking_uri(cfg.registry))
    report.publish(rows, bars, feats, states, registered, backtests, drifted, rescored)
    return RunResult(stages=states, folds=rows, alignment=bars.alignment.lines(), n_features=feats.n_features,
                     registration=registered, drift=drifted.summary, champion=rescored)
