"""Markets shared by the mask, environment and backtest tests.

* :func:`real_fold` builds fold 0 of ``configs/smoke.yaml`` from the shipped daily data (panel,
  features, regimes, market), once per process and per override set (``functools.lru_cache``).
* :func:`toy_market` builds a small hand-made :class:`Market` whose arithmetic can be checked by hand.
* :func:`synthetic_cfg` is a smoke config with explicit, round cost numbers for golden tests.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sentio_core.config import Config, load_config
from sentio_core.folds import FoldSpan
from sentio_core.market import Leg, Market

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
DAILY = REPO / "data" / "daily"


@dataclass(frozen=True)
class RealFold:
    cfg: Config
    market: Market
    span: FoldSpan
    bars: object  # polars DataFrame (the aligned panel)
    freq: object

    @property
    def train_rows(self) -> tuple[int, int]:
        return self.span.train_rows

    @property
    def test_rows(self) -> tuple[int, int]:
        return self.span.test_rows


def single_blas_thread():
    """The regime fit's small matrices run several times faster on one BLAS thread than with
    threads contending for two cores (the same numbers either way)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def smoke_cfg(overrides: tuple[str, ...] = ()) -> Config:
    """The smoke config with an absolute data path (tests may run from any directory)."""
    return load_config(SMOKE, [f"data.path={DAILY}", *overrides])


@functools.lru_cache(maxsize=None)
def real_fold(overrides: tuple[str, ...] = ()) -> RealFold:
    """Fold 0 of the smoke run on the shipped daily data, with config overrides."""
    from sentio_core.data import build_manifest, build_panel
    from sentio_core.features import feature_table
    from sentio_core.folds import fold_spans
    from sentio_core.market import fold_market
    from sentio_core.regimes import fold_regimes

    cfg = smoke_cfg(overrides)
    bars, _, freq = build_panel(cfg, build_manifest(cfg))
    feats = feature_table(cfg, bars, freq)
    span = fold_spans(cfg, feats)[0]
    with single_blas_thread():
        reg = fold_regimes(cfg, bars, span)
    market = fold_market(cfg, bars, feats, reg.probabilities, span, freq.periods_per_year)
    return RealFold(cfg, market, span, bars, freq)


def with_cfg(cfg: Config, **sections) -> Config:
    """``cfg`` with fields of sections replaced: ``with_cfg(cfg, masks={"rules": []})``."""
    update = {name: getattr(cfg, name).model_copy(update=fields) for name, fields in sections.items()}
    return cfg.model_copy(update=update)


def synthetic_cfg(**sections) -> Config:
    """Smoke config with round, hand-checkable costs: per-share commission $0.005 (min $1),
    half-spread 1 bp on every symbol, impact coefficient 0.5; every mask rule off unless given."""
    cfg = smoke_cfg(("env.lookback_bars=2", "env.drawdown_penalty=0.0"))
    costs = {"commission_mode": "per_share", "commission_per_share_usd": 0.005, "commission_min_usd": 1.0,
             "commission_bps": 0.0, "half_spread_bps": {"default": 1.0}, "impact_coef": 0.5}
    base = {"costs": costs, "masks": {"rules": []}}
    for name, fields in sections.items():
        base[name] = {**base.get(name, {}), **fields}
    return with_cfg(cfg, **base)


def leg(symbol: str, open_, close, *, dollar_volume=1e10, mean_dollar_volume=1e10, sigma=0.02, direction=1) -> Leg:
    close = np.asarray(close, dtype=float)
    n = len(close)

    def arr(x):
        return np.broadcast_to(np.asarray(x, dtype=float), (n,)).copy()

    return Leg(symbol, arr(open_), close, arr(dollar_volume), arr(mean_dollar_volume), arr(sigma), direction)


def toy_market(long_leg: Leg, short_leg: Leg | None = None, *, levels=(-1.0, 0.0, 1.0), n_features: int = 2,
               features: np.ndarray | None = None, high_vol_prob=None, stale=None, minutes_to_close=None,
               seed: int = 0) -> Market:
    """A hand-made market: positive levels in ``long_leg``, negative ones in ``short_leg`` (an
    inverse product held in positive shares), timestamps ``b0, b1, ...``."""
    n = len(long_leg.close)
    levels = np.array(sorted(levels), dtype=float)
    legs = [long_leg] if short_leg is None else [long_leg, short_leg]
    weights = np.zeros((len(levels), len(legs)))
    for a, lv in enumerate(levels):
        if lv > 0:
            weights[a, 0] = lv
        elif lv < 0:
            assert short_leg is not None, "negative levels need a short leg"
            weights[a, 1] = -lv
    if features is None:
        features = np.random.default_rng(seed).normal(size=(n, n_features)).astype(np.float32)
    return Market(
        timestamps=[f"b{i}" for i in range(n)], features=np.asarray(features, dtype=np.float32),
        feature_names=[f"f{j}" for j in range(features.shape[1])], levels=levels, weights=weights, legs=legs,
        high_vol_prob=np.zeros(n) if high_vol_prob is None else np.asarray(high_vol_prob, dtype=float),
        minutes_to_close=minutes_to_close,
        stale=np.zeros(n, dtype=bool) if stale is None else np.asarray(stale, dtype=bool),
        periods_per_year=252.0, underlying=long_leg,
    )


def random_walk_market(n: int = 80, seed: int = 0, **kw) -> Market:
    """A toy pair (3x long, inverse 3x short) driven by one random underlying path."""
    rng = np.random.default_rng(seed)
    r = rng.normal(0.0, 0.01, n)
    gap = rng.normal(0.0, 0.003, n)
    under_close = 100 * np.exp(np.cumsum(r))
    under_open = np.r_[100.0, under_close[:-1]] * np.exp(gap)
    long_close = 50 * np.exp(np.cumsum(3 * r))
    long_open = np.r_[50.0, long_close[:-1]] * np.exp(3 * gap)
    short_close = 40 * np.exp(np.cumsum(-3 * r))
    short_open = np.r_[40.0, short_close[:-1]] * np.exp(-3 * gap)
    dv = rng.uniform(5e8, 2e9, n)
    long_leg = leg("TQQQ", long_open, long_close, dollar_volume=dv, mean_dollar_volume=dv, sigma=0.03)
    short_leg = leg("SQQQ", short_open, short_close, dollar_volume=dv, mean_dollar_volume=dv, sigma=0.03, direction=-1)
    m = toy_market(long_leg, short_leg, levels=(-1.0, -0.5, 0.0, 0.5, 1.0), seed=seed, **kw)
    under = leg("QQQ", under_open, under_close, dollar_volume=dv, mean_dollar_volume=dv, sigma=0.01)
    return dataclasses.replace(m, underlying=under)
