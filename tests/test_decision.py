"""The decision API on live bars: replaying a test window bar by bar, with the portfolio carried by
the engine, gives exactly the backtest's levels, both from a window each time and from a live
session fed one bar at a time; bad bars and portfolios are refused by name."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from sentio.cli import main
from sentio_core.backtest import backtest_fold
from sentio_core.data import build_manifest, build_panel
from sentio_core.decision import Decider, DecisionError, Portfolio
from sentio_core.engine import Engine
from sentio_core.features import feature_table
from sentio_core.market import build_market
from sentio_core.regimes import forward_filter, regime_frame, underlying_returns
from sentio_core.rescore import row_of

from .conftest import REPO, SMOKE

pytestmark = pytest.mark.slow  # a training, then one decision per test bar (about 15 ms each on daily bars)

INTRADAY = REPO / "configs" / "intraday.yaml"


def _exported(tmp, config, *sets: str):
    """A MaskablePPO trained by `sentio train` on the config's latest fold, and its backtest over its
    test window built as the champion re-score builds it (the export's own fitted state)."""
    argv = ["train", "--timesteps", "512", "--output", str(tmp / "policy"), "--config", str(config),
            "--set", f"run.work_dir={tmp / 'work'}"]
    assert main([*argv, *[x for s in sets for x in ("--set", s)]]) == 0
    decider = Decider(tmp / "policy")
    cfg, spec = decider.cfg, decider.spec
    bars, _, freq = build_panel(cfg, build_manifest(cfg))
    feats = feature_table(cfg, bars, freq)
    stamps = feats["timestamp"]
    a, c, d = (row_of(stamps, spec.train_window[0]), row_of(stamps, spec.test_window[0]),
               row_of(stamps, spec.test_window[1]) + 1)
    probs = forward_filter(decider.regime_model, underlying_returns(cfg, bars)[a:])
    norm = spec.observation.normalisation
    market = build_market(cfg, bars, feats, regime_frame(stamps[a:], probs), (a, c), freq.periods_per_year,
                          fitted=(spec.observation.features, norm.mean, norm.std))
    act = lambda o, m: decider.policy.act(o, m)
    path = backtest_fold(market, cfg, (c - a, d - a), {"policy": (act, True)})["policy"]
    return decider, bars, market, path, c - a


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return _exported(tmp_path_factory.mktemp("decision"), SMOKE)


def test_replaying_the_test_window_bar_by_bar_gives_the_backtest_levels(exported):
    """Daily: the smoke fold's 120 test bars, from the window each time and from a live session."""
    want = exported[3].levels.tolist()
    assert _replay(*exported) == want
    assert _replay(*exported, live=True) == want


def test_replaying_five_minute_bars_gives_the_backtest_levels(tmp_path):
    """5-minute bars: the first 240 decisions of the latest test window from a live session (three
    sessions and more: the session-close rule, the overnight gaps and the higher-timeframe features
    all bind), and the first 80 from the window each time (a 12,861-bar window: 0.1 s a decision)."""
    exported = _exported(tmp_path, INTRADAY, "train.n_steps=64", "train.batch_size=64", "train.validation_bars=0")
    want = exported[3].levels[:240].tolist()
    assert _replay(*exported, decisions=240, live=True, check_every=20) == want
    assert _replay(*exported, decisions=80) == want[:80]


def market_stamp(bars: pl.DataFrame, iso: str):
    """An ISO timestamp as a literal comparable with the panel's timestamps."""
    return pl.lit(iso).str.to_datetime(time_zone=bars["timestamp"].dtype.time_zone)


def _replay(decider, bars, market, path, first, decisions: int | None = None, live: bool = False,
            check_every: int = 10) -> list[float]:
    """The decisions over the test window, the book carried forward by the engine one bar at a time:
    each from the window of bars up to it (``live`` False) or from a session primed with the bars
    before the window and given each bar as it comes; a live session's decisions are also those of
    the window, to the bit (checked every ``check_every`` bars)."""
    cfg = decider.cfg
    carrier = Engine(market, cfg, 1)  # the live book
    carrier.reset_all(np.array([first - 1]), np.array([first - 1 + len(path.levels)]))
    symbols = [leg.symbol for leg in market.legs]
    session = None
    if live:
        session = decider.session(bars.filter(pl.col("timestamp") <= market_stamp(bars, market.timestamps[first - 2])))
    levels = []
    for k in range(decisions or len(path.levels)):
        t = int(carrier.t[0])
        now = market.timestamps[t]
        book = Portfolio(cash=float(carrier.cash[0]), shares=dict(zip(symbols, carrier.shares[0].tolist())),
                         peak=float(carrier.peak[0]), level=float(market.levels[carrier.level[0]]),
                         held=int(carrier.held[0]), cooldown=int(carrier.cooldown[0]))
        if session is None:
            decision = decider.decide(bars.filter(pl.col("timestamp") <= market_stamp(bars, now)), book)
        else:
            session.append(bars.filter(pl.col("timestamp") == market_stamp(bars, now)))
            decision = session.decide(book)
            action, mask, obs = session.act(book)  # the same, without the reasons and the JSON-ready lists
            assert (action, mask.tolist(), obs.tolist()) == (decision.action, decision.mask, decision.observation)
            if k % check_every == 0:
                assert decision == decider.decide(bars.filter(pl.col("timestamp") <= market_stamp(bars, now)), book)
        assert decision.timestamp == now
        levels.append(decision.level)
        carrier.step(np.array([decision.action]))
    return levels


def test_a_session_refuses_bars_it_cannot_append_and_stays_as_it_was(exported):
    decider, bars, *_ = exported
    stamps = bars.filter(pl.col("symbol") == "QQQ")["timestamp"]
    session = decider.session(bars.filter(pl.col("timestamp") <= stamps[-3]))
    book = Portfolio(cash=100_000.0, shares={}, peak=100_000.0)
    before, last = session.decide(book), session.last
    nxt = bars.filter(pl.col("timestamp") == stamps[-2])
    with pytest.raises(DecisionError, match=r"QQQ row 0 \(.*\) is before the session's window"):
        session.append(bars.filter(pl.col("timestamp") == stamps[0]))
    with pytest.raises(DecisionError, match="timestamps differ between symbols"):
        session.append(pl.concat([nxt, bars.filter((pl.col("timestamp") == stamps[-1]) & (pl.col("symbol") == "TQQQ"))]))
    with pytest.raises(DecisionError, match="no bars of SQQQ"):
        session.append(nxt.filter(pl.col("symbol") != "SQQQ"))
    with pytest.raises(DecisionError, match="missing columns"):
        session.append(nxt.drop("open"))
    with pytest.raises(DecisionError, match="not finite and positive"):  # it would poison the carried regime filter
        session.append(nxt.with_columns(pl.when(pl.col("symbol") == "QQQ").then(float("nan")).otherwise(pl.col("close"))
                                        .alias("close")))
    assert session.last == last and session.decide(book) == before
    utc = nxt.with_columns(pl.col("timestamp").dt.convert_time_zone("UTC"), pl.col("volume").cast(pl.Int64))
    other = decider.session(bars.filter(pl.col("timestamp") <= stamps[-3]))
    other.append(utc)  # another time zone and integer volume: the same bars
    shuffled = decider.session(bars.filter(pl.col("timestamp") <= stamps[-3]))
    shuffled.append(nxt.select(reversed(nxt.columns)))  # the session's types in another column order: the same bars
    session.append(nxt)
    assert other.decide(book) == session.decide(book) == shuffled.decide(book)
    assert shuffled.bars().columns == session.bars().columns
    session = decider.session(bars.filter(pl.col("timestamp") <= stamps[-3]))
    session.append(pl.concat([nxt, bars.filter(pl.col("timestamp") == stamps[-1])]))  # two bars at once
    assert session.last == stamps[-1]
    assert session.decide(book) == decider.decide(bars, book)


def test_the_gap_rule_reads_the_exported_worst_training_bar(exported):
    """The worst-bar gap rule's moves are the fold's training window's (in the export), never the
    decision window's."""
    decider, bars, market, *_ = exported
    session = decider.session(bars)
    exported_moves = [(leg.worst_drop, leg.worst_rise) for leg in decider.spec.legs]
    assert all(d is not None and d > 0 for d, _ in exported_moves)
    assert [(leg.worst_drop, leg.worst_rise) for leg in session.market.legs] == exported_moves
    assert [(leg.worst_drop, leg.worst_rise) for leg in market.legs] == exported_moves  # the backtest's, refitted


def test_the_decision_says_why_each_level_is_forbidden(exported):
    decider, bars, market, _, _ = exported
    stopped = Portfolio(cash=70_000.0, shares={}, peak=100_000.0)  # 30 % down: past the drawdown budget
    decision = decider.decide(bars, stopped)
    assert decision.level == 0.0 and decision.mask == [lv == 0 for lv in market.levels]
    assert set(decision.forbidden) == {f"{lv:g}" for lv in market.levels if lv != 0}
    assert set(decision.forbidden.values()) == {"drawdown"} and decision.cooldown > 0
    assert len(decision.observation) == decider.policy.obs_dim


def test_bad_bars_and_portfolios_are_refused_by_name(exported):
    decider, bars, *_ = exported
    book = Portfolio(cash=100_000.0, shares={}, peak=100_000.0)
    with pytest.raises(DecisionError, match="missing columns"):
        decider.decide(bars.drop("volume"), book)
    with pytest.raises(DecisionError, match="no bars of SQQQ"):
        decider.decide(bars.filter(pl.col("symbol") != "SQQQ"), book)
    last = bars["timestamp"].max()
    with pytest.raises(DecisionError, match="stale symbols .*TQQQ"):
        decider.decide(bars.filter(~((pl.col("symbol") == "TQQQ") & (pl.col("timestamp") == last))), book)
    swapped = pl.concat([bars.filter(pl.col("symbol") == "QQQ").reverse(), bars.filter(pl.col("symbol") != "QQQ")])
    with pytest.raises(DecisionError, match="QQQ row 1 .* out of order or repeated"):
        decider.decide(swapped, book)
    with pytest.raises(DecisionError, match="too few"):
        decider.decide(bars.group_by("symbol").tail(40), book)
    with pytest.raises(DecisionError, match="too few"):  # the legs' latest bar only: one aligned row
        decider.decide(bars.filter((pl.col("symbol") == "QQQ") | (pl.col("timestamp") == last)), book)
    zero = pl.when((pl.col("symbol") == "QQQ") & (pl.col("timestamp") == last)).then(0.0).otherwise(pl.col("close"))
    with pytest.raises(DecisionError, match=r"QQQ at .* has a price that is not finite and positive.*close 0.0"):
        decider.decide(bars.with_columns(zero.alias("close")), book)
    missing = pl.when((pl.col("symbol") == "TQQQ") & (pl.col("timestamp") == last)).then(None).otherwise(pl.col("volume"))
    with pytest.raises(DecisionError, match=r"TQQQ at .* has a price that is not finite .*volume None"):  # a null too
        decider.decide(bars.with_columns(missing.alias("volume")), book)
    with pytest.raises(DecisionError, match="timestamps must be date-times with a time zone"):
        decider.decide(bars.with_columns(pl.col("timestamp").dt.replace_time_zone(None)), book)
    # the symbols' rows may come interleaved (bar by bar): the same decision
    assert decider.decide(bars.sort("timestamp", "symbol"), book) == decider.decide(bars, book)
    with pytest.raises(DecisionError, match="does not trade"):
        decider.decide(bars, Portfolio(cash=1.0, shares={"SPY": 1.0}, peak=1.0))
    with pytest.raises(DecisionError, match="not one of the policy's levels"):
        decider.decide(bars, Portfolio(cash=1.0, shares={}, peak=1.0, level=0.3))


def test_sentio_decide_prints_the_decision_as_json(exported, tmp_path, capsys):
    import json

    decider = exported[0]
    book = tmp_path / "book.json"
    book.write_text(json.dumps({"cash": 100_000.0, "shares": {}, "peak": 100_000.0}))
    model = str(decider.path)
    assert main(["decide", "--model", model, "--data", str(REPO / "data" / "daily"), "--portfolio", str(book)]) == 0
    out = json.loads(capsys.readouterr().out)
    direct = decider.decide(exported[1], Portfolio(cash=100_000.0, shares={}, peak=100_000.0))
    assert out == json.loads(json.dumps(direct.to_dict()))
    book.write_text(json.dumps({"cash": "lots", "peak": 1.0}))
    assert main(["decide", "--model", model, "--data", str(REPO / "data" / "daily"), "--portfolio", str(book)]) == 2
    assert "portfolio field 'cash' must be a number" in capsys.readouterr().err
    book.write_text(json.dumps({"cash": 1.0, "peak": 1.0, "margin": 2}))
    assert main(["decide", "--model", model, "--data", str(REPO / "data" / "daily"), "--portfolio", str(book)]) == 2
    assert "unknown portfolio fields ['margin']" in capsys.readouterr().err


def _readjusted(bars: pl.DataFrame, factor: float, before=None) -> pl.DataFrame:
    """The bars with every price (not the volume: a dividend's adjustment) scaled by ``factor``, all
    of them or those before ``before``."""
    scale = pl.lit(factor) if before is None else pl.when(pl.col("timestamp") < before).then(factor).otherwise(1.0)
    return bars.with_columns([pl.col(c) * scale for c in ("open", "high", "low", "close")])


def test_a_readjusted_window_decides_as_the_original(exported):
    """Re-adjusted history, decided from the window as sent: every price scaled (and the shares held
    by the inverse, the same dollars) gives the same observation to rounding and the same level."""
    decider, bars, market, *_ = exported
    symbols = [leg.symbol for leg in market.legs]
    f = 0.97
    for shares in ({}, {symbols[0]: 120.0}):
        book = Portfolio(cash=90_000.0, shares=shares, peak=101_000.0)
        scaled = Portfolio(cash=90_000.0, shares={s: n / f for s, n in shares.items()}, peak=101_000.0)
        a, b = decider.decide(bars, book), decider.decide(_readjusted(bars, f), scaled)
        assert (a.level, a.mask, a.forbidden) == (b.level, b.mask, b.forbidden)
        np.testing.assert_allclose(b.observation, a.observation, rtol=1e-9, atol=1e-9)
        assert b.equity == pytest.approx(a.equity, rel=1e-12)


def test_a_session_refuses_a_readjusted_bar_and_is_primed_again(exported):
    """A session's window is on one basis: a repeated bar with other prices (history re-adjusted) is
    refused by name and changes nothing; the same bar repeated as held is accepted; a session primed
    with the re-adjusted window decides as the window does."""
    decider, bars, *_ = exported
    stamps = bars.filter(pl.col("symbol") == "QQQ")["timestamp"]
    book = Portfolio(cash=100_000.0, shares={}, peak=100_000.0)
    session = decider.session(bars.filter(pl.col("timestamp") <= stamps[-3]))
    # the previous bar sent again with the new one: accepted, appended once
    session.append(bars.filter(pl.col("timestamp").is_in([stamps[-3], stamps[-2]])))
    assert session.last == stamps[-2]
    assert session.decide(book) == decider.decide(bars.filter(pl.col("timestamp") <= stamps[-2]), book)
    readjusted = _readjusted(bars, 0.98, before=stamps[-1])  # a dividend going ex on the latest bar
    before = session.decide(book)
    with pytest.raises(DecisionError, match=r"QQQ's bar at .* differs from the session's .*history was re-adjusted"):
        session.append(readjusted.filter(pl.col("timestamp").is_in([stamps[-2], stamps[-1]])))
    assert session.last == stamps[-2] and session.decide(book) == before
    primed = decider.session(readjusted)
    assert primed.decide(book) == decider.decide(readjusted, book)
