"""``sentio serve`` with a real server and client on 127.0.0.1: a decision equals the library's,
malformed requests get clear 4xx errors, and a model swapped in during requests is seen whole or
not at all."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import polars as pl
import pytest

from sentio_core.decision import Decider, Portfolio
from sentio_core.export import publish, read_metadata

from .test_decision import SMOKE, _exported

pytestmark = pytest.mark.slow  # two trainings and a server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import uvicorn

    from sentio.service import create_app

    tmp = tmp_path_factory.mktemp("serve")
    first = _exported(tmp / "a", SMOKE)
    second = Decider(_exported(tmp / "b", SMOKE, "seed=8")[0].path)
    stem = tmp / "champion"
    publish(first[0].path, read_metadata(first[0].policy, first[0].path), stem)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(stem), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}", stem, first, second
    server.should_exit = True
    thread.join(timeout=10)


def _request(bars: pl.DataFrame, decider: Decider) -> dict:
    window = bars.group_by("symbol", maintain_order=True).tail(decider.window_bars())
    rows = window.with_columns(pl.col("timestamp").dt.to_string("%Y-%m-%dT%H:%M:%S%:z")).to_dicts()
    return {"bars": rows, "portfolio": {"cash": 100_000.0, "shares": {}, "peak": 100_000.0}}


def test_health_model_and_a_decision_equal_to_the_librarys(served):
    url, _, (decider, bars, *_), _ = served
    with httpx.Client(base_url=url, timeout=30) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["model"]["algorithm"] == "maskable_ppo"
        identity = client.get("/model").json()
        assert identity["weights_sha256"] == decider.metadata.weights_sha256 and identity["data"]["last_test"]
        assert identity["code_version"] == decider.metadata.code_version
        got = client.post("/decide", json=_request(bars, decider))
        assert got.status_code == 200, got.text
        direct = decider.decide(bars, Portfolio(cash=100_000.0, shares={}, peak=100_000.0))
        assert got.json()["decision"] == direct.to_dict()


def test_malformed_requests_get_clear_4xx_errors(served):
    url, _, (decider, bars, *_), _ = served
    good = _request(bars, decider)
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/decide", content=b"{not json").status_code == 422
        missing = client.post("/decide", json={"bars": good["bars"]})
        assert missing.status_code == 422 and "portfolio" in missing.text
        typed = client.post("/decide", json={**good, "portfolio": {"cash": "lots", "peak": 1}})
        assert typed.status_code == 422 and "cash" in typed.text
        stale = client.post("/decide", json={**good, "bars": [b for b in good["bars"] if not (
            b["symbol"] == "TQQQ" and b["timestamp"] == good["bars"][-1]["timestamp"])]})
        assert stale.status_code == 400 and "stale symbols" in stale.json()["detail"]
        few = client.post("/decide", json={**good, "bars": good["bars"][-30:]})
        assert few.status_code == 400 and few.json()["detail"].startswith("bars:")
        odd = client.post("/decide", json={**good, "bars": [{**good["bars"][0], "timestamp": "yesterday"}]})
        assert odd.status_code == 400 and "ISO 8601" in odd.json()["detail"]
        assert client.get("/nothing").status_code == 404


def test_a_model_swapped_in_during_requests_is_seen_whole_or_not_at_all(served):
    url, stem, (first, bars, *_), second = served
    request = _request(bars, first)
    book = Portfolio(cash=100_000.0, shares={}, peak=100_000.0)
    expected = {d.metadata.weights_sha256: d.decide(bars, book).to_dict() for d in (first, second)}
    pairs = {d.metadata.weights_sha256: (d.path, read_metadata(d.policy, d.path)) for d in (first, second)}
    stop = threading.Event()

    def swap() -> int:
        n = 0
        order = [second.metadata.weights_sha256, first.metadata.weights_sha256]
        while not stop.is_set():  # publish the other model over the served export, again and again
            path, metadata = pairs[order[n % 2]]
            publish(path, metadata, stem)
            n += 1
            time.sleep(0.05)
        return n

    with ThreadPoolExecutor(max_workers=3) as pool, httpx.Client(base_url=url, timeout=60) as client:
        swapper = pool.submit(swap)
        answers = list(pool.map(lambda _: client.post("/decide", json=request), range(24)))
        stop.set()
        swaps = swapper.result()
    assert swaps >= 3
    seen = set()
    for r in answers:
        assert r.status_code == 200, r.text
        body = r.json()
        sha = body["model"]["weights_sha256"]
        assert sha in expected and body["decision"] == expected[sha]  # one model's decision, whole
        seen.add(sha)
    assert len(seen) == 2  # both models served while they were swapped


def _rows(frame: pl.DataFrame) -> list[dict]:
    return frame.with_columns(pl.col("timestamp").dt.to_string("%Y-%m-%dT%H:%M:%S%:z")).to_dicts()


def test_the_live_session_decides_bar_by_bar_and_follows_a_model_swap(served):
    """Prime with a window, then one bar per symbol per request: each decision is the library's on the
    window up to that bar; the latest bar sent again changes nothing, and with other prices (history
    re-adjusted) is refused; after the champion changes, the next request is the new model's, its
    session primed from the same bars."""
    url, stem, (first, bars, *_), second = served
    publish(first.path, read_metadata(first.policy, first.path), stem)
    stamps = bars.filter(pl.col("symbol") == "QQQ")["timestamp"]
    book = {"cash": 100_000.0, "shares": {}, "peak": 100_000.0}
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/session/decide", json={"portfolio": book}).status_code == 409  # not primed
        window = bars.filter(pl.col("timestamp") <= stamps[-4]).group_by("symbol", maintain_order=True).tail(
            first.window_bars())
        primed = client.post("/session", json={"bars": _rows(window)})
        assert primed.status_code == 200, primed.text
        assert primed.json()["last"] == stamps[-4].isoformat()
        for t in stamps[-3:-1]:
            got = client.post("/session/decide", json={"bars": _rows(bars.filter(pl.col("timestamp") == t)), "portfolio": book})
            assert got.status_code == 200, got.text
            want = first.decide(bars.filter(pl.col("timestamp") <= t), Portfolio(**book))
            assert got.json()["decision"] == want.to_dict()
        held = bars.filter(pl.col("timestamp") == stamps[-2])
        again = client.post("/session/decide", json={"bars": _rows(held), "portfolio": book})  # the latest bar again
        assert again.status_code == 200 and again.json()["decision"] == got.json()["decision"]
        readjusted = held.with_columns(pl.col("close") * 0.98)
        refused = client.post("/session/decide", json={"bars": _rows(readjusted), "portfolio": book})
        assert refused.status_code == 400 and "history was re-adjusted" in refused.json()["detail"]
        publish(second.path, read_metadata(second.policy, second.path), stem)
        swapped = client.post("/session/decide", json={"bars": _rows(bars.filter(pl.col("timestamp") == stamps[-1])),
                                                       "portfolio": book})
        assert swapped.status_code == 200, swapped.text
        body = swapped.json()
        assert body["model"]["weights_sha256"] == second.metadata.weights_sha256
        assert body["decision"] == second.decide(bars, Portfolio(**book)).to_dict()
