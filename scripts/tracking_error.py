"""How well does the synthetic daily-reset leg track the real TQQQ and SQQQ? Prints markdown tables.

    .venv/bin/python scripts/tracking_error.py

For each shipped data set (``data/daily``, ``data/daily_long``, ``data/5min`` on session closes)
the underlying QQQ and one real leg are aligned on their common timestamps, the leg is rebuilt
from QQQ (``sentio_core.universe.synthesize_leg``) and the two are compared through their daily
log returns (``sentio_core.universe.tracking_report``). A second table splits the return gap on
``data/daily`` by calendar year, where its dependence on short-term interest rates shows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sentio_core.data import load_panel  # noqa: E402
from sentio_core.universe import tracking_report  # noqa: E402

UNDERLYING = "QQQ"
TZ = "America/New_York"
LEGS = (("TQQQ", 3.0, 0.84), ("SQQQ", -3.0, 0.95))  # real ETF, leverage, expense ratio (% per year)
DATA_SETS = (
    ("data/daily", "daily, splits + dividends"),
    ("data/daily_long", "daily, splits only"),
    ("data/5min", "5 min, session closes, splits only"),
)


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:+.{digits}f} %" if x < 0 or x > 0 else f"{0:.{digits}f} %"


def summary_table() -> list[str]:
    rows = [
        "| data | real | L | ER % | window | days | tracking error (ann.) | return gap real - synth (log, ann.) "
        "| corr | max abs daily diff | total return real | total return synth |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for folder, label in DATA_SETS:
        for real, lev, er in LEGS:
            panel, _ = load_panel(REPO / folder, [UNDERLYING, real], TZ)
            r = tracking_report(panel, UNDERLYING, real, lev, er)
            rows.append(
                f"| `{folder}` ({label}) | {real} | {lev:+g} | {er:.2f} | {r['start']} .. {r['end']} | {r['n_days']} "
                f"| {100 * r['tracking_error_ann']:.2f} % | {pct(r['return_gap_ann'])} | {r['correlation']:.4f} "
                f"| {100 * r['max_abs_daily_diff']:.2f} % | {pct(r['total_return_real'], 2)} "
                f"| {pct(r['total_return_synthetic'], 2)} |"
            )
    return rows


def yearly_table(folder: str = "data/daily") -> list[str]:
    reports: dict[str, dict[int, dict]] = {}
    for real, lev, er in LEGS:
        panel, _ = load_panel(REPO / folder, [UNDERLYING, real], TZ)
        years = panel["timestamp"].dt.year().unique().sort().to_list()
        reports[real] = {}
        for year in years:
            # include the previous year's last session so the year's first return is counted
            part = panel.filter(pl.col("timestamp").dt.year().is_between(year - 1, year))
            last_prev = part.filter(pl.col("timestamp").dt.year() == year - 1)["timestamp"].max()
            if last_prev is not None:
                part = part.filter(pl.col("timestamp") >= last_prev)
            if part.filter(pl.col("symbol") == real).height >= 3:
                reports[real][year] = tracking_report(part, UNDERLYING, real, lev, er)
    years = sorted(set().union(*(r.keys() for r in reports.values())))
    rows = [
        f"| year (`{folder}`) | days | TQQQ gap (ann.) | TQQQ TE (ann.) | SQQQ gap (ann.) | SQQQ TE (ann.) |",
        "|---|---|---|---|---|---|",
    ]
    for year in years:
        t, s = reports["TQQQ"].get(year), reports["SQQQ"].get(year)
        cells = [f"{pct(r['return_gap_ann'])} | {100 * r['tracking_error_ann']:.1f} %" if r else "- | -" for r in (t, s)]
        days = (t or s)["n_days"]
        rows.append(f"| {year} | {days} | {cells[0]} | {cells[1]} |")
    return rows


def main() -> None:
    print("\n".join(summary_table()))
    print()
    print("\n".join(yearly_table()))


if __name__ == "__main__":
    main()
