"""What stages hand each other (paths and fingerprints, never DataFrames) and their cache keys.

A cache key hashes (1) the config sections the stage reads, (2) the fingerprints of its inputs,
(3) the stage's code version: the source of the task module and of the sentio_core modules it
calls. The run id is never part of it, so an unchanged re-run is served from the cache, and a
changed feature setting re-runs features and what follows but not ingest or validation.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from sentio_core.config import Config, stable_hash


@dataclass(frozen=True)
class StageOutput:
    """A stage's output file, its SHA-256 and a small summary (counts, reports) for the run report."""

    stage: str
    path: str
    sha256: str
    meta: dict = field(default_factory=dict)

    def require(self) -> Path:
        """The output path, or a clear error when the work folder was cleaned behind the cache."""
        path = Path(self.path)
        if not path.exists():
            raise FileNotFoundError(
                f"stage '{self.stage}' output {path} is missing (was run.work_dir cleaned?); run again with --refresh"
            )
        return path


def code_version(*modules: ModuleType) -> str:
    """Hash of the source files of ``modules``: any edit to them invalidates the stage's cache."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def _fingerprint(value: Any) -> Any:
    if isinstance(value, StageOutput):
        return value.sha256
    if isinstance(value, Config):
        raise TypeError("pass the config as the 'cfg' parameter")
    if isinstance(value, (list, tuple)):
        return [_fingerprint(v) for v in value]
    if isinstance(value, dict):
        return {k: _fingerprint(v) for k, v in value.items()}
    return value


class StageKey:
    """Cache key and output location of one stage.

    :param stage: stage name (also the output sub-folder of ``run.work_dir``).
    :param sections: config sections the stage reads.
    :param modules: modules whose source is the stage's code version.
    """

    def __init__(self, stage: str, sections: tuple[str, ...], modules: tuple[ModuleType, ...],
                 fold_field: str = "fingerprint"):
        self.stage, self.sections, self.fold_field = stage, sections, fold_field
        self.version = code_version(*modules)

    def compute(self, cfg: Config, *inputs: Any) -> str:
        payload = [cfg.section_hash(*self.sections), _fingerprint(list(inputs)), self.version]
        return f"{self.stage}-{stable_hash(payload)}"

    def checked(self, cfg: Config, key: str) -> str:
        """``key``, unless Prefect holds a cached result for it whose output is gone from
        ``run.work_dir`` (cleaned, or copied from another machine): then a fresh key, so the stage
        runs again instead of returning a result that points at a missing file. Outputs are
        content-addressed, so the rebuilt file lands where the old cache entry points."""
        if any((Path(cfg.run.work_dir) / self.stage).glob(f"{key}.*")):
            return key
        from prefect.settings import get_current_settings

        if (Path(get_current_settings().results.local_storage_path) / key).exists():
            return f"{key}-rebuild-{time.time_ns()}"
        return key

    def cache_key_fn(self, context: Any, parameters: dict[str, Any]) -> str:
        """Prefect ``cache_key_fn``: the config is the ``cfg`` parameter, the rest are inputs."""
        cfg = parameters["cfg"]
        return self.checked(cfg, self.compute(cfg, *[v for k, v in parameters.items() if k != "cfg"]))

    def fold_inputs(self, parameters: dict[str, Any]) -> list[Any]:
        """Inputs of a per-fold task: the fold's fingerprint stands for the whole panel, feature
        table and fold list, so bars appended after the fold's test window change nothing."""
        span = parameters["folds"].meta["folds"][parameters["fold"]]
        rest = [v for k, v in parameters.items() if k not in ("cfg", "panel", "features", "folds")]
        return [span[self.fold_field], *rest]

    def fold_cache_key_fn(self, context: Any, parameters: dict[str, Any]) -> str:
        """Prefect ``cache_key_fn`` of a per-fold task (see :meth:`fold_inputs`)."""
        return self.checked(parameters["cfg"], self.compute(parameters["cfg"], *self.fold_inputs(parameters)))

    def fold_output(self, suffix: str, parameters: dict[str, Any]) -> Path:
        return self.output(parameters["cfg"], suffix, *self.fold_inputs(parameters))

    def output(self, cfg: Config, suffix: str, *inputs: Any) -> Path:
        """Content-addressed output path: ``work_dir/<stage>/<key>.<suffix>``."""
        return Path(cfg.run.work_dir) / self.stage / f"{self.compute(cfg, *inputs)}.{suffix}"


def fold_market(cfg: Config, panel: StageOutput, features: StageOutput, folds: StageOutput, regimes: StageOutput,
                fold: int):
    """Read the stage outputs a fold needs and build its market arrays (and return its span)."""
    from sentio_core import io, stages
    from sentio_core.data import BarFrequency

    span = folds.meta["folds"][fold]
    market = stages.fold_market(cfg, io.read_parquet(panel.require()), io.read_parquet(features.require()),
                                io.read_parquet(regimes.require()), span, BarFrequency(**panel.meta["frequency"]))
    return market, span


def project_code_version() -> str:
    """Hash of every source file of the library, tasks and flows (tagged on registered models)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(p for d in ("sentio_core", "tasks", "flows") for p in (root / d).glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
