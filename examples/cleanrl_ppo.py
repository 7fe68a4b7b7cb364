"""PPO in a hand-written, CleanRL-style loop around :class:`mbm_agent.MultimodalEncoder`.

The encoder is a plain ``torch.nn.Module`` fed the raw Dict observations of a
Gymnasium vector env (uint8 frames, int64 token ids, float spectrograms); no
Stable-Baselines3 involved in training. The environment is any of our natively
batched games (one numpy call steps every world, same-step autoreset), by default
``mbm/ModalityProbe-v0``: each one-step episode asks a question whose answer only
the cued sense carries. The policy is memoryless: encoder, then linear actor and
critic heads; no reward prediction, no memory, no curriculum.

Run from the repository root (with the package installed, ``pip install -e .``)::

    python examples/cleanrl_ppo.py --total-timesteps 8000 --cue audio --fusion film
    python examples/cleanrl_ppo.py --env-id mbm/FindSound-v0 --eval-every 50000

On the command line the hyperparameters and the encoder default to the game's
``mbm-agent train`` config (:func:`game_settings`: its PPO settings, its encoder);
flags override them. ``--eval-every`` reports the held-out success rate, greedy and
sampled, on :func:`mbm_agent.evaluation.eval_seeds` (the seeds ``mbm-agent eval``
uses), with the training clock stopped meanwhile.

``train()`` takes the same settings as arguments, so tests and
``benchmarks/time_to_solve.py`` call it directly. It handles both Gymnasium
autoreset modes (``next_step`` and ``same_step``) as declared in the vector env's
metadata.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from torch import Tensor, nn

import envs as games
from mbm_agent import EncoderConfig, MultimodalEncoder
from mbm_agent.evaluation import EVAL_SEED_BASE, EpisodeResults, eval_seeds, evaluate_episodes
from mbm_agent.training.config import linear_start, resolve_config

#: The game ``train()`` plays unless told otherwise, and its arguments there.
PROBE_ID = "mbm/ModalityProbe-v0"
PROBE_KWARGS: dict[str, Any] = {"cue": "text"}


def make_game_vec_env(
    env_id: str,
    num_envs: int,
    seed: int = 0,
    autoreset_mode: str = "same_step",
    **env_kwargs: Any,
) -> gym.vector.VectorEnv:
    """One of our games, natively batched over ``num_envs`` worlds, reset with ``seed``."""
    venv = games.make_vec(env_id, num_envs, autoreset_mode=autoreset_mode, **env_kwargs)
    venv.reset(seed=seed)
    return venv


def make_probe_vec_env(num_envs: int, seed: int = 0, cue: str = "text") -> gym.vector.VectorEnv:
    """Our natively batched ModalityProbe (answer carried by ``cue``), same-step autoreset."""
    return make_game_vec_env(PROBE_ID, num_envs, seed, cue=cue)


def _start(value: Any) -> float:
    """A hyperparameter's value, or the start of RL Zoo's ``lin_<start>`` schedule.

    This loop anneals its learning rate to 0 anyway; its clip stays at the start.
    """
    start = linear_start(value)
    return float(value) if start is None else start


def game_settings(env_id: str) -> dict[str, Any]:
    """``train()`` arguments matching what ``mbm-agent train ENV_ID`` uses by default.

    The game's PPO hyperparameters (``mbm_agent/configs/``: worlds, rollout length,
    minibatch size, epochs, learning rate, discount, GAE, clip, entropy and value
    weights, gradient clip; SB3's defaults where the config sets none) and its
    encoder. What our trainer adds on top (reward prediction, memory, curriculum,
    the MLP before the heads) is left out: this is plain PPO with our encoder.
    """
    cfg = resolve_config(env_id)
    if cfg.algo != "ppo":
        raise ValueError(f"{env_id} trains with {cfg.algo} by default; this example is PPO only.")
    hp = cfg.algo_kwargs
    num_steps = int(hp.get("n_steps", 2048))
    batch = cfg.n_envs * num_steps
    return {
        "num_envs": cfg.n_envs,
        "num_steps": num_steps,
        "num_minibatches": max(1, batch // int(hp.get("batch_size", 64))),
        "update_epochs": int(hp.get("n_epochs", 10)),
        "learning_rate": _start(hp.get("learning_rate", 3e-4)),
        "gamma": float(hp.get("gamma", 0.99)),
        "gae_lambda": float(hp.get("gae_lambda", 0.95)),
        "clip_coef": _start(hp.get("clip_range", 0.2)),
        "ent_coef": float(hp.get("ent_coef", 0.0)),
        "vf_coef": float(hp.get("vf_coef", 0.5)),
        "max_grad_norm": float(hp.get("max_grad_norm", 0.5)),
        "encoder": cfg.encoder_config(),
    }


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

    def policy(self, obs: dict[str, Tensor], deterministic: bool) -> Tensor:
        """Actions ``(B,)``: the most probable (greedy) or sampled from the policy."""
        logits = self.actor(self.encoder(obs))
        if deterministic:
            return logits.argmax(-1)
        return torch.distributions.Categorical(logits=logits).sample()


def _tensors(obs: Mapping[str, Any]) -> dict[str, Tensor]:
    return {k: torch.as_tensor(np.asarray(v)) for k, v in obs.items()}


def evaluate(
    agent: Agent,
    env_id: str,
    *,
    episodes: int,
    deterministic: bool,
    env_kwargs: Mapping[str, Any] | None = None,
    seed_base: int = EVAL_SEED_BASE,
    num_envs: int = 32,
) -> EpisodeResults:
    """Play ``episodes`` held-out episodes (seeds ``eval_seeds(episodes, seed_base)``).

    The same seeds and episode accounting as ``mbm-agent eval`` (one episode per
    seed, :func:`mbm_agent.evaluation.evaluate_episodes`); sampled actions come
    from torch's generator seeded with ``seed_base`` (and restored afterwards).
    """
    venv = make_game_vec_env(
        env_id, max(1, min(num_envs, episodes)), seed_base, **dict(env_kwargs or {})
    )

    def act(obs: dict[str, np.ndarray]) -> np.ndarray:
        return agent.policy(_tensors(obs), deterministic).numpy()

    was_training = agent.training
    agent.eval()  # no modality dropout while scored
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_base)
            return evaluate_episodes(
                act, venv, episodes=episodes, seeds=eval_seeds(episodes, seed_base)
            )
    finally:
        agent.train(was_training)
        venv.close()


class EvalPoint(NamedTuple):
    """Held-out success at one point of training.

    A named tuple, not a dataclass: the example then also works when loaded from its
    file without a ``sys.modules`` entry, as the tests and the benchmark load it.

    Attributes:
        steps: Environment steps trained so far.
        train_seconds: Wall-clock seconds of training so far (rollouts and
            updates; environment creation and evaluations excluded).
        greedy: Success rate with the most probable action.
        sampled: Success rate with actions sampled from the policy.
    """

    steps: int
    train_seconds: float
    greedy: float
    sampled: float


def train(
    total_timesteps: int = 30_000,
    *,
    num_envs: int = 8,
    num_steps: int = 32,
    fusion: str = "concat",
    encoder: EncoderConfig | None = None,
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
    env_id: str = PROBE_ID,
    env_kwargs: Mapping[str, Any] | None = None,
    make_envs: Callable[[int, int], gym.vector.VectorEnv] | None = None,
    eval_every: int = 0,
    eval_episodes: int = 100,
    on_eval: Callable[[EvalPoint], None] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """Train PPO and report how it went.

    Args:
        total_timesteps: Environment steps over all envs.
        num_envs: Parallel envs.
        num_steps: Rollout length per env and update.
        fusion: Fusion mode of the encoder (when ``encoder`` is not given).
        encoder: Encoder settings (e.g. a game's, :func:`game_settings`); wins over ``fusion``.
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
        env_id: The game trained on (and evaluated on).
        env_kwargs: The game's arguments (default: ``cue="text"`` for the probe, none else).
        make_envs: ``(num_envs, seed) -> VectorEnv`` with Dict observations, to train
            on something else than ``env_id`` (evaluation still plays ``env_id``).
        eval_every: Evaluate on held-out seeds, greedy and sampled, after the first
            update at or past each multiple of this many steps, and after the last
            one (0: never).
        eval_episodes: Episodes per evaluation and mode.
        on_eval: Called with each :class:`EvalPoint`.
        verbose: Print progress once per update.

    Returns:
        ``reward_rate`` (mean reward per real step over the last quarter of
        updates), ``first_reward_rate`` (same over the first update),
        ``updates``, ``train_seconds`` (evaluations excluded) and ``sps``
        (env steps per second of training); with ``eval_every``, also
        ``greedy_success`` and ``sampled_success`` of the last evaluation.
    """
    torch.manual_seed(seed)
    kwargs = dict(env_kwargs) if env_kwargs is not None else {}
    if env_kwargs is None and env_id == PROBE_ID:
        kwargs = dict(PROBE_KWARGS)
    if make_envs is None:

        def make_envs(n: int, s: int) -> gym.vector.VectorEnv:
            return make_game_vec_env(env_id, n, s, **kwargs)

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
    agent = Agent(obs_space, int(act_space.n), encoder or EncoderConfig(fusion=fusion))
    optimizer = torch.optim.Adam(agent.parameters(), lr=learning_rate, eps=1e-5)

    batch_size = num_envs * num_steps
    minibatch_size = max(1, batch_size // num_minibatches)
    num_updates = max(1, total_timesteps // batch_size)
    buffers = {
        k: torch.zeros(
            (num_steps, num_envs, *(s.shape or ())), dtype=torch.as_tensor(s.sample()).dtype
        )
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
    next_obs = _tensors(obs_np)
    next_done = torch.zeros(num_envs)
    prev_done = np.zeros(num_envs, dtype=bool)
    rates: list[float] = []
    last_eval: EvalPoint | None = None
    next_eval = eval_every
    eval_seconds = 0.0
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
            next_obs = _tensors(obs_np)
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

        steps_done = (update + 1) * batch_size
        if eval_every > 0 and (steps_done >= next_eval or update == num_updates - 1):
            next_eval = (steps_done // eval_every + 1) * eval_every
            paused = time.perf_counter()
            success = {
                mode: evaluate(
                    agent,
                    env_id,
                    episodes=eval_episodes,
                    deterministic=mode == "greedy",
                    env_kwargs=kwargs,
                ).success_rate
                for mode in ("greedy", "sampled")
            }
            last_eval = EvalPoint(
                steps_done, paused - start - eval_seconds, success["greedy"], success["sampled"]
            )
            eval_seconds += time.perf_counter() - paused
            if verbose:
                print(
                    f"step {steps_done}  held-out success greedy {last_eval.greedy:.3f}  "
                    f"sampled {last_eval.sampled:.3f}  ({last_eval.train_seconds:.0f} s training)"
                )
            if on_eval is not None:
                on_eval(last_eval)

    envs.close()
    train_seconds = time.perf_counter() - start - eval_seconds
    tail = rates[-max(1, num_updates // 4) :]
    result = {
        "reward_rate": float(np.mean(tail)),
        "first_reward_rate": rates[0],
        "updates": float(num_updates),
        "train_seconds": train_seconds,
        "sps": num_updates * batch_size / max(train_seconds, 1e-9),
    }
    if last_eval is not None:
        result["greedy_success"] = last_eval.greedy
        result["sampled_success"] = last_eval.sampled
    return result


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", default=PROBE_ID, choices=games.ENV_IDS)
    parser.add_argument(
        "--total-timesteps", type=int, help="default: the game's config (its steps)"
    )
    parser.add_argument("--num-envs", type=int, help="default: the game's config")
    parser.add_argument("--num-steps", type=int, help="default: the game's config")
    parser.add_argument("--fusion", help="default: the game's config")
    parser.add_argument("--learning-rate", type=float, help="default: the game's config")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cue",
        default="text",
        choices=("image", "text", "audio"),
        help=f"the sense that carries the answer ({PROBE_ID} only)",
    )
    parser.add_argument(
        "--eval-every", type=int, default=0, help="held-out evaluation every N steps (0: none)"
    )
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    settings = game_settings(args.env_id)
    for name in ("num_envs", "num_steps", "learning_rate"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.fusion is not None:
        settings["encoder"] = settings["encoder"].replace(fusion=args.fusion)
    total = args.total_timesteps or resolve_config(args.env_id).steps
    result = train(
        total,
        **settings,
        seed=args.seed,
        env_id=args.env_id,
        env_kwargs={"cue": args.cue} if args.env_id == PROBE_ID else {},
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        verbose=True,
    )
    print({k: round(v, 3) for k, v in result.items()})


if __name__ == "__main__":
    main()
