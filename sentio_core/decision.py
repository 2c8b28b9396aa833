"""The trading application's side: one decision on the latest bar, exactly as the backtest decides.

:class:`Decider` loads an export (its content hash verified by :func:`export.load_policy`) and,
given a trailing window of bars per symbol up to now and the live portfolio, returns the target
level, the action, the mask with the rule that forbade each forbidden action, and the observation
it acted on. Every step is the library's own code, run on the window: the feature table
(:func:`features.feature_table`), the regime filter (:func:`regimes.forward_filter` with the
export's fitted model), the training window's normalisation (:func:`market.build_market` with the
export's feature list, mean and std), and the engine's masks and observation
(:class:`engine.Engine` with one portfolio set to the live state). No second implementation.

**How many bars.** The features' warm-up (the longest window, the weekly features included) plus
the observation's lookback must be defined; beyond that, the exponential averages (EWMA, MACD,
RSI) and the regime filter start from the window's first bar and forget it geometrically, so the
window needs a burn-in for the last bar to carry the values a full history gives.
:meth:`Decider.required_bars` is the least the features need (90 daily bars by default) and
:meth:`Decider.window_bars` what a decision uses and the replay tests hold equal to the backtest:
required + the larger of 500 bars and 150 higher-timeframe periods (840 daily bars, 150 weeks;
on 5-minute bars 150 sessions).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from sentio_core.data import align
from sentio_core.engine import Engine
from sentio_core.export import LoadedPolicy, load_policy, read_metadata
from sentio_core.features import feature_table, first_complete_row
from sentio_core.frequency import bar_frequency
from sentio_core.market import build_market
from sentio_core.metadata import ExportMetadata
from sentio_core.policies import reads_masks
from sentio_core.regimes import RegimeModel, forward_filter, regime_frame, underlying_returns

BAR_COLUMNS = ("timestamp", "symbol", "open", "high", "low", "close", "volume")
BURN_IN_BARS = 500
BURN_IN_PERIODS = 150


class DecisionError(ValueError):
    """Bars or a portfolio the decision cannot be made from; the message names the rule and the place."""


@dataclass(frozen=True)
class Portfolio:
    """The live portfolio at the close of the latest bar, as the engine keeps it.

    :param shares: signed shares per traded leg symbol (missing legs hold none).
    :param peak: the drawdown rule's peak equity (re-based after a stop-out; see ``masks.advance_peak``).
    :param level: the exposure level currently held (one of the export's ``exposure_levels``).
    :param held: bars the current level has been held.
    :param cooldown: bars left flat after a stop-out.
    """

    cash: float
    shares: dict[str, float]
    peak: float
    level: float = 0.0
    held: int = 0
    cooldown: int = 0


def read_portfolio(path: str | Path) -> Portfolio:
    """A portfolio from JSON: ``{"cash": ..., "shares": {SYMBOL: ...}, "peak": ..., "level": ...,
    "held": ..., "cooldown": ...}`` (level, held and cooldown default to flat, 0 and 0).

    :raises DecisionError: naming the file and the field that is missing or malformed.
    """
    import json

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DecisionError(f"{path}: not a readable JSON portfolio ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict):
        raise DecisionError(f"{path}: a portfolio is a JSON object, got {type(doc).__name__}")
    fields = {"cash": float, "peak": float, "level": float, "held": int, "cooldown": int}
    unknown = sorted(set(doc) - {*fields, "shares"})
    if unknown:
        raise DecisionError(f"{path}: unknown portfolio fields {unknown} (known: {sorted([*fields, 'shares'])})")
    out: dict = {}
    for name, kind in fields.items():
        if name not in doc:
            if name in ("cash", "peak"):
                raise DecisionError(f"{path}: the portfolio has no {name!r}")
            continue
        value = doc[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise DecisionError(f"{path}: portfolio field {name!r} must be {'an integer' if kind is int else 'a number'}, "
                                f"got {value!r}")
        out[name] = kind(value)
    shares = doc.get("shares", {})
    if not isinstance(shares, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in shares.values()):
        raise DecisionError(f"{path}: portfolio field 'shares' must map symbols to numbers, got {shares!r}")
    return Portfolio(shares={str(k): float(v) for k, v in shares.items()}, **out)


@dataclass(frozen=True)
class Decision:
    timestamp: str  # the latest bar's close: the decision is filled at the next bar's open
    level: float
    action: int
    mask: list[bool]
    forbidden: dict[str, str]  # each forbidden level -> the first rule (in priority order) that removed it
    observation: list[float]
    equity: float  # the portfolio marked at the latest close
    cooldown: int  # after the stop-out check: carry it to the next decision

    def to_dict(self) -> dict:
        return asdict(self)


class Decider:
    """An exported policy ready to decide on live bars."""

    def __init__(self, path: str | Path, burn_in: int = BURN_IN_BARS):
        self.path = Path(path)
        self.policy: LoadedPolicy = load_policy(self.path)
        self.metadata: ExportMetadata = read_metadata(self.policy, self.path)
        self.cfg = self.metadata.run_config()
        self.spec = self.metadata.policy
        self.regime_model = RegimeModel.from_dict(self.metadata.regime_model)
        self.masked = reads_masks(self.metadata.algorithm)
        self.burn_in = burn_in

    def required_bars(self, bars_per_session: float = 1.0) -> int:
        """The fewest bars per symbol whose last bar has every feature and a full observation window."""
        warmup = self.cfg.features.warmup_bars(bars_per_session)
        return warmup + self.cfg.env.lookback_bars + max(self.cfg.env.vol_bars, self.cfg.env.liquidity_bars) + 1

    def window_bars(self, bars_per_session: float = 1.0) -> int:
        """The bars per symbol a decision uses: :meth:`required_bars` plus the burn-in: at least
        ``burn_in`` bars and :data:`BURN_IN_PERIODS` higher-timeframe periods (the weekly RSI's
        Wilder smoothing forgets its start by (13/14)^n: 150 weeks leave 1e-5 of it)."""
        return self.required_bars(bars_per_session) + max(self.burn_in, self.period_bars(bars_per_session) * BURN_IN_PERIODS)

    def period_bars(self, bars_per_session: float = 1.0) -> int:
        """Bars in one higher-timeframe period (a week of daily bars, a session of intraday ones)."""
        period = self.cfg.features.higher_timeframe
        if period == "auto":
            period = "1d" if bars_per_session > 1 else "1w"
        sessions = {"1d": 1, "1w": 5, "1mo": 21, "none": 0}[period]
        return round(sessions * bars_per_session)

    def decide(self, bars: pl.DataFrame, portfolio: Portfolio) -> Decision:
        """The policy's decision at the close of the latest bar.

        :param bars: ``timestamp, symbol, open, high, low, close, volume`` rows of every symbol the
            universe reads, in time order per symbol, ending on the same latest bar; the last
            :attr:`window_bars` per symbol are used.
        :raises DecisionError: naming the symbol, the rule and the rows: missing columns or symbols,
            bars out of order or repeated, symbols whose latest bars differ (stale), too few bars.
        """
        panel, freq = self._panel(bars)
        feats = feature_table(self.cfg, panel, freq)
        n = feats.height
        if n < self.required_bars(freq.bars_per_session) or first_complete_row(feats) > n - self.cfg.env.lookback_bars:
            raise DecisionError(f"bars: {n} bars per symbol are too few for a complete observation of the latest bar; "
                                f"send at least {self.required_bars(freq.bars_per_session)} "
                                f"(recommended {self.window_bars(freq.bars_per_session)})")
        # the filter starts at the window's second bar (the first has no return), from the model's prior
        probs = forward_filter(self.regime_model, underlying_returns(self.cfg, panel)[1:])
        frame = regime_frame(feats["timestamp"][1:], probs)
        norm = self.spec.observation.normalisation
        market = build_market(self.cfg, panel, feats, frame, (0, n), freq.periods_per_year,
                              fitted=(self.spec.observation.features, norm.mean, norm.std))
        return self._act(market, portfolio)

    def _panel(self, bars: pl.DataFrame):
        missing = [c for c in BAR_COLUMNS if c not in bars.columns]
        if missing:
            raise DecisionError(f"bars: missing columns {missing} (need {list(BAR_COLUMNS)})")
        wanted = list(dict.fromkeys([self.cfg.universe.underlying, *(leg.symbol for leg in self.spec.legs)]))
        under = bars.filter(pl.col("symbol") == wanted[0])["timestamp"]
        freq = bar_frequency(under) if under.len() > 1 else None
        window = self.window_bars(freq.bars_per_session if freq else 1.0)
        frames, last = [], {}
        for sym in wanted:
            f = bars.filter(pl.col("symbol") == sym).select(BAR_COLUMNS)
            if f.height == 0:
                raise DecisionError(f"bars: no bars of {sym} (the policy reads {wanted})")
            ts = f["timestamp"]
            back = ts.diff().dt.total_microseconds().fill_null(1) <= 0
            if back.any():
                i = int(back.arg_true()[0])
                raise DecisionError(f"bars: {sym} row {i} ({ts[i]}) is not after the row before it ({ts[i - 1]}): "
                                    "out of order or repeated")
            last[sym] = ts[-1]
            frames.append(f.tail(window))
        if len(set(last.values())) > 1:
            newest = max(last.values())
            stale = {s: str(t) for s, t in last.items() if t != newest}
            raise DecisionError(f"bars: stale symbols {stale}: their latest bar is before {newest}")
        panel, _ = align(frames)
        if freq is None:
            raise DecisionError(f"bars: {under.len()} bar of {wanted[0]} (need at least {self.required_bars()})")
        return panel, freq

    def _act(self, market, portfolio: Portfolio) -> Decision:
        engine = Engine(market, self.cfg, 1)
        t = market.n_rows - 1
        engine.reset_all(np.array([t]), np.array([t + 1]))
        symbols = [leg.symbol for leg in market.legs]
        unknown = sorted(set(portfolio.shares) - set(symbols))
        if unknown:
            raise DecisionError(f"portfolio: shares of {unknown}, which the policy does not trade (legs {symbols})")
        levels = market.levels
        matches = np.flatnonzero(np.isclose(levels, portfolio.level, atol=1e-9))
        if len(matches) == 0:
            raise DecisionError(f"portfolio: level {portfolio.level} is not one of the policy's levels {levels.tolist()}")
        engine.load_state(np.array([portfolio.cash]), np.array([[portfolio.shares.get(s, 0.0) for s in symbols]]),
                          np.array([portfolio.peak]), np.array([int(matches[0])]), np.array([portfolio.held]),
                          np.array([portfolio.cooldown]))
        mask, _ = engine.masks()
        forbidden = self._reasons(engine, mask[0])
        obs = engine.observe()[0].copy()
        action = int(self.policy.act(obs, mask[0] if self.masked else None))
        if not mask[0, action]:  # a policy that does not read masks is overridden, as in its backtest
            action = int(engine.nearest_allowed(mask, np.array([action]))[0])
        return Decision(timestamp=market.timestamps[t], level=float(levels[action]), action=action,
                        mask=mask[0].tolist(), forbidden=forbidden, observation=obs.tolist(),
                        equity=float(engine.equity[0]), cooldown=int(engine.cooldown[0]))

    def _reasons(self, engine: Engine, mask: np.ndarray) -> dict[str, str]:
        """Each forbidden level -> the first rule, in priority order, that removed it (as the masks compose)."""
        out: dict[str, str] = {}
        allowed = np.ones_like(mask)
        for rule, rule_mask in zip(engine.rules, engine.rule_masks()):
            if rule_mask is None:
                continue
            combined = allowed & rule_mask[0]
            if not combined.any():  # a rule that would leave nothing yields (as in Engine.masks)
                continue
            for a in np.flatnonzero(allowed & ~combined):
                out[f"{engine.tab.levels[a]:g}"] = rule
            allowed = combined
        return out
