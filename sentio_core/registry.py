"""MLflow tracking and model registry: the only module that imports mlflow.

One parent run per pipeline run (flattened config as params), one child run per fold (params,
metrics, artifacts), and the exported policy registered as a pyfunc model version tagged with the
data fingerprint, config hash and code version; aliases (``champion``, ``challenger``) name versions.

The tracking address comes from ``MLFLOW_TRACKING_URI`` when set, else from
``registry.default_tracking_uri``; it is read when :func:`configure` is called, never at import.

Pyfunc input (:class:`SentioPolicyModel`, :func:`model_input`): one row per observation, columns
``obs_0 .. obs_{d-1}`` (floats) then ``mask_0 .. mask_{A-1}`` (booleans, True = allowed), where
``d`` and ``A`` are the export's ``obs_dim`` and ``n_actions``. Mask columns may be left out (all
actions allowed). A numpy array of ``d`` or ``d + A`` columns in that order is accepted too. The
output is one int64 action per row.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

from sentio_core.config import RegistryConfig, reads
from sentio_core.export import LoadedPolicy, load_policy, publish, replacing_export
from sentio_core.files import DataError, file_sha256, read_json
from sentio_core.metadata import RegistryEntry

OBS_PREFIX, MASK_PREFIX = "obs_", "mask_"
NONFINITE_TAG = "sentio.nonfinite_metrics"
WEIGHTS_ARTIFACT, METADATA_ARTIFACT = "policy_weights", "policy_metadata"
WEIGHTS_SHA_TAG, METADATA_SHA_TAG = "weights_sha256", "metadata_sha256"
COMPLETE_TAG, REGISTER_KEY_TAG = "sentio.complete", "sentio.register_key"  # model-version tags
HOST_TAG, PID_TAG = "sentio.host", "sentio.pid"  # on every run Sentio starts: who to ask whether it still runs
TRIALS_TAG, UNIVERSE_TAG, FREQUENCY_TAG, VARIANT_TAG = "sentio.trials", "sentio.universe", "sentio.bar_frequency", "sentio.variant"
PROMOTED_BY_TAG, PROMOTED_WHY_TAG, PROMOTED_AT_TAG = "sentio.promoted_by", "sentio.promoted_reason", "sentio.promoted_at"
CHAMPION = "champion"
TRIALS_ARTIFACT = "trials.json"  # a child run's trial records (``sentio_core.trials.TrialRecord`` as JSON)
# what the pyfunc needs at load time (sentio_core itself must be importable too); passed
# explicitly because MLflow's requirement inference costs seconds per log_model
REQUIREMENT_DISTRIBUTIONS = ("torch", "stable-baselines3", "sb3-contrib", "gymnasium", "numpy", "pandas",
                             "polars", "pydantic", "pyyaml")
_TRUNCATED = "...[truncated]"


def tracking_uri(cfg: RegistryConfig) -> str:
    """``MLFLOW_TRACKING_URI`` from the environment when set, else ``cfg.default_tracking_uri``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.default_tracking_uri


class StoreError(RuntimeError):
    """The tracking store cannot be opened; the message names the URI and the cause."""


def check_store(cfg: RegistryConfig) -> None:
    """Open the tracking store before a run trains anything, so that an unreachable or unwritable
    store fails the run in seconds instead of after every training (registration is the last stage).

    :raises StoreError: naming the URI and the store's first line of error.
    """
    uri = tracking_uri(cfg)
    try:
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # MLflow, SQLAlchemy or OS errors, whichever the store raises
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise StoreError(f"the tracking store {uri} cannot be opened: {first}") from None


def artifact_location(uri: str) -> str | None:
    """For a local SQLite store, artifacts live beside the database (``mlartifacts/``), never in
    the working directory; other stores keep their server's default."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    return (db.resolve().parent / "mlartifacts").as_uri()


def configure(cfg: RegistryConfig) -> None:
    """Point MLflow's tracking and registry at :func:`tracking_uri` and select ``cfg.experiment``,
    creating it (artifacts beside a SQLite store) when it does not exist."""
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        try:
            mlflow.create_experiment(cfg.experiment, artifact_location=artifact_location(uri))
        except MlflowException:
            pass  # created meanwhile by a concurrent run
    mlflow.set_experiment(cfg.experiment)


def experiment_id(cfg: RegistryConfig) -> str | None:
    """The id of ``cfg.experiment`` in the configured store (None when it does not exist)."""
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    return None if exp is None else exp.experiment_id


def _clip(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - len(_TRUNCATED)] + _TRUNCATED


def _chunks(items: Sequence[Any], size: int = MAX_PARAMS_TAGS_PER_BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _log_batched(run_id: str, params: dict[str, str], metrics: dict[str, float], tags: dict[str, str]) -> None:
    """Params (values clipped to MLflow's 6,000 characters), metrics and tags, at most 100 per call."""
    client = MlflowClient()
    timestamp = int(time.time() * 1000)
    entities = ([("params", Param(k, _clip(v, MAX_PARAM_VAL_LENGTH))) for k, v in params.items()]
                + [("metrics", Metric(k, float(v), timestamp, 0)) for k, v in metrics.items()]
                + [("tags", RunTag(k, _clip(v, MAX_TAG_VAL_LENGTH))) for k, v in tags.items()])
    for chunk in _chunks(entities):
        grouped: dict[str, list[Any]] = {"params": [], "metrics": [], "tags": []}
        for kind, entity in chunk:
            grouped[kind].append(entity)
        client.log_batch(run_id, **grouped)


@contextmanager
def parent_run(cfg: RegistryConfig, run_name: str, params: dict[str, str], tags: dict[str, str]) -> Iterator[str]:
    """Start the pipeline's parent run (after :func:`configure`) and yield its run id.

    :param params: the flattened config (``sentio_core.config.flatten``).
    The run ends FINISHED, or FAILED when the body raises.
    """
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        raise ValueError(f"MLflow experiment {cfg.experiment!r} does not exist at {mlflow.get_tracking_uri()}; call configure(cfg) first")
    with mlflow.start_run(run_name=run_name, experiment_id=experiment.experiment_id, tags=dict(tags) | _owner()) as run:
        _log_batched(run.info.run_id, params, {}, {})
        yield run.info.run_id


@reads("registry")
def log_run(cfg: RegistryConfig, prefix: str, metrics: dict[str, float], tags: dict[str, str],
            status: str = "FINISHED", params: dict[str, str] | None = None, artifacts: Sequence[Path] = ()) -> str:
    """A standalone run ``PREFIX-<UTC time>`` with ``metrics`` (nightly drift, champion re-score,
    combinatorial paths); configures MLflow first. Returns the run id.

    :param status: how the run ends: ``FINISHED``, or ``FAILED`` to record a failure that the
        pipeline carried on from (a champion that could not be re-scored).
    :param params: the flattened config, when the run computed something from it.
    :param artifacts: files logged at the run's artifact root.
    """
    configure(cfg)
    with parent_run(cfg, f"{prefix}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}", params or {}, tags) as run_id:
        log_metrics(run_id, metrics)
        log_artifacts(run_id, artifacts)
    if status != "FINISHED":
        MlflowClient().set_terminated(run_id, status=status)
    return run_id


def log_child_run(parent_run_id: str, run_name: str, params: dict[str, str], metrics: dict[str, float],
                  artifacts: list[Path], tags: dict[str, str]) -> str:
    """Log one fold as a nested run under ``parent_run_id``; returns the child's run id.

    Usable inside :func:`parent_run` or from another thread or process. Non-finite metrics are
    not logged; their names go to the ``sentio.nonfinite_metrics`` tag.
    :param artifacts: files (logged at the artifact root) or folders (logged under their name).
    :raises FileNotFoundError: an artifact is missing (checked before the run is created).
    """
    missing = [str(p) for p in artifacts if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"artifacts not found: {', '.join(missing)}")
    experiment_id = MlflowClient().get_run(parent_run_id).info.experiment_id
    with mlflow.start_run(run_name=run_name, experiment_id=experiment_id, nested=True, parent_run_id=parent_run_id) as run:
        _log_batched(run.info.run_id, params, {}, tags | _owner())
        log_metrics(run.info.run_id, metrics)
        for path in map(Path, artifacts):
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            else:
                mlflow.log_artifact(str(path))
        return run.info.run_id


def log_artifacts(run_id: str, paths: Sequence[Path]) -> None:
    """Log files at the artifact root of ``run_id``."""
    client = MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path))


def log_metrics(run_id: str, metrics: dict[str, float]) -> list[str]:
    """Log the finite ``metrics`` (step 0) to ``run_id``; the names of the others (NaN, inf) go to
    the ``sentio.nonfinite_metrics`` tag, comma-separated. Returns those names."""
    finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
    skipped = sorted(set(metrics) - set(finite))
    _log_batched(run_id, {}, finite, {NONFINITE_TAG: ",".join(skipped)} if skipped else {})
    return skipped


def model_input(obs: np.ndarray, mask: np.ndarray | None = None) -> pd.DataFrame:
    """The pyfunc input frame: ``obs_0..obs_{d-1}`` (float) then ``mask_0..mask_{A-1}`` (bool).

    :param obs: ``(d,)`` or ``(N, d)``; :param mask: ``(A,)`` or ``(N, A)`` booleans, or None.
    """
    x = np.atleast_2d(np.asarray(obs, dtype=np.float64))
    frame = pd.DataFrame(x, columns=[f"{OBS_PREFIX}{i}" for i in range(x.shape[1])])
    if mask is None:
        return frame
    m = np.atleast_2d(np.asarray(mask, dtype=bool))
    if m.shape[0] != x.shape[0]:
        raise ValueError(f"mask has {m.shape[0]} rows but obs has {x.shape[0]}")
    return pd.concat([frame, pd.DataFrame(m, columns=[f"{MASK_PREFIX}{j}" for j in range(m.shape[1])])], axis=1)


def split_model_input(data: pd.DataFrame | np.ndarray, obs_dim: int, n_actions: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(obs (N, obs_dim), mask (N, n_actions) or None)`` from a frame or array laid out as :func:`model_input`."""
    obs_cols = [f"{OBS_PREFIX}{i}" for i in range(obs_dim)]
    mask_cols = [f"{MASK_PREFIX}{j}" for j in range(n_actions)]
    if isinstance(data, pd.DataFrame):
        present = set(map(str, data.columns))
        unexpected = sorted(present - set(obs_cols) - set(mask_cols))
        absent = [c for c in obs_cols if c not in present]
        some_masks = [c for c in mask_cols if c in present]
        if unexpected or absent or 0 < len(some_masks) < n_actions:
            raise ValueError(f"input columns must be {obs_cols[0]}..{obs_cols[-1]} and optionally {mask_cols[0]}..{mask_cols[-1]}; "
                             f"missing {absent + [c for c in mask_cols if some_masks and c not in present]}, unexpected {unexpected}")
        obs = data[obs_cols].to_numpy(dtype=np.float32)
        return obs, (data[mask_cols].to_numpy() if some_masks else None)
    array = np.atleast_2d(np.asarray(data))
    if array.ndim != 2 or array.shape[1] not in (obs_dim, obs_dim + n_actions):
        raise ValueError(f"input array has shape {array.shape}; expected (N, {obs_dim}) or (N, {obs_dim + n_actions}) (obs then mask)")
    return array[:, :obs_dim].astype(np.float32), (array[:, obs_dim:] if array.shape[1] > obs_dim else None)


class SentioPolicyModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of an exported policy: input as in the module docstring, output int64 actions."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.policy: LoadedPolicy = load_policy(context.artifacts[WEIGHTS_ARTIFACT], context.artifacts[METADATA_ARTIFACT])

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> np.ndarray:
        """Deterministic actions, shape ``(N,)``; ``model_input`` may also be a numpy array."""
        obs, mask = split_model_input(model_input, self.policy.obs_dim, self.policy.n_actions)
        return self.policy.act(obs, mask)


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc, read from the installed versions (local tags like +cpu dropped)."""
    return [f"{dist}=={version(dist).split('+')[0]}" for dist in REQUIREMENT_DISTRIBUTIONS]


def register_policy(pth: Path, metadata_json: Path, name: str, run_id: str, tags: dict[str, str]) -> str:
    """Log the exported policy as a pyfunc model in run ``run_id``, register it as a new version
    of ``name`` and tag that version; returns the version (``"1"``, ``"2"``, ...).

    :param tags: model-version tags: data fingerprint, config hash, code version, ...
    :raises FileNotFoundError: either file is missing (checked before anything is logged).
    """
    missing = [str(p) for p in (pth, metadata_json) if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"export files not found: {', '.join(missing)}")
    active = mlflow.active_run()
    resume = active is None or active.info.run_id != run_id
    with mlflow.start_run(run_id=run_id, nested=active is not None) if resume else nullcontext():
        info = mlflow.pyfunc.log_model(
            name="policy", python_model=SentioPolicyModel(),
            artifacts={WEIGHTS_ARTIFACT: str(pth), METADATA_ARTIFACT: str(metadata_json)},
            pip_requirements=pip_requirements(),
        )
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # the version is born with every tag (one call), the weights' hash among them: it lives in the
    # tracking database, apart from the artifact store it checks
    hashes = {WEIGHTS_SHA_TAG: file_sha256(pth), METADATA_SHA_TAG: file_sha256(metadata_json)}
    version_tags = {k: str(v) for k, v in {**tags, **hashes}.items()}
    return str(client.create_model_version(name, info.model_uri, run_id=run_id, tags=version_tags).version)


def complete_version(name: str, version: str) -> None:
    """Mark a version whole (``sentio.complete``): its export, if any, is written and verified.
    Only then may an alias point at it; :func:`reap_interrupted` deletes the versions a failed or
    killed registration left without this tag."""
    MlflowClient().set_model_version_tag(name, version, COMPLETE_TAG, "true")


def version_for(name: str, register_key: str) -> str | None:
    """The complete version an earlier attempt of the same registration made (its ``sentio.register_key``), if any."""
    for mv in _versions(name):
        if mv.tags.get(REGISTER_KEY_TAG) == register_key and mv.tags.get(COMPLETE_TAG) == "true":
            return str(mv.version)
    return None


def delete_version(name: str, version: str) -> None:
    """Remove a version that a failed attempt of a registration made (no alias ever pointed at it)."""
    MlflowClient().delete_model_version(name, version)


def _versions(name: str) -> list[Any]:
    try:
        return list(MlflowClient().search_model_versions(f"name='{name}'"))
    except MlflowException:
        return []


def _owner() -> dict[str, str]:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _alive(tags: dict[str, str]) -> bool:
    """Whether the process that started a run (``sentio.host``, ``sentio.pid``) still runs; a run
    from another host, or one without these tags, counts as alive (it cannot be checked here)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return True
    try:
        os.kill(int(tags[PID_TAG]), 0)  # PermissionError: alive, someone else's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _run_status(client: MlflowClient, run_id: str) -> str | None:
    """A run's status, or None when it no longer exists (deleted and garbage-collected)."""
    try:
        return client.get_run(run_id).info.status
    except MlflowException:
        return None


def reap_interrupted(cfg: RegistryConfig) -> dict[str, list[str]]:
    """Clean up after registrations that were killed: runs still ``RUNNING`` whose process on this
    host is gone are marked ``FAILED``, and versions of ``registry.model_name`` that a registration
    created (``sentio.register_key``) but never completed, and whose run is no longer running, are
    deleted. Versions made before these tags existed are left alone.

    :returns: ``{"failed_runs": [...], "deleted_versions": [...]}``.
    """
    client = MlflowClient()
    failed = []
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        for run in client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"):
            if not _alive(run.data.tags):
                client.set_terminated(run.info.run_id, status="FAILED")
                failed.append(run.info.run_id)
    deleted = []
    for mv in _versions(cfg.model_name):
        if REGISTER_KEY_TAG not in mv.tags or mv.tags.get(COMPLETE_TAG) == "true":
            continue
        if mv.run_id is None or _run_status(client, mv.run_id) != "RUNNING":
            client.delete_model_version(cfg.model_name, mv.version)
            deleted.append(str(mv.version))
    return {"failed_runs": failed, "deleted_versions": deleted}


def set_alias(name: str, version: str, alias: str) -> None:
    """Point ``name@alias`` at ``version`` (moving it from any other version)."""
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def get_alias_version(name: str, alias: str) -> str | None:
    """The version ``name@alias`` points at, or None when the alias or the model does not exist."""
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        missing_alias = exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in exc.message
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or missing_alias:
            return None
        raise


def load_alias(name: str, alias: str) -> LoadedPolicy:
    """The policy that ``name@alias`` points at, read as tensors and JSON only.

    The version's files are downloaded from the artifact store; the weights are checked against
    the version's ``weights_sha256`` tag (kept in the tracking database, apart from the store) and
    read by :func:`sentio_core.export.load_policy` (``weights_only``, the pair's content hash).
    MLflow's pyfunc loader is never called: it unpickles ``python_model.pkl`` from the store, so a
    file planted there would run code (``mlflow models serve`` does load it; see the README).

    :raises DataError: naming the file whose hash or format does not hold.
    """
    mv = MlflowClient().get_model_version_by_alias(name, alias)
    with tempfile.TemporaryDirectory(prefix="sentio-registry-") as tmp:
        return load_policy(*download_version(name, str(mv.version), Path(tmp)))


def download_version(name: str, version: str, dst: Path) -> tuple[Path, Path]:
    """A registered version's weights and metadata, downloaded into ``dst`` and checked against
    the version's hash tags (kept in the tracking database, apart from the artifact store).

    :raises DataError: naming the file whose hash or layout does not hold.
    """
    mv = MlflowClient().get_model_version(name, version)
    uri = f"models:/{name}/{mv.version}"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    try:
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]["artifacts"]
        weights, metadata = ((local / flavor[k]["path"]).resolve() for k in (WEIGHTS_ARTIFACT, METADATA_ARTIFACT))
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise DataError(f"{uri}/MLmodel", "registered model", f"no {WEIGHTS_ARTIFACT}/{METADATA_ARTIFACT} "
                        f"artifacts ({type(exc).__name__}: {exc})") from None
    for path, tag in ((weights, WEIGHTS_SHA_TAG), (metadata, METADATA_SHA_TAG)):
        if local.resolve() not in path.parents:
            raise DataError(f"{uri}/MLmodel", "registered model", f"artifact path {path} is outside the model")
        expected = mv.tags.get(tag)
        if expected is None or file_sha256(path) != expected:
            raise DataError(f"{uri}/{path.relative_to(local.resolve())}", "content hash", f"not the file registered "
                            f"as {name} version {mv.version} (tag {tag}={expected}); the artifact store was changed")
    return weights, metadata


# --------------------------------------------------------------------------- the trial ledger


def trial_tags(universe: str, bar_frequency: str, variant: str) -> dict[str, str]:
    """Tags of a child run whose ``trials.json`` artifact holds trial records (what :func:`load_trials` finds)."""
    return {TRIALS_TAG: "1", UNIVERSE_TAG: universe, FREQUENCY_TAG: bar_frequency, VARIANT_TAG: variant}


def load_trials(cfg: RegistryConfig, universe: str, bar_frequency: str) -> list[tuple[str, Any]]:
    """The ``trials.json`` of every run in ``registry.experiment`` tagged with this universe and bar
    frequency (deleted runs included: a trial once tried stays counted), oldest first, as
    ``(runs:/RUN_ID/trials.json, parsed JSON)``; ``sentio_core.trials.records_from`` checks them.
    Call after :func:`configure`.

    :raises DataError: a run's artifact that cannot be read or is not JSON (naming the run).
    """
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        return []
    client = MlflowClient()
    query = (f"tags.`{TRIALS_TAG}` = '1' and tags.`{UNIVERSE_TAG}` = '{universe}' "
             f"and tags.`{FREQUENCY_TAG}` = '{bar_frequency}'")
    out: list[tuple[str, Any]] = []
    token = None
    with tempfile.TemporaryDirectory(prefix="sentio-trials-") as tmp:
        while True:
            page = client.search_runs([experiment.experiment_id], filter_string=query, run_view_type=ViewType.ALL,
                                      max_results=1000, order_by=["attributes.start_time ASC"], page_token=token)
            for run in page:
                where = f"runs:/{run.info.run_id}/{TRIALS_ARTIFACT}"
                try:
                    out.append((where, read_json(client.download_artifacts(run.info.run_id, TRIALS_ARTIFACT,
                                                                            str(Path(tmp) / run.info.run_id)))))
                except (OSError, MlflowException, ValueError) as exc:
                    raise DataError(where, "trial records", f"cannot be read ({type(exc).__name__}: {str(exc)[:300]}); "
                                    "the ledger cannot count this run's trials") from None
            token = page.token
            if not token:
                break
    return out


# --------------------------------------------------------------------------- promotion by hand


@reads("registry")
def promote(cfg: RegistryConfig, version: str, by: str, reason: str) -> dict[str, str]:
    """Point ``champion`` at ``version`` by hand (a promotion, or a roll-back to an earlier version).

    The version's files are checked against its hash tags and exported to ``registry.export_dir``
    (all or nothing: on a failure the previous export stays); then the alias moves, the version is
    tagged with who asked, why and when, and a ``manual-promotion`` run records the change.

    :raises ValueError: the version does not exist or never completed its registration.
    """
    if not reason.strip():
        raise ValueError("a promotion by hand needs a reason (--reason)")
    configure(cfg)
    client, name = MlflowClient(), cfg.model_name
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException:
        raise ValueError(f"model {name!r} has no version {version!r} in {mlflow.get_tracking_uri()}") from None
    if REGISTER_KEY_TAG in mv.tags and mv.tags.get(COMPLETE_TAG) != "true":
        raise ValueError(f"{name} version {version} never completed its registration; it cannot be promoted")
    previous = get_alias_version(name, CHAMPION)
    stem = Path(cfg.export_dir) / name
    with tempfile.TemporaryDirectory(prefix="sentio-promote-") as tmp:
        weights, metadata_json = download_version(name, str(version), Path(tmp))
        entry = RegistryEntry(model_name=name, version=str(version), alias=CHAMPION)
        with replacing_export(stem):
            publish(weights, read_json(metadata_json) | {"registry": entry.model_dump(mode="json")}, stem)
            load_policy(stem)  # the written pair reads back, content hash included
            set_alias(name, str(version), CHAMPION)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    for key, value in ((PROMOTED_BY_TAG, by), (PROMOTED_WHY_TAG, reason), (PROMOTED_AT_TAG, when)):
        client.set_model_version_tag(name, str(version), key, _clip(value, MAX_TAG_VAL_LENGTH))
    run_id = log_run(cfg, "manual-promotion", {}, {"kind": "manual-promotion", "model_version": str(version),
                                                    "previous_champion": previous or "none", "promoted_by": by,
                                                    "reason": _clip(reason, MAX_TAG_VAL_LENGTH)})
    return {"model": name, "version": str(version), "previous": previous or "none", "by": by, "at": when,
            "run_id": run_id, "export": str(stem)}
