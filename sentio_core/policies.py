"""Policy construction: MaskablePPO and PPO with the same network, hyper-parameters and seed.

Both algorithms get the same network (``train.net_arch`` heads for actor and critic, on the MLP
or the transformer of ``train.policy``, the same critic and gating), so the only difference between
the primary model and the baseline is whether the policy sees the masks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.vec_env import VecEnv

# learner: the registry's Sentio update, named there by path; imported here so that the stages'
# code versions, read from the import graph, include it
from sentio_core import algorithms, learner  # noqa: F401
from sentio_core.config import AlgorithmName, TrainConfig
from sentio_core.networks import BarExtractor, ModelSpec

if TYPE_CHECKING:
    from sentio_core.env import ObservationLayout

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


def policy_kwargs(net_arch: list[int], spec: ModelSpec | None = None) -> dict:
    """Network shape shared by both algorithms (and needed again to rebuild an exported policy)."""
    kwargs = {"net_arch": {"pi": list(net_arch), "vf": list(net_arch)}, "activation_fn": torch.nn.Tanh}
    return kwargs | (spec.policy_kwargs() if spec is not None else {})


def model_spec(cfg: TrainConfig, layout: ObservationLayout, feature_names: list[str] | None = None,
               norm_mean: np.ndarray | None = None, norm_std: np.ndarray | None = None) -> ModelSpec:
    """The network the config asks for on observations of ``layout``.

    :param feature_names, norm_mean, norm_std: the market's observed columns and their
        normalisation statistics; regime gating reads the ``regime_*`` columns' and fails clearly
        when there are none.
    """
    columns, mean, std = [], [], []
    if cfg.regime_gating:
        names = feature_names or []
        columns = [i for i, n in enumerate(names) if n.startswith("regime_")]
        if len(columns) < 2:
            raise ValueError("train.regime_gating needs the regime probabilities in the observation (regime_* feature "
                             f"columns); the market observes {len(columns)}: enable the regimes section")
        mean = [float(norm_mean[i]) for i in columns]
        std = [float(norm_std[i]) for i in columns]
    return ModelSpec(policy=cfg.policy, lookback=layout.lookback, n_features=layout.n_features, n_state=layout.n_state,
                     d_model=cfg.d_model, layers=cfg.transformer_layers, heads=cfg.transformer_heads,
                     ff=cfg.transformer_ff or 2 * cfg.d_model, dropout=cfg.transformer_dropout,
                     positional=cfg.positional_encoding, critic=cfg.critic,
                     n_quantiles=cfg.n_quantiles if cfg.critic == "quantile" else 0, regime_gating=cfg.regime_gating,
                     regime_columns=columns, regime_mean=mean, regime_std=std)


def uses_sentio_update(cfg: TrainConfig) -> bool:
    """Whether training needs Sentio's update (:mod:`sentio_core.learner`) rather than sb3's."""
    return cfg.critic == "quantile" or cfg.adaptive_kl  # a CVaR weight needs the quantile critic (config rule)


def build_model(algorithm: Algorithm, env: VecEnv, cfg: TrainConfig, seed: int, spec: ModelSpec | None = None
                ) -> BaseAlgorithm:
    """A fresh MaskablePPO or PPO on ``env`` with the config's hyper-parameters.

    sb3's own classes build the default network (MLP, scalar critic) and run the default update;
    Sentio's (:mod:`sentio_core.networks`, :mod:`sentio_core.learner`) take over only for what
    they add, so the default is stable-baselines3 unchanged.

    :param env: vectorised training environment (masks read through ``action_masks``).
    :param seed: seeds torch, numpy and the action sampling.
    :param spec: the network (:func:`model_spec`); None: the MLP of ``cfg.net_arch``.
    """
    entry = algorithms.spec(algorithm)  # a clear error for an unknown name
    spec = spec if spec is not None and not spec.is_default else None
    n_steps = cfg.n_steps
    batch = min(cfg.batch_size, n_steps * env.num_envs)
    extra: dict = {}
    algorithm_class = ALGORITHMS[algorithm]
    if uses_sentio_update(cfg):
        algorithm_class = entry.sentio_algorithm_class()
        extra = {"quantile_kappa": cfg.quantile_kappa, "cvar_alpha": cfg.cvar_alpha, "cvar_weight": cfg.cvar_weight,
                 "adaptive_kl": cfg.adaptive_kl, "kl_target": cfg.kl_target, "kl_coef": cfg.kl_coef}
    policy = entry.sentio_policy_class() if spec is not None else "MlpPolicy"
    model = algorithm_class(
        policy, env, learning_rate=cfg.learning_rate, n_steps=n_steps, batch_size=batch,
        n_epochs=cfg.n_epochs, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, clip_range=cfg.clip_range,
        ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm, target_kl=cfg.target_kl,
        policy_kwargs=policy_kwargs(cfg.net_arch, spec), seed=seed, device=resolve_device(cfg.device), verbose=0, **extra,
    )
    # sb3's default logger makes an empty tempdir/SB3-<time> folder per training; metrics go
    # through Sentio's own summary, so the model logs nowhere
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def model_of(policy: BasePolicy) -> ModelSpec | None:
    """The :class:`ModelSpec` of a built policy (None: sb3's default MLP)."""
    extractor = getattr(policy, "features_extractor", None)
    return extractor.spec if isinstance(extractor, BarExtractor) else None


def rebuild_policy(algorithm: Algorithm, obs_dim: int, n_actions: int, net_arch: list[int],
                   model: dict | None = None) -> ActorCriticPolicy:
    """An untrained policy with the exported network's shape, ready for ``load_state_dict``.

    :param model: the export header's ``model`` (:meth:`ModelSpec.to_dict`); None: the MLP.
    """
    space = gym.spaces.Box(low=-float("inf"), high=float("inf"), shape=(obs_dim,), dtype="float32")
    spec = ModelSpec.from_dict(model) if model else None
    cls = algorithms.spec(algorithm).sentio_policy_class() if spec is not None else POLICIES[algorithm]
    return cls(space, gym.spaces.Discrete(n_actions), lambda _: 0.0, **policy_kwargs(net_arch, spec))
