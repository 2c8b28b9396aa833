"""The advanced networks: the transformer over bars, the quantile head, the regime-gated actor."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from sentio_core.networks import (
    BarExtractor,
    GatedHeads,
    ModelSpec,
    QuantileHead,
    SentioPolicy,
    quantile_midpoints,
    sinusoidal_encoding,
)
from sentio_core.policies import policy_kwargs, rebuild_policy

SPEC = ModelSpec(policy="transformer", lookback=6, n_features=3, n_state=2, d_model=16, layers=2, heads=4, ff=32)


def _space(spec: ModelSpec) -> gym.spaces.Box:
    return gym.spaces.Box(-np.inf, np.inf, (spec.lookback * spec.n_features + spec.n_state,), np.float32)


def test_quantile_midpoints():
    assert np.allclose(quantile_midpoints(4), [0.125, 0.375, 0.625, 0.875])
    tau = quantile_midpoints(51)
    assert tau[0] == pytest.approx(1 / 102) and tau[25] == pytest.approx(0.5) and tau[-1] == pytest.approx(101 / 102)


def test_sinusoidal_encoding_values():
    pe = sinusoidal_encoding(3, 4)
    assert pe[0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert pe[2, 0].item() == pytest.approx(np.sin(2.0)) and pe[2, 1].item() == pytest.approx(np.cos(2.0))
    assert pe[2, 2].item() == pytest.approx(np.sin(2.0 / 100.0))  # 10000^(2/4) = 100


def test_transformer_shapes():
    torch.manual_seed(0)
    ext = BarExtractor(_space(SPEC), SPEC)
    assert ext.features_dim == 16
    assert ext(torch.randn(5, 20)).shape == (5, 16)
    gated = ModelSpec(**(SPEC.to_dict() | {"regime_gating": True, "regime_columns": [1, 2], "regime_mean": [0.5, 0.5],
                                           "regime_std": [0.5, 0.5]}))
    assert BarExtractor(_space(gated), gated)(torch.randn(5, 20)).shape == (5, 18)
    with pytest.raises(ValueError, match="layout 20"):
        BarExtractor(gym.spaces.Box(-1, 1, (21,), np.float32), SPEC)


def test_policy_shapes_with_every_option():
    spec = ModelSpec(**(SPEC.to_dict() | {"critic": "quantile", "n_quantiles": 7, "regime_gating": True,
                                          "regime_columns": [1, 2], "regime_mean": [0.0, 0.0], "regime_std": [1.0, 1.0]}))
    policy = SentioPolicy(_space(spec), gym.spaces.Discrete(5), lambda _: 1e-3, **policy_kwargs([8], spec))
    obs = torch.randn(4, 20)
    obs[:, 5 * 3 + 1:5 * 3 + 3] = torch.tensor([0.3, 0.7])  # the last bar's regime probabilities
    actions, values, log_prob = policy(obs)
    assert actions.shape == (4,) and values.shape == (4, 1) and log_prob.shape == (4,)
    assert policy.critic_quantiles(obs).shape == (4, 7)
    assert torch.allclose(policy.predict_values(obs), policy.critic_quantiles(obs).mean(-1, keepdim=True))
    probs = policy.get_distribution(obs).distribution.probs
    assert torch.allclose(probs.sum(-1), torch.ones(4))


def test_positional_encoding_makes_order_matter():
    """Reversing the bars changes the transformer's output; without positional encoding (a bag of
    bars) the output is the same for any order."""
    torch.manual_seed(1)
    obs = torch.randn(8, 20)
    window, state = obs[:, :18].reshape(8, 6, 3), obs[:, 18:]
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = torch.cat([window[:, perm].reshape(8, 18), state], dim=1)
    ordered = BarExtractor(_space(SPEC), SPEC).eval()
    bag_spec = ModelSpec(**(SPEC.to_dict() | {"positional": "none"}))
    torch.manual_seed(1)
    bag = BarExtractor(_space(bag_spec), bag_spec).eval()
    with torch.no_grad():
        assert (ordered(obs) - ordered(shuffled)).abs().max() > 1e-3
        assert torch.allclose(bag(obs), bag(shuffled), atol=1e-5)


def test_gated_heads_mix_in_probability():
    torch.manual_seed(2)
    heads = GatedHeads(latent_dim=3, k=2, n_actions=4)
    h = torch.randn(5, 3)
    p = torch.softmax(torch.randn(5, 2), -1)
    logits = heads(torch.cat([h, p], -1))
    per_regime = torch.softmax(heads.heads(h).reshape(5, 2, 4), -1)
    expected = (p[..., None] * per_regime).sum(1)
    assert torch.allclose(torch.softmax(logits, -1), expected, atol=1e-6)
    assert torch.allclose(logits.exp().sum(-1), torch.ones(5), atol=1e-6)  # already normalised
    one_hot = torch.tensor([[1.0, 0.0]]).expand(5, 2)  # a certain regime: that regime's head alone
    assert torch.allclose(torch.softmax(heads(torch.cat([h, one_hot], -1)), -1), per_regime[:, 0], atol=1e-5)


def test_regime_probabilities_recovered_from_the_normalised_observation():
    spec = ModelSpec(policy="mlp", lookback=2, n_features=3, n_state=1, regime_gating=True, regime_columns=[1, 2],
                     regime_mean=[0.4, 0.6], regime_std=[0.2, 0.25])
    ext = BarExtractor(_space(spec), spec)
    p = torch.tensor([[0.9, 0.1], [0.25, 0.75]])
    z = (p - torch.tensor([0.4, 0.6])) / torch.tensor([0.2, 0.25])
    obs = torch.zeros(2, 7)
    obs[:, 4:6] = z  # the last bar's columns 1 and 2
    obs[:, 1:3] = 5.0  # an earlier bar's: ignored
    assert torch.allclose(ext.regime_probabilities(obs), p, atol=1e-6)


def test_quantile_head_value_is_the_mean():
    head = QuantileHead(4, 5)
    x = torch.randn(3, 4)
    assert torch.allclose(head(x), head.quantiles(x).mean(-1, keepdim=True))


def test_model_spec_round_trip_and_unknown_fields():
    assert ModelSpec.from_dict(SPEC.to_dict()) == SPEC
    with pytest.raises(ValueError, match="unknown model fields"):
        ModelSpec.from_dict(SPEC.to_dict() | {"layers_typo": 3})
    assert ModelSpec().is_default and not SPEC.is_default


def test_rebuilt_policy_acts_like_the_trained_one():
    """rebuild_policy + load_state_dict gives the same probabilities as the policy it came from."""
    torch.manual_seed(3)
    spec = ModelSpec(**(SPEC.to_dict() | {"critic": "quantile", "n_quantiles": 5}))
    original = SentioPolicy(_space(spec), gym.spaces.Discrete(3), lambda _: 1e-3, **policy_kwargs([8], spec)).eval()
    copy = rebuild_policy("ppo", 20, 3, [8], spec.to_dict())
    copy.load_state_dict(original.state_dict(), strict=True)
    copy.eval()
    obs = torch.randn(6, 20)
    with torch.no_grad():
        assert torch.equal(original.get_distribution(obs).distribution.probs, copy.get_distribution(obs).distribution.probs)


class MarkerEnv(gym.Env):
    """A bar window with one marked bar among ``lookback``: the right action is whether the mark
    is in the older or the newer half. Every window holds the same multiset of bars, so only the
    order tells the answer."""

    def __init__(self, lookback: int = 6, seed: int = 0):
        self.lookback = lookback
        self.observation_space = gym.spaces.Box(-1, 1, (lookback + 1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.rng = np.random.default_rng(seed)
        self.where = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.lookback + 1, np.float32)
        obs[self.where] = 1.0
        return obs

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.where = int(self.rng.integers(self.lookback))
        return self._obs(), {}

    def answer(self) -> int:
        return int(self.where >= self.lookback // 2)

    def step(self, action):
        reward = 1.0 if int(action) == self.answer() else 0.0
        return self._obs(), reward, True, False, {}


def _marker_accuracy(positional: str) -> float:
    spec = ModelSpec(policy="transformer", lookback=6, n_features=1, n_state=1, d_model=16, layers=1, heads=2, ff=32,
                     positional=positional)
    env = DummyVecEnv([lambda i=i: MarkerEnv(seed=i) for i in range(8)])
    model = PPO(SentioPolicy, env, n_steps=32, batch_size=128, n_epochs=4, learning_rate=3e-3, gamma=0.0, seed=0,
                policy_kwargs=policy_kwargs([16], spec), device="cpu")
    model.learn(6_000)
    probe = MarkerEnv(seed=99)
    correct = 0
    for _ in range(200):
        obs, _ = probe.reset()
        action, _ = model.predict(obs, deterministic=True)
        correct += int(action) == probe.answer()
    return correct / 200


@pytest.mark.slow
def test_transformer_learns_bar_order_a_bag_of_bars_cannot():
    torch.set_num_threads(1)
    assert _marker_accuracy("sinusoidal") >= 0.95
    assert _marker_accuracy("none") <= 0.7  # every window looks the same to it: chance is 0.5


class HiddenRegimeEnv(gym.Env):
    """A hidden two-state Markov regime (stays with probability 0.95) emits x ~ N(+-0.7, 1); the
    observation is one bar ``[x, p0, p1]`` with ``p`` the forward filter's regime probabilities.
    The right action is the regime's: 0 in regime 0, 1 in regime 1 (+1 if right, -1 if not)."""

    observation_space = gym.spaces.Box(-10, 10, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)
    STAY, MEANS = 0.95, np.array([-0.7, 0.7])

    def __init__(self, seed: int = 0, length: int = 50):
        self.rng, self.length = np.random.default_rng(seed), length

    def _advance(self) -> np.ndarray:
        if self.rng.random() > self.STAY:
            self.regime = 1 - self.regime
        x = self.rng.normal(self.MEANS[self.regime], 1.0)
        prior = self.STAY * self.p + (1 - self.STAY) * self.p[::-1]
        post = prior * np.exp(-0.5 * (x - self.MEANS) ** 2)
        self.p = post / post.sum()
        return np.array([x, *self.p], np.float32)

    def reset(self, *, seed=None, options=None):
        self.t, self.regime, self.p = 0, int(self.rng.integers(2)), np.array([0.5, 0.5])
        return self._advance(), {}

    def step(self, action):
        reward = 1.0 if int(action) == self.regime else -1.0
        self.t += 1
        return self._advance(), reward, self.t >= self.length, False, {}


@pytest.mark.slow
def test_regime_gated_policy_follows_the_filter():
    torch.set_num_threads(1)
    spec = ModelSpec(policy="mlp", lookback=1, n_features=3, n_state=0, regime_gating=True, regime_columns=[1, 2],
                     regime_mean=[0.0, 0.0], regime_std=[1.0, 1.0])
    env = DummyVecEnv([lambda i=i: HiddenRegimeEnv(i) for i in range(8)])
    model = PPO(SentioPolicy, env, n_steps=64, batch_size=256, n_epochs=4, learning_rate=3e-3, gamma=0.0, seed=0,
                policy_kwargs=policy_kwargs([16], spec), device="cpu")
    model.learn(20_000)
    probe = HiddenRegimeEnv(seed=123, length=2000)
    obs, _ = probe.reset()
    agree = bayes = 0
    for _ in range(2000):
        action, _ = model.predict(obs, deterministic=True)
        agree += int(action) == probe.regime
        bayes += int(np.argmax(obs[1:])) == probe.regime
        obs, *_ = probe.step(action)
    assert bayes / 2000 > 0.75  # the filter tracks the regime
    assert agree / 2000 >= bayes / 2000 - 0.03  # the policy is as good as acting on the filter
    # each regime's head picks that regime's action: the gate, not the body, carries the regime
    heads = model.policy.action_net
    with torch.no_grad():
        latent = model.policy.mlp_extractor.forward_actor(torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.5]]))[:, :-2]
        per_regime = heads.heads(latent).reshape(2, 2)
    assert per_regime[0].argmax().item() == 0 and per_regime[1].argmax().item() == 1
