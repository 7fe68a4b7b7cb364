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

Memory. With a policy that has memory (``policy_kwargs={"memory": 128}``: a
GRU over the fused features, :class:`MultimodalActorCriticPolicy`), rollouts
carry each env's recurrent state from step to step (reset at episode starts)
and store the state each step started from; the update runs the GRU over
sequences of ``sequence_length`` consecutive steps (truncated backpropagation
through time), each starting from the state stored in the rollout, as R2D2's
"stored state" (Kapturowski et al., 2019). Why memory: an agent that sees only
its own 7x7 view and hears a stereo mix cannot tell from one step whether it
has just turned away from the target or whether a sound is in front or
behind; without memory its greedy (argmax) play loops, turning left and right
or walking into a wall, where a sampled action would eventually break out.

With ``aux_reward_coef=0`` and no memory (the defaults) this is exactly SB3's
PPO: the same loss, the same updates, the same logs. The train loop follows
SB3's ``PPO.train`` line for line and adds the auxiliary term and the sequences.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor
from torch.nn import functional as F

from mbm_agent.encoding.values import is_finite_number
from mbm_agent.sb3.buffer import MultimodalRolloutBuffer, MultimodalRolloutSamples
from mbm_agent.sb3.policy import MultimodalActorCriticPolicy, check_memory


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
        sequence_length: Steps per sequence the memory is trained on (must divide
            ``n_steps``).
        memory: Size of the policy's recurrent state (0: none); the same as
            ``policy_kwargs={"memory": N}``, given here so that a config can ask for
            memory from PPO alone (``hyperparams.ppo.memory``): the algorithm that
            carries the state is what makes a memory trainable.
        **kwargs: SB3 ``PPO`` arguments.
    """

    def __init__(
        self,
        policy: Any,
        env: Any,
        *,
        aux_reward_coef: float = 0.0,
        sequence_length: int = 16,
        memory: int = 0,
        **kwargs: Any,
    ) -> None:
        if not is_finite_number(aux_reward_coef) or aux_reward_coef < 0:
            raise ValueError(
                f"aux_reward_coef must be a number >= 0 (0 turns reward prediction off), got "
                f"{aux_reward_coef!r}."
            )
        self.aux_reward_coef = float(aux_reward_coef)
        policy_kwargs = dict(kwargs.get("policy_kwargs") or {})
        memory = check_memory(memory)
        if memory and policy_kwargs.get("memory", memory) != memory:
            raise ValueError(
                f"memory={memory} and policy_kwargs.memory={policy_kwargs['memory']} disagree; "
                "give the recurrent state's size once."
            )
        if memory:
            policy_kwargs["memory"] = memory
        self.memory = check_memory(policy_kwargs.get("memory", 0))
        if isinstance(sequence_length, bool) or not isinstance(sequence_length, int):
            raise ValueError(f"sequence_length must be an integer, got {sequence_length!r}.")
        self.sequence_length = sequence_length
        ours = isinstance(policy, type) and issubclass(policy, MultimodalActorCriticPolicy)
        if (self.aux_reward_coef > 0 or self.memory) and not ours:
            raise ValueError(
                "aux_reward_coef > 0 and memory need our MultimodalActorCriticPolicy (it adds "
                f"the reward head and the recurrent core), got {policy!r}; set "
                "aux_reward_coef=0 and no memory for another policy."
            )
        if self.aux_reward_coef > 0 or self.memory:
            if self.aux_reward_coef > 0:
                policy_kwargs["reward_head"] = True
            kwargs["policy_kwargs"] = policy_kwargs
            if kwargs.get("rollout_buffer_class") is None:
                kwargs["rollout_buffer_class"] = MultimodalRolloutBuffer
            elif not issubclass(kwargs["rollout_buffer_class"], MultimodalRolloutBuffer):
                raise ValueError(
                    "aux_reward_coef > 0 and memory need a MultimodalRolloutBuffer (it records "
                    "rewards, episode ends and recurrent states)."
                )
            if self.memory:
                kwargs["rollout_buffer_kwargs"] = {
                    **(kwargs.get("rollout_buffer_kwargs") or {}),
                    "memory": self.memory,
                    "sequence_length": sequence_length,
                }
        self._last_state: Tensor | None = None
        super().__init__(policy, env, **kwargs)
        if self.aux_reward_coef > 0 and not isinstance(self.action_space, spaces.Discrete):
            raise ValueError(
                f"aux_reward_coef > 0 needs a Discrete action space, got {self.action_space}."
            )

    def train(self) -> None:
        """One PPO update on the rollout buffer (SB3's, plus the auxiliary term)."""
        if self.aux_reward_coef == 0 and not self.memory:
            super().train()
            return
        policy = self.policy
        assert isinstance(policy, MultimodalActorCriticPolicy)
        policy.set_training_mode(True)
        self._update_learning_rate(policy.optimizer)
        # SB3 types clip_range(_vf) as float | Schedule; _setup_model made them schedules
        # (SB3's PPO.train ignores the same error).
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
                predicted: Tensor | None
                if self.memory:
                    assert data.states is not None and data.episode_starts is not None
                    values, log_prob, entropy, predicted = policy.evaluate_sequences(
                        data.observations, actions, data.states, data.episode_starts
                    )
                else:
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
                reward_loss = (
                    reward_prediction_loss(predicted, data.rewards, data.episode_ends)
                    if predicted is not None
                    else torch.zeros(())
                )
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

    def _setup_learn(self, *args: Any, **kwargs: Any) -> Any:
        out = super()._setup_learn(*args, **kwargs)
        if self.memory and (self._last_state is None or kwargs.get("reset_num_timesteps", True)):
            assert isinstance(self.policy, MultimodalActorCriticPolicy)
            self._last_state = self.policy.initial_state(self.n_envs)
        return out

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """SB3's rollout loop; with memory, each env's recurrent state goes along.

        Without memory it is SB3's own. With memory it follows SB3's loop step for
        step (Discrete actions only): the policy's :meth:`~MultimodalActorCriticPolicy.step`
        takes and returns the state, the buffer stores the state each step started
        from, the value of a truncated episode's last observation is read with the
        state that observation would continue from, as is the value after the
        rollout (reset where the last step ended an episode).
        """
        if not self.memory:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        policy = self.policy
        assert isinstance(policy, MultimodalActorCriticPolicy)
        assert isinstance(rollout_buffer, MultimodalRolloutBuffer)
        assert self._last_obs is not None and self._last_episode_starts is not None
        policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.reset()
        callback.on_rollout_start()
        if self._last_state is None or self._last_state.shape[0] != env.num_envs:
            self._last_state = policy.initial_state(env.num_envs)
        state = self._last_state
        dones = self._last_episode_starts
        new_obs = self._last_obs
        while n_steps < n_rollout_steps:
            starts = torch.as_tensor(
                self._last_episode_starts, dtype=torch.float32, device=self.device
            )
            with torch.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)
                log_probs_all, values, new_state = policy.step(obs_tensor, state, starts)
                actions_t = torch.multinomial(log_probs_all.exp(), 1, True).squeeze(-1)
                log_probs = log_probs_all.gather(-1, actions_t.unsqueeze(-1)).squeeze(-1)
            actions = actions_t.cpu().numpy()
            # VecEnvObs allows tuples; our observations are dicts (or arrays), as SB3's
            # collect_rollouts assumes too.
            new_obs, rewards, dones, infos = env.step(actions)  # type: ignore[assignment]
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            for idx, done in enumerate(dones):
                if (
                    done
                    and infos[idx].get("terminal_observation") is not None
                    and infos[idx].get("TimeLimit.truncated", False)
                ):
                    terminal_obs = policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                    with torch.no_grad():
                        _, terminal_value, _ = policy.step(
                            terminal_obs,
                            new_state[idx : idx + 1],
                            torch.zeros(1, device=self.device),
                        )
                    rewards[idx] += self.gamma * float(terminal_value[0, 0])
            rollout_buffer.add(
                self._last_obs,
                actions.reshape(-1, 1),
                rewards,
                self._last_episode_starts,
                values,
                log_probs,
                state=state,
            )
            self._last_obs = new_obs
            self._last_episode_starts = dones
            state = new_state
        self._last_state = state
        with torch.no_grad():
            _, values, _ = policy.step(
                obs_as_tensor(new_obs, self.device),
                state,
                torch.as_tensor(dones, dtype=torch.float32, device=self.device),
            )
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True
