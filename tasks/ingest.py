"""Ingest: find the configured symbols' bar files and fingerprint them (SHA-256)."""

from __future__ import annotations

import sys

from prefect import task

from sentio_core import io, stages
from sentio_core.config import Config
from tasks.common import StageKey, StageOutput

KEY = StageKey("ingest", ("data", "universe"), (stages, io, sys.modules[__name__]))


def _key(context, parameters) -> str:
    cfg = parameters["cfg"]
    return KEY.checked(cfg, KEY.compute(cfg, stages.manifest(cfg)["files"]))


@task(name="ingest", cache_key_fn=_key, persist_result=True, retries=2, retry_delay_seconds=2)
def ingest(cfg: Config) -> StageOutput:
    """Write the manifest of source files; its hash is the run's data fingerprint."""
    man = stages.manifest(cfg)
    out = KEY.output(cfg, "json", man["files"])
    io.write_json(man, out)
    return StageOutput("ingest", str(out), io.file_sha256(out), {"files": man["files"]})
