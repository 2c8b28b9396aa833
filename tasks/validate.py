"""Validate: the great-expectations gate; a failure stops the run and leaves its report as an artifact."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task
from prefect.artifacts import create_markdown_artifact

from sentio_core import files
from sentio_core.config import Config
from sentio_core.validation import DataValidationError, validate_manifest
from tasks.common import RESULTS, StageKey, StageOutput, releasing

if TYPE_CHECKING:
    from tasks.ingest import ManifestOutput

KEY = StageKey("validate", __name__, validate_manifest)


class ValidationOutput(StageOutput):
    files: int  # files (or symbols of a multi-symbol file) that passed


@task(name="validate", cache_key_fn=KEY.cache_key_fn, **RESULTS)
@releasing
def validate(cfg: Config, manifest: ManifestOutput) -> ValidationOutput:
    """Run every rule over every source file; raise :class:`DataValidationError` with the report when any fails."""
    report = validate_manifest(cfg, manifest.manifest)
    if not report.ok:
        create_markdown_artifact(report.to_markdown(), key="sentio-validation", description="Data validation report (failed)")
        raise DataValidationError(report, cfg.data.path)
    out = KEY.output(cfg, "json", manifest)
    files.write_json(report.to_dict(), out)
    return ValidationOutput(stage="validate", path=str(out), sha256=files.file_sha256(out), files=len(report.files))
