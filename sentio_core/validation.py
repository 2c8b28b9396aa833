"""The validation gate: great-expectations rules over every raw bar file.

Rules: required columns present and numeric, no nulls, prices > 0, finite and at most
``max_price_usd``, finite volume >= 0, high >= max(open, close), low <= min(open, close),
timestamps unique and strictly increasing, written all naive or all with an offset, offsets that
only change with daylight saving in ``data.timezone``, no gap beyond a session-aware limit
(exchange calendar), no jump beyond ``max_jump_sigmas`` of the symbol's own trailing robust
volatility, no run of zero-volume or constant-price bars beyond a limit, a minimum length. Rules
over computed columns (gaps, jumps, runs, offsets) are declared once in :data:`LIMIT_RULES`.

Across the files validated together, aligned on common timestamps: no symbol jumps (in its own
sigmas) more than ``max_lone_jump_sigmas`` beyond the correlated symbols (an unadjusted split).

Each failed rule is reported with the file, the rule and its first offending rows (row number,
timestamp and values).
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
from sentio_core.files import DataError, SourceFile, discover, read_table

GAP_SESSIONS = "_missing_sessions"
REPEATED = "_repeated_timestamp"
NOT_INCREASING = "_not_increasing"
GAP_BARS = "_missing_bars"
OHLC = list(PRICE_COLUMNS)
LONE_JUMP = "no lone jump across symbols"
RELATED_MIN_ABS_RANK_CORR = 0.5  # symbols whose 1-bar returns rank-correlate less are not compared
MAD_TO_SIGMA = 1.4826  # sigma of a normal distribution per median absolute deviation


@dataclass(frozen=True)
class LimitRule:
    """A rule over a computed column: its values must not exceed a limit.

    :param column: the computed column (``_name``; reported as ``name``).
    :param key: the :class:`ValidationConfig` field holding the limit, or None for a limit of 0.
    :param shown: columns printed for each offending row.
    :param detail: what a failure means; ``{limit}``, ``{key}`` and ``{tz}`` are filled in.
    """

    rule: str
    column: str
    key: str | None
    shown: tuple[str, ...]
    detail: str

    def limit(self, cfg: ValidationConfig) -> float:
        return 0 if self.key is None else getattr(cfg, self.key)

    def describe(self, cfg: ValidationConfig, tz: str) -> str:
        return self.detail.format(limit=self.limit(cfg), key=f"validation.{self.key}", tz=tz)


LIMIT_RULES: tuple[LimitRule, ...] = (
    LimitRule("price finite", "_nonfinite_prices", None, tuple(OHLC), "a price is inf or -inf"),
    LimitRule("volume finite", "_nonfinite_volume", None, ("volume",), "the volume is inf or -inf"),
    LimitRule("price <= max_price_usd", "_max_price", "max_price_usd", tuple(OHLC),
              "a price above {limit:g} USD ({key}): a unit, scale or parsing error"),
    LimitRule("UTC offsets all present or all absent", "_mixed_offset_kinds", None, ("_timestamp_text",),
              "some stamps carry a UTC offset and some do not; the naive ones are then read as UTC, hours off: "
              "write every stamp the same way"),
    LimitRule("UTC offsets follow data.timezone", "_offset_mismatch", None, ("_timestamp_text", "_expected_offset"),
              "the stamps carry different UTC offsets, and these differ from {tz}'s (daylight saving) offset: "
              "convert them to one zone"),
    LimitRule("no gap beyond the session limit (sessions)", GAP_SESSIONS, "max_missing_sessions",
              (GAP_SESSIONS, "_prev_timestamp"), "more than {limit} missing ({key})"),
    LimitRule("no gap beyond the session limit (intraday bars)", GAP_BARS, "max_missing_intraday_bars",
              (GAP_BARS, "_prev_timestamp"), "more than {limit} missing ({key})"),
    LimitRule("no jump beyond the volatility limit", "_jump_sigmas", "max_jump_sigmas",
              ("_prev_close", "open", "close", "_jump_sigmas", "_sigma_bps"),
              "a move from the previous close of more than {limit:g} trailing robust sigmas ({key}; sigma over "
              "validation.jump_window_bars): a bad tick or an unadjusted split"),
    LimitRule("no zero-volume run beyond the limit", "_zero_volume_bars", "max_zero_volume_bars",
              ("volume", "_zero_volume_bars"), "more than {limit} consecutive bars with zero volume ({key})"),
    LimitRule("no constant-price run beyond the limit", "_constant_price_bars", "max_constant_price_bars",
              (*OHLC, "_constant_price_bars"),
              "more than {limit} consecutive bars with open = high = low = close = the previous close ({key}): a stale feed"),
)


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


def _numbers(frame: pd.DataFrame, col: str) -> pd.Series:
    """A value column as floats: NaN where the column, the cell or a number is missing."""
    if col not in frame.columns:
        return pd.Series(np.nan, index=frame.index)
    return pd.to_numeric(frame[col], errors="coerce").astype("float64")


def _value_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Per row: how many prices and volumes are inf or -inf, and the highest finite price (USD)."""
    prices = pd.DataFrame({c: _numbers(frame, c) for c in OHLC})
    infinite = np.isinf(prices)
    return pd.DataFrame({
        "_nonfinite_prices": infinite.sum(axis=1).astype(int),
        "_nonfinite_volume": np.isinf(_numbers(frame, "volume")).astype(int),
        "_max_price": prices.where(~infinite).max(axis=1),
    }, index=frame.index)


def _session_scale(stamps: pd.Series | None, tz: str, n: int) -> np.ndarray:
    """Per row: sqrt(bars per session) on the first bar of an intraday session (an overnight move), else 1."""
    scale = np.ones(n)
    if stamps is None or stamps.notna().sum() < 2:
        return scale
    days = stamps.dt.tz_convert(tz).dt.tz_localize(None).dt.normalize()
    per_session = float(days.value_counts().median())
    if per_session > 1:  # intraday bars
        first = (days != days.shift(1)).to_numpy(copy=True)
        first[0] = False
        scale[first] = np.sqrt(per_session)
    return scale


def _jump_columns(frame: pd.DataFrame, cfg: ValidationConfig, tz: str) -> pd.DataFrame:
    """Per row: the previous close, the 1-bar log return, the move in trailing robust sigmas and that sigma (bps).

    The move of bar t is max(|log(open_t / close_t-1)|, |log(close_t / close_t-1)|); sigma_t is
    1.4826 x the median |1-bar log return| of the ``jump_window_bars`` bars before t (from 10 on),
    floored at ``jump_sigma_floor_bps``, x sqrt(bars per session) on a session's first intraday
    bar. Causal: sigma_t reads bars before t only. A price that is not finite and > 0 gives NaN.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = {c: np.log(_numbers(frame, c).where(lambda v: np.isfinite(v) & (v > 0))) for c in ("open", "close")}
    prev = logs["close"].shift(1)
    ret = logs["close"] - prev
    move = np.fmax((logs["open"] - prev).abs(), ret.abs())
    w = cfg.jump_window_bars
    sigma = ret.abs().shift(1).rolling(w, min_periods=min(w, 10)).median() * MAD_TO_SIGMA
    sigma = sigma.clip(lower=cfg.jump_sigma_floor_bps / 1e4) * _session_scale(frame.get("timestamp"), tz, len(frame))
    return pd.DataFrame({"_prev_close": _numbers(frame, "close").shift(1), "_log_return": ret,
                         "_jump_sigmas": move / sigma, "_sigma_bps": sigma * 1e4}, index=frame.index)


def _run_lengths(flags: pd.Series) -> pd.Series:
    """Per row: how many consecutive flagged rows end at this one (0 where not flagged)."""
    flags = flags.fillna(False).astype(bool)
    return flags.groupby((~flags).cumsum()).cumsum().astype(int)


def _run_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Per row: the length of the run of zero-volume bars and of constant-price bars ending here.

    A constant-price bar has open = high = low = close = the previous bar's close.
    """
    o, h, low, c = (_numbers(frame, col) for col in OHLC)
    flat = (o == h) & (h == low) & (low == c) & (c == c.shift(1))
    return pd.DataFrame({"_zero_volume_bars": _run_lengths(_numbers(frame, "volume") == 0),
                         "_constant_price_bars": _run_lengths(flat)}, index=frame.index)


# an ISO time of day followed by a UTC offset: 'Z', '+05:30', '-0400' or '+02'
_OFFSET = r"\d:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(Z|[+-]\d{2}(?::?\d{2})?)$"


def _offset_minutes(suffix: pd.Series) -> pd.Series:
    """UTC offsets as written ('Z', '+05:30', '-0400', '+02') in minutes east of UTC; NaN where absent."""
    text = suffix.astype("string").str.replace(":", "", regex=False)
    sign = np.where(text.str[0].eq("-").fillna(False).to_numpy(dtype=bool), -1.0, 1.0)
    hours = pd.to_numeric(text.str[1:3], errors="coerce").astype("float64")
    minutes = pd.to_numeric(text.str[3:5], errors="coerce").astype("float64").fillna(0.0)
    out = sign * (hours * 60.0 + minutes)
    return out.mask(text.eq("Z").fillna(False).to_numpy(dtype=bool), 0.0)


def _format_offset(minutes: float) -> str:
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(int(abs(minutes)), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


def _offset_columns(written: pd.Series, stamps: pd.Series) -> pd.DataFrame:
    """Per row: the stamp as written; 1 where it is of the minority kind in a file that mixes naive
    stamps with stamps carrying a UTC offset; 1 where, in a file with several offsets, its offset
    is not the zone's own at that instant (``stamps``: the parsed, tz-aware stamps)."""
    text = written.reset_index(drop=True).astype("string").str.strip()
    offset = _offset_minutes(text.str.extract(_OFFSET, expand=False)).to_numpy()
    aware, present = ~np.isnan(offset), text.notna().to_numpy(dtype=bool)
    n_aware, n_naive = int(aware[present].sum()), int((~aware[present]).sum())
    mixed = np.zeros(len(text), dtype=int)
    if n_aware and n_naive:
        flag_aware = n_aware < n_naive or (n_aware == n_naive and not aware[present][0])
        mixed = (present & (aware == flag_aware)).astype(int)
    local = stamps.reset_index(drop=True)
    zone = ((local.dt.tz_localize(None) - local.dt.tz_convert("UTC").dt.tz_localize(None)).dt.total_seconds() / 60.0).to_numpy()
    mismatch = np.zeros(len(text), dtype=int)
    if len(np.unique(offset[aware])) > 1:
        mismatch = (aware & (offset != zone)).astype(int)
    expected = [_format_offset(m) if flag else "" for m, flag in zip(zone, mismatch)]
    return pd.DataFrame({"_timestamp_text": text, "_mixed_offset_kinds": mixed, "_offset_mismatch": mismatch,
                         "_expected_offset": expected}, index=stamps.index)


def _order_columns(stamps: pd.Series) -> pd.DataFrame:
    """Per row: 1 where its timestamp occurs more than once in the file; 1 where it is not later
    than the previous row's. Computed over the whole file, so checking them batch by batch finds
    what a whole-file uniqueness or order check would."""
    previous = stamps.shift(1)
    return pd.DataFrame({REPEATED: stamps.duplicated(keep=False).astype(int),
                         NOT_INCREASING: (previous.notna() & ~(stamps > previous)).astype(int)}, index=stamps.index)


def _computed_columns(frame: pd.DataFrame, cfg: ValidationConfig, calendar: str, tz: str, label: str,
                      written: pd.Series | None) -> pd.DataFrame:
    """Every computed column the :data:`LIMIT_RULES` and the timestamp rules check, for one file's rows."""
    parts = [_value_columns(frame), _jump_columns(frame, cfg, tz), _run_columns(frame)]
    if "timestamp" in frame.columns:
        parts.append(_order_columns(frame["timestamp"]))
        parts.append(_gap_columns(frame["timestamp"], calendar, tz, label))
        if written is not None and len(written) == len(frame):
            parts.append(_offset_columns(written, frame["timestamp"]))
    return pd.concat(parts, axis=1)


def _stamp(value: Any) -> str:
    """Dates for daily bars, full timestamps for intraday ones."""
    if isinstance(value, pd.Timestamp) and value == value.normalize():
        return str(value.date())
    return str(value)


def _shown(col: str, value: Any) -> Any:
    """A value as reported: computed measures (sigmas, bps) to six significant digits, the rest as read."""
    if col.startswith("_") and col != "_prev_close" and isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def _row(frame: pd.DataFrame, idx: int, columns: list[str]) -> dict[str, Any]:
    """One offending row: its data row number (0-based, header excluded), timestamp and values."""
    row: dict[str, Any] = {"row": int(idx)}
    if "timestamp" in frame.columns:
        row["timestamp"] = _stamp(frame.at[idx, "timestamp"])
    for col in columns:
        if col in frame.columns and col != "timestamp":
            value = frame.at[idx, col]
            value = value.item() if hasattr(value, "item") else value
            row[col.lstrip("_")] = _shown(col, value)
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
    if "timestamp" in cols:  # over columns computed on the whole file (the check runs batch by batch)
        exps.append(("timestamps unique", gxe.ExpectColumnValuesToBeBetween(column=REPEATED, max_value=0), []))
        exps.append(("timestamps strictly increasing", gxe.ExpectColumnValuesToBeBetween(column=NOT_INCREASING, max_value=0), []))
    for lim in LIMIT_RULES:
        if lim.column in frame.columns:
            exps.append((lim.rule, gxe.ExpectColumnValuesToBeBetween(column=lim.column, max_value=lim.limit(cfg)), list(lim.shown)))
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


def _gx_suite(exps: list[tuple[str, Any, list[str]]]):
    """An ephemeral great-expectations context, the suite of ``exps`` and a whole-dataframe batch
    definition to validate frames with (progress bars and info logs off)."""
    import logging

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    definition = ctx.data_sources.add_pandas("bars").add_dataframe_asset("frame").add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(gx.ExpectationSuite(name="bars", expectations=[e for _, e, _ in exps]))
    return suite, definition


def _checked_columns(exps: list[tuple[str, Any, list[str]]], frame: pd.DataFrame) -> list[str]:
    """The frame's columns that the expectations read (what each batch needs)."""
    named = {getattr(e, key, None) for _, e, _ in exps for key in ("column", "column_A", "column_B")}
    return [c for c in frame.columns if c in named]


def validate_frame(raw: RawFrame, cfg: ValidationConfig, calendar: str, tz: str,
                   written: pd.Series | None = None) -> FileReport:
    """Run every rule over one symbol's raw rows.

    The computed columns (jumps, runs, gaps, offsets, repeated or out-of-order timestamps) are
    computed over the whole file; great-expectations then checks ``cfg.batch_rows`` rows at a time,
    holding only the columns it reads, and the offending rows of every batch are merged per rule.

    :param written: the timestamp column as written in the file (text), row for row; the offset
        rules need it, as parsing converts every offset away. None skips them.
    """
    frame = raw.frame.reset_index(drop=True).copy()
    report = FileReport(raw.label, len(frame))
    numeric_fails, bad_cols = _numeric_failures(frame, cfg)
    report.failures += numeric_fails
    frame = frame.join(_computed_columns(frame, cfg, calendar, tz, raw.label, written))
    exps = _expectations(frame, cfg, bad_cols)
    suite, definition = _gx_suite(exps)
    checked = _checked_columns(exps, frame)
    limits = {lim.rule: lim for lim in LIMIT_RULES}
    offending: dict[str, set[int]] = {}  # rule -> the file's offending row numbers, over every batch
    failed: dict[str, list[str]] = {}  # rule -> the columns of its first failing expectation
    for start in range(0, max(len(frame), 1), cfg.batch_rows):
        batch = definition.get_batch(batch_parameters={"dataframe": frame.iloc[start: start + cfg.batch_rows][checked]})
        by_id = {r.expectation_config.id: r for r in batch.validate(suite, result_format={"result_format": "COMPLETE"}).results}
        for rule, exp, cols in exps:
            res = by_id[exp.id]
            if res.success:
                continue
            if res.exception_info and res.exception_info.get("raised_exception"):
                raise RuntimeError(f"{raw.label}: great-expectations could not evaluate '{rule}': {res.exception_info}")
            # one rule may run as several expectations; index labels are the file's row numbers
            offending.setdefault(rule, set()).update(int(i) for i in res.result.get("unexpected_index_list") or [])
            failed.setdefault(rule, cols)
    if "timestamp" in frame.columns and any(rule.startswith("timestamps") or "_prev_timestamp" in cols
                                            for rule, cols in failed.items()):
        frame["_prev_timestamp"] = frame["timestamp"].shift(1).map(_stamp)
    for rule in dict.fromkeys(rule for rule, _, _ in exps):  # failures in the order of the rules
        if rule not in failed:
            continue
        cols = failed[rule]
        detail = ""
        if rule == "required column present":
            detail = f"column '{cols[0]}' is missing (columns: {', '.join(map(str, raw.frame.columns))})"
        elif rule in limits:
            detail = limits[rule].describe(cfg, tz)
        shown = cols + (["_prev_timestamp"] if rule.startswith("timestamps") else [])
        rows = [_row(frame, i, shown) for i in sorted(offending[rule])[: cfg.report_rows]]
        report.failures.append(Failure(rule, len(offending[rule]), rows, detail))
    if len(frame) < cfg.min_rows:
        report.failures.append(Failure("minimum length", 0, [], f"{len(frame)} rows, at least {cfg.min_rows} required "
                                                                 f"(validation.min_rows)"))
    return report


def _written_stamps(src: SourceFile, raws: list[RawFrame]) -> dict[str, pd.Series]:
    """Each symbol's timestamp column as written in the file, by label; empty unless it is text."""
    table = read_table(src.path)
    stamps = table.get("timestamp")
    if stamps is None or not (pd.api.types.is_object_dtype(stamps) or pd.api.types.is_string_dtype(stamps)):
        return {}
    if src.symbol is not None or "symbol" not in table.columns:
        return {raw.label: stamps.reset_index(drop=True) for raw in raws}
    symbols = table["symbol"].astype("string").str.upper()
    return {raw.label: stamps[(symbols == raw.symbol.upper()).fillna(False)].reset_index(drop=True) for raw in raws}


def _jump_table(raw: RawFrame, cfg: ValidationConfig, tz: str) -> pd.DataFrame | None:
    """One file's jumps keyed by timestamp (repeated stamps left out), with row numbers and prices."""
    frame = raw.frame.reset_index(drop=True)
    if "timestamp" not in frame.columns:
        return None
    table = _jump_columns(frame, cfg, tz).assign(
        row=frame.index, timestamp=frame["timestamp"], open=_numbers(frame, "open"), close=_numbers(frame, "close"))
    return table.drop_duplicates("timestamp", keep=False).set_index("timestamp")


def lone_jumps(files: list[tuple[str, str, FileReport, pd.DataFrame | None]], cfg: ValidationConfig) -> None:
    """The cross-symbol rule, over files validated together, aligned on their common timestamps.

    A bar fails when its jump, in its own trailing robust sigmas (see :func:`_jump_columns`), exceeds
    the largest jump at the same timestamp among the other symbols whose 1-bar returns rank-correlate
    with it (|Spearman| >= 0.5) by more than ``max_lone_jump_sigmas``: one symbol moved and its pair
    and underlying did not (an unadjusted split, a bad tick). The failure goes to that file's report.

    :param files: (label, symbol, report, :func:`_jump_table`) of each file, the table kept instead
        of the file's rows.
    """
    tables = {label: (symbol, rep, t) for label, symbol, rep, t in files if t is not None}
    if len(tables) < 2:
        return
    sigmas = pd.concat({k: t["_jump_sigmas"] for k, (_, _, t) in tables.items()}, axis=1, join="inner").sort_index()
    returns = pd.concat({k: t["_log_return"] for k, (_, _, t) in tables.items()}, axis=1, join="inner")
    related = returns.corr(method="spearman").abs() >= RELATED_MIN_ABS_RANK_CORR
    for label, (symbol, rep, table) in tables.items():
        others = [k for k in sigmas.columns if k != label and related.at[label, k]]
        if not others:
            continue
        excess = sigmas[label] - sigmas[others].max(axis=1)
        hits = excess.index[(excess > cfg.max_lone_jump_sigmas).to_numpy()]
        if len(hits) == 0:
            continue
        names = {k: tables[k][0] for k in others}
        rows = []
        for ts in hits[: cfg.report_rows]:
            bar = table.loc[ts]
            row = {"row": int(bar["row"]), "timestamp": _stamp(ts)}
            row |= {col.lstrip("_"): _shown(col, float(bar[col])) for col in ("_prev_close", "open", "close", "_jump_sigmas")}
            rows.append(row | {f"{names[k]}_jump_sigmas": _shown("_jump_sigmas", float(sigmas.at[ts, k])) for k in others})
        detail = (f"{symbol} jumps, in its own trailing sigmas, more than {cfg.max_lone_jump_sigmas:g} beyond the largest "
                  f"jump of {', '.join(names.values())} at the same timestamp (validation.max_lone_jump_sigmas): "
                  f"an unadjusted split or a bad tick in this file")
        rep.failures.append(Failure(LONE_JUMP, len(hits), rows, detail))


def validate_sources(sources: list[SourceFile], cfg: ValidationConfig, calendar: str, tz: str,
                     symbols: list[str] | None = None) -> ValidationReport:
    """Validate each file (each symbol of a multi-symbol file), then the files against each other
    (:func:`lone_jumps`); unreadable files are failures too."""
    report = ValidationReport()
    checked: list[tuple[str, str, FileReport, pd.DataFrame | None]] = []
    for src in sources:
        try:
            raws = read_raw([src], tz, symbols if src.symbol is None else None)
            written = _written_stamps(src, raws)
        except DataError as err:
            report.files.append(FileReport(err.file, 0, [Failure(err.rule, 0, [], err.detail)]))
            continue
        while raws:  # one file's rows at a time: each is dropped once checked, its jump table kept
            raw = raws.pop(0)
            try:
                file_report = validate_frame(raw, cfg, calendar, tz, written.pop(raw.label, None))
            except DataError as err:
                report.files.append(FileReport(err.file, len(raw.frame), [Failure(err.rule, 0, [], err.detail)]))
                continue
            report.files.append(file_report)
            checked.append((raw.label, raw.symbol, file_report, _jump_table(raw, cfg, tz)))
            del raw
    lone_jumps(checked, cfg)
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
