"""PPO's update with a distributional critic, a CVaR objective and an adaptive KL penalty.

:class:`SentioLossMixin` replaces stable-baselines3's ``train()`` (the update after each rollout)
for PPO and MaskablePPO alike. With a scalar critic, ``cvar_weight`` 0 and no KL penalty it is
sb3's update operation for operation, so the same seed gives bit-identical weights (a test holds
it). What it adds:

**Distributional targets.** The critic's quantiles are regressed on samples of the lambda-return
distribution, not on one scalar copied into every quantile. For each state ``s_t`` and each
quantile ``j`` a horizon ``n ~ Geometric(1 - lambda)`` is drawn, and the target is the n-step
return bootstrapped with the critic's quantile ``j`` at ``s_{t+n}``::

    z_tj = r_t + g r_{t+1} + ... + g^(n-1) r_{t+n-1} + g^n theta_j(s_{t+n})

cut at an episode's end (no bootstrap) or at the rollout's end (bootstrap there). Over the horizon
draws, the targets are distributed as the lambda-mixture of the n-step distributional Bellman
targets, whose mean is GAE's lambda-return; lambda 0 is QR-DQN's one-step target ``r + g theta_j(s')``
and lambda 1 the Monte Carlo return. (Mixing the quantile vectors linearly instead, as a per-quantile
TD(lambda), would shrink the target spread.) The draws use their own generator seeded by the
model's seed and step count, so sb3's random streams are untouched.

**Quantile Huber loss** (Dabney et al. 2018, QR-DQN), ``u = z_j - theta_i``::

    L = sum_i mean_j |tau_i - 1[u < 0]| * H_kappa(u) / kappa,   H_kappa(u) = u^2 / 2 if |u| <= kappa else kappa (|u| - kappa / 2)

with ``kappa = 0`` the plain pinball loss ``|tau_i - 1[u < 0]| |u|``.

**CVaR objective.** The advantage handed to the clipped surrogate is
``(1 - w) A_t + w T_t``, ``T_t = min(R_t - VaR_alpha(s_t), 0) / alpha``, with ``A_t`` the GAE
advantage, ``R_t`` the lambda-return and ``VaR_alpha(s_t)`` the alpha-quantile of the critic's
(sorted) quantiles at ``s_t``, interpolated between the midpoints. ``T`` is the per-state form of
the CVaR policy gradient (Tamar et al. 2015: ``grad CVaR = E[(R - VaR) 1[R <= VaR] grad log pi] / alpha``):
only outcomes in the alpha-tail move the policy, in proportion to how far below the VaR they
land. It is not a baseline: a term that does not depend on the sampled outcome (a state-only
CVaR estimate subtracted from A, say) leaves the expected gradient, and so the choice, unchanged.
The same per-minibatch normalisation as PPO's follows. ``w = 0`` is PPO exactly.

**Adaptive KL penalty** (Schulman et al. 2017, section 4): ``beta * KL(old || new)`` is added to the
loss, with the unbiased estimator ``mean((r - 1) - log r)`` of the probability ratio ``r``; after
each update, ``beta`` doubles when the update's mean KL exceeded ``1.5 x kl_target`` and halves
when it was below ``kl_target / 1.5``. It works beside the clip and beside sb3's early stop
(``target_kl``).
"""

from __future__ import annotations

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from torch.nn import functional as F

from sentio_core.networks import quantile_midpoints

CHUNK = 8192  # observations per no-grad critic pass over the rollout


def quantile_huber_loss(pred: th.Tensor, target: th.Tensor, tau: th.Tensor, kappa: float) -> th.Tensor:
    """QR-DQN's loss of predicted quantiles ``pred`` (B, N) at levels ``tau`` (N,) against target
    samples ``target`` (B, M): summed over the quantiles, averaged over targets and batch.

    The slow, obvious form; :func:`quantile_huber_loss_fused` is what training runs (a test holds
    the two equal, values and gradients)."""
    u = target[:, None, :] - pred[:, :, None]  # (B, N, M): target j minus quantile i
    if kappa > 0:
        a = u.abs()
        rho = th.where(a <= kappa, 0.5 * u.pow(2), kappa * (a - 0.5 * kappa)) / kappa
    else:
        rho = u.abs()
    weight = (tau[None, :, None] - (u.detach() < 0).to(u.dtype)).abs()
    return (weight * rho).mean(dim=2).sum(dim=1).mean()


class _FusedQuantileLoss(th.autograd.Function):
    """The loss and its gradient in one pass over the (B, N, M) pairs; the backward pass only scales
    the saved gradient. d/d theta_i = -mean_j |tau_i - 1[u < 0]| clamp(u / kappa, -1, 1) / B
    (``sign(u)`` for kappa 0), targets held fixed (they carry no gradient)."""

    @staticmethod
    def forward(ctx, pred, target, tau, kappa):
        u = target[:, None, :] - pred[:, :, None]
        weight = (tau[None, :, None] - (u < 0).to(u.dtype)).abs_()
        a = u.abs()
        if kappa > 0:
            rho = th.where(a <= kappa, (0.5 / kappa) * u * u, a - 0.5 * kappa)
            slope = (u / kappa).clamp_(-1.0, 1.0)
        else:
            rho, slope = a, th.sign(u)
        batch, m = pred.shape[0], target.shape[1]
        ctx.save_for_backward(-(weight * slope).sum(dim=2) / (m * batch))
        return (weight * rho).sum() / (m * batch)

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None


def quantile_huber_loss_fused(pred: th.Tensor, target: th.Tensor, tau: th.Tensor, kappa: float) -> th.Tensor:
    """:func:`quantile_huber_loss`, computed with its gradient in one pass (about half the work of autograd's)."""
    return _FusedQuantileLoss.apply(pred, target.detach(), tau, float(kappa))


def value_at_risk(quantiles: np.ndarray, alpha: float) -> np.ndarray:
    """The alpha-quantile of each row of ``quantiles`` (..., N) (sorted first), linearly interpolated
    between the midpoint levels ``(2i + 1) / 2N`` and flat beyond the first and last."""
    q = np.sort(quantiles, axis=-1)
    n = q.shape[-1]
    tau = quantile_midpoints(n)
    pos = np.clip((alpha - tau[0]) * n, 0.0, n - 1.0)  # fractional index: tau is spaced 1/n apart
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return (1 - frac) * q[..., lo] + frac * q[..., hi]


def cvar_tail(returns: np.ndarray, var: np.ndarray, alpha: float) -> np.ndarray:
    """``min(R - VaR, 0) / alpha``: the CVaR policy gradient's weight of each return."""
    return np.minimum(returns - var, 0.0) / alpha


def lambda_return_samples(rewards: np.ndarray, episode_starts: np.ndarray, quantiles: np.ndarray,
                          last_quantiles: np.ndarray, last_dones: np.ndarray, gamma: float, lam: float,
                          rng: np.random.Generator) -> np.ndarray:
    """Distributional lambda-return targets (T, E, N) of a rollout (see the module's docstring).

    :param rewards, episode_starts: (T, E) as in sb3's rollout buffer (``episode_starts[t]``: the
        observation at t begins an episode).
    :param quantiles: (T, E, N) the critic's quantiles at each observation; ``last_quantiles``
        (E, N) at the observation after the rollout, ``last_dones`` (E,) whether that step ended.
    """
    T, E, N = quantiles.shape
    next_alive = np.empty((T, E))
    next_alive[:-1] = 1.0 - episode_starts[1:]
    next_alive[-1] = 1.0 - np.asarray(last_dones, dtype=float)
    next_q = np.concatenate([quantiles[1:], last_quantiles[None]], axis=0)
    if lam >= 1.0:
        horizon = np.full((T, E, N), np.iinfo(np.int64).max)
    elif lam <= 0.0:
        horizon = np.ones((T, E, N), dtype=np.int64)
    else:
        horizon = rng.geometric(1.0 - lam, size=(T, E, N))
    t_index = np.arange(T)[:, None, None]
    target = np.zeros((T, E, N))
    discount = np.ones((T, E, N))
    alive = np.ones((T, E, N), dtype=bool)
    for k in range(T):
        rows = T - k  # states t whose step t + k is inside the rollout
        a, d = alive[:rows], discount[:rows]
        target[:rows] += np.where(a, d * rewards[k:, :, None], 0.0)
        continues = next_alive[k:, :, None] > 0
        stop = (horizon[:rows] == k + 1) | (t_index[:rows] + k + 1 == T)
        bootstrap = a & continues & stop
        target[:rows] += np.where(bootstrap, gamma * d * next_q[k:], 0.0)
        alive[:rows] = a & continues & ~stop
        discount[:rows] *= gamma
        if not alive[:rows].any():
            break
    return target


class SentioLossMixin:
    """The update of :mod:`sentio_core.learner` for an sb3 PPO-family algorithm.

    :param quantile_kappa: Huber threshold of the quantile loss (with a quantile critic).
    :param cvar_alpha, cvar_weight: the CVaR objective (``cvar_weight`` 0: off).
    :param adaptive_kl, kl_target, kl_coef: the adaptive KL penalty (off by default).
    """

    def __init__(self, *args, quantile_kappa: float = 1.0, cvar_alpha: float = 0.05, cvar_weight: float = 0.0,
                 adaptive_kl: bool = False, kl_target: float = 0.01, kl_coef: float = 0.2, **kwargs):
        self.quantile_kappa, self.cvar_alpha, self.cvar_weight = quantile_kappa, cvar_alpha, cvar_weight
        self.adaptive_kl, self.kl_target, self.kl_coef = adaptive_kl, kl_target, kl_coef
        self.kl_history: list[tuple[float, float]] = []  # (update's mean KL, coefficient after it)
        super().__init__(*args, **kwargs)
        if cvar_weight > 0 and not getattr(self.policy, "n_quantiles", 0):
            raise ValueError("cvar_weight > 0 needs a quantile critic (the VaR comes from its quantiles)")

    @property
    def _quantile_critic(self) -> bool:
        return bool(getattr(self.policy, "n_quantiles", 0))

    def _rollout_quantiles(self) -> tuple[np.ndarray, np.ndarray]:
        """The critic's quantiles at every rollout observation (T, E, N) and after it (E, N), in eval mode."""
        buffer = self.rollout_buffer
        obs = buffer.observations.reshape((-1,) + buffer.observations.shape[2:])
        self.policy.set_training_mode(False)
        with th.no_grad():
            parts = [self.policy.critic_quantiles(obs_as_tensor(obs[i: i + CHUNK], self.device)).cpu().numpy()
                     for i in range(0, len(obs), CHUNK)]
            last = self.policy.critic_quantiles(obs_as_tensor(self._last_obs, self.device)).cpu().numpy()
        self.policy.set_training_mode(True)
        return np.concatenate(parts).reshape(buffer.buffer_size, buffer.n_envs, -1), last

    def _distributional_targets(self) -> np.ndarray:
        """Targets of the quantile critic, flattened as the buffer flattens its arrays; with a CVaR
        weight, the buffer's advantages are mixed with the tail term first."""
        buffer = self.rollout_buffer
        quantiles, last = self._rollout_quantiles()
        rng = np.random.default_rng([int(self.seed or 0), int(self.num_timesteps)])
        targets = lambda_return_samples(buffer.rewards, buffer.episode_starts, quantiles, last,
                                        self._last_episode_starts, self.gamma, self.gae_lambda, rng)
        if self.cvar_weight > 0:
            var = value_at_risk(quantiles, self.cvar_alpha)
            tail = cvar_tail(buffer.returns, var, self.cvar_alpha)
            buffer.advantages = ((1.0 - self.cvar_weight) * buffer.advantages + self.cvar_weight * tail).astype(np.float32)
        return buffer.swap_and_flatten(targets.astype(np.float32))

    def train(self) -> None:
        # sb3's PPO.train (MaskablePPO's when the buffer carries masks), plus the quantile critic,
        # the CVaR advantage and the KL penalty; the order of operations is kept
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)
        quantile = self._quantile_critic
        targets = self._distributional_targets() if quantile else None
        tau = self.policy.value_net.tau if quantile else None
        n_samples = self.rollout_buffer.buffer_size * self.rollout_buffer.n_envs

        entropy_losses = []
        pg_losses, value_losses = [], []
        clip_fractions = []
        all_kl = []

        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            # the permutation the buffer is about to draw (peeked, not consumed): the rows of the
            # distributional targets that go with each minibatch
            state = np.random.get_state()
            order = np.random.permutation(n_samples)
            np.random.set_state(state)
            for k, rollout_data in enumerate(self.rollout_buffer.get(self.batch_size)):
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    actions = rollout_data.actions.long().flatten()
                masks = {"action_masks": rollout_data.action_masks} if hasattr(rollout_data, "action_masks") else {}

                if quantile:
                    quantiles, log_prob, entropy = self.policy.evaluate_quantiles(rollout_data.observations, actions, **masks)
                    values = quantiles.mean(-1)
                else:
                    values, log_prob, entropy = self.policy.evaluate_actions(rollout_data.observations, actions, **masks)
                    values = values.flatten()
                advantages = rollout_data.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                ratio = th.exp(log_prob - rollout_data.old_log_prob)

                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()

                pg_losses.append(policy_loss.item())
                clip_fraction = th.mean((th.abs(ratio - 1) > clip_range).float()).item()
                clip_fractions.append(clip_fraction)

                if quantile:
                    batch_targets = th.as_tensor(targets[order[k * self.batch_size: (k + 1) * self.batch_size]],
                                                 device=self.device)
                    value_loss = quantile_huber_loss_fused(quantiles, batch_targets, tau, self.quantile_kappa)
                else:
                    if self.clip_range_vf is None:
                        values_pred = values
                    else:
                        values_pred = rollout_data.old_values + th.clamp(values - rollout_data.old_values,
                                                                         -clip_range_vf, clip_range_vf)
                    value_loss = F.mse_loss(rollout_data.returns, values_pred)
                value_losses.append(value_loss.item())

                if entropy is None:
                    entropy_loss = -th.mean(-log_prob)
                else:
                    entropy_loss = -th.mean(entropy)
                entropy_losses.append(entropy_loss.item())

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                log_ratio = log_prob - rollout_data.old_log_prob
                if self.adaptive_kl:
                    loss = loss + self.kl_coef * th.mean((th.exp(log_ratio) - 1) - log_ratio)

                with th.no_grad():
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)
                    all_kl.append(float(approx_kl_div))

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    break

                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()

            self._n_updates += 1
            if not continue_training:
                break

        if self.adaptive_kl and all_kl:
            mean_kl = float(np.mean(all_kl))
            if mean_kl > 1.5 * self.kl_target:
                self.kl_coef *= 2.0
            elif mean_kl < self.kl_target / 1.5:
                self.kl_coef /= 2.0
            self.kl_history.append((mean_kl, self.kl_coef))
            self.logger.record("train/kl_coef", self.kl_coef)

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)


class SentioPPO(SentioLossMixin, PPO):
    """PPO with Sentio's update (:class:`SentioLossMixin`)."""


class SentioMaskablePPO(SentioLossMixin, MaskablePPO):
    """MaskablePPO with Sentio's update (:class:`SentioLossMixin`)."""
