"""The command-line contract: sentio features / folds / validate / run, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest

from sentio.cli import main
from sentio_core.baselines import NAMES as BASELINES

from .conftest import FAST_TRAINING, REPO, SMOKE, fresh_prefect_home


def test_features_writes_one_row_per_timestamp(tmp_path, capsys):
    out = tmp_path / "deep" / "features.parquet"
    assert main(["features", "--config", str(SMOKE), "--out", str(out)]) == 0
    table = pl.read_parquet(out)
    assert table.columns[0] == "timestamp" and table.width - 1 >= 40
    assert table.height == 2590 and table["timestamp"].is_unique().all()
    assert "aligned 3 symbols" in capsys.readouterr().err


def test_features_with_set_overrides(tmp_path):
    out = tmp_path / "f.parquet"
    assert main(["features", "--set", "features.rsi_bars=10", "--set", "features.higher_timeframe=none",
                 "--out", str(out)]) == 0
    cols = pl.read_parquet(out).columns
    assert "QQQ_rsi_10" in cols and not any("htf" in c for c in cols)


def test_features_out_must_be_parquet(tmp_path, capsys):
    assert main(["features", "--out", str(tmp_path / "f.csv")]) == 2
    assert "Parquet" in capsys.readouterr().err


def test_folds_json_contract(capsys):
    assert main(["folds", "--json", "--set", "folds.n_folds=3", "--set", "folds.embargo_bars=5"]) == 0
    folds = json.loads(capsys.readouterr().out)
    assert [f["fold"] for f in folds] == [0, 1, 2]
    for f in folds:
        assert {"fold", "train_start", "train_end", "test_start", "test_end", "purge_bars", "embargo_bars"} <= set(f)
        assert f["purge_bars"] == 11 and f["embargo_bars"] == 5  # lookback 10 + reward horizon 1
        assert f["train_end"] < f["test_start"] <= f["test_end"]
    assert folds[0]["test_end"] < folds[1]["test_start"]
    assert folds[-1]["test_end"].startswith("2025-04-16")  # folds.step_bars=21: the layout ends on a step
    assert main(["folds", "--json", "--set", "folds.step_bars=1"]) == 0
    assert json.loads(capsys.readouterr().out)[-1]["test_end"].startswith("2025-04-21")  # the last bar


def test_folds_table(capsys):
    assert main(["folds", "--config", str(SMOKE)]) == 0
    out = capsys.readouterr().out
    assert "train_start" in out and len(out.strip().splitlines()) == 4


@pytest.mark.parametrize(
    "argv, code, needle",
    [(["folds", "--set", "folds.n_folds=40"], 2, "lower folds.n_folds"),
     (["folds", "--set", "folds.nfolds=3"], 2, "folds.nfolds: unknown key"),
     (["folds", "--set", "data.path=/nonexistent"], 1, "no such file or folder"),
     (["features", "--out", "x.parquet", "--config", "missing.yaml"], 2, "does not exist")],
)
def test_errors_are_one_clear_line(argv, code, needle, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_folds_on_bad_data_prints_the_report(tmp_path, capsys):
    bad = tmp_path / "d"
    bad.mkdir()
    for sym in ("QQQ", "TQQQ", "SQQQ"):
        lines = (REPO / "data" / "daily" / f"{sym}.csv").read_text().splitlines()
        if sym == "SQQQ":
            lines[50] = lines[50].rsplit(",", 1)[0] + ",-3"
        (bad / f"{sym}.csv").write_text("\n".join(lines) + "\n")
    assert main(["folds", "--set", f"data.path={bad}"]) == 1
    err = capsys.readouterr().err
    assert "SQQQ.csv" in err and "volume >= 0" in err and "volume=-3" in err


@pytest.mark.slow
def test_console_script_runs():
    exe = REPO / ".venv" / "bin" / "sentio"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sentio"]
    proc = subprocess.run([*cmd, "folds", "--json", "--config", str(SMOKE)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 2


@pytest.mark.slow
def test_sentio_run_uses_embedded_prefect_and_prefect_home(tmp_path):
    """`sentio run` needs no server, keeps its state in PREFECT_HOME and prints the gate; `sentio
    promote` makes its version the champion by hand; a second run is all Cached but the re-score
    of that champion."""
    import os

    exe = REPO / ".venv" / "bin" / "sentio"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sentio"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = fresh_prefect_home(tmp_path / "prefect")
    args = [*cmd, "run", "--config", str(SMOKE), "--set", f"run.work_dir={tmp_path / 'work'}",
            "--set", f"registry.export_dir={tmp_path / 'exports'}", *[x for o in FAST_TRAINING for x in ("--set", o)]]
    first = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "mppo_sharpe" in first.stdout and "promotion: " in first.stdout and "run finished" in first.stdout
    assert "INFO" not in first.stdout + first.stderr  # MLflow's chatter is kept out of the terminal
    assert (tmp_path / "prefect").is_dir() and any((tmp_path / "prefect").rglob("*.db"))
    assert "trials in the ledger" in first.stdout and "deflated Sharpe" in first.stdout  # the gate's table
    # whatever the gate said, an operator can make version 1 the champion by hand (and must say why)
    promote = [*cmd, "promote", "1", "--reason", "reviewed by hand", "--by", "ops", "--config", str(SMOKE),
               "--set", f"registry.export_dir={tmp_path / 'exports'}"]
    promoted = subprocess.run(promote, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert promoted.returncode == 0 and "version 1 is the champion" in promoted.stdout, promoted.stderr[-2000:]
    assert (tmp_path / "exports" / "sentio-maskable-ppo.pth").is_file()
    unknown = subprocess.run([*promote[:2], "99", *promote[3:]], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "has no version '99'" in unknown.stderr
    second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    stages_line = next(line for line in second.stdout.splitlines() if line.startswith("stages:"))
    # the champion is new input to the second run's re-score, and only that runs
    assert stages_line == "stages: 16 (15 Cached, 1 Completed)"


@pytest.mark.slow
def test_sentio_run_on_bad_data_exits_1_with_the_report_and_no_traceback(tmp_path):
    import os

    bad = tmp_path / "data"
    bad.mkdir()
    for sym in ("QQQ", "TQQQ", "SQQQ"):
        lines = (REPO / "data" / "daily" / f"{sym}.csv").read_text().splitlines()
        if sym == "TQQQ":
            parts = lines[100].split(",")
            parts[2] = "0.01"  # high below open and close
            lines[100] = ",".join(parts)
        (bad / f"{sym}.csv").write_text("\n".join(lines) + "\n")
    exe = REPO / ".venv" / "bin" / "sentio"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sentio"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SENTIO_"))}
    env["PREFECT_HOME"] = fresh_prefect_home(tmp_path / "prefect")
    proc = subprocess.run([*cmd, "run", "--config", str(SMOKE), "--set", f"data.path={bad}",
                           "--set", f"run.work_dir={tmp_path / 'work'}"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1
    assert "TQQQ.csv" in proc.stderr and "high >= max(open, close)" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["ingest"]


def _sentio() -> list[str]:
    exe = REPO / ".venv" / "bin" / "sentio"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sentio"]


@pytest.mark.slow
def test_sentio_train_writes_pth_and_metadata_in_new_folders(tmp_path):
    """The seeds' command line: --model-type, budgets, --lr, --output PATH -> PATH.pth + PATH-metadata.json."""
    import torch

    out = tmp_path / "deep" / "er" / "ppo.v1"
    proc = subprocess.run([*_sentio(), "train", "--model-type", "ppo", "--episodes", "3", "--timesteps", "100000",
                           "--lr", "0.001", "--output", str(out), "--config", str(SMOKE)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((tmp_path / "deep" / "er" / "ppo.v1-metadata.json").read_text())
    assert meta["model_type"] == "ppo" and meta["training"]["stopped_by"] == "episodes"
    assert meta["training"]["learning_rate"] == 0.001 and meta["training"]["episodes"] >= 3
    [fold] = meta["out_of_sample"]["folds"]
    assert set(fold["metrics"]) == {"ppo", *BASELINES}  # the rule (trend_vol) and the fixed-action baselines
    assert meta["policy"]["action_meanings"][0].startswith("-100%") and "created_at" in meta
    payload = torch.load(tmp_path / "deep" / "er" / "ppo.v1.pth", weights_only=True)
    assert payload["algorithm"] == "ppo" and payload["n_actions"] == 5


@pytest.mark.parametrize("argv, needle", [
    (["--lr", "0"], "--lr: input should be greater than 0 (got 0.0)"),
    (["--minutes", "0"], "--minutes: input should be greater than 0 (got 0.0)"),
    (["--timesteps", "-5"], "--timesteps: input should be greater than or equal to 1 (got -5)"),
])
def test_sentio_train_rejects_a_non_positive_budget(argv, needle, capsys):
    """The budget rule is the config schema's (train.minutes > 0, ...), written once."""
    assert main(["train", *argv, "--config", str(SMOKE)]) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.slow
def test_any_single_underlying_trades_through_synthesized_legs(tmp_path):
    """The contract command: one file, legs synthesized from it (daily-reset 3x, expense ratio)."""
    data = tmp_path / "one"
    data.mkdir()
    (data / "QQQ.csv").write_text((REPO / "data" / "daily" / "QQQ.csv").read_text())
    proc = subprocess.run([*_sentio(), "train", "--timesteps", "512", "--output", str(tmp_path / "m"),
                           "--config", str(SMOKE), "--set", f"data.path={data}", "--set", "universe.underlying=QQQ",
                           "--set", "universe.synthesize=true", "--set", "universe.long=null", "--set", "universe.short=null"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((tmp_path / "m-metadata.json").read_text())
    assert [leg["symbol"] for leg in meta["policy"]["legs"]] == ["QQQ_L3X", "QQQ_S3X"]


@pytest.mark.parametrize("override, needle", [
    ("folds.n_folds=50", "aligned bars are too few"),
    ("env.feature_columns=[nomatch*]", "match no feature column"),
])
def test_settings_that_leave_no_usable_row_stop_before_the_features(override, needle, capsys):
    """The pre-flight check (after validation, before any other stage): exit 2 with what to change."""
    assert main(["folds", "--config", str(SMOKE), "--set", override]) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.slow
def test_sentio_train_leaves_no_temporary_folders(tmp_path):
    """Nothing of a training lands in the system's temporary folder (SB3 logger, torch caches)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    proc = subprocess.run([*_sentio(), "train", "--timesteps", "256", "--output", str(tmp_path / "m"), "--config",
                           str(SMOKE), "--set", f"run.work_dir={tmp_path / 'work'}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in scratch.iterdir()) == []
