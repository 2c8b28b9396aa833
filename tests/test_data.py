"""Loading bars: file formats, layouts, time zones, alignment, bar frequency, discovery, atomic writes."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from sentio_core import files
from sentio_core.data import RawFrame, align, load_panel, parse_timestamps, to_bars
from sentio_core.frequency import bar_frequency
from sentio_core.files import DataError, discover

REPO = Path(__file__).resolve().parents[1]
DAILY = REPO / "data" / "daily"
FIVE_MIN = REPO / "data" / "5min"
NY = "America/New_York"
SYMBOLS = ["QQQ", "TQQQ", "SQQQ"]
VALUE_DTYPES = {c: pl.Float64 for c in ("open", "high", "low", "close", "volume")}


def daily(symbol: str, n: int = 120) -> pd.DataFrame:
    return pd.read_csv(DAILY / f"{symbol}.csv").head(n)


def write(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.reset_index(drop=True).to_feather(path)
    return path


def utc_strings(panel: pl.DataFrame) -> list[str]:
    return [t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M") for t in panel["timestamp"]]


# ------------------------------------------------------------------------------------------ formats


@pytest.fixture(scope="module")
def csv_panel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("csv")
    for sym in SYMBOLS:
        write(daily(sym), folder / f"{sym}.csv")
    return load_panel(folder, SYMBOLS, NY)


def test_csv_panel_is_typed(csv_panel):
    panel, report = csv_panel
    assert panel.schema == pl.Schema({"timestamp": pl.Datetime("us", NY), "symbol": pl.String, **VALUE_DTYPES})
    assert panel.height == 3 * 120
    assert panel["symbol"].unique().sort().to_list() == sorted(SYMBOLS)
    assert report.common_rows == 120 and report.dropped_total == 0
    first = panel.filter(pl.col("symbol") == "QQQ").row(0, named=True)
    assert first["timestamp"] == datetime(2015, 1, 2, tzinfo=first["timestamp"].tzinfo)
    assert first["close"] == pytest.approx(95.123299)
    assert first["volume"] == 31314600.0


@pytest.mark.parametrize("suffix", [".parquet", ".feather"])
@pytest.mark.parametrize("stamps", ["text", "datetime"])
def test_parquet_and_feather_give_the_same_bars(tmp_path, csv_panel, suffix, stamps):
    for sym in SYMBOLS:
        frame = daily(sym)
        if stamps == "datetime":
            frame["timestamp"] = pd.to_datetime(frame["timestamp"]).astype("datetime64[us]")
        write(frame, tmp_path / f"{sym}{suffix}")
    panel, report = load_panel(tmp_path, SYMBOLS, NY)
    assert_frame_equal(panel, csv_panel[0])
    assert report.to_dict() == csv_panel[1].to_dict()


def test_mixed_formats_in_one_folder(tmp_path, csv_panel):
    write(daily("QQQ"), tmp_path / "QQQ.csv")
    write(daily("TQQQ"), tmp_path / "TQQQ.parquet")
    write(daily("SQQQ"), tmp_path / "SQQQ.feather")
    panel, _ = load_panel(tmp_path, SYMBOLS, NY)
    assert_frame_equal(panel, csv_panel[0])


def test_nanosecond_parquet_mixes_with_csv(tmp_path, csv_panel):
    """Parquet written by pandas 2 holds datetime64[ns]; the panel is still microseconds, so it aligns with CSV."""
    write(daily("QQQ"), tmp_path / "QQQ.csv")
    write(daily("SQQQ"), tmp_path / "SQQQ.csv")
    frame = daily("TQQQ")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"]).astype("datetime64[ns]")
    write(frame, tmp_path / "TQQQ.parquet")
    panel, _ = load_panel(tmp_path, SYMBOLS, NY)
    assert_frame_equal(panel, csv_panel[0])


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_single_file_with_symbol_column_equals_folder(tmp_path, csv_panel, suffix):
    long = pd.concat([daily(sym).assign(symbol=sym.lower() if sym == "SQQQ" else sym) for sym in SYMBOLS])
    path = write(long.sample(frac=1.0, random_state=0), tmp_path / f"bars{suffix}")  # any row order
    assert discover(path) == [files.SourceFile(path, None)]
    panel, report = load_panel(path, SYMBOLS, NY)
    assert_frame_equal(panel, csv_panel[0])
    assert report.to_dict() == csv_panel[1].to_dict()


def test_single_file_without_symbol_column_is_named_by_its_file(tmp_path):
    """A per-symbol file named directly takes its symbol from its name; other symbols are missing."""
    path = write(daily("QQQ"), tmp_path / "QQQ.csv")
    bars, _ = load_panel(path, ["QQQ"], NY)
    assert bars["symbol"].unique().to_list() == ["QQQ"] and bars.height == len(daily("QQQ"))
    other = write(daily("QQQ"), tmp_path / "bars.csv")
    with pytest.raises(DataError) as err:
        load_panel(other, ["QQQ"], NY)
    assert err.value.rule == "symbols present" and str(other) in str(err.value)


def test_single_file_missing_symbol_rows(tmp_path):
    path = write(daily("QQQ").assign(symbol="QQQ"), tmp_path / "bars.csv")
    with pytest.raises(DataError) as err:
        load_panel(path, ["QQQ", "TQQQ"], NY)
    assert err.value.rule == "symbols present" and "TQQQ" in str(err.value)


def test_non_numeric_value_raises_with_place(tmp_path):
    frame = daily("QQQ")
    frame["close"] = frame["close"].astype(str)
    frame.loc[7, "close"] = "oops"
    write(frame, tmp_path / "QQQ.csv")
    with pytest.raises(DataError) as err:
        load_panel(tmp_path, ["QQQ"], NY)
    assert err.value.rule == "numeric, no nulls"
    assert "column close, row 7" in err.value.detail and "oops" in err.value.detail


# --------------------------------------------------------------------------------------- time zones


@pytest.fixture(scope="module")
def intraday_frame():
    full = pd.read_csv(FIVE_MIN / "QQQ.csv")
    day = full["timestamp"].str[:10]
    return full[day.isin(["2025-07-01", "2025-12-01"])].reset_index(drop=True)


def test_naive_intraday_is_exchange_local_time(tmp_path, intraday_frame):
    write(intraday_frame, tmp_path / "QQQ.csv")
    panel, _ = load_panel(tmp_path, ["QQQ"], NY)
    assert panel.schema["timestamp"] == pl.Datetime("us", NY)
    stamps = utc_strings(panel)
    assert stamps[0] == "2025-07-01 13:30"  # 09:30 EDT (summer, UTC-4)
    assert "2025-07-01 19:55" in stamps  # last bar 15:55 EDT
    assert "2025-12-01 14:30" in stamps  # 09:30 EST (winter, UTC-5)
    local = panel["timestamp"][0]
    assert (local.hour, local.minute) == (9, 30)


def test_naive_timestamps_follow_the_configured_zone(tmp_path, intraday_frame):
    write(intraday_frame, tmp_path / "QQQ.csv")
    ny, _ = load_panel(tmp_path, ["QQQ"], NY)
    london, _ = load_panel(tmp_path, ["QQQ"], "Europe/London")
    assert london.schema["timestamp"] == pl.Datetime("us", "Europe/London")
    assert utc_strings(london)[0] == "2025-07-01 08:30"  # 09:30 BST (UTC+1)
    # the same wall-clock times are read in each zone
    assert ny["timestamp"].dt.replace_time_zone(None).equals(london["timestamp"].dt.replace_time_zone(None))
    utc_ny = ny["timestamp"].dt.convert_time_zone("UTC")
    utc_ldn = london["timestamp"].dt.convert_time_zone("UTC")
    assert (utc_ny - utc_ldn).dt.total_hours().unique().to_list() == [5]  # same wall clock, 5 h apart


@pytest.mark.parametrize("values", [
    ["2025-07-01T13:30:00Z", "2025-07-01T13:35:00Z"],
    ["2025-07-01 13:30:00+00:00", "2025-07-01 13:35:00+00:00"],
    ["2025-07-01 15:30:00+02:00", "2025-07-01 15:35:00+02:00"],
    ["2025-07-01 09:30:00-04:00", "2025-07-01 09:35:00-04:00"],
], ids=["Z", "utc-offset", "cest-offset", "edt-offset"])
def test_timestamps_with_offset_are_converted(values):
    parsed = parse_timestamps(pd.Series(values), NY, "x.csv")
    assert str(parsed.dt.tz) == NY
    assert [t.strftime("%Y-%m-%d %H:%M") for t in parsed] == ["2025-07-01 09:30", "2025-07-01 09:35"]


def test_tz_aware_columns_are_converted(tmp_path, intraday_frame):
    aware = intraday_frame.copy()
    aware["timestamp"] = pd.to_datetime(aware["timestamp"]).dt.tz_localize(NY).dt.tz_convert("UTC")
    write(aware, tmp_path / "aware" / "QQQ.parquet")
    write(intraday_frame, tmp_path / "naive" / "QQQ.csv")
    got, _ = load_panel(tmp_path / "aware", ["QQQ"], NY)
    want, _ = load_panel(tmp_path / "naive", ["QQQ"], NY)
    assert got.schema["timestamp"] == pl.Datetime("us", NY)
    assert_frame_equal(got, want)


def test_mixed_offsets_across_dst_are_converted():
    values = pd.Series(["2025-07-01 09:30:00-04:00", "2025-12-01 09:30:00-05:00"])
    parsed = parse_timestamps(values, NY, "x.csv")
    assert [t.strftime("%Y-%m-%d %H:%M") for t in parsed] == ["2025-07-01 09:30", "2025-12-01 09:30"]


def test_unparseable_timestamp_names_the_row():
    with pytest.raises(DataError) as err:
        parse_timestamps(pd.Series(["2025-07-01", "2025-07-02", "yesterday"]), NY, "x.csv")
    assert err.value.rule == "timestamp parseable" and "row 2" in err.value.detail and "yesterday" in err.value.detail


def test_nonexistent_local_time_is_a_data_error():
    with pytest.raises(DataError) as err:
        parse_timestamps(pd.Series(["2025-03-09 02:30:00"]), NY, "x.csv")  # skipped by the DST change
    assert err.value.rule == "timestamp in time zone"


# ---------------------------------------------------------------------------------------- alignment


@pytest.fixture(scope="module")
def five_min_panel():
    return load_panel(FIVE_MIN, SYMBOLS, NY)


def test_alignment_reports_what_it_dropped(five_min_panel):
    panel, report = five_min_panel
    assert report.common_rows == 15960
    assert report.start == "2025-05-12 09:30:00-04:00"
    assert report.end == "2026-03-06 15:55:00-05:00"
    assert report.per_symbol["QQQ"] == {"rows": 15960, "dropped": 0, "first_dropped": None, "last_dropped": None}
    assert report.per_symbol["TQQQ"] == {"rows": 16038, "dropped": 78, "first_dropped": "2026-03-09 09:30:00-04:00",
                                         "last_dropped": "2026-03-09 15:55:00-04:00"}
    assert report.per_symbol["SQQQ"] == {"rows": 16896, "dropped": 936, "first_dropped": "2025-04-24 09:30:00-04:00",
                                         "last_dropped": "2025-05-09 15:55:00-04:00"}
    assert report.dropped_total == 78 + 936
    assert report.to_dict()["dropped_total"] == 1014
    text = "\n".join(report.lines())
    assert "aligned 3 symbols on 15960 common timestamps" in text
    assert "TQQQ: dropped 78 of 16038 rows" in text and "SQQQ: dropped 936 of 16896 rows" in text
    assert "QQQ: kept all 15960 rows" in text


def test_aligned_panel_has_only_common_timestamps(five_min_panel):
    panel, _ = five_min_panel
    assert panel.height == 3 * 15960
    per = {s: panel.filter(pl.col("symbol") == s)["timestamp"] for s in SYMBOLS}
    assert per["QQQ"].equals(per["TQQQ"]) and per["QQQ"].equals(per["SQQQ"])
    assert per["QQQ"].is_sorted() and per["QQQ"].n_unique() == 15960
    days = panel["timestamp"].dt.date()
    assert str(days.min()) == "2025-05-12" and str(days.max()) == "2026-03-06"
    assert panel.select(pl.col("symbol"), pl.col("timestamp")).equals(
        panel.select(pl.col("symbol"), pl.col("timestamp")).sort("symbol", "timestamp"))


def test_daily_sets_align_without_drops():
    panel, report = load_panel(DAILY, SYMBOLS, NY)
    assert report.common_rows == 2590 and report.dropped_total == 0
    assert all(v["dropped"] == 0 and v["first_dropped"] is None for v in report.per_symbol.values())
    assert report.start.startswith("2015-01-02") and report.end.startswith("2025-04-21")


def test_align_small_example():
    def bars(sym, days):
        ts = pd.to_datetime([f"2025-01-{d:02d}" for d in days]).tz_localize(NY)
        frame = pd.DataFrame({"timestamp": ts, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0})
        return to_bars(RawFrame(sym, sym, frame))

    panel, report = align([bars("A", [2, 3, 6, 7]), bars("B", [3, 6, 7, 8, 9])])
    assert report.common_rows == 3
    assert report.per_symbol["A"]["dropped"] == 1 and report.per_symbol["A"]["first_dropped"].startswith("2025-01-02")
    assert report.per_symbol["B"]["dropped"] == 2
    assert report.per_symbol["B"]["first_dropped"].startswith("2025-01-08")
    assert report.per_symbol["B"]["last_dropped"].startswith("2025-01-09")
    assert panel.height == 6


# ------------------------------------------------------------------------------------ bar frequency


def test_bar_frequency_daily():
    panel, _ = load_panel(DAILY, ["QQQ"], NY)
    freq = bar_frequency(panel["timestamp"])
    assert freq.bar_minutes is None and freq.bars_per_session == 1
    assert not freq.intraday and freq.periods_per_year == 252


def test_bar_frequency_five_minutes(five_min_panel):
    panel, _ = five_min_panel
    freq = bar_frequency(panel.filter(pl.col("symbol") == "QQQ")["timestamp"])
    assert freq.bar_minutes == 5.0 and freq.bars_per_session == 78
    assert freq.intraday and freq.periods_per_year == 252 * 78


# -------------------------------------------------------------------------------------------- discover


def test_discover_missing_symbol_raises(tmp_path):
    write(daily("QQQ"), tmp_path / "QQQ.csv")
    write(daily("TQQQ"), tmp_path / "tqqq.parquet")  # file names are matched case-insensitively
    assert [s.symbol for s in discover(tmp_path, ["QQQ", "TQQQ"])] == ["QQQ", "TQQQ"]
    with pytest.raises(DataError) as err:
        discover(tmp_path, ["QQQ", "TQQQ", "SQQQ"])
    assert err.value.rule == "symbols present"
    assert "SQQQ" in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(DataError, match="SQQQ"):
        load_panel(tmp_path, SYMBOLS, NY)


def test_discover_lists_a_folder_and_rejects_bad_paths(tmp_path):
    assert sorted(s.symbol for s in discover(DAILY)) == sorted(SYMBOLS)
    (tmp_path / "notes.txt").write_text("not bars")
    with pytest.raises(DataError) as err:
        discover(tmp_path)
    assert err.value.rule == "non-empty"
    with pytest.raises(DataError) as err:
        discover(tmp_path / "notes.txt")
    assert err.value.rule == "format"
    with pytest.raises(DataError) as err:
        discover(tmp_path / "missing")
    assert err.value.rule == "exists"
    write(daily("QQQ"), tmp_path / "QQQ.csv")
    write(daily("QQQ"), tmp_path / "qqq.parquet")
    with pytest.raises(DataError) as err:
        discover(tmp_path)
    assert err.value.rule == "unique symbol"


# -------------------------------------------------------------------------------------- atomic writes


def leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


def test_write_json_is_atomic(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    files.write_json({"sharpe": 1.25, "n": 3}, target)
    assert files.read_json(target) == {"n": 3, "sharpe": 1.25}
    assert leftovers(target.parent, target.name) == []
    before = target.read_text()
    for bad in ({"sharpe": math.nan}, {"x": [1.0, math.inf]}):
        with pytest.raises(ValueError):
            files.write_json(bad, target)
        assert target.read_text() == before  # the old file is not clobbered
        assert leftovers(target.parent, target.name) == []  # and no temporary file is left behind


def test_write_json_refuses_nan_without_a_previous_file(tmp_path):
    target = tmp_path / "fresh.json"
    with pytest.raises(ValueError):
        files.write_json({"x": math.nan}, target)
    assert list(tmp_path.iterdir()) == []


def test_write_parquet_is_atomic(tmp_path):
    target = tmp_path / "table.parquet"
    frame = pl.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5]})
    assert files.write_parquet(frame, target) == target
    assert_frame_equal(files.read_parquet(target), frame)
    assert leftovers(tmp_path, target.name) == []
    digest = files.file_sha256(target)

    bad = pl.DataFrame({"a": [object(), object()]}, schema={"a": pl.Object})  # cannot be written as parquet
    with pytest.raises(Exception):
        files.write_parquet(bad, target)
    assert files.file_sha256(target) == digest
    assert leftovers(tmp_path, target.name) == []


def test_write_parquet_crash_mid_write_keeps_old_file(tmp_path):
    target = tmp_path / "table.parquet"
    frame = pl.DataFrame({"a": [1, 2, 3]})
    files.write_parquet(frame, target)

    class HalfWriter:
        def write_parquet(self, path):
            Path(path).write_bytes(b"PAR1 half a file")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.write_parquet(HalfWriter(), target)
    assert_frame_equal(files.read_parquet(target), frame)
    assert leftovers(tmp_path, target.name) == []


def test_write_text_replaces_atomically(tmp_path):
    target = tmp_path / "report.md"
    files.write_text("one\n", target)
    files.write_text("two\n", target)
    assert target.read_text() == "two\n"
    assert leftovers(tmp_path, target.name) == []


def test_data_errors_cross_process_boundaries_intact():
    """Dask and Ray workers send a task's exception back pickled: the file, rule and detail survive."""
    import pickle

    from sentio_core.validation import DataValidationError, FileReport, Failure, ValidationReport

    err = pickle.loads(pickle.dumps(DataError("data/x.csv", "readable", "bad bytes")))
    assert (type(err), err.file, err.rule, err.detail) == (DataError, "data/x.csv", "readable", "bad bytes")
    report = ValidationReport([FileReport("data/x.csv", 3, [Failure("high >= max(open, close)", 1, [], "")])])
    again = pickle.loads(pickle.dumps(DataValidationError(report, "data")))
    assert type(again) is DataValidationError and str(again) == str(DataValidationError(report, "data"))
