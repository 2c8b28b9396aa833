"""Re-score the current champion (the export in ``registry.export_dir``) on the newest bars,
before anything is retrained: how the model in production did on bars it never trained on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task

from sentio_core import files, registry
from sentio_core.export import load_policy, read_metadata
from sentio_core.files import DataError
from sentio_core.policies import pin_threads
from sentio_core.rescore import champion_path
from sentio_core.rescore import rescore as rescore_policy
from tasks.common import RESULTS, StageKey, StageOutput, releasing

if TYPE_CHECKING:
    from pathlib import Path

    from tasks.features import FeaturesOutput
    from tasks.ingest import ManifestOutput
    from tasks.panel import PanelOutput

KEY = StageKey("rescore", __name__, champion_path, rescore_policy)


class RescoreOutput(StageOutput):
    status: str  # scored, no champion, failed
    summary_line: str
    mlflow_run_id: str | None = None
    sharpe: float | None = None
    bars: int | None = None
    version: str | None = None  # the champion's registered version

    @property
    def champion_present(self) -> bool:
        """Whether a champion was scored; a failed re-score counts as no champion."""
        return self.status == "scored"


def _key(context, parameters) -> str:
    """The data and the champion's weights: a new champion or new bars re-score."""
    cfg = parameters["cfg"]
    champion = _champion_sha256(champion_path(cfg))
    return KEY.checked(cfg, KEY.compute(cfg, *[v for k, v in parameters.items() if k != "cfg"], champion))


def _champion_sha256(pth: Path) -> str:
    """The exported champion's weights fingerprint, or ``none``: a new champion re-scores."""
    return files.file_sha256(pth) if pth.exists() else "none"


def _unscored(out: Path, status: str, line: str, run_id: str | None = None) -> RescoreOutput:
    files.write_json({"status": status, "summary": line}, out)
    return RescoreOutput(stage="rescore", path=str(out), sha256=files.file_sha256(out), status=status,
                         summary_line=line, mlflow_run_id=run_id)


@task(name="rescore-champion", cache_key_fn=_key, **RESULTS, retries=2, retry_delay_seconds=5)
@releasing
def rescore(cfg, manifest: ManifestOutput, panel: PanelOutput, features: FeaturesOutput) -> RescoreOutput:
    """Score the exported champion, if any, from its test window to the newest bar; log to MLflow.

    A champion that cannot be scored (an earlier export format, a damaged file, a test window
    that is not in today's data) does not stop the night: the failure is reported here, in the
    run summary and as a FAILED MLflow run, and the champion counts as absent.
    """
    pth = champion_path(cfg)
    out = KEY.output(cfg, "json", manifest, panel, features, _champion_sha256(pth))
    if not pth.exists():
        return _unscored(out, "no champion", f"- no champion exported yet ({pth})")
    try:
        pin_threads(cfg.train)
        policy = load_policy(pth)
        metadata = read_metadata(policy, pth)
        result = rescore_policy(metadata, policy.act, files.scan_parquet(panel.require()),
                                files.scan_parquet(features.require()), panel.frequency)
    except (DataError, ValueError, KeyError, IndexError) as exc:  # the champion, not the run, is at fault
        reason = f"{type(exc).__name__}: {exc}"
        run_id = registry.log_run(cfg.registry, "champion-rescore", {},
                                  {"kind": "champion-rescore", "champion": str(pth), "error": reason}, status="FAILED")
        return _unscored(out, "failed", f"- the exported champion {pth} could not be re-scored ({reason}); "
                         "it is treated as absent", run_id)
    files.write_json(result.to_dict(), out)
    version = metadata.registry.version if metadata.registry else "none (not registered)"
    tags = {"kind": "champion-rescore", "model_version": version, "first": result.first, "last": result.last}
    rid = registry.log_run(cfg.registry, "champion-rescore", result.mlflow_metrics(), tags)
    return RescoreOutput(stage="rescore", path=str(out), sha256=files.file_sha256(out), status="scored",
                         summary_line=result.summary_line(), mlflow_run_id=rid,
                         sharpe=result.metrics["champion"]["sharpe"], bars=result.bars, version=version)
