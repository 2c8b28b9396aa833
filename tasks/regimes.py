"""Regimes: one fold's regime model, fitted on its training window only; filtered probabilities forward."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task

from sentio_core import files
from sentio_core.config import Config
from sentio_core.regimes import RegimeModel, fold_regimes
from tasks.common import RESULTS, StageKey, StageOutput, releasing

if TYPE_CHECKING:
    from tasks.folds import FoldsOutput
    from tasks.panel import PanelOutput

KEY = StageKey("regimes", __name__, fold_regimes, fold_field="panel_fingerprint")


class RegimesOutput(StageOutput):
    """Filtered probabilities (Parquet) from the fold's train start to its test end, and the fitted model."""

    fold: int
    model: RegimeModel
    train_shares: list[float]
    test_shares: list[float]


@releasing
def _regimes(cfg: Config, panel: PanelOutput, folds: FoldsOutput, fold: int) -> RegimesOutput:
    """Fit the fold's regime model and write its filtered probabilities."""
    result = fold_regimes(cfg, files.scan_parquet(panel.require()), folds.folds[fold])
    out = KEY.fold_output("parquet", {"cfg": cfg, "panel": panel, "folds": folds, "fold": fold})
    files.write_parquet(result.probabilities, out)
    return RegimesOutput(stage="regimes", path=str(out), sha256=files.file_sha256(out), fold=fold, model=result.model,
                         train_shares=result.train_shares, test_shares=result.test_shares)


# the function keeps its own module-level name so process-based runners (Dask, Ray) can pickle it
regimes = task(name="regimes", cache_key_fn=KEY.fold_cache_key_fn, **RESULTS, task_run_name="regimes-fold-{fold}")(_regimes)
