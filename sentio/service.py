"""``sentio serve``: the decision API over HTTP on 127.0.0.1 (FastAPI).

- ``POST /decide`` with ``{"bars": [{timestamp, symbol, open, high, low, close, volume}, ...],
  "portfolio": {cash, shares, peak, level, held, cooldown}}`` returns the decision
  (:class:`sentio_core.decision.Decision`) on the latest of the bars (a window of them: see
  ``/model``'s ``window_bars``) and the identity of the model that made it.
- The live loop: ``POST /session`` with ``{"bars": [...]}`` (a window) primes the service's live
  session (:class:`sentio_core.decision.Session`); then each bar, ``POST /session/decide`` with
  ``{"bars": [the new bar of each symbol], "portfolio": ...}`` appends the bars and decides, paying
  for the newest bar only. The session is the loaded model's: after a model swap the next request
  re-primes the new model's session from the window's bars.
- ``GET /health`` says whether a model is loaded; ``GET /model`` is its identity: registered
  version, algorithm, data range, code version, weights hash, when it was loaded, the bars a
  window needs.

The model is the champion export (``registry.export_dir/registry.model_name``). Before each
request the service looks at the export's two files (size and modification time); when they
changed it loads the new pair, verified by its content hash, and swaps it in with one reference
assignment. A request takes the reference once, at its start, so it is served entirely by one
model, old or new, never half of each. A pair caught between its two renames fails the hash check,
so the old model stays and the next request tries again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from sentio_core.decision import Decider, DecisionError, Portfolio, Session
from sentio_core.export import export_paths
from sentio_core.files import DataError


class Bar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timestamp: str = Field(description="ISO 8601 with its UTC offset, the bar's close time as the data files hold it")
    symbol: str
    open: float
    high: float
    low: float
    close: float
    volume: float


class PortfolioIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cash: float
    shares: dict[str, float] = {}
    peak: float
    level: float = 0.0
    held: int = 0
    cooldown: int = 0


class DecideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bars: list[Bar] = Field(min_length=1)
    portfolio: PortfolioIn


class PrimeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bars: list[Bar] = Field(min_length=1)


class SessionDecideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bars: list[Bar] = Field(default=[], description="the bars after the session's latest, every symbol at each timestamp")
    portfolio: PortfolioIn


@dataclass(frozen=True)
class Loaded:
    """One loaded model and what identifies it."""

    decider: Decider
    identity: dict[str, Any]
    stamp: tuple  # (size, mtime_ns) of the weights and the metadata when loaded


def _stamp(stem: Path) -> tuple:
    return tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in export_paths(stem))


def _identity(decider: Decider) -> dict[str, Any]:
    md = decider.metadata
    return {"model": str(decider.path), "algorithm": md.algorithm,
            "version": md.registry.version if md.registry else None,
            "alias": md.registry.alias if md.registry else None,
            "data": {"first_train": md.data.first_train, "last_test": md.data.last_test} if md.data else None,
            "code_version": md.code_version, "weights_sha256": md.weights_sha256,
            "symbols": decider.symbols,
            # the bars per symbol a window needs, by bar size (an export does not record its data's)
            "window_bars": {"daily": decider.window_bars(1.0), "5-minute": decider.window_bars(78.0),
                            "1-minute": decider.window_bars(390.0)},
            "loaded_at": datetime.now(UTC).isoformat(timespec="seconds")}


class Live:
    """The service's live session and the model it belongs to, behind one lock (a session's engine
    is one portfolio's state: requests take turns; each costs a bar's work, or a whole prime when it
    is the first after a model swap)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.session: Session | None = None
        self.model: Loaded | None = None

    def for_model(self, loaded: Loaded) -> Session:
        """The session of ``loaded`` (call with the lock held): after a swap, the new model's,
        primed with the window's bars.

        :raises DecisionError: no session yet, or the window is too short for the new model.
        """
        if self.session is None:
            raise DecisionError("no live session: POST /session with a window of bars first")
        if self.model is not loaded:
            self.session = loaded.decider.session(self.session.bars())
            self.model = loaded
        return self.session


class Champion:
    """The served model, reloaded when the export's files change."""

    def __init__(self, stem: str | Path):
        self.stem = Path(str(stem).removesuffix(".pth"))
        self._lock = threading.Lock()
        self.current: Loaded | None = None
        self.error: str | None = None
        self.refresh()

    def refresh(self) -> Loaded | None:
        """Load the export when its files changed since the loaded model; keep the old one if it fails."""
        try:
            stamp = _stamp(self.stem)
        except OSError as exc:
            self.error = f"no export at {self.stem}: {exc.strerror}"
            return self.current
        if self.current is not None and stamp == self.current.stamp:
            return self.current
        with self._lock:
            if self.current is not None and stamp == self.current.stamp:
                return self.current
            try:
                decider = Decider(self.stem)
            except (DataError, OSError, ValueError) as exc:  # mid-swap or damaged: the old model serves on
                self.error = f"{type(exc).__name__}: {exc}"
                return self.current
            self.current = Loaded(decider, _identity(decider), stamp)  # one assignment: the swap
            self.error = None
        return self.current


def _bars_frame(bars: list[Bar], tz: str) -> pl.DataFrame:
    frame = pl.DataFrame([b.model_dump() for b in bars])
    try:
        stamps = frame["timestamp"].str.to_datetime(time_unit="us").dt.convert_time_zone(tz)
    except pl.exceptions.PolarsError as exc:
        raise DecisionError(f"bars: timestamps must be ISO 8601 with a UTC offset ({str(exc).splitlines()[0]})") from None
    return frame.with_columns(stamps.alias("timestamp"))


def create_app(stem: str | Path) -> FastAPI:
    champion = Champion(stem)
    live = Live()
    app = FastAPI(title="Sentio decisions", description=__doc__.split("\n")[0])

    def model() -> Loaded:
        loaded = champion.refresh()
        if loaded is None:
            raise HTTPException(status_code=503, detail=f"no model loaded: {champion.error}")
        return loaded

    @app.get("/health")
    def health() -> dict:
        loaded = champion.refresh()
        return {"status": "ok" if loaded else "no model", "model": loaded.identity if loaded else None,
                "error": champion.error}

    @app.get("/model")
    def identity() -> dict:
        return model().identity

    @app.post("/session")
    def prime(request: PrimeRequest) -> dict:
        with live.lock:
            loaded = model()
            try:
                session = loaded.decider.session(_bars_frame(request.bars, loaded.decider.cfg.data.timezone))
            except DecisionError as exc:
                raise HTTPException(status_code=400, detail=str(exc)) from None
            live.session, live.model = session, loaded
        return {"last": session.last.isoformat(), "window_bars": session.window, "model": loaded.identity}

    @app.post("/session/decide")
    def session_decide(request: SessionDecideRequest) -> dict:
        started = time.perf_counter()
        with live.lock:
            # taken once, under the lock: this request is served by this model alone, and a request
            # that took the model before a swap cannot take the session back to it after a later one
            loaded = model()
            try:
                session = live.for_model(loaded)
                if request.bars:
                    session.append(_bars_frame(request.bars, loaded.decider.cfg.data.timezone))
                decision = session.decide(Portfolio(**request.portfolio.model_dump()))
            except DecisionError as exc:
                raise HTTPException(status_code=409 if live.session is None else 400, detail=str(exc)) from None
        return {"decision": decision.to_dict(), "model": loaded.identity,
                "seconds": round(time.perf_counter() - started, 6)}

    @app.post("/decide")
    def decide(request: DecideRequest) -> dict:
        loaded = model()  # taken once: this request is served by this model alone
        started = time.perf_counter()
        try:
            bars = _bars_frame(request.bars, loaded.decider.cfg.data.timezone)
            decision = loaded.decider.decide(bars, Portfolio(**request.portfolio.model_dump()))
        except DecisionError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        return {"decision": decision.to_dict(), "model": loaded.identity,
                "seconds": round(time.perf_counter() - started, 6)}

    app.state.champion, app.state.live = champion, live
    return app


def serve(stem: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    import gc

    import uvicorn

    app = create_app(stem)
    # the start-up's objects (the libraries, the model: some 370,000) out of the collector's way: a full
    # collection over them takes about 0.2 s, a pause a request would otherwise meet now and then
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level="warning")
