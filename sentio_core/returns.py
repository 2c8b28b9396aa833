"""A fold's out-of-sample bar returns per strategy, read back from its backtest's paths: what the
promotion gate, the trial ledger and the combinatorial paths are computed from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl


@dataclass(frozen=True)
class FoldReturns:
    """One fold's (or split's) out-of-sample bar returns after costs, per strategy."""

    fold: int
    timestamps: list[str]  # each P&L bar's close
    returns: dict[str, np.ndarray]


def strategy_returns(paths: pl.DataFrame) -> tuple[list[str], dict[str, np.ndarray]]:
    """A backtest's paths (``backtest.paths_frame``: ``timestamp`` and ``NAME_equity`` per strategy)
    as bar returns: each P&L bar's close and, per strategy, ``equity[t] / equity[t-1] - 1`` after
    costs (the first row, the decision bar, has none)."""
    names = [c[: -len("_equity")] for c in paths.columns if c.endswith("_equity")]
    out = {}
    for name in names:
        e = paths[f"{name}_equity"].to_numpy().astype(float)
        out[name] = e[1:] / e[:-1] - 1.0
    return [str(t) for t in paths["timestamp"].to_list()[1:]], out


def fold_returns(fold: int, paths: pl.DataFrame) -> FoldReturns:
    return FoldReturns(fold, *strategy_returns(paths))
