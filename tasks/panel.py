"""Panel: type the validated bars and align the symbols on common timestamps (drops are reported)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task

from sentio_core import files
from sentio_core.config import Config
from sentio_core.data import AlignmentReport, build_panel
from sentio_core.frequency import BarFrequency
from tasks.common import RESULTS, StageKey, StageOutput, releasing

if TYPE_CHECKING:
    from tasks.ingest import ManifestOutput
    from tasks.validate import ValidationOutput

KEY = StageKey("panel", __name__, build_panel)


class PanelOutput(StageOutput):
    """The aligned long panel (Parquet), what alignment dropped, and the bar spacing."""

    alignment: AlignmentReport
    frequency: BarFrequency


@task(name="panel", cache_key_fn=KEY.cache_key_fn, **RESULTS)
@releasing
def panel(cfg: Config, manifest: ManifestOutput, validated: ValidationOutput) -> PanelOutput:
    """Write the aligned long panel; the alignment report and bar spacing travel in the record."""
    bars, report, freq = build_panel(cfg, manifest.manifest)
    out = KEY.output(cfg, "parquet", manifest, validated)
    files.write_parquet(bars, out)
    return PanelOutput(stage="panel", path=str(out), sha256=files.file_sha256(out), alignment=report, frequency=freq)
