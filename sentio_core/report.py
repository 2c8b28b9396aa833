"""Run reports as plain data and text: the fold table, the terminal summary, the run summary markdown.

Pure functions of typed inputs; publishing them (Prefect artifacts) belongs to ``tasks/report.py``
and printing them to the command line.
"""

from __future__ import annotations

import base64
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sentio_core import algorithms, baselines
from sentio_core.config import ALGORITHM_NAMES
from sentio_core.promotion import Check

if TYPE_CHECKING:  # records handed in by the stages (data only)
    from sentio_core.folds import FoldSpan

STRATEGIES = (*ALGORITHM_NAMES, *baselines.NAMES)
SHORT = {s.name: s.short for s in (*algorithms.REGISTRY, *baselines.REGISTRY)}
METRICS = ("sharpe", "psr", "sharpe_low", "sharpe_high", "total_return", "max_drawdown", "turnover", "overrides",
           "forced_bars", "forced_flat")
MASKED_OR_OVERRIDDEN = ALGORITHM_NAMES  # the learned policies: their overrides and mask counts are reported
COUNTS = ("overrides", "forced_bars", "forced_flat")  # integer metrics, reported for the learned policies only


def day(ts: str) -> str:
    """``2024-04-18`` for a daily ISO timestamp, ``2025-05-12T09:30`` for an intraday one."""
    return ts[:16].replace("T00:00", "")


def fold_rows(spans: Sequence[FoldSpan], regime_shares: Sequence[tuple[list[float], list[float]]] = (),
              fold_metrics: Sequence[dict[str, dict[str, float]]] = (),
              failures: dict[int, str] | None = None) -> list[dict]:
    """One row per fold: the out-of-sample results first (what a reader scans for), then dates,
    sizes, purge/embargo and regime shares.

    :param regime_shares: per fold (in order) the regime shares of its training and test windows.
    :param fold_metrics: per fold (in order) strategy -> metrics; shorter when not available.
    :param failures: fold -> its error.
    """
    failures = failures or {}
    rows = []
    for i, span in enumerate(spans):
        row = {"fold": span.fold, "test_start": day(span.test_start), "test_end": day(span.test_end)}
        if span.test_groups:  # a combinatorial split: its test groups
            row["test_groups"] = ",".join(map(str, span.test_groups))
        if i in failures:
            row["error"] = failures[i]
        tests = fold_metrics[i] if i < len(fold_metrics) else {}
        for m in METRICS:
            for name in STRATEGIES:
                if name not in tests or m not in tests[name] or (m in COUNTS and name not in MASKED_OR_OVERRIDDEN):
                    continue
                value = tests[name][m]
                row[f"{name}_{m}"] = round(value, 4) if m not in COUNTS else int(value)
        for name in ALGORITHM_NAMES:  # the spread over seeds (train.seeds > 1): each seed's own backtest
            seeds = seed_sharpes(tests, name)
            if len(seeds) > 1:
                row[f"{name}_seeds_sharpe_mean"] = round(statistics.mean(seeds), 4)
                row[f"{name}_seeds_sharpe_sd"] = round(statistics.stdev(seeds), 4)
                row[f"{name}_seeds_sharpe_min"] = round(min(seeds), 4)
                row[f"{name}_seeds_sharpe_max"] = round(max(seeds), 4)
        for name in MASKED_OR_OVERRIDDEN:  # decisions each mask rule constrained; results by regime in force
            for key, value in tests.get(name, {}).items():
                if key.startswith("mask_"):
                    row[f"{name}_{key}"] = int(value)
                elif key.startswith("regime_") and key.endswith(("_bars", "_sharpe")):
                    row[f"{name}_{key}"] = int(value) if key.endswith("_bars") else round(value, 4)
        row.update({"train_start": day(span.train_start), "train_end": day(span.train_end),
                    "train_bars": span.train_bars, "test_bars": span.test_bars, "purge_bars": span.purge_bars,
                    "embargo_bars": span.embargo_bars})
        if i < len(regime_shares):
            for k, (a, b) in enumerate(zip(*regime_shares[i])):
                row[f"regime_{k}_train"] = round(a, 3)
                row[f"regime_{k}_test"] = round(b, 3)
        rows.append(row)
    return rows


def seed_sharpes(metrics: dict[str, dict[str, float]], algorithm: str) -> list[float]:
    """The out-of-sample Sharpe of each of the algorithm's seeds, in seed order (empty with one seed)."""
    out, k = [], 0
    while algorithms.seed_name(algorithm, k) in metrics:
        out.append(metrics[algorithms.seed_name(algorithm, k)]["sharpe"])
        k += 1
    return out


REGIME_STRATEGIES = (*ALGORITHM_NAMES, "buy_hold_underlying", baselines.TREND_VOL)


def regime_rows(pooled: dict[str, dict[str, float]], n_regimes: int) -> list[dict]:
    """Over all folds, per strategy and filtered regime in force (0 = calmest): bars, Sharpe, return."""
    rows = []
    for name in REGIME_STRATEGIES:
        if name not in pooled:
            continue
        for k in range(n_regimes):
            m = pooled[name]
            rows.append({"strategy": name, "regime": k, "bars": int(m[f"regime_{k}_bars"]),
                         "sharpe": f"{m[f'regime_{k}_sharpe']:.2f}", "return": f"{m[f'regime_{k}_return']:.1%}"})
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
            if f"{name}_seeds_sharpe_mean" in r:
                row[f"{SHORT[name]}_seeds"] = f"{r[f'{name}_seeds_sharpe_mean']:.2f}±{r[f'{name}_seeds_sharpe_sd']:.2f}"
        for name in MASKED_OR_OVERRIDDEN:
            for m, short in (("overrides", "overrides"), ("forced_bars", "forced"), ("forced_flat", "flat")):
                if f"{name}_{m}" in r:
                    row[f"{SHORT[name]}_{short}"] = r[f"{name}_{m}"]
        out.append(row)
    return out


def strategy_rows(metrics: dict[str, dict[str, float]]) -> list[dict]:
    """One row per strategy of one backtest (``sentio train``)."""
    return [{"strategy": k, **{m: f"{v[m]:.3f}" for m in ("sharpe", "total_return", "max_drawdown", "turnover")},
             "overrides": int(v["overrides"])} for k, v in metrics.items()]


def format_table(rows: list[dict]) -> str:
    """Plain-text table for the terminal."""
    if not rows:
        return "(no folds)"
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    head = "  ".join(c.rjust(width[c]) for c in cols)
    body = ["  ".join(str(r.get(c, "")).rjust(width[c]) for c in cols) for r in rows]
    return "\n".join([head, "-" * len(head), *body])


def mlflow_link(tracking_uri: str, experiment_id: str | None, run_id: str) -> str:
    """A link to the MLflow UI for an http(s) tracking server; otherwise the run id and how to browse it."""
    if tracking_uri.startswith(("http://", "https://")) and experiment_id:
        return f"[{run_id[:8]}]({tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"
    return f"`{run_id}` (browse with `mlflow ui --backend-store-uri {tracking_uri}`)"


def gate_rows(checks: Sequence[Check]) -> list[dict]:
    """The gate as a table: each check's value, what it needs and its verdict."""
    return [{"check": c.name, "value": "n/a" if c.value is None else f"{c.value:.3f}", "needs": c.threshold,
             "verdict": c.verdict} for c in checks]


def gate_markdown(checks: Sequence[Check]) -> list[str]:
    """The gate as a markdown table, then each check's detail."""
    rows = gate_rows(checks)
    return ["| check | value | needs | verdict |", "|---|---|---|---|",
            *[f"| {r['check']} | {r['value']} | {r['needs']} | **{r['verdict']}** |" for r in rows], "",
            *[f"- *{c.name}*: {c.detail}" for c in checks]]


@dataclass(frozen=True)
class Registration:
    """What registration decided and where it went (the run summary's promotion section)."""

    version: str
    alias: str
    checks: list[Check]
    n_trials: int
    parent_run_id: str
    child_run_ids: dict[str, str]
    export: list[str] | None
    tracking_uri: str
    experiment_id: str | None
    evidence_png: bytes | None = None
    regimes: list[dict] = ()  # :func:`regime_rows`


@dataclass(frozen=True)
class FoldPlot:
    fold: int
    test_start: str
    test_end: str
    png: bytes


def run_summary_markdown(alignment_lines: list[str], features_line: str, stage_states: dict[str, str],
                         registration: Registration | None = None, champion_line: str | None = None,
                         drift_markdown: str | None = None, plots: Sequence[FoldPlot] = ()) -> str:
    """The ``sentio-run-summary`` markdown: promotion, champion, drift, data, one image per fold, stage states."""
    lines = ["# Sentio run summary", ""]
    if registration is not None:
        r = registration
        head = (f"Model version {r.version} -> alias **{r.alias}**. The gate, with {r.n_trials} trials in the ledger "
                "(every trained policy of this experiment, universe and bar frequency):")
        lines += ["## Promotion", "", head, "", *gate_markdown(r.checks), ""]
        if r.evidence_png is not None:
            image = base64.b64encode(r.evidence_png).decode()
            lines += [f"![out-of-sample equity with the bootstrap band](data:image/png;base64,{image})", ""]
        lines += [f"- MLflow parent run: {mlflow_link(r.tracking_uri, r.experiment_id, r.parent_run_id)}",
                  *[f"  - {name}: {mlflow_link(r.tracking_uri, r.experiment_id, run)}"
                    for name, run in sorted(r.child_run_ids.items())],
                  f"- export: {', '.join(r.export) if r.export else 'none (not a champion)'}", ""]
    if registration is not None and registration.regimes:
        about = ("Every fold's test bars by the filtered regime in force at the decision (0 = calmest), pooled over "
                 "folds; per fold in the fold table and the MLflow child runs.")
        lines += ["## Results by regime", "", about, "",
                  "| strategy | regime | bars | Sharpe | return |", "|---|---|---|---|---|",
                  *[f"| {r['strategy']} | {r['regime']} | {r['bars']} | {r['sharpe']} | {r['return']} |"
                    for r in registration.regimes], ""]
    if champion_line is not None:
        lines += ["## Current champion on the newest bars", "", champion_line, ""]
    if drift_markdown is not None:
        lines += [drift_markdown, ""]
    lines += ["## Data", "", *[f"- {line.strip()}" for line in alignment_lines], "", f"- {features_line}", ""]
    for plot in plots:
        image = base64.b64encode(plot.png).decode()
        lines += [f"## Fold {plot.fold} ({day(plot.test_start)} .. {day(plot.test_end)})", "",
                  f"![equity and drawdown](data:image/png;base64,{image})", ""]
    lines += ["## Stages", "", "| stage | state |", "|---|---|", *[f"| {n} | {s} |" for n, s in stage_states.items()]]
    return "\n".join(lines)
