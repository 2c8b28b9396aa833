"""The streaming paths (issue 9.5) against their in-memory references, exactly.

Large inputs are read a column block, a symbol, a batch or a slice at a time; every such path
must give the same values, bit for bit, as the plain whole-table computation it replaces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from sentio_core import features as feat_mod
from sentio_core import files, folds
from sentio_core.config import REPO_ROOT, ValidationConfig, load_config
from sentio_core.data import align, build_manifest, build_panel
from sentio_core.drift import DriftTable, feature_drift
from sentio_core.features import COLUMN_BLOCK, build_features, first_complete_row, write_features
from sentio_core.folds import fold_fingerprint, fold_spans
from sentio_core.market import build_market, normalise
from sentio_core.validation import validate_paths

SMOKE = REPO_ROOT / "configs" / "smoke.yaml"
INTRADAY = REPO_ROOT / "configs" / "intraday.yaml"


def panel_and_features(config: Path, tmp_path: Path) -> tuple:
    """The config's panel and feature table, each in memory and as a scanned Parquet file."""
    cfg = load_config(config, [])
    bars, _, freq = build_panel(cfg, build_manifest(cfg))
    feats = build_features(bars, cfg.universe, cfg.features, freq, cfg.data.calendar, cfg.data.timezone)
    panel_file = files.write_parquet(bars, tmp_path / "panel.parquet")
    feats_file = files.write_parquet(feats, tmp_path / "features.parquet")
    return cfg, freq, bars, feats, pl.scan_parquet(panel_file), pl.scan_parquet(feats_file)


@pytest.mark.parametrize("config", [SMOKE, INTRADAY], ids=["daily", "5-minute"])
def test_streamed_features_equal_the_in_memory_table(config, tmp_path, monkeypatch):
    monkeypatch.setattr(feat_mod, "SLICE_ROWS", 1_000)  # several row groups, and a ragged last one
    monkeypatch.setattr(feat_mod, "EXPR_GROUP", 5)
    cfg, freq, bars, feats, lazy_bars, _ = panel_and_features(config, tmp_path)
    out = write_features(lazy_bars, cfg.universe, cfg.features, freq, cfg.data.calendar, cfg.data.timezone,
                         tmp_path / "streamed.parquet")
    assert_frame_equal(pl.read_parquet(out), feats, check_exact=True)
    assert len([p for p in out.parent.iterdir() if p.name.startswith(".")]) == 0  # parts removed
    assert first_complete_row(pl.scan_parquet(out)) == first_complete_row(feats)


def test_streamed_features_refuse_an_unaligned_panel(tmp_path):
    cfg = load_config(SMOKE, [])
    bars, _, freq = build_panel(cfg, build_manifest(cfg))
    holed = bars.filter(~((pl.col("symbol") == "TQQQ") & (pl.col("timestamp") == bars["timestamp"][100])))
    with pytest.raises(ValueError, match="not aligned"):
        write_features(holed, cfg.universe, cfg.features, freq, cfg.data.calendar, cfg.data.timezone, tmp_path / "f.parquet")
    assert not (tmp_path / "f.parquet").exists()


def test_market_from_scanned_tables_equals_the_whole_matrix(tmp_path):
    deduplicated, freq, bars, feats, lazy_bars, lazy_feats = panel_and_features(SMOKE, tmp_path)
    cfg = deduplicated.model_copy(update={"env": deduplicated.env.model_copy(update={"feature_max_corr": None})})  # every column
    assert feats.width - 1 > 2 * COLUMN_BLOCK  # several blocks
    spans = fold_spans(cfg, feats)
    train_rows = spans[0].train_rows
    k = 3
    probs = pl.DataFrame({"timestamp": feats["timestamp"]}).with_columns(
        [pl.Series(f"regime_{i}", np.full(feats.height, 1.0 / k)) for i in range(k)])
    lean = build_market(cfg, lazy_bars, lazy_feats, probs, train_rows, freq.periods_per_year)
    names = [c for c in feats.columns if c != "timestamp"]
    x = np.concatenate([feats.select(names).to_numpy().astype(float), np.full((feats.height, k), 1.0 / k)], axis=1)
    z, mean, std = normalise(x, train_rows, cfg.env.clip_obs)
    assert lean.features.dtype == np.float32
    assert np.array_equal(lean.features, z) and np.array_equal(lean.norm_mean, mean) and np.array_equal(lean.norm_std, std)
    assert lean.timestamps == [t.isoformat() for t in feats["timestamp"].to_list()]
    assert lean.timestamps[5] == feats["timestamp"][5].isoformat() and len(lean.timestamps) == feats.height
    in_memory = build_market(cfg, bars, feats, probs, train_rows, freq.periods_per_year)
    for a, b in zip(lean.legs, in_memory.legs):
        assert np.array_equal(a.sigma, b.sigma) and np.array_equal(a.mean_dollar_volume, b.mean_dollar_volume)
    refit = build_market(cfg, lazy_bars, lazy_feats, probs, train_rows, freq.periods_per_year,
                         fitted=(lean.feature_names, lean.norm_mean, lean.norm_std))
    assert np.array_equal(refit.features, lean.features)
    # the de-duplication reads the scanned table's training rows a block at a time: the same columns, bit for bit
    scanned = build_market(deduplicated, lazy_bars, lazy_feats, probs, train_rows, freq.periods_per_year)
    whole = build_market(deduplicated, bars, feats, probs, train_rows, freq.periods_per_year)
    assert scanned.feature_names == whole.feature_names and len(scanned.feature_names) < len(lean.feature_names)
    assert np.array_equal(scanned.features, whole.features) and np.array_equal(scanned.norm_mean, whole.norm_mean)


def test_normalisation_statistics_do_not_depend_on_the_layout():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5_000, 7)) * 1e3 + 1e6
    x[rng.random(x.shape) < 0.05] = np.nan
    _, mean_c, std_c = normalise(np.ascontiguousarray(x), (100, 4_000), 5.0)
    _, mean_f, std_f = normalise(np.asfortranarray(x), (100, 4_000), 5.0)
    by_column = [normalise(x[:, [j]], (100, 4_000), 5.0) for j in range(x.shape[1])]
    assert np.array_equal(mean_c, mean_f) and np.array_equal(std_c, std_f)
    assert np.array_equal(mean_c, np.concatenate([m for _, m, _ in by_column]))
    assert np.array_equal(std_c, np.concatenate([s for _, _, s in by_column]))


def test_drift_tables_of_column_blocks_merge_to_the_whole_table():
    rng = np.random.default_rng(1)
    ref, rec = rng.normal(size=(2_000, 11)), rng.normal(size=(300, 11))
    rec[:, 4] += 1.0
    rec[:, 9] += 1.0  # two equal shifts in different blocks: ties must keep column order
    ref[:, 7] = 3.0  # constant in the reference: skipped
    names = [f"f{j}" for j in range(11)]
    whole = feature_drift(ref, rec, names)
    blocks = [feature_drift(ref[:, i: i + 4], rec[:, i: i + 4], names[i: i + 4]) for i in range(0, 11, 4)]
    assert DriftTable.merged(blocks) == whole
    tied = DriftTable.merged([DriftTable([{"feature": "b", "psi": 1.0}], []), DriftTable([{"feature": "a", "psi": 1.0}], [])])
    assert [r["feature"] for r in tied.rows] == ["b", "a"]


def _fingerprint_in_memory(bars: pl.DataFrame, feats: pl.DataFrame | None, span) -> str:
    """The whole-table definition: every column of the rows up to the fold's end, one digest."""
    import hashlib
    import json

    end = span.test_rows[1]
    last = bars["timestamp"].unique().sort()[end - 1]
    digest = hashlib.sha256(json.dumps(span.window(), sort_keys=True).encode())
    frames = [bars.filter(pl.col("timestamp") <= last).sort("symbol", "timestamp")]
    if feats is not None:
        frames.append(feats.slice(0, end))
    for frame in frames:
        for name in frame.columns:
            col = frame[name]
            digest.update(name.encode())
            if col.dtype == pl.String:
                digest.update("\x00".join(col.to_list()).encode())
            else:
                values = col.dt.epoch("us") if col.dtype.is_temporal() else col
                digest.update(values.cast(pl.Float64).fill_null(float("nan")).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def test_fold_fingerprints_of_scanned_tables_equal_the_whole_table(tmp_path, monkeypatch):
    monkeypatch.setattr(folds, "STRING_CHUNK", 1_000)  # the symbol column hashed in several chunks
    cfg, _, bars, feats, lazy_bars, lazy_feats = panel_and_features(SMOKE, tmp_path)
    for span in fold_spans(cfg, lazy_feats):
        assert fold_fingerprint(lazy_bars, lazy_feats, span) == _fingerprint_in_memory(bars, feats, span)
        assert fold_fingerprint(lazy_bars, None, span) == _fingerprint_in_memory(bars, None, span)
    assert fold_spans(cfg, lazy_feats) == fold_spans(cfg, feats)


def _align_by_joins(bars: list[pl.DataFrame]) -> pl.DataFrame:
    """The join-based definition of alignment: inner join on timestamps, sorted by symbol then time."""
    common = bars[0].select("timestamp")
    for frame in bars[1:]:
        common = common.join(frame.select("timestamp"), on="timestamp", how="inner")
    return pl.concat([frame.join(common, on="timestamp", how="semi") for frame in bars]).sort("symbol", "timestamp")


def test_alignment_by_membership_equals_the_join():
    cfg = load_config(SMOKE, [])
    bars, _, _ = build_panel(cfg, build_manifest(cfg))
    per_symbol = [bars.filter(pl.col("symbol") == s) for s in ("TQQQ", "QQQ", "SQQQ")]  # not in symbol order
    per_symbol[0] = per_symbol[0].filter(pl.int_range(pl.len()) % 7 != 3)  # holes in one symbol
    per_symbol[2] = per_symbol[2].slice(10)
    aligned, report = align(per_symbol)
    assert_frame_equal(aligned, _align_by_joins(per_symbol), check_exact=True)
    holes = sum(1 for i in range(bars.height // 3) if i % 7 == 3)
    assert report.per_symbol["QQQ"]["dropped"] == holes + 10 - 1  # TQQQ's holes and SQQQ's first 10 rows (one is both)
    assert all(info["rows"] - info["dropped"] == report.common_rows for info in report.per_symbol.values())
    assert report.common_rows == aligned.height // 3


def test_validation_batches_report_what_one_batch_reports(tmp_path):
    """Failures on both sides of batch boundaries, a repeat of a stamp far from its twin, and a
    stamp out of order at a boundary: the report is the same whatever the batch size."""
    frame = pd.read_csv(REPO_ROOT / "data" / "daily" / "QQQ.csv", dtype=str, keep_default_na=False).head(3_000)
    frame.loc[999, "volume"] = "-5"
    frame.loc[1_000, "low"] = "0"
    frame.loc[2_500, "timestamp"] = frame.loc[10, "timestamp"]  # a repeat 2,490 rows (several batches) apart
    frame.loc[[1_999, 2_000], "timestamp"] = frame.loc[[2_000, 1_999], "timestamp"].to_numpy()  # swapped at a boundary
    (tmp_path / "bars").mkdir()
    frame.to_csv(tmp_path / "bars" / "QQQ.csv", index=False)

    def report(batch_rows: int):
        cfg = ValidationConfig(batch_rows=batch_rows)
        return validate_paths([tmp_path / "bars"], cfg, "XNYS", "America/New_York").to_dict()

    whole = report(100_000)
    assert report(1_000) == whole
    rules = {f["rule"]: f for f in whole["files"][0]["failures"]}
    assert rules["timestamps unique"]["count"] == 2 and [r["row"] for r in rules["timestamps unique"]["rows"]] == [10, 2_500]
    assert [r["row"] for r in rules["timestamps strictly increasing"]["rows"]][:1] == [2_000]
    assert rules["volume >= 0"]["rows"][0]["row"] == 999 and rules["price > 0"]["rows"][0]["row"] == 1_000


def test_sliced_parquet_is_written_whole_or_not_at_all(tmp_path):
    frame = pl.DataFrame({"a": np.arange(10.0), "b": np.arange(10)})
    out = files.write_parquet_slices((frame.slice(i, 4) for i in range(0, 10, 4)), tmp_path / "t.parquet")
    assert_frame_equal(pl.read_parquet(out), frame)

    def failing():
        yield frame.slice(0, 4)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.write_parquet_slices(failing(), tmp_path / "u.parquet")
    with pytest.raises(ValueError, match="no rows"):
        files.write_parquet_slices(iter(()), tmp_path / "v.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]

