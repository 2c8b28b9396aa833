"""Benchmark: the vectorised engine against the reference environment, on one daily fold.

Prints, in one run on the latest fold of the config (default: the default daily run):

1. engine step + mask throughput at N = 1, 64 and 1,024 portfolios, against the reference
   environment stepped one action at a time (``action_masks`` + ``step``);
2. the observation gather on its own (steps/s and GB/s of observation written);
3. MaskablePPO and PPO training throughput with the engine (``EngineVecEnv``, the config's
   ``n_envs`` x ``n_steps``) against ``DummyVecEnv`` over the reference environment with the
   4 environments with the same samples per update (4 x 512 = 64 x 32), batch and epochs, with
   the split between rollout collection and the update;
4. torch intra-op threads: batched inference and training at 1, 2 and 4 threads;
5. the backtest of 32 random linear policies (one population, :mod:`bench_backtest`) and of the
   two networks trained in 3 over the fold's test window, engine against the reference loop.

Each as a ratio to its reference. Usage:
  .venv/bin/python scripts/bench_train.py [--config configs/base.yaml] [--timesteps 16384] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from bench_backtest import LinearPopulation
from stable_baselines3.common.callbacks import BaseCallback
from threadpoolctl import threadpool_limits

from sentio_core.algorithms import NAMES, spec
from sentio_core.backtest import backtest_fold, baseline_paths, reference_path, sb3_policy
from sentio_core.baselines import NAMES as BASELINES
from sentio_core.config import load_config
from sentio_core.data import build_manifest, build_panel
from sentio_core.engine import Engine
from sentio_core.env import TradingEnv
from sentio_core.features import feature_table
from sentio_core.folds import fold_spans
from sentio_core.market import fold_market
from sentio_core.policies import build_model
from sentio_core.regimes import fold_regimes
from sentio_core.train import reference_vec_env
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


def bench_training(cfg, span, algorithm: str, venv, timesteps: int):
    """Steps/s of ``learn``, the share of it spent collecting rollouts, and the model."""
    model = build_model(algorithm, venv, cfg.train, cfg.fold_seed(span.fold))
    clock = RolloutClock()
    start = time.perf_counter()
    model.learn(timesteps, callback=clock)
    total = time.perf_counter() - start
    return model.num_timesteps / total, clock.rollout / total, model


def best_of(repeats: int, fn) -> float:
    """The fastest of ``repeats`` timed calls, seconds (the machine's noise is one-sided)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_inference(obs_dim: int, n_actions: int, net_arch: list[int], batch: int) -> float:
    """Forward passes per second of the policy network (sb3's MLP shape) at ``batch`` rows."""
    layers: list[torch.nn.Module] = []
    width = obs_dim
    for h in net_arch:
        layers += [torch.nn.Linear(width, h), torch.nn.Tanh()]
        width = h
    net = torch.nn.Sequential(*layers, torch.nn.Linear(width, n_actions))
    x = torch.randn(batch, obs_dim)
    reps = max(20, 20_000 // batch)
    with torch.no_grad():
        net(x)
        return batch * reps / best_of(1, lambda: [net(x) for _ in range(reps)])


REFERENCE_ENVS = 4  # the reference path: DummyVecEnv over 4 TradingEnv, as before the engine


def reference_settings(cfg) -> dict:
    """4 reference environments with the samples per update of the config (n_envs x n_steps)."""
    return {"n_envs": REFERENCE_ENVS, "n_steps": cfg.train.n_envs * cfg.train.n_steps // REFERENCE_ENVS}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/base.yaml")
    ap.add_argument("--timesteps", type=int, default=16_384)
    ap.add_argument("--repeats", type=int, default=2, help="training runs per path; the fastest is reported")
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

    print(f"\n3. training, {args.timesteps} steps, default network and update settings "
          f"(batch {cfg.train.batch_size}, {cfg.train.n_epochs} epochs, torch threads {cfg.train.torch_threads})")
    torch.set_num_threads(cfg.train.torch_threads)
    ref_settings = reference_settings(cfg)
    ref_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=ref_settings)})
    trained = {}
    for algorithm in NAMES:
        runs = {"reference": [], "engine": []}
        for _ in range(args.repeats):  # the best of the repeats: the machine's noise only ever slows a run
            reference = reference_vec_env(market, ref_cfg, span.train_rows)
            reference.seed(cfg.seed)
            runs["reference"].append(bench_training(ref_cfg, span, algorithm, reference, args.timesteps))
            engine = EngineVecEnv(market, cfg, first, last, cfg.train.n_envs, cfg.env.episode_bars)
            engine.seed(cfg.seed)
            runs["engine"].append(bench_training(cfg, span, algorithm, engine, args.timesteps))
        slow, slow_share, _ = max(runs["reference"], key=lambda r: r[0])
        fast, fast_share, trained[algorithm] = max(runs["engine"], key=lambda r: r[0])
        print(f"   {algorithm:>12}: reference {ref_settings['n_envs']} envs x {ref_settings['n_steps']} "
              f"{slow:,.0f} steps/s (rollout {slow_share:.0%}); engine {cfg.train.n_envs} envs x {cfg.train.n_steps} "
              f"{fast:,.0f} steps/s (rollout {fast_share:.0%}): {fast / slow:.1f}x; rollout alone "
              f"{(fast / fast_share) / (slow / slow_share):.1f}x")

    print("\n4. torch intra-op threads (this machine's cores:", len(os.sched_getaffinity(0)), ")")
    obs_dim = Engine(market, cfg, 1).obs_dim
    thread_counts = (1, 2, 4)
    training = dict.fromkeys(thread_counts, 0.0)
    for _ in range(args.repeats):  # interleaved, the best of the repeats per count
        for threads in thread_counts:
            torch.set_num_threads(threads)
            engine = EngineVecEnv(market, cfg, first, last, cfg.train.n_envs, cfg.env.episode_bars)
            engine.seed(cfg.seed)
            training[threads] = max(training[threads], bench_training(cfg, span, NAMES[0], engine, args.timesteps)[0])
    for threads in thread_counts:
        torch.set_num_threads(threads)
        rates = [bench_inference(obs_dim, len(market.levels), cfg.train.net_arch, b) for b in (1, 64, 1024)]
        print(f"   {threads} threads: inference batch 1 / 64 / 1,024: " + " / ".join(f"{r:,.0f}" for r in rates)
              + f" obs/s; {NAMES[0]} training {training[threads]:,.0f} steps/s")
    torch.set_num_threads(cfg.train.torch_threads)

    print("\n5. backtest over the test window")
    rows = span.test_rows
    population = LinearPopulation(obs_dim, len(market.levels), 32)
    names = [f"p{i}" for i in range(32)]
    policies = {name: (population, True) for name in names}
    fast = best_of(3, lambda: backtest_fold(market, cfg, rows, policies))
    baselines = best_of(3, lambda: baseline_paths(market, cfg, rows[0] - 1, rows[1] - 1))  # the fixed-action ones
    start = time.perf_counter()
    for i in range(32):
        reference_path(market, cfg, rows, population.member(i), True)
    slow = time.perf_counter() - start
    print(f"   32 random linear policies x {rows[1] - rows[0]} bars: engine {fast:.3f} s with the {len(BASELINES)} baselines "
          f"({fast - baselines:.3f} s without the fixed-action ones), reference loop {slow:.3f} s: {slow / fast:.1f}x "
          f"({slow / (fast - baselines):.1f}x the policies' engine alone, the rule included)")
    for algorithm, model in trained.items():
        masked = spec(algorithm).reads_masks
        policy = {algorithm: (sb3_policy(model, masked), masked)}
        fast = best_of(3, lambda policy=policy: backtest_fold(market, cfg, rows, policy))
        start = time.perf_counter()
        reference_path(market, cfg, rows, policy[algorithm][0], masked)
        slow = time.perf_counter() - start
        print(f"   trained {algorithm:>12}: engine {fast:.3f} s with the baselines ({fast - baselines:.3f} s without), "
              f"reference loop {slow:.3f} s: {slow / fast:.1f}x ({slow / (fast - baselines):.1f}x alone)")


if __name__ == "__main__":
    main()
