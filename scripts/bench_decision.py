"""Benchmark: the decision API's latency on this machine (torch pinned to one thread, as the service does).

Prints p50 / p99 and decisions per second for:

1. a decision from a ready feature row: the live session's market already built for the latest
   bar; the portfolio loaded, the masks with the rule behind each forbidden level, the
   observation and the policy's masked argmax, as a JSON-ready decision (:meth:`Session.decide`);
   and the observation, mask and action alone (:meth:`Session.act`);
2. the whole decision from raw bars in a live loop: the new bar of each symbol appended (checked,
   the window slid, the regime filter advanced one step, the window's feature table, normalisation
   and the latest bar's market), then the decision (:meth:`Session.append` + :meth:`Session.decide`),
   with its parts: the feature table and the market;
3. the same from a whole window of bars each time, the session built afresh (:meth:`Decider.decide`);
4. the HTTP round trips against ``sentio serve`` on 127.0.0.1: ``POST /session/decide`` with the
   new bars (the live loop) and ``POST /decide`` with the window's bars as JSON.

Rows 2 to 4 walk the data's last ``--n`` bars, one decision per bar.

Usage:
  .venv/bin/python scripts/bench_decision.py [--model trained_models/POLICY] [--config configs/smoke.yaml] [--n 200]
(without --model a policy is trained for 2,048 steps on the config first)
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import torch

import sentio_core.decision as decision_module
from sentio.cli import main as cli
from sentio_core.data import build_manifest, build_panel
from sentio_core.decision import Decider, Portfolio

REPO = Path(__file__).resolve().parents[1]


def stats(name: str, seconds: list[float], target: float | None = None) -> dict:
    x = np.asarray(seconds)
    row = {"what": name, "p50_ms": np.percentile(x, 50) * 1e3, "p99_ms": np.percentile(x, 99) * 1e3,
           "per_second": 1.0 / x.mean(), "target_p99_ms": target}
    flag = "" if target is None else ("  (meets the target)" if row["p99_ms"] < target else "  (MISSES the target)")
    print(f"{name:62s} p50 {row['p50_ms']:8.3f} ms  p99 {row['p99_ms']:8.3f} ms  {row['per_second']:7.0f}/s"
          + (f"  target p99 < {target} ms{flag}" if target is not None else ""))
    return row


class Timed:
    """Wall time of each call of a function of the decision module (monkeypatched while the loop runs)."""

    def __init__(self, name: str):
        self.name, self.seconds = name, []
        self.inner = getattr(decision_module, name)

    def __enter__(self):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self.inner(*args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - start)
        setattr(decision_module, self.name, timed)
        return self

    def __exit__(self, *exc):
        setattr(decision_module, self.name, self.inner)


def repeat(call, n: int) -> list[float]:
    """Wall times of ``n`` calls, after 50 untimed ones."""
    for _ in range(50):
        call()
    seconds = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def rows(frame: pl.DataFrame) -> list[dict]:
    return frame.with_columns(pl.col("timestamp").dt.to_string("%Y-%m-%dT%H:%M:%S%:z")).to_dicts()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--config", default=str(REPO / "configs" / "smoke.yaml"))
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = args.model
    if model is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-decision-"))
        assert cli(["train", "--timesteps", "2048", "--output", str(tmp / "policy"), "--config", args.config,
                    "--set", f"run.work_dir={tmp / 'work'}"]) == 0
        model = str(tmp / "policy")
    decider = Decider(model)
    bars, _, _ = build_panel(decider.cfg, build_manifest(decider.cfg))
    stamps = bars.filter(pl.col("symbol") == decider.symbols[0])["timestamp"]
    walk = stamps[-args.n:]
    news = [bars.filter(pl.col("timestamp") == t) for t in walk]
    book = Portfolio(cash=100_000.0, shares={}, peak=100_000.0)
    session = decider.session(bars.filter(pl.col("timestamp") < walk[0]))
    bar = f"{session.freq.bar_minutes:g}-minute" if session.freq.intraday else "daily"
    print(f"\nmodel {model}: {decider.metadata.algorithm}, {bar} bars, "
          f"window {session.window} bars per symbol, {len(decider.features)} feature columns computed\n")

    table = [stats("1. from a ready feature row (Session.decide)", repeat(lambda: session.decide(book), args.n * 10), 0.2),
             stats("   observation, mask and action alone (Session.act)", repeat(lambda: session.act(book), args.n * 10), 0.2)]

    live = []
    with Timed("build_features") as feats, Timed("build_market") as market:
        for new in news:
            start = time.perf_counter()
            session.append(new)
            session.decide(book)
            live.append(time.perf_counter() - start)
    table.append(stats("2. whole decision from raw bars, live (append + decide)", live, 10.0))
    table.append(stats("     of which the window's feature table", feats.seconds))
    table.append(stats("     of which the latest bar's market", market.seconds))

    window = []
    for t in walk[-min(args.n, 50):]:
        upto = bars.filter(pl.col("timestamp") <= t)
        start = time.perf_counter()
        decider.decide(upto, book)
        window.append(time.perf_counter() - start)
    table.append(stats("3. whole decision from a window of bars (Decider.decide)", window))

    import uvicorn

    from sentio.service import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    portfolio = {"cash": 100_000.0, "shares": {}, "peak": 100_000.0}
    first = bars.filter(pl.col("timestamp") < walk[0]).group_by("symbol", maintain_order=True).tail(session.window)
    http_live, http_window = [], []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        client.post("/session", json={"bars": rows(first)}).raise_for_status()
        for new in news:
            body = {"bars": rows(new), "portfolio": portfolio}
            start = time.perf_counter()
            client.post("/session/decide", json=body).raise_for_status()
            http_live.append(time.perf_counter() - start)
        body = {"bars": rows(bars.group_by("symbol", maintain_order=True).tail(session.window)), "portfolio": portfolio}
        client.post("/decide", json=body).raise_for_status()
        for _ in range(min(args.n, 50)):
            start = time.perf_counter()
            client.post("/decide", json=body).raise_for_status()
            http_window.append(time.perf_counter() - start)
    table.append(stats(f"4. HTTP POST /session/decide ({len(news[0])} new bars)", http_live))
    table.append(stats(f"   HTTP POST /decide ({len(body['bars'])} bars of JSON)", http_window))
    server.should_exit = True


if __name__ == "__main__":
    main()
