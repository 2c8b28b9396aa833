"""The trading application's side: one decision on the latest bar, exactly as the backtest decides.

:class:`Decider` loads an export (its content hash verified by :func:`export.load_policy`) and,
given a trailing window of bars per symbol up to now and the live portfolio, returns the target
level, the action, the mask with the rule that forbade each forbidden action, and the observation
it acted on. Every step is the library's own code, run on the window: the feature table
(:func:`features.build_features`, only the policy's columns and the rows the market reads), the
regime filter (:func:`regimes.forward_filter` with the export's fitted model), the training
window's normalisation (:func:`market.build_market` with the export's feature list, mean and std),
and the engine's masks and observation (:class:`engine.Engine` with one portfolio set to the live
state). No second implementation. A :class:`Session` keeps the window and the filter between bars.

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

import datetime as dt
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from sentio_core.config import Config
from sentio_core.data import align
from sentio_core.engine import Engine
from sentio_core.export import LoadedPolicy, load_policy, read_metadata
from sentio_core.features import SymbolBars, build_features
from sentio_core.frequency import BarFrequency, bar_frequency
from sentio_core.market import Leg, build_market
from sentio_core.metadata import ExportMetadata, LegSpec
from sentio_core.policies import reads_masks
from sentio_core.regimes import RegimeModel, forward_filter, predict_next, regime_frame, underlying_returns

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
    """An exported policy ready to decide on live bars.

    :meth:`decide` is one decision from a window of bars (stateless); :meth:`session` keeps the
    window, the regime filter and the latest bar's market between bars, so a trading loop pays for
    the newest bar only (:class:`Session`). Both run the same code on the same window; the one
    difference is where the regime filter started (the window's first bar, or the session's), which
    the burn-in makes forgotten (the replay tests find every 10th live decision bit for bit the
    window's).
    """

    def __init__(self, path: str | Path, burn_in: int = BURN_IN_BARS):
        self.path = Path(path)
        self.policy: LoadedPolicy = load_policy(self.path)
        self.metadata: ExportMetadata = read_metadata(self.policy, self.path)
        self.cfg = self.metadata.run_config()
        self.spec = self.metadata.policy
        self.regime_model = RegimeModel.from_dict(self.metadata.regime_model)
        self.masked = reads_masks(self.metadata.algorithm)
        self.burn_in = burn_in
        # the feature table's columns a decision reads: the observed ones, and the clock the session rule reads
        self.features = [n for n in self.spec.observation.features if not n.startswith("regime_")] + ["minutes_to_close"]
        self.symbols = list(dict.fromkeys([self.cfg.universe.underlying, *(leg.symbol for leg in self.spec.legs)]))

    def required_bars(self, bars_per_session: float = 1.0) -> int:
        """The fewest bars per symbol whose last bar has every feature and a full observation window."""
        warmup = self.cfg.features.warmup_bars(bars_per_session)
        return warmup + self.tail_bars()

    def tail_bars(self) -> int:
        """The latest bars a decision reads beyond the feature table: the observation's lookback and
        the legs' trailing volatility and dollar volume (the masks' inputs)."""
        env = self.cfg.env
        return env.lookback_bars + max(env.vol_bars, env.liquidity_bars) + 1

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
        return self.session(bars).decide(portfolio)

    def session(self, bars: pl.DataFrame) -> Session:
        """A live session primed with ``bars`` (as :meth:`decide` reads them); :meth:`Session.append`
        then adds each new bar."""
        return Session(self, bars)

    def _panel(self, bars: pl.DataFrame) -> tuple[pl.DataFrame, BarFrequency]:
        """The window's aligned panel (its last :meth:`window_bars` bars per symbol) and frequency."""
        frames = _by_symbol(bars, self.symbols)
        under = frames[self.symbols[0]]["timestamp"]
        if under.len() < 2:
            raise DecisionError(f"bars: {under.len()} bar of {self.symbols[0]} (need at least {self.required_bars()})")
        freq = bar_frequency(under)
        last = {sym: f["timestamp"][-1] for sym, f in frames.items()}
        if len(set(last.values())) > 1:
            newest = max(last.values())
            stale = {s: str(t) for s, t in last.items() if t != newest}
            raise DecisionError(f"bars: stale symbols {stale}: their latest bar is before {newest}")
        window = self.window_bars(freq.bars_per_session)
        panel, _ = align([f.tail(window) for f in frames.values()])
        return panel, freq


class Session:
    """A live decision loop on one export: the trailing window of bars, the regime filter's state and
    the latest bar's market, kept between bars.

    :meth:`append` takes the newest bar(s) of every symbol: it checks them, slides the window,
    advances the regime filter by their returns (the rows one run over the whole series gives), and
    builds the latest bar's market: the feature table of the window (only the policy's columns),
    normalised with the export's statistics, and the engine on its last :meth:`Decider.tail_bars`
    rows. :meth:`decide` then loads the portfolio into the engine and acts: what a trading loop pays
    once it has the bar (:meth:`act` is the same without the reasons and the JSON-ready result).
    One call at a time: the engine holds the portfolio being decided (the service serialises its
    requests with a lock).
    """

    def __init__(self, decider: Decider, bars: pl.DataFrame):
        self.decider = decider
        panel, freq = decider._panel(bars)
        self.freq = freq
        self.window = decider.window_bars(freq.bars_per_session)
        returns = underlying_returns(decider.cfg, panel)[1:]  # the first bar has no return
        frames = {sym: f for (sym,), f in panel.partition_by("symbol", as_dict=True).items()}
        self._build(frames, forward_filter(decider.regime_model, returns))  # (n - 1, K): a row per bar after the first

    @property
    def last(self) -> dt.datetime:
        """The latest bar's timestamp."""
        return self._frames[self.decider.symbols[0]]["timestamp"][-1]

    def bars(self) -> pl.DataFrame:
        """The window's bars (``timestamp, symbol, open, high, low, close, volume``): what primes
        another model's session on the same bars."""
        return pl.concat([self._frames[sym] for sym in sorted(self._frames)])

    def append(self, bars: pl.DataFrame) -> None:
        """Add the bars after :attr:`last`: one or more timestamps, every symbol at each. Bars that
        repeat the window's (an application sending its previous bar again with each new one) are
        checked against the held ones and dropped.

        :raises DecisionError: naming the symbol, the rule and the rows, when columns or symbols are
            missing, a bar is not after the one before it, the symbols' new timestamps differ, a
            repeated bar differs from the held one (history was re-adjusted: prime a new session
            with the re-adjusted window) or lies before the window; the session is unchanged.
        """
        new = _by_symbol(bars, self.decider.symbols, self._frames[self.decider.symbols[0]]["timestamp"].dtype.time_zone)
        last = self._last_us()
        for sym, frame in new.items():
            if _epoch_us(frame["timestamp"])[0] <= last:  # in UTC: a fall-back hour repeats local times
                new[sym] = self._repeated(sym, frame)
        if all(f.height == 0 for f in new.values()):
            return  # only bars the session holds: nothing new
        stamps = new[self.decider.symbols[0]]["timestamp"]
        differ = {sym: f.height for sym, f in new.items() if not f["timestamp"].equals(stamps)}
        if differ:
            raise DecisionError(f"bars: the new bars' timestamps differ between symbols (rows per symbol {differ}): "
                                f"every symbol needs a bar at each of {stamps.len()} timestamps")
        under = self.decider.cfg.universe.underlying
        close = np.concatenate([self._frames[under]["close"].tail(1).to_numpy(), new[under]["close"].to_numpy()])
        returns = np.log(close[1:] / close[:-1])
        model = self.decider.regime_model
        probs = forward_filter(model, returns, prior=predict_next(model, self._probs[-1]))
        # one chunk per frame: a chunk per appended bar would slow every query on the window
        frames = {sym: f.slice(max(f.height + new[sym].height - self.window, 0)).vstack(new[sym]).rechunk()
                  for sym, f in self._frames.items()}
        self._build(frames, np.concatenate([self._probs, probs])[-(self.window - 1):])

    def _repeated(self, sym: str, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame``'s bars after :attr:`last`, once those up to it are found equal to the held ones.

        :raises DecisionError: a bar before the window, or one whose prices or volume differ from
            the held bar's (beyond 1e-9 relative): history was re-adjusted.
        """
        held, last = self._frames[sym], self._last_us()
        at = _epoch_us(frame["timestamp"])  # in UTC: a fall-back hour repeats local times
        old = frame.filter(pl.Series(at <= last))
        if at[0] < _epoch_us(held["timestamp"])[0]:
            raise DecisionError(f"bars: {sym} row 0 ({old['timestamp'][0]}) is before the session's window "
                                f"({held['timestamp'][0]} .. {self.last})")
        both = old.join(held, on="timestamp", how="left", suffix="_held")
        for col in ("close", "open", "high", "low", "volume"):
            sent, kept = both[col].to_numpy(), both[f"{col}_held"].to_numpy()
            bad = np.flatnonzero(~np.isclose(sent, kept, rtol=1e-9, atol=0.0))
            if len(bad):
                i = int(bad[0])
                what = "is not in the session's window" if np.isnan(kept[i]) else \
                    f"differs from the session's ({col} {float(kept[i])!r} held, {float(sent[i])!r} sent): " \
                    "history was re-adjusted"
                raise DecisionError(f"bars: {sym}'s bar at {both['timestamp'][i]} {what}; prime a new session "
                                    "with the re-adjusted window")
        return frame.filter(pl.Series(at > last))

    def _last_us(self) -> int:
        """The latest bar's timestamp, microseconds since the epoch (UTC)."""
        return int(_epoch_us(self._frames[self.decider.symbols[0]]["timestamp"])[-1])

    def _build(self, frames: dict[str, pl.DataFrame], probs: np.ndarray) -> None:
        """The latest bar's market and engine from the window's bars and filtered regime probabilities
        (one row per bar after the first); the session takes them only once all is built."""
        d, cfg = self.decider, self.decider.cfg
        n = frames[d.symbols[0]].height
        k = d.tail_bars()  # the rows the latest bar's market reads
        too_few = DecisionError(f"bars: {n} bars per symbol are too few for a complete observation of the latest bar; "
                                f"send at least {d.required_bars(self.freq.bars_per_session)} "
                                f"(recommended {d.window_bars(self.freq.bars_per_session)})")
        if n < max(d.required_bars(self.freq.bars_per_session), k + 1):
            raise too_few
        feats = build_features(SymbolBars.of(frames), cfg.universe, cfg.features, self.freq, cfg.data.calendar, cfg.data.timezone,
                               columns=d.features, last=k)
        if None in feats.row(k - cfg.env.lookback_bars):  # the observation's oldest row: the warm-up must be over
            raise too_few
        tail = SymbolBars.of({sym: frame.tail(k) for sym, frame in frames.items()})
        norm = d.spec.observation.normalisation
        market = build_market(cfg, tail, feats, regime_frame(feats["timestamp"], probs[-k:]),
                              (0, k), self.freq.periods_per_year, fitted=(d.spec.observation.features, norm.mean, norm.std))
        market = replace(market, legs=[_trained_moves(leg, spec, cfg) for leg, spec in zip(market.legs, d.spec.legs)])
        engine = Engine(market, cfg, 1)
        t = market.n_rows - 1
        engine.reset_all(np.array([t]), np.array([t + 1]))  # one decision, at the latest bar
        self.market, self.engine, self._frames, self._probs, self._row = market, engine, frames, probs, t
        self._stamp = market.timestamps[t]
        self._legs = [leg.symbol for leg in market.legs]
        self._levels = market.levels.tolist()
        self._names = [f"{lv:g}" for lv in self._levels]  # the levels as ``forbidden`` names them
        self._level_index = {lv: i for i, lv in enumerate(self._levels)}
        self._leg_set = frozenset(self._legs)
        self._by = np.empty((1, len(self._levels)), dtype=int)

    def act(self, portfolio: Portfolio) -> tuple[int, np.ndarray, np.ndarray]:
        """The policy's action at the close of the latest bar for this portfolio, with the composed
        mask ``(A,)`` and the observation ``(obs_dim,)`` it acted on: :meth:`decide` without the
        rules behind the mask and the JSON-ready :class:`Decision` (a loop that needs only the
        action pays for no more).

        :raises DecisionError: shares of a symbol the policy does not trade, or a level it has not.
        """
        d, engine, symbols, levels = self.decider, self.engine, self._legs, self._levels
        if not self._leg_set.issuperset(portfolio.shares):
            unknown = sorted(set(portfolio.shares) - self._leg_set)
            raise DecisionError(f"portfolio: shares of {unknown}, which the policy does not trade (legs {symbols})")
        level = self._level_index.get(portfolio.level)  # a level as the export writes it
        if level is None:  # np.isclose's rule (rtol 1e-5, atol 1e-9), without its cost: a level rounded to float32 is that level
            level = next((i for i, lv in enumerate(levels) if abs(lv - portfolio.level) <= 1e-9 + 1e-5 * abs(portfolio.level)),
                         None)
        if level is None:
            raise DecisionError(f"portfolio: level {portfolio.level} is not one of the policy's levels {levels}")
        # every field of the engine's one portfolio a decision reads is loaded here (its row was set
        # when the market was built): a decision leaves nothing behind for the next
        engine.load_state(portfolio.cash, [[portfolio.shares.get(s, 0.0) for s in symbols]], portfolio.peak, level,
                          portfolio.held, portfolio.cooldown)
        mask, _ = engine.masks(self._by)
        obs = engine.observe()[0]
        action = int(d.policy.act(obs, mask[0] if d.masked else None))
        if not mask[0, action]:  # a policy that does not read masks is overridden, as in its backtest
            action = int(engine.nearest_allowed(mask, np.array([action]))[0])
        return action, mask[0], obs

    def decide(self, portfolio: Portfolio) -> Decision:
        """The policy's decision at the close of the latest bar for this portfolio (:meth:`act`, with
        the rule behind each forbidden level, the equity and the cool-down carried forward).

        :raises DecisionError: as :meth:`act`.
        """
        action, mask, obs = self.act(portfolio)
        engine, rules, names = self.engine, self.engine.rules, self._names
        forbidden = {names[a]: rules[r] for a, r in enumerate(self._by[0].tolist()) if r >= 0}
        return Decision(timestamp=self._stamp, level=self._levels[action], action=action, mask=mask.tolist(),
                        forbidden=forbidden, observation=obs.tolist(), equity=float(engine.equity[0]),
                        cooldown=int(engine.cooldown[0]))


def _epoch_us(stamps: pl.Series) -> np.ndarray:
    """Microseconds since the epoch (UTC) of a series of time-zone-aware timestamps, through numpy
    (no query: the session's checks run on every bar)."""
    return stamps.to_numpy().astype("datetime64[us]").astype(np.int64)


def _trained_moves(leg: Leg, spec: LegSpec, cfg: Config) -> Leg:
    """The leg with its worst training bar from the export (the worst-bar gap rule's moves are the
    training window's, not the decision window's)."""
    if spec.worst_drop is None or spec.worst_rise is None:
        if cfg.masks.gap_move == "worst_bar" and "drawdown" in cfg.masks.rules:
            raise DecisionError(f"export: leg {leg.symbol} has no worst training bar (an export from before they were "
                                "recorded) and the policy's gap rule reads it; re-export the policy")
        return leg
    return replace(leg, worst_drop=spec.worst_drop, worst_rise=spec.worst_rise)


def _by_symbol(bars: pl.DataFrame, wanted: list[str], tz: str | None = None) -> dict[str, pl.DataFrame]:
    """Each wanted symbol's bars, in time order with no repeats, prices and volume as floats and
    timestamps in ``tz`` (when given: a session's).

    :raises DecisionError: missing columns or symbol; timestamps without a time zone; prices that
        are not finite and positive or volume that is not finite and non-negative (one such bar
        would poison the regime filter's carried state for good); a row not after the one before it.
    """
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise DecisionError(f"bars: missing columns {missing} (need {list(BAR_COLUMNS)})")
    stamp = bars.schema["timestamp"]
    if not isinstance(stamp, pl.Datetime) or stamp.time_zone is None:
        raise DecisionError(f"bars: timestamps must be date-times with a time zone, got {stamp}")
    zone = tz or stamp.time_zone
    wanted_schema = {"timestamp": pl.Datetime("us", zone), "symbol": pl.String, **{c: pl.Float64 for c in BAR_COLUMNS[2:]}}
    if list(bars.schema.items()) == list(wanted_schema.items()):
        typed = bars  # already as a session holds its bars (the usual new bar): no query
    else:
        try:
            typed = bars.select(pl.col("timestamp").dt.convert_time_zone(zone).dt.cast_time_unit("us"),
                                pl.col("symbol").cast(pl.String), pl.col(list(BAR_COLUMNS[2:])).cast(pl.Float64))
        except pl.exceptions.PolarsError as exc:
            raise DecisionError(f"bars: prices and volume must be numbers ({str(exc).splitlines()[0]})") from None
    values = np.column_stack([typed[c].to_numpy() for c in BAR_COLUMNS[2:]])  # nulls as NaN
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(values).all(axis=1) & (values[:, :4] > 0).all(axis=1) & (values[:, 4] >= 0)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        row = typed.row(i, named=True)
        raise DecisionError(f"bars: {row['symbol']} at {row['timestamp']} (row {i} of the bars sent) has a price "
                            "that is not finite and positive or a volume that is not finite and non-negative: "
                            + ", ".join(f"{c} {row[c]!r}" for c in BAR_COLUMNS[2:]))
    symbols, stamps = typed["symbol"].to_numpy(), typed["timestamp"].to_numpy()
    out = {}
    for sym in wanted:
        rows = np.flatnonzero(symbols == sym)
        if not len(rows):
            raise DecisionError(f"bars: no bars of {sym} (the policy reads {wanted})")
        # the symbol's rows in the order sent: a slice when they are together (no copy, no query)
        together = rows[-1] - rows[0] + 1 == len(rows)
        f = typed.slice(int(rows[0]), len(rows)) if together else typed[rows]
        back = np.flatnonzero(np.diff(stamps[rows]) <= np.timedelta64(0))
        if len(back):
            i, ts = int(back[0]) + 1, f["timestamp"]
            raise DecisionError(f"bars: {sym} row {i} ({ts[i]}) is not after the row before it ({ts[i - 1]}): "
                                "out of order or repeated")
        out[sym] = f
    return out
