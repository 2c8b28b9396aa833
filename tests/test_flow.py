"""The sentio-retrain flow: stage order, cross-run caching, selective re-runs, the validation stop."""

from __future__ import annotations

import csv
import shutil

import pytest

from .conftest import DAILY, SMOKE

pytestmark = pytest.mark.flow

STAGES = ["ingest", "validate", "panel", "features", "folds", "regimes-fold-0", "regimes-fold-1"]


def _run(tmp, *overrides, refresh=False):
    from flows.retrain import sentio_retrain

    return sentio_retrain(config=str(SMOKE), overrides=[f"run.work_dir={tmp}", *overrides], refresh=refresh)


@pytest.fixture(scope="module")
def first_run(prefect_harness, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    return work, _run(work)


def test_first_run_computes_every_stage(first_run):
    work, out = first_run
    assert list(out["stages"]) == STAGES
    assert set(out["stages"].values()) == {"Completed"}
    assert out["n_features"] >= 40
    assert len(out["folds"]) == 2
    for row in out["folds"]:
        assert row["purge_bars"] == 31 and row["test_bars"] == 120
        assert abs(sum(row[f"regime_{i}_test"] for i in range(3)) - 1) < 0.01
    assert (work / "features").is_dir() and any((work / "features").glob("*.parquet"))


def test_unchanged_rerun_is_fully_cached(first_run):
    work, first = first_run
    again = _run(work)
    assert set(again["stages"].values()) == {"Cached"}
    assert again["folds"] == first["folds"]


def test_feature_change_reruns_features_and_after_only(first_run):
    work, _ = first_run
    out = _run(work, "features.rsi_bars=10")
    assert [out["stages"][s] for s in ("ingest", "validate", "panel")] == ["Cached"] * 3
    assert out["stages"]["features"] == "Completed" and out["stages"]["folds"] == "Completed"
    # identical fold windows -> the regime fits are re-used (their inputs did not change)
    assert out["stages"]["regimes-fold-0"] == "Cached"


def test_fold_change_reruns_folds_and_regimes_not_features(first_run):
    work, _ = first_run
    out = _run(work, "folds.test_bars=100")
    assert out["stages"]["features"] == "Cached"
    assert out["stages"]["folds"] == "Completed" and out["stages"]["regimes-fold-1"] == "Completed"


def test_refresh_recomputes_everything_with_identical_results(first_run):
    work, first = first_run
    out = _run(work, refresh=True)
    assert set(out["stages"].values()) == {"Completed"}
    assert out["folds"] == first["folds"]


def test_fold_table_artifact_has_one_row_per_fold(first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sentio-folds"])))
    assert arts, "no sentio-folds artifact"
    import json

    table = arts[-1].data if isinstance(arts[-1].data, list) else json.loads(arts[-1].data)
    assert len(table) == 2 and {"fold", "train_start", "test_end", "purge_bars", "regime_2_test"} <= set(table[0])


def test_bad_data_stops_before_any_other_stage(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.retrain import sentio_retrain
    from tasks.validate import DataValidationError

    bad = tmp_path / "data"
    shutil.copytree(DAILY, bad)
    rows = list(csv.reader(open(bad / "TQQQ.csv")))
    rows[100][2] = "0.01"  # high below open and close
    with open(bad / "TQQQ.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    work = tmp_path / "work"
    state = sentio_retrain(config=str(SMOKE), overrides=[f"data.path={bad}", f"run.work_dir={work}"], return_state=True)
    assert state.is_failed()
    with pytest.raises(DataValidationError, match="high >= max"):
        state.result()
    assert sorted(p.name for p in work.iterdir()) == ["ingest"]  # nothing after the gate ran
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sentio-validation"])))
    assert arts and "TQQQ.csv" in arts[-1].data and "high >= max(open, close)" in arts[-1].data
