"""The engine as stable-baselines3's VecEnv: shapes, seeded episodes, restarts, and MaskablePPO on it."""

from __future__ import annotations

import numpy as np
import pytest

from sentio_core.env import TradingEnv
from sentio_core.vec_env import EngineVecEnv

from .fixtures_market import real_fold


@pytest.fixture(scope="module")
def fold():
    return real_fold()


def make(fold, n=4, episode_bars=20, seed=3):
    venv = EngineVecEnv(fold.market, fold.cfg, fold.cfg.env.lookback_bars, fold.market.n_rows - 1, n, episode_bars)
    venv.seed(seed)
    return venv


def test_reset_step_and_masks_have_the_vec_env_shapes(fold):
    venv = make(fold)
    obs = venv.reset()
    assert obs.shape == (4, venv.engine.obs_dim) and obs.dtype == np.float32
    masks = np.stack(venv.env_method("action_masks"))  # how sb3-contrib reads them
    assert masks.shape == (4, len(fold.market.levels)) and masks.any(axis=1).all()
    assert venv.has_attr("action_masks")
    obs, rewards, dones, infos = venv.step(np.zeros(4, dtype=int))
    assert obs.shape == (4, venv.engine.obs_dim) and rewards.shape == dones.shape == (4,) and len(infos) == 4


def test_each_environment_follows_the_reference_from_its_start(fold):
    """Every environment's first episode is the reference environment's from the same start."""
    venv = make(fold, n=3)
    obs = venv.reset()
    starts = venv.engine.t.copy()
    refs = [TradingEnv(fold.market, fold.cfg, int(s), int(s) + 20) for s in starts]
    ref_obs = [env.reset(seed=0)[0] for env in refs]
    np.testing.assert_array_equal(obs, np.stack(ref_obs))
    rng = np.random.default_rng(0)
    for _ in range(19):
        actions = rng.integers(0, len(fold.market.levels), 3)
        obs, rewards, dones, _ = venv.step(actions)
        for i, env in enumerate(refs):
            o, r, _, _, _ = env.step(int(actions[i]))
            np.testing.assert_array_equal(obs[i], o)
            np.testing.assert_allclose(rewards[i], r, rtol=1e-6)  # the VecEnv hands float32 rewards to sb3
        assert not dones.any()


def test_a_finished_episode_restarts_and_keeps_its_last_observation(fold):
    venv = make(fold, n=2, episode_bars=5)
    venv.reset()
    for k in range(5):
        obs, _, dones, infos = venv.step(np.ones(2, dtype=int))
    assert dones.all()
    for i in range(2):
        assert infos[i]["TimeLimit.truncated"] and infos[i]["terminal_observation"].shape == obs[i].shape
    assert (venv.engine.held == 0).all() and (venv.engine.equity == fold.cfg.env.initial_equity_usd).all()


def test_the_seed_fixes_the_episode_starts(fold):
    a, b, c = make(fold, seed=5), make(fold, seed=5), make(fold, seed=6)
    a.reset(), b.reset(), c.reset()
    assert a.engine.t.tolist() == b.engine.t.tolist() != c.engine.t.tolist()


def test_the_learner_gets_the_scaled_reward(fold):
    """``train.reward_scale`` multiplies what sb3 sees, nothing else: same starts, same paths."""
    plain, scaled = make(fold), make(fold)
    scaled.reward_scale = 25.0
    plain.reset(), scaled.reset()
    actions = np.random.default_rng(0).integers(0, plain.action_space.n, size=(15, 4))
    for a in actions:
        _, r1, _, _ = plain.step(a)
        _, r2, _, _ = scaled.step(a)
        np.testing.assert_allclose(r2, np.float32(25.0) * r1, rtol=1e-6)
    np.testing.assert_array_equal(plain.engine.equity, scaled.engine.equity)


def test_maskable_ppo_trains_on_the_engine(fold):
    from sb3_contrib import MaskablePPO

    venv = make(fold, n=4, episode_bars=50)
    model = MaskablePPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=1, device="cpu")
    model.learn(256)
    assert model.num_timesteps >= 256
