"""Training budgets and the training timeout, on the toy market of test_learning (fast)."""

from __future__ import annotations

import pytest

from sentio_core.train import Budget, TrainingTimeout, train_policy
from tests.test_learning import TRAIN, toy_config, toy_market


def test_the_first_budget_reached_stops_training():
    cfg, market = toy_config(), toy_market()
    by_steps = train_policy("ppo", market, cfg, TRAIN, seed=1, budget=Budget(timesteps=512, episodes=10_000))
    assert by_steps.stopped_by == "timesteps" and by_steps.timesteps == 512
    by_episodes = train_policy("ppo", market, cfg, TRAIN, seed=1, budget=Budget(timesteps=100_000, episodes=6))
    assert by_episodes.stopped_by == "episodes" and 6 <= by_episodes.episodes < 10
    by_minutes = train_policy("ppo", market, cfg, TRAIN, seed=1, budget=Budget(minutes=0.02))
    assert by_minutes.stopped_by == "minutes" and by_minutes.seconds < 10


def test_a_training_past_its_timeout_fails():
    cfg, market = toy_config(), toy_market()
    with pytest.raises(TrainingTimeout, match="timeout"):
        train_policy("maskable_ppo", market, cfg, TRAIN, seed=1, budget=Budget(timesteps=10**7, timeout_minutes=0.01))


def test_a_budget_is_required():
    with pytest.raises(ValueError, match="budget"):
        Budget.from_config(toy_config(["train.timesteps=null"]))


def test_training_leaves_no_folder_in_the_temp_directory(tmp_path, monkeypatch):
    """stable-baselines3's default logger creates tempdir/SB3-<time> on every learn(); ours logs nowhere."""
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    cfg, market = toy_config(), toy_market()
    train_policy("ppo", market, cfg, TRAIN, seed=1, budget=Budget(timesteps=256))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("SB3-")] == []


@pytest.mark.parametrize("threads", [1, 2])
def test_training_pins_torch_threads_to_the_config(threads):
    import torch
    cfg, market = toy_config([f"train.torch_threads={threads}"]), toy_market()
    before = torch.get_num_threads()
    torch.set_num_threads(3 - threads)  # the other count, so the pin has to act
    try:
        train_policy("ppo", market, cfg, TRAIN, seed=1, budget=Budget(timesteps=64))
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
