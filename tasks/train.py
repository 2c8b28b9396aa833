"""Train: one algorithm on one fold's training window; the policy is written as an export (.pth + metadata)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from prefect import task
from prefect.concurrency.sync import concurrency

from sentio_core import files
from sentio_core.config import Config
from sentio_core.export import policy_header, save_policy
from sentio_core.market import policy_spec
from sentio_core.metadata import TrainingSummary, build_metadata
from sentio_core.train import Budget, fold_training, training_summary
from tasks.common import RESULTS, StageKey, StageOutput, releasing
from tasks.fold_inputs import fold_market_held

if TYPE_CHECKING:
    from tasks.features import FeaturesOutput
    from tasks.folds import FoldsOutput
    from tasks.panel import PanelOutput
    from tasks.regimes import RegimesOutput

TRAINING_LIMIT = "sentio-training"  # global concurrency limit: trainings at once (run.training_slots)
LEASE_S = 60.0  # the smallest lease the Prefect API accepts
KEY = StageKey("train", __name__, fold_training)


class TrainOutput(StageOutput):
    """The policy's weights (``.pth``, the record's path) and its export metadata."""

    fold: int
    algorithm: str
    metadata_path: str
    training: TrainingSummary
    seed_paths: list[str] = []  # every seed's export, in seed order (the chosen seed's is ``path``); one seed: empty

    def policy_hashes(self) -> list[str]:
        """Each seed's weights SHA-256, in seed order (the trial ledger's identity of a trained policy)."""
        return [files.file_sha256(p) for p in self.seed_paths] if self.seed_paths else [self.sha256]


@releasing
def _train(cfg: Config, panel: PanelOutput, features: FeaturesOutput, folds: FoldsOutput, regimes: RegimesOutput,
           fold: int, algorithm: str) -> TrainOutput:
    """Train ``algorithm`` on the fold and write it as an export (no out-of-sample results yet)."""
    span = folds.folds[fold]
    budget = Budget.from_config(cfg, timeout_minutes=cfg.run.train_timeout_minutes)
    # a short, renewed lease: a killed run's slot frees itself within LEASE_S instead of Prefect's default 300 s
    with (concurrency(TRAINING_LIMIT, occupy=1, lease_duration=LEASE_S),
          fold_market_held(cfg, panel, features, regimes, span) as mkt):
        training = fold_training(cfg, mkt, span, algorithm, budget)
        spec = policy_spec(cfg, mkt, span)
        summary = training_summary(cfg, training, fold, budget, mkt)
    stem = KEY.fold_output("policy", {"cfg": cfg, "panel": panel, "features": features, "folds": folds, "regimes": regimes,
                                      "fold": fold, "algorithm": algorithm})
    metadata = build_metadata(policy_header(training.result.model, algorithm), spec,
                              asdict(regimes.model), summary, cfg, KEY.version)
    pth, meta_json = save_policy(training.result.model, algorithm, stem, metadata)
    seed_paths = []
    if len(training.runs) > 1:  # every seed, for the spread over seeds the backtest reports (the chosen one is pth)
        seed_paths = [str(pth) if k == training.chosen else str(save_policy(run.model, algorithm, f"{stem}-seed{run.seed}", metadata)[0])
                      for k, run in enumerate(training.runs)]
    return TrainOutput(stage="train", path=str(pth), sha256=files.file_sha256(pth), fold=fold, algorithm=algorithm,
                       metadata_path=str(meta_json), training=summary, seed_paths=seed_paths)


# the function keeps its own module-level name so process-based runners (Dask, Ray) can pickle it
train = task(name="train", cache_key_fn=KEY.fold_cache_key_fn, **RESULTS, task_run_name="train-{algorithm}-fold-{fold}")(_train)
