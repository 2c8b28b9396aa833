"""The engine behind stable-baselines3's ``VecEnv`` interface, for training.

``n`` environments are ``n`` portfolios of one :class:`sentio_core.engine.Engine`: one array step
for all of them, observations gathered into one buffer, and ``action_masks`` answered for all at
once (sb3-contrib's MaskablePPO asks ``env_method("action_masks")`` and stacks the rows). Episodes
start at random decision rows of the training window, drawn from a generator seeded by
:meth:`seed` (``seed + 1`` ...; the model's seed reaches it through stable-baselines3), and a
finished episode restarts at once, its last observation kept in ``terminal_observation``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from sentio_core.config import Config
from sentio_core.engine import Engine
from sentio_core.market import Market


class EngineVecEnv(VecEnv):
    """``n_envs`` trading environments over the decision rows ``[first, last)``, episodes of
    ``episode_bars`` decisions (the whole window when None or longer); the learner is handed
    ``reward_scale`` times the environment's reward (``train.reward_scale``).

    :param windows: several decision windows ``[(first, last), ...]`` instead of one (a
        combinatorial split's training ranges): every episode lies inside one window, its start
        drawn uniformly over all the starts the windows hold (a window shorter than an episode is
        one whole-window episode, drawn in proportion to its length).
    """

    render_mode = None

    def __init__(self, market: Market, cfg: Config, first: int, last: int, n_envs: int, episode_bars: int | None,
                 reward_scale: float = 1.0, windows: Sequence[tuple[int, int]] | None = None):
        windows = list(windows) if windows else [(first, last)]
        for a, b in windows:
            if not 0 <= a < b <= market.n_rows - 1:
                raise ValueError(f"decision window [{a}, {b}) does not fit {market.n_rows} rows")
        self.engine = Engine(market, cfg, n_envs)
        self.first, self.last = windows[0][0], windows[-1][1]
        self.episode_bars = episode_bars if episode_bars is not None and episode_bars < self.last - self.first else None
        self._several = None
        if len(windows) > 1:  # episode starts and ends per window, weighted by the starts each holds
            starts = np.array([a for a, _ in windows])
            ends = np.array([b for _, b in windows])
            fits = (ends - starts > episode_bars) if episode_bars is not None else np.zeros(len(windows), dtype=bool)
            weight = np.where(fits, ends - starts - (episode_bars or 0) + 1, ends - starts)
            self._several = (starts, ends, fits, np.cumsum(weight))
        bound = max(cfg.env.clip_obs, 10.0)  # as the reference environment's space
        obs_space = gym.spaces.Box(-bound, bound, shape=(self.engine.obs_dim,), dtype=np.float32)
        super().__init__(n_envs, obs_space, gym.spaces.Discrete(len(market.levels)))
        self._rng = np.random.default_rng()
        self.reward_scale = reward_scale  # what the learner sees: scale x the environment's reward
        self._obs = np.empty((n_envs, self.engine.obs_dim), dtype=np.float32)
        self._actions = np.zeros(n_envs, dtype=int)
        self._masks: np.ndarray | None = None

    # --- episodes ------------------------------------------------------------------------
    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        seeds = super().seed(seed)
        self._rng = np.random.default_rng(seeds[0])
        return seeds

    def _windows(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._several is not None:
            return self._draw_several(k)
        if self.episode_bars is None:
            return np.full(k, self.first), np.full(k, self.last)
        start = self._rng.integers(self.first, self.last - self.episode_bars + 1, size=k)
        return start, start + self.episode_bars

    def _draw_several(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        starts, ends, fits, cum = self._several
        u = self._rng.integers(0, cum[-1], size=k)
        w = np.searchsorted(cum, u, side="right")  # the window each draw falls in
        offset = u - np.concatenate([[0], cum[:-1]])[w]
        start = np.where(fits[w], starts[w] + offset, starts[w])
        end = np.where(fits[w], start + (self.episode_bars or 0), ends[w])
        return start, end

    def reset(self) -> np.ndarray:
        self.engine.reset_all(*self._windows(self.num_envs))
        self._masks = None
        self._reset_seeds()
        self._reset_options()
        return self.engine.observe(self._obs).copy()

    def action_masks(self) -> np.ndarray:
        """(n_envs, A) the composed masks of every environment's next decision."""
        if self._masks is None:
            self._masks = self.engine.masks()
        return self._masks[0]

    # --- stepping --------------------------------------------------------------------------
    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=int).reshape(self.num_envs)

    def step_wait(self):
        reward, _, terminated, truncated = self.engine.step(self._actions, self._masks)
        self._masks = None
        done = terminated | truncated
        obs = self.engine.observe(self._obs)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        ended = np.flatnonzero(done)
        if len(ended):
            for i in ended:
                infos[i]["terminal_observation"] = obs[i].copy()
                infos[i]["TimeLimit.truncated"] = bool(truncated[i])
            self.engine.reset(ended, *self._windows(len(ended)))
            obs = self.engine.observe(self._obs)
        return obs.copy(), (self.reward_scale * reward).astype(np.float32), done, infos

    def close(self) -> None:
        return None

    # --- the VecEnv plumbing ----------------------------------------------------------------
    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(f"EngineVecEnv environments share one engine; {attr_name} cannot be set per environment")

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        if method_name != "action_masks":
            raise AttributeError(f"EngineVecEnv has no per-environment method {method_name!r}")
        masks = self.action_masks()
        return [masks[i] for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
