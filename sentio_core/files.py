"""File I/O: the only module of the pipeline that reads or writes files (policy weights are
serialised to bytes by ``export.py`` and written here).

Bar files are CSV, Parquet or Feather; either a folder of per-symbol files (``TQQQ.csv``) or
one file with a ``symbol`` column. Every write goes to a temporary name and is renamed, so a
crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd
import polars as pl

SUPPORTED_SUFFIXES = (".csv", ".parquet", ".feather", ".arrow")


class DataError(ValueError):
    """A data file that cannot be used; names the file, the rule and the place."""

    def __init__(self, file: str | Path, rule: str, detail: str):
        self.file, self.rule, self.detail = str(file), rule, detail
        super().__init__(f"{file}: [{rule}] {detail}")

    def __reduce__(self):  # travels between processes (Dask, Ray workers) with its fields
        return DataError, (self.file, self.rule, self.detail)


@dataclass(frozen=True)
class SourceFile:
    """One bar file; ``symbol`` is None for a multi-symbol file with a ``symbol`` column."""

    path: Path
    symbol: str | None


def discover(path: str | Path, symbols: list[str] | None = None) -> list[SourceFile]:
    """List the bar files under ``path`` (a file or a folder of ``SYMBOL.ext`` files).

    :param symbols: when given, exactly these symbols are taken from a folder (missing ones raise).
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise DataError(path, "format", f"unsupported file type '{path.suffix}' (use {', '.join(SUPPORTED_SUFFIXES)})")
        return [SourceFile(path, None)]
    if not path.is_dir():
        raise DataError(path, "exists", "no such file or folder (set data.path)")
    by_symbol: dict[str, Path] = {}
    for child in sorted(path.iterdir()):
        if child.is_file() and child.suffix.lower() in SUPPORTED_SUFFIXES:
            sym = child.stem.upper()
            if sym in by_symbol:
                raise DataError(child, "unique symbol", f"symbol {sym} also in {by_symbol[sym].name}; keep one file per symbol")
            by_symbol[sym] = child
    if symbols is None:
        if not by_symbol:
            raise DataError(path, "non-empty", f"no {'/'.join(SUPPORTED_SUFFIXES)} files in the folder")
        return [SourceFile(p, s) for s, p in by_symbol.items()]
    missing = [s for s in symbols if s.upper() not in by_symbol]
    if missing:
        raise DataError(path, "symbols present", f"no file for {', '.join(missing)} (found: {', '.join(by_symbol) or 'none'})")
    return [SourceFile(by_symbol[s.upper()], s) for s in symbols]


def read_table(path: str | Path) -> pd.DataFrame:
    """Read one file as it is (no coercion); unreadable or empty files raise :class:`DataError`."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if path.stat().st_size == 0:
            raise DataError(path, "non-empty", "the file is empty (0 bytes)")
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix in (".feather", ".arrow"):
            frame = pd.read_feather(path)
        else:
            raise DataError(path, "format", f"unsupported file type '{suffix}'")
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(path, "non-empty", "the file has no header and no rows") from None
    except Exception as exc:  # any parser error: the file is unreadable as its type
        raise DataError(path, "readable", f"cannot be read as {suffix[1:]}: {type(exc).__name__}: {exc}") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if frame.empty:
        raise DataError(path, "non-empty", "the file has a header but no rows")
    return frame


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _atomic_target(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    with _staged(path) as tmp:
        yield tmp
        os.replace(tmp, path)


@contextmanager
def _staged(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` with the usual permissions, removed on the way out unless
    the caller renamed it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
        yield Path(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_parquet(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write a polars frame atomically."""
    with _atomic_target(path) as tmp:
        frame.write_parquet(tmp)
    return Path(path)


def write_parquet_slices(slices: Iterable[pl.DataFrame], path: str | Path) -> Path:
    """Write consecutive row slices of one table atomically, one row group each, holding one slice
    at a time (tables larger than memory). At least one slice; every slice has the first's schema."""
    import pyarrow.parquet as pq

    with _atomic_target(path) as tmp:
        writer = None
        try:
            for frame in slices:
                table = frame.to_arrow()
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"{path}: no rows to write")
    return Path(path)


def json_text(obj: Any) -> str:
    """The JSON text Sentio writes (sorted keys; NaN and infinities refused, not written as invalid JSON)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=False) + "\n"


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically (NaN and infinities are refused, not written as invalid JSON)."""
    with _atomic_target(path) as tmp:
        tmp.write_text(json_text(obj))
    return Path(path)


@contextmanager
def exclusive(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the block: writers of files
    in it from other processes wait their turn. The lock is on the folder itself (``flock``), so no
    lock file is left behind."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_together(contents: dict[Path, bytes]) -> list[Path]:
    """Write several files as one: each goes to a temporary name beside its target, and only when
    every one is written are they renamed into place, in the given order. A failure while writing
    (a full disk, a read-only folder) leaves every target as it was and no temporary file behind.

    :returns: the targets, in order.
    """
    with ExitStack() as stack:
        staged = []
        for path, data in contents.items():
            tmp = stack.enter_context(_staged(path))
            tmp.write_bytes(data)
            staged.append((tmp, Path(path)))
        for tmp, path in staged:
            os.replace(tmp, path)
    return [Path(p) for p in contents]


def write_text(text: str, path: str | Path) -> Path:
    """Write text atomically."""
    with _atomic_target(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def read_parquet(path: str | Path) -> pl.DataFrame:
    return pl.read_parquet(path)


def scan_parquet(path: str | Path) -> pl.LazyFrame:
    """A Parquet file read lazily: only the columns and rows a query selects are loaded."""
    return pl.scan_parquet(path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes; :class:`DataError` with rule ``exists`` (no such file) or ``non-empty`` (0 bytes)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "exists", "no such file")
    data = path.read_bytes()
    if not data:
        raise DataError(path, "non-empty", "the file is empty (0 bytes)")
    return data


def write_bytes(data: bytes, path: str | Path) -> Path:
    """Write ``data`` atomically (images, reports)."""
    with _atomic_target(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
