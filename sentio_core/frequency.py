"""Bar spacing: daily or intraday, and how many bars make a year (for annualising)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class BarFrequency:
    """Bar spacing: ``bar_minutes`` is None for daily (or longer) bars."""

    bar_minutes: float | None
    bars_per_session: float

    @property
    def intraday(self) -> bool:
        return self.bar_minutes is not None

    @property
    def periods_per_year(self) -> float:
        """Bars per year for annualisation: 252 sessions x bars per session."""
        return 252.0 * self.bars_per_session


def bar_frequency(timestamps: pl.Series) -> BarFrequency:
    """Infer the bar spacing from timestamps (median spacing within a session)."""
    ts = timestamps.sort()
    dates = ts.dt.date()
    same_day = dates == dates.shift(1)
    diffs = (ts - ts.shift(1)).dt.total_minutes().filter(same_day.fill_null(False))
    if diffs.len() == 0:
        return BarFrequency(None, 1.0)
    per_session = pl.DataFrame({"d": dates}).group_by("d").len()["len"].median()
    return BarFrequency(float(diffs.median()), float(per_session))
