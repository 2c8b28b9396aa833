"""Register: the promotion gate, MLflow runs (parent + one child per fold and algorithm), the model
version with its alias, and the export for the trading application (champions only).

Nothing here runs unless every fold trained and backtested: the flow stops before this task when a
fold fails, so a failed run leaves no registered model and no export.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.runtime import flow_run

from sentio_core import files, plots, registry
from sentio_core.codeversion import project_version
from sentio_core.config import Config
from sentio_core.export import load_policy, publish, replacing_export
from sentio_core.metadata import ExportMetadata, RegistryEntry, build_metadata
from sentio_core.promotion import PRIMARY, ChampionReturns, GateResult
from sentio_core.registration import (
    evidence_curves,
    gate_inputs,
    gate_record,
    plan_registration,
    run_tags,
    run_trials,
    variant_label,
)
from sentio_core.trials import TrialRecord, frequency_label, records_from, relevant, universe_label
from tasks.common import RESULTS, StageKey, StageOutput, releasing

if TYPE_CHECKING:
    from tasks.backtest import BacktestOutput
    from tasks.folds import FoldsOutput
    from tasks.ingest import ManifestOutput
    from tasks.panel import PanelOutput
    from tasks.rescore import RescoreOutput
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
    n_trials: int
    regimes: dict[str, dict[str, float]] = {}  # strategy -> results by filtered regime in force, pooled over folds
    evidence_plot: str  # PNG: the candidate's out-of-sample equity, its bootstrap band, the champion's and the baselines'


#: Inputs that do not key the registration: bars appended after the last test window (a new
#: manifest, panel and champion re-score) change no model, so the same models are not registered again.
UNKEYED = ("cfg", "manifest", "panel", "rescored")


def _key(context, parameters) -> str:
    """The models, their backtests and the registry."""
    cfg = parameters["cfg"]
    return KEY.checked(cfg, KEY.compute(cfg, *[v for k, v in parameters.items() if k not in UNKEYED]))


def _champion(rescored: RescoreOutput) -> ChampionReturns:
    """The champion's bar returns on the bars after its training window and purge (its re-score)."""
    if not rescored.champion_present:
        return ChampionReturns(status=rescored.status)
    record = files.read_json(rescored.require())
    return ChampionReturns(status=rescored.status, timestamps=record["timestamps"], returns=record["returns"],
                           version=rescored.version)


def _ledger(cfg: Config, universe: str, frequency: str) -> list[TrialRecord]:
    """Every trial record MLflow holds for this experiment, universe and bar frequency."""
    found = [r for where, rows in registry.load_trials(cfg.registry, universe, frequency) for r in records_from(where, rows)]
    return relevant(found, cfg.registry.experiment, universe, frequency)


@task(name="register", cache_key_fn=_key, **RESULTS, retries=2, retry_delay_seconds=5)
@releasing
def register(cfg: Config, manifest: ManifestOutput, panel: PanelOutput, folds: FoldsOutput, trained: list[TrainOutput],
             backtests: list[BacktestOutput], rescored: RescoreOutput, tracking_uri: str) -> RegisterOutput:
    """Count the trials, gate, log, register and (champion only) export; returns the decision and the MLflow ids.

    :param trained: every fold's trainings (each record names its fold and algorithm).
    :param backtests: one per fold, in fold order.
    :param rescored: the current champion on the bars after its training window (the gate's comparison).
    """
    by_fold = {(t.fold, t.algorithm): t for t in trained}
    trainings = {k: t.training for k, t in by_fold.items()}
    code = project_version()
    out = KEY.output(cfg, "json", folds, trained, backtests, tracking_uri)
    tags = run_tags(cfg, manifest.sha256, code)
    universe = universe_label(cfg.universe.underlying, cfg.universe.long, cfg.universe.short, cfg.universe.synthesize)
    frequency = frequency_label(panel.frequency.bar_minutes)
    returns = [b.returns() for b in backtests]
    mine = run_trials(cfg, returns, trainings, tags, universe, frequency, {(t.fold, t.algorithm): t.policy_hashes() for t in trained})
    registry.configure(cfg.registry)
    # every relevant trial: this experiment, universe and bar frequency, across nights and data updates
    ledger = _ledger(cfg, universe, frequency) + [r for rs in mine.values() for r in rs]
    evidence = gate_inputs(cfg, returns, ledger, _champion(rescored), panel.frequency.periods_per_year)
    plan = plan_registration(cfg, manifest.manifest, manifest.sha256, folds.folds, [b.result for b in backtests],
                             trainings, code, evidence)
    stem = str(out)[: -len(".json")]
    curves, band = evidence_curves(evidence, cfg)
    plot = files.write_bytes(plots.evidence_png(
        f"out of sample, {len(backtests)} test windows concatenated, after costs ({plan.gate.alias})",
        list(evidence.timestamps), curves, band, f"{PRIMARY}: 90% stationary-bootstrap band"), f"{stem}-evidence.png")
    gate_file = files.write_json(gate_record(plan.gate), Path(f"{stem}-gate") / "gate.json")
    # the registered model carries the evidence: its metadata is rebuilt with the out-of-sample
    # results, the data provenance and this run's config before anything is logged
    last = by_fold[(len(backtests) - 1, PRIMARY)]
    trained_md = ExportMetadata.model_validate(files.read_json(last.metadata_path))
    metadata = build_metadata(trained_md.header(), trained_md.policy, trained_md.regime_model, trained_md.training,
                              cfg, code, plan.out_of_sample, plan.data)
    model_pth, model_md = publish(Path(last.path), metadata, str(out)[: -len(".json")] + "-model")
    registry.reap_interrupted(cfg.registry)  # runs and versions a killed registration left behind
    # this registration: these inputs in this flow run (a task retry shares it, another run does not)
    name, key = cfg.registry.model_name, f"{out.stem}/{flow_run.get_id() or 'outside-a-flow'}"
    earlier = registry.version_for(name, key)  # a retry of a registration that completed its version
    run_name = f"retrain-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    with registry.parent_run(cfg.registry, run_name, plan.params, {**plan.tags, "gate": plan.gate.alias}) as parent_id:
        children = {}
        trial_tags = registry.trial_tags(universe, frequency, variant_label(cfg.train))
        for child in plan.children:
            b = backtests[child.fold]
            # the child's trials (one per seed) with their out-of-sample returns: the ledger's records
            trials_file = Path(f"{stem}-trials") / child.name / registry.TRIALS_ARTIFACT
            files.write_json([r.model_dump(mode="json") for r in mine[(child.fold, child.algorithm)]], trials_file)
            children[child.name] = registry.log_child_run(
                parent_id, child.name, plan.params, child.metrics,
                [Path(b.plot_file), Path(b.trades_file), Path(b.paths_file), trials_file],
                {**plan.tags, **trial_tags, "fold": str(child.fold), "algorithm": child.algorithm})
        registry.log_metrics(parent_id, plan.parent_metrics)
        registry.log_artifacts(parent_id, [plot, gate_file])
        version = earlier or registry.register_policy(model_pth, model_md, name, parent_id,
                                                      {**plan.tags, registry.REGISTER_KEY_TAG: key})
        export_stem = Path(cfg.registry.export_dir) / name
        # all or nothing, one registration of this export folder at a time: the export is written and
        # verified before the version is complete and aliased; a failure puts the previous pair back
        try:
            with replacing_export(export_stem):
                exported = None
                if plan.gate.passed:
                    entry = RegistryEntry(model_name=name, version=version, alias=plan.gate.alias)
                    exported = [str(p) for p in publish(Path(last.path), metadata.model_copy(update={"registry": entry}),
                                                        export_stem)]
                    load_policy(export_stem)  # the written pair reads back, content hash included
                registry.complete_version(name, version)
                registry.set_alias(name, version, plan.gate.alias)
        except Exception:
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
                          export=exported, tracking_uri=tracking_uri, experiment_id=experiment,
                          n_trials=plan.gate.evidence["deflated"]["n_trials"], evidence_plot=str(plot), regimes=plan.regimes,
                          **plan.tags)
