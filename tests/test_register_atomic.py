"""Registration is all or nothing: a full export disk, or a register stage killed at any point,
leaves no half-tagged model version, no RUNNING run, no moved alias and no mismatched export pair;
a retry of the same registration never makes a second version."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from .conftest import RELAXED_GATE, REPO, SMOKE

pytestmark = pytest.mark.slow  # trains the smoke folds once, then registers many times

RELAXED = [*RELAXED_GATE, "train.timesteps=256", "train.n_steps=64", "train.batch_size=64"]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """The records register reads, made by the stage functions themselves (no flow around them)."""
    import tasks.train
    from sentio_core.config import load_config
    from tasks.backtest import backtest
    from tasks.features import features
    from tasks.folds import folds
    from tasks.ingest import ingest
    from tasks.panel import panel
    from tasks.regimes import regimes
    from tasks.train import train
    from tasks.validate import validate

    tmp = tmp_path_factory.mktemp("atomic")
    cfg = load_config(SMOKE, [f"run.work_dir={tmp / 'work'}", *RELAXED])
    with pytest.MonkeyPatch.context() as mp:  # no Prefect API here: the training slot is not needed
        mp.setattr(tasks.train, "concurrency", lambda *a, **k: contextlib.nullcontext())
        man = ingest.fn(cfg)
        bars = panel.fn(cfg, man, validate.fn(cfg, man))
        feats = features.fn(cfg, bars)
        spans = folds.fn(cfg, bars, feats)
        trained, tests = [], []
        for i in range(len(spans.folds)):
            reg = regimes.fn(cfg, bars, spans, i)
            fold = [train.fn(cfg, bars, feats, spans, reg, i, algo) for algo in cfg.train.algorithms]
            tests.append(backtest.fn(cfg, bars, feats, spans, reg, fold, i))
            trained += fold
    from tasks.rescore import RescoreOutput

    none = tmp / "no-champion.json"
    none.write_text('{"status": "no champion"}')
    rescored = RescoreOutput(stage="rescore", path=str(none), sha256="-", status="no champion", summary_line="- none")
    return tmp, {"manifest": man, "panel": bars, "folds": spans, "trained": trained, "backtests": tests,
                 "rescored": rescored}


def _cfg(tmp: Path, name: str, *extra: str):
    from sentio_core.config import load_config

    return load_config(SMOKE, [f"run.work_dir={tmp / 'work'}", f"registry.export_dir={tmp / name}",
                               f"registry.model_name={name}", *RELAXED, *extra])


def _register(stages, name: str, *extra: str):
    from sentio_core.registry import tracking_uri
    from tasks.register import register

    tmp, records = stages
    cfg = _cfg(tmp, name, *extra)
    return register.fn(cfg, records["manifest"], records["panel"], records["folds"], records["trained"],
                       records["backtests"], records["rescored"], tracking_uri(cfg.registry))


def _state(name: str, export_dir: Path) -> dict:
    """What a user sees: versions (and which are complete), the champion, the export files' bytes, runs still RUNNING."""
    from sentio_core.registry import COMPLETE_TAG, get_alias_version

    client = MlflowClient()
    versions = {str(v.version): v.tags.get(COMPLETE_TAG) == "true" for v in client.search_model_versions(f"name='{name}'")}
    running = [r.info.run_id for e in client.search_experiments() for r in
               client.search_runs([e.experiment_id], filter_string="attributes.status = 'RUNNING'")]
    exports = {p.name: p.read_bytes() for p in sorted(export_dir.glob("*"))} if export_dir.exists() else {}
    return {"versions": versions, "champion": get_alias_version(name, "champion"), "exports": exports, "running": running}


def test_a_full_export_disk_leaves_the_registry_and_the_export_as_they_were(stages, monkeypatch):
    from sentio_core import export
    from sentio_core.export import load_policy

    tmp, _ = stages
    name, export_dir = "atomic-disk", stages[0] / "atomic-disk"
    first = _register(stages, name)
    assert first.alias == "champion" and first.version == "1"
    before = _state(name, export_dir)
    real = export.write_together

    def full_disk(contents):
        if any(Path(p).parent == export_dir for p in contents):
            raise OSError(errno.ENOSPC, "No space left on device", str(export_dir))
        return real(contents)

    monkeypatch.setattr(export, "write_together", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _register(stages, name, "seed=8")  # another registration (another config): it must leave no trace
    after = _state(name, export_dir)
    assert after == before  # version 2 was deleted, the alias and the export did not move, nothing RUNNING
    assert load_policy(export_dir / name).metadata["registry"]["version"] == "1"
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("sentio").experiment_id],
                                      filter_string="attributes.status = 'FAILED'")
    assert runs, "the failed registration's parent run is marked FAILED"

    monkeypatch.setattr(export, "write_together", real)  # the disk has room again: the retry registers once
    again = _register(stages, name, "seed=8")
    final = _state(name, export_dir)
    assert len(final["versions"]) == 2 and all(final["versions"].values()) and final["champion"] == again.version


def test_a_failure_after_the_export_puts_the_previous_champion_back(stages, monkeypatch):
    """The alias fails to move after the new export was written and verified: the previous pair is
    restored, the new version deleted, the champion unchanged."""
    from sentio_core import registry

    name, export_dir = "atomic-alias", stages[0] / "atomic-alias"
    _register(stages, name)
    before = _state(name, export_dir)
    assert before["champion"] == "1" and before["exports"]

    def broken(*args, **kwargs):
        raise RuntimeError("the registry went away")

    monkeypatch.setattr(registry, "set_alias", broken)
    with pytest.raises(RuntimeError, match="went away"):
        _register(stages, name, "seed=9")
    assert _state(name, export_dir) == before


KILL_POINTS = {
    # the version exists (born tagged), nothing else done
    "after-version": ("sentio_core.registry", "register_policy"),
    # the export pair is written and verified, the version is not yet complete
    "after-export": ("tasks.register", "load_policy"),
    # the version is complete, the alias has not moved
    "after-complete": ("sentio_core.registry", "complete_version"),
}


def _killed(stages, name: str, point: str) -> subprocess.CompletedProcess:
    """Run register in a fresh process that dies (os._exit, like SIGKILL: no cleanup) right after ``point``."""
    from tasks.common import RecordSerializer

    tmp, records = stages
    blob = tmp / f"{name}-records.json"
    ser = RecordSerializer()
    blob.write_text(json.dumps({k: ([ser.dumps(r).decode() for r in v] if isinstance(v, list) else ser.dumps(v).decode())
                                for k, v in records.items()}))
    module, attr = KILL_POINTS[point]
    script = f"""
import importlib, json, os
from tasks.common import RecordSerializer
from sentio_core.config import load_config
from sentio_core.registry import tracking_uri
from tasks.register import register
ser = RecordSerializer()
doc = json.loads(open({str(blob)!r}).read())
rec = {{k: ([ser.loads(x.encode()) for x in v] if isinstance(v, list) else ser.loads(v.encode())) for k, v in doc.items()}}
mod = importlib.import_module({module!r})
real = getattr(mod, {attr!r})
def dying(*a, **k):
    out = real(*a, **k)
    os._exit(137)
setattr(mod, {attr!r}, dying)
cfg = load_config({str(SMOKE)!r}, {[f"run.work_dir={tmp / 'work'}", f"registry.export_dir={tmp / name}",
                                    f"registry.model_name={name}", *RELAXED]!r})
register.fn(cfg, rec["manifest"], rec["panel"], rec["folds"], rec["trained"], rec["backtests"], rec["rescored"],
            tracking_uri(cfg.registry))
"""
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=dict(os.environ), capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_register_killed_at_any_point_is_cleaned_up_at_the_next_start(stages, point):
    from sentio_core.export import load_policy
    from sentio_core.registry import reap_interrupted

    name = f"atomic-kill-{point}"
    export_dir = stages[0] / name
    proc = _killed(stages, name, point)
    assert proc.returncode == 137, proc.stderr[-3000:]
    killed = _state(name, export_dir)
    assert killed["running"], "a killed registration leaves its runs RUNNING (until the next start)"
    assert killed["champion"] is None  # the alias never moves before the version is complete
    if point == "after-version":
        assert killed["exports"] == {}  # nothing exported yet
    else:
        assert load_policy(export_dir / name).metadata["registry"]["model_name"] == name  # a whole, verified pair

    reaped = reap_interrupted(_cfg(stages[0], name).registry)  # what the next register does first
    after = _state(name, export_dir)
    assert after["running"] == [] and reaped["failed_runs"]
    if point == "after-complete":
        assert after["versions"] == {"1": True} and reaped["deleted_versions"] == []
    else:
        assert after["versions"] == {} and reaped["deleted_versions"] == ["1"]

    again = _register(stages, name)  # the retry: one version in the end, aliased
    final = _state(name, export_dir)
    assert final["champion"] == again.version and all(final["versions"].values())
    assert len(final["versions"]) == 1
