"""Register: the promotion gate, MLflow runs (parent + one child per fold and algorithm), the model
version with its alias, and the export for the trading application (champions only).

Nothing here runs unless every fold trained and backtested: the flow stops before this task when a
fold fails, so a failed run leaves no registered model and no export.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.runtime import flow_run

from sentio_core import files, registry
from sentio_core.codeversion import project_version
from sentio_core.config import Config
from sentio_core.export import export_paths, load_policy, publish
from sentio_core.metadata import ExportMetadata, RegistryEntry, build_metadata
from sentio_core.promotion import PRIMARY, GateResult
from sentio_core.registration import plan_registration
from tasks.common import RESULTS, StageKey, StageOutput, releasing

if TYPE_CHECKING:
    from tasks.backtest import BacktestOutput
    from tasks.folds import FoldsOutput
    from tasks.ingest import ManifestOutput
    from tasks.train import TrainOutput

KEY = StageKey("register", __name__, plan_registration)


class RegisterOutput(StageOutput):
    gate: GateResult
    version: str
    alias: str
    parent_run_id: str
    child_run_ids: dict[str, str]
    export: list[str] | None
    tracking_uri: str
    experiment_id: str | None
    data_fingerprint: str
    config_hash: str
    code_version: str


def _key(context, parameters) -> str:
    """The models, their backtests and the registry; not the data fingerprint, so bars appended
    after the last test window (which change no model) do not register the same models again."""
    cfg = parameters["cfg"]
    return KEY.checked(cfg, KEY.compute(cfg, *[v for k, v in parameters.items() if k not in ("cfg", "manifest")]))


@task(name="register", cache_key_fn=_key, **RESULTS, retries=2, retry_delay_seconds=5)
@releasing
def register(cfg: Config, manifest: ManifestOutput, folds: FoldsOutput, trained: list[TrainOutput],
             backtests: list[BacktestOutput], tracking_uri: str) -> RegisterOutput:
    """Gate, log, register and (champion only) export; returns the decision and the MLflow ids.

    :param trained: every fold's trainings (each record names its fold and algorithm).
    :param backtests: one per fold, in fold order.
    """
    by_fold = {(t.fold, t.algorithm): t for t in trained}
    code = project_version()
    plan = plan_registration(cfg, manifest.manifest, manifest.sha256, folds.folds, [b.result for b in backtests],
                             {k: t.training for k, t in by_fold.items()}, code)
    out = KEY.output(cfg, "json", folds, trained, backtests, tracking_uri)
    # the registered model carries the evidence: its metadata is rebuilt with the out-of-sample
    # results, the data provenance and this run's config before anything is logged
    last = by_fold[(len(backtests) - 1, PRIMARY)]
    trained_md = ExportMetadata.model_validate(files.read_json(last.metadata_path))
    metadata = build_metadata(trained_md.header(), trained_md.policy, trained_md.regime_model, trained_md.training,
                              cfg, code, plan.out_of_sample, plan.data)
    model_pth, model_md = publish(Path(last.path), metadata, str(out)[: -len(".json")] + "-model")
    registry.configure(cfg.registry)
    registry.reap_interrupted(cfg.registry)  # runs and versions a killed registration left behind
    # this registration: these inputs in this flow run (a task retry shares it, another run does not)
    name, key = cfg.registry.model_name, f"{out.stem}/{flow_run.get_id() or 'outside-a-flow'}"
    earlier = registry.version_for(name, key)  # a retry of a registration that completed its version
    run_name = f"retrain-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    with registry.parent_run(cfg.registry, run_name, plan.params, {**plan.tags, "gate": plan.gate.alias}) as parent_id:
        children = {}
        for child in plan.children:
            b = backtests[child.fold]
            children[child.name] = registry.log_child_run(
                parent_id, child.name, plan.params, child.metrics,
                [Path(b.plot_file), Path(b.trades_file), Path(b.paths_file)],
                {**plan.tags, "fold": str(child.fold), "algorithm": child.algorithm})
        registry.log_metrics(parent_id, plan.parent_metrics)
        version = earlier or registry.register_policy(model_pth, model_md, name, parent_id,
                                                      {**plan.tags, registry.REGISTER_KEY_TAG: key})
        stem = Path(cfg.registry.export_dir) / name
        # all or nothing, one registration of this export folder at a time: the export is written and
        # verified before the version is complete and aliased; a failure puts the previous pair back
        with files.exclusive(stem.parent):
            previous = {p: p.read_bytes() for p in export_paths(stem) if p.is_file()}
            try:
                exported = None
                if plan.gate.passed:
                    entry = RegistryEntry(model_name=name, version=version, alias=plan.gate.alias)
                    exported = [str(p) for p in publish(Path(last.path), metadata.model_copy(update={"registry": entry}),
                                                        stem)]
                    load_policy(stem)  # the written pair reads back, content hash included
                registry.complete_version(name, version)
                registry.set_alias(name, version, plan.gate.alias)
            except Exception:
                if exported and previous:
                    files.write_together(previous)
                elif exported:
                    for p in export_paths(stem):
                        p.unlink(missing_ok=True)
                if earlier is None:
                    registry.delete_version(name, version)
                raise
    experiment = registry.experiment_id(cfg.registry)
    record = {"gate": plan.gate.to_dict(), "version": version, "alias": plan.gate.alias, "parent_run_id": parent_id,
              "child_run_ids": children, "export": exported, "tracking_uri": tracking_uri,
              "experiment_id": experiment, **plan.tags}
    files.write_json(record, out)
    return RegisterOutput(stage="register", path=str(out), sha256=files.file_sha256(out), gate=plan.gate,
                          version=version, alias=plan.gate.alias, parent_run_id=parent_id, child_run_ids=children,
                          export=exported, tracking_uri=tracking_uri, experiment_id=experiment, **plan.tags)
