"""Register: the promotion gate, MLflow runs (parent + one child per fold and algorithm), the model
version with its alias, and the export for the trading application (champions only).

Nothing here runs unless every fold trained and backtested: the flow stops before this task when a
fold fails, so a failed run leaves no registered model and no export.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

from prefect import task

from sentio_core import export, io, promotion, registry
from sentio_core.config import Config, flatten, stable_hash
from tasks.common import StageKey, StageOutput, project_code_version

KEY = StageKey("register", ("seed", "universe", "env", "masks", "costs", "train", "promotion", "registry"),
               (promotion, registry, export, io, sys.modules[__name__]))
PRIMARY = promotion.PRIMARY


def _child_metrics(name: str, fold_metrics: dict[str, dict[str, float]], training: dict) -> dict[str, float]:
    out = {k: float(v) for k, v in fold_metrics[name].items()}
    for base in ("flat", "buy_hold_long", "buy_hold_underlying"):
        out.update({f"{base}.{k}": float(v) for k, v in fold_metrics[base].items() if k in ("sharpe", "total_return", "max_drawdown")})
    out.update({f"train.{k}": float(training[k]) for k in ("timesteps", "episodes", "seconds")})
    return out


def export_metadata(cfg: Config, spec: dict, gate: promotion.GateResult, backtests: list[StageOutput],
                    data: dict, code_version: str, version: str) -> dict:
    """The export's metadata: model type, actions, observation spec, config, out-of-sample metrics."""
    return {
        **spec, "model_type": PRIMARY, "model_name": cfg.registry.model_name, "registry_version": version,
        "alias": gate.alias, "config": cfg.model_dump(mode="json"), "config_hash": stable_hash(cfg.model_dump(mode="json")),
        "out_of_sample": {"folds": [{"fold": i, "test_start": b.meta["test_start"], "test_end": b.meta["test_end"],
                                     "metrics": b.meta["metrics"]} for i, b in enumerate(backtests)],
                          "summary": gate.summary, "gate": gate.reasons},
        "data": data, "code_version": code_version, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _key(context, parameters) -> str:
    """The models, their backtests and the registry; not the data fingerprint, so bars appended
    after the last test window (which change no model) do not register the same models again."""
    cfg = parameters["cfg"]
    return KEY.checked(cfg, KEY.compute(cfg, *[v for k, v in parameters.items() if k not in ("cfg", "manifest")]))


@task(name="register", cache_key_fn=_key, persist_result=True, retries=2, retry_delay_seconds=5)
def register(cfg: Config, manifest: StageOutput, folds: StageOutput, trained: list[StageOutput],
             backtests: list[StageOutput], tracking_uri: str) -> StageOutput:
    """Gate, log, register and (champion only) export; returns the decision and the MLflow ids.

    :param trained: per fold, one output per ``train.algorithms`` entry, in that order.
    :param backtests: one per fold, in fold order.
    """
    gate = promotion.promotion_gate([b.meta["metrics"] for b in backtests], cfg.promotion)
    code = project_code_version()
    spans = folds.meta["folds"]
    data = {"fingerprint": manifest.sha256, "files": manifest.meta["files"],
            "first_train": spans[0]["train_start"], "last_test": spans[-1]["test_end"]}
    config_hash = stable_hash(cfg.model_dump(mode="json"))
    tags = {"data_fingerprint": manifest.sha256, "config_hash": config_hash, "code_version": code}
    registry.configure(cfg.registry)
    run_name = f"retrain-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    params = flatten(cfg)
    algos = list(cfg.train.algorithms)
    by_fold = {(i // len(algos), t.meta["algorithm"]): t for i, t in enumerate(trained)}
    with registry.parent_run(cfg.registry, run_name, params, {**tags, "gate": gate.alias}) as parent_id:
        children = {}
        for i, b in enumerate(backtests):
            for algo in algos:
                t = by_fold[(i, algo)]
                children[f"{algo}-fold-{i}"] = registry.log_child_run(
                    parent_id, f"{algo}-fold-{i}", params, _child_metrics(algo, b.meta["metrics"], t.meta),
                    [Path(b.meta["plot"]), Path(b.meta["trades"]), Path(b.meta["paths"])],
                    {**tags, "fold": str(i), "algorithm": algo})
        registry.log_metrics(parent_id, {f"{name}.{k}": v for name, s in gate.summary.items() for k, v in s.items()})
        last = by_fold[(len(backtests) - 1, PRIMARY)]
        version = registry.register_policy(Path(last.path), Path(last.meta["metadata_path"]), cfg.registry.model_name,
                                           parent_id, tags)
    registry.set_alias(cfg.registry.model_name, version, gate.alias)
    exported = None
    if gate.passed:
        spec = io.read_json(last.meta["metadata_path"])
        meta = export_metadata(cfg, spec, gate, backtests, data, code, version)
        stem = Path(cfg.registry.export_dir) / cfg.registry.model_name
        exported = [str(p) for p in export.publish(Path(last.path), meta, stem)]
    out = KEY.output(cfg, "json", folds, trained, backtests, tracking_uri)
    record = {"gate": gate.to_dict(), "version": version, "alias": gate.alias, "parent_run_id": parent_id,
              "child_run_ids": children, "export": exported, "tracking_uri": tracking_uri,
              "experiment_id": registry.experiment_id(cfg.registry), **tags}
    io.write_json(record, out)
    return StageOutput("register", str(out), io.file_sha256(out), record)
