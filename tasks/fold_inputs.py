"""The market arrays of one fold, read from the stage outputs that the training and backtest tasks share."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sentio_core import files
from sentio_core.config import Config
from sentio_core.market import Market, fold_market

if TYPE_CHECKING:
    from sentio_core.folds import FoldSpan
    from tasks.features import FeaturesOutput
    from tasks.panel import PanelOutput
    from tasks.regimes import RegimesOutput


# One fold's market at a time in this process: a market holds the whole feature table as float32
# (0.8 GB at 2M bars x 100 features), so trainings and backtests in threads of one process take
# turns (processes of a Dask or Ray cluster each hold their own). It also keeps the process-wide
# torch random generator to one training at a time, so a run's results do not depend on scheduling.
ONE_FOLD_AT_A_TIME = threading.Lock()


@contextmanager
def fold_market_held(cfg: Config, panel: PanelOutput, features: FeaturesOutput, regimes: RegimesOutput,
                     span: FoldSpan) -> Iterator[Market]:
    """The fold's market, built and used while holding :data:`ONE_FOLD_AT_A_TIME`."""
    with ONE_FOLD_AT_A_TIME:
        yield read_fold_market(cfg, panel, features, regimes, span)


def read_fold_market(cfg: Config, panel: PanelOutput, features: FeaturesOutput, regimes: RegimesOutput,
                     span: FoldSpan) -> Market:
    """Scan the panel and the feature table (the market reads the columns it needs, a block at a
    time) and read the fold's regime probabilities; build its market."""
    return fold_market(cfg, files.scan_parquet(panel.require()), files.scan_parquet(features.require()),
                       files.read_parquet(regimes.require()), span, panel.frequency.periods_per_year)
