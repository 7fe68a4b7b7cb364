"""PPO in a hand-written, CleanRL-style loop around :class:`mbm_agent.MultimodalEncoder`.

The encoder is a plain ``torch.nn.Module`` fed the raw Dict observations of a
Gymnasium vector env (uint8 frames, int64 token ids, float spectrograms); no
Stable-Baselines3 involved. The environment is our natively batched
``mbm/ModalityProbe-v0`` (one numpy call steps every world): each one-step
episode asks a question whose answer only the cued sense carries.

Run from the repository root (with the package installed, ``pip install -e .``)::

    python examples/cleanrl_ppo.py --total-timesteps 8000 --cue audio --fusion film

``train()`` takes the same settings as arguments, so tests call it with a tiny
budget. It handles both Gymnasium autoreset modes (``next_step`` and
``same_step``) as declared in the vector env's metadata.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from torch import Tensor, nn

import envs as games
from mbm_agent import EncoderConfig, MultimodalEncoder


def make_probe_vec_env(num_envs: int, seed: int = 0, cue: str = "text") -> gym.vector.VectorEnv:
    """Our natively batched ModalityProbe (answer carried by ``cue``), same-step autoreset."""
    venv = games.make_vec("mbm/ModalityProbe-v0", num_envs, cue=cue, autoreset_mode="same_step")
    venv.reset(seed=seed)
    return venv


class Agent(nn.Module):
    """Actor-critic on top of a shared :class:`MultimodalEncoder`.

    Args:
        observation_space: A single env's Dict observation space.
        n_actions: Number of discrete actions.
        config: Encoder settings.
    """

    def __init__(self, observation_space: spaces.Dict, n_actions: int, config: EncoderConfig):
        super().__init__()
        self.encoder = MultimodalEncoder(observation_space, config)
        self.actor = nn.Linear(self.encoder.features_dim, n_actions)
        self.critic = nn.Linear(self.encoder.features_dim, 1)
        nn.init.orthogonal_(self.actor.weight, 0.01)
        nn.init.zeros_(self.actor.bias)
        nn.init.orthogonal_(self.critic.weight, 1.0)
        nn.init.zeros_(self.critic.bias)

    def value(self, obs: dict[str, Tensor]) -> Tensor:
        """State values ``(B,)``."""
        return self.critic(self.encoder(obs)).squeeze(-1)

    def act(
        self, obs: dict[str, Tensor], action: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Sample (or score) actions: ``(action, log_prob, entropy, value)``."""
        features = self.encoder(obs)
        dist = torch.distributions.Categorical(logits=self.actor(features))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.critic(features).squeeze(-1)


def train(
    total_timesteps: int = 30_000,
    *,
    num_envs: int = 8,
    num_steps: int = 32,
    fusion: str = "concat",
    learning_rate: float = 1e-3,
    update_epochs: int = 4,
    num_minibatches: int = 4,
    gamma: float = 0.9,
    gae_lambda: float = 0.95,
    clip_coef: float = 0.2,
    ent_coef: float = 0.01,
    vf_coef: float = 0.5,
    max_grad_norm: float = 0.5,
    seed: int = 0,
    make_envs: Callable[[int, int], gym.vector.VectorEnv] = make_probe_vec_env,
    verbose: bool = False,
) -> dict[str, float]:
    """Train PPO and report how it went.

    Args:
        total_timesteps: Environment steps over all envs.
        num_envs: Parallel envs.
        num_steps: Rollout length per env and update.
        fusion: Fusion mode of the encoder.
        learning_rate: Adam learning rate (annealed linearly to 0).
        update_epochs: Passes over each rollout.
        num_minibatches: Minibatches per pass.
        gamma: Discount.
        gae_lambda: GAE lambda.
        clip_coef: PPO ratio clip.
        ent_coef: Entropy bonus weight.
        vf_coef: Value loss weight.
        max_grad_norm: Gradient clip.
        seed: Seed of torch and the envs.
        make_envs: ``(num_envs, seed) -> VectorEnv`` with Dict observations.
        verbose: Print progress once per update.

    Returns:
        ``reward_rate`` (mean reward per real step over the last quarter of
        updates), ``first_reward_rate`` (same over the first update),
        ``updates`` and ``sps`` (env steps per second).
    """
    torch.manual_seed(seed)
    envs = make_envs(num_envs, seed)
    obs_space = envs.single_observation_space
    act_space = envs.single_action_space
    if not isinstance(obs_space, spaces.Dict) or not isinstance(act_space, spaces.Discrete):
        raise ValueError(
            f"This example needs Dict observations and Discrete actions, got {obs_space} "
            f"and {act_space}."
        )
    next_step_reset = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) in (
        AutoresetMode.NEXT_STEP,
        "NextStep",
    )
    agent = Agent(obs_space, int(act_space.n), EncoderConfig(fusion=fusion))
    optimizer = torch.optim.Adam(agent.parameters(), lr=learning_rate, eps=1e-5)

    batch_size = num_envs * num_steps
    minibatch_size = max(1, batch_size // num_minibatches)
    num_updates = max(1, total_timesteps // batch_size)
    buffers = {
        k: torch.zeros((num_steps, num_envs, *s.shape), dtype=torch.as_tensor(s.sample()).dtype)
        for k, s in obs_space.spaces.items()
    }
    actions = torch.zeros((num_steps, num_envs), dtype=torch.long)
    logprobs = torch.zeros((num_steps, num_envs))
    rewards = torch.zeros((num_steps, num_envs))
    dones = torch.zeros((num_steps, num_envs))
    values = torch.zeros((num_steps, num_envs))
    # With next-step autoreset, the step after an episode end only resets the
    # env: its action is ignored, so it is left out of the losses.
    valid = torch.ones((num_steps, num_envs))

    obs_np, _ = envs.reset(seed=seed)
    next_obs = {k: torch.as_tensor(np.asarray(v)) for k, v in obs_np.items()}
    next_done = torch.zeros(num_envs)
    prev_done = np.zeros(num_envs, dtype=bool)
    rates: list[float] = []
    start = time.perf_counter()

    for update in range(num_updates):
        optimizer.param_groups[0]["lr"] = learning_rate * (1.0 - update / num_updates)
        for step in range(num_steps):
            for k in buffers:
                buffers[k][step] = next_obs[k]
            dones[step] = next_done
            valid[step] = torch.as_tensor(~prev_done if next_step_reset else np.ones(num_envs))
            with torch.no_grad():
                action, logprob, _, value = agent.act(next_obs)
            actions[step], logprobs[step], values[step] = action, logprob, value
            obs_np, reward, terminated, truncated, _ = envs.step(action.numpy())
            done = np.logical_or(terminated, truncated)
            rewards[step] = torch.as_tensor(reward, dtype=torch.float32)
            next_obs = {k: torch.as_tensor(np.asarray(v)) for k, v in obs_np.items()}
            next_done = torch.as_tensor(done, dtype=torch.float32)
            prev_done = done

        with torch.no_grad():
            next_value = agent.value(next_obs)
            advantages = torch.zeros_like(rewards)
            last = torch.zeros(num_envs)
            for t in reversed(range(num_steps)):
                following = next_value if t == num_steps - 1 else values[t + 1]
                not_done = 1.0 - (next_done if t == num_steps - 1 else dones[t + 1])
                delta = rewards[t] + gamma * following * not_done - values[t]
                last = delta + gamma * gae_lambda * not_done * last
                advantages[t] = last
            returns = advantages + values

        flat_obs = {k: v.reshape(batch_size, *v.shape[2:]) for k, v in buffers.items()}
        flat = {
            "actions": actions.reshape(-1),
            "logprobs": logprobs.reshape(-1),
            "advantages": advantages.reshape(-1),
            "returns": returns.reshape(-1),
            "valid": valid.reshape(-1),
        }
        for _ in range(update_epochs):
            order = torch.randperm(batch_size)
            for lo in range(0, batch_size, minibatch_size):
                idx = order[lo : lo + minibatch_size]
                mask = flat["valid"][idx]
                count = mask.sum().clamp(min=1.0)
                _, new_logprob, entropy, new_value = agent.act(
                    {k: v[idx] for k, v in flat_obs.items()}, flat["actions"][idx]
                )
                adv = flat["advantages"][idx]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                ratio = (new_logprob - flat["logprobs"][idx]).exp()
                pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_coef, 1 + clip_coef))
                v_loss = 0.5 * (new_value - flat["returns"][idx]) ** 2
                loss = ((pg + vf_coef * v_loss - ent_coef * entropy) * mask).sum() / count
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm)
                optimizer.step()

        rate = float((rewards * valid).sum() / valid.sum().clamp(min=1.0))
        rates.append(rate)
        if verbose:
            print(f"update {update + 1}/{num_updates}  reward/step {rate:.3f}")

    envs.close()
    tail = rates[-max(1, num_updates // 4) :]
    return {
        "reward_rate": float(np.mean(tail)),
        "first_reward_rate": rates[0],
        "updates": float(num_updates),
        "sps": num_updates * batch_size / (time.perf_counter() - start),
    }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-timesteps", type=int, default=30_000)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=32)
    parser.add_argument("--fusion", default="concat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cue", default="text", choices=("image", "text", "audio"))
    args = parser.parse_args()
    result = train(
        args.total_timesteps,
        num_envs=args.num_envs,
        num_steps=args.num_steps,
        fusion=args.fusion,
        seed=args.seed,
        make_envs=lambda n, seed: make_probe_vec_env(n, seed, args.cue),
        verbose=True,
    )
    print({k: round(v, 3) for k, v in result.items()})


if __name__ == "__main__":
    main()
