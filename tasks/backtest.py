"""Backtest: one fold's exported policies and the baselines over its test window, out of sample."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task

from sentio_core import files, plots
from sentio_core.backtest import Policy, fold_backtest, fold_metrics, paths_frame, trades_frame
from sentio_core.config import Config
from sentio_core.export import load_policy
from sentio_core.metadata import FoldResult
from sentio_core.algorithms import seed_name
from sentio_core.policies import pin_threads, reads_masks
from sentio_core.returns import FoldReturns, fold_returns
from tasks.common import RESULTS, StageKey, StageOutput, releasing
from tasks.fold_inputs import fold_market_held

if TYPE_CHECKING:
    from tasks.features import FeaturesOutput
    from tasks.folds import FoldsOutput
    from tasks.panel import PanelOutput
    from tasks.regimes import RegimesOutput
    from tasks.train import TrainOutput

KEY = StageKey("backtest", __name__, fold_backtest, fold_metrics)


class BacktestOutput(StageOutput):
    """The fold's metrics (JSON, the record's path), equity/drawdown/level paths and trades (Parquet), a plot (PNG)."""

    result: FoldResult
    paths_file: str
    trades_file: str
    plot_file: str

    def returns(self) -> FoldReturns:
        """Every strategy's out-of-sample bar returns, read back from the paths file."""
        return fold_returns(self.result.fold, files.read_parquet(self.paths_file))


def _policy(pth: str) -> tuple[Policy, bool]:
    """An exported policy as the backtest calls it; a policy that does not read masks is not given them."""
    loaded = load_policy(pth)
    masked = reads_masks(loaded.algorithm)
    return (lambda obs, m: loaded.act(obs, m if masked else None)), masked


def _policies(trained: list[TrainOutput]) -> dict[str, tuple[Policy, bool]]:
    """Each algorithm's chosen policy under its own name and, with several seeds, every seed as
    ``ALGORITHM_seedK`` (the chosen seed's entry is the same policy object: one call per bar for both)."""
    out: dict[str, tuple[Policy, bool]] = {}
    for t in trained:
        chosen = out[t.algorithm] = _policy(t.require())
        for k, (path, seed) in enumerate(zip(t.seed_paths, t.training.seeds)):
            out[seed_name(t.algorithm, k)] = chosen if seed.seed == t.training.seed else _policy(path)
    return out


@releasing
def _backtest(cfg: Config, panel: PanelOutput, features: FeaturesOutput, folds: FoldsOutput, regimes: RegimesOutput,
              trained: list[TrainOutput], fold: int) -> BacktestOutput:
    """Write the fold's metrics, paths, trades and plot."""
    span = folds.folds[fold]
    pin_threads(cfg.train)
    with fold_market_held(cfg, panel, features, regimes, span) as mkt:
        paths = fold_backtest(cfg, mkt, span, _policies(trained))
        result = FoldResult(fold=fold, test_start=span.test_start, test_end=span.test_end,
                            metrics=fold_metrics(cfg, mkt, span, paths, [t.algorithm for t in trained]))
    base = KEY.fold_output("json", {"cfg": cfg, "panel": panel, "features": features, "folds": folds, "regimes": regimes,
                                    "trained": trained, "fold": fold})
    stem = str(base)[: -len(".json")]
    out = {"paths_file": f"{stem}-paths.parquet", "trades_file": f"{stem}-trades.parquet", "plot_file": f"{stem}.png"}
    files.write_parquet(paths_frame(paths), out["paths_file"])
    files.write_parquet(trades_frame(paths), out["trades_file"])
    title = f"fold {fold}: {span.test_start[:10]} .. {span.test_end[:10]} (out of sample, after costs)"
    files.write_bytes(plots.equity_drawdown_png(title, paths["flat"].timestamps, {k: p.equity for k, p in paths.items()}),
                      out["plot_file"])
    files.write_json(result.model_dump(mode="json") | out, base)
    return BacktestOutput(stage="backtest", path=str(base), sha256=files.file_sha256(base), result=result, **out)


# the function keeps its own module-level name so process-based runners (Dask, Ray) can pickle it
backtest = task(name="backtest", cache_key_fn=KEY.fold_cache_key_fn, **RESULTS, task_run_name="backtest-fold-{fold}")(_backtest)
