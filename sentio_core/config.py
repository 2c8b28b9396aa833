"""Typed run configuration: one schema, YAML values, ``--set key=value`` overrides.

Every knob has one home: either a default here or a value in ``configs/*.yaml``.
Unknown keys are rejected and every error names the full key path (``folds.test_bars``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Sequence, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sentio_core import algorithms

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "base.yaml"

# Upper bounds of the schema: they stop typos (an extra zero, a timestamp pasted as a window), not
# experiments. A window is at most 10,000 bars (40 years of daily bars, 128 sessions of 5-minute
# bars); a span of bars (folds, episodes, drift) at most 10,000,000 (a century of 1-minute bars).
MAX_WINDOW_BARS = 10_000
MAX_SPAN_BARS = 10_000_000
MAX_SEED = 2**32 - 1  # numpy's global seed (set by stable-baselines3) must be below 2**32
WindowBars = Annotated[int, Field(ge=1, le=MAX_WINDOW_BARS)]


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says what to change."""


F = TypeVar("F", bound=Callable[..., Any])


def reads(*sections: str, schema: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Declare the config sections a stage function reads (``@reads("features", "universe")``).

    The declaration sits next to the function it describes and is the only list of them: a
    stage's cache key hashes exactly these sections' values and the code of their schema classes
    (``tasks/common.py``), so a change to any other section, a new schema key included, leaves
    the stage cached.

    :param schema: sections whose schema classes the function runs without reading this run's
        values (re-scoring validates a champion's own config through every section's class).
    """

    def mark(fn: F) -> F:
        unknown = sorted((set(sections) | set(schema)) - set(Config.model_fields))
        if unknown:
            raise ValueError(f"{fn.__qualname__} declares unknown config sections {unknown}")
        fn.config_sections = tuple(sections)  # type: ignore[attr-defined]
        fn.config_schema = tuple(schema)  # type: ignore[attr-defined]
        return fn

    return mark


def sections_of(fn: Callable[..., Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(sections read, sections whose schema only runs)`` as ``fn`` declared them with :func:`reads`."""
    try:
        return fn.config_sections, fn.config_schema  # type: ignore[attr-defined]
    except AttributeError:
        raise TypeError(f"{fn.__qualname__} declares no config sections; decorate it with @reads(...)") from None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    path: Path = Field(description="Folder of per-symbol files (TQQQ.csv, QQQ.parquet, ...) or one file with a `symbol` column.")
    timezone: str = Field("America/New_York", description="Exchange time zone; naive timestamps are read in it.")
    calendar: str = Field("XNYS", description="exchange_calendars name used for session-aware checks and minutes to the close.")

    @model_validator(mode="after")
    def _known_zone_and_calendar(self) -> "DataConfig":
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"data.timezone '{self.timezone}' is not an IANA time zone (e.g. America/New_York)") from None
        import exchange_calendars

        if self.calendar not in exchange_calendars.get_calendar_names(include_aliases=True):
            raise ValueError(f"data.calendar '{self.calendar}' is not an exchange_calendars name (e.g. XNYS, XLON)")
        return self


class UniverseConfig(_Section):
    """What is traded: a long leg for positive exposure, a short leg for negative exposure.

    * a pair (default): ``long: TQQQ``, ``short: SQQQ``, both held in positive shares;
    * one instrument: ``long: null`` trades the underlying itself; ``short: null`` leaves no short
      side unless ``allow_short`` (then the underlying is sold short);
    * ``synthesize: true`` builds both legs from the underlying (daily-reset ``leverage`` x, less
      ``expense_ratio_pct``); ``long`` / ``short`` then only name them, and only the underlying is read.
    """

    underlying: str = "QQQ"
    long: str | None = "TQQQ"
    short: str | None = "SQQQ"
    leverage: float = Field(3.0, gt=0, description="Leverage of the long leg; the short leg is -leverage.")
    allow_short: bool = Field(False, description="With short: null, sell the underlying short for negative exposure.")
    synthesize: bool = Field(False, description="Build the legs from the underlying instead of reading them.")
    expense_ratio_pct: float = Field(0.9, ge=0, description="Annual expense ratio of synthesized legs, percent (TQQQ 0.84, SQQQ 0.95).")

    @model_validator(mode="after")
    def _distinct(self) -> "UniverseConfig":
        named = [s for s in (self.long, self.short) if s is not None]
        if len(set(named)) != len(named):
            raise ValueError(f"universe.long and universe.short are both {named[0]}; they must differ")
        if self.synthesize and self.underlying in named:
            raise ValueError("with universe.synthesize the legs cannot be named like the underlying")
        return self

    @property
    def long_leg(self) -> str:
        """Symbol held for positive exposure."""
        if self.synthesize:
            return self.long or f"{self.underlying}_L{self.leverage:g}X"
        return self.long or self.underlying

    @property
    def short_leg(self) -> str | None:
        """Symbol traded for negative exposure (None: no short side)."""
        if self.synthesize:
            return self.short or f"{self.underlying}_S{self.leverage:g}X"
        if self.short is not None:
            return self.short
        return self.underlying if self.allow_short else None

    @property
    def short_sign(self) -> int:
        """+1 when the short leg is an inverse product held long, -1 when the underlying is sold short."""
        return -1 if self.short_leg == self.underlying else 1

    @property
    def symbols(self) -> list[str]:
        """Symbols read from the data folder: underlying first, then the real legs (unique, ordered)."""
        if self.synthesize:
            return [self.underlying]
        return self.panel_symbols

    @property
    def panel_symbols(self) -> list[str]:
        """Symbols of the aligned panel: underlying and both legs (synthetic ones included)."""
        out: list[str] = []
        for sym in (self.underlying, self.long_leg, self.short_leg):
            if sym is not None and sym not in out:
                out.append(sym)
        return out

    def leg_beta(self, symbol: str) -> float:
        """Exposure to the underlying per dollar held in ``symbol`` (1 for the underlying itself)."""
        if symbol == self.underlying:
            return 1.0
        if symbol == self.long_leg:
            return self.leverage
        return -self.leverage


class ValidationConfig(_Section):
    min_rows: int = Field(250, ge=1, le=MAX_SPAN_BARS, description="Minimum number of bars per file.")
    max_missing_sessions: int = Field(0, ge=0, le=MAX_WINDOW_BARS, description="Exchange sessions that may be missing between two consecutive bars.")
    max_missing_intraday_bars: int = Field(0, ge=0, le=MAX_WINDOW_BARS, description="Bars that may be missing inside one session (intraday data).")
    report_rows: int = Field(5, ge=1, le=1000, description="Offending rows printed per failed rule.")
    max_price_usd: float = Field(1e6, gt=0, description="Highest plausible price, USD; above it a price is a unit, scale or parsing "
                                                        "error (the split-adjusted SQQQ history of data/daily_long reaches 520,000).")
    max_jump_sigmas: float = Field(30.0, gt=0, description="Largest move from one bar's close to the next bar's open or close, in "
                                                          "trailing robust sigmas of the symbol's own 1-bar log returns (a "
                                                          "session's first intraday bar: sigma x sqrt(bars per session)).")
    jump_window_bars: int = Field(60, ge=10, le=MAX_WINDOW_BARS, description="Bars of 1-bar log returns in the trailing robust sigma "
                                                                            "(1.4826 x median |return|, bars before the one checked).")
    jump_sigma_floor_bps: float = Field(1.0, gt=0, le=1e4, description="Floor of the trailing sigma, basis points per bar "
                                                                      "(a stretch of unchanged prices has sigma 0).")
    max_lone_jump_sigmas: float = Field(10.0, gt=0, description="Across the files validated together: a bar's jump (own sigmas) may exceed "
                                                               "the largest jump of the other, correlated symbols at the same timestamp by "
                                                               "at most this many sigmas (more: an unadjusted split or a bad tick).")
    max_zero_volume_bars: int = Field(5, ge=0, le=MAX_WINDOW_BARS, description="Consecutive bars with zero volume allowed (a stalled feed).")
    max_constant_price_bars: int = Field(5, ge=0, le=MAX_WINDOW_BARS, description="Consecutive bars allowed with open = high = low = close "
                                                                                "equal to the previous close (a stale price).")
    batch_rows: int = Field(250_000, ge=1_000, le=MAX_SPAN_BARS, description="Rows checked by great-expectations at a time "
                                                                            "(bounds its memory on large files; the report is the same).")


class FeatureConfig(_Section):
    """Feature windows, in bars of the data (``htf_*``: in higher-timeframe bars)."""

    return_horizons: list[WindowBars] = Field(default_factory=lambda: [1, 5, 20, 60], min_length=1,
                                              description="Horizons of the log-return features, bars back (>= 1: causal).")
    vol_windows: list[Annotated[int, Field(ge=2, le=MAX_WINDOW_BARS)]] = Field(
        default_factory=lambda: [20, 60], min_length=1, description="Windows of the realised-volatility features, bars.")
    ewma_halflife_bars: float = Field(10.0, gt=0, le=MAX_WINDOW_BARS)
    rsi_bars: int = Field(14, ge=2, le=MAX_WINDOW_BARS)
    macd_fast_bars: int = Field(12, ge=1, le=MAX_WINDOW_BARS)
    macd_slow_bars: int = Field(26, ge=2, le=MAX_WINDOW_BARS)
    macd_signal_bars: int = Field(9, ge=1, le=MAX_WINDOW_BARS)
    bollinger_bars: int = Field(20, ge=2, le=MAX_WINDOW_BARS)
    bollinger_k: float = Field(2.0, gt=0, le=10)
    atr_bars: int = Field(14, ge=2, le=MAX_WINDOW_BARS)
    stoch_bars: int = Field(14, ge=2, le=MAX_WINDOW_BARS)
    stoch_smooth_bars: int = Field(3, ge=1, le=MAX_WINDOW_BARS)
    volume_z_bars: int = Field(20, ge=2, le=MAX_WINDOW_BARS)
    obv_slope_bars: int = Field(20, ge=2, le=MAX_WINDOW_BARS)
    moments_bars: int = Field(60, ge=4, le=MAX_WINDOW_BARS, description="Window of rolling skew, kurtosis and lag-1 autocorrelation.")
    trend_bars: int = Field(50, ge=2, le=MAX_WINDOW_BARS)
    cross_bars: int = Field(20, ge=2, le=MAX_WINDOW_BARS, description="Window of the leveraged-vs-underlying tracking features.")
    corr_bars: int = Field(60, ge=3, le=MAX_WINDOW_BARS)
    higher_timeframe: Literal["auto", "none", "1w", "1mo", "1d"] = Field(
        "auto", description="Period of the higher-timeframe bars: auto = 1w for daily bars, 1d (sessions) for intraday."
    )
    htf_rsi_bars: int = Field(14, ge=2, le=1000, description="RSI window, higher-timeframe bars.")
    htf_vol_bars: int = Field(10, ge=2, le=1000, description="Realised-volatility window, higher-timeframe bars.")

    @model_validator(mode="after")
    def _macd_order(self) -> "FeatureConfig":
        if self.macd_fast_bars >= self.macd_slow_bars:
            raise ValueError(f"macd_fast_bars ({self.macd_fast_bars}) must be below macd_slow_bars ({self.macd_slow_bars})")
        for name in ("return_horizons", "vol_windows"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"features.{name} {values} has duplicates (each names one feature column)")
        return self

    def warmup_bars(self, bars_per_session: float = 1.0, cross_asset: bool = True) -> int:
        """A lower bound of the leading rows of the feature table that lack some feature: its longest window.

        :param bars_per_session: bars per exchange session (1 for daily bars); it sizes the
            higher-timeframe windows (a week holds at least 4 sessions, a month at least 19).
        :param cross_asset: whether the leveraged-vs-underlying features exist (``cross_bars``, ``corr_bars``).
        """
        windows = [*self.return_horizons, *self.vol_windows, int(self.ewma_halflife_bars), self.rsi_bars,
                   self.macd_slow_bars + self.macd_signal_bars - 1, self.bollinger_bars, self.atr_bars,
                   self.stoch_bars + self.stoch_smooth_bars - 1, self.volume_z_bars, self.obv_slope_bars,
                   self.moments_bars, self.trend_bars]
        if cross_asset:
            windows += [self.cross_bars, self.corr_bars]
        longest = max(windows) - 1
        period = self.higher_timeframe if self.higher_timeframe != "auto" else ("1d" if bars_per_session > 1 else "1w")
        if period != "none":
            sessions = {"1d": 1, "1w": 4, "1mo": 19}[period]
            longest = max(longest, int(max(self.htf_rsi_bars, self.htf_vol_bars) * sessions * bars_per_session))
        return longest


class RegimeConfig(_Section):
    backend: Literal["markov", "hmm"] = Field("markov", description="statsmodels MarkovRegression or hmmlearn GaussianHMM.")
    n_regimes: int = Field(3, ge=2, le=5)
    n_starts: int = Field(3, ge=1, le=100, description="Random starts; the best log-likelihood is kept.")
    max_iter: int = Field(200, ge=10, le=100_000, description="EM iterations per start.")


class FoldConfig(_Section):
    n_folds: int = Field(5, ge=1, le=100)
    test_bars: int = Field(250, ge=1, le=MAX_SPAN_BARS)
    scheme: Literal["expanding", "rolling", "cpcv"] = Field(
        "expanding", description="expanding / rolling walk-forward, or cpcv: combinatorial purged cross-validation, a "
                                 "research evaluation (cpcv_groups groups, cpcv_test_groups tested per split; nothing "
                                 "is registered).")
    train_bars: int | None = Field(None, ge=1, le=MAX_SPAN_BARS, description="Training window length for the rolling scheme.")
    min_train_bars: int = Field(500, ge=1, le=MAX_SPAN_BARS)
    purge_bars: int | None = Field(None, ge=0, le=MAX_SPAN_BARS, description="Bars dropped between train and test; null = lookback + reward horizon.")
    embargo_bars: int = Field(0, ge=0, le=MAX_SPAN_BARS, description="Bars after each test window that belong to no test window.")
    step_bars: int = Field(1, ge=1, le=MAX_WINDOW_BARS, description="The fold layout ends on a multiple of this many bars: bars appended "
                                                "since then move no window, so their trainings stay cached (nightly runs).")
    cpcv_groups: int = Field(6, ge=3, le=16, description="cpcv: contiguous groups the usable bars are cut into.")
    cpcv_test_groups: int = Field(2, ge=1, le=15, description="cpcv: groups tested per split (C(groups, test_groups) "
                                                              "splits, C(groups - 1, test_groups - 1) backtest paths).")

    @model_validator(mode="after")
    def _rolling(self) -> "FoldConfig":
        if self.scheme == "rolling" and self.train_bars is None:
            raise ValueError("folds.scheme 'rolling' needs folds.train_bars; set it or use scheme 'expanding'")
        if self.cpcv_test_groups >= self.cpcv_groups:
            raise ValueError(f"folds.cpcv_test_groups ({self.cpcv_test_groups}) must be below folds.cpcv_groups "
                             f"({self.cpcv_groups})")
        return self


class EnvConfig(_Section):
    lookback_bars: int = Field(30, ge=1, le=1000, description="Bars of features the agent sees at each decision "
                                                              "(the observation holds lookback x features values).")
    reward_horizon_bars: int = Field(1, ge=1, le=MAX_WINDOW_BARS, description="Bars over which one decision's reward is realised.")
    exposure_levels: list[float] = Field(
        default_factory=lambda: [-1.0, -0.5, 0.0, 0.5, 1.0],
        description="Target net exposure per action, fraction of equity; > 0 in the long leg, < 0 in the short leg. "
                    "Levels below zero are dropped when the universe has no short side.",
    )
    initial_equity_usd: float = Field(100_000.0, gt=0)
    drawdown_penalty: float = Field(0.5, ge=0, description="Reward -= penalty x increase of drawdown this bar.")
    episode_bars: int = Field(250, ge=2, le=MAX_SPAN_BARS, description="Training episode length; starts are drawn at random in the training window.")
    vol_bars: int = Field(20, ge=2, le=MAX_WINDOW_BARS, description="Window of the per-bar volatility used by costs and the volatility mask.")
    liquidity_bars: int = Field(20, ge=1, le=MAX_WINDOW_BARS, description="Window of the mean dollar volume used by the liquidity mask.")
    feature_columns: list[str] | None = Field(None, description="Glob patterns of feature columns observed; null = all.")
    feature_max_corr: float | None = Field(0.95, gt=0, le=1, description="De-duplication of the selected features on the fold's "
                                                                       "training rows: a column is kept only if its |Pearson r| "
                                                                       "with every column kept before it is at most this; constant "
                                                                       "columns are dropped; null = keep every selected column.")
    clip_obs: float = Field(10.0, gt=0, description="Normalised features are clipped to +-clip_obs.")

    @model_validator(mode="after")
    def _levels(self) -> "EnvConfig":
        if 0.0 not in self.exposure_levels:
            raise ValueError("env.exposure_levels must include 0.0 (flat is always a valid action)")
        if len(set(self.exposure_levels)) != len(self.exposure_levels):
            raise ValueError("env.exposure_levels has duplicates")
        return self


# the risk and execution rules of sentio_core/masks.py, named once, in their default priority order
MaskRule = Literal["stale", "drawdown", "exposure_cap", "vol_target", "regime", "session", "liquidity", "min_hold"]
MASK_RULES: tuple[str, ...] = get_args(MaskRule)


class MaskConfig(_Section):
    """Risk and execution rules (sentio_core/masks.py); each can be switched off through ``rules``."""

    rules: list[MaskRule] = Field(
        default_factory=lambda: list(MASK_RULES),
        description="Enabled rules, in priority order: a later rule yields when it would leave no action valid.",
    )
    max_abs_exposure: float = Field(1.0, gt=0, description="Exposure cap, fraction of equity.")
    vol_target_ann: float = Field(1.2, gt=0, description="No level whose |exposure| x annualised volatility of its leg exceeds this.")
    drawdown_limit: float = Field(0.20, gt=0, lt=1, description="Drawdown budget, fraction of the peak since the last re-base: no "
                                                                "level whose plausible one-bar loss would carry the drawdown past it; "
                                                                "reaching it stops the policy out (flat for the cool-down).")
    drawdown_cooldown_bars: int = Field(20, ge=1, le=MAX_WINDOW_BARS, description="Bars held flat after a stop-out; then the peak "
                                                                                "re-bases to the equity of that bar and the "
                                                                                "budget is whole again (never a permanent lock).")
    gap_move: Literal["sigma", "worst_bar"] = Field("sigma", description="A level's plausible one-bar adverse move: gap_sigmas x "
                                                                         "its legs' trailing volatility, or their worst bar in "
                                                                         "the fold's training window.")
    gap_sigmas: float = Field(8.0, gt=0, le=100, description="Multiple of the leg's trailing per-bar volatility (env.vol_bars) "
                                                             "taken as its plausible one-bar adverse move (gap_move 'sigma').")
    regime_high_vol_prob: float = Field(0.6, gt=0, le=1, description="Filtered probability of the highest-variance regime above which no new or larger long is opened.")
    session_close_minutes: float = Field(0.0, ge=0, le=390, description="Intraday: reduce-only this many minutes before the close "
                                                                       "(0 = off; a regular session lasts 390).")
    max_participation: float = Field(0.05, gt=0, description="A trade may not exceed this fraction of the leg's recent mean dollar volume per bar.")
    min_hold_bars: int = Field(1, ge=1, le=MAX_WINDOW_BARS, description="Bars a non-flat position is held before it may change (1 = no constraint).")


# the learning algorithms, named once in sentio_core/algorithms.py; the first is the primary one
AlgorithmName = Literal[algorithms.NAMES]  # type: ignore[valid-type]
ALGORITHM_NAMES: tuple[str, ...] = get_args(AlgorithmName)


class TrainConfig(_Section):
    """PPO settings shared by MaskablePPO and the PPO baseline (same network, budget and seed)."""

    algorithms: list[AlgorithmName] = Field(default_factory=lambda: list(ALGORITHM_NAMES))
    timesteps: int | None = Field(200_000, ge=1, le=10**12, description="Budget in environment steps per seed (null = unlimited); "
                                  "a fold and algorithm train seeds x timesteps in all.")
    seeds: int = Field(3, ge=1, le=100, description="Seeds trained per fold and algorithm (fold seed + 0, + 1, ...); the one "
                       "best on the validation slice is the fold's policy, the others report the spread.")
    validation_bars: int = Field(250, ge=0, le=MAX_SPAN_BARS, description="The training window's last bars kept as the inner "
                                 "validation slice (purged from the rest by folds' purge); 0 = no validation, the last "
                                 "policy is kept.")
    eval_every: int = Field(20_000, ge=1, le=10**12, description="Timesteps between evaluations of the deterministic policy "
                            "on the validation slice; the best checkpoint is kept.")
    patience: int | None = Field(None, ge=1, le=10_000, description="Stop a seed after this many evaluations without a better "
                                 "validation Sharpe (null = train the whole budget, keep the best checkpoint).")
    episodes: int | None = Field(None, ge=1, le=10**9, description="Budget in finished episodes (null = unlimited).")
    minutes: float | None = Field(None, gt=0, description="Wall-clock budget; a binding minutes budget is not reproducible.")
    learning_rate: float = Field(3e-4, gt=0)
    n_envs: int = Field(64, ge=1, le=4096, description="Environments (portfolios of the engine) stepped together.")
    n_steps: int = Field(32, ge=8, le=MAX_SPAN_BARS, description="Rollout length per environment, steps (n_envs x n_steps per update).")
    batch_size: int = Field(1024, ge=8, le=MAX_SPAN_BARS)
    n_epochs: int = Field(2, ge=1, le=1000)
    reward_scale: float = Field(1.0, gt=0, le=1e6, description="The learner is handed this multiple of the environment's "
                                "reward (log return less the drawdown penalty: about 0.01 a bar for TQQQ).")
    gamma: float = Field(0.9, gt=0, le=1)
    gae_lambda: float = Field(0.95, gt=0, le=1)
    clip_range: float = Field(0.2, gt=0)
    ent_coef: float = Field(0.01, ge=0)
    vf_coef: float = Field(0.5, ge=0)
    max_grad_norm: float = Field(0.5, gt=0)
    net_arch: list[Annotated[int, Field(ge=1, le=65_536)]] = Field(default_factory=lambda: [64, 64], max_length=32,
                                                                   description="Hidden layer widths of the policy and value MLPs.")
    policy: Literal["mlp", "transformer"] = Field("mlp", description="mlp: the flat observation through net_arch. transformer: "
                                                  "one token per bar (its features and regime probabilities), "
                                                  "positional encoding, pre-norm encoder layers, the portfolio state "
                                                  "as its own token, then net_arch heads (sentio_core/networks.py).")
    d_model: int = Field(32, ge=4, le=4096, description="Transformer token width.")
    transformer_layers: int = Field(2, ge=1, le=24, description="Transformer encoder layers (pre-norm).")
    transformer_heads: int = Field(4, ge=1, le=64, description="Attention heads; must divide d_model.")
    transformer_ff: int | None = Field(None, ge=4, le=16_384, description="Feed-forward width of a layer (null = 2 x d_model).")
    transformer_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in the encoder layers. 0 by default: PPO's "
                                       "probability ratio compares training-mode and rollout-mode (no dropout) outputs.")
    positional_encoding: Literal["sinusoidal", "none"] = Field("sinusoidal", description="Bar order given to the transformer; "
                                                               "none makes it a bag of bars (the ablation's control).")
    critic: Literal["scalar", "quantile"] = Field("scalar", description="scalar: one value, MSE to the GAE return. quantile: "
                                                  "n_quantiles values at the midpoints (2i+1)/2N, quantile Huber loss to "
                                                  "distributional lambda-return targets.")
    n_quantiles: int = Field(51, ge=2, le=1001, description="Quantiles of the distributional critic.")
    quantile_kappa: float = Field(0.01, ge=0, le=1e6, description="Huber threshold of the quantile loss, in the learner's "
                                  "reward units (0 = the plain pinball loss). Returns here are about 0.01-0.1, so kappa "
                                  "1 would make the loss an expectile loss; scale it with train.reward_scale.")
    cvar_alpha: float = Field(0.05, gt=0, lt=1, description="Tail probability of the CVaR objective.")
    cvar_weight: float = Field(0.0, ge=0, le=1, description="Advantage = (1 - w) x GAE advantage + w x tail term "
                               "min(R - VaR_alpha, 0) / alpha (VaR from the critic's quantiles; needs critic: quantile). "
                               "0 = plain PPO.")
    regime_gating: bool = Field(False, description="Actor heads, one per regime, mixed by the last bar's filtered regime "
                                "probabilities (a mixture of experts); needs the regime probabilities in the observation.")
    adaptive_kl: bool = Field(False, description="Add kl_coef x KL(old || new) to the loss; kl_coef doubles when an update's "
                              "mean KL exceeds 1.5 x kl_target and halves below kl_target / 1.5 (Schulman et al. 2017).")
    kl_target: float = Field(0.01, gt=0, le=10, description="The KL the adaptive penalty steers to.")
    kl_coef: float = Field(0.2, gt=0, le=1e4, description="Initial KL penalty coefficient (adaptive_kl).")
    target_kl: float | None = Field(None, gt=0, le=10, description="stable-baselines3's early stop: an update's epochs stop "
                                    "when the minibatch KL exceeds 1.5 x target_kl (null = off).")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$", description="auto (cuda when present, bf16 autocast "
                        "for the transformer), cpu, cuda or cuda:N.")
    torch_threads: int = Field(1, ge=1, le=1024, description="torch intra-op threads on CPU. 1 on 2 cores: the pipeline runs "
                               "other stages beside a training; more threads than free cores oversubscribe them.")

    @model_validator(mode="after")
    def _budget(self) -> "TrainConfig":
        if self.timesteps is None and self.episodes is None and self.minutes is None:
            raise ValueError("train needs a budget: set train.timesteps, train.episodes or train.minutes")
        return self

    @model_validator(mode="after")
    def _model(self) -> "TrainConfig":
        if self.d_model % self.transformer_heads:
            raise ValueError(f"train.transformer_heads ({self.transformer_heads}) must divide train.d_model ({self.d_model})")
        if self.cvar_weight > 0 and self.critic != "quantile":
            raise ValueError("train.cvar_weight > 0 needs train.critic: quantile (the VaR comes from the critic's quantiles)")
        return self


class BaselineConfig(_Section):
    """The rule-based baseline of the backtest (``trend_vol``, :func:`sentio_core.baselines.trend_vol_actions`):
    long the long leg while the underlying closes above its moving average, sized to a volatility
    target, else flat. Fixed here, never fitted (on the test window or any other); windows in bars of the data."""

    trend_bars: int = Field(200, ge=2, le=MAX_WINDOW_BARS, description="Simple moving average of the underlying's last closes, "
                                                                       "bars: the rule is long only while the close is above "
                                                                       "it (200 daily bars: the classic trend filter).")
    vol_bars: int = Field(20, ge=2, le=MAX_WINDOW_BARS, description="Window of the realised volatility of the leg held (sample "
                                                                    "std of its last one-bar log returns, annualised), bars.")
    vol_target_ann: float = Field(0.25, gt=0, le=2.0, description="Annualised volatility the position is sized to: exposure = "
                                                                  "min(max_exposure, vol_target_ann / the leg's realised "
                                                                  "volatility), floored to an exposure level. 0.25 is about "
                                                                  "QQQ's own long-run volatility (22 % a year on the shipped "
                                                                  "2015-2025 bars): the rule takes the index's risk through "
                                                                  "the 3x leg, so it is compared with buy-and-hold of the "
                                                                  "underlying at about equal risk. A fraction (0.25), not percent.")
    max_exposure: float = Field(1.0, gt=0, le=10.0, description="Largest exposure the rule targets, fraction of equity (the "
                                                                "masks' cap and the exposure levels still apply).")
    short_when_down: bool = Field(False, description="Below the average, hold the short side (sized the same way on the short "
                                                     "leg's volatility) instead of flat, when the universe has one.")


class PromotionConfig(_Section):
    """The gate between a trained MaskablePPO and the ``champion`` alias (``sentio_core/promotion.py``):
    out-of-sample evidence on the folds' test windows, concatenated, after the ledger's trials."""

    min_deflated_sharpe: float = Field(0.95, ge=0, le=1, description="Deflated Sharpe ratio (probability that the Sharpe "
                                                                     "beats the best of the ledger's skill-free trials) at least this.")
    max_pbo: float = Field(0.2, ge=0, le=1, description="Probability of backtest overfitting (CSCV over the run's "
                                                        "algorithm x seed configurations) at most this.")
    pbo_min_configurations: int = Field(4, ge=2, le=1000, description="PBO gates only with at least this many "
                                                                      "configurations; with fewer it is reported.")
    pbo_blocks: int = Field(16, ge=2, le=24, description="CSCV's S: even number of row blocks (C(S, S/2) splits).")
    paired_alpha: float = Field(0.05, gt=0, le=1, description="One-sided level of the paired bootstrap tests "
                                                              "(vs PPO and vs the champion): p-value at most this.")
    bootstrap_samples: int = Field(2000, ge=100, le=100_000, description="Stationary-bootstrap resamples of the paired tests.")
    bootstrap_block_bars: float | None = Field(None, ge=1, le=10_000, description="Mean block length of the stationary "
                                                                                  "bootstrap, bars; null = T^(1/3).")
    min_champion_bars: int = Field(60, ge=4, le=MAX_SPAN_BARS, description="The comparison with the champion gates only "
                                                                           "with at least this many of the candidate's test "
                                                                           "bars after the champion's training window and purge.")
    max_drawdown: float = Field(1.0, gt=0, le=1, description="Worst fold max drawdown allowed, absolute (1 = no absolute "
                                                           "cap; the masks already hold masks.drawdown_limit).")
    max_drawdown_vs_underlying: float | None = Field(
        1.0, gt=0, le=10, description="Worst fold max drawdown at most this multiple of buy-and-hold of the underlying's "
                                      "worst fold (same folds): a leveraged policy may not lose deeper than holding the "
                                      "index itself. null = off.")

    @model_validator(mode="after")
    def _even_blocks(self) -> "PromotionConfig":
        if self.pbo_blocks % 2:
            raise ValueError(f"promotion.pbo_blocks must be even (CSCV splits the blocks in halves), got {self.pbo_blocks}")
        return self


class RegistryConfig(_Section):
    experiment: str = "sentio"
    model_name: str = Field("sentio-maskable-ppo", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                            description="Registered model name; also the export file stem: letters, digits, '_', '-', '.' "
                                        "(no path separator, no '..').")
    export_dir: Path = Field(Path("trained_models"), description="Where NAME.pth and NAME-metadata.json go.")
    default_tracking_uri: str = Field("sqlite:///mlflow.db", description="Used when MLFLOW_TRACKING_URI is not set.")

    @model_validator(mode="after")
    def _safe_name(self) -> "RegistryConfig":
        if ".." in self.model_name:
            raise ValueError(f"registry.model_name '{self.model_name}' contains '..'; it names files, use a plain name")
        return self


class CostConfig(_Section):
    """Cost model (see sentio_core/costs.py); every economically meaningful knob is required."""

    commission_mode: Literal["per_share", "bps"]
    commission_per_share_usd: float = Field(ge=0)
    commission_min_usd: float = Field(ge=0)
    commission_bps: float = Field(ge=0)
    half_spread_bps: dict[str, Annotated[float, Field(ge=0)]] = Field(
        description="Per symbol; the key 'default' covers the others. Every traded leg needs an entry or 'default'.")
    impact_coef: float = Field(ge=0, description="Y in impact = Y x sigma x sqrt(participation) x notional.")

    def spread_bps(self, symbol: str) -> float:
        if symbol in self.half_spread_bps:
            return self.half_spread_bps[symbol]
        if "default" in self.half_spread_bps:
            return self.half_spread_bps["default"]
        raise KeyError(f"costs.half_spread_bps has no entry for {symbol} and no 'default'")


class RunConfig(_Section):
    work_dir: Path = Field(Path(".sentio/work"), description="Where stage outputs are written (content-addressed).")
    task_runner: Literal["threads", "dask", "ray"] = Field("threads", description="Prefect task runner of the per-fold work.")
    cluster_address: str | None = Field(None, description="Dask scheduler or Ray address; null starts a local cluster.")
    workers: int = Field(2, ge=1, description="Worker processes of a local Dask or Ray cluster.")
    training_slots: int = Field(1, ge=1, description="Global concurrency limit 'sentio-training': trainings at once (one GPU slot).")
    train_retries: int = Field(1, ge=0, description="Retries of a crashed training task before its fold is reported failed.")
    train_timeout_minutes: float = Field(60.0, gt=0, description="A training task running longer fails (and is retried).")


class DriftConfig(_Section):
    recent_bars: int = Field(60, ge=5, le=MAX_SPAN_BARS, description="Newest bars compared with the latest fold's training window.")
    psi_bins: int = Field(10, ge=2, le=1000)
    psi_warn: float = Field(0.1, gt=0)
    psi_alert: float = Field(0.25, gt=0)


class Config(_Section):
    seed: int = Field(7, ge=0, le=MAX_SEED, description="Every random choice derives from it; fold k uses seed + 1000 x k.")
    data: DataConfig
    universe: UniverseConfig = UniverseConfig()
    validation: ValidationConfig = ValidationConfig()
    features: FeatureConfig = FeatureConfig()
    regimes: RegimeConfig = RegimeConfig()
    folds: FoldConfig = FoldConfig()
    env: EnvConfig = EnvConfig()
    masks: MaskConfig = MaskConfig()
    costs: CostConfig
    train: TrainConfig = TrainConfig()
    baseline: BaselineConfig = BaselineConfig()
    promotion: PromotionConfig = PromotionConfig()
    registry: RegistryConfig = RegistryConfig()
    drift: DriftConfig = DriftConfig()
    run: RunConfig = RunConfig()

    @property
    def purge_bars(self) -> int:
        """Effective purge: the configured value, or lookback + reward horizon."""
        if self.folds.purge_bars is not None:
            return self.folds.purge_bars
        return self.env.lookback_bars + self.env.reward_horizon_bars

    @model_validator(mode="after")
    def _check_cross_section(self) -> "Config":
        minimum = self.env.lookback_bars + self.env.reward_horizon_bars
        if self.folds.purge_bars is not None and self.folds.purge_bars < minimum:
            raise ValueError(
                f"folds.purge_bars ({self.folds.purge_bars}) must be at least env.lookback_bars + "
                f"env.reward_horizon_bars ({minimum}); raise it or set it to null"
            )
        last_seed = self.fold_seed(self.folds.n_folds - 1)
        if last_seed > MAX_SEED:
            raise ValueError(f"seed ({self.seed}) + 1000 x (folds.n_folds - 1) = {last_seed} is not below 2**32 "
                             f"(numpy and torch seeds); lower seed")
        legs = [s for s in (self.universe.long_leg, self.universe.short_leg) if s is not None]
        missing = [s for s in legs if s not in self.costs.half_spread_bps]
        if missing and "default" not in self.costs.half_spread_bps:
            raise ValueError(f"costs.half_spread_bps has no entry for the traded leg(s) {', '.join(missing)} and no "
                             f"'default'; add them or a 'default'")
        return self

    def fold_seed(self, fold: int) -> int:
        """The seed of one fold's fits and trainings: ``seed + 1000 x fold``."""
        return self.seed + 1000 * int(fold)

    def identity(self) -> dict[str, Any]:
        """Every section but the operational ones (where and how a run executes, never what it
        computes), as JSON: the config recorded with a model and hashed into its ``config_hash``."""
        return self.model_dump(mode="json", exclude=set(OPERATIONAL_SECTIONS))

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named sections (``"features"``, ``"folds"``, ...), for cache keys."""
        dumped = self.model_dump(mode="json")
        payload = {name: dumped[name] for name in sections}
        return stable_hash(payload)


OPERATIONAL_SECTIONS = ("run",)
MODEL_SECTIONS: tuple[str, ...] = tuple(k for k in Config.model_fields if k not in OPERATIONAL_SECTIONS)


def stable_hash(obj: Any) -> str:
    """SHA-256 (first 16 hex) of a JSON-serialisable object with sorted keys."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML scalar (``null``, numbers, booleans work)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not key=value (for example --set folds.n_folds=3)")
    key, raw = item.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{item}': value is not valid YAML ({exc})") from exc
    return path, value


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file, resolving ``extends: other.yaml`` (relative to the file) recursively."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    parent = doc.pop("extends", None)
    if parent is None:
        return doc
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{path}: 'extends' must name a config file (e.g. extends: base.yaml), not {parent!r}")
    return _deep_merge(_read_yaml(path.parent / parent, seen + (path,)), doc)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(doc: dict[str, Any], path: list[str], value: Any) -> None:
    node = doc
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: '{'.'.join(path[: depth + 1])}' is a value, not a section")
        node = child
    node[path[-1]] = value


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see configs/base.yaml for the known keys)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``path`` (default ``configs/base.yaml``), apply ``key=value`` overrides, validate.

    :param path: YAML file; may name a parent with ``extends:``.
    :param overrides: ``a.b=value`` strings, values parsed as YAML scalars.
    :raises ConfigError: with every offending key path named.
    """
    cfg_path = Path(path) if path is not None else DEFAULT_CONFIG
    doc = _read_yaml(cfg_path)
    for item in overrides:
        key_path, value = parse_override(item)
        _set_path(doc, key_path, value)
    try:
        return Config.model_validate(doc)
    except ValidationError as exc:
        source = str(cfg_path) + (f" with --set {' '.join(overrides)}" if overrides else "")
        raise ConfigError(_format_errors(exc, source)) from None


def flatten(cfg: Config, operational: bool = True) -> dict[str, str]:
    """Flattened ``section.key -> value`` strings (for MLflow params and reports); ``operational=False``
    leaves out the operational sections (:meth:`Config.identity`)."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else key, value)
        else:
            out[prefix] = json.dumps(node) if isinstance(node, list) else str(node)

    walk("", cfg.model_dump(mode="json") if operational else cfg.identity())
    return out


def preflight(cfg: Config, n_bars: int, bars_per_session: float = 1.0,
              feature_columns: Sequence[str] | None = None) -> None:
    """Reject settings that leave no usable row, before any stage after validation runs.

    The fold layout needs ``min_train_bars + purge + n_folds x test_bars + (n_folds - 1) x embargo``
    usable bars (rounded down to ``folds.step_bars``) after the feature warm-up, whose lower bound
    is the longest feature window (:meth:`FeatureConfig.warmup_bars`); a lower bound, so the check
    never rejects settings that work. Each ``env.feature_columns`` glob must match a feature column.

    :param n_bars: bars of the aligned panel (common timestamps of every symbol).
    :param bars_per_session: bars per exchange session (1 for daily bars; ``BarFrequency.bars_per_session``).
    :param feature_columns: the feature table's column names (``timestamp`` excluded); None skips the glob check.
    :raises ConfigError: saying which settings to change.
    """
    u = cfg.universe
    cross = not u.synthesize and any(leg not in (None, u.underlying) for leg in (u.long_leg, u.short_leg))
    warmup = cfg.features.warmup_bars(bars_per_session, cross_asset=cross)
    f = cfg.folds
    folds = f.min_train_bars + cfg.purge_bars + f.n_folds * f.test_bars + (f.n_folds - 1) * f.embargo_bars
    usable = n_bars - warmup
    if usable - usable % f.step_bars < folds:
        raise ConfigError(
            f"{n_bars} aligned bars are too few for {warmup + folds}: the longest feature window leaves at least "
            f"{warmup} bars without every feature, and the folds need folds.min_train_bars={f.min_train_bars} + "
            f"purge {cfg.purge_bars} + folds.n_folds={f.n_folds} x folds.test_bars={f.test_bars} + {f.n_folds - 1} x "
            f"folds.embargo_bars={f.embargo_bars} = {folds} (in multiples of folds.step_bars={f.step_bars}); lower "
            f"folds.n_folds, folds.test_bars, folds.min_train_bars or the feature windows (features.*), or add data"
        )
    if feature_columns is not None:
        check_feature_patterns(cfg, feature_columns)


def check_feature_patterns(cfg: Config, feature_columns: Sequence[str]) -> None:
    """Each ``env.feature_columns`` glob must match a column of the feature table (``timestamp`` excluded).

    :raises ConfigError: naming the patterns that match nothing.
    """
    if cfg.env.feature_columns is None:
        return
    dead = [p for p in cfg.env.feature_columns if not any(fnmatch.fnmatchcase(c, p) for c in feature_columns)]
    if dead:
        sample = ", ".join(list(feature_columns)[:6])
        raise ConfigError(f"env.feature_columns pattern(s) {dead} match no feature column (columns look like "
                          f"{sample}, ...); fix the pattern(s) or set env.feature_columns to null")
