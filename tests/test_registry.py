"""MLflow registry: runs, registration, version tags and aliases against a throw-away SQLite store.

Everything MLflow writes goes under a temporary folder: the tracking URI comes from
``MLFLOW_TRACKING_URI`` and the experiment is created with its artifact location there. The
expensive part (two registrations) runs once, in a module-scoped fixture.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from sentio_core.config import RegistryConfig, flatten, load_config
from sentio_core.export import load_policy, save_policy
from sentio_core.files import DataError
from sentio_core.registry import (
    NONFINITE_TAG,
    configure,
    get_alias_version,
    load_alias,
    log_child_run,
    log_metrics,
    model_input,
    parent_run,
    register_policy,
    set_alias,
    split_model_input,
    tracking_uri,
)

from .test_export import N_ACTIONS, OBS_DIM, random_masks, trained

# raised inside MLflow's SQLAlchemy store, not by this project's code
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

VERSION_TAGS = {"data_fingerprint": "sha256:abc123", "config_hash": "0123456789abcdef", "code_version": "deadbeef"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A configured MLflow store under a temporary folder, with MLflow's env variables restored after."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for var in ("MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
            mp.delenv(var, raising=False)  # MLflow's setters export these; the context restores them
        cfg = RegistryConfig(experiment="sentio-test", model_name="sentio-test-policy", export_dir=root / "export")
        MlflowClient(tracking_uri(cfg)).create_experiment(cfg.experiment, artifact_location=(root / "artifacts").as_uri())
        configure(cfg)
        yield SimpleNamespace(root=root, cfg=cfg)
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture(scope="module")
def registered(store):
    """A parent run with one fold child; MaskablePPO registered as version 1 (inside the parent
    run) and PPO as version 2 (into the finished child run, resumed)."""
    cfg, out = store.cfg, store.cfg.export_dir
    exports = {alg: save_policy(trained(alg), alg, out / f"{cfg.model_name}-{alg}", {"fold": 0}) for alg in ("maskable_ppo", "ppo")}
    report = out / "fold-0"
    report.mkdir()
    (report / "trades.csv").write_text("bar,action\n0,1\n")
    params = flatten(load_config()) | {"long.value": "x" * 7000}
    with parent_run(cfg, "pipeline", params, {"sentio.kind": "pipeline"}) as parent_id:
        child_id = log_child_run(parent_id, "fold-0", {"fold": "0"}, {"sharpe": 1.25, "calmar": math.nan, "sortino": math.inf},
                                 [exports["maskable_ppo"][1], report], {"fold": "0"})
        skipped = log_metrics(parent_id, {"maskable_ppo.sharpe.mean": 0.8, "ppo.sharpe.std": math.nan})
        v1 = register_policy(*exports["maskable_ppo"], cfg.model_name, parent_id, VERSION_TAGS)
    v2 = register_policy(*exports["ppo"], cfg.model_name, child_id, VERSION_TAGS | {"code_version": "cafef00d"})
    return SimpleNamespace(exports=exports, parent_id=parent_id, child_id=child_id, versions=(v1, v2), n_params=len(params),
                           skipped=skipped)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(5)
    return rng.normal(size=(50, OBS_DIM)), random_masks(rng, 50)


def test_tracking_uri_prefers_the_environment(monkeypatch):
    cfg = RegistryConfig(default_tracking_uri="sqlite:///elsewhere.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(cfg) == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(cfg) == "sqlite:///elsewhere.db"


def test_parent_and_child_runs(store, registered):
    client = MlflowClient()
    parent, child = client.get_run(registered.parent_id), client.get_run(registered.child_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sentio.kind"] == "pipeline"
    assert len(parent.data.params) == registered.n_params > 100  # more than one batch
    assert len(parent.data.params["long.value"]) == 6000 and parent.data.params["long.value"].endswith("[truncated]")
    assert parent.data.params["costs.commission_mode"] == str(load_config().costs.commission_mode)
    assert parent.data.metrics == {"maskable_ppo.sharpe.mean": 0.8}
    assert registered.skipped == ["ppo.sharpe.std"] and parent.data.tags[NONFINITE_TAG] == "ppo.sharpe.std"
    assert child.data.tags["mlflow.parentRunId"] == registered.parent_id and child.data.tags["fold"] == "0"
    assert child.data.metrics == {"sharpe": 1.25}
    assert child.data.tags[NONFINITE_TAG] == "calmar,sortino"
    listed = {a.path for a in client.list_artifacts(registered.child_id)} | {a.path for a in client.list_artifacts(registered.child_id, "fold-0")}
    assert {"sentio-test-policy-maskable_ppo-metadata.json", "fold-0", "fold-0/trades.csv"} <= listed
    for run in (parent, child):
        assert run.info.artifact_uri.startswith(store.root.as_uri())  # nothing written into the repository


def test_missing_artifact_fails_before_a_run_is_made(store, registered):
    client = MlflowClient()
    experiment = client.get_experiment_by_name(store.cfg.experiment).experiment_id
    before = len(client.search_runs([experiment]))
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        log_child_run(registered.parent_id, "fold-1", {}, {}, [store.root / "nowhere.png"], {})
    assert len(client.search_runs([experiment])) == before


def test_versions_are_tagged(store, registered):
    client = MlflowClient()
    v1, v2 = registered.versions
    assert (v1, v2) == ("1", "2")
    tags = client.get_model_version(store.cfg.model_name, v1).tags
    assert len(tags.pop("weights_sha256")) == len(tags.pop("metadata_sha256")) == 64 and tags == VERSION_TAGS
    assert client.get_model_version(store.cfg.model_name, v2).tags["code_version"] == "cafef00d"
    assert client.get_model_version(store.cfg.model_name, v1).run_id == registered.parent_id


def test_champion_alias_loads_and_acts_like_the_export(store, registered, batch):
    name, (v1, v2) = store.cfg.model_name, registered.versions
    obs, masks = batch
    assert get_alias_version(name, "champion") is None and get_alias_version("no-such-model", "champion") is None
    set_alias(name, v1, "champion")
    assert get_alias_version(name, "champion") == v1
    exported = load_policy(registered.exports["maskable_ppo"][0]).act(obs, masks)
    champion = load_alias(name, "champion")
    np.testing.assert_array_equal(champion.act(obs, masks), exported)

    set_alias(name, v2, "champion")  # the alias moves to the PPO version
    assert get_alias_version(name, "champion") == v2
    moved = load_alias(name, "champion").act(obs, masks)
    np.testing.assert_array_equal(moved, load_policy(registered.exports["ppo"][0]).act(obs, masks))
    assert masks[np.arange(len(moved)), moved].all()


def test_model_input_layout_and_errors():
    obs, masks = np.arange(12.0).reshape(2, OBS_DIM), np.array([[True, False, True], [False, True, False]])
    frame = model_input(obs, masks)
    assert list(frame.columns) == [f"obs_{i}" for i in range(OBS_DIM)] + [f"mask_{j}" for j in range(N_ACTIONS)]
    got_obs, got_mask = split_model_input(frame[frame.columns[::-1]], OBS_DIM, N_ACTIONS)  # order of columns is free
    np.testing.assert_array_equal(got_obs, obs)
    np.testing.assert_array_equal(got_mask, masks)
    assert split_model_input(model_input(obs[0]), OBS_DIM, N_ACTIONS)[1] is None
    with pytest.raises(ValueError, match=r"missing \['obs_5'\]"):
        split_model_input(frame.drop(columns="obs_5"), OBS_DIM, N_ACTIONS)
    with pytest.raises(ValueError, match=r"missing \['mask_2'\]"):
        split_model_input(frame.drop(columns="mask_2"), OBS_DIM, N_ACTIONS)
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        split_model_input(frame.assign(extra=1), OBS_DIM, N_ACTIONS)
    with pytest.raises(ValueError, match=r"expected \(N, 6\) or \(N, 9\)"):
        split_model_input(np.zeros((2, 7)), OBS_DIM, N_ACTIONS)


def test_the_pyfunc_serves_the_same_actions(store, registered, batch):
    """The pyfunc stays for MLflow serving (which unpickles it); Sentio itself never loads it."""
    name, (v1, _) = store.cfg.model_name, registered.versions
    obs, masks = batch
    served = mlflow.pyfunc.load_model(f"models:/{name}/{v1}")
    exported = load_policy(registered.exports["maskable_ppo"][0]).act(obs, masks)
    np.testing.assert_array_equal(served.predict(model_input(obs, masks)), exported)
    np.testing.assert_array_equal(served.predict(np.hstack([obs, masks])), exported)  # numpy: obs then mask columns


def _stored_model_dir(name: str, version: str) -> Path:
    mv = MlflowClient().get_model_version(name, version)
    location = MlflowClient().get_logged_model(mv.source.removeprefix("models:/")).artifact_location
    return Path(location.removeprefix("file://"))


def test_a_planted_pickle_in_the_registry_never_runs(store, registered, tmp_path, batch):
    """Replace the version's python_model.pkl with a pickle that runs a command: loading the
    champion reads tensors and JSON only, so nothing runs and the policy still acts."""
    import pickle

    from .test_stage_cache import _Payload

    name, (v1, _) = store.cfg.model_name, registered.versions
    set_alias(name, v1, "champion")
    marker = tmp_path / "ran"
    pkl = _stored_model_dir(name, v1) / "python_model.pkl"
    original = pkl.read_bytes()
    pkl.write_bytes(pickle.dumps(_Payload(str(marker))))
    try:
        policy = load_alias(name, "champion")
    finally:
        pkl.write_bytes(original)
    assert not marker.exists(), "the planted payload ran"
    assert policy.act(*batch).shape == (len(batch[0]),)


def test_changed_metadata_in_the_registry_is_refused_by_the_version_tag(store, registered):
    """The metadata (normalisation, feature order) matters as much as the weights: it is bound to its tag too."""
    name, (v1, _) = store.cfg.model_name, registered.versions
    set_alias(name, v1, "champion")
    meta = next(p for p in (_stored_model_dir(name, v1) / "artifacts").glob("*.json"))
    original = meta.read_text()
    meta.write_text(original.replace('"fold": 0', '"fold": 1'))
    try:
        with pytest.raises(DataError, match=r"\.json.*\[content hash\].*metadata_sha256"):
            load_alias(name, "champion")
    finally:
        meta.write_text(original)


def test_changed_weights_in_the_registry_are_refused_by_the_version_tag(store, registered):
    name, (v1, _) = store.cfg.model_name, registered.versions
    set_alias(name, v1, "champion")
    weights = next((_stored_model_dir(name, v1) / "artifacts").glob("*.pth"))
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        with pytest.raises(DataError, match=r"\.pth.*\[content hash\].*artifact store was changed"):
            load_alias(name, "champion")
    finally:
        weights.write_bytes(original)


# --------------------------------------------------------------------------- the trial ledger


def _records(config_hash: str, seeds: int, fold: int = 0, universe: str = "QQQ/TQQQ/SQQQ") -> list[dict]:
    from sentio_core.trials import TrialRecord

    rng = np.random.default_rng(fold + 10 * seeds)
    return [TrialRecord(experiment="sentio-test", universe=universe, bar_frequency="1d", config_hash=config_hash,
                        algorithm="maskable_ppo", variant="mlp", seed=7 + k, seed_index=k, fold=fold, chosen=k == 0,
                        data_fingerprint="d1", code_version="c1", timestamps=[f"2024-01-0{i + 1}" for i in range(5)],
                        returns=rng.normal(0, 0.01, 5).tolist()).model_dump(mode="json") for k in range(seeds)]


def _log_trials(store, tmp: Path, name: str, rows: list[dict], universe: str = "QQQ/TQQQ/SQQQ") -> str:
    from sentio_core.files import write_json
    from sentio_core.registry import TRIALS_ARTIFACT, trial_tags

    path = write_json(rows, tmp / name / TRIALS_ARTIFACT)
    with parent_run(store.cfg, f"retrain-{name}", {}, {}) as parent_id:
        return log_child_run(parent_id, f"maskable_ppo-fold-0-{name}", {}, {}, [path], trial_tags(universe, "1d", "mlp"))


def test_the_ledger_reads_every_run_s_trials_back_deleted_runs_included(store, tmp_path):
    from sentio_core.registry import load_trials
    from sentio_core.trials import group, ledger_stats, records_from

    _log_trials(store, tmp_path, "night1", _records("h1", seeds=2))
    gone = _log_trials(store, tmp_path, "night2", _records("h2", seeds=3))
    _log_trials(store, tmp_path, "other-universe", _records("h3", seeds=4, universe="SPY/UPRO/SPXU"), "SPY/UPRO/SPXU")
    MlflowClient().delete_run(gone)  # a trial once tried stays counted
    found = load_trials(store.cfg, "QQQ/TQQQ/SQQQ", "1d")
    records = [r for where, rows in found for r in records_from(where, rows)]
    assert len(found) == 2 and all(where.startswith("runs:/") for where, _ in found)
    assert sorted((r.config_hash, r.seed_index) for r in records) == [("h1", 0), ("h1", 1), ("h2", 0), ("h2", 1), ("h2", 2)]
    assert ledger_stats(group(records)).n_trials == 5
    assert load_trials(store.cfg, "QQQ/TQQQ/SQQQ", "5min") == []


def test_a_damaged_trials_artifact_names_the_run(store, tmp_path):
    from sentio_core.trials import records_from

    with pytest.raises(DataError, match=r"runs:/abc/trials.json.*not a list"):
        records_from("runs:/abc/trials.json", {"seed": 1})
    bad = _records("h9", seeds=1)
    bad[0]["returns"] = "lots"
    with pytest.raises(DataError, match=r"runs:/abc/trials.json.*record 0: returns"):
        records_from("runs:/abc/trials.json", bad)


# --------------------------------------------------------------------------- promotion by hand


def test_promote_by_hand_exports_the_version_moves_the_alias_and_records_who_and_why(store, registered):
    from sentio_core.registry import PROMOTED_BY_TAG, PROMOTED_WHY_TAG, promote

    cfg = store.cfg
    set_alias(cfg.model_name, registered.versions[0], "champion")
    done = promote(cfg, registered.versions[1], by="ops@desk", reason="roll forward after review")
    assert get_alias_version(cfg.model_name, "champion") == registered.versions[1] and done["previous"] == registered.versions[0]
    exported = load_policy(Path(cfg.export_dir) / cfg.model_name)
    assert exported.algorithm == "ppo" and exported.metadata["registry"]["version"] == registered.versions[1]
    tags = MlflowClient().get_model_version(cfg.model_name, registered.versions[1]).tags
    assert tags[PROMOTED_BY_TAG] == "ops@desk" and tags[PROMOTED_WHY_TAG] == "roll forward after review"
    run = MlflowClient().get_run(done["run_id"])
    assert run.data.tags["kind"] == "manual-promotion" and run.data.tags["previous_champion"] == registered.versions[0]
    back = promote(cfg, registered.versions[0], by="ops@desk", reason="roll back")  # a roll-back is a promotion too
    assert get_alias_version(cfg.model_name, "champion") == registered.versions[0] and back["previous"] == registered.versions[1]
    assert load_policy(Path(cfg.export_dir) / cfg.model_name).algorithm == "maskable_ppo"


def test_promote_refuses_an_unknown_version_or_no_reason_and_leaves_the_export(store, registered):
    from sentio_core.registry import promote

    cfg = store.cfg
    stem = Path(cfg.export_dir) / cfg.model_name
    before = {p.name: p.read_bytes() for p in stem.parent.glob(f"{cfg.model_name}*")}
    with pytest.raises(ValueError, match="has no version '99'"):
        promote(cfg, "99", by="me", reason="typo")
    with pytest.raises(ValueError, match="needs a reason"):
        promote(cfg, registered.versions[0], by="me", reason="  ")
    assert {p.name: p.read_bytes() for p in stem.parent.glob(f"{cfg.model_name}*")} == before
