"""Exit codes and messages as the README says, case by case: 2 for settings and arguments (before
anything runs), 1 for bad data, 3 for the machine (server, state folder, store, disk); never a
traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sentio.cli import main

from .conftest import DAILY, REPO, SMOKE, fresh_prefect_home


def _cases(tmp):
    latin = tmp / "latin.yaml"
    latin.write_bytes("seed: 1 # caf\xe9\n".encode("latin-1"))
    extends = tmp / "extends.yaml"
    extends.write_text("extends: 5\nseed: 1\n")
    a_file = tmp / "a-file"
    a_file.write_text("x")
    one_symbol = tmp / "one"
    one_symbol.mkdir()
    (one_symbol / "QQQ.csv").write_text((DAILY / "QQQ.csv").read_text())
    folds = ["folds", "--config", str(SMOKE)]
    return {
        "extends: 5": (["folds", "--config", str(extends)], 2, "'extends' must name a config file"),
        "config not UTF-8": (["folds", "--config", str(latin)], 2, "not UTF-8 text"),
        "negative horizon": ([*folds, "--set", "features.return_horizons=[-5]"], 2, "features.return_horizons"),
        "vol window -5": ([*folds, "--set", "features.vol_windows=[-5]"], 2, "features.vol_windows"),
        "vol window 0": ([*folds, "--set", "features.vol_windows=[0]"], 2, "features.vol_windows"),
        "huge window": ([*folds, "--set", "features.rsi_bars=100000000"], 2, "features.rsi_bars"),
        "feature glob": ([*folds, "--set", "env.feature_columns=[nomatch*]"], 2, "match no feature column"),
        "no usable row": ([*folds, "--set", "folds.n_folds=50"], 2, "aligned bars are too few"),
        "net_arch [0]": ([*folds, "--set", "train.net_arch=[0]"], 2, "train.net_arch"),
        "device tpu": ([*folds, "--set", "train.device=tpu"], 2, "train.device"),
        "no spreads": ([*folds, "--set", "costs.half_spread_bps={}"], 2, "half_spread_bps"),
        "huge seed": ([*folds, "--set", "seed=99999999999"], 2, "seed"),
        "model name path": ([*folds, "--set", "registry.model_name=../../x"], 2, "registry.model_name"),
        "bad timezone": ([*folds, "--set", "data.timezone=Mars/Base"], 2, "data.timezone 'Mars/Base'"),
        "bad calendar": ([*folds, "--set", "data.calendar=XXXX"], 2, "data.calendar 'XXXX'"),
        "missing symbol file": ([*folds, "--set", f"data.path={one_symbol}"], 1, "no file for"),
        "train --output under a file": (["train", "--config", str(SMOKE), "--output", str(a_file / "m")], 2,
                                        "is a file, not a folder"),
    }


CASE_NAMES = ["extends: 5", "config not UTF-8", "negative horizon", "vol window -5", "vol window 0", "huge window", "feature glob",
              "no usable row", "net_arch [0]", "device tpu", "no spreads", "huge seed", "model name path", "bad timezone",
              "bad calendar", "missing symbol file", "train --output under a file"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_each_case_exits_with_its_code_and_one_clear_message(case, tmp_path, capsys):
    argv, code, needle = _cases(tmp_path)[case]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, capsys):
    """A folder nobody may write into (under /proc even root cannot create files): refused up front
    when the permission bits say so, or exit 3 naming the path when the write fails."""
    code = main(["features", "--config", str(SMOKE), "--out", "/proc/sentio-test/features.parquet"])
    err = capsys.readouterr().err
    assert code in (2, 3) and "/proc/sentio-test" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("sentio:")]) == 1


def _run(env_extra: dict[str, str], tmp) -> subprocess.CompletedProcess:
    exe = REPO / ".venv" / "bin" / "sentio"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sentio"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SENTIO_"))}
    env.update({"PREFECT_HOME": fresh_prefect_home(tmp / "prefect"), **env_extra})
    return subprocess.run([*cmd, "run", "--config", str(SMOKE), "--set", f"run.work_dir={tmp / 'work'}",
                           "--set", "train.timesteps=256", "--set", "train.n_steps=64", "--set", "train.batch_size=64"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("case, env", [
    ("state folder cannot be made", {"PREFECT_HOME": "/proc/sentio-test/prefect"}),
    ("embedded server does not start in time", {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "0"}),
    ("tracking store cannot be opened", {"MLFLOW_TRACKING_URI": "sqlite:////proc/sentio-test/mlflow.db"}),
])
def test_infrastructure_failures_exit_3_with_one_line(case, env, tmp_path):
    proc = _run(env, tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and len(lines) <= 3, proc.stderr[-2000:]
    assert lines[-1].startswith("sentio: run ")
