"""Train: one algorithm on one fold's training window; the policy is written as an export (.pth + metadata)."""

from __future__ import annotations

import sys

from prefect import task

from sentio_core import env, export, io, market, masks, policies, stages, train as train_mod
from sentio_core.config import Config
from tasks.common import StageKey, StageOutput, fold_market

SECTIONS = ("seed", "universe", "env", "masks", "costs", "train")
KEY = StageKey("train", SECTIONS, (stages, train_mod, env, market, masks, policies, export, io, sys.modules[__name__]))


@task(name="train", cache_key_fn=KEY.cache_key_fn, persist_result=True, task_run_name="train-{algorithm}-fold-{fold}")
def train(cfg: Config, panel: StageOutput, features: StageOutput, folds: StageOutput, regimes: StageOutput,
          fold: int, algorithm: str) -> StageOutput:
    """Train ``algorithm`` on the fold; returns the .pth path with the training summary in ``meta``."""
    mkt, span = fold_market(cfg, panel, features, folds, regimes, fold)
    result = stages.train(cfg, mkt, span, algorithm)
    summary = {"fold": fold, "algorithm": algorithm, "timesteps": result.timesteps, "episodes": result.episodes,
               "seconds": round(result.seconds, 2), "stopped_by": result.stopped_by, "device": result.device}
    stem = KEY.output(cfg, "policy", panel, features, folds, regimes, fold, algorithm)
    pth, meta_json = export.save_policy(result.model, algorithm, stem, {**stages.policy_spec(cfg, mkt, span), "training": summary})
    return StageOutput("train", str(pth), io.file_sha256(pth), {**summary, "metadata_path": str(meta_json)})
