"""The algorithm registry: one place names the algorithms, and everything else reads it."""

from __future__ import annotations

import pytest
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy

from sentio_core import algorithms
from sentio_core.config import ALGORITHM_NAMES, TrainConfig
from sentio_core.policies import ALGORITHMS, POLICIES, reads_masks
from sentio_core.promotion import BASELINE, PRIMARY
from sentio_core.report import SHORT


def test_every_entry_resolves_to_an_algorithm_and_its_policy():
    for spec in algorithms.REGISTRY:
        assert issubclass(spec.algorithm_class(), BaseAlgorithm)
        assert issubclass(spec.policy_class(), BasePolicy)
        # a policy that reads masks is a maskable one, and the other way round
        assert issubclass(spec.policy_class(), MaskableActorCriticPolicy) == spec.reads_masks == reads_masks(spec.name)


def test_the_config_the_trainer_the_gate_and_the_report_read_the_registry():
    assert ALGORITHM_NAMES == algorithms.NAMES == tuple(ALGORITHMS) == tuple(POLICIES)
    assert (PRIMARY, BASELINE) == algorithms.NAMES[:2]
    assert all(SHORT[name] == algorithms.spec(name).short for name in algorithms.NAMES)
    assert TrainConfig().algorithms == list(algorithms.NAMES)


def test_an_unknown_name_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model type 'a2c'; use one of \['maskable_ppo', 'ppo'\]"):
        algorithms.spec("a2c")
    with pytest.raises(ValueError, match="algorithms"):
        TrainConfig(algorithms=["a2c"])
