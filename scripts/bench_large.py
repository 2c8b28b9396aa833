"""Benchmark: `sentio run` on generated large inputs, time and peak memory of the whole process tree.

Generates three CSV files (QQQ, TQQQ, SQQQ) of regular-session one-minute bars on the XNYS
calendar, ending at the last session before today, with ROWS bars each: QQQ a random walk with a
U-shaped intraday volatility, TQQQ and SQQQ its +3x and -3x per-bar moves (so the pair and the
underlying move together and the validation gate passes). Then runs `sentio run` on them and
samples the resident memory of the sentio process and all its children (the embedded Prefect
server included) every 0.2 s.

Usage: .venv/bin/python scripts/bench_large.py --rows 100000 [--rows 1000000 ...] [--keep DIR]
Prints, per size: rows per symbol, file size, wall time, peak summed RSS, exit code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BARS_PER_SESSION = 390


def session_minutes(rows: int) -> pd.DatetimeIndex:
    """Minute-bar start times (naive New York) of the last whole XNYS sessions holding at least
    ``rows`` bars (whole sessions, so no session is cut: the gap rules of the gate hold)."""
    import exchange_calendars as xc

    sessions_needed = rows // BARS_PER_SESSION + 40  # early closes have fewer bars
    cal = xc.get_calendar("XNYS", start="1990-01-02")
    last = cal.date_to_session(pd.Timestamp.today().normalize() - pd.Timedelta(days=1), direction="previous")
    sessions = cal.sessions_in_range(cal.sessions[0], last)[-sessions_needed:]
    minutes = cal.sessions_minutes(sessions[0], sessions[-1])  # UTC minute starts inside each session
    stamps = minutes.tz_convert("America/New_York").tz_localize(None)
    first_kept = stamps[-rows].normalize()  # the whole session that holds the rows-th bar from the end
    return stamps[stamps >= first_kept]


def generate(folder: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    stamps = session_minutes(rows)
    rows = len(stamps)
    minute = (stamps.hour * 60 + stamps.minute).to_numpy() - 570  # minutes after 09:30
    u_shape = 1.0 + 1.5 * ((minute - 195) / 195.0) ** 2  # busier at the open and the close
    sigma = 0.0004 * u_shape
    r = rng.normal(0.0, sigma)  # no drift: 2M bars of the -3x leg must not decay to pennies
    legs = {"QQQ": (r, 300.0, 4e4), "TQQQ": (3 * r, 50.0, 1e5), "SQQQ": (-3 * r, 30.0, 8e4)}
    folder.mkdir(parents=True, exist_ok=True)
    for symbol, (ret, start, vol) in legs.items():
        close = start * np.exp(np.cumsum(ret))
        open_ = np.concatenate([[start], close[:-1]]) * np.exp(rng.normal(0, sigma * 0.2))
        spread = np.abs(rng.normal(0, sigma * 0.5)) + 1e-5
        high = np.maximum(open_, close) * (1 + spread)
        low = np.minimum(open_, close) * (1 - spread)
        volume = np.round(vol * u_shape * rng.lognormal(0, 0.3, rows)) + 1
        pd.DataFrame({"timestamp": stamps.strftime("%Y-%m-%d %H:%M:%S"), "open": open_.round(6), "high": high.round(6),
                      "low": low.round(6), "close": close.round(6), "volume": volume.astype(np.int64)}
                     ).to_csv(folder / f"{symbol}.csv", index=False)


def peak_tree_rss(proc: subprocess.Popen, samples: list[float]) -> None:
    import psutil

    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            samples.append(total)
        except psutil.Error:
            pass
        time.sleep(0.2)


def run(data: Path, work: Path) -> tuple[float, float, int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SENTIO_"))}
    env.update({"PREFECT_HOME": str(work / "prefect"), "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"})
    exe = REPO / ".venv" / "bin" / "sentio"
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "sentio"]), "run",
           "--config", str(REPO / "configs" / "smoke.yaml"), "--set", "regimes.backend=hmm",
           "--set", f"data.path={data}", "--set", f"run.work_dir={work / 'work'}",
           "--set", f"registry.export_dir={work / 'exports'}"]
    samples: list[float] = []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = threading.Thread(target=peak_tree_rss, args=(proc, samples), daemon=True)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    return time.perf_counter() - start, max(samples, default=0.0), proc.returncode, (err or out)[-400:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, action="append", required=True, help="bars per symbol (repeatable)")
    ap.add_argument("--keep", default=None, help="keep the generated data and run folders here")
    args = ap.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sentio-large-"))
    try:
        for rows in args.rows:
            data, work = base / f"data-{rows}", base / f"run-{rows}"
            generate(data, rows)
            size = sum(p.stat().st_size for p in data.glob("*.csv")) / 2**20
            bars = sum(1 for _ in open(data / "QQQ.csv")) - 1
            seconds, peak, code, tail = run(data, work)
            print(f"{bars:>9,} bars/symbol ({size:,.0f} MiB of CSV): {seconds:,.1f} s wall, "
                  f"peak {peak / 2**30:.2f} GiB (process tree), exit {code}", flush=True)
            if code:
                print("   " + tail.replace("\n", "\n   "))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
