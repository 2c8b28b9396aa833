"""Stage records are typed, frozen and serialise explicitly: JSON out and back gives the same record."""

from __future__ import annotations

import pydantic
import pytest

from sentio_core.data import AlignmentReport, Manifest, SourceRecord
from sentio_core.folds import FoldSpan
from sentio_core.frequency import BarFrequency
from sentio_core.metadata import FoldResult, TrainingSummary
from sentio_core.promotion import Check, GateResult
from sentio_core.regimes import RegimeModel

SPAN = FoldSpan(fold=1, train_start="2015-04-01T00:00:00-04:00", train_end="2019-03-01T00:00:00-05:00",
                test_start="2019-04-15T00:00:00-04:00", test_end="2020-04-01T00:00:00-04:00", purge_bars=31,
                embargo_bars=0, train_bars=980, test_bars=250, train_rows=(60, 1040), test_rows=(1071, 1321),
                panel_fingerprint="a" * 16, fingerprint="b" * 16)
MODEL = RegimeModel("hmm", 2, [0.1, -0.2], [1.0, 4.0], [[0.9, 0.1], [0.2, 0.8]], [0.5, 0.5], -123.4, 980)
TRAINING = TrainingSummary(fold=1, algorithm="ppo", timesteps=2048, episodes=8, seconds=3.5, stopped_by="timesteps",
                           device="cpu", learning_rate=3e-4, budget={"timesteps": 2048})
METRICS = {"ppo": {"sharpe": 0.5, "overrides": 3.0}, "flat": {"sharpe": 0.0, "overrides": 0.0}}


def _records():
    from tasks.backtest import BacktestOutput
    from tasks.drift import DriftOutput
    from tasks.features import FeaturesOutput
    from tasks.folds import FoldsOutput
    from tasks.ingest import ManifestOutput
    from tasks.panel import PanelOutput
    from tasks.register import RegisterOutput
    from tasks.regimes import RegimesOutput
    from tasks.rescore import RescoreOutput
    from tasks.train import TrainOutput
    from tasks.validate import ValidationOutput

    common = {"path": "/w/x.json", "sha256": "f" * 64}
    manifest = Manifest(symbols=["TQQQ", "SQQQ", "QQQ"], files=[SourceRecord(path="data/daily/QQQ.csv", symbol="QQQ", sha256="e" * 64)])
    report = AlignmentReport(3, "2015-01-02", "2025-04-21", {"QQQ": {"rows": 3, "dropped": 0, "first_dropped": None,
                                                                     "last_dropped": None}})
    gate = GateResult(False, "challenger", [Check("deflated Sharpe", 0.3, ">= 0.95", "FAIL", "2 trials"),
                                            Check("PBO", None, "<= 0.2", "reported", "1 configuration")],
                      {"maskable_ppo": {"mean_sharpe": -0.2}}, {"deflated": {"n_trials": 2}})
    return [
        ManifestOutput(stage="ingest", manifest=manifest, **common),
        ValidationOutput(stage="validate", files=3, **common),
        PanelOutput(stage="panel", alignment=report, frequency=BarFrequency(5.0, 78.0), **common),
        FeaturesOutput(stage="features", columns=("QQQ_ret_1",), n_features=98, rows=2590, warmup_rows=60, **common),
        FoldsOutput(stage="folds", folds=(SPAN, SPAN.model_copy(update={"fold": 2})), **common),
        RegimesOutput(stage="regimes", fold=1, model=MODEL, train_shares=[0.7, 0.3], test_shares=[0.5, 0.5], **common),
        TrainOutput(stage="train", fold=1, algorithm="ppo", metadata_path="/w/p-metadata.json", training=TRAINING, **common),
        BacktestOutput(stage="backtest", result=FoldResult(fold=1, test_start="a", test_end="b", metrics=METRICS),
                       paths_file="/w/p.parquet", trades_file="/w/t.parquet", plot_file="/w/p.png", **common),
        RescoreOutput(stage="rescore", status="scored", summary_line="- 300 bars", mlflow_run_id="r1", sharpe=0.4,
                      bars=300, version="2", **common),
        DriftOutput(stage="drift", summary={"psi_mean": 2.3}, markdown="## Drift", mlflow_run_id="r2", **common),
        RegisterOutput(stage="register", gate=gate, version="3", alias="challenger", parent_run_id="p",
                       child_run_ids={"ppo-fold-1": "c"}, export=None, tracking_uri="sqlite:///m.db", experiment_id="1",
                       data_fingerprint="d" * 64, config_hash="c" * 16, code_version="0" * 16, n_trials=2,
                       evidence_plot="/w/e.png", regimes={"ppo": {"regime_0_bars": 10.0}}, **common),
    ]


@pytest.mark.parametrize("index", range(11))
def test_each_stage_record_round_trips_through_json(index):
    record = _records()[index]
    again = type(record).model_validate_json(record.model_dump_json())
    assert again == record and type(again) is type(record)


def test_records_are_frozen_and_refuse_unknown_fields():
    from tasks.features import FeaturesOutput

    record = _records()[3]
    with pytest.raises(pydantic.ValidationError):
        record.rows = 1
    with pytest.raises(pydantic.ValidationError, match="extra"):
        FeaturesOutput(stage="features", path="p", sha256="s", columns=("x",), n_features=1, rows=1, warmup_rows=0, meta={})


def test_fold_fingerprints_are_fields_and_the_window_leaves_them_out():
    assert SPAN.window() == SPAN.model_copy(update={"fingerprint": None, "panel_fingerprint": None}).window()
    assert "fingerprint" not in SPAN.window() and SPAN.summary()["test_bars"] == 250


def test_the_manifest_fingerprint_is_the_sha256_of_its_written_text(tmp_path):
    from sentio_core import files

    manifest = _records()[0].manifest
    path = files.write_text(manifest.to_json(), tmp_path / "manifest.json")
    assert files.file_sha256(path) == manifest.fingerprint()
    assert Manifest.model_validate_json(path.read_text()) == manifest
