"""Train: one algorithm on one fold's training window; the policy is written as an export (.pth + metadata)."""

from __future__ import annotations

import sys
import threading

from prefect import task
from prefect.concurrency.sync import concurrency

from sentio_core import env, export, io, market, masks, policies, stages, train as train_mod
from sentio_core.config import Config
from sentio_core.train import Budget
from tasks.common import StageKey, StageOutput, fold_market

TRAINING_LIMIT = "sentio-training"  # global concurrency limit: trainings at once (run.training_slots)
# torch's random generator is process-wide: trainings in threads of one process take turns, so a
# run's results do not depend on scheduling (processes of a Dask or Ray cluster train in parallel)
_ONE_AT_A_TIME = threading.Lock()
LEASE_S = 60.0  # the smallest lease the Prefect API accepts
SECTIONS = ("seed", "universe", "env", "masks", "costs", "train")
KEY = StageKey("train", SECTIONS, (stages, train_mod, env, market, masks, policies, export, io, sys.modules[__name__]))


def _train(cfg: Config, panel: StageOutput, features: StageOutput, folds: StageOutput, regimes: StageOutput,
          fold: int, algorithm: str) -> StageOutput:
    """Train ``algorithm`` on the fold; returns the .pth path with the training summary in ``meta``."""
    mkt, span = fold_market(cfg, panel, features, folds, regimes, fold)
    # a short, renewed lease: a killed run's slot frees itself within LEASE_S instead of Prefect's default 300 s
    with concurrency(TRAINING_LIMIT, occupy=1, lease_duration=LEASE_S), _ONE_AT_A_TIME:
        budget = Budget.from_config(cfg, timeout_minutes=cfg.run.train_timeout_minutes)
        result = stages.train(cfg, mkt, span, algorithm, budget)
    summary = {"fold": fold, "algorithm": algorithm, "timesteps": result.timesteps, "episodes": result.episodes,
               "seconds": round(result.seconds, 2), "stopped_by": result.stopped_by, "device": result.device}
    stem = KEY.fold_output("policy", {"cfg": cfg, "panel": panel, "features": features, "folds": folds, "regimes": regimes,
                                      "fold": fold, "algorithm": algorithm})
    spec = {**stages.policy_spec(cfg, mkt, span), "regime_model": regimes.meta["model"], "training": summary}
    pth, meta_json = export.save_policy(result.model, algorithm, stem, spec)
    return StageOutput("train", str(pth), io.file_sha256(pth), {**summary, "metadata_path": str(meta_json)})


# the function keeps its own module-level name so process-based runners (Dask, Ray) can pickle it
train = task(name="train", cache_key_fn=KEY.fold_cache_key_fn, persist_result=True, task_run_name="train-{algorithm}-fold-{fold}")(_train)
