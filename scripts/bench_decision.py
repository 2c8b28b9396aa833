"""Benchmark: the decision API's latency on this machine (pin torch to one thread, as the service does).

Prints p50 / p99 and decisions per second for:

1. a decision from a ready feature row: the engine's state loaded, masks, observation and the
   policy's masked argmax, on a market already built (what a stateful server pays per bar);
2. a whole decision from raw bars: the trailing window's feature table, regime filter,
   normalisation, market, masks, observation and action (:meth:`Decider.decide`);
3. the HTTP round trip of ``POST /decide`` against ``sentio serve`` on 127.0.0.1 (JSON of the
   window's bars in, the decision out).

Usage:
  .venv/bin/python scripts/bench_decision.py [--model trained_models/POLICY] [--n 200]
(without --model a policy is trained for 2,048 steps on the smoke config first)
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

from sentio.cli import main as cli
from sentio_core.data import build_manifest, build_panel
from sentio_core.decision import Decider, Portfolio
from sentio_core.engine import Engine

REPO = Path(__file__).resolve().parents[1]


def stats(name: str, seconds: list[float], target: float | None = None) -> dict:
    x = np.asarray(seconds)
    row = {"what": name, "p50_ms": np.percentile(x, 50) * 1e3, "p99_ms": np.percentile(x, 99) * 1e3,
           "per_second": 1.0 / x.mean(), "target_p99_ms": target}
    flag = "" if target is None else ("  (meets the target)" if row["p99_ms"] < target else "  (MISSES the target)")
    print(f"{name:55s} p50 {row['p50_ms']:8.3f} ms  p99 {row['p99_ms']:8.3f} ms  {row['per_second']:9.0f}/s"
          + (f"  target p99 < {target} ms{flag}" if target is not None else ""))
    return row


def ready_row(decider: Decider, bars: pl.DataFrame, n: int) -> list[float]:
    """Masks, observation and action on an already built market: the per-bar cost of a stateful server."""
    panel, freq = decider._panel(bars)
    from sentio_core.features import feature_table
    from sentio_core.market import build_market
    from sentio_core.regimes import forward_filter, regime_frame, underlying_returns

    feats = feature_table(decider.cfg, panel, freq)
    probs = forward_filter(decider.regime_model, underlying_returns(decider.cfg, panel)[1:])
    norm = decider.spec.observation.normalisation
    market = build_market(decider.cfg, panel, feats, regime_frame(feats["timestamp"][1:], probs), (0, feats.height),
                          freq.periods_per_year, fitted=(decider.spec.observation.features, norm.mean, norm.std))
    engine = Engine(market, decider.cfg, 1)
    t = market.n_rows - 1
    out = []
    for _ in range(n):
        start = time.perf_counter()
        engine.reset_all(np.array([t]), np.array([t + 1]))
        engine.load_state(np.array([100_000.0]), np.zeros((1, len(market.legs))), np.array([100_000.0]),
                          np.array([engine.tab.flat]), np.array([0]), np.array([0]))
        mask, _ = engine.masks()
        obs = engine.observe()
        decider.policy.act(obs[0], mask[0])
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = args.model
    if model is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-decision-"))
        assert cli(["train", "--timesteps", "2048", "--output", str(tmp / "policy"), "--config",
                    str(REPO / "configs" / "smoke.yaml"), "--set", f"run.work_dir={tmp / 'work'}"]) == 0
        model = str(tmp / "policy")
    decider = Decider(model)
    bars, _, _ = build_panel(decider.cfg, build_manifest(decider.cfg))
    book = Portfolio(cash=100_000.0, shares={}, peak=100_000.0)
    print(f"\nmodel {model}: {decider.metadata.algorithm}, window {decider.window_bars()} bars per symbol\n")
    ready_row(decider, bars, 20)  # warm
    rows = [stats("1. from a ready feature row (masks, observation, action)", ready_row(decider, bars, args.n * 10), 0.2)]
    whole = []
    for _ in range(args.n):
        start = time.perf_counter()
        decider.decide(bars, book)
        whole.append(time.perf_counter() - start)
    rows.append(stats("2. whole decision from raw bars (features, regimes, ...)", whole, 10.0))

    import uvicorn

    from sentio.service import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    window = bars.group_by("symbol", maintain_order=True).tail(decider.window_bars())
    body = {"bars": window.with_columns(pl.col("timestamp").dt.to_string("%Y-%m-%dT%H:%M:%S%:z")).to_dicts(),
            "portfolio": {"cash": 100_000.0, "shares": {}, "peak": 100_000.0}}
    http = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        client.post("/decide", json=body).raise_for_status()
        for _ in range(args.n):
            start = time.perf_counter()
            client.post("/decide", json=body).raise_for_status()
            http.append(time.perf_counter() - start)
    rows.append(stats(f"3. HTTP round trip, POST /decide ({len(body['bars'])} bars of JSON)", http))
    server.should_exit = True


if __name__ == "__main__":
    main()
