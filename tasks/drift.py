"""Drift: per-feature PSI and KS between the latest fold's training window and the newest bars,
and regime occupancy; a Prefect markdown artifact and MLflow metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task
from prefect.artifacts import create_markdown_artifact

from sentio_core import files, registry
from sentio_core.drift import drift_report
from tasks.common import RESULTS, StageKey, StageOutput, releasing

if TYPE_CHECKING:
    from tasks.features import FeaturesOutput
    from tasks.folds import FoldsOutput
    from tasks.panel import PanelOutput
    from tasks.regimes import RegimesOutput

KEY = StageKey("drift", __name__, drift_report, registry.log_run)


class DriftOutput(StageOutput):
    summary: dict[str, float]
    markdown: str
    mlflow_run_id: str


@task(name="drift", cache_key_fn=KEY.cache_key_fn, **RESULTS, retries=2, retry_delay_seconds=5)
@releasing
def drift(cfg, panel: PanelOutput, features: FeaturesOutput, folds: FoldsOutput, regimes: RegimesOutput) -> DriftOutput:
    """Write the drift table (JSON), publish it, and log its summary to MLflow (run ``drift-...``)."""
    span = folds.folds[-1]
    report = drift_report(cfg, files.scan_parquet(panel.require()), files.scan_parquet(features.require()), span,
                          regimes.model)
    out = KEY.output(cfg, "json", panel, features, folds, regimes)
    files.write_json({"rows": report.table.rows, "skipped": report.table.skipped, "occupancy": report.occupancy,
                      "summary": report.summary}, out)
    create_markdown_artifact(report.markdown, key="sentio-drift", description="Feature PSI/KS and regime occupancy: "
                             "latest training window vs the newest bars")
    run_id = registry.log_run(cfg.registry, "drift", {f"drift.{k}": v for k, v in report.summary.items()},
                              {"kind": "drift", "reference": f"{span.train_start}..{span.train_end}",
                               "recent_bars": str(cfg.drift.recent_bars)})
    return DriftOutput(stage="drift", path=str(out), sha256=files.file_sha256(out), summary=report.summary,
                       markdown=report.markdown, mlflow_run_id=run_id)
