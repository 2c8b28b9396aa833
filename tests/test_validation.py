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

import pandas as pd
import pytest

from sentio.cli import main
from sentio_core.config import ValidationConfig
from sentio_core.validation import Failure, ValidationReport, validate_paths

REPO = Path(__file__).resolve().parents[1]
DAILY = REPO / "data" / "daily"
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
                                          (FIVE_MIN, {"QQQ": 15960, "SQQQ": 16896, "TQQQ": 16038})],
                         ids=["daily", "5min"])
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
