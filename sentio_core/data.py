"""Bars: parse timestamps in the exchange time zone, type the columns, align symbols.

A *panel* is a long polars frame ``timestamp, symbol, open, high, low, close, volume`` sorted by
symbol then time, holding only timestamps present for every symbol. What alignment drops is
returned in an :class:`AlignmentReport`, never silently lost.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
from pydantic import BaseModel, ConfigDict

from sentio_core.config import Config, reads
from sentio_core.files import DataError, SourceFile, discover, file_sha256, read_table
from sentio_core.frequency import BarFrequency, bar_frequency
from sentio_core.universe import add_synthetic_legs

REQUIRED_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")
VALUE_COLUMNS = PRICE_COLUMNS + ("volume",)


@dataclass(frozen=True)
class RawFrame:
    """One symbol's rows as read from one file, timestamps parsed, nothing else changed."""

    label: str  # "path" or "path[SYMBOL]" for multi-symbol files
    symbol: str
    frame: pd.DataFrame


def parse_timestamps(values: pd.Series, tz: str, label: str) -> pd.Series:
    """Parse a timestamp column into tz-aware timestamps in ``tz``.

    Naive values (``2025-05-12 09:30:00``, ``2015-01-02``) are read as exchange local time;
    values with an offset are converted. Unparseable values raise with the first offending row.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert(tz)
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        text = values.astype("string")
        try:
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=False)
        except ValueError:  # offsets that change (daylight saving): go through UTC
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        if parsed.dtype == object:
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        bad = parsed.isna() & text.notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(label, "timestamp parseable", f"row {row}: '{text.iloc[row]}' is not an ISO date or datetime")
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        return parsed.dt.tz_convert(tz)
    try:
        return parsed.dt.tz_localize(tz, ambiguous="raise", nonexistent="raise")
    except Exception as exc:
        raise DataError(label, "timestamp in time zone", f"cannot be read in {tz}: {exc}") from None


def read_raw(sources: list[SourceFile], tz: str, symbols: list[str] | None = None) -> list[RawFrame]:
    """Read every source file; split multi-symbol files by their ``symbol`` column."""
    out: list[RawFrame] = []
    for src in sources:
        table = read_table(src.path)
        if src.symbol is not None:
            pieces = [(str(src.path), src.symbol, table)]
        else:
            if "symbol" not in table.columns:  # a per-symbol file named directly: its name is its symbol
                table["symbol"] = src.path.stem.upper()
            table["symbol"] = table["symbol"].astype("string").str.upper()
            wanted = symbols or sorted(table["symbol"].dropna().unique())
            missing = [s for s in wanted if s.upper() not in set(table["symbol"].dropna())]
            if missing:
                raise DataError(src.path, "symbols present", f"no rows for {', '.join(missing)}")
            pieces = [
                (f"{src.path}[{s}]", s, table[table["symbol"] == s.upper()].drop(columns="symbol").reset_index(drop=True))
                for s in wanted
            ]
        for label, sym, frame in pieces:
            frame = frame.copy()
            if "timestamp" in frame.columns:
                frame["timestamp"] = parse_timestamps(frame["timestamp"], tz, label)
            out.append(RawFrame(label, sym, frame))
    return out


def to_bars(raw: RawFrame) -> pl.DataFrame:
    """Typed bars of one symbol: ``timestamp`` (tz-aware), ``symbol``, float OHLCV."""
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.frame.columns]
    if missing:
        raise DataError(raw.label, "required columns", f"missing {', '.join(missing)}")
    stamps = raw.frame["timestamp"]
    utc = stamps.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[us]")
    columns = {"timestamp": pl.Series("timestamp", utc).dt.replace_time_zone("UTC").dt.convert_time_zone(str(stamps.dt.tz))}
    for col in VALUE_COLUMNS:
        values = pd.to_numeric(raw.frame[col], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DataError(raw.label, "numeric, no nulls", f"column {col}, row {row}: {raw.frame[col].iloc[row]!r}")
        columns[col] = pl.Series(col, values.to_numpy(dtype="float64"))
    bars = pl.DataFrame(columns).with_columns(pl.lit(raw.symbol).alias("symbol"))
    return bars.select("timestamp", "symbol", *VALUE_COLUMNS).sort("timestamp")


@dataclass
class AlignmentReport:
    """What aligning symbols on common timestamps kept and dropped."""

    common_rows: int
    start: str | None
    end: str | None
    per_symbol: dict[str, dict] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:
        return sum(v["dropped"] for v in self.per_symbol.values())

    def to_dict(self) -> dict:
        return asdict(self) | {"dropped_total": self.dropped_total}

    def lines(self) -> list[str]:
        out = [f"aligned {len(self.per_symbol)} symbols on {self.common_rows} common timestamps ({self.start} .. {self.end})"]
        for sym, info in self.per_symbol.items():
            if info["dropped"]:
                out.append(
                    f"  {sym}: dropped {info['dropped']} of {info['rows']} rows not present in every symbol "
                    f"(first {info['first_dropped']}, last {info['last_dropped']})"
                )
            else:
                out.append(f"  {sym}: kept all {info['rows']} rows")
        return out


def align(bars: list[pl.DataFrame]) -> tuple[pl.DataFrame, AlignmentReport]:
    """Keep the timestamps every symbol has; report every dropped row per symbol.

    Membership tests on the timestamps (no joins), and the symbols' frames, each in time order,
    placed one after the other: the panel costs little more memory than its rows."""
    common = bars[0]["timestamp"]
    for frame in bars[1:]:
        common = common.filter(common.is_in(frame["timestamp"].implode()))
    common = common.unique().sort()
    report = AlignmentReport(
        common_rows=common.len(),
        start=str(common.min()) if common.len() else None,
        end=str(common.max()) if common.len() else None,
    )
    kept: list[pl.DataFrame] = []
    for frame in bars:
        sym = frame["symbol"][0]
        present = frame["timestamp"].is_in(common.implode())
        dropped = frame["timestamp"].filter(~present)
        report.per_symbol[sym] = {
            "rows": frame.height,
            "dropped": dropped.len(),
            "first_dropped": str(dropped.min()) if dropped.len() else None,
            "last_dropped": str(dropped.max()) if dropped.len() else None,
        }
        kept.append(frame.filter(present))
    symbols = [frame["symbol"][0] for frame in kept]
    if len(set(symbols)) == len(symbols):  # each frame is one symbol in time order: place them by symbol
        return pl.concat([kept[i] for i in sorted(range(len(kept)), key=symbols.__getitem__)]), report
    return pl.concat(kept).sort("symbol", "timestamp"), report


def read_bars(sources: list[SourceFile], tz: str, symbols: list[str] | None = None) -> list[pl.DataFrame]:
    """Typed bars of every source, one file at a time (each file's raw rows are dropped once typed)."""
    return [to_bars(raw) for src in sources for raw in read_raw([src], tz, symbols)]


def load_panel(path: str | Path, symbols: list[str], tz: str) -> tuple[pl.DataFrame, AlignmentReport]:
    """Discover, read, type and align the bars of ``symbols`` under ``path``."""
    return align(read_bars(discover(path, symbols), tz, symbols))


class SourceRecord(BaseModel):
    """One source file of a run: where it is, which symbol it holds (None: a ``symbol`` column), its SHA-256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    symbol: str | None
    sha256: str


class Manifest(BaseModel):
    """The configured symbols' source files with their SHA-256; its :meth:`fingerprint` is the run's data fingerprint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    symbols: list[str]
    files: list[SourceRecord]

    def sources(self) -> list[SourceFile]:
        return [SourceFile(Path(f.path), f.symbol) for f in self.files]

    def to_json(self) -> str:
        """The canonical JSON text (what the ingest stage writes)."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    def fingerprint(self) -> str:
        """SHA-256 of :meth:`to_json`: equal to the SHA-256 of the written manifest file."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


@reads("data", "universe")
def build_manifest(cfg: Config) -> Manifest:
    """Source files of the configured symbols with their SHA-256."""
    found = discover(cfg.data.path, None if cfg.data.path.is_file() else cfg.universe.symbols)
    files = [SourceRecord(path=str(s.path), symbol=s.symbol, sha256=file_sha256(s.path)) for s in found]
    return Manifest(symbols=cfg.universe.symbols, files=files)


@reads("data", "universe")
def build_panel(cfg: Config, manifest: Manifest) -> tuple[pl.DataFrame, AlignmentReport, BarFrequency]:
    """Typed bars of every symbol aligned on common timestamps (synthetic legs added when
    configured), the alignment report and the bar spacing of the underlying."""
    frame, report = align(read_bars(manifest.sources(), cfg.data.timezone, manifest.symbols))
    frame = add_synthetic_legs(frame, cfg.universe)
    freq = bar_frequency(frame.filter(pl.col("symbol") == cfg.universe.underlying)["timestamp"])
    return frame, report, freq
