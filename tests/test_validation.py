"""The validation gate: one bad file per rule, the clean shipped data, and the ``sentio validate`` CLI.

Every bad file is a slice of the real shipped bars with exactly one thing broken, written into its
own folder as ``QQQ.csv`` (a folder of per-symbol files). Each test checks that the report fails,
names the file and the exact rule, and points at the first offending row (row number and timestamp).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sentio.cli import main
from sentio_core.config import ValidationConfig
from sentio_core.validation import LONE_JUMP, Failure, ValidationReport, _jump_columns, validate_paths

REPO = Path(__file__).resolve().parents[1]
DAILY = REPO / "data" / "daily"
DAILY_LONG = REPO / "data" / "daily_long"
FIVE_MIN = REPO / "data" / "5min"
BASE_CONFIG = REPO / "configs" / "base.yaml"
CAL, TZ = "XNYS", "America/New_York"

# Short slices need a lower minimum length than the default 250 rows.
CFG = ValidationConfig(min_rows=50)

# Row 10 of the daily slice: 2015-01-16 (a Friday); the next session is 2015-01-20 (2015-01-19 is MLK day).
ROW = 10
ROW_DATE = "2015-01-16"

RULE_SESSIONS = "no gap beyond the session limit (sessions)"
RULE_BARS = "no gap beyond the session limit (intraday bars)"


# ----------------------------------------------------------------------------------------- helpers


def daily_slice(n: int = 300) -> pd.DataFrame:
    """The first ``n`` rows of the shipped daily QQQ bars, every cell as its original text."""
    return pd.read_csv(DAILY / "QQQ.csv", dtype=str, keep_default_na=False).head(n).reset_index(drop=True)


def intraday_slice(first: str = "2025-07-01", last: str = "2025-07-08") -> pd.DataFrame:
    """Complete 5-minute sessions of QQQ between two dates (includes the 2025-07-03 early close)."""
    full = pd.read_csv(FIVE_MIN / "QQQ.csv", dtype=str, keep_default_na=False)
    day = full["timestamp"].str[:10]
    return full[(day >= first) & (day <= last)].reset_index(drop=True)


def write_folder(tmp_path: Path, frame: pd.DataFrame | None = None, *, name: str = "QQQ.csv",
                 text: str | None = None, raw: bytes | None = None, folder: str = "bars") -> tuple[Path, Path]:
    """Write one bar file into its own folder; returns (folder, file)."""
    root = tmp_path / folder
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    if frame is not None:
        frame.to_csv(path, index=False)
    elif text is not None:
        path.write_text(text)
    elif raw is not None:
        path.write_bytes(raw)
    return root, path


def validate(target: Path, cfg: ValidationConfig = CFG) -> ValidationReport:
    return validate_paths([target], cfg, CAL, TZ)


def failing(report: ValidationReport, path: Path, rule: str) -> Failure:
    """Assert the report failed, names ``path`` and the exact ``rule``; return that rule's failure."""
    assert not report.ok
    text = report.to_text()
    assert "validation FAILED" in text
    assert str(path) in text, text
    assert f"rule: {rule} (" in text or f"rule: {rule}:" in text, text
    reports = [f for f in report.files if f.file == str(path)]
    assert len(reports) == 1, [f.file for f in report.files]
    assert not reports[0].ok
    matches = [f for f in reports[0].failures if f.rule == rule]
    assert len(matches) == 1, [f.rule for f in reports[0].failures]
    return matches[0]


def assert_first_row(report: ValidationReport, fail: Failure, row: int, timestamp: str) -> None:
    """The first offending row is reported (row number and timestamp), in the data and in the text."""
    assert fail.count >= 1
    assert fail.rows, fail
    assert fail.rows[0]["row"] == row, fail.rows
    assert fail.rows[0]["timestamp"] == timestamp, fail.rows
    assert f"row={row}, timestamp={timestamp}" in report.to_text()


# ------------------------------------------------------------------------------------ clean data


def test_clean_slices_pass(tmp_path):
    """The untouched slices used below pass, so every failure below comes from the one broken thing."""
    daily_dir, _ = write_folder(tmp_path, daily_slice(), folder="daily")
    intra_dir, _ = write_folder(tmp_path, intraday_slice(), folder="intra")
    for folder in (daily_dir, intra_dir):
        report = validate(folder)
        assert report.ok, report.to_text()
        assert report.files[0].failures == []


@pytest.mark.parametrize("folder, rows", [(DAILY, {"QQQ": 2590, "SQQQ": 2590, "TQQQ": 2590}),
                                          (DAILY_LONG, {"QQQ": 6675, "SQQQ": 3557, "TQQQ": 3872}),
                                          (FIVE_MIN, {"QQQ": 15960, "SQQQ": 16896, "TQQQ": 16038})],
                         ids=["daily", "daily_long", "5min"])
def test_shipped_data_passes(folder, rows):
    report = validate_paths([folder], ValidationConfig(), CAL, TZ)  # default rules, min_rows 250
    assert report.ok, report.to_text()
    assert len(report.files) == 3
    assert {Path(f.file).stem: f.rows for f in report.files} == rows
    text = report.to_text()
    assert text.count("PASS ") == 3 and text.endswith("validation passed")


# ------------------------------------------------------------------------------ one rule per file


def test_missing_required_column(tmp_path):
    folder, path = write_folder(tmp_path, daily_slice().drop(columns="volume"))
    report = validate(folder)
    fail = failing(report, path, "required column present")
    assert "'volume'" in fail.detail and "missing" in fail.detail
    assert "column 'volume' is missing" in report.to_text()
    # a missing column is not reported against the other, present columns
    assert [f.rule for f in report.files[0].failures] == ["required column present"]


def test_non_numeric_value(tmp_path):
    frame = daily_slice()
    frame.loc[ROW, "close"] = "abc"
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "column 'close' numeric")
    assert fail.count == 1
    assert_first_row(report, fail, ROW, ROW_DATE)
    assert fail.rows[0]["close"] == "abc"


def test_null_value(tmp_path):
    frame = daily_slice()
    frame.loc[ROW, "close"] = ""  # an empty cell reads as a null
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "no nulls")
    assert fail.count == 1
    assert_first_row(report, fail, ROW, ROW_DATE)


@pytest.mark.parametrize("column, value", [("low", "0"), ("low", "-1.5"), ("open", "0")])
def test_price_not_positive(tmp_path, column, value):
    frame = daily_slice()
    frame.loc[ROW, column] = value
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "price > 0")
    assert fail.count == 1
    assert_first_row(report, fail, ROW, ROW_DATE)
    assert fail.rows[0][column] == float(value)


def _mid(frame: pd.DataFrame, row: int) -> float:
    """A value strictly between the row's open and close."""
    o, c = float(frame.loc[row, "open"]), float(frame.loc[row, "close"])
    assert o != c
    return round((o + c) / 2, 6)


def test_high_below_open_or_close(tmp_path):
    frame = daily_slice()
    frame.loc[ROW, "high"] = str(_mid(frame, ROW))  # below max(open, close), still above low
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "high >= max(open, close)")
    assert fail.count == 1
    assert_first_row(report, fail, ROW, ROW_DATE)
    assert fail.rows[0]["high"] == _mid(frame, ROW)
    assert [f.rule for f in report.files[0].failures] == ["high >= max(open, close)"]


def test_low_above_open_or_close(tmp_path):
    frame = daily_slice()
    frame.loc[ROW, "low"] = str(_mid(frame, ROW))  # above min(open, close), still below high
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "low <= min(open, close)")
    assert fail.count == 1
    assert_first_row(report, fail, ROW, ROW_DATE)
    assert [f.rule for f in report.files[0].failures] == ["low <= min(open, close)"]


def test_high_below_both_open_and_close_counts_one_row(tmp_path):
    frame = daily_slice()
    frame.loc[ROW, "high"] = frame.loc[ROW, "low"]  # below open and below close: one bad row
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "high >= max(open, close)")
    assert len(fail.rows) == 1
    assert fail.count == 1  # the rule runs as two expectations; the row counts once


def test_negative_volume(tmp_path):
    frame = daily_slice()
    frame.loc[ROW, "volume"] = "-5"
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "volume >= 0")
    assert fail.count == 1
    assert_first_row(report, fail, ROW, ROW_DATE)
    assert fail.rows[0]["volume"] == -5.0


def test_duplicate_timestamp(tmp_path):
    frame = daily_slice()
    frame = pd.concat([frame.iloc[: ROW + 1], frame.iloc[[ROW]], frame.iloc[ROW + 1:]], ignore_index=True)
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "timestamps unique")
    assert {r["row"] for r in fail.rows} == {ROW, ROW + 1}  # both copies are offending
    assert_first_row(report, fail, ROW, ROW_DATE)
    # the repeated row is also not strictly increasing, and nothing else is wrong
    inc = failing(report, path, "timestamps strictly increasing")
    assert inc.rows[0]["row"] == ROW + 1 and inc.rows[0]["prev_timestamp"] == ROW_DATE
    assert {f.rule for f in report.files[0].failures} == {"timestamps unique", "timestamps strictly increasing"}


def test_duplicate_daily_date_is_not_treated_as_intraday(tmp_path):
    frame = daily_slice()
    frame = pd.concat([frame.iloc[: ROW + 1], frame.iloc[[ROW]], frame.iloc[ROW + 1:]], ignore_index=True)
    folder, _ = write_folder(tmp_path, frame)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        validate(folder)
    numeric = [w for w in caught if issubclass(w.category, RuntimeWarning) and "validation.py" in w.filename]
    assert numeric == [], [str(w.message) for w in numeric]


def test_non_increasing_timestamps(tmp_path):
    frame = daily_slice()
    frame.loc[[ROW, ROW + 1], "timestamp"] = frame.loc[[ROW + 1, ROW], "timestamp"].to_numpy()  # swap two rows
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "timestamps strictly increasing")
    assert fail.count == 1
    assert_first_row(report, fail, ROW + 1, ROW_DATE)
    assert fail.rows[0]["prev_timestamp"] == "2015-01-20"
    assert "prev_timestamp=2015-01-20" in report.to_text()


def test_missing_session(tmp_path):
    frame = daily_slice()
    assert frame.loc[ROW, "timestamp"] == ROW_DATE
    folder, path = write_folder(tmp_path, frame.drop(index=ROW))  # delete a weekday session
    report = validate(folder)
    fail = failing(report, path, RULE_SESSIONS)
    assert fail.count == 1
    # reported at the first bar after the hole (row 10 of the new file), with the bar before it
    assert_first_row(report, fail, ROW, "2015-01-20")
    assert fail.rows[0]["missing_sessions"] == 1
    assert fail.rows[0]["prev_timestamp"] == "2015-01-15"
    assert "validation.max_missing_sessions" in fail.detail
    # one missing session is allowed when the limit says so
    relaxed = validate(folder, ValidationConfig(min_rows=50, max_missing_sessions=1))
    assert relaxed.ok, relaxed.to_text()


def test_holiday_is_not_a_missing_session(tmp_path):
    """2015-01-19 (MLK day) has no row and is not a gap: gaps are counted in exchange sessions."""
    frame = daily_slice()
    assert "2015-01-19" not in set(frame["timestamp"])
    folder, _ = write_folder(tmp_path, frame)
    assert validate(folder).ok


def test_intraday_gap(tmp_path):
    frame = intraday_slice()
    hole = frame.index[frame["timestamp"] == "2025-07-01 12:00:00"][0]
    folder, path = write_folder(tmp_path, frame.drop(index=hole))
    report = validate(folder)
    fail = failing(report, path, RULE_BARS)
    assert fail.count == 1
    assert_first_row(report, fail, hole, "2025-07-01 12:05:00-04:00")
    assert fail.rows[0]["missing_bars"] == 1
    assert fail.rows[0]["prev_timestamp"] == "2025-07-01 11:55:00-04:00"
    assert "validation.max_missing_intraday_bars" in fail.detail
    assert not any(f.rule == RULE_SESSIONS for f in report.files[0].failures)
    relaxed = validate(folder, ValidationConfig(min_rows=50, max_missing_intraday_bars=1))
    assert relaxed.ok, relaxed.to_text()


@pytest.mark.parametrize("dropped, flagged, missing", [
    (["2025-07-02 15:50:00", "2025-07-02 15:55:00"], "2025-07-02 15:45:00-04:00", 2),  # normal session
    (["2025-07-03 12:55:00"], "2025-07-03 12:50:00-04:00", 1),  # early close at 13:00 (calendar)
    (["2025-07-08 15:55:00"], "2025-07-08 15:50:00-04:00", 1),  # last session of the file
], ids=["normal-close", "early-close", "last-session"])
def test_truncated_session_end(tmp_path, dropped, flagged, missing):
    frame = intraday_slice()
    assert (frame["timestamp"].str[:10] == "2025-07-03").sum() == 42
    cut = frame[~frame["timestamp"].isin(dropped)].reset_index(drop=True)
    assert len(cut) == len(frame) - len(dropped)
    row = int(cut.index[cut["timestamp"] == flagged[:19]][0])
    folder, path = write_folder(tmp_path, cut)
    report = validate(folder)
    fail = failing(report, path, RULE_BARS)
    assert fail.count == 1
    assert_first_row(report, fail, row, flagged)
    assert fail.rows[0]["missing_bars"] == missing


def test_missing_first_bar_of_session(tmp_path):
    frame = intraday_slice()
    frame = frame[frame["timestamp"] != "2025-07-02 09:30:00"].reset_index(drop=True)
    row = int(frame.index[frame["timestamp"] == "2025-07-02 09:35:00"][0])
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, RULE_BARS)
    assert_first_row(report, fail, row, "2025-07-02 09:35:00-04:00")


def test_too_few_rows(tmp_path):
    folder, path = write_folder(tmp_path, daily_slice(20))
    report = validate(folder)
    fail = failing(report, path, "minimum length")
    assert "20 rows, at least 50 required" in fail.detail
    assert "validation.min_rows" in report.to_text()
    assert report.files[0].rows == 20


def test_empty_file(tmp_path):
    folder, path = write_folder(tmp_path, text="")
    assert path.stat().st_size == 0
    report = validate(folder)
    fail = failing(report, path, "non-empty")
    assert "0 bytes" in fail.detail


def test_header_only_csv(tmp_path):
    folder, path = write_folder(tmp_path, text="timestamp,open,high,low,close,volume\n")
    report = validate(folder)
    fail = failing(report, path, "non-empty")
    assert "header but no rows" in fail.detail


def test_unreadable_parquet(tmp_path):
    folder, path = write_folder(tmp_path, name="QQQ.parquet", raw=b"this is not a parquet file\x00\x01" * 10)
    report = validate(folder)
    fail = failing(report, path, "readable")
    assert "parquet" in fail.detail


def test_unparseable_timestamp(tmp_path):
    frame = daily_slice()
    frame.loc[ROW, "timestamp"] = "2015-13-45"
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "timestamp parseable")
    assert f"row {ROW}: '2015-13-45'" in fail.detail
    assert f"row {ROW}" in report.to_text()


def test_timestamps_with_offsets_across_dst(tmp_path):
    frame = daily_slice()
    frame["timestamp"] = pd.to_datetime(frame["timestamp"]).dt.tz_localize(TZ).astype(str)
    assert frame["timestamp"].iloc[0].endswith("-05:00") and frame["timestamp"].iloc[60].endswith("-04:00")
    folder, _ = write_folder(tmp_path, frame)
    report = validate(folder)  # raises ValueError today instead of returning a report
    assert report.ok, report.to_text()


def test_missing_path(tmp_path):
    missing = tmp_path / "no_such_folder"
    report = validate(missing)
    fail = failing(report, missing, "exists")
    assert "no such file or folder" in fail.detail


def test_bad_file_does_not_hide_the_good_ones(tmp_path):
    """One bad file among good ones: only that one fails, the others are still validated."""
    folder, _ = write_folder(tmp_path, daily_slice(), name="QQQ.csv")
    bad = daily_slice()
    bad.loc[ROW, "volume"] = "-1"
    bad.to_csv(folder / "TQQQ.csv", index=False)
    (folder / "SQQQ.csv").write_text("")
    report = validate(folder)
    status = {Path(f.file).name: f.ok for f in report.files}
    assert status == {"QQQ.csv": True, "SQQQ.csv": False, "TQQQ.csv": False}
    assert "validation FAILED: 2 of 3 files" in report.to_text()


def test_several_problems_each_reported(tmp_path):
    frame = daily_slice()
    frame.loc[10, "volume"] = "-5"
    frame.loc[20, "low"] = "0"
    frame.loc[30, "open"] = "x"
    frame.loc[40, "timestamp"] = frame.loc[39, "timestamp"]  # 2015-03-02 twice, so 2015-03-03 goes missing
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    expected = {
        "volume >= 0": (10, "2015-01-16"),
        "price > 0": (20, "2015-02-02"),
        "column 'open' numeric": (30, "2015-02-17"),
        "timestamps unique": (39, "2015-03-02"),
        "timestamps strictly increasing": (40, "2015-03-02"),
        RULE_SESSIONS: (41, "2015-03-04"),
    }
    assert {f.rule for f in report.files[0].failures} == set(expected)
    for rule, (row, stamp) in expected.items():
        fail = failing(report, path, rule)
        assert_first_row(report, fail, row, stamp)


def test_report_rows_caps_rows_per_rule(tmp_path):
    frame = daily_slice()
    frame.loc[10:29, "volume"] = "-5"  # 20 bad rows
    frame.loc[50:59, "close"] = "abc"  # 10 bad rows
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder, ValidationConfig(min_rows=50, report_rows=3))
    vol = failing(report, path, "volume >= 0")
    assert vol.count == 20
    assert [r["row"] for r in vol.rows] == [10, 11, 12]
    num = failing(report, path, "column 'close' numeric")
    assert num.count == 10
    assert [r["row"] for r in num.rows] == [50, 51, 52]
    text = report.to_text()
    assert "volume >= 0 (20 offending rows)" in text
    assert text.count("volume=-5.0") == 3
    assert text.count("close=abc") == 3
    # the default shows five
    assert len(failing(validate(folder), path, "volume >= 0").rows) == 5


def test_multi_symbol_file_is_validated_per_symbol(tmp_path):
    """A single file with a ``symbol`` column: each symbol is checked, and named as ``file[SYMBOL]``."""
    good = daily_slice().assign(symbol="QQQ")
    bad = pd.read_csv(DAILY / "TQQQ.csv", dtype=str).head(300).assign(symbol="TQQQ")
    bad.loc[ROW, "volume"] = "-7"
    path = tmp_path / "bars.csv"
    pd.concat([good, bad]).to_csv(path, index=False)
    report = validate(path)
    assert [f.file for f in report.files] == [f"{path}[QQQ]", f"{path}[TQQQ]"]
    assert report.files[0].ok and not report.files[1].ok
    fail = failing(report, Path(f"{path}[TQQQ]"), "volume >= 0")
    assert_first_row(report, fail, ROW, ROW_DATE)


def test_single_per_symbol_file_named_directly_passes():
    report = validate(DAILY / "QQQ.csv", ValidationConfig())
    assert report.ok, report.to_text()


# ------------------------------------------------------------- values, jumps, runs and offsets

JUMP_ROW = 100  # well past the jump rule's warm-up (its trailing sigma needs 10 returns)
JUMP_DATE = "2015-05-28"
JUMP_RULE = "no jump beyond the volatility limit"


def symbol_slice(symbol: str, n: int = 300) -> pd.DataFrame:
    """The first ``n`` rows of a shipped daily file, every cell as its original text."""
    return pd.read_csv(DAILY / f"{symbol}.csv", dtype=str, keep_default_na=False).head(n).reset_index(drop=True)


def scale_prices(frame: pd.DataFrame, rows, factor: float) -> pd.DataFrame:
    """``frame`` with open, high, low and close multiplied by ``factor`` on ``rows``."""
    out = frame.copy()
    for col in ("open", "high", "low", "close"):
        out.loc[rows, col] = [f"{float(v) * factor:.6f}" for v in out.loc[rows, col]]
    return out


def trio(tmp_path: Path, tqqq: pd.DataFrame) -> Path:
    """A folder with the daily QQQ and SQQQ slices and the given TQQQ rows."""
    folder, _ = write_folder(tmp_path, symbol_slice("QQQ"), folder="trio")
    symbol_slice("SQQQ").to_csv(folder / "SQQQ.csv", index=False)
    tqqq.to_csv(folder / "TQQQ.csv", index=False)
    return folder


@pytest.mark.parametrize("column, value", [("close", "inf"), ("high", "1e400"), ("low", "-inf")])
def test_price_not_finite(tmp_path, column, value):
    """'price > 0' accepts inf; 'price finite' does not (1e400 reads as inf)."""
    frame = daily_slice()
    frame.loc[ROW, column] = value
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "price finite")
    assert fail.count == 1
    assert_first_row(report, fail, ROW, ROW_DATE)
    assert abs(fail.rows[0][column]) == float("inf")
    assert not any(f.rule == "price <= max_price_usd" for f in report.files[0].failures)  # inf is reported once


def test_volume_not_finite(tmp_path):
    frame = daily_slice()
    frame.loc[ROW, "volume"] = "inf"
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "volume finite")
    assert_first_row(report, fail, ROW, ROW_DATE)
    assert [f.rule for f in report.files[0].failures] == ["volume finite"]


def test_price_above_the_maximum(tmp_path):
    frame = daily_slice()
    frame.loc[ROW, ["open", "high", "low", "close"]] = "1e300"
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "price <= max_price_usd")
    assert fail.count == 1
    assert_first_row(report, fail, ROW, ROW_DATE)
    assert fail.rows[0]["close"] == 1e300
    assert "validation.max_price_usd" in fail.detail and "1e+06 USD" in fail.detail
    # the limit is a setting: the clean slice (QQQ about 100 USD) fails a 50 USD limit from its first row
    clean, clean_path = write_folder(tmp_path, daily_slice(), folder="clean")
    low = failing(validate(clean, ValidationConfig(min_rows=50, max_price_usd=50)), clean_path, "price <= max_price_usd")
    assert low.count == 300 and low.rows[0]["row"] == 0


def test_unadjusted_split_is_a_jump(tmp_path):
    """The issue's case: every TQQQ price from one bar on is 10x (close 4.72, next open 46.92)."""
    folder, path = write_folder(tmp_path, scale_prices(symbol_slice("TQQQ"), slice(JUMP_ROW, None), 10.0), name="TQQQ.csv")
    report = validate(folder)
    fail = failing(report, path, JUMP_RULE)
    assert fail.count == 1  # the bars after the split move normally again
    assert_first_row(report, fail, JUMP_ROW, JUMP_DATE)
    row = fail.rows[0]
    assert row["prev_close"] == 4.720322 and row["open"] == 46.91527
    assert row["jump_sigmas"] > 30 and row["sigma_bps"] > 0
    assert "validation.max_jump_sigmas" in fail.detail
    relaxed = validate(folder, ValidationConfig(min_rows=50, max_jump_sigmas=1000))
    assert relaxed.ok, relaxed.to_text()


def test_bad_tick_is_a_jump_in_and_out(tmp_path):
    frame = scale_prices(daily_slice(), [JUMP_ROW], 0.5)  # one bar at half price
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, JUMP_RULE)
    assert [r["row"] for r in fail.rows] == [JUMP_ROW, JUMP_ROW + 1]


def test_jump_rule_is_causal(tmp_path):
    """A bar's sigma reads only the bars before it: truncating the file changes no earlier value."""
    frame = pd.read_csv(DAILY / "TQQQ.csv").assign(timestamp=lambda f: pd.to_datetime(f["timestamp"]).dt.tz_localize(TZ))
    full = _jump_columns(frame, ValidationConfig(), TZ)
    cut = _jump_columns(frame.head(1500), ValidationConfig(), TZ)
    pd.testing.assert_frame_equal(full.head(1500), cut)


def test_real_crash_is_not_a_jump():
    """TQQQ's real -34.5 % bar of 2020-03-16: a large move in its own sigmas, but below the limit,
    and QQQ and SQQQ moved with it, so it is no lone jump either (the shipped data passes)."""
    frame = pd.read_csv(DAILY / "TQQQ.csv").assign(timestamp=lambda f: pd.to_datetime(f["timestamp"]).dt.tz_localize(TZ))
    jumps = _jump_columns(frame, ValidationConfig(), TZ)
    row = int(frame.index[frame["timestamp"].dt.strftime("%Y-%m-%d") == "2020-03-16"][0])
    assert frame.at[row, "close"] / frame.at[row - 1, "close"] - 1 == pytest.approx(-0.345, abs=0.001)
    assert 10 < jumps.at[row, "_jump_sigmas"] < ValidationConfig().max_jump_sigmas
    assert jumps["_jump_sigmas"].max() == jumps.at[row, "_jump_sigmas"]  # the largest of the file


def test_intraday_bad_tick_is_a_jump_and_overnight_gaps_are_not(tmp_path):
    """Sessions' first bars are measured against sigma x sqrt(bars per session): the clean slice's
    overnight gaps pass (see test_clean_slices_pass); one bar at 10x inside a session does not."""
    frame = intraday_slice()
    row = int(frame.index[frame["timestamp"] == "2025-07-07 11:00:00"][0])
    folder, path = write_folder(tmp_path, scale_prices(frame, [row], 10.0))
    report = validate(folder)
    fail = failing(report, path, JUMP_RULE)
    assert [r["row"] for r in fail.rows] == [row, row + 1]
    assert_first_row(report, fail, row, "2025-07-07 11:00:00-04:00")


def test_lone_jump_across_symbols(tmp_path):
    """TQQQ doubles (an unadjusted 2:1 split) while QQQ and SQQQ move normally: with a per-file limit
    loose enough to let it through, the cross-symbol rule catches it, against TQQQ only."""
    folder = trio(tmp_path, scale_prices(symbol_slice("TQQQ"), slice(JUMP_ROW, None), 2.0))
    report = validate(folder, ValidationConfig(min_rows=50, max_jump_sigmas=1000))
    status = {Path(f.file).name: f.ok for f in report.files}
    assert status == {"QQQ.csv": True, "SQQQ.csv": True, "TQQQ.csv": False}, report.to_text()
    fail = failing(report, folder / "TQQQ.csv", LONE_JUMP)
    assert fail.count == 1
    assert_first_row(report, fail, JUMP_ROW, JUMP_DATE)
    row = fail.rows[0]
    assert row["jump_sigmas"] - max(row["QQQ_jump_sigmas"], row["SQQQ_jump_sigmas"]) > 10
    assert "validation.max_lone_jump_sigmas" in fail.detail and "QQQ, SQQQ" in fail.detail
    assert [f.rule for f in report.files[2].failures] == [LONE_JUMP]


def test_lone_jump_default_limits_catch_the_issue_example(tmp_path):
    """A 10x TQQQ split: both the per-file and the cross-symbol rule report it."""
    folder = trio(tmp_path, scale_prices(symbol_slice("TQQQ"), slice(JUMP_ROW, None), 10.0))
    report = validate(folder)
    tqqq = [f for f in report.files if f.file.endswith("TQQQ.csv")][0]
    assert {f.rule for f in tqqq.failures} == {JUMP_RULE, LONE_JUMP}
    assert all(f.ok for f in report.files if f is not tqqq)


def test_joint_moves_are_no_lone_jump(tmp_path):
    """A crash in all three at once (QQQ -15 % in log terms, TQQQ 3x that, SQQQ -3x): each move is
    huge in its own sigmas, but none is alone, so no lone jump."""
    move = {"QQQ": -0.15, "TQQQ": -0.45, "SQQQ": 0.45}
    folder, _ = write_folder(tmp_path, scale_prices(symbol_slice("QQQ"), slice(JUMP_ROW, None), np.exp(move["QQQ"])),
                             folder="trio")
    for sym in ("TQQQ", "SQQQ"):
        scale_prices(symbol_slice(sym), slice(JUMP_ROW, None), np.exp(move[sym])).to_csv(folder / f"{sym}.csv", index=False)
    report = validate(folder, ValidationConfig(min_rows=50, max_jump_sigmas=1000))
    assert report.ok, report.to_text()


def test_lone_jump_ignores_unrelated_symbols(tmp_path):
    """A symbol whose returns do not correlate with the others' is not held to their moves."""
    other = symbol_slice("QQQ")
    prices = ["open", "high", "low", "close"]
    other[prices] = other[prices].iloc[::-1].to_numpy()  # the same bars in reverse order: unrelated returns
    folder, _ = write_folder(tmp_path, symbol_slice("QQQ"), folder="pair")
    scale_prices(other, slice(JUMP_ROW, None), 2.0).to_csv(folder / "XYZ.csv", index=False)
    report = validate(folder, ValidationConfig(min_rows=50, max_jump_sigmas=1000))
    assert report.ok, report.to_text()


@pytest.mark.parametrize("run, fails", [(5, False), (6, True)])
def test_zero_volume_run(tmp_path, run, fails):
    frame = daily_slice()
    frame.loc[ROW: ROW + run - 1, "volume"] = "0"
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    if not fails:
        assert report.ok, report.to_text()
        return
    fail = failing(report, path, "no zero-volume run beyond the limit")
    assert fail.count == 1
    assert fail.rows[0]["row"] == ROW + 5 and fail.rows[0]["zero_volume_bars"] == 6
    assert "validation.max_zero_volume_bars" in fail.detail


@pytest.mark.parametrize("run, fails", [(5, False), (6, True)])
def test_constant_price_run(tmp_path, run, fails):
    frame = daily_slice()
    last = frame.loc[ROW - 1, "close"]
    frame.loc[ROW: ROW + run - 1, ["open", "high", "low", "close"]] = last
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    if not fails:
        assert report.ok, report.to_text()
        return
    fail = failing(report, path, "no constant-price run beyond the limit")
    assert fail.count == 1
    assert fail.rows[0]["row"] == ROW + 5 and fail.rows[0]["constant_price_bars"] == 6
    assert fail.rows[0]["close"] == float(last)
    relaxed = validate(folder, ValidationConfig(min_rows=50, max_constant_price_bars=6))
    assert relaxed.ok, relaxed.to_text()


def test_mixed_naive_and_offset_stamps(tmp_path):
    """One stamp with an offset among naive ones: pandas then reads the naive ones as UTC (hours off)."""
    frame = daily_slice()
    frame.loc[ROW, "timestamp"] = "2015-01-16 00:00:00-05:00"
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "UTC offsets all present or all absent")
    assert fail.count == 1  # the minority kind is reported
    assert_first_row(report, fail, ROW, ROW_DATE)
    assert fail.rows[0]["timestamp_text"] == "2015-01-16 00:00:00-05:00"
    assert "read as UTC" in fail.detail


def test_offsets_not_explained_by_daylight_saving(tmp_path):
    """New York offsets with one stamp written in UTC (the same instant): the offsets differ and the
    stray one is not New York's; the stamps that follow daylight saving pass."""
    frame = daily_slice()
    frame["timestamp"] = pd.to_datetime(frame["timestamp"]).dt.tz_localize(TZ).astype(str)
    frame.loc[ROW, "timestamp"] = "2015-01-16 05:00:00+00:00"
    folder, path = write_folder(tmp_path, frame)
    report = validate(folder)
    fail = failing(report, path, "UTC offsets follow data.timezone")
    assert fail.count == 1
    assert_first_row(report, fail, ROW, ROW_DATE)
    assert fail.rows[0]["expected_offset"] == "-05:00"
    assert TZ in fail.detail
    assert [f.rule for f in report.files[0].failures] == ["UTC offsets follow data.timezone"]


def test_one_fixed_offset_passes(tmp_path):
    """Every stamp in UTC (one offset all year) is unambiguous, and passes."""
    frame = intraday_slice()
    utc = pd.to_datetime(frame["timestamp"]).dt.tz_localize(TZ).dt.tz_convert("UTC")
    frame["timestamp"] = utc.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    folder, _ = write_folder(tmp_path, frame)
    report = validate(folder)
    assert report.ok, report.to_text()


# ------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def bad_folder(tmp_path):
    frame = daily_slice()
    frame.loc[ROW, "volume"] = "-5"
    folder, path = write_folder(tmp_path, frame, folder="baddata")
    return folder, path


def test_cli_validate_clean_daily(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["validate", "data/daily"]) == 0
    out, err = capsys.readouterr()
    assert out.count("PASS ") == 3
    assert "validation passed" in out
    assert "Traceback" not in out + err


def test_cli_validate_bad_folder(bad_folder, capsys):
    folder, path = bad_folder
    code = main(["validate", str(folder), "--config", str(BASE_CONFIG), "--set", "validation.min_rows=50"])
    assert code == 1
    out, err = capsys.readouterr()
    assert f"FAIL {path}" in out
    assert "rule: volume >= 0" in out
    assert f"row={ROW}, timestamp={ROW_DATE}" in out
    assert "validation FAILED: 1 of 1 files" in out
    assert "Traceback" not in out + err


def test_cli_validate_missing_path(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = main(["validate", str(missing), "--config", str(BASE_CONFIG)])
    assert code == 1
    out, err = capsys.readouterr()
    assert str(missing) in out and "rule: exists" in out
    assert "Traceback" not in out + err


def test_cli_bad_override_is_usage_error(capsys):
    code = main(["validate", str(DAILY), "--config", str(BASE_CONFIG), "--set", "validation.min_rowz=5"])
    assert code == 2
    out, err = capsys.readouterr()
    assert "validation.min_rowz" in err
    assert "Traceback" not in out + err


def _sentio_command() -> list[str]:
    script = Path(sys.executable).parent / "sentio"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from sentio.cli import main; sys.exit(main())"]


@pytest.mark.slow
def test_cli_subprocess_bad_folder(bad_folder):
    folder, path = bad_folder
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run(_sentio_command() + ["validate", str(folder), "--set", "validation.min_rows=50"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Traceback" not in proc.stdout
    assert f"FAIL {path}" in proc.stdout
    assert "rule: volume >= 0" in proc.stdout
    assert f"timestamp={ROW_DATE}" in proc.stdout
