"""Helpers for the tests of policies with memory (a GRU core): build, train, save, play.

Imported by the agent, export, Keras-twin and viewer tests of memory policies (the
test folder is on ``sys.path`` under pytest's default import mode). Everything is
sized for a shared 2-core machine: a small GoToObject, a small encoder, 16 units
of memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from numpy.typing import NDArray
from stable_baselines3.common.policies import BasePolicy

import envs
from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.sb3 import MultimodalActorCriticPolicy, policy_kwargs_for
from mbm_agent.sb3.algorithms import policy_class
from mbm_agent.training.agent import policy_spec, save_policy

GAME = "mbm/GoToObject-v0"
#: A small GoToObject: 5x5 room, 32-pixel frames, episodes of at most 50 steps.
GAME_KWARGS: dict[str, Any] = {"grid_size": 5, "frame_size": 32}
MEMORY = 16
ENCODER = EncoderConfig(features_dim=32, fusion="film")
POLICY_KWARGS: dict[str, Any] = {"net_arch": [32], "memory": MEMORY}


def game_spaces(
    env_kwargs: dict[str, Any] | None = None,
) -> tuple[spaces.Dict, spaces.Discrete, Any]:
    """Observation space, action space and vocabulary of the small game."""
    env = envs.make(GAME, **(GAME_KWARGS if env_kwargs is None else env_kwargs))
    out = (env.observation_space, env.action_space, env.unwrapped.vocabulary)
    env.close()
    return out  # type: ignore[return-value]


def memory_policy(
    seed: int = 0,
    policy_kwargs: dict[str, Any] | None = None,
    encoder: EncoderConfig = ENCODER,
    env_kwargs: dict[str, Any] | None = None,
    algo: str = "ppo",
) -> tuple[BasePolicy, dict[str, Any], Any]:
    """A random-init policy with memory on the small game, its ``model.json`` and vocabulary.

    ``algo="ppo"`` gives a :class:`MultimodalActorCriticPolicy`; another ``algo`` (e.g.
    ``"dqn"``) gives that algorithm's SB3 policy with ``policy_kwargs``.
    """
    obs_space, act_space, vocab = game_spaces(env_kwargs)
    kwargs = POLICY_KWARGS if policy_kwargs is None else policy_kwargs
    torch.manual_seed(seed)
    policy = policy_class(algo)(
        obs_space, act_space, lambda _: 0.0, **policy_kwargs_for(encoder, {}, kwargs)
    )
    policy.set_training_mode(False)
    spec = policy_spec(
        policy,
        algo=algo,
        env_id=GAME,
        env_kwargs=GAME_KWARGS if env_kwargs is None else env_kwargs,
        encoder=encoder,
        modalities={},
        policy_kwargs=kwargs,
        vocabulary=vocab,
    )
    return policy, spec, vocab


def make_memory_matter(policy: BasePolicy, seed: int = 1) -> None:
    """Redraw the memory core and heads at a larger scale, so the state changes greedy actions.

    SB3's initialisation (action logits scaled by 0.01) and a few hundred PPO steps
    both leave a policy whose greedy action is the same with or without its state;
    a test of carrying the state needs one where it differs.
    """
    assert isinstance(policy, MultimodalActorCriticPolicy), type(policy)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (policy.memory_core, policy.mlp_extractor, policy.action_net):
            for param in module.parameters():
                scale = 2.0 / param.shape[1] ** 0.5 if param.dim() == 2 else 0.5
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


def save_memory_run(run_dir: Path, seed: int = 0) -> Path:
    """Save a memory policy whose state matters (:func:`make_memory_matter`) as ``run_dir/best``."""
    policy, spec, vocab = memory_policy(seed)
    make_memory_matter(policy, seed + 1)
    save_policy(policy, spec, run_dir / "best", vocab)
    return run_dir


def play(
    act: Callable[[dict[str, NDArray[Any]], NDArray[np.float32]], int],
    steps: int = 100,
    seed: int = 7,
) -> tuple[dict[str, NDArray[Any]], NDArray[np.float32]]:
    """``steps`` observations of the small game and their ``episode_start`` flags.

    ``act(obs, episode_start)`` (a policy carrying its state) picks each action from
    a batch of one; an episode that ends restarts, with its first step flagged.

    Returns:
        The observations stacked ``(steps, *shape)`` per key and ``(steps,)`` flags.
    """
    env = envs.make(GAME, **GAME_KWARGS)
    obs, _ = env.reset(seed=seed)
    start = np.ones(1, dtype=np.float32)
    seen: list[dict[str, NDArray[Any]]] = []
    starts: list[float] = []
    for _ in range(steps):
        batch = {k: np.asarray(v)[None] for k, v in obs.items()}
        seen.append(batch)
        starts.append(float(start[0]))
        obs, _, terminated, truncated, _ = env.step(act(batch, start))
        start = np.zeros(1, dtype=np.float32)
        if terminated or truncated:
            obs, _ = env.reset()
            start = np.ones(1, dtype=np.float32)
    env.close()
    stacked = {k: np.concatenate([o[k] for o in seen]) for k in seen[0]}
    return stacked, np.asarray(starts, dtype=np.float32)
