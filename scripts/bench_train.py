"""Benchmark: the vectorised engine against the reference environment, on one daily fold.

Prints, in one run on the latest fold of the config (default: the default daily run):

1. engine step + mask throughput at N = 1, 64 and 1,024 portfolios, against the reference
   environment stepped one action at a time (``action_masks`` + ``step``);
2. the observation gather on its own (steps/s and GB/s of observation written);
3. MaskablePPO and PPO training throughput with the engine (``EngineVecEnv``) against
   ``DummyVecEnv`` over the reference environment, same settings, with the split between rollout
   collection and the update;
4. the backtest of 32 random linear policies over the fold's test window, engine against the
   reference loop.

Each as a ratio to its reference. Usage:
  .venv/bin/python scripts/bench_train.py [--config configs/base.yaml] [--timesteps 16384] [--n-envs 4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv
from threadpoolctl import threadpool_limits

from sentio_core.backtest import backtest_fold, reference_path
from sentio_core.config import load_config
from sentio_core.data import build_manifest, build_panel
from sentio_core.engine import Engine
from sentio_core.env import TradingEnv
from sentio_core.features import feature_table
from sentio_core.folds import fold_spans
from sentio_core.market import fold_market
from sentio_core.policies import build_model
from sentio_core.regimes import fold_regimes
from sentio_core.vec_env import EngineVecEnv


class RolloutClock(BaseCallback):
    """Seconds spent collecting rollouts (the rest of ``learn`` is the update)."""

    def __init__(self):
        super().__init__()
        self.rollout = 0.0
        self._start = 0.0

    def _on_rollout_start(self) -> None:
        self._start = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.rollout += time.perf_counter() - self._start

    def _on_step(self) -> bool:
        return True


def latest_fold(config: str):
    cfg = load_config(config)
    bars, _, freq = build_panel(cfg, build_manifest(cfg))
    feats = feature_table(cfg, bars, freq)
    span = fold_spans(cfg, feats)[-1]
    with threadpool_limits(limits=1):
        probs = fold_regimes(cfg, bars, span).probabilities
    return cfg, span, fold_market(cfg, bars, feats, probs, span, freq.periods_per_year)


def bench_reference(market, cfg, first, last, steps: int) -> float:
    env = TradingEnv(market, cfg, first, last)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps):
        env.action_masks()
        _, _, term, trunc, _ = env.step(int(rng.integers(0, len(market.levels))))
        if term or trunc:
            env.reset(seed=0)
    return steps / (time.perf_counter() - start)


def bench_engine(market, cfg, first, last, n: int, steps: int, observe: bool) -> float:
    engine = Engine(market, cfg, n)
    rng = np.random.default_rng(0)
    engine.reset_all(rng.integers(first, last - 1, n), np.full(n, last))
    actions = rng.integers(0, len(market.levels), (steps, n))
    buf = np.empty((n, engine.obs_dim), dtype=np.float32)
    start = time.perf_counter()
    for k in range(steps):
        masks = engine.masks()
        _, _, term, trunc = engine.step(actions[k], masks)
        done = np.flatnonzero(term | trunc)
        if len(done):
            engine.reset(done, rng.integers(first, last - 1, len(done)), np.full(len(done), last))
        if observe:
            engine.observe(buf)
    return n * steps / (time.perf_counter() - start)


def bench_gather(market, cfg, first, last, n: int, steps: int) -> tuple[float, float]:
    engine = Engine(market, cfg, n)
    engine.reset_all(np.random.default_rng(0).integers(first, last - 1, n), np.full(n, last))
    buf = np.empty((n, engine.obs_dim), dtype=np.float32)
    start = time.perf_counter()
    for _ in range(steps):
        engine.observe(buf)
    dt = time.perf_counter() - start
    return n * steps / dt, buf.nbytes * steps / dt / 1e9


def bench_training(cfg, market, span, algorithm: str, venv, timesteps: int) -> tuple[float, float]:
    model = build_model(algorithm, venv, cfg.train, cfg.fold_seed(span.fold))
    clock = RolloutClock()
    start = time.perf_counter()
    model.learn(timesteps, callback=clock)
    total = time.perf_counter() - start
    return model.num_timesteps / total, clock.rollout / total


def linear_policy(obs_dim: int, n_actions: int, seed: int):
    w = np.random.default_rng(seed).normal(size=(obs_dim, n_actions)) / np.sqrt(obs_dim)

    def act(obs, masks):
        return np.argmax(np.where(masks, obs.astype(float) @ w, -np.inf), axis=1)
    return act


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/base.yaml")
    ap.add_argument("--timesteps", type=int, default=16_384)
    ap.add_argument("--n-envs", type=int, default=None, help="environments for the engine's training (default: the config's)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg, span, market = latest_fold(args.config)
    first, last = span.train_rows[0], span.train_rows[1] - 1
    print(f"fold {span.fold}: {span.train_bars} training bars, {market.features.shape[1]} features x "
          f"{cfg.env.lookback_bars} bars, {len(market.levels)} levels, torch threads {torch.get_num_threads()}")

    ref = bench_reference(market, cfg, first, last, 3000)
    print(f"\n1. step + mask: reference environment {ref:,.0f} steps/s")
    for n, steps in ((1, 3000), (64, 600), (1024, 200)):
        rate = bench_engine(market, cfg, first, last, n, steps, observe=False)
        print(f"   engine N={n:>5}: {rate:>12,.0f} steps/s  ({rate / ref:,.1f}x)")
    print("   with the observation gathered each step:")
    for n, steps in ((64, 600), (1024, 100)):
        rate = bench_engine(market, cfg, first, last, n, steps, observe=True)
        print(f"   engine N={n:>5}: {rate:>12,.0f} steps/s  ({rate / ref:,.1f}x)")

    print("\n2. observation gather")
    for n, steps in ((64, 600), (1024, 100)):
        rate, gbs = bench_gather(market, cfg, first, last, n, steps)
        print(f"   N={n:>5}: {rate:,.0f} observations/s, {gbs:.2f} GB/s")

    print(f"\n3. training, {args.timesteps} steps, default network and update settings")
    n_envs = args.n_envs or cfg.train.n_envs
    for algorithm in ("maskable_ppo", "ppo"):
        reference = DummyVecEnv([lambda: TradingEnv(market, cfg, first, last, cfg.env.episode_bars)] * cfg.train.n_envs)
        reference.seed(cfg.seed)
        slow, slow_share = bench_training(cfg, market, span, algorithm, reference, args.timesteps)
        engine = EngineVecEnv(market, cfg, first, last, n_envs, cfg.env.episode_bars)
        engine.seed(cfg.seed)
        fast, fast_share = bench_training(cfg, market, span, algorithm, engine, args.timesteps)
        print(f"   {algorithm:>12}: reference {slow:,.0f} steps/s (rollout {slow_share:.0%}), engine with {n_envs} envs "
              f"{fast:,.0f} steps/s (rollout {fast_share:.0%}): {fast / slow:.1f}x; rollout alone "
              f"{(fast / fast_share) / (slow / slow_share):.1f}x")

    print("\n4. backtest, 32 random linear policies over the test window")
    obs_dim = Engine(market, cfg, 1).obs_dim
    pols = {f"p{i}": (linear_policy(obs_dim, len(market.levels), i), True) for i in range(32)}
    start = time.perf_counter()
    backtest_fold(market, cfg, span.test_rows, pols)
    fast = time.perf_counter() - start
    start = time.perf_counter()
    for policy, masked in pols.values():
        reference_path(market, cfg, span.test_rows, policy, masked)
    slow = time.perf_counter() - start
    print(f"   engine {fast:.3f} s, reference loop {slow:.3f} s: {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
