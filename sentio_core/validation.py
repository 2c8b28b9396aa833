"""The validation gate: great-expectations rules over every raw bar file.

Rules: required columns present and numeric, no nulls, prices > 0, high >= max(open, close),
low <= min(open, close), volume >= 0, timestamps unique and strictly increasing, no gap beyond a
session-aware limit (exchange calendar), a minimum length. Each failed rule is reported with the
file, the rule and its first offending rows (timestamp and values).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sentio_core.config import Config, ValidationConfig, reads
from sentio_core.data import PRICE_COLUMNS, REQUIRED_COLUMNS, VALUE_COLUMNS, Manifest, RawFrame, read_raw
from sentio_core.files import DataError, SourceFile, discover

GAP_SESSIONS = "_missing_sessions"
GAP_BARS = "_missing_bars"


@dataclass
class Failure:
    rule: str
    count: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    detail: str = ""


@dataclass
class FileReport:
    file: str
    rows: int
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class ValidationReport:
    files: list[FileReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "files": [asdict(f) for f in self.files]}

    def to_text(self) -> str:
        lines: list[str] = []
        for rep in self.files:
            if rep.ok:
                lines.append(f"PASS {rep.file} ({rep.rows} rows)")
                continue
            lines.append(f"FAIL {rep.file} ({rep.rows} rows)")
            for fail in rep.failures:
                count = f" ({fail.count} offending row{'s' if fail.count != 1 else ''})" if fail.count else ""
                lines.append(f"  rule: {fail.rule}{count}" + (f": {fail.detail}" if fail.detail else ""))
                for row in fail.rows:
                    lines.append("    " + ", ".join(f"{k}={v}" for k, v in row.items()))
        lines.append("validation passed" if self.ok else f"validation FAILED: {sum(not f.ok for f in self.files)} of {len(self.files)} files")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        out = ["# Data validation", "", f"**{'passed' if self.ok else 'FAILED'}**", ""]
        out += ["| file | rows | rule | offending rows | first offending rows |", "|---|---|---|---|---|"]
        for rep in self.files:
            if rep.ok:
                out.append(f"| `{rep.file}` | {rep.rows} | all rules pass | 0 | |")
            for fail in rep.failures:
                sample = "<br>".join(", ".join(f"{k}={v}" for k, v in r.items()) for r in fail.rows) or fail.detail
                out.append(f"| `{rep.file}` | {rep.rows} | {fail.rule} | {fail.count} | {sample} |")
        return "\n".join(out)


@functools.lru_cache(maxsize=8)
def _calendar(name: str, start: str, end: str):
    import exchange_calendars as xc

    return xc.get_calendar(name, start=start, end=end)


def _gap_columns(ts: pd.Series, calendar: str, tz: str, label: str) -> pd.DataFrame:
    """Per row: exchange sessions missing since the previous bar, and intraday bars missing.

    Intraday bars also count the bars missing between the session open and the first bar, and
    between the last bar and the session close (early closes come from the calendar).
    """
    out = pd.DataFrame({GAP_SESSIONS: 0, GAP_BARS: 0}, index=ts.index)
    valid = ts.notna()
    if valid.sum() < 2:
        return out
    local = ts[valid].dt.tz_convert(tz)
    days = local.dt.tz_localize(None).dt.normalize()
    try:
        cal = _calendar(calendar, str(days.min().date()), str(days.max().date()))
    except Exception as exc:
        raise DataError(label, "calendar", f"exchange calendar {calendar} does not cover the data: {exc}") from None
    sessions = cal.sessions.tz_localize(None).normalize().values
    day_vals = days.values
    before = np.searchsorted(sessions, day_vals[:-1], side="right")
    upto = np.searchsorted(sessions, day_vals[1:], side="left")
    missing = np.maximum(upto - before, 0)
    out.loc[local.index[1:], GAP_SESSIONS] = missing
    minutes = np.diff(local.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[s]").astype(np.int64)) / 60.0
    # a repeated timestamp (its own rule) is no evidence of intraday bars
    same_day = (day_vals[1:] == day_vals[:-1]) & (minutes > 0)
    if not same_day.any():
        return out  # daily (or coarser) bars
    bar = float(np.median(minutes[same_day]))
    inside = np.where(same_day, np.rint(minutes / bar) - 1, 0).astype(int)
    out.loc[local.index[1:], GAP_BARS] = np.maximum(inside, 0)
    sched = cal.schedule
    opens = sched["open"].dt.tz_convert(tz).dt.tz_localize(None)
    closes = sched["close"].dt.tz_convert(tz).dt.tz_localize(None)
    opens.index = opens.index.tz_localize(None) if opens.index.tz is not None else opens.index
    closes.index = opens.index
    naive = local.dt.tz_localize(None)
    first = ~np.r_[False, same_day]
    last = ~np.r_[same_day, False]
    on_session = days.isin(opens.index).values
    head = np.rint((naive - days.map(opens)).dt.total_seconds().values / 60.0 / bar)
    tail = np.rint((days.map(closes) - naive).dt.total_seconds().values / 60.0 / bar) - 1
    edge = np.zeros(len(local), dtype=int)
    edge[first & on_session] = np.maximum(head[first & on_session], 0)
    edge[last & on_session] = np.maximum(edge[last & on_session], tail[last & on_session])
    out.loc[local.index, GAP_BARS] = np.maximum(out.loc[local.index, GAP_BARS].values, edge)
    return out


def _stamp(value: Any) -> str:
    """Dates for daily bars, full timestamps for intraday ones."""
    if isinstance(value, pd.Timestamp) and value == value.normalize():
        return str(value.date())
    return str(value)


def _row(frame: pd.DataFrame, idx: int, columns: list[str]) -> dict[str, Any]:
    """One offending row: its data row number (0-based, header excluded), timestamp and values."""
    row: dict[str, Any] = {"row": int(idx)}
    if "timestamp" in frame.columns:
        row["timestamp"] = _stamp(frame.at[idx, "timestamp"])
    for col in columns:
        if col in frame.columns and col != "timestamp":
            value = frame.at[idx, col]
            row[col.lstrip("_")] = value.item() if hasattr(value, "item") else value
    return row


def _expectations(frame: pd.DataFrame, cfg: ValidationConfig, skip: list[str]) -> list[tuple[str, Any, list[str]]]:
    """(rule, expectation, columns shown for offending rows); value rules leave out ``skip`` columns."""
    import great_expectations.expectations as gxe

    exps: list[tuple[str, Any, list[str]]] = []
    for col in [c for c in REQUIRED_COLUMNS if c not in skip]:
        exps.append(("required column present", gxe.ExpectColumnToExist(column=col), [col]))
    cols = set(frame.columns) - set(skip)
    for col in [c for c in REQUIRED_COLUMNS if c in cols]:
        exps.append(("no nulls", gxe.ExpectColumnValuesToNotBeNull(column=col), [col]))
    for col in [c for c in PRICE_COLUMNS if c in cols]:
        exps.append(("price > 0", gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0, strict_min=True), [col]))
    if "volume" in cols:
        exps.append(("volume >= 0", gxe.ExpectColumnValuesToBeBetween(column="volume", min_value=0), ["volume"]))
    for a, b, rule in (("high", "open", "high >= max(open, close)"), ("high", "close", "high >= max(open, close)"),
                       ("open", "low", "low <= min(open, close)"), ("close", "low", "low <= min(open, close)")):
        if {a, b} <= cols:
            exps.append((rule, gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=a, column_B=b, or_equal=True),
                         ["open", "high", "low", "close"]))
    if "timestamp" in cols:
        exps.append(("timestamps unique", gxe.ExpectColumnValuesToBeUnique(column="timestamp"), []))
        exps.append(("timestamps strictly increasing", gxe.ExpectColumnValuesToBeIncreasing(column="timestamp", strictly=True), []))
        exps.append(("no gap beyond the session limit (sessions)",
                     gxe.ExpectColumnValuesToBeBetween(column=GAP_SESSIONS, max_value=cfg.max_missing_sessions), [GAP_SESSIONS]))
        exps.append(("no gap beyond the session limit (intraday bars)",
                     gxe.ExpectColumnValuesToBeBetween(column=GAP_BARS, max_value=cfg.max_missing_intraday_bars), [GAP_BARS]))
    exps.append(("minimum length", gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows), []))
    return exps


def _numeric_failures(frame: pd.DataFrame, cfg: ValidationConfig) -> tuple[list[Failure], list[str]]:
    """Required value columns that hold non-numeric values; those columns are left out of later rules."""
    failures, bad_cols = [], []
    for col in [c for c in VALUE_COLUMNS if c in frame.columns]:
        coerced = pd.to_numeric(frame[col], errors="coerce")
        bad = coerced.isna() & frame[col].notna()
        if bad.any():
            idx = np.flatnonzero(bad.to_numpy())
            rows = [_row(frame, int(i), [col]) for i in idx[: cfg.report_rows]]
            failures.append(Failure(f"column '{col}' numeric", int(bad.sum()), rows))
            bad_cols.append(col)
        else:
            frame[col] = coerced.astype("float64")
    return failures, bad_cols


def _gx_batch(frame: pd.DataFrame):
    import logging

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = ctx.data_sources.add_pandas("bars").add_dataframe_asset("frame")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame})
    return ctx, batch


def validate_frame(raw: RawFrame, cfg: ValidationConfig, calendar: str, tz: str) -> FileReport:
    """Run every rule over one symbol's raw rows."""
    import great_expectations as gx

    frame = raw.frame.reset_index(drop=True).copy()
    report = FileReport(raw.label, len(frame))
    numeric_fails, bad_cols = _numeric_failures(frame, cfg)
    report.failures += numeric_fails
    if "timestamp" in frame.columns:
        frame = frame.join(_gap_columns(frame["timestamp"], calendar, tz, raw.label))
    ctx, batch = _gx_batch(frame)
    exps = _expectations(frame, cfg, bad_cols)
    suite = ctx.suites.add(gx.ExpectationSuite(name="bars", expectations=[e for _, e, _ in exps]))
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    by_id = {r.expectation_config.id: r for r in result.results}
    seen: dict[str, Failure] = {}
    offending: dict[str, set[int]] = {}
    for rule, exp, cols in exps:
        res = by_id[exp.id]
        if res.success:
            continue
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise RuntimeError(f"{raw.label}: great-expectations could not evaluate '{rule}': {res.exception_info}")
        idx = res.result.get("unexpected_index_list") or []
        detail = ""
        if rule == "minimum length":
            detail = f"{res.result.get('observed_value')} rows, at least {cfg.min_rows} required (validation.min_rows)"
        elif rule == "required column present":
            detail = f"column '{cols[0]}' is missing (columns: {', '.join(map(str, raw.frame.columns))})"
        elif rule.startswith("no gap"):
            limit = cfg.max_missing_sessions if GAP_SESSIONS in cols else cfg.max_missing_intraday_bars
            key = "validation.max_missing_sessions" if GAP_SESSIONS in cols else "validation.max_missing_intraday_bars"
            detail = f"more than {limit} missing ({key})"
        shown = cols + (["_prev_timestamp"] if rule.startswith(("no gap", "timestamps")) else [])
        if "_prev_timestamp" in shown and "timestamp" in frame.columns:
            frame["_prev_timestamp"] = frame["timestamp"].shift(1).map(_stamp)
        fail = seen.get(rule)
        if fail is None:
            fail = seen[rule] = Failure(rule, 0, [], detail)
            offending[rule] = set()
            report.failures.append(fail)
        offending[rule] |= {int(i) for i in idx}  # one rule may run as several expectations
        fail.count = len(offending[rule])
        fail.rows = [_row(frame, i, shown) for i in sorted(offending[rule])[: cfg.report_rows]]
    return report


def validate_sources(sources: list[SourceFile], cfg: ValidationConfig, calendar: str, tz: str,
                     symbols: list[str] | None = None) -> ValidationReport:
    """Validate each file (each symbol of a multi-symbol file); unreadable files are failures too."""
    report = ValidationReport()
    for src in sources:
        try:
            raws = read_raw([src], tz, symbols if src.symbol is None else None)
        except DataError as err:
            report.files.append(FileReport(err.file, 0, [Failure(err.rule, 0, [], err.detail)]))
            continue
        for raw in raws:
            try:
                report.files.append(validate_frame(raw, cfg, calendar, tz))
            except DataError as err:
                report.files.append(FileReport(err.file, len(raw.frame), [Failure(err.rule, 0, [], err.detail)]))
    return report


def validate_paths(paths: list[str | Path], cfg: ValidationConfig, calendar: str, tz: str) -> ValidationReport:
    """Validate files and folders given on the command line; a missing path is a failure, not a crash."""
    report = ValidationReport()
    for p in paths:
        try:
            sources = discover(p)
        except DataError as err:
            report.files.append(FileReport(err.file, 0, [Failure(err.rule, 0, [], err.detail)]))
            continue
        report.files += validate_sources(sources, cfg, calendar, tz).files
    return report


class DataValidationError(DataError):
    """The configured data failed the validation gate; the message is the full report."""

    def __init__(self, report: ValidationReport, where: str | Path):
        self.report = report
        super().__init__(where, "validation", report.to_text())

    def __reduce__(self):
        return DataValidationError, (self.report, self.file)


@reads("data", "validation")
def validate_manifest(cfg: Config, manifest: Manifest) -> ValidationReport:
    """Run the validation gate over every source file of the manifest."""
    return validate_sources(manifest.sources(), cfg.validation, cfg.data.calendar, cfg.data.timezone, manifest.symbols)
