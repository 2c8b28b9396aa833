"""Features: the causal feature table of the aligned panel."""

from __future__ import annotations

import sys

from prefect import task

from sentio_core import features as features_mod
from sentio_core import io, stages
from sentio_core.config import Config
from sentio_core.data import BarFrequency
from tasks.common import StageKey, StageOutput

KEY = StageKey("features", ("features", "universe", "data"), (stages, features_mod, io, sys.modules[__name__]))


@task(name="features", cache_key_fn=KEY.cache_key_fn, persist_result=True)
def features(cfg: Config, panel: StageOutput) -> StageOutput:
    """Write one row per timestamp with one column per feature."""
    bars = io.read_parquet(panel.require())
    table = stages.features(cfg, bars, BarFrequency(**panel.meta["frequency"]))
    out = KEY.output(cfg, "parquet", panel)
    io.write_parquet(table, out)
    meta = {"n_features": table.width - 1, "rows": table.height, "warmup_rows": features_mod.first_complete_row(table)}
    return StageOutput("features", str(out), io.file_sha256(out), meta)
