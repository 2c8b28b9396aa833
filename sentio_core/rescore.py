"""The current champion on the newest bars: how the exported policy did on everything it never
trained on, scored with its own config, features, normalisation and regime model."""

from __future__ import annotations

import datetime as dt

from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from sentio_core.backtest import Policy, backtest_fold
from sentio_core.config import MODEL_SECTIONS, Config, reads
from sentio_core.frequency import BarFrequency
from sentio_core.market import build_market
from sentio_core.metadata import ExportMetadata
from sentio_core.metrics import performance
from sentio_core.policies import reads_masks
from sentio_core.regimes import RegimeModel, forward_filter, regime_frame, underlying_returns


@reads("registry")
def champion_path(cfg: Config) -> Path:
    """Where the exported champion's weights are: ``registry.export_dir/registry.model_name.pth``."""
    return Path(cfg.registry.export_dir) / f"{cfg.registry.model_name}.pth"


@dataclass(frozen=True)
class RescoreResult:
    """The champion from the start of its test window to the newest bar.

    :param metrics: strategy (``champion`` and the baselines) -> out-of-sample metrics.
    :param since_test: metrics of the bars after its test window (None when fewer than 2).
    :param timestamps, returns: the champion's bar returns after costs over those bars, each P&L
        bar's close (the promotion gate's paired comparison with a candidate).
    """

    metrics: dict[str, dict[str, float]]
    since_test: dict[str, float] | None
    first: str
    last: str
    bars: int
    new_bars: int
    timestamps: list[str]
    returns: list[float]

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_line(self) -> str:
        """Markdown lines for the run summary."""
        m = self.metrics["champion"]
        text = (f"- {self.bars} bars {self.first[:10]} .. {self.last[:10]} (its test window and after): "
                f"Sharpe {m['sharpe']:.2f}, return {m['total_return']:.1%}, max drawdown {m['max_drawdown']:.1%}, "
                f"overrides {int(m['overrides'])}; buy-and-hold underlying Sharpe "
                f"{self.metrics['buy_hold_underlying']['sharpe']:.2f}, trend_vol rule Sharpe "
                f"{self.metrics['trend_vol']['sharpe']:.2f}")
        if self.since_test is not None:
            s = self.since_test
            text += f"\n- {self.new_bars} bars after its test window: return {s['total_return']:.1%}, Sharpe {s['sharpe']:.2f}"
        return text

    def mlflow_metrics(self) -> dict[str, float]:
        out = {f"{k}.{m}": v for k, ms in self.metrics.items() for m, v in ms.items()}
        if self.since_test is not None:
            out.update({f"since_test.{m}": v for m, v in self.since_test.items()})
        return out


def row_of(stamps: pl.Series, iso: str) -> int:
    """Row of an ISO timestamp (as the folds stage writes them) among the feature table's timestamps."""
    try:
        wanted = dt.datetime.fromisoformat(iso)
    except ValueError:
        wanted = None
    hits: list | pl.Series = []
    if wanted is not None and wanted.tzinfo is not None and isinstance(stamps.dtype, pl.Datetime):
        instant = pl.lit(wanted).dt.convert_time_zone(stamps.dtype.time_zone or "UTC")
        hits = stamps.to_frame().with_row_index("_row").filter(pl.col("timestamp") == instant)["_row"]
    if len(hits) == 0 or stamps[int(hits[0])].isoformat() != iso:
        raise ValueError(f"timestamp {iso} is not in the data (was history rewritten?)")
    return int(hits[0])


@reads(schema=MODEL_SECTIONS)  # no value of this run's config: the policy is scored with its own, validated by the schema
def rescore(metadata: ExportMetadata, act: Policy, bars: pl.DataFrame | pl.LazyFrame, feats: pl.DataFrame | pl.LazyFrame,
            freq: BarFrequency) -> RescoreResult:
    """Backtest an exported policy from the start of its test window to the newest bar.

    :param act: the policy's masked deterministic actions (``LoadedPolicy.act``).
    :param bars: the panel, :param feats: the feature table, in memory or scanned lazily.
    """
    cfg = metadata.run_config()
    spec = metadata.policy
    stamps = feats.lazy().select("timestamp").collect()["timestamp"]
    a, c = row_of(stamps, spec.train_window[0]), row_of(stamps, spec.test_window[0])
    t_end = row_of(stamps, spec.test_window[1])
    model = RegimeModel.from_dict(metadata.regime_model)
    frame = regime_frame(stamps[a:], forward_filter(model, underlying_returns(cfg, bars)[a:]))
    norm = spec.observation.normalisation
    market = build_market(cfg, bars, feats, frame, (a, c), freq.periods_per_year,
                          fitted=(spec.observation.features, norm.mean, norm.std))
    masked = reads_masks(metadata.algorithm)  # a policy that does not read masks is overridden, as in its own backtest
    paths = backtest_fold(market, cfg, (c, market.n_rows), {"champion": (lambda o, m: act(o, m if masked else None), masked)})
    metrics = {k: p.metrics(freq.periods_per_year) for k, p in paths.items()}
    new = market.n_rows - 1 - t_end
    since = None
    if new >= 2:
        since = performance(paths["champion"].equity[t_end - c + 1:], periods_per_year=freq.periods_per_year)
    champ = paths["champion"]
    returns = (champ.equity[1:] / champ.equity[:-1] - 1.0).tolist()
    return RescoreResult(metrics, since, market.timestamps[c], market.timestamps[-1], market.n_rows - c, new,
                         list(champ.timestamps[1:]), returns)
