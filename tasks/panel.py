"""Panel: type the validated bars and align the symbols on common timestamps (drops are reported)."""

from __future__ import annotations

import sys
from dataclasses import asdict

from prefect import task

from sentio_core import data, io, stages
from sentio_core.config import Config
from tasks.common import StageKey, StageOutput

KEY = StageKey("panel", ("data", "universe"), (stages, data, io, sys.modules[__name__]))


@task(name="panel", cache_key_fn=KEY.cache_key_fn, persist_result=True)
def panel(cfg: Config, manifest: StageOutput, validated: StageOutput) -> StageOutput:
    """Write the aligned long panel; the alignment report and bar spacing travel in ``meta``."""
    bars, report, freq = stages.panel(cfg, io.read_json(manifest.require()))
    out = KEY.output(cfg, "parquet", manifest, validated)
    io.write_parquet(bars, out)
    meta = {"alignment": report.to_dict(), "alignment_lines": report.lines(), "frequency": asdict(freq)}
    return StageOutput("panel", str(out), io.file_sha256(out), meta)
