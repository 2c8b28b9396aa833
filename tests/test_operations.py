"""Operating the pipeline: nightly re-use, resuming a killed run, concurrent runs, a cleaned work
folder, and the Dask task runner. Each runs `sentio run` as a user would, in its own process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DAILY, FAST_TRAINING, RELAXED_GATE, REPO, SMOKE, fresh_prefect_home

pytestmark = [pytest.mark.flow, pytest.mark.slow]


def _sentio() -> list[str]:
    exe = REPO / ".venv" / "bin" / "sentio"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sentio"]


def _env(tmp, name: str = "prefect") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SENTIO_"))}
    env["PREFECT_HOME"] = fresh_prefect_home(tmp / name)
    return env


FAST = FAST_TRAINING  # the pipeline, not the learning, is tested


def _args(tmp, *extra: str) -> list[str]:
    return [*_sentio(), "run", "--config", str(SMOKE), "--set", f"run.work_dir={tmp / 'work'}",
            "--set", f"registry.export_dir={tmp / 'exports'}", *[x for e in (*FAST, *extra) for x in ("--set", e)]]


def _run(tmp, *extra: str, env=None, timeout=400) -> subprocess.CompletedProcess:
    proc = subprocess.run(_args(tmp, *extra), cwd=REPO, env=env or _env(tmp), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _stage_counts(stdout: str) -> dict[str, int]:
    line = next(x for x in stdout.splitlines() if x.startswith("stages:"))
    return {state: int(n) for n, state in re.findall(r"(\d+) (\w+)", line.split("(", 1)[1])}


def _fold_lines(stdout: str) -> list[str]:
    return [x for x in stdout.splitlines() if re.match(r"^\s+\d+\s+\d{4}-", x)]


def test_appended_bar_reuses_every_fold_stage(tmp_path):
    """Nightly: one new bar changes the data fingerprint, but no fold window (folds.step_bars), so
    regimes, trainings, backtests and the registration are served from the cache; the data stages,
    the champion re-score and the drift report run again."""
    from sentio_core.config import load_config
    from sentio_core.data import build_manifest, build_panel
    from sentio_core.features import feature_table, first_complete_row

    step = 21
    cfg = load_config(SMOKE)
    bars, _, freq = build_panel(cfg, build_manifest(cfg))
    feats = feature_table(cfg, bars, freq)
    usable = feats.height - first_complete_row(feats)
    drop = 1 if usable % step else 2  # yesterday and today fall in the same step block
    data = tmp_path / "data"
    data.mkdir()
    for sym in ("QQQ", "TQQQ", "SQQQ"):
        lines = (DAILY / f"{sym}.csv").read_text().splitlines()
        (data / f"{sym}.csv").write_text("\n".join(lines[: len(lines) - drop]) + "\n")
    yesterday = _run(tmp_path, f"data.path={data}", f"folds.step_bars={step}")
    for sym in ("QQQ", "TQQQ", "SQQQ"):  # the new bar arrives
        lines = (DAILY / f"{sym}.csv").read_text().splitlines()
        (data / f"{sym}.csv").write_text("\n".join(lines[: len(lines) - drop + 1]) + "\n")
    start = time.perf_counter()
    today = _run(tmp_path, f"data.path={data}", f"folds.step_bars={step}")
    elapsed = time.perf_counter() - start
    counts = _stage_counts(today.stdout)
    # ingest, validate, panel, features, folds, rescore-champion and drift run; the 8 fold tasks and register do not
    assert counts == {"Cached": 9, "Completed": 7}, today.stdout
    assert _fold_lines(today.stdout) == _fold_lines(yesterday.stdout)
    print(f"nightly run with one appended bar: {elapsed:.1f}s")


def _persisted(prefect_home: Path, stage: str) -> int:
    """How many records of ``stage`` Prefect has persisted under ``prefect_home`` (storage keys
    are ``STAGE-<hash>``)."""
    return len(list((prefect_home / "storage").glob(f"{stage}-*")))


def test_a_killed_run_resumes_from_its_finished_stages(tmp_path):
    env = _env(tmp_path)
    proc = subprocess.Popen(_args(tmp_path), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        # kill once two trainings are finished *and* Prefect has persisted their records (a stage
        # ends by handing its freed memory back, after writing its files, so files alone are early)
        while _persisted(tmp_path / "prefect", "train") < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no training finished in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finished = _persisted(tmp_path / "prefect", "train")
    again = _run(tmp_path, env=env)
    counts = _stage_counts(again.stdout)
    # ingest .. folds, the champion re-score, both regime fits and every finished training are re-used
    assert counts.get("Cached", 0) >= 8 + finished - 1, again.stdout
    assert "promotion:" in again.stdout


def test_two_runs_at_once_keep_the_registry_and_exports_intact(tmp_path):
    """Two pipelines register into the same MLflow store and export to the same folder at once."""
    from mlflow.tracking import MlflowClient

    from sentio_core.export import load_policy

    gate = [*RELAXED_GATE, "registry.model_name=sentio-concurrent"]
    procs = []
    for name, seed in (("a", 7), ("b", 8)):
        run_dir = tmp_path / name
        args = _args(run_dir, *gate, f"seed={seed}")
        args[args.index(f"registry.export_dir={run_dir / 'exports'}")] = f"registry.export_dir={tmp_path / 'exports'}"
        procs.append(subprocess.Popen(args, cwd=REPO, env=_env(run_dir), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    versions = MlflowClient().search_model_versions("name='sentio-concurrent'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    policy = load_policy(tmp_path / "exports" / "sentio-concurrent.pth")  # whole and loadable
    assert policy.metadata["registry"]["model_name"] == "sentio-concurrent"
    assert not [p for p in (tmp_path / "exports").iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.fixture(scope="module")
def threads_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("threads")
    return tmp, _run(tmp)


def test_a_cleaned_work_folder_is_rebuilt_not_an_error(threads_run):
    tmp, first = threads_run
    shutil.rmtree(tmp / "work" / "features")
    again = _run(tmp)
    assert _stage_counts(again.stdout).get("Completed", 0) >= 1
    assert _fold_lines(again.stdout) == _fold_lines(first.stdout)


def test_dask_task_runner_gives_the_same_fold_metrics(threads_run, tmp_path):
    _, threads = threads_run
    dask = _run(tmp_path, "run.task_runner=dask", "run.workers=2")
    assert _fold_lines(dask.stdout) == _fold_lines(threads.stdout)
    assert len(_fold_lines(dask.stdout)) == 2


def test_a_killed_runs_embedded_server_is_reaped_by_the_next_run(tmp_path):
    """kill -9 of `sentio run` orphans Prefect's embedded API server; the next run stops it first."""
    import psutil

    from sentio.cli import SERVER_APP, reap_orphaned_servers

    env = _env(tmp_path)
    proc = subprocess.Popen(_args(tmp_path), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, server = time.time() + 120, None
    while server is None and time.time() < deadline:
        time.sleep(0.5)
        kids = psutil.Process(proc.pid).children(recursive=True)
        server = next((k for k in kids if SERVER_APP in k.cmdline()), None)
    assert server is not None, "the embedded server never started"
    proc.kill()
    proc.wait()
    time.sleep(1)
    assert server.is_running() and server.ppid() == 1  # orphaned
    assert reap_orphaned_servers(tmp_path / "nobody-elses-home") == []  # another PREFECT_HOME: left alone
    assert reap_orphaned_servers(env["PREFECT_HOME"]) == [server.pid]
    assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
