"""The pipeline's stages as plain functions of (config, inputs): shared by the CLI and the Prefect tasks.

Each function is pure apart from reading the source files named in a manifest; writing outputs
and caching belong to the callers (``tasks/``), so the CLI and the flow compute the same thing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from sentio_core.backtest import Path as BacktestPath
from sentio_core.backtest import backtest_fold
from sentio_core.config import Config
from sentio_core.data import AlignmentReport, BarFrequency, align, bar_frequency, read_raw, to_bars
from sentio_core.features import build_features, feature_columns, first_complete_row
from sentio_core.folds import Fold, from_config
from sentio_core.io import SourceFile, discover, file_sha256
from sentio_core.market import Market, build_market
from sentio_core.metrics import performance
from sentio_core.regimes import RegimeModel, fit_regimes, forward_filter, regime_shares
from sentio_core.train import Budget, TrainResult, train_policy
from sentio_core.universe import add_synthetic_legs
from sentio_core.validation import ValidationReport, validate_sources


def manifest(cfg: Config) -> dict:
    """Source files of the configured symbols with their SHA-256 (the run's data fingerprint)."""
    sources = discover(cfg.data.path, None if cfg.data.path.is_file() else cfg.universe.symbols)
    files = [{"path": str(s.path), "symbol": s.symbol, "sha256": file_sha256(s.path)} for s in sources]
    return {"symbols": cfg.universe.symbols, "files": files}


def _sources(man: dict) -> list[SourceFile]:
    return [SourceFile(Path(f["path"]), f["symbol"]) for f in man["files"]]


def validate(cfg: Config, man: dict) -> ValidationReport:
    """Run the validation gate over every source file in the manifest."""
    return validate_sources(_sources(man), cfg.validation, cfg.data.calendar, cfg.data.timezone, man["symbols"])


def panel(cfg: Config, man: dict) -> tuple[pl.DataFrame, AlignmentReport, BarFrequency]:
    """Typed bars of every symbol aligned on common timestamps, the alignment report and bar spacing."""
    raws = read_raw(_sources(man), cfg.data.timezone, man["symbols"])
    frame, report = align([to_bars(r) for r in raws])
    frame = add_synthetic_legs(frame, cfg.universe)
    freq = bar_frequency(frame.filter(pl.col("symbol") == cfg.universe.underlying)["timestamp"])
    return frame, report, freq


def features(cfg: Config, bars: pl.DataFrame, freq: BarFrequency) -> pl.DataFrame:
    """The feature table of the aligned panel."""
    return build_features(bars, cfg.universe, cfg.features, freq, cfg.data.calendar, cfg.data.timezone)


@dataclass(frozen=True)
class FoldSpan:
    """A fold in both coordinates: indices into the feature table, and timestamps (ISO, inclusive ends)."""

    fold: Fold
    offset: int  # feature-table row of usable bar 0 (end of the warm-up)
    train_start: str
    train_end: str
    test_start: str
    test_end: str

    def row(self, i: int) -> int:
        """Feature-table row of usable bar ``i``."""
        return self.offset + i

    def to_dict(self) -> dict:
        f = self.fold
        return {
            "fold": f.fold, "train_start": self.train_start, "train_end": self.train_end,
            "test_start": self.test_start, "test_end": self.test_end,
            "purge_bars": f.purge_bars, "embargo_bars": f.embargo_bars,
            "train_bars": f.train_bars, "test_bars": f.test_bars,
            "train_rows": [self.row(f.train_start), self.row(f.train_end)],
            "test_rows": [self.row(f.test_start), self.row(f.test_end)],
        }


def folds(cfg: Config, feats: pl.DataFrame) -> list[FoldSpan]:
    """Purged walk-forward folds over the usable rows (every feature defined)."""
    offset = first_complete_row(feats)
    ts = feats["timestamp"][offset:]
    iso = [t.isoformat() for t in ts.to_list()]
    n_used = len(iso) - len(iso) % cfg.folds.step_bars  # the layout moves only once every step_bars bars
    out = []
    for f in from_config(cfg.folds, cfg.purge_bars).folds(n_used):
        out.append(FoldSpan(f, offset, iso[f.train_start], iso[f.train_end - 1], iso[f.test_start], iso[f.test_end - 1]))
    return out


def fold_fingerprint(bars: pl.DataFrame, feats: pl.DataFrame | None, span: dict) -> str:
    """SHA-256 (16 hex) of everything a fold's work reads: the panel rows (and, unless ``feats`` is
    None, the feature rows) up to the end of its test window, and the window itself. Features are
    causal, so bars appended later leave it unchanged and the fold's work stays cached."""
    end = span["test_rows"][1]
    last = bars["timestamp"].unique().sort()[end - 1]
    digest = hashlib.sha256(json.dumps({k: v for k, v in span.items() if not k.endswith("fingerprint")},
                                       sort_keys=True).encode())
    frames = [bars.filter(pl.col("timestamp") <= last).sort("symbol", "timestamp")]
    if feats is not None:
        frames.append(feats.slice(0, end))
    for frame in frames:
        for name in frame.columns:
            col = frame[name]
            digest.update(name.encode())
            if col.dtype == pl.String:
                digest.update("\x00".join(col.to_list()).encode())
            else:
                values = col.dt.epoch("us") if col.dtype.is_temporal() else col
                digest.update(values.cast(pl.Float64).fill_null(float("nan")).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def underlying_returns(cfg: Config, bars: pl.DataFrame) -> np.ndarray:
    """1-bar log returns of the underlying, one per panel timestamp (the first is NaN)."""
    close = bars.filter(pl.col("symbol") == cfg.universe.underlying).sort("timestamp")["close"].to_numpy()
    out = np.full(len(close), np.nan)
    out[1:] = np.log(close[1:] / close[:-1])
    return out


@dataclass(frozen=True)
class FoldRegimes:
    model: RegimeModel
    probabilities: pl.DataFrame  # timestamp, regime_0..K-1, from train start to test end
    train_shares: list[float]
    test_shares: list[float]


def fold_seed(cfg: Config, span: dict) -> int:
    """The seed of one fold's fits and trainings: ``seed + 1000 x fold``."""
    return cfg.seed + 1000 * int(span["fold"])


def regime_frame(timestamps: pl.Series, probs: np.ndarray) -> pl.DataFrame:
    """``timestamp, regime_0..K-1`` from filtered probabilities of shape (T, K)."""
    return pl.DataFrame({"timestamp": timestamps}).with_columns(
        [pl.Series(f"regime_{k}", probs[:, k]) for k in range(probs.shape[1])])


def regimes(cfg: Config, bars: pl.DataFrame, span: dict) -> FoldRegimes:
    """Fit the regime model on one fold's training rows, then filter forward through its test rows.

    :param span: a fold as produced by :meth:`FoldSpan.to_dict` (feature-table rows, which are
        the panel's timestamps in order).
    """
    r = underlying_returns(cfg, bars)
    (a, b), (c, d) = span["train_rows"], span["test_rows"]
    model = fit_regimes(r[a:b], cfg.regimes, seed=fold_seed(cfg, span))
    probs = forward_filter(model, r[a:d])
    timestamps = bars.filter(pl.col("symbol") == cfg.universe.underlying).sort("timestamp")["timestamp"]
    return FoldRegimes(model, regime_frame(timestamps[a:d], probs), regime_shares(probs[: b - a]), regime_shares(probs[c - a:]))


# --- per fold: market, training, backtest ---------------------------------------------------

def fold_market(cfg: Config, bars: pl.DataFrame, feats: pl.DataFrame, regime_probs: pl.DataFrame | None,
                span: dict, freq: BarFrequency) -> Market:
    """The fold's market arrays, normalised with its training rows only."""
    return build_market(cfg, bars, feats, regime_probs, tuple(span["train_rows"]), freq.periods_per_year)


def train(cfg: Config, market: Market, span: dict, algorithm: str, budget: Budget | None = None,
          learning_rate: float | None = None, on_progress=None) -> TrainResult:
    """Train one algorithm on the fold's training rows, seeded with :func:`fold_seed`."""
    return train_policy(algorithm, market, cfg, tuple(span["train_rows"]), fold_seed(cfg, span), budget,
                        learning_rate, on_progress)


def policy_spec(cfg: Config, market: Market, span: dict) -> dict:
    """What a user of an exported policy needs to build its inputs and read its outputs."""
    return {
        "action_meanings": action_meanings(cfg, market),
        "exposure_levels": market.levels.tolist(),
        "observation": {
            "lookback_bars": cfg.env.lookback_bars, "features": market.feature_names,
            "layout": "lookback_bars x features (oldest first, row-major), then state",
            "state": ["exposure", "drawdown", "bars_held/(bars_held+20)", "current_level"],
            "normalisation": {"mean": market.norm_mean.tolist(), "std": market.norm_std.tolist(),
                              "clip": cfg.env.clip_obs, "fitted_on": [span["train_start"], span["train_end"]]},
        },
        "legs": [{"symbol": leg.symbol, "direction": leg.direction} for leg in market.legs],
        "fold": span["fold"], "train_window": [span["train_start"], span["train_end"]],
        "test_window": [span["test_start"], span["test_end"]],
    }


def action_meanings(cfg: Config, market: Market) -> list[str]:
    """Human-readable meaning of each action index."""
    out = []
    for level in market.levels:
        if level == 0:
            out.append("flat (cash)")
        elif level > 0:
            out.append(f"{level:+.0%} of equity in {cfg.universe.long_leg}")
        else:
            how = "short" if cfg.universe.short_sign < 0 else "in"
            out.append(f"{level:+.0%} exposure: {abs(level):.0%} of equity {how} {cfg.universe.short_leg}")
    return out


def backtest(cfg: Config, market: Market, span: dict, policies: dict) -> dict[str, BacktestPath]:
    """Policies and baselines over the fold's test rows (see :func:`sentio_core.backtest.backtest_fold`)."""
    return backtest_fold(market, cfg, tuple(span["test_rows"]), policies)


# --- nightly: the champion on the newest bars, and drift ------------------------------------

def row_of(feats: pl.DataFrame, iso: str) -> int:
    """Feature-table row of an ISO timestamp written by :func:`folds`."""
    iso_all = [t.isoformat() for t in feats["timestamp"].to_list()]
    if iso not in iso_all:
        raise ValueError(f"timestamp {iso} is not in the data (was history rewritten?)")
    return iso_all.index(iso)


def rescore(cfg: Config, bars: pl.DataFrame, feats: pl.DataFrame, freq: BarFrequency, policy) -> dict:
    """An exported policy (``export.LoadedPolicy``) from the start of its test window to the newest
    bar: everything it never trained on, with its own config, features and normalisation.

    :returns: ``{"metrics": {strategy: metrics}, "since_test": metrics of the bars after its test
        window (or None), "first", "last", "bars", "new_bars"}``.
    """
    md = policy.metadata
    ccfg = Config.model_validate(md["config"])
    a, c = row_of(feats, md["train_window"][0]), row_of(feats, md["test_window"][0])
    t_end = row_of(feats, md["test_window"][1])
    model = RegimeModel.from_dict(md["regime_model"])
    frame = regime_frame(feats["timestamp"][a:], forward_filter(model, underlying_returns(ccfg, bars)[a:]))
    norm = md["observation"]["normalisation"]
    market = build_market(ccfg, bars, feats, frame, (a, c), freq.periods_per_year,
                          fitted=(md["observation"]["features"], norm["mean"], norm["std"]))
    paths = backtest_fold(market, ccfg, (c, market.n_rows), {"champion": (policy.act, True)})
    metrics = {k: p.metrics(freq.periods_per_year) for k, p in paths.items()}
    new = market.n_rows - 1 - t_end
    since = None
    if new >= 2:
        since = performance(paths["champion"].equity[t_end - c + 1:], periods_per_year=freq.periods_per_year)
    return {"metrics": metrics, "since_test": since, "first": market.timestamps[c], "last": market.timestamps[-1],
            "bars": market.n_rows - c, "new_bars": new}


def drift_report(cfg: Config, bars: pl.DataFrame, feats: pl.DataFrame, span: dict, regime_model: dict):
    """Feature and regime drift between the latest fold's training window and the newest bars.

    :returns: ``(DriftTable, occupancy, summary metrics, markdown)``.
    """
    from sentio_core import drift
    from sentio_core.market import select_features

    names = select_features(feature_columns(feats), cfg.env.feature_columns)
    a, b = span["train_rows"]
    x = feats.select(names).to_numpy().astype(float)
    recent = x[-cfg.drift.recent_bars:]
    table = drift.feature_drift(x[a:b], recent, names, bins=cfg.drift.psi_bins)
    probs = forward_filter(RegimeModel.from_dict(regime_model), underlying_returns(cfg, bars)[a:])
    occupancy = drift.regime_occupancy(probs[: b - a], probs[-cfg.drift.recent_bars:])
    summary = drift.summarise(table, occupancy, cfg.drift.psi_warn, cfg.drift.psi_alert)
    return table, occupancy, summary, drift.to_markdown(table, occupancy, summary)
