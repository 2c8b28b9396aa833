"""Validate: the great-expectations gate; a failure stops the run and leaves its report as an artifact."""

from __future__ import annotations

import sys

from prefect import task
from prefect.artifacts import create_markdown_artifact

from sentio_core import io, stages, validation
from sentio_core.config import Config
from tasks.common import StageKey, StageOutput

KEY = StageKey("validate", ("data", "validation"), (stages, validation, io, sys.modules[__name__]))


class DataValidationError(RuntimeError):
    """The data failed the validation gate; the message is the full report."""


@task(name="validate", cache_key_fn=KEY.cache_key_fn, persist_result=True)
def validate(cfg: Config, manifest: StageOutput) -> StageOutput:
    """Run every rule over every source file; raise with the report when any rule fails."""
    report = stages.validate(cfg, io.read_json(manifest.require()))
    if not report.ok:
        create_markdown_artifact(report.to_markdown(), key="sentio-validation", description="Data validation report (failed)")
        raise DataValidationError(report.to_text())
    out = KEY.output(cfg, "json", manifest)
    io.write_json(report.to_dict(), out)
    return StageOutput("validate", str(out), io.file_sha256(out), {"files": len(report.files)})
