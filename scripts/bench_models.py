"""Benchmark: training throughput of each model variant, and bf16 agreement, on the latest daily fold.

Prints, in one run:

1. MaskablePPO and PPO training steps/s for each variant of the ablation (the default MLP, the
   transformer, the quantile critic, CVaR, regime gating, adaptive KL) with the config's rollout
   and update settings, on each ``--devices`` entry, as a ratio to the first row (the default MLP on
   the first device when all variants run);
2. inference observations/s of the MLP and the transformer at batch 64 and 1,024;
3. agreement of the transformer's deterministic actions on the fold's test observations between
   fp32 on the CPU and bf16 autocast on each device (the same weights).

``--save-market F`` writes the fold's arrays here and ``--load-market F`` reads them there, so a
GPU machine skips the data files, the feature build and the regime fit (the project's packages
must still be installed there).

Usage:
  .venv/bin/python scripts/bench_models.py [--config configs/base.yaml] [--timesteps 16384] [--devices cpu,cuda]
"""

from __future__ import annotations

import argparse
import pickle
import time

import numpy as np
import torch

from sentio_core.config import Config, load_config
from sentio_core.env import new_book, observation
from sentio_core.networks import BarExtractor
from sentio_core.policies import pin_threads
from sentio_core.train import fold_model

VARIANTS = {
    "mlp (default)": {},
    "transformer": {"policy": "transformer"},
    "quantile critic": {"critic": "quantile"},
    "CVaR 0.5": {"critic": "quantile", "cvar_weight": 0.5},
    "regime gating": {"regime_gating": True},
    "adaptive KL": {"adaptive_kl": True},
}


def variant_cfg(cfg: Config, device: str, **train) -> Config:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": device, **train})})


def train_rate(cfg: Config, market, rows, algorithm: str, timesteps: int) -> tuple[float, object]:
    model = fold_model(algorithm, market, cfg, rows, 0)
    model.learn(cfg.train.n_envs * cfg.train.n_steps)  # warm-up: allocations, kernels
    start = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=False)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return timesteps / (time.perf_counter() - start), model


def observations(market, cfg: Config, rows) -> np.ndarray:
    """The observations at the closes of ``rows`` of a flat book (:func:`sentio_core.env.observation`)."""
    book = new_book(market, cfg.env.initial_equity_usd)
    return np.stack([observation(market, t, cfg.env.lookback_bars, book) for t in range(*rows)])


def inference_rate(policy, obs: np.ndarray, batch: int, device: str, repeats: int = 20) -> float:
    x = torch.as_tensor(np.resize(obs, (batch, obs.shape[1])), device=device)
    with torch.no_grad():
        policy.get_distribution(x)
        start = time.perf_counter()
        for _ in range(repeats):
            policy.get_distribution(x).distribution.probs.argmax(-1)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - start)


def actions(policy, obs: np.ndarray, device: str, bf16: bool) -> np.ndarray:
    policy = policy.to(device).eval()
    extractor = policy.features_extractor
    if isinstance(extractor, BarExtractor):
        extractor.mixed_precision = bf16
    with torch.no_grad():
        out = policy.get_distribution(torch.as_tensor(obs, device=device)).distribution.probs.argmax(-1).cpu().numpy()
    if isinstance(extractor, BarExtractor):
        extractor.mixed_precision = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/base.yaml")
    ap.add_argument("--timesteps", type=int, default=16_384)
    ap.add_argument("--devices", default="cpu", help="comma-separated: cpu, cuda")
    ap.add_argument("--variants", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--save-market", default=None)
    ap.add_argument("--load-market", default=None)
    args = ap.parse_args()

    cfg = load_config(args.config)
    pin_threads(cfg.train)
    if args.load_market:
        with open(args.load_market, "rb") as f:
            market, train_rows, test_rows = pickle.load(f)
    else:
        from bench_train import latest_fold  # the data stack, only when the fold is built here

        _, span, market = latest_fold(args.config)
        train_rows, test_rows = span.train_rows, span.test_rows
    if args.save_market:
        with open(args.save_market, "wb") as f:
            pickle.dump((market, train_rows, test_rows), f)
    devices = args.devices.split(",")
    names = list(VARIANTS) if args.variants is None else args.variants.split(",")
    print(f"latest fold: {train_rows[1] - train_rows[0]} training bars, {market.features.shape[1]} features x "
          f"{cfg.env.lookback_bars} bars; {cfg.train.n_envs} envs x {cfg.train.n_steps} steps, batch "
          f"{cfg.train.batch_size}, {cfg.train.n_epochs} epochs; torch threads {torch.get_num_threads()}")
    print(f"1. training throughput, {args.timesteps:,} steps after one warm-up rollout")
    reference = None
    trained = {}
    for name in names:
        for device in devices:
            for algorithm in ("maskable_ppo", "ppo"):
                rate, model = train_rate(variant_cfg(cfg, device, **VARIANTS[name]), market, train_rows, algorithm,
                                         args.timesteps)
                reference = reference or rate
                trained[(name, device, algorithm)] = model
                print(f"   {name:16s} {device:5s} {algorithm:13s} {rate:9,.0f} steps/s  ({rate / reference:.2f}x the first row)",
                      flush=True)
    obs = observations(market, cfg, test_rows)
    print("2. inference (deterministic actions), observations/s")
    for name in ("mlp (default)", "transformer"):
        for device in devices:
            model = trained.get((name, device, "maskable_ppo"))
            if model is None:
                continue
            rates = [inference_rate(model.policy.eval(), obs, b, device) for b in (64, 1024)]
            print(f"   {name:16s} {device:5s} batch 64 / 1,024: {rates[0]:,.0f} / {rates[1]:,.0f}")
    print(f"3. transformer actions on the {len(obs)} test observations: fp32 CPU vs bf16 autocast")
    for device in devices:
        model = trained.get(("transformer", device, "maskable_ppo"))
        if model is None:
            continue
        exact = actions(model.policy, obs, "cpu", False)
        low = actions(model.policy, obs, device, True)
        print(f"   bf16 on {device}: {np.mean(exact == low):.2%} identical ({int(np.sum(exact != low))} differ)")


if __name__ == "__main__":
    main()
