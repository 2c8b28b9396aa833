"""CPCV paths (``folds.scheme: cpcv``): every split's test groups assembled into the backtest paths,
each strategy's distribution of path Sharpe ratios, and the splits' trainings logged as trials.

A research evaluation: nothing is registered or exported and no drift report is made (they read
the walk-forward layout); the champion re-score runs as on any night.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task
from prefect.artifacts import create_markdown_artifact

from sentio_core import baselines, files, registry
from sentio_core.algorithms import NAMES as ALGORITHMS
from sentio_core.codeversion import project_version
from sentio_core.config import Config, flatten
from sentio_core.cpcv import path_sharpes, splitter
from sentio_core.registration import run_tags, run_trials, variant_label
from sentio_core.trials import frequency_label, universe_label
from tasks.common import RESULTS, StageKey, StageOutput, releasing

if TYPE_CHECKING:
    from tasks.backtest import BacktestOutput
    from tasks.folds import FoldsOutput
    from tasks.ingest import ManifestOutput
    from tasks.panel import PanelOutput
    from tasks.train import TrainOutput

KEY = StageKey("cpcv", __name__, splitter, run_trials, registry.log_run)
SUMMARY_COLUMNS = ("paths", "mean", "sd", "min", "q25", "median", "q75", "max", "share_positive")


class CPCVOutput(StageOutput):
    splits: int
    paths: int
    summary: dict[str, dict[str, float]]  # strategy -> distribution of its path Sharpe ratios
    sharpes: dict[str, list[float]]  # strategy -> each path's Sharpe
    markdown: str
    mlflow_run_id: str
    n_trials_logged: int


def markdown(out_summary: dict[str, dict[str, float]], splits: int, paths: int, groups: int, k: int, purge: int) -> str:
    head = "| strategy | " + " | ".join(SUMMARY_COLUMNS) + " |"
    rows = [f"| {name} | " + " | ".join(f"{s[c]:.0f}" if c == "paths" else f"{s[c]:.2f}" for c in SUMMARY_COLUMNS) + " |"
            for name, s in out_summary.items()]
    about = (f"{groups} groups, {k} tested per split: {splits} splits, {paths} backtest paths over every group; purge "
             f"and embargo {purge} bars around each test block. Annualised Sharpe ratio of each path, out of sample, "
             "after costs. Research evaluation: nothing is registered.")
    return "\n".join(["## Combinatorial purged cross-validation", "", about, "",
                      head, "|---" * (len(SUMMARY_COLUMNS) + 1) + "|", *rows])


@task(name="cpcv-paths", cache_key_fn=KEY.cache_key_fn, **RESULTS, retries=2, retry_delay_seconds=5)
@releasing
def cpcv(cfg: Config, manifest: ManifestOutput, panel: PanelOutput, folds: FoldsOutput, trained: list[TrainOutput],
         backtests: list[BacktestOutput]) -> CPCVOutput:
    """Assemble the paths, write and publish their Sharpe distribution, log it and the trials to MLflow."""
    spans = folds.folds
    cv = splitter(cfg, spans[0].purge_bars)
    returns = [b.returns() for b in backtests]
    groups_of = [(s.test_groups, [b - a for a, b in s.test_ranges]) for s in spans]
    strategies = [n for n in (*ALGORITHMS, *baselines.NAMES) if n in returns[0].returns]
    ppy = panel.frequency.periods_per_year
    result = path_sharpes(cv, groups_of, [r.returns for r in returns], strategies, ppy)
    summary = {name: p.summary() for name, p in result.items()}
    text = markdown(summary, cv.n_splits, cv.n_paths, cv.n_groups, cv.k, spans[0].purge_bars)
    out = KEY.output(cfg, "json", manifest, panel, folds, trained, backtests)
    files.write_json({"summary": summary, "sharpes": {k: p.sharpes for k, p in result.items()}}, out)
    create_markdown_artifact(text, key="sentio-cpcv", description="CPCV: the distribution of backtest-path Sharpe ratios")
    # every split's trainings are trials of the ledger (a split's returns are its test groups, chained)
    tags = run_tags(cfg, manifest.sha256, project_version())
    universe = universe_label(cfg.universe.underlying, cfg.universe.long, cfg.universe.short, cfg.universe.synthesize)
    frequency = frequency_label(panel.frequency.bar_minutes)
    by_split = {(t.fold, t.algorithm): t.training for t in trained}
    records = [r for rs in run_trials(cfg, returns, by_split, tags, universe, frequency, {(t.fold, t.algorithm): t.policy_hashes() for t in trained}).values() for r in rs]
    trials_file = files.write_json([r.model_dump(mode="json") for r in records],
                                   out.with_suffix("") / registry.TRIALS_ARTIFACT)
    metrics = {f"cpcv.{name}.{k}": v for name, s in summary.items() for k, v in s.items()}
    run_id = registry.log_run(cfg.registry, "cpcv", metrics,
                              {"kind": "cpcv", **tags, **registry.trial_tags(universe, frequency, variant_label(cfg.train))},
                              params=flatten(cfg, operational=False), artifacts=[trials_file, out])
    return CPCVOutput(stage="cpcv", path=str(out), sha256=files.file_sha256(out), splits=cv.n_splits, paths=cv.n_paths,
                      summary=summary, sharpes={k: p.sharpes for k, p in result.items()}, markdown=text,
                      mlflow_run_id=run_id, n_trials_logged=len(records))
