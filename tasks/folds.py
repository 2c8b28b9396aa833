"""Folds: purged walk-forward windows over the usable feature rows."""

from __future__ import annotations

import sys

from prefect import task

from sentio_core import folds as folds_mod
from sentio_core import io, stages
from sentio_core.config import Config
from tasks.common import StageKey, StageOutput

KEY = StageKey("folds", ("folds", "env"), (stages, folds_mod, io, sys.modules[__name__]))


@task(name="folds", cache_key_fn=KEY.cache_key_fn, persist_result=True)
def folds(cfg: Config, panel: StageOutput, features: StageOutput) -> StageOutput:
    """Write the fold list (indices, ISO timestamps and each fold's data fingerprint); the list
    also travels in ``meta``."""
    bars, feats = io.read_parquet(panel.require()), io.read_parquet(features.require())
    spans = [s.to_dict() for s in stages.folds(cfg, feats)]
    for span in spans:
        span["panel_fingerprint"] = stages.fold_fingerprint(bars, None, span)  # what regimes read
        span["fingerprint"] = stages.fold_fingerprint(bars, feats, span)  # what training and backtests read
    out = KEY.output(cfg, "json", panel, features)
    io.write_json(spans, out)
    return StageOutput("folds", str(out), io.file_sha256(out), {"folds": spans})
