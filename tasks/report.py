"""Run reports: the fold table and the run summary as Prefect artifacts of the flow run.

These are plain functions, not tasks: a cached stage does not run its body, so anything a user
must see on *every* run (including a fully cached one) is published from the flow run itself.
"""

from __future__ import annotations

import base64
from pathlib import Path

import sys

from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)

from tasks.common import StageOutput

STRATEGIES = ("maskable_ppo", "ppo", "buy_hold_underlying", "buy_hold_long", "flat")
SHORT = {"maskable_ppo": "mppo", "ppo": "ppo", "buy_hold_underlying": "bh_u", "buy_hold_long": "bh_l", "flat": "flat"}
METRICS = ("sharpe", "total_return", "max_drawdown", "turnover", "overrides")


class Progress:
    """The run's progress: a Prefect progress artifact (``sentio-progress``) updated as each fold task
    finishes, and a progress bar on the terminal when stderr is one."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.total, self.done = total, 0
        self.artifact_id = create_progress_artifact(0.0, key="sentio-progress",
                                                    description="Fold tasks finished (regimes, trainings, backtests)")
        self.bar = tqdm(total=total, desc="folds", unit="task", file=sys.stderr, disable=not sys.stderr.isatty())

    def step(self, name: str, state: str) -> None:
        self.done += 1
        update_progress_artifact(self.artifact_id, 100.0 * self.done / self.total,
                                 description=f"{self.done}/{self.total}: {name} {state}")
        self.bar.set_postfix_str(f"{name} {state}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _day(ts: str) -> str:
    return ts[:16].replace("T00:00", "")


def fold_rows(folds: StageOutput, regimes: list[StageOutput], backtests: list[StageOutput] = (),
              failures: dict[int, str] | None = None) -> list[dict]:
    """One row per fold: dates, sizes, purge/embargo, regime shares and out-of-sample metrics.

    ``regimes`` and ``backtests`` are in fold order (empty when not available); ``failures`` maps a
    fold to its error.
    """
    failures = failures or {}
    rows = []
    for i, span in enumerate(folds.meta["folds"]):
        # the out-of-sample results first (what a reader scans for), then the fold's anatomy
        row = {"fold": span["fold"], "test_start": _day(span["test_start"]), "test_end": _day(span["test_end"])}
        if i in failures:
            row["error"] = failures[i]
        tests = backtests[i].meta["metrics"] if i < len(backtests) else {}
        for m in METRICS:
            for name in STRATEGIES:
                if name not in tests or (m == "overrides" and name not in ("maskable_ppo", "ppo")):
                    continue
                value = tests[name][m]
                row[f"{name}_{m}"] = round(value, 4) if m != "overrides" else int(value)
        row.update({"train_start": _day(span["train_start"]), "train_end": _day(span["train_end"]),
                    **{k: span[k] for k in ("train_bars", "test_bars", "purge_bars", "embargo_bars")}})
        if i < len(regimes):
            reg = regimes[i].meta
            for k, (a, b) in enumerate(zip(reg["train_shares"], reg["test_shares"])):
                row[f"regime_{k}_train"] = round(a, 3)
                row[f"regime_{k}_test"] = round(b, 3)
        rows.append(row)
    return rows


def summary_rows(rows: list[dict]) -> list[dict]:
    """The terminal's compact view: test window, Sharpe and max drawdown per strategy, overrides."""
    out = []
    for r in rows:
        row = {"fold": r["fold"], "test": f"{r['test_start']}..{r['test_end']}"}
        for name in STRATEGIES:
            if f"{name}_sharpe" in r:
                row[f"{SHORT[name]}_sharpe"] = f"{r[f'{name}_sharpe']:.2f}"
                row[f"{SHORT[name]}_mdd"] = f"{r[f'{name}_max_drawdown']:.1%}"
        for name in ("maskable_ppo", "ppo"):
            if f"{name}_overrides" in r:
                row[f"{SHORT[name]}_overrides"] = r[f"{name}_overrides"]
        out.append(row)
    return out


def _image(path: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![equity and drawdown](data:image/png;base64,{data})"


def mlflow_link(tracking_uri: str, experiment_id: str | None, run_id: str) -> str:
    """A link to the MLflow UI for an http(s) tracking server; otherwise the run id and how to browse it."""
    if tracking_uri.startswith(("http://", "https://")) and experiment_id:
        return f"[{run_id[:8]}]({tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"
    return f"`{run_id}` (browse with `mlflow ui --backend-store-uri {tracking_uri}`)"


def publish(rows: list[dict], panel: StageOutput, features: StageOutput, stage_states: dict[str, str],
            registered: StageOutput | None = None, backtests: list[StageOutput] = (),
            drift: StageOutput | None = None, champion: StageOutput | None = None) -> None:
    """Create the fold table artifact and a run summary artifact (gate, registry, curves, drift)."""
    create_table_artifact(rows, key="sentio-folds",
                          description="Purged walk-forward folds: dates, regime shares, out-of-sample metrics after costs")
    lines = ["# Sentio run summary", ""]
    if registered is not None:
        reg = registered.meta
        uri, exp = reg["tracking_uri"], reg.get("experiment_id")
        lines += ["## Promotion", "", f"- model version {reg['version']} -> alias **{reg['alias']}**",
                  *[f"- {r}" for r in reg["gate"]["reasons"]],
                  f"- MLflow parent run: {mlflow_link(uri, exp, reg['parent_run_id'])}",
                  *[f"  - {name}: {mlflow_link(uri, exp, run)}" for name, run in sorted(reg["child_run_ids"].items())],
                  f"- export: {', '.join(reg['export']) if reg['export'] else 'none (not a champion)'}", ""]
    if champion is not None:
        lines += ["## Current champion on the newest bars", "", champion.meta["summary_line"], ""]
    if drift is not None:
        lines += [drift.meta["markdown"], ""]
    lines += ["## Data", ""]
    lines += [f"- {line.strip()}" for line in panel.meta["alignment_lines"]]
    lines += ["", f"- features: {features.meta['n_features']} columns, {features.meta['rows']} rows, "
              f"warm-up {features.meta['warmup_rows']} rows", ""]
    for i, b in enumerate(backtests):
        lines += [f"## Fold {i} ({_day(b.meta['test_start'])} .. {_day(b.meta['test_end'])})", "",
                  _image(b.meta["plot"]), ""]
    lines += ["## Stages", "", "| stage | state |", "|---|---|"]
    lines += [f"| {name} | {state} |" for name, state in stage_states.items()]
    create_markdown_artifact("\n".join(lines), key="sentio-run-summary",
                             description="Promotion decision, MLflow runs, drift, equity curves, stage states")


def format_table(rows: list[dict]) -> str:
    """Plain-text table for the terminal."""
    if not rows:
        return "(no folds)"
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    head = "  ".join(c.rjust(width[c]) for c in cols)
    body = ["  ".join(str(r.get(c, "")).rjust(width[c]) for c in cols) for r in rows]
    return "\n".join([head, "-" * len(head), *body])
