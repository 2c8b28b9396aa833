"""The policy networks beyond sb3's MLP: a transformer over bars, a quantile critic, regime gating.

One features extractor (:class:`BarExtractor`) and one policy mixin (:class:`SentioPolicyMixin`)
serve MaskablePPO and PPO alike:

- **Transformer** (``train.policy: transformer``): the flat observation is split by
  :class:`~sentio_core.env.ObservationLayout` into one token per bar (that bar's features and
  regime probabilities, linearly embedded) and the portfolio state as a token of its own, last.
  Sinusoidal positional encoding marks the bars' order (``none`` leaves a bag of bars); pre-norm
  encoder layers; the state token's output, after a final LayerNorm, is the features the actor and
  critic heads (``train.net_arch``) read. On CUDA the encoder runs under bf16 autocast.
- **Quantile critic** (``train.critic: quantile``): the value head gives ``n_quantiles`` values at
  the midpoints ``tau_i = (2i + 1) / 2N``; the value used by GAE is their mean.
- **Regime gating** (``train.regime_gating``): one actor head per regime; the action probabilities
  are the mixture ``sum_k p_k softmax(head_k)`` with ``p`` the last bar's filtered regime
  probabilities (recovered exactly from the normalised observation with the fold's statistics).

A :class:`ModelSpec` names all of it; it is written into the export header so the loader rebuilds
the same network (:func:`sentio_core.policies.rebuild_policy`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, MlpExtractor
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """What a policy network is, beyond its MLP widths; JSON-friendly (the export header's ``model``).

    :param regime_columns: indices, within one bar's features, of the regime probabilities (gating).
    :param regime_mean, regime_std: their normalisation statistics (the observation is z-scored).
    """

    policy: str = "mlp"
    lookback: int = 1
    n_features: int = 1
    n_state: int = 0
    d_model: int = 32
    layers: int = 2
    heads: int = 4
    ff: int = 64
    dropout: float = 0.0
    positional: str = "sinusoidal"
    critic: str = "scalar"
    n_quantiles: int = 0  # > 0 exactly when critic is "quantile"
    regime_gating: bool = False
    regime_columns: list[int] = field(default_factory=list)
    regime_mean: list[float] = field(default_factory=list)
    regime_std: list[float] = field(default_factory=list)

    @property
    def is_default(self) -> bool:
        """sb3's own MLP policy with a scalar critic: built by sb3 unchanged."""
        return self.policy == "mlp" and self.critic == "scalar" and not self.regime_gating

    @property
    def n_regimes(self) -> int:
        return len(self.regime_columns) if self.regime_gating else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown model fields {unknown}")
        return cls(**d)

    def policy_kwargs(self) -> dict[str, Any]:
        """The sb3 ``policy_kwargs`` beyond ``net_arch``/activation of this spec."""
        if self.is_default:
            return {}
        return {"features_extractor_class": BarExtractor, "features_extractor_kwargs": {"spec": self},
                "n_quantiles": self.n_quantiles, "n_regimes": self.n_regimes}


def quantile_midpoints(n: int) -> np.ndarray:
    """``tau_i = (2i + 1) / 2n``, i = 0..n-1: the quantile levels of an n-quantile critic."""
    return (2 * np.arange(n) + 1) / (2 * n)


def sinusoidal_encoding(length: int, d_model: int) -> torch.Tensor:
    """(length, d_model) sinusoidal position codes (Vaswani et al. 2017): sin on even, cos on odd channels."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10_000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div[: d_model // 2])
    return pe


class BarExtractor(BaseFeaturesExtractor):
    """Features of a flat Sentio observation: the transformer's pooled state token (``policy:
    transformer``) or the observation itself (``mlp``), then the regime probabilities when gating.

    :param spec: the network's :class:`ModelSpec` (the layout and the transformer's sizes).
    """

    def __init__(self, observation_space: spaces.Box, spec: ModelSpec):
        obs_dim = int(observation_space.shape[0])
        expected = spec.lookback * spec.n_features + spec.n_state
        if obs_dim != expected:
            raise ValueError(f"observations have {obs_dim} values; the model's layout {expected} "
                             f"({spec.lookback} bars x {spec.n_features} features + {spec.n_state} state)")
        body = spec.d_model if spec.policy == "transformer" else obs_dim
        super().__init__(observation_space, body + spec.n_regimes)
        self.spec = spec
        self.mixed_precision: bool | None = None  # bf16 autocast of the encoder; None: on CUDA only
        self.window_size = spec.lookback * spec.n_features
        if spec.policy == "transformer":
            self.bar_embed = nn.Linear(spec.n_features, spec.d_model)
            self.state_embed = nn.Linear(max(spec.n_state, 1), spec.d_model)
            encoding = sinusoidal_encoding(spec.lookback + 1, spec.d_model)
            if spec.positional == "none":
                encoding = torch.zeros_like(encoding)
            self.register_buffer("position", encoding, persistent=False)
            layer = nn.TransformerEncoderLayer(spec.d_model, spec.heads, spec.ff, spec.dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            # the nested-tensor fast path is for padded batches; every sequence here is full length
            self.encoder = nn.TransformerEncoder(layer, spec.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(spec.d_model)
        if spec.n_regimes:
            cols = torch.as_tensor([(spec.lookback - 1) * spec.n_features + c for c in spec.regime_columns])
            self.register_buffer("regime_index", cols, persistent=False)
            self.register_buffer("regime_mean", torch.as_tensor(spec.regime_mean, dtype=torch.float32))
            self.register_buffer("regime_std", torch.as_tensor(spec.regime_std, dtype=torch.float32))

    def reset_parameters(self) -> None:
        """The transformer's own initialisation (sb3's orthogonal init is for MLPs): Xavier for the
        embeddings, PyTorch's defaults for the encoder layers."""
        if self.spec.policy != "transformer":
            return
        for embed in (self.bar_embed, self.state_embed):
            nn.init.xavier_uniform_(embed.weight)
            nn.init.zeros_(embed.bias)
        for layer in self.encoder.layers:
            layer.self_attn._reset_parameters()
            for linear in (layer.linear1, layer.linear2):
                linear.reset_parameters()
            for norm in (layer.norm1, layer.norm2):
                norm.reset_parameters()
        self.norm.reset_parameters()

    def regime_probabilities(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, K) the last bar's filtered regime probabilities, un-normalised from the observation."""
        z = obs.index_select(-1, self.regime_index)
        p = (z * self.regime_std + self.regime_mean).clamp(min=0.0)
        return p / p.sum(-1, keepdim=True).clamp(min=1e-12)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, d_model) the transformer's output at the state token."""
        spec = self.spec
        window = obs[..., : self.window_size].reshape(obs.shape[0], spec.lookback, spec.n_features)
        state = obs[..., self.window_size:] if spec.n_state else obs.new_zeros(obs.shape[0], 1)
        bf16 = obs.is_cuda if self.mixed_precision is None else self.mixed_precision
        with torch.autocast(device_type=obs.device.type, dtype=torch.bfloat16, enabled=bf16):
            tokens = torch.cat([self.bar_embed(window), self.state_embed(state)[:, None]], dim=1) + self.position
            out = self.norm(self.encoder(tokens)[:, -1])
        return out.float()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        body = self.encode(obs) if self.spec.policy == "transformer" else obs
        if self.spec.n_regimes:
            return torch.cat([body, self.regime_probabilities(obs)], dim=-1)
        return body


class RegimePassThrough(nn.Module):
    """sb3's MLP extractor on the body features; the regime probabilities (the last ``k`` features)
    are appended to the actor's latent for the gated heads."""

    def __init__(self, mlp: MlpExtractor, k: int):
        super().__init__()
        self.mlp, self.k = mlp, k
        self.latent_dim_pi = mlp.latent_dim_pi + k
        self.latent_dim_vf = mlp.latent_dim_vf

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        body, probs = features[..., : -self.k], features[..., -self.k:]
        return torch.cat([self.mlp.forward_actor(body), probs], dim=-1)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp.forward_critic(features[..., : -self.k])


class GatedHeads(nn.Module):
    """One linear actor head per regime, mixed in probability: the logits returned are
    ``log sum_k p_k softmax(W_k h)``, with ``p`` the last ``k`` entries of the latent."""

    def __init__(self, latent_dim: int, k: int, n_actions: int):
        super().__init__()
        self.k = k
        self.heads = nn.Linear(latent_dim, k * n_actions)
        self.n_actions = n_actions

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h, p = latent[..., : -self.k], latent[..., -self.k:]
        logits = self.heads(h).reshape(h.shape[:-1] + (self.k, self.n_actions))
        return torch.logsumexp(torch.log(p.clamp(min=1e-12))[..., None] + logits.log_softmax(-1), dim=-2)


class QuantileHead(nn.Module):
    """``n`` quantiles of the return; ``forward`` gives their mean (the value GAE uses)."""

    def __init__(self, latent_dim: int, n: int):
        super().__init__()
        self.linear = nn.Linear(latent_dim, n)
        self.register_buffer("tau", torch.as_tensor(quantile_midpoints(n), dtype=torch.float32), persistent=False)

    def quantiles(self, latent: torch.Tensor) -> torch.Tensor:
        return self.linear(latent)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.linear(latent).mean(-1, keepdim=True)


class SentioPolicyMixin:
    """Adds the quantile critic and the gated actor heads to an sb3 actor-critic policy; with
    neither, the policy is built exactly as sb3 builds it (same modules, same random draws).

    :param n_quantiles: >0 replaces the value head by a :class:`QuantileHead`.
    :param n_regimes: >0 replaces the action head by :class:`GatedHeads` (the features extractor
        must append that many regime probabilities: :class:`BarExtractor`).
    """

    def __init__(self, *args, n_quantiles: int = 0, n_regimes: int = 0, **kwargs):
        self.n_quantiles, self.n_regimes = n_quantiles, n_regimes
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return super()._get_constructor_parameters() | {"n_quantiles": self.n_quantiles, "n_regimes": self.n_regimes}

    def _build_mlp_extractor(self) -> None:
        if not self.n_regimes:
            return super()._build_mlp_extractor()
        mlp = MlpExtractor(self.features_dim - self.n_regimes, net_arch=self.net_arch, activation_fn=self.activation_fn,
                           device=self.device)
        self.mlp_extractor = RegimePassThrough(mlp, self.n_regimes)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        if self.n_regimes:
            self.action_net = GatedHeads(self.mlp_extractor.latent_dim_pi - self.n_regimes, self.n_regimes,
                                         int(self.action_space.n))
            self.action_net.apply(partial(self.init_weights, gain=0.01))
        if self.n_quantiles:
            self.value_net = QuantileHead(self.mlp_extractor.latent_dim_vf, self.n_quantiles)
            self.value_net.apply(partial(self.init_weights, gain=1.0))
        if isinstance(self.features_extractor, BarExtractor):
            self.features_extractor.reset_parameters()
        # the replaced heads' parameters: a fresh optimizer over the final modules
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def critic_quantiles(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, n_quantiles) the critic's return quantiles at ``obs``."""
        latent_vf = self.mlp_extractor.forward_critic(self.extract_features(obs))
        return self.value_net.quantiles(latent_vf)

    def evaluate_quantiles(self, obs: torch.Tensor, actions: torch.Tensor, action_masks: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``evaluate_actions`` with the critic's quantiles (B, N) in place of the value."""
        latent_pi, latent_vf = self.mlp_extractor(self.extract_features(obs))
        distribution = self._get_action_dist_from_latent(latent_pi)
        if action_masks is not None:
            distribution.apply_masking(action_masks)
        return self.value_net.quantiles(latent_vf), distribution.log_prob(actions), distribution.entropy()


class SentioPolicy(SentioPolicyMixin, ActorCriticPolicy):
    """PPO's actor-critic with Sentio's networks."""


class SentioMaskablePolicy(SentioPolicyMixin, MaskableActorCriticPolicy):
    """MaskablePPO's actor-critic with Sentio's networks."""
