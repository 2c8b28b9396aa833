"""What every stage shares: its output record's base and its cache key.

A cache key hashes (1) the config sections the stage reads, as its library functions declare them
(``@reads(...)`` next to each function), (2) the fingerprints of its inputs, (3) the stage's code
version, derived from the code (:mod:`sentio_core.codeversion`): the syntax trees of the task
module and of every project module it imports, transitively, and the locked versions of the
libraries they import. The run id is never part of it, so an unchanged re-run is served from the
cache, and an edit re-runs exactly the stages whose code it touches.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from prefect.serializers import Serializer
from prefect.settings import get_current_settings
from pydantic import BaseModel, ConfigDict

from sentio_core.codeversion import CodeVersion, code_version
from sentio_core.config import Config, sections_of, stable_hash
from sentio_core.memory import release

RECORD_SERIALIZER = "sentio-record"
STAGE_MODULES = ("tasks.ingest", "tasks.validate", "tasks.panel", "tasks.features", "tasks.folds", "tasks.regimes",
                 "tasks.train", "tasks.backtest", "tasks.rescore", "tasks.drift", "tasks.register", "tasks.cpcv")
_LOG = logging.getLogger("sentio.cache")


def releasing(body: Callable[..., Any]) -> Callable[..., Any]:
    """A stage body that hands the memory it freed back to the operating system when it returns or
    fails (:func:`sentio_core.memory.release`): the next stage, or the one running beside it in
    another thread, then starts from what is really held, not from the allocators' leftovers."""

    @functools.wraps(body)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return body(*args, **kwargs)
        finally:
            release()

    return run


class StageOutput(BaseModel):
    """A stage's output file and its SHA-256; each stage's record adds its typed summary fields.

    Every subclass is registered by name, so a cached record is read back as JSON into one of
    these classes and nothing else (:class:`RecordSerializer`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    registry: ClassVar[dict[str, type[StageOutput]]] = {}

    stage: str
    path: str
    sha256: str

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if StageOutput.registry.setdefault(cls.__name__, cls) is not cls:
            raise TypeError(f"two stage records are named {cls.__name__}")

    def require(self) -> Path:
        """The output path, or a clear error when the work folder was cleaned behind the cache."""
        path = Path(self.path)
        if not path.exists():
            raise FileNotFoundError(
                f"stage '{self.stage}' output {path} is missing (was run.work_dir cleaned?); run again with --refresh"
            )
        return path


class RecordSerializer(Serializer):
    """Prefect serializer of stage records: schema-validated JSON into a registered
    :class:`StageOutput` class, chosen by name from that registry; nothing is imported or
    unpickled, whatever the stored bytes say."""

    type: Literal["sentio-record"] = RECORD_SERIALIZER

    def dumps(self, obj: Any) -> bytes:
        if not isinstance(obj, StageOutput):
            raise TypeError(f"only stage records are cached, not {type(obj).__name__}")
        return json.dumps({"record": type(obj).__name__, "data": obj.model_dump(mode="json")}).encode()

    def loads(self, blob: bytes) -> StageOutput:
        doc = json.loads(blob)
        name = doc.get("record") if isinstance(doc, dict) else None
        if name not in StageOutput.registry:  # the stage modules define the records: import Sentio's own, no other
            for module in STAGE_MODULES:
                importlib.import_module(module)
        cls = StageOutput.registry.get(name)
        if cls is None:
            raise ValueError(f"not a Sentio stage record: {str(doc)[:80]!r}")
        return cls.model_validate(doc["data"])


def storage_root() -> Path:
    """Where the stage records are persisted: Prefect's local storage path (``PREFECT_HOME/storage``),
    resolved as Prefect resolves it; the tasks pin their result storage to this folder, so no
    setting or server-side default can make Prefect read them from elsewhere."""
    return Path(get_current_settings().results.local_storage_path).expanduser().resolve()


def _stored_serializer(content: bytes) -> str | None:
    """The serializer Prefect would use for a stored result, read with Prefect's own parser (which
    also honours legacy top-level keys); None when the file is not a plain result record."""
    from prefect._internal.result_records import ResultRecord

    try:
        doc = json.loads(content)
        if not isinstance(doc, dict) or set(doc) - {"metadata", "result"}:
            return None  # legacy top-level keys ("serializer", "data", ...) would override the metadata
        return ResultRecord.model_validate_json(content).metadata.serializer.type
    except Exception:  # not JSON, not a record, an unknown serializer type
        return None


def quarantine_untrusted(path: Path) -> bool:
    """Move a stored result that is not a Sentio stage record out of Prefect's way, before Prefect
    reads it. Prefect deserialises a stored result with the serializer the file itself names, so a
    replaced file could name cloudpickle and run code; such a file is renamed to
    ``NAME.untrusted-<ns>`` (kept for inspection), a warning names it, and the stage runs again.

    :returns: True when ``path`` was quarantined.
    """
    if not path.is_file():
        return False
    serializer = _stored_serializer(path.read_bytes())
    if serializer == RECORD_SERIALIZER:
        return False
    target = path.with_name(f"{path.name}.untrusted-{time.time_ns()}")
    path.rename(target)
    _LOG.warning("%s: [stage cache] not a Sentio stage record (serializer %r): not read, moved to %s; the stage "
                 "runs again", path, serializer, target.name)
    return True


# the task options of every stage: persisted, as Sentio's JSON records, pinned to storage_root()
RESULTS = {"persist_result": True, "result_serializer": RecordSerializer(), "result_storage": storage_root()}


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
    :param module: the task module's ``__name__``: its code version is derived from it.
    :param functions: the library functions the stage calls; the config sections they declare
        with ``@reads`` are the sections the key hashes.
    :param fold_field: for per-fold stages, the :class:`~sentio_core.folds.FoldSpan` fingerprint
        that stands for the panel, features and folds (``fingerprint`` or ``panel_fingerprint``).
    """

    def __init__(self, stage: str, module: str, *functions: Callable[..., Any], fold_field: str = "fingerprint"):
        sections: list[str] = []
        schema: list[str] = []
        for fn in functions:
            read, runs = sections_of(fn)
            sections += [s for s in read if s not in sections]
            schema += [s for s in (*read, *runs) if s not in schema]
        self.stage, self.module, self.fold_field = stage, module, fold_field
        self.sections = tuple(sections)  # their values enter the key
        self.schema = tuple(schema)  # their schema classes enter the code version (the read sections included)
        self.code: CodeVersion = code_version(module, self.schema)
        self.version = self.code.digest

    def compute(self, cfg: Config, *inputs: Any) -> str:
        payload = [cfg.section_hash(*self.sections), _fingerprint(list(inputs)), self.version]
        return f"{self.stage}-{stable_hash(payload)}"

    def checked(self, cfg: Config, key: str) -> str:
        """``key``, unless Prefect holds a cached result for it whose output is gone from
        ``run.work_dir`` (cleaned, or copied from another machine): then a fresh key, so the stage
        runs again instead of returning a result that points at a missing file. Outputs are
        content-addressed, so the rebuilt file lands where the old cache entry points. A stored
        result that is not a Sentio record is quarantined first (:func:`quarantine_untrusted`)."""
        stored = storage_root() / key
        quarantine_untrusted(stored)
        if any((Path(cfg.run.work_dir) / self.stage).glob(f"{key}.*")):
            return key
        if stored.exists():
            return f"{key}-rebuild-{time.time_ns()}"
        return key

    def cache_key_fn(self, context: Any, parameters: dict[str, Any]) -> str:
        """Prefect ``cache_key_fn``: the config is the ``cfg`` parameter, the rest are inputs."""
        cfg = parameters["cfg"]
        return self.checked(cfg, self.compute(cfg, *[v for k, v in parameters.items() if k != "cfg"]))

    def fold_inputs(self, parameters: dict[str, Any]) -> list[Any]:
        """Inputs of a per-fold task: the fold's fingerprint stands for the whole panel, feature
        table and fold list, so bars appended after the fold's test window change nothing."""
        span = parameters["folds"].folds[parameters["fold"]]
        rest = [v for k, v in parameters.items() if k not in ("cfg", "panel", "features", "folds")]
        return [getattr(span, self.fold_field), *rest]

    def fold_cache_key_fn(self, context: Any, parameters: dict[str, Any]) -> str:
        """Prefect ``cache_key_fn`` of a per-fold task (see :meth:`fold_inputs`)."""
        return self.checked(parameters["cfg"], self.compute(parameters["cfg"], *self.fold_inputs(parameters)))

    def fold_output(self, suffix: str, parameters: dict[str, Any]) -> Path:
        return self.output(parameters["cfg"], suffix, *self.fold_inputs(parameters))

    def output(self, cfg: Config, suffix: str, *inputs: Any) -> Path:
        """Content-addressed output path: ``work_dir/<stage>/<key>.<suffix>``."""
        return Path(cfg.run.work_dir) / self.stage / f"{self.compute(cfg, *inputs)}.{suffix}"
