"""Drift: per-feature PSI and KS between the latest fold's training window and the newest bars,
and regime occupancy; a Prefect markdown artifact and MLflow metrics."""

from __future__ import annotations

import sys

from prefect import task
from prefect.artifacts import create_markdown_artifact

from sentio_core import drift as drift_mod
from sentio_core import io, registry, stages
from tasks.common import StageKey, StageOutput

KEY = StageKey("drift", ("drift", "env", "universe", "regimes"), (stages, drift_mod, io, sys.modules[__name__]))


@task(name="drift", cache_key_fn=KEY.cache_key_fn, persist_result=True, retries=2, retry_delay_seconds=5)
def drift(cfg, panel: StageOutput, features: StageOutput, folds: StageOutput, regimes: StageOutput) -> StageOutput:
    """Write the drift table (JSON), publish it, and log its summary to MLflow (run ``drift-...``)."""
    span = folds.meta["folds"][-1]
    table, occupancy, summary, markdown = stages.drift_report(
        cfg, io.read_parquet(panel.require()), io.read_parquet(features.require()), span, regimes.meta["model"])
    out = KEY.output(cfg, "json", panel, features, folds, regimes)
    io.write_json({"rows": table.rows, "skipped": table.skipped, "occupancy": occupancy, "summary": summary}, out)
    create_markdown_artifact(markdown, key="sentio-drift", description="Feature PSI/KS and regime occupancy: "
                             "latest training window vs the newest bars")
    run_id = registry.log_run(cfg.registry, "drift", {f"drift.{k}": v for k, v in summary.items()},
                              {"kind": "drift", "reference": f"{span['train_start']}..{span['train_end']}",
                               "recent_bars": str(cfg.drift.recent_bars)})
    return StageOutput("drift", str(out), io.file_sha256(out), {"summary": summary, "markdown": markdown,
                                                               "mlflow_run_id": run_id})
