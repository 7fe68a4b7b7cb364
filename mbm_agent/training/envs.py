"""Env factories: one env ready for the encoder, the training VecEnv, the evaluation vector env."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor

import envs
from envs.core.text import Vocabulary
from envs.sb3 import SB3VecEnv
from mbm_agent.sb3.vec_env import KeepChannelsLast
from mbm_agent.training.config import ConfigError, TrainConfig
from mbm_agent.training.wrappers import TokenizeMission, make_minigrid_env


class SuccessInfo(gym.Wrapper[Any, Any, Any, Any]):
    """Adds ``is_success`` to the info at episode end for envs that do not report it.

    Uses ``info["success"]`` when present, else "the episode paid a positive reward"
    (the MiniGrid / BabyAI convention).
    """

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """Step and mark success at episode end."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            info = dict(info)
            info.setdefault("is_success", bool(info.get("success", float(reward) > 0)))
        return obs, reward, terminated, truncated, info


def is_our_game(env_id: str) -> bool:
    """Whether ``env_id`` is one of the games in ``envs``."""
    return env_id in envs.GAMES


def make_single_env(
    env_id: str,
    env_kwargs: dict[str, Any],
    vocabulary: Vocabulary | None = None,
    render_mode: str | None = None,
) -> tuple[gym.Env[Any, Any], Vocabulary | None]:
    """One env ready for the encoder: MiniGrid/BabyAI missions tokenised, success reported."""
    kwargs = dict(env_kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if is_our_game(env_id):
        env = gym.make(env_id, **kwargs)
        return env, env.unwrapped.vocabulary  # type: ignore[attr-defined]
    if env_id.startswith(("MiniGrid-", "BabyAI-")):
        try:
            env = make_minigrid_env(env_id, vocabulary, **kwargs)
        except gym.error.Error as exc:
            raise ConfigError(f"Unknown env id {env_id!r}: {exc}") from exc
    else:
        try:
            env = gym.make(env_id, **kwargs)
        except gym.error.Error as exc:
            raise ConfigError(
                f"Unknown env id {env_id!r}: {exc}. Our games are: {', '.join(envs.ENV_IDS)}."
            ) from exc
        if not isinstance(env.observation_space, gym.spaces.Dict):
            raise ConfigError(
                f"{env_id} has a {type(env.observation_space).__name__} observation space; mbm-agent trains on Dict-observation envs."
            )
        if any(isinstance(s, gym.spaces.Text) for s in env.observation_space.spaces.values()):
            env = TokenizeMission(env, vocabulary)
    vocab = None
    layer: Any = env
    while layer is not None:
        if isinstance(layer, TokenizeMission):
            vocab = layer.vocabulary
            break
        layer = getattr(layer, "env", None)
    return SuccessInfo(env), vocab


def make_train_env(cfg: TrainConfig, seed: int) -> tuple[VecEnv, Vocabulary | None]:
    """The training ``VecEnv``: our native batched env for our games, ``DummyVecEnv`` otherwise."""
    if is_our_game(cfg.env_id):
        try:
            venv: VecEnv = SB3VecEnv(cfg.env_id, cfg.n_envs, **cfg.env_kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"env_kwargs: {exc}") from exc
        vocab = venv.venv.vocabulary  # type: ignore[attr-defined]
    else:
        _, vocab = make_single_env(cfg.env_id, cfg.env_kwargs)
        venv = DummyVecEnv(
            [
                lambda: make_single_env(cfg.env_id, cfg.env_kwargs, vocab)[0]
                for _ in range(cfg.n_envs)
            ]
        )
    venv.seed(seed)
    monitored = VecMonitor(venv, info_keywords=("is_success",))
    if cfg.extractor == "sb3":  # SB3's own pipeline: it transposes frames for NatureCNN
        return monitored, vocab
    # Our extractor reads channel-last frames: spare SB3's per-step transpose copy.
    return KeepChannelsLast(monitored), vocab


def make_eval_env(
    spec_env_id: str, env_kwargs: dict[str, Any], n: int, vocabulary: Vocabulary | None
) -> gym.vector.VectorEnv[Any, Any, Any]:
    """A Gymnasium vector env for evaluation (same-step autoreset)."""
    if is_our_game(spec_env_id):
        return envs.make_vec(spec_env_id, n, autoreset_mode="same_step", **env_kwargs)
    return gym.vector.SyncVectorEnv(
        [lambda: make_single_env(spec_env_id, env_kwargs, vocabulary)[0] for _ in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
