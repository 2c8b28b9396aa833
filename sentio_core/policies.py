"""Policy construction: MaskablePPO and PPO with the same network, hyper-parameters and seed.

Both algorithms get the same MLP (``train.net_arch`` for actor and critic), so the only
difference between the primary model and the baseline is whether the policy sees the masks.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.vec_env import VecEnv

from sentio_core import algorithms
from sentio_core.config import AlgorithmName, TrainConfig

Algorithm = AlgorithmName
ALGORITHMS: dict[str, type[BaseAlgorithm]] = {s.name: s.algorithm_class() for s in algorithms.REGISTRY}
POLICIES: dict[str, type[BasePolicy]] = {s.name: s.policy_class() for s in algorithms.REGISTRY}


def reads_masks(algorithm: str) -> bool:
    """Whether the algorithm's policy is given the action masks (otherwise the environment
    overrides a forbidden action to the nearest allowed one and counts it)."""
    return algorithms.spec(algorithm).reads_masks


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pin_threads(cfg: TrainConfig) -> None:
    """torch's intra-op threads for training and inference on CPU (``train.torch_threads``; the
    setting is process-wide). On 2 cores 1 is best for the pipeline, which runs other stages beside
    a training; more threads than free cores oversubscribe them (``scripts/bench_train.py``)."""
    if torch.get_num_threads() != cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)


def policy_kwargs(net_arch: list[int]) -> dict:
    """Network shape shared by both algorithms (and needed again to rebuild an exported policy)."""
    return {"net_arch": {"pi": list(net_arch), "vf": list(net_arch)}, "activation_fn": torch.nn.Tanh}


def build_model(algorithm: Algorithm, env: VecEnv, cfg: TrainConfig, seed: int) -> BaseAlgorithm:
    """A fresh MaskablePPO or PPO on ``env`` with the config's hyper-parameters.

    :param env: vectorised training environment (masks read through ``action_masks``).
    :param seed: seeds torch, numpy and the action sampling.
    """
    algorithms.spec(algorithm)  # a clear error for an unknown name
    n_steps = cfg.n_steps
    batch = min(cfg.batch_size, n_steps * env.num_envs)
    model = ALGORITHMS[algorithm](
        "MlpPolicy", env, learning_rate=cfg.learning_rate, n_steps=n_steps, batch_size=batch,
        n_epochs=cfg.n_epochs, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, clip_range=cfg.clip_range,
        ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm,
        policy_kwargs=policy_kwargs(cfg.net_arch), seed=seed, device=resolve_device(cfg.device), verbose=0,
    )
    # sb3's default logger makes an empty tempdir/SB3-<time> folder per training; metrics go
    # through Sentio's own summary, so the model logs nowhere
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def rebuild_policy(algorithm: Algorithm, obs_dim: int, n_actions: int, net_arch: list[int]) -> ActorCriticPolicy:
    """An untrained policy with the exported network's shape, ready for ``load_state_dict``."""
    space = gym.spaces.Box(low=-float("inf"), high=float("inf"), shape=(obs_dim,), dtype="float32")
    return POLICIES[algorithm](space, gym.spaces.Discrete(n_actions), lambda _: 0.0, **policy_kwargs(net_arch))
