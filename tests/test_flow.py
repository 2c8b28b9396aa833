"""The sentio-retrain flow: stage order, cross-run caching, selective re-runs, the validation stop."""

from __future__ import annotations

import csv
import shutil

import pytest

from sentio_core.config import MASK_RULES

from .conftest import DAILY, FAST_TRAINING, RELAXED_GATE, SMOKE

pytestmark = [pytest.mark.flow, pytest.mark.slow]

STAGES = ["ingest", "validate", "panel", "features", "folds", "rescore-champion",
          "regimes-fold-0", "train-maskable_ppo-fold-0", "train-ppo-fold-0", "backtest-fold-0",
          "regimes-fold-1", "train-maskable_ppo-fold-1", "train-ppo-fold-1", "backtest-fold-1", "drift", "register"]
TRAINING = [s for s in STAGES if s.startswith(("train", "backtest"))] + ["register"]


def _run(tmp, *overrides, refresh=False):
    from flows.retrain import sentio_retrain

    overrides = [f"run.work_dir={tmp}", f"registry.export_dir={tmp}/exports", *FAST_TRAINING, *overrides]
    return sentio_retrain(config=str(SMOKE), overrides=overrides, refresh=refresh)


@pytest.fixture(scope="module")
def first_run(prefect_harness, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    return work, _run(work)


def test_first_run_computes_every_stage(first_run):
    work, out = first_run
    assert list(out.stages) == STAGES
    assert set(out.stages.values()) == {"Completed"}
    assert out.n_features >= 40
    assert len(out.folds) == 2
    for row in out.folds:
        assert row["purge_bars"] == 11 and row["test_bars"] == 120
        assert abs(sum(row[f"regime_{i}_test"] for i in range(3)) - 1) < 0.01
    assert (work / "features").is_dir() and any((work / "features").glob("*.parquet"))


def test_unchanged_rerun_is_fully_cached(first_run):
    """Nothing changed, nothing runs; except that a champion the first run exported is new input to
    the next run's re-score, which runs once and is then cached like the rest."""
    work, first = first_run
    again = _run(work)
    exported = first.registration.alias == "champion"
    assert again.stages["rescore-champion"] == ("Completed" if exported else "Cached")
    assert {state for stage, state in again.stages.items() if stage != "rescore-champion"} == {"Cached"}
    assert again.folds == first.folds
    if exported:
        assert set(_run(work).stages.values()) == {"Cached"}


def test_feature_change_reruns_features_and_after_only(first_run):
    work, _ = first_run
    out = _run(work, "features.rsi_bars=10")
    assert [out.stages[s] for s in ("ingest", "validate", "panel")] == ["Cached"] * 3
    assert out.stages["features"] == "Completed" and out.stages["folds"] == "Completed"
    # identical fold windows -> the regime fits are re-used (their inputs did not change)
    assert out.stages["regimes-fold-0"] == "Cached"
    assert {out.stages[s] for s in TRAINING} == {"Completed"}


def test_cost_change_reruns_training_and_backtests_only(first_run):
    work, _ = first_run
    out = _run(work, "costs.impact_coef=0.7")
    assert {out.stages[s] for s in STAGES if s not in TRAINING + ["rescore-champion"]} == {"Cached"}
    assert {out.stages[s] for s in TRAINING} == {"Completed"}


def test_fold_change_reruns_folds_and_regimes_not_features(first_run):
    work, _ = first_run
    out = _run(work, "folds.test_bars=100")
    assert out.stages["features"] == "Cached"
    assert out.stages["folds"] == "Completed" and out.stages["regimes-fold-1"] == "Completed"


def test_refresh_recomputes_everything_with_identical_results(first_run):
    """Determinism: the same config and seed on CPU give identical out-of-sample fold metrics."""
    work, first = first_run
    out = _run(work, refresh=True)
    assert set(out.stages.values()) == {"Completed"}
    assert out.folds == first.folds
    assert "maskable_ppo_sharpe" in out.folds[0] and "ppo_max_drawdown" in out.folds[1]
    again, before = out.registration.gate, first.registration.gate
    assert again.summary == before.summary and again.passed == before.passed
    # every check but the deflated Sharpe reads this run's returns only; the deflation reads the
    # ledger, which other tests of the session may have grown in between (the refresh itself adds
    # no trial: the same config, data, code and seed are the same trials)
    assert again.checks[1:] == before.checks[1:] and again.evidence["paired"] == before.evidence["paired"]
    assert again.evidence["deflated"]["sharpe_ann"] == before.evidence["deflated"]["sharpe_ann"]
    assert again.evidence["deflated"]["n_trials"] >= before.evidence["deflated"]["n_trials"]


def test_fold_metrics_cover_both_algorithms_and_the_baselines(first_run):
    _, out = first_run
    for row in out.folds:
        for name in ("maskable_ppo", "ppo", "trend_vol", "buy_hold_underlying", "buy_hold_long", "flat"):
            for metric in ("sharpe", "total_return", "max_drawdown", "turnover"):
                assert isinstance(row[f"{name}_{metric}"], float)
        assert row["maskable_ppo_overrides"] == 0  # the masked policy never picks a forbidden action
        assert row["flat_total_return"] == 0.0
        for name in ("maskable_ppo", "ppo"):  # the sentio-folds table: what each mask rule constrained, bars forced
            assert {f"{name}_forced_bars", f"{name}_forced_flat", *(f"{name}_mask_{r}" for r in MASK_RULES)} <= set(row)
            assert 0 <= row[f"{name}_forced_flat"] <= row[f"{name}_forced_bars"] <= row["test_bars"]


def test_registration_logs_runs_and_sets_an_alias(first_run):
    import mlflow
    from mlflow.tracking import MlflowClient

    _, out = first_run
    reg = out.registration
    assert reg.alias in ("champion", "challenger") and reg.gate.reasons
    client = MlflowClient()
    parent = client.get_run(reg.parent_run_id)
    assert parent.data.params["costs.impact_coef"] == "0.5" and "maskable_ppo.mean_sharpe" in parent.data.metrics
    assert sorted(reg.child_run_ids) == ["maskable_ppo-fold-0", "maskable_ppo-fold-1", "ppo-fold-0", "ppo-fold-1"]
    child = client.get_run(reg.child_run_ids["ppo-fold-1"])
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and "sharpe" in child.data.metrics
    # every mask rule reports itself in the child runs, with the bars forced to one action and to flat
    assert {"forced_bars", "forced_flat", *(f"mask_{rule}" for rule in MASK_RULES)} <= set(child.data.metrics)
    names = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert any(n.endswith(".png") for n in names) and any("trades" in n for n in names) and "trials.json" in names
    assert child.data.tags["sentio.trials"] == "1" and child.data.tags["sentio.universe"] == "QQQ/TQQQ/SQQQ"
    # the evidence: the ledger's count, every check's value and verdict, results by regime, the gate and its plot
    metrics = parent.data.metrics
    assert metrics["n_trials"] == reg.n_trials >= 4 and "gate.deflated_sharpe" in metrics and "gate.pbo.passed" in metrics
    assert {"regime_0.maskable_ppo.sharpe", "regime_2.ppo.bars"} <= set(metrics)
    assert {"regime_0_sharpe", "psr", "sharpe_low", "sharpe_high"} <= set(child.data.metrics)
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "gate.json" in parent_files and any(n.endswith("-evidence.png") for n in parent_files)
    version = client.get_model_version("sentio-maskable-ppo", reg.version)
    assert {"data_fingerprint", "config_hash", "code_version"} <= set(version.tags)
    assert mlflow.get_tracking_uri() == reg.tracking_uri


def test_fold_table_artifact_has_one_row_per_fold(first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:  # the newest: this module's smoke runs (a CPCV run may be older)
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sentio-folds"])),
                                     sort=ArtifactSort.CREATED_DESC, limit=1)
    assert arts, "no sentio-folds artifact"
    import json

    table = arts[0].data if isinstance(arts[0].data, list) else json.loads(arts[0].data)
    assert len(table) == 2 and {"fold", "train_start", "test_end", "purge_bars", "regime_2_test"} <= set(table[0])
    assert {"maskable_ppo_sharpe", "ppo_sharpe", "trend_vol_sharpe", "buy_hold_underlying_sharpe", "buy_hold_long_max_drawdown",
            "flat_total_return", "maskable_ppo_overrides", "ppo_overrides"} <= set(table[0])


def test_bad_data_stops_before_any_other_stage(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.retrain import sentio_retrain
    from sentio_core.validation import DataValidationError

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


def test_champion_is_exported_and_loads_from_the_registry(prefect_harness, tmp_path):
    """A gate every model passes: alias champion, export written, models:/NAME@champion acts like the export."""
    import numpy as np

    from sentio_core.export import load_policy, read_metadata
    from sentio_core.registry import load_alias

    out = _run(tmp_path, *RELAXED_GATE, "registry.model_name=sentio-test-champion")
    reg = out.registration
    assert reg.alias == "champion"
    pth, meta = (tmp_path / "exports" / "sentio-test-champion.pth"), (tmp_path / "exports" / "sentio-test-champion-metadata.json")
    assert sorted(reg.export) == sorted([str(pth), str(meta)])
    exported = load_policy(pth)
    md = exported.metadata
    for key in ("model_type", "policy", "config", "out_of_sample", "data", "code_version", "registry", "created_at"):
        assert key in md, key
    typed = read_metadata(exported)
    assert typed.model_type == "maskable_ppo" and len(typed.out_of_sample.folds) == 2
    assert typed.registry.alias == "champion" and typed.registry.version == reg.version
    assert typed.data.fingerprint == reg.data_fingerprint
    assert len(typed.policy.observation.normalisation.mean) == len(typed.policy.observation.features)
    import torch

    torch.load(pth, weights_only=True)  # plain tensors and python values only
    registered = load_alias("sentio-test-champion", "champion")  # tensors and JSON, checked against the version tag
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(32, exported.obs_dim)).astype(np.float32)
    mask = rng.random((32, exported.n_actions)) < 0.6
    mask[:, 2] = True  # flat
    np.testing.assert_array_equal(registered.act(obs, mask), exported.act(obs, mask))


def test_a_failed_fold_is_retried_then_reported_while_the_others_finish(prefect_harness, tmp_path, monkeypatch):
    """A crashing training is retried once; its fold is then reported, fold 0 still finishes, and
    the run registers and exports nothing."""
    from mlflow.tracking import MlflowClient

    import tasks.train
    from flows.retrain import FoldFailure, sentio_retrain

    real, calls = tasks.train.fold_training, []

    def failing(cfg, market, span, algorithm, *args, **kwargs):
        calls.append((span.fold, algorithm))
        if span.fold == 1:
            raise RuntimeError("simulated training crash on fold 1")
        return real(cfg, market, span, algorithm, *args, **kwargs)

    monkeypatch.setattr(tasks.train, "fold_training", failing)
    state = sentio_retrain(config=str(SMOKE), overrides=[f"run.work_dir={tmp_path}", f"registry.export_dir={tmp_path}/exports",
                                                         "registry.model_name=sentio-test-failed", "seed=99", *FAST_TRAINING],
                           return_state=True)
    assert state.is_failed()
    with pytest.raises(FoldFailure, match="fold 1 failed: RuntimeError: simulated training crash on fold 1"):
        state.result()
    assert calls.count((1, "maskable_ppo")) == 2  # retried once (run.train_retries), then reported
    assert len(list((tmp_path / "backtest").glob("*.json"))) == 1  # fold 0 finished
    assert not (tmp_path / "exports").exists()
    assert not (tmp_path / "register").exists()
    assert MlflowClient().search_model_versions("name='sentio-test-failed'") == []


def test_trainings_take_turns_under_the_global_concurrency_limit(prefect_harness, tmp_path, monkeypatch):
    """The `sentio-training` limit exists with run.training_slots slots, and no two trainings overlap."""
    import threading
    import time

    from prefect.client.orchestration import get_client

    import tasks.train

    real, spans, lock = tasks.train.fold_training, [], threading.Lock()

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                spans.append((start, time.perf_counter()))

    monkeypatch.setattr(tasks.train, "fold_training", timed)
    _run(tmp_path, "seed=31")
    spans.sort()
    assert len(spans) == 4
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("sentio-training")
    assert limit.limit == 1 and limit.active_slots == 0


def test_the_next_run_rescores_the_exported_champion(prefect_harness, tmp_path):
    """Before retraining, the champion is scored from its test window on: over the same window it
    reproduces the Sharpe its fold's backtest reported."""
    relaxed = [*RELAXED_GATE, "registry.model_name=sentio-test-rescore",
               "folds.step_bars=1"]  # the last test window ends on the last bar: the re-score covers exactly it
    first = _run(tmp_path, *relaxed)
    assert first.registration.alias == "champion" and first.champion.status == "no champion"
    again = _run(tmp_path, *relaxed)
    assert again.stages["rescore-champion"] == "Completed" and again.champion.status == "scored"
    assert again.champion.sharpe == pytest.approx(first.folds[-1]["maskable_ppo_sharpe"], abs=1e-4)


def test_a_planted_pickle_in_the_stage_cache_never_runs(first_run, tmp_path, caplog):
    """Replace the cached features record with a pickle that would run a command: the next run
    quarantines it, names it, recomputes the features stage and serves the rest from the cache."""
    from tasks.common import storage_root
    from tests.test_stage_cache import plant_pickle

    work, _ = first_run
    records = [p for p in storage_root().glob("features-*") if "untrusted" not in p.name]
    assert records and all(b'"sentio-record"' in p.read_bytes() for p in records)  # JSON records, no pickle
    marker = tmp_path / "ran"
    for path in records:
        plant_pickle(path, marker)
    out = _run(work)
    assert not marker.exists(), "the planted payload ran"
    assert out.stages["features"] == "Completed" and out.stages["ingest"] == "Cached"
    assert out.stages["train-maskable_ppo-fold-0"] == "Cached"
    assert "not a Sentio stage record" in caplog.text


def test_the_preflight_check_stops_the_flow_before_the_features(prefect_harness, tmp_path):
    from flows.retrain import sentio_retrain
    from sentio_core.config import ConfigError

    work = tmp_path / "work"
    state = sentio_retrain(config=str(SMOKE), overrides=[f"run.work_dir={work}", "folds.n_folds=50"], return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match="aligned bars are too few.*folds.n_folds"):
        state.result()
    assert sorted(p.name for p in work.iterdir()) == ["ingest", "panel", "validate"]
