"""PPO with an auxiliary reward-prediction loss: :class:`MultimodalPPO`.

Why. In our games (and in BabyAI) the hard part of learning from scratch is
grounding: tying "the red key" or "the one that buzzes" to what the agent sees
and hears. PPO learns it only through the policy and value losses, whose
signal for it is weak while the policy is still random: the value of a state
barely depends on the instruction when the agent's next moves are random.
The reward of a single step does depend on it, sharply and whatever the
policy: walking into the object the instruction names pays, into another one
does not. Predicting each step's reward from the features and the action taken
(UNREAL's reward prediction, Jaderberg et al., 2017) therefore gives the
shared encoder a clean, supervised signal for exactly the features the policy
needs, from the first episodes on, with nothing but observations, actions and
rewards (no labels, no expert, no game internals).

The loss. ``reward_net`` maps the features to one predicted reward per action;
the prediction for the action taken is regressed onto the reward received
(squared error). Rewards are rare: most steps pay nothing, and the steps that
end an episode are where a sparse-reward game decides. The loss weights the
steps that end an episode as much as all other steps together (the mean of
each group, averaged), so a batch with a few endings still learns from them.

With ``aux_reward_coef=0`` (the default) this is exactly SB3's PPO: the same
loss, the same updates, the same logs. The train loop follows SB3's
``PPO.train`` line for line and adds the auxiliary term.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.utils import explained_variance
from torch import Tensor
from torch.nn import functional as F

from mbm_agent.sb3.buffer import MultimodalRolloutBuffer, MultimodalRolloutSamples
from mbm_agent.sb3.policy import MultimodalActorCriticPolicy


def reward_prediction_loss(predicted: Tensor, rewards: Tensor, ends: Tensor) -> Tensor:
    """Squared error of the predicted rewards, episode-ending steps weighted as all others.

    Args:
        predicted: ``(B,)`` predicted reward of the action taken.
        rewards: ``(B,)`` reward received.
        ends: ``(B,)`` 1.0 where the step ended its episode, else 0.0.

    Returns:
        The mean squared error over the ending steps and over the other steps,
        averaged (the plain mean when the batch holds only one kind).
    """
    err = (predicted - rewards) ** 2
    n_end = ends.sum()
    n_other = ends.numel() - n_end
    if n_end == 0 or n_other == 0:
        return err.mean()
    return 0.5 * (err * ends).sum() / n_end + 0.5 * (err * (1.0 - ends)).sum() / n_other


class MultimodalPPO(PPO):
    """SB3's PPO plus an optional auxiliary reward-prediction loss (see the module docstring).

    Args:
        policy: The policy class (or SB3 name). With ``aux_reward_coef > 0`` it must
            be a :class:`MultimodalActorCriticPolicy` (it gets a reward head).
        env: The training env.
        aux_reward_coef: Weight of the reward-prediction loss (0: plain PPO).
        **kwargs: SB3 ``PPO`` arguments.
    """

    def __init__(
        self, policy: Any, env: Any, *, aux_reward_coef: float = 0.0, **kwargs: Any
    ) -> None:
        if (
            isinstance(aux_reward_coef, bool)
            or not isinstance(aux_reward_coef, int | float)
            or not np.isfinite(aux_reward_coef)
            or aux_reward_coef < 0
        ):
            raise ValueError(
                f"aux_reward_coef must be a number >= 0 (0 turns reward prediction off), got "
                f"{aux_reward_coef!r}."
            )
        self.aux_reward_coef = float(aux_reward_coef)
        if self.aux_reward_coef > 0:
            if not (isinstance(policy, type) and issubclass(policy, MultimodalActorCriticPolicy)):
                raise ValueError(
                    "aux_reward_coef > 0 needs our MultimodalActorCriticPolicy (it adds the "
                    f"reward head), got {policy!r}; set aux_reward_coef=0 for another policy."
                )
            kwargs["policy_kwargs"] = {**(kwargs.get("policy_kwargs") or {}), "reward_head": True}
            if kwargs.get("rollout_buffer_class") is None:
                kwargs["rollout_buffer_class"] = MultimodalRolloutBuffer
            elif not issubclass(kwargs["rollout_buffer_class"], MultimodalRolloutBuffer):
                raise ValueError(
                    "aux_reward_coef > 0 needs a MultimodalRolloutBuffer (it records rewards "
                    "and episode ends for the auxiliary loss)."
                )
        super().__init__(policy, env, **kwargs)
        if self.aux_reward_coef > 0 and not isinstance(self.action_space, spaces.Discrete):
            raise ValueError(
                f"aux_reward_coef > 0 needs a Discrete action space, got {self.action_space}."
            )

    def train(self) -> None:
        """One PPO update on the rollout buffer (SB3's, plus the auxiliary term)."""
        if self.aux_reward_coef == 0:
            super().train()
            return
        policy = self.policy
        assert isinstance(policy, MultimodalActorCriticPolicy)
        policy.set_training_mode(True)
        self._update_learning_rate(policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = (
            None
            if self.clip_range_vf is None
            else self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        )
        entropy_losses: list[float] = []
        pg_losses: list[float] = []
        value_losses: list[float] = []
        reward_losses: list[float] = []
        clip_fractions: list[float] = []
        approx_kl_divs: list[float] = []
        continue_training = True
        loss = torch.zeros(())
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for data in self.rollout_buffer.get(self.batch_size):
                assert isinstance(data, MultimodalRolloutSamples)
                actions = data.actions.long().flatten()
                values, log_prob, entropy, predicted = policy.evaluate_actions_and_rewards(
                    data.observations, actions
                )
                values = values.flatten()
                advantages = data.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                ratio = torch.exp(log_prob - data.old_log_prob)
                policy_loss = -torch.min(
                    advantages * ratio,
                    advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range),
                ).mean()
                if clip_range_vf is None:
                    values_pred = values
                else:
                    values_pred = data.old_values + torch.clamp(
                        values - data.old_values, -clip_range_vf, clip_range_vf
                    )
                value_loss = F.mse_loss(data.returns, values_pred)
                entropy_loss = -torch.mean(entropy)
                reward_loss = reward_prediction_loss(predicted, data.rewards, data.episode_ends)
                loss = (
                    policy_loss
                    + self.ent_coef * entropy_loss
                    + self.vf_coef * value_loss
                    + self.aux_reward_coef * reward_loss
                )
                pg_losses.append(policy_loss.item())
                value_losses.append(value_loss.item())
                entropy_losses.append(entropy_loss.item())
                reward_losses.append(reward_loss.item())
                with torch.no_grad():
                    log_ratio = log_prob - data.old_log_prob
                    approx_kl_div = float(torch.mean((torch.exp(log_ratio) - 1) - log_ratio))
                    clip_fractions.append(float((torch.abs(ratio - 1) > clip_range).float().mean()))
                approx_kl_divs.append(approx_kl_div)
                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(
                            f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}"
                        )
                    break
                policy.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), self.max_grad_norm)
                policy.optimizer.step()
            self._n_updates += 1
            if not continue_training:
                break
        explained_var = explained_variance(
            self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()
        )
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/reward_prediction_loss", np.mean(reward_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
