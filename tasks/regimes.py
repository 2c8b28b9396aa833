"""Regimes: one fold's regime model, fitted on its training window only; filtered probabilities forward."""

from __future__ import annotations

import sys

from prefect import task

from sentio_core import io, regimes as regimes_mod, stages
from sentio_core.config import Config
from tasks.common import StageKey, StageOutput

KEY = StageKey("regimes", ("regimes", "seed", "universe"), (stages, regimes_mod, io, sys.modules[__name__]),
               fold_field="panel_fingerprint")


def _regimes(cfg: Config, panel: StageOutput, folds: StageOutput, fold: int) -> StageOutput:
    """Write the fold's filtered regime probabilities (parquet) and fitted model (in ``meta``)."""
    span = folds.meta["folds"][fold]
    result = stages.regimes(cfg, io.read_parquet(panel.require()), span)
    out = KEY.fold_output("parquet", {"cfg": cfg, "panel": panel, "folds": folds, "fold": fold})
    io.write_parquet(result.probabilities, out)
    meta = {"fold": fold, "model": result.model.to_dict(),
            "train_shares": result.train_shares, "test_shares": result.test_shares}
    return StageOutput("regimes", str(out), io.file_sha256(out), meta)


# the function keeps its own module-level name so process-based runners (Dask, Ray) can pickle it
regimes = task(name="regimes", cache_key_fn=KEY.fold_cache_key_fn, persist_result=True, task_run_name="regimes-fold-{fold}")(_regimes)
