"""Shared fixtures. Prefect state goes to a throw-away PREFECT_HOME, set before Prefect is imported."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_TEMP_DIRS: list[str] = []  # the session's throw-away stores, removed when it ends (pytest_unconfigure)


def _temp_dir(prefix: str) -> str:
    _TEMP_DIRS.append(tempfile.mkdtemp(prefix=prefix))
    return _TEMP_DIRS[-1]


_PREFECT_HOME = _temp_dir("sentio-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)
# MLflow runs of the tests go to a throw-away SQLite file, never the repository's mlflow.db
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_temp_dir('sentio-test-mlflow-')}/mlflow.db"
# sb3 models the tests train directly make a log folder per learn() in the temp directory: one for all
os.environ["SB3_LOGDIR"] = _temp_dir("sentio-test-sb3-")


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _TEMP_DIRS:
        shutil.rmtree(path, ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
DAILY = REPO / "data" / "daily"
INTRADAY = REPO / "data" / "5min"
SMOKE = REPO / "configs" / "smoke.yaml"
#: Short trainings for tests of the pipeline, not of the learning (a smoke run's 2,048 steps x 2 seeds
#: x 8 trainings are most of its time).
FAST_TRAINING = ["train.timesteps=256", "train.n_steps=64", "train.batch_size=64"]
#: Overrides that let any model through the promotion gate (tests of what follows a promotion).
RELAXED_GATE = ["promotion.min_deflated_sharpe=0", "promotion.max_pbo=1", "promotion.pbo_min_configurations=1000",
                "promotion.paired_alpha=1", "promotion.max_drawdown_vs_underlying=null"]


@functools.cache
def _migrated_prefect_db() -> Path:
    """A Prefect database migrated once for the session (``prefect server database upgrade``)."""
    home = Path(_temp_dir("sentio-test-prefect-template-"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}, "PREFECT_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], env=env, check=True,
                   capture_output=True, timeout=300)
    return home / "prefect.db"


def fresh_prefect_home(path: Path) -> str:
    """A new PREFECT_HOME at ``path`` holding a copy of the session's migrated database: a server
    started on it (embedded or not) skips the migrations of a new database, about 8 s of its 14 s
    start. Everything else in the folder is the run's own."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(_migrated_prefect_db(), path / "prefect.db")
    return str(path)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (starting one costs ~10-15 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    """Configs name data paths relative to the repository root."""
    monkeypatch.chdir(REPO)
