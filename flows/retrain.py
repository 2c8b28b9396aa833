"""The ``sentio-retrain`` flow.

ingest -> validate -> panel -> features -> folds -> per fold: regimes -> train MaskablePPO and PPO
-> backtest -> register (gate, MLflow, export) -> report. Training runs one task at a time in a
process: torch's random generator is process-wide, and sharing it between threads would make
results depend on scheduling.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from sentio_core import registry
from sentio_core.config import load_config
from tasks import report
from tasks.backtest import backtest
from tasks.features import features
from tasks.folds import folds
from tasks.ingest import ingest
from tasks.panel import panel
from tasks.regimes import regimes
from tasks.register import register
from tasks.train import train
from tasks.validate import validate


def _call(task, states: dict[str, str], name: str, refresh: bool, *args: Any):
    """Run a task, record its final state name (Completed / Cached), and return its result."""
    state = task.with_options(refresh_cache=refresh)(*args, return_state=True)
    states[name] = state.name
    return state.result()


@flow(name="sentio-retrain", log_prints=True)
def sentio_retrain(config: str = "configs/base.yaml", overrides: list[str] | None = None, refresh: bool = False) -> dict:
    """Retrain on the configured data.

    :param config: config file path.
    :param overrides: ``key=value`` strings applied on top of the file.
    :param refresh: recompute every stage instead of reading the cache.
    """
    cfg = load_config(config, list(overrides or []))
    states: dict[str, str] = {}
    man = _call(ingest, states, "ingest", refresh, cfg)
    checked = _call(validate, states, "validate", refresh, cfg, man)
    bars = _call(panel, states, "panel", refresh, cfg, man, checked)
    feats = _call(features, states, "features", refresh, cfg, bars)
    spans = _call(folds, states, "folds", refresh, cfg, feats)
    futures = [
        regimes.with_options(refresh_cache=refresh).submit(cfg, bars, spans, i)
        for i in range(len(spans.meta["folds"]))
    ]
    regime_outputs = []
    for i, fut in enumerate(futures):
        regime_outputs.append(fut.result())
        states[f"regimes-fold-{i}"] = fut.state.name
    trained, backtests = [], []
    for i, reg in enumerate(regime_outputs):
        fold_models = [_call(train, states, f"train-{algo}-fold-{i}", refresh, cfg, bars, feats, spans, reg, i, algo)
                       for algo in cfg.train.algorithms]
        trained += fold_models
        backtests.append(_call(backtest, states, f"backtest-fold-{i}", refresh, cfg, bars, feats, spans, reg, fold_models, i))
    registered = _call(register, states, "register", refresh, cfg, man, spans, trained, backtests,
                       registry.tracking_uri(cfg.registry))
    rows = report.fold_rows(spans, regime_outputs, backtests)
    report.publish(rows, bars, feats, states, registered, backtests)
    return {"stages": states, "folds": rows, "alignment": bars.meta["alignment_lines"],
            "n_features": feats.meta["n_features"], "registration": registered.meta}
