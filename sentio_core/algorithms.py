"""The learning algorithms, named in one place.

Each entry says what the rest of Sentio needs to know of an algorithm: its name (config, CLI,
metrics, exports), its stable-baselines3 class and policy class (as import paths, resolved when a
model is built, so naming the algorithms costs no torch import), whether its policy reads the
action masks (otherwise the engine overrides a forbidden choice and counts it), and the short
prefix of the terminal's fold summary. The first entry is the promoted algorithm, the second the
baseline it must beat. Adding an algorithm is adding an entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    algorithm: str  # "module:Class" of the stable-baselines3 algorithm
    policy: str  # "module:Class" of its actor-critic policy
    reads_masks: bool
    short: str  # prefix in the terminal's fold summary
    sentio_algorithm: str  # "module:Class" with Sentio's update (quantile critic, CVaR, adaptive KL)
    sentio_policy: str  # "module:Class" with Sentio's networks (transformer, quantile critic, gating)

    def algorithm_class(self):
        return _load(self.algorithm)

    def policy_class(self):
        return _load(self.policy)

    def sentio_algorithm_class(self):
        return _load(self.sentio_algorithm)

    def sentio_policy_class(self):
        return _load(self.sentio_policy)


def _load(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


REGISTRY: tuple[AlgorithmSpec, ...] = (
    AlgorithmSpec("maskable_ppo", "sb3_contrib:MaskablePPO",
                  "sb3_contrib.common.maskable.policies:MaskableActorCriticPolicy", True, "mppo",
                  "sentio_core.learner:SentioMaskablePPO", "sentio_core.networks:SentioMaskablePolicy"),
    AlgorithmSpec("ppo", "stable_baselines3:PPO", "stable_baselines3.common.policies:ActorCriticPolicy", False, "ppo",
                  "sentio_core.learner:SentioPPO", "sentio_core.networks:SentioPolicy"),
)
SPECS: dict[str, AlgorithmSpec] = {spec.name: spec for spec in REGISTRY}
NAMES: tuple[str, ...] = tuple(SPECS)
PRIMARY, BASELINE = NAMES[0], NAMES[1]  # the promoted algorithm, and the baseline it must beat


def spec(name: str) -> AlgorithmSpec:
    """The entry of ``name``; a clear error naming the known ones otherwise."""
    if name not in SPECS:
        raise ValueError(f"unknown model type {name!r}; use one of {sorted(SPECS)}")
    return SPECS[name]


def seed_name(algorithm: str, k: int) -> str:
    """The backtest's name of an algorithm's k-th seed (``train.seeds`` > 1): reported for the
    spread over seeds, never promoted (the chosen seed runs under the algorithm's own name)."""
    return f"{algorithm}_seed{k}"
