"""The champion re-score stage: a `sentio train` export is scored like a pipeline champion, and a
champion that cannot be scored is reported while the night carries on."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from sentio.cli import main
from sentio_core import files
from sentio_core.config import load_config
from sentio_core.data import build_manifest, build_panel
from sentio_core.export import load_policy, read_metadata
from sentio_core.features import feature_table

from .conftest import SMOKE


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A MaskablePPO trained by `sentio train` and written where the pipeline keeps its champion."""
    tmp = tmp_path_factory.mktemp("rescore")
    sets = [f"registry.export_dir={tmp}", "registry.model_name=cli-champion", "folds.step_bars=1",
            f"run.work_dir={tmp / 'work'}"]
    argv = ["train", "--timesteps", "256", "--output", str(tmp / "cli-champion"), "--config", str(SMOKE)]
    assert main([*argv, *[x for s in sets for x in ("--set", s)]]) == 0
    cfg = load_config(SMOKE, sets)
    manifest = build_manifest(cfg)
    bars, report, freq = build_panel(cfg, manifest)
    return tmp, cfg, manifest, bars, report, freq


def _rescore(champion, bars: pl.DataFrame, name: str):
    """Run the stage's task function on ``bars`` (features built from them, as the pipeline does)."""
    from tasks.features import FeaturesOutput
    from tasks.ingest import ManifestOutput
    from tasks.panel import PanelOutput
    from tasks.rescore import rescore

    tmp, cfg, manifest, _, report, freq = champion
    feats = feature_table(cfg, bars, freq)
    panel = files.write_parquet(bars, tmp / f"{name}-panel.parquet")
    table = files.write_parquet(feats, tmp / f"{name}-features.parquet")
    common = {"sha256": files.file_sha256(panel)}
    return rescore.fn(cfg, ManifestOutput(stage="ingest", path=str(tmp), manifest=manifest, **common),
                      PanelOutput(stage="panel", path=str(panel), alignment=report, frequency=freq, **common),
                      FeaturesOutput(stage="features", path=str(table), columns=tuple(feats.columns[1:]), n_features=feats.width - 1, rows=feats.height,
                                     warmup_rows=0, **common))


def test_a_cli_trained_export_is_rescored_like_a_pipeline_champion(champion):
    """`sentio train` writes the same export metadata as registration (one builder): the champion
    re-score stage scores it, and over its own test window it reproduces the Sharpe it reported."""
    tmp, *_ = champion
    metadata = read_metadata(load_policy(tmp / "cli-champion"))
    assert metadata.registry is None and metadata.data.fingerprint and len(metadata.out_of_sample.folds) == 1
    out = _rescore(champion, champion[3], "full")
    assert out.status == "scored" and out.champion_present and out.mlflow_run_id
    assert "trend_vol rule Sharpe" in out.summary_line  # the rule-based baseline beside the champion
    reported = metadata.out_of_sample.folds[0].metrics["maskable_ppo"]["sharpe"]
    assert out.sharpe == pytest.approx(reported, abs=1e-9)


def test_a_history_readjusted_by_a_later_dividend_is_rescored(champion):
    """Every price before a late ex-date scaled by 0.98 (what a data vendor's adjustment does): the
    champion's windows are found by timestamp, so the re-score runs over the same bars. Its result
    moves (features around the ex-date see the adjustment, share counts and per-share costs change),
    which the README says."""
    tmp, cfg, _, bars, _, _ = champion
    ex_date = bars["timestamp"].unique().sort()[-40]
    scaled = bars.with_columns([pl.when(pl.col("timestamp") < ex_date).then(pl.col(c) * 0.98).otherwise(pl.col(c)).alias(c)
                                for c in ("open", "high", "low", "close")])
    full, adjusted = _rescore(champion, bars, "full"), _rescore(champion, scaled, "adjusted")
    assert adjusted.status == "scored" and adjusted.bars == full.bars and np.isfinite(adjusted.sharpe)


def test_a_champion_whose_window_is_not_in_the_data_is_reported_and_counts_as_absent(champion):
    tmp, _, _, bars, _, _ = champion
    cut = bars["timestamp"].unique().sort()[1500]
    out = _rescore(champion, bars.filter(pl.col("timestamp") <= cut), "cut")
    assert out.status == "failed" and not out.champion_present
    assert "is not in the data" in out.summary_line and "treated as absent" in out.summary_line
    run = MlflowClient().get_run(out.mlflow_run_id)
    assert run.info.status == "FAILED" and "is not in the data" in run.data.tags["error"]


def test_an_earlier_export_format_is_reported_with_what_to_do(champion, tmp_path):
    import json
    import shutil

    import torch

    tmp, *_ = champion
    pth, meta = tmp / "cli-champion.pth", tmp / "cli-champion-metadata.json"
    shutil.copy(pth, tmp_path / "original.pth")
    shutil.copy(meta, tmp_path / "original.json")
    try:
        torch.save(torch.load(pth, weights_only=True) | {"format": "sentio-policy/1"}, pth)
        meta.write_text(json.dumps(json.loads(meta.read_text()) | {"format": "sentio-policy/1"}))
        out = _rescore(champion, champion[3], "full")
    finally:
        shutil.copy(tmp_path / "original.pth", pth)
        shutil.copy(tmp_path / "original.json", meta)
    assert out.status == "failed" and "sentio-policy/1" in out.summary_line and "re-export" in out.summary_line


def test_a_corrupt_champion_is_reported_not_raised(champion, tmp_path):
    import shutil

    tmp, *_ = champion
    pth = tmp / "cli-champion.pth"
    original = tmp_path / "original.pth"
    shutil.copy(pth, original)
    try:
        pth.write_bytes(original.read_bytes()[:100])  # truncated
        out = _rescore(champion, champion[3], "full")
    finally:
        shutil.copy(original, pth)
    assert out.status == "failed" and "cli-champion.pth" in out.summary_line and "[content hash]" in out.summary_line
