"""The market arrays of one fold, read from the stage outputs that the training and backtest tasks share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sentio_core import files
from sentio_core.config import Config
from sentio_core.market import Market, fold_market

if TYPE_CHECKING:
    from sentio_core.folds import FoldSpan
    from tasks.features import FeaturesOutput
    from tasks.panel import PanelOutput
    from tasks.regimes import RegimesOutput


def read_fold_market(cfg: Config, panel: PanelOutput, features: FeaturesOutput, regimes: RegimesOutput,
                     span: FoldSpan) -> Market:
    """Read the panel, the feature table and the fold's regime probabilities; build its market."""
    return fold_market(cfg, files.read_parquet(panel.require()), files.read_parquet(features.require()),
                       files.read_parquet(regimes.require()), span, panel.frequency.periods_per_year)
