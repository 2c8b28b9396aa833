"""Backtest: one fold's exported policies and the baselines over its test window, out of sample."""

from __future__ import annotations

import sys

import numpy as np
import polars as pl
from prefect import task

from sentio_core import backtest as backtest_mod
from sentio_core import costs, env, export, io, market, masks, metrics, plots, stages
from sentio_core.config import Config
from tasks.common import StageKey, StageOutput, fold_market

KEY = StageKey("backtest", ("seed", "universe", "env", "masks", "costs"),
               (stages, backtest_mod, costs, env, market, masks, metrics, plots, export, io, sys.modules[__name__]))


def _policy(pth: str):
    loaded = export.load_policy(pth)
    masked = loaded.algorithm == "maskable_ppo"
    return (lambda obs, m: loaded.act(obs, m if masked else None)), masked


def _paths_frame(paths: dict[str, backtest_mod.Path]) -> pl.DataFrame:
    first = next(iter(paths.values()))
    cols: dict[str, object] = {"timestamp": first.timestamps}
    for name, p in paths.items():
        cols[f"{name}_equity"] = p.equity
        cols[f"{name}_drawdown"] = metrics.drawdown(p.equity)
        cols[f"{name}_level"] = np.concatenate([[np.nan], p.levels])
    return pl.DataFrame(cols)


def _trades_frame(paths: dict[str, backtest_mod.Path]) -> pl.DataFrame:
    rows = [{"strategy": name, **t} for name, p in paths.items() for t in p.trades]
    schema = {"strategy": pl.String, "timestamp": pl.String, "symbol": pl.String, "shares": pl.Float64, "price": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def _backtest(cfg: Config, panel: StageOutput, features: StageOutput, folds: StageOutput, regimes: StageOutput,
             trained: list[StageOutput], fold: int) -> StageOutput:
    """Write the fold's metrics (JSON), equity/drawdown paths and trades (Parquet) and a plot (PNG)."""
    mkt, span = fold_market(cfg, panel, features, folds, regimes, fold)
    policies = {t.meta["algorithm"]: _policy(t.require()) for t in trained}
    paths = stages.backtest(cfg, mkt, span, policies)
    result = {name: p.metrics(mkt.periods_per_year) for name, p in paths.items()}
    base = KEY.fold_output("json", {"cfg": cfg, "panel": panel, "features": features, "folds": folds, "regimes": regimes,
                                    "trained": trained, "fold": fold})
    stem = str(base)[: -len(".json")]
    files = {"paths": f"{stem}-paths.parquet", "trades": f"{stem}-trades.parquet", "plot": f"{stem}.png"}
    io.write_parquet(_paths_frame(paths), files["paths"])
    io.write_parquet(_trades_frame(paths), files["trades"])
    title = f"fold {fold}: {span['test_start'][:10]} .. {span['test_end'][:10]} (out of sample, after costs)"
    io.write_bytes(plots.equity_drawdown_png(title, paths["flat"].timestamps, {k: p.equity for k, p in paths.items()}),
                   files["plot"])
    io.write_json({"fold": fold, "metrics": result, "files": files}, base)
    meta = {"fold": fold, "metrics": result, **files, "test_start": span["test_start"], "test_end": span["test_end"]}
    return StageOutput("backtest", str(base), io.file_sha256(base), meta)


# the function keeps its own module-level name so process-based runners (Dask, Ray) can pickle it
backtest = task(name="backtest", cache_key_fn=KEY.fold_cache_key_fn, persist_result=True, task_run_name="backtest-fold-{fold}")(_backtest)
