"""What registration records, decided before anything is written: the promotion gate, the MLflow
params, tags and metrics of the parent and child runs, and the out-of-sample evidence and data
provenance of the export. Pure; ``tasks/register.py`` writes it to MLflow and the export folder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sentio_core.baselines import NAMES as CHILD_BASELINES  # every baseline's headline metrics go with each child run
from sentio_core.config import MODEL_SECTIONS, Config, flatten, reads, stable_hash
from sentio_core.metadata import DataProvenance, FoldResult, OutOfSample, TrainingSummary
from sentio_core.promotion import GateResult, promotion_gate

if TYPE_CHECKING:  # records handed in by the stages (data only)
    from sentio_core.data import Manifest
    from sentio_core.folds import FoldSpan

CHILD_BASELINE_METRICS = ("sharpe", "total_return", "max_drawdown")
CHILD_TRAINING_METRICS = ("timesteps", "episodes", "seconds")


def child_metrics(algorithm: str, fold_metrics: dict[str, dict[str, float]], training: TrainingSummary) -> dict[str, float]:
    """An algorithm's child-run metrics for one fold: its own out-of-sample metrics, the baselines'
    headline metrics (``flat.sharpe``, ...) and the training's length (``train.timesteps``, ...)."""
    out = {k: float(v) for k, v in fold_metrics[algorithm].items()}
    for base in CHILD_BASELINES:
        out.update({f"{base}.{k}": float(v) for k, v in fold_metrics[base].items() if k in CHILD_BASELINE_METRICS})
    out.update({f"train.{k}": float(getattr(training, k)) for k in CHILD_TRAINING_METRICS})
    return out


@dataclass(frozen=True)
class ChildRun:
    fold: int
    algorithm: str
    metrics: dict[str, float]

    @property
    def name(self) -> str:
        return f"{self.algorithm}-fold-{self.fold}"


@dataclass(frozen=True)
class RegistrationPlan:
    gate: GateResult
    params: dict[str, str]  # the flattened config, operational sections left out
    tags: dict[str, str]  # data_fingerprint, config_hash, code_version
    children: list[ChildRun]  # fold by fold, in train.algorithms order
    parent_metrics: dict[str, float]  # the gate's summary over folds, ``strategy.metric``
    out_of_sample: OutOfSample
    data: DataProvenance


@reads(*MODEL_SECTIONS)
def plan_registration(cfg: Config, manifest: Manifest, data_fingerprint: str, spans: Sequence[FoldSpan],
                      folds: Sequence[FoldResult], trainings: dict[tuple[int, str], TrainingSummary],
                      code_version: str) -> RegistrationPlan:
    """Gate the primary algorithm on the folds' out-of-sample metrics and lay out what to record.

    :param data_fingerprint: the SHA-256 of the written manifest (``Manifest.fingerprint``).
    :param folds: one result per fold, in fold order.
    :param trainings: ``(fold, algorithm)`` -> the training's summary, for every fold and ``train.algorithms`` entry.
    """
    gate = promotion_gate([f.metrics for f in folds], cfg.promotion)
    tags = {"data_fingerprint": data_fingerprint, "config_hash": stable_hash(cfg.identity()),
            "code_version": code_version}
    children = [ChildRun(f.fold, algo, child_metrics(algo, f.metrics, trainings[(f.fold, algo)]))
                for f in folds for algo in cfg.train.algorithms]
    data = DataProvenance(fingerprint=data_fingerprint,
                          files=[r.model_dump() for r in manifest.files],
                          first_train=spans[0].train_start, last_test=spans[-1].test_end)
    return RegistrationPlan(
        gate=gate, params=flatten(cfg, operational=False), tags=tags, children=children,
        parent_metrics={f"{name}.{k}": v for name, s in gate.summary.items() for k, v in s.items()},
        out_of_sample=OutOfSample(folds=list(folds), summary=gate.summary, gate=gate.reasons), data=data)
