"""Run reports as Prefect artifacts of the flow run: the fold table, the run summary, the progress.

These are plain functions, not tasks: a cached stage does not run its body, so anything a user
must see on *every* run (including a fully cached one) is published from the flow run itself. The
rows and the markdown are built by :mod:`sentio_core.report`; this module only publishes them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from sentio_core.report import FoldPlot, Registration, regime_rows, run_summary_markdown

if TYPE_CHECKING:
    from tasks.backtest import BacktestOutput
    from tasks.cpcv import CPCVOutput
    from tasks.drift import DriftOutput
    from tasks.features import FeaturesOutput
    from tasks.panel import PanelOutput
    from tasks.register import RegisterOutput
    from tasks.rescore import RescoreOutput


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


def _registration(reg: RegisterOutput) -> Registration:
    plot = Path(reg.evidence_plot)
    return Registration(version=reg.version, alias=reg.alias, checks=reg.gate.checks, n_trials=reg.n_trials,
                        parent_run_id=reg.parent_run_id, child_run_ids=reg.child_run_ids, export=reg.export,
                        tracking_uri=reg.tracking_uri, experiment_id=reg.experiment_id,
                        evidence_png=plot.read_bytes() if plot.is_file() else None,
                        regimes=regime_rows(reg.regimes, _n_regimes(reg.regimes)))


def _n_regimes(pooled: dict[str, dict[str, float]]) -> int:
    keys = next(iter(pooled.values()), {})
    return sum(1 for k in keys if k.endswith("_bars"))


def publish(rows: list[dict], panel: PanelOutput, features: FeaturesOutput, stage_states: dict[str, str],
            registered: RegisterOutput | None = None, backtests: list[BacktestOutput] = (),
            drift: DriftOutput | None = None, champion: RescoreOutput | None = None, cpcv: CPCVOutput | None = None) -> None:
    """Create the fold table artifact and a run summary artifact (gate, registry, curves, drift)."""
    create_table_artifact(rows, key="sentio-folds",
                          description="Purged walk-forward folds: dates, regime shares, out-of-sample metrics after costs")
    plots = [FoldPlot(b.result.fold, b.result.test_start, b.result.test_end, Path(b.plot_file).read_bytes())
             for b in backtests]
    markdown = run_summary_markdown(
        panel.alignment.lines(), features.line(), stage_states,
        registration=_registration(registered) if registered is not None else None,
        champion_line=champion.summary_line if champion is not None else None,
        drift_markdown=drift.markdown if drift is not None else cpcv.markdown if cpcv is not None else None, plots=plots)
    create_markdown_artifact(markdown, key="sentio-run-summary",
                             description="Promotion decision, MLflow runs, drift, equity curves, stage states")
