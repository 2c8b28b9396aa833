"""Sentio's PPO update: quantile Huber loss, distributional lambda-return targets, the CVaR
advantage, the adaptive KL penalty, and bit-for-bit PPO when all of them are off."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.vec_env import DummyVecEnv

from sentio_core.learner import (
    SentioMaskablePPO,
    SentioPPO,
    cvar_tail,
    lambda_return_samples,
    quantile_huber_loss,
    quantile_huber_loss_fused,
    value_at_risk,
)
from sentio_core.networks import ModelSpec, SentioPolicy
from sentio_core.policies import policy_kwargs


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the loss, by hand ---------------------------------------------------------------------

def test_quantile_loss_by_hand():
    pred = torch.tensor([[0.0, 1.0]])
    tau = torch.tensor([0.25, 0.75])
    target = torch.tensor([[0.5]])
    # u = 0.5 - 0 = 0.5 >= 0: weight |0.25 - 0| = 0.25; u = 0.5 - 1 = -0.5 < 0: weight |0.75 - 1| = 0.25
    assert quantile_huber_loss(pred, target, tau, 0.0).item() == pytest.approx(0.25 * 0.5 + 0.25 * 0.5)
    # kappa 1: Huber(0.5) = 0.5 * 0.25 = 0.125 (quadratic zone), / kappa
    assert quantile_huber_loss(pred, target, tau, 1.0).item() == pytest.approx(2 * 0.25 * 0.125)
    # kappa 0.2: |u| = 0.5 > 0.2, Huber = 0.2 * (0.5 - 0.1) = 0.08, / 0.2 = 0.4
    assert quantile_huber_loss(pred, target, tau, 0.2).item() == pytest.approx(2 * 0.25 * 0.4)


def test_quantile_loss_averages_targets_and_sums_quantiles():
    pred = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    tau = torch.tensor([0.25, 0.75])
    target = torch.tensor([[0.5, -1.0], [2.0, 3.0]])
    # row 0, target 0.5: 0.25*0.5 + 0.25*0.5 = 0.25; target -1: |0.25-1|*1 + |0.75-1|*2 = 0.75 + 0.5 = 1.25
    # row 1, target 2: 0; target 3: 0.25*1 + 0.75*1 = 1.0
    expected = ((0.25 + 1.25) / 2 + (0 + 1.0) / 2) / 2
    assert quantile_huber_loss(pred, target, tau, 0.0).item() == pytest.approx(expected)


@pytest.mark.parametrize("kappa", [0.0, 0.3, 1.0])
def test_fused_loss_equals_the_reference_in_value_and_gradient(kappa):
    torch.manual_seed(0)
    pred = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    target = torch.randn(6, 9, dtype=torch.float64)
    tau = torch.as_tensor((2 * np.arange(9) + 1) / 18)
    slow = quantile_huber_loss(pred, target, tau, kappa)
    (g_slow,) = torch.autograd.grad(slow, pred)
    fast = quantile_huber_loss_fused(pred, target, tau, kappa)
    (g_fast,) = torch.autograd.grad(3.0 * fast, pred)  # the incoming gradient scales it
    assert fast.item() == pytest.approx(slow.item(), rel=1e-12)
    assert torch.allclose(g_fast, 3.0 * g_slow, atol=1e-12)


def test_pinball_minimiser_is_the_quantile():
    """Minimising the loss over one free quantile set on samples gives the samples' quantiles."""
    rng = np.random.default_rng(0)
    samples = torch.as_tensor(rng.exponential(1.0, 4000), dtype=torch.float32)
    tau = torch.as_tensor((2 * np.arange(9) + 1) / 18, dtype=torch.float32)
    theta = torch.zeros(1, 9, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(1500):
        opt.zero_grad()
        quantile_huber_loss(theta, samples[None], tau, 0.0).backward()
        opt.step()
    exact = np.quantile(samples.numpy(), tau.numpy())
    assert np.abs(theta.detach().numpy()[0] - exact).max() < 0.05


# --- VaR and the tail term -------------------------------------------------------------------

def test_value_at_risk_interpolates_between_midpoints():
    n = 10
    tau = (2 * np.arange(n) + 1) / (2 * n)  # 0.05, 0.15, ..., 0.95
    q = tau * 100  # quantiles of U(0, 100)
    assert value_at_risk(q, 0.05) == pytest.approx(5.0)
    assert value_at_risk(q, 0.10) == pytest.approx(10.0)
    assert value_at_risk(q, 0.01) == pytest.approx(5.0)  # below the first midpoint: flat
    assert value_at_risk(q[::-1].copy(), 0.10) == pytest.approx(10.0)  # sorted first
    rows = np.stack([q, q + 1])
    assert np.allclose(value_at_risk(rows, 0.25), [25.0, 26.0])


def test_cvar_tail_term():
    assert np.allclose(cvar_tail(np.array([-3.0, 0.0, 2.0]), np.array([-1.0, -1.0, -1.0]), 0.05), [-40.0, 0.0, 0.0])


# --- the distributional targets ---------------------------------------------------------------

def _gae_returns(rewards, starts, values, last_values, dones, gamma, lam):
    buf = RolloutBuffer(len(rewards), gym.spaces.Box(-1, 1, (1,)), gym.spaces.Discrete(2), gamma=gamma,
                        gae_lambda=lam, n_envs=rewards.shape[1])
    buf.rewards, buf.episode_starts, buf.values = rewards.astype(np.float32), starts.astype(np.float32), values.astype(np.float32)
    buf.compute_returns_and_advantage(torch.as_tensor(last_values), dones)
    return buf.returns


def _rollout(T=12, E=3, N=5, seed=0):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(T, E))
    starts = (rng.random((T, E)) < 0.2).astype(float)
    starts[0] = 1.0
    quantiles = np.sort(rng.normal(size=(T, E, N)), axis=-1)
    last = np.sort(rng.normal(size=(E, N)), axis=-1)
    dones = np.array([False, True, False])
    return rewards, starts, quantiles, last, dones


def test_lambda_zero_is_the_one_step_distributional_target():
    rewards, starts, q, last, dones = _rollout()
    z = lambda_return_samples(rewards, starts, q, last, dones, 0.9, 0.0, np.random.default_rng(0))
    alive = np.concatenate([1 - starts[1:], (1 - dones)[None]])
    nxt = np.concatenate([q[1:], last[None]])
    assert np.allclose(z, rewards[..., None] + 0.9 * alive[..., None] * nxt)


def test_lambda_one_is_the_monte_carlo_return_and_matches_sb3():
    """With every quantile equal to the value, lambda 1 gives sb3's TD(1) return in every quantile."""
    rewards, starts, q, last, dones = _rollout()
    values, last_values = q.mean(-1), last.mean(-1)
    flat_q = np.repeat(values[..., None], 5, -1)
    flat_last = np.repeat(last_values[..., None], 5, -1)
    z = lambda_return_samples(rewards, starts, flat_q, flat_last, dones, 0.9, 1.0, np.random.default_rng(0))
    expected = _gae_returns(rewards, starts, values, last_values, dones, 0.9, 1.0)
    assert np.allclose(z, expected[..., None], atol=1e-5)


def test_random_horizons_average_to_the_gae_lambda_return():
    rewards, starts, q, last, dones = _rollout(N=1)
    values, last_values = q[..., 0], last[:, 0]
    rng = np.random.default_rng(1)
    draws = np.mean([lambda_return_samples(rewards, starts, q, last, dones, 0.9, 0.8, rng) for _ in range(3000)], axis=0)
    expected = _gae_returns(rewards, starts, values, last_values, dones, 0.9, 0.8)
    assert np.abs(draws[..., 0] - expected).max() < 0.05


# --- bit for bit PPO when nothing is added ------------------------------------------------------

class CoinEnv(gym.Env):
    """Two-feature observations, three actions with noisy rewards; all actions allowed."""

    observation_space = gym.spaces.Box(-5, 5, (2,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        return self.rng.normal(size=2).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        reward = float(self.rng.normal(0.1 * int(action), 1.0))
        return self.rng.normal(size=2).astype(np.float32), reward, self.t >= 7, False, {}

    def action_masks(self):
        return np.array([True, True, False])


@pytest.mark.parametrize("stock, ours", [(PPO, SentioPPO), (MaskablePPO, SentioMaskablePPO)])
def test_weight_zero_and_no_penalty_reproduce_ppo_exactly(stock, ours):
    def train(cls, **extra):
        env = DummyVecEnv([CoinEnv for _ in range(3)])
        model = cls("MlpPolicy", env, n_steps=32, batch_size=24, n_epochs=3, seed=7, device="cpu", **extra)
        model.learn(192)
        return model.policy.state_dict()

    a, b = train(stock), train(ours, cvar_weight=0.0, adaptive_kl=False)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train(ours, adaptive_kl=True, kl_coef=1.0)  # the penalty does change the update
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_cvar_needs_a_quantile_critic():
    with pytest.raises(ValueError, match="quantile critic"):
        SentioPPO("MlpPolicy", DummyVecEnv([CoinEnv]), n_steps=16, batch_size=16, cvar_weight=0.5, device="cpu")


# --- adaptive KL ---------------------------------------------------------------------------------

@pytest.mark.parametrize("target, direction", [(1e-9, 2.0), (10.0, 0.5)])
def test_adaptive_kl_coefficient_follows_the_target(target, direction):
    env = DummyVecEnv([CoinEnv for _ in range(2)])
    model = SentioPPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=2, seed=0, device="cpu",
                      adaptive_kl=True, kl_target=target, kl_coef=1.0)
    model.learn(32 * 2 * 3)
    coefs = [c for _, c in model.kl_history]
    assert len(coefs) == 3
    assert coefs == pytest.approx([direction, direction ** 2, direction ** 3])
    kls = [k for k, _ in model.kl_history]
    assert all(k > 1.5 * target for k in kls) if direction > 1 else all(k < target / 1.5 for k in kls)


# --- toy environments: the critic learns a known distribution; CVaR avoids a fat tail ---------------

class TwoStepEnv(gym.Env):
    """Step 0 pays nothing, step 1 pays an Exponential(1) - 1 draw: the return from either state
    has quantiles -log(1 - tau) - 1 (gamma 1). Both actions are the same."""

    observation_space = gym.spaces.Box(0, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.array([1, 0], np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t == 1:
            return np.array([0, 1], np.float32), 0.0, False, False, {}
        return np.array([0, 1], np.float32), float(self.rng.exponential(1.0) - 1.0), True, False, {}


def _quantile_model(env, **kw):
    spec = ModelSpec(policy="mlp", lookback=1, n_features=2, n_state=0, critic="quantile", n_quantiles=11)
    return SentioPPO(SentioPolicy, env, policy_kwargs=policy_kwargs([32], spec), device="cpu", seed=0, **kw)


@pytest.mark.slow
def test_quantile_critic_learns_the_return_distribution():
    env = DummyVecEnv([lambda i=i: TwoStepEnv(i) for i in range(8)])
    model = _quantile_model(env, n_steps=64, batch_size=128, n_epochs=4, learning_rate=lambda left: 3e-3 * left,
                            gamma=1.0, gae_lambda=0.9, quantile_kappa=0.01)
    model.learn(40_000)
    tau = (2 * np.arange(11) + 1) / 22
    true = -np.log(1 - tau) - 1
    with torch.no_grad():
        q = model.policy.critic_quantiles(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).numpy()
    inner = (tau > 0.1) & (tau < 0.9)
    # the tolerance (returns of sd 1): 0.07 on the inner quantiles, 0.2 on the outer two (the
    # exponential's upper tail is the noisiest); state 0 learns it through the bootstrap from state 1
    for row in q:
        assert np.abs(np.sort(row)[inner] - true[inner]).max() < 0.07, (row, true)
        assert np.abs(np.sort(row) - true).max() < 0.2, (row, true)


class RiskyBanditEnv(gym.Env):
    """One decision: safe pays 0.2; risky pays +1 with probability 0.9 and -4 with 0.1 (mean 0.5,
    CVaR 5 % -4)."""

    observation_space = gym.spaces.Box(0, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def reset(self, *, seed=None, options=None):
        return np.array([1, 0], np.float32), {}

    def step(self, action):
        reward = 0.2 if int(action) == 0 else (1.0 if self.rng.random() < 0.9 else -4.0)
        return np.array([1, 0], np.float32), reward, True, False, {}


def _risky_share(cvar_weight: float) -> float:
    env = DummyVecEnv([lambda i=i: RiskyBanditEnv(i) for i in range(8)])
    model = _quantile_model(env, n_steps=32, batch_size=128, n_epochs=4, learning_rate=3e-3, gamma=0.0, gae_lambda=0.0,
                            ent_coef=0.0, quantile_kappa=0.01, cvar_alpha=0.05, cvar_weight=cvar_weight)
    model.learn(12_000)
    with torch.no_grad():
        probs = model.policy.get_distribution(torch.tensor([[1.0, 0.0]])).distribution.probs[0].numpy()
    return float(probs[1])


@pytest.mark.slow
def test_cvar_weight_turns_the_choice_from_risky_to_safe():
    assert _risky_share(0.0) > 0.9  # risk-neutral: the higher mean
    assert _risky_share(1.0) < 0.1  # CVaR: the action without the fat left tail
