"""Ingest: find the configured symbols' bar files and fingerprint them (SHA-256)."""

from __future__ import annotations

from prefect import task

from sentio_core import files
from sentio_core.config import Config
from sentio_core.data import Manifest, build_manifest
from tasks.common import RESULTS, StageKey, StageOutput

KEY = StageKey("ingest", __name__, build_manifest)


class ManifestOutput(StageOutput):
    """The manifest file; its SHA-256 is the run's data fingerprint (``manifest.fingerprint()``)."""

    manifest: Manifest


def _key(context, parameters) -> str:
    cfg = parameters["cfg"]
    return KEY.checked(cfg, KEY.compute(cfg, build_manifest(cfg).model_dump(mode="json")["files"]))


@task(name="ingest", cache_key_fn=_key, **RESULTS, retries=2, retry_delay_seconds=2)
def ingest(cfg: Config) -> ManifestOutput:
    """Write the manifest of source files; its hash is the run's data fingerprint."""
    manifest = build_manifest(cfg)
    out = KEY.output(cfg, "json", manifest.model_dump(mode="json")["files"])
    files.write_text(manifest.to_json(), out)
    return ManifestOutput(stage="ingest", path=str(out), sha256=files.file_sha256(out), manifest=manifest)
