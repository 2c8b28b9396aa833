"""Training one policy on one fold's training window, within a budget.

A run is a function of (config, market, seed): the seed flows from the config into torch, numpy,
the action sampling and each vectorised environment's episode starts. The budget is any of
timesteps, finished episodes or wall-clock minutes; the first reached stops training. Only a
binding minutes budget makes a run depend on the machine, and the result says which one stopped it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from sentio_core.config import Config, TrainConfig, reads
from sentio_core.env import TradingEnv
from sentio_core.market import Market
from sentio_core.metadata import TrainingSummary
from sentio_core.policies import Algorithm, build_model, pin_threads
from sentio_core.vec_env import EngineVecEnv

if TYPE_CHECKING:  # a record handed in by the folds stage (data only)
    from sentio_core.folds import FoldSpan

UNLIMITED = 10**12


class BudgetError(ValueError):
    """A training budget that cannot work; the message names the budget and the rule.

    :param problems: ``(limit or None, what is wrong)``; None when no limit is set at all.
    """

    def __init__(self, problems: list[tuple[str | None, str]]):
        self.problems = problems
        super().__init__("; ".join(f"budget {name}: {msg}" if name else msg for name, msg in problems))


@dataclass(frozen=True)
class Budget:
    """When training stops: the first of ``timesteps``, ``episodes`` or ``minutes`` reached.

    The rules (each positive, at least one set) are the config schema's (``TrainConfig``), written
    once there; a bad budget raises :class:`BudgetError`.
    """

    timesteps: int | None = None
    episodes: int | None = None
    minutes: float | None = None
    timeout_minutes: float | None = None  # not a budget: exceeding it is a failure (TrainingTimeout)

    def __post_init__(self) -> None:
        values = {"timesteps": self.timesteps, "episodes": self.episodes, "minutes": self.minutes}
        try:
            TrainConfig.model_validate(values)
        except ValidationError as exc:
            raise BudgetError([(str(e["loc"][0]), f"{e['msg'].lower()} (got {values[e['loc'][0]]!r})") if e["loc"]
                               else (None, e["msg"].removeprefix("Value error, ")) for e in exc.errors()]) from None

    @classmethod
    def from_config(cls, cfg: Config, **overrides) -> "Budget":
        values = {"timesteps": cfg.train.timesteps, "episodes": cfg.train.episodes, "minutes": cfg.train.minutes}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        """The budget's limits that are set (not the timeout, an operational guard)."""
        return {k: v for k, v in vars(self).items() if v is not None and k != "timeout_minutes"}


class TrainingTimeout(TimeoutError):
    """Training ran past its timeout; the run treats it as a failed (retryable) task."""


class BudgetCallback(BaseCallback):
    """Stops ``learn`` when the episode or minutes budget is reached (timesteps stop it natively)."""

    def __init__(self, budget: Budget, on_progress=None):
        super().__init__()
        self.budget, self.on_progress = budget, on_progress
        self.episodes, self.stopped_by, self.started = 0, "timesteps", 0.0

    def _on_training_start(self) -> None:
        self.started = time.perf_counter()

    def _on_step(self) -> bool:
        self.episodes += int(sum(self.locals.get("dones", [])))
        if self.budget.episodes is not None and self.episodes >= self.budget.episodes:
            self.stopped_by = "episodes"
            return False
        elapsed = time.perf_counter() - self.started
        if self.budget.minutes is not None and elapsed >= 60 * self.budget.minutes:
            self.stopped_by = "minutes"
            return False
        if self.budget.timeout_minutes is not None and elapsed >= 60 * self.budget.timeout_minutes:
            raise TrainingTimeout(f"training exceeded its {self.budget.timeout_minutes:g}-minute timeout "
                                  f"after {self.num_timesteps} steps")
        return True

    def _on_rollout_end(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.num_timesteps, self.episodes)


@dataclass
class TrainResult:
    model: BaseAlgorithm
    algorithm: str
    timesteps: int
    episodes: int
    seconds: float
    stopped_by: str
    device: str


def vec_env(market: Market, cfg: Config, rows: tuple[int, int]) -> VecEnv:
    """``train.n_envs`` environments over the training rows, random episode starts: portfolios of
    the vectorised engine (:class:`EngineVecEnv`)."""
    first, last = rows[0], rows[1] - 1
    return EngineVecEnv(market, cfg, first, last, cfg.train.n_envs, cfg.env.episode_bars)


def reference_vec_env(market: Market, cfg: Config, rows: tuple[int, int]) -> DummyVecEnv:
    """The same environments as gymnasium ``TradingEnv`` objects in a ``DummyVecEnv`` (the slow,
    readable reference the benchmark and the tests compare with)."""
    first, last = rows[0], rows[1] - 1
    return DummyVecEnv([lambda: TradingEnv(market, cfg, first, last, cfg.env.episode_bars)] * cfg.train.n_envs)


def train_policy(algorithm: Algorithm, market: Market, cfg: Config, train_rows: tuple[int, int], seed: int,
                 budget: Budget | None = None, on_progress=None) -> TrainResult:
    """Train ``algorithm`` on ``market``'s training rows ``[a, b)``.

    :param seed: the run's seed (torch, numpy, sampling, episode starts).
    :param budget: defaults to the config's ``train`` budget.
    :param on_progress: called as ``on_progress(timesteps, episodes)`` after each rollout.
    """
    budget = budget or Budget.from_config(cfg)
    pin_threads(cfg.train)
    env = vec_env(market, cfg, train_rows)
    model = build_model(algorithm, env, cfg.train, seed)
    callback = BudgetCallback(budget, on_progress)
    start = time.perf_counter()
    model.learn(total_timesteps=budget.timesteps or UNLIMITED, callback=callback)
    return TrainResult(model, algorithm, int(model.num_timesteps), callback.episodes,
                       time.perf_counter() - start, callback.stopped_by, str(model.device))


@reads("seed", "universe", "env", "masks", "costs", "train")
def fold_training(cfg: Config, market: Market, span: FoldSpan, algorithm: Algorithm, budget: Budget | None = None,
                  on_progress=None) -> TrainResult:
    """Train one algorithm on the fold's training rows, seeded with ``cfg.fold_seed``.

    torch's compiler caches go under ``run.work_dir`` (``TORCHINDUCTOR_CACHE_DIR``, unless set), not
    in the system's temporary folder.
    """
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cfg.run.work_dir).resolve() / "torch-cache"))
    return train_policy(algorithm, market, cfg, span.train_rows, cfg.fold_seed(span.fold), budget, on_progress)


def training_summary(cfg: Config, result: TrainResult, fold: int, budget: Budget) -> TrainingSummary:
    """What the export records of a training: its length, its stop, where it ran, with what budget."""
    return TrainingSummary(fold=fold, algorithm=result.algorithm, timesteps=result.timesteps, episodes=result.episodes,
                           seconds=round(result.seconds, 2), stopped_by=result.stopped_by, device=result.device,
                           learning_rate=cfg.train.learning_rate, budget=budget.to_dict())
