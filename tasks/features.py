"""Features: the causal feature table of the aligned panel."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl
from prefect import task

from sentio_core import files
from sentio_core.config import Config
from sentio_core.features import feature_columns, first_complete_row, write_feature_table
from tasks.common import RESULTS, StageKey, StageOutput, releasing

if TYPE_CHECKING:
    from tasks.panel import PanelOutput

KEY = StageKey("features", __name__, write_feature_table)


class FeaturesOutput(StageOutput):
    columns: tuple[str, ...]  # the feature columns (``timestamp`` left out)
    n_features: int
    rows: int
    warmup_rows: int  # rows before every feature is defined

    def line(self) -> str:
        return f"features: {self.n_features} columns, {self.rows} rows, warm-up {self.warmup_rows} rows"


@task(name="features", cache_key_fn=KEY.cache_key_fn, **RESULTS)
@releasing
def features(cfg: Config, panel: PanelOutput) -> FeaturesOutput:
    """Write one row per timestamp with one column per feature."""
    out = write_feature_table(cfg, files.scan_parquet(panel.require()), panel.frequency, KEY.output(cfg, "parquet", panel))
    table = files.scan_parquet(out)  # summarised lazily: the table may not fit in memory
    columns = feature_columns(table)
    return FeaturesOutput(stage="features", path=str(out), sha256=files.file_sha256(out),
                          columns=tuple(columns), n_features=len(columns),
                          rows=table.select(pl.len()).collect().item(), warmup_rows=first_complete_row(table))
