"""Training one policy on one fold's training window, within a budget.

A run is a function of (config, market, seed): the seed flows from the config into torch, numpy,
the action sampling and each vectorised environment's episode starts. The budget is any of
timesteps, finished episodes or wall-clock minutes; the first reached stops training. Only a
binding minutes budget makes a run depend on the machine, and the result says which one stopped it.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import ValidationError
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from sentio_core.backtest import policy_decisions, run_engine, sb3_policy
from sentio_core.config import Config, TrainConfig, reads
from sentio_core.engine import Engine
from sentio_core.env import ObservationLayout, TradingEnv
from sentio_core.market import Market
from sentio_core.metadata import SeedSummary, TrainingSummary
from sentio_core.policies import Algorithm, build_model, model_spec, pin_threads, reads_masks
from sentio_core.ranges import Ranges, as_ranges
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


class ValidationCallback(BaseCallback):
    """Evaluates the deterministic policy on the validation slice every ``every`` timesteps and at
    the end of training, and keeps the weights of the best evaluation (the earliest among equals).

    :param evaluate: the policy's validation score (higher is better); it reads only the
        validation rows, so the kept checkpoint is chosen by validation results alone.
    :param patience: stop after this many evaluations without a better score (None: never).
    """

    def __init__(self, evaluate: Callable[[BaseAlgorithm], float], every: int, patience: int | None = None):
        super().__init__()
        self.evaluate, self.every, self.patience = evaluate, every, patience
        self.history: list[tuple[int, float]] = []  # (timesteps, score) of every evaluation
        self.best_score, self.best_timesteps, self.best_state = -math.inf, 0, None
        self.stopped_early, self._next, self._since_best = False, every, 0

    def _on_step(self) -> bool:
        if self.num_timesteps < self._next:
            return True
        while self._next <= self.num_timesteps:
            self._next += self.every
        self._record()
        if self.patience is not None and self._since_best >= self.patience:
            self.stopped_early = True
            return False
        return True

    def _on_training_end(self) -> None:
        if not self.history or self.history[-1][0] != self.num_timesteps:
            self._record()

    def _record(self) -> None:
        score = float(self.evaluate(self.model))
        self.history.append((int(self.num_timesteps), score))
        if score > self.best_score:
            self.best_score, self.best_timesteps, self._since_best = score, int(self.num_timesteps), 0
            self.best_state = copy.deepcopy(self.model.policy.state_dict())
        else:
            self._since_best += 1

    def restore_best(self) -> None:
        """Load the kept checkpoint into the model."""
        if self.best_state is not None:
            self.model.policy.load_state_dict(self.best_state)


def validation_sharpe(market: Market, cfg: Config, rows: tuple[int, int], algorithm: Algorithm
                      ) -> Callable[[BaseAlgorithm], float]:
    """The annualised Sharpe, after costs and under the masks, of a model's deterministic policy
    over the validation rows ``[c, d)``: the backtest of :mod:`sentio_core.backtest` run on the
    validation slice (decisions from the close of ``c - 1``). A flat path scores 0."""
    masked = reads_masks(algorithm)
    engine = Engine(market, cfg, 1)
    first, last = rows[0] - 1, rows[1] - 1

    def evaluate(model: BaseAlgorithm) -> float:
        decide = policy_decisions([(sb3_policy(model, masked), masked)], engine.obs_dim)
        path = run_engine(engine, first, last, decide, market.timestamps)[0]
        return path.metrics(market.periods_per_year)["sharpe"]
    return evaluate


@dataclass
class TrainResult:
    """One seed's training; with a validation slice, ``model`` holds the kept checkpoint."""

    model: BaseAlgorithm
    algorithm: str
    timesteps: int
    episodes: int
    seconds: float
    stopped_by: str
    device: str
    seed: int = 0
    kept_timesteps: int | None = None  # the kept checkpoint's timesteps (None: no validation, the last weights)
    validation_sharpe: float | None = None  # the kept checkpoint's validation score
    validation_curve: list[tuple[int, float]] = field(default_factory=list)


def vec_env(market: Market, cfg: Config, rows: tuple[int, int] | Ranges) -> VecEnv:
    """``train.n_envs`` environments over the training rows (one range or a split's several), random
    episode starts: portfolios of the vectorised engine (:class:`EngineVecEnv`)."""
    ranges = as_ranges(rows)
    windows = [(a, b - 1) for a, b in ranges]
    return EngineVecEnv(market, cfg, *windows[0], cfg.train.n_envs, cfg.env.episode_bars, cfg.train.reward_scale,
                        windows=windows if len(windows) > 1 else None)


def reference_vec_env(market: Market, cfg: Config, rows: tuple[int, int]) -> DummyVecEnv:
    """The same environments as gymnasium ``TradingEnv`` objects in a ``DummyVecEnv`` (the slow,
    readable reference the benchmark and the tests compare with)."""
    first, last = rows[0], rows[1] - 1
    return DummyVecEnv([lambda: TradingEnv(market, cfg, first, last, cfg.env.episode_bars)] * cfg.train.n_envs)


def fold_model(algorithm: Algorithm, market: Market, cfg: Config, rows: tuple[int, int] | Ranges, seed: int) -> BaseAlgorithm:
    """A fresh model of ``algorithm`` on :func:`vec_env` over ``rows``, with the network the config
    asks for on this market's observations (:func:`sentio_core.policies.model_spec`)."""
    spec = model_spec(cfg.train, ObservationLayout.of(market, cfg), market.feature_names, market.norm_mean, market.norm_std)
    return build_model(algorithm, vec_env(market, cfg, rows), cfg.train, seed, spec)


def train_policy(algorithm: Algorithm, market: Market, cfg: Config, train_rows: tuple[int, int] | Ranges, seed: int,
                 budget: Budget | None = None, on_progress=None, validation_rows: tuple[int, int] | None = None) -> TrainResult:
    """Train ``algorithm`` on ``market``'s training rows ``[a, b)`` (or several ranges).

    :param seed: the run's seed (torch, numpy, sampling, episode starts).
    :param budget: defaults to the config's ``train`` budget.
    :param on_progress: called as ``on_progress(timesteps, episodes)`` after each rollout.
    :param validation_rows: rows ``[c, d)`` the deterministic policy is evaluated on every
        ``train.eval_every`` timesteps; the best checkpoint is kept (None: the last weights).
    """
    budget = budget or Budget.from_config(cfg)
    pin_threads(cfg.train)
    model = fold_model(algorithm, market, cfg, train_rows, seed)
    callback = BudgetCallback(budget, on_progress)
    validation = None
    if validation_rows is not None:
        validation = ValidationCallback(validation_sharpe(market, cfg, validation_rows, algorithm),
                                        cfg.train.eval_every, cfg.train.patience)
    start = time.perf_counter()
    model.learn(total_timesteps=budget.timesteps or UNLIMITED,
                callback=CallbackList([callback, validation]) if validation else callback)
    seconds = time.perf_counter() - start
    result = TrainResult(model, algorithm, int(model.num_timesteps), callback.episodes, seconds, callback.stopped_by,
                         str(model.device), seed)
    if validation is not None:
        validation.restore_best()
        result.kept_timesteps, result.validation_sharpe = validation.best_timesteps, validation.best_score
        result.validation_curve = validation.history
        if validation.stopped_early:
            result.stopped_by = "patience"
    return result


@dataclass
class FoldTraining:
    """Every seed's training of one algorithm on one fold, and the one chosen for the backtest."""

    runs: list[TrainResult]
    chosen: int  # index into runs: the best validation Sharpe (the first seed without validation)
    validation_rows: tuple[int, int] | None

    @property
    def result(self) -> TrainResult:
        return self.runs[self.chosen]


def choose_seed(runs: list[TrainResult]) -> int:
    """The run with the best validation Sharpe (the earliest seed among equals; the first without validation)."""
    scores = [-math.inf if r.validation_sharpe is None else r.validation_sharpe for r in runs]
    return int(np.argmax(scores))


@reads("seed", "universe", "env", "masks", "costs", "train")
def fold_training(cfg: Config, market: Market, span: FoldSpan, algorithm: Algorithm, budget: Budget | None = None,
                  on_progress=None) -> FoldTraining:
    """Train ``train.seeds`` seeds of one algorithm on the fold's training rows before its inner
    validation slice (:meth:`FoldSpan.inner_split`), seeds ``cfg.fold_seed + 0, 1, ...``; each
    keeps its best checkpoint on the slice, and the best seed there is chosen.

    torch's compiler caches go under ``run.work_dir`` (``TORCHINDUCTOR_CACHE_DIR``, unless set), not
    in the system's temporary folder.
    """
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cfg.run.work_dir).resolve() / "torch-cache"))
    learn_rows, validation_rows = span.inner_split(cfg.train.validation_bars)
    base, runs = cfg.fold_seed(span.fold), []
    for k in range(cfg.train.seeds):
        done = sum(r.timesteps for r in runs)  # progress counts the seeds' steps together
        progress = None if on_progress is None else (lambda steps, episodes, done=done: on_progress(done + steps, episodes))
        runs.append(train_policy(algorithm, market, cfg, learn_rows, base + k, budget, progress, validation_rows))
    return FoldTraining(runs, choose_seed(runs), validation_rows)


def training_summary(cfg: Config, training: FoldTraining, fold: int, budget: Budget, market: Market | None = None
                     ) -> TrainingSummary:
    """What the export records of a fold's training: the chosen seed's length, stop, device and
    validation score, the budget, and every seed's summary (the spread)."""
    chosen = training.result
    window = None
    if training.validation_rows is not None and market is not None:
        c, d = training.validation_rows
        window = (market.timestamps[c], market.timestamps[d - 1])
    return TrainingSummary(fold=fold, algorithm=chosen.algorithm, timesteps=chosen.timesteps, episodes=chosen.episodes,
                           seconds=round(sum(r.seconds for r in training.runs), 2), stopped_by=chosen.stopped_by,
                           device=chosen.device, learning_rate=cfg.train.learning_rate, budget=budget.to_dict(),
                           seed=chosen.seed, kept_timesteps=chosen.kept_timesteps,
                           validation_sharpe=_rounded(chosen.validation_sharpe), validation_window=window,
                           objective=training_objective(cfg.train),
                           seeds=[SeedSummary(seed=r.seed, timesteps=r.timesteps, seconds=round(r.seconds, 2),
                                              stopped_by=r.stopped_by, kept_timesteps=r.kept_timesteps,
                                              validation_sharpe=_rounded(r.validation_sharpe),
                                              validation_curve=[(t, round(v, 4)) for t, v in r.validation_curve])
                                  for r in training.runs])


def training_objective(cfg: TrainConfig) -> dict:
    """What the update optimised, beside the network (the export header's ``model``)."""
    return {"critic": cfg.critic, "n_quantiles": cfg.n_quantiles if cfg.critic == "quantile" else None,
            "quantile_kappa": cfg.quantile_kappa if cfg.critic == "quantile" else None,
            "cvar_alpha": cfg.cvar_alpha, "cvar_weight": cfg.cvar_weight, "adaptive_kl": cfg.adaptive_kl,
            "kl_target": cfg.kl_target if cfg.adaptive_kl else None, "target_kl": cfg.target_kl}


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
