"""Folds: purged walk-forward windows over the usable feature rows, each with its data fingerprints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task

from sentio_core import files
from sentio_core.config import Config
from sentio_core.folds import FoldSpan, fold_spans, with_fingerprints
from tasks.common import RESULTS, StageKey, StageOutput, releasing

if TYPE_CHECKING:
    from tasks.features import FeaturesOutput
    from tasks.panel import PanelOutput

KEY = StageKey("folds", __name__, fold_spans)


class FoldsOutput(StageOutput):
    folds: tuple[FoldSpan, ...]


@task(name="folds", cache_key_fn=KEY.cache_key_fn, **RESULTS)
@releasing
def folds(cfg: Config, panel: PanelOutput, features: FeaturesOutput) -> FoldsOutput:
    """Write the fold list (rows, ISO timestamps and each fold's data fingerprints)."""
    bars, feats = files.scan_parquet(panel.require()), files.scan_parquet(features.require())
    spans = with_fingerprints(fold_spans(cfg, feats), bars, feats)
    out = KEY.output(cfg, "json", panel, features)
    files.write_json([s.model_dump(mode="json") for s in spans], out)
    return FoldsOutput(stage="folds", path=str(out), sha256=files.file_sha256(out), folds=tuple(spans))
