"""Multimodal Gymnasium games that need their agents to see, read and hear.

Importing this package registers every game with Gymnasium under
``mbm/<Game>-vN`` (every version: GoToObject and SoundMaze have a v1 that closes a
way to win without the sense their v0 asked for; the older ids stay so that earlier
results can be reproduced), each with an ``entry_point`` (single env) and a
``vector_entry_point`` (natively batched numpy vector env)::

    import gymnasium as gym
    import envs

    env = gym.make("mbm/GoToObject-v1")
    vec = gym.make_vec("mbm/SoundMaze-v1", num_envs=256, vectorization_mode="vector_entry_point")
"""

from __future__ import annotations

import re
from typing import Any, cast

import gymnasium as gym

from envs.core.env import GameEnv, GameVectorEnv
from envs.core.text import Vocabulary

GAMES: dict[str, str] = {
    "mbm/GoToObject-v1": "envs.games.goto_object:GoToObject",
    "mbm/GoToObject-v0": "envs.games.goto_object:GoToObject",
    "mbm/FindSound-v0": "envs.games.find_sound:FindSound",
    "mbm/SoundMaze-v1": "envs.games.sound_maze:SoundMaze",
    "mbm/SoundMaze-v0": "envs.games.sound_maze:SoundMaze",
    "mbm/ModalityProbe-v0": "envs.games.modality_probe:ModalityProbe",
}
ENV_IDS: tuple[str, ...] = tuple(GAMES)
#: The arguments a version registers over its game's own defaults (the games' Version
#: History says what each changed). A user's own arguments still win over these.
VERSION_KWARGS: dict[str, dict[str, Any]] = {
    "mbm/GoToObject-v1": {"object_set": "grid", "n_objects": 4, "all_reachable": True},
    "mbm/SoundMaze-v1": {"all_reachable": True},
}
#: Each game's newest version, the one to use; older versions stay to reproduce results.
LATEST: tuple[str, ...] = (
    "mbm/GoToObject-v1",
    "mbm/FindSound-v0",
    "mbm/SoundMaze-v1",
    "mbm/ModalityProbe-v0",
)


def _register() -> None:
    for env_id, target in GAMES.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=f"{target}Env",
            vector_entry_point=f"{target}VectorEnv",
            kwargs=dict(VERSION_KWARGS.get(env_id, {})),
        )


def game_name(env_id: str) -> str:
    """Short name of an env id for file and run names: ``mbm/GoToObject-v0`` -> ``GoToObject``.

    A ``module:`` prefix and a namespace are dropped (``pkg.mod:ns/Env-v1`` -> ``Env``)
    and any character other than letters, digits, ``_``, ``.`` and ``-`` becomes ``_``,
    so the name is a safe folder name.
    """
    name = env_id.split(":")[-1].split("/")[-1].split("-v")[0]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".")
    return name or "env"


def check_env_id(env_id: str) -> str:
    """Raise a helpful error for an unknown game id."""
    if env_id not in GAMES:
        raise gym.error.Error(f"Unknown game id {env_id!r}; the games are: {', '.join(ENV_IDS)}.")
    return env_id


def make(env_id: str, **kwargs: Any) -> GameEnv:
    """A single env of one of our games, unwrapped (no Gymnasium checker wrappers)."""
    return cast(GameEnv, gym.make(check_env_id(env_id), **kwargs).unwrapped)


def make_vec(env_id: str, num_envs: int, **kwargs: Any) -> GameVectorEnv:
    """The natively batched vector env of one of our games."""
    return cast(
        GameVectorEnv,
        gym.make_vec(
            check_env_id(env_id),
            num_envs=num_envs,
            vectorization_mode="vector_entry_point",
            **kwargs,
        ),
    )


_register()

__all__ = [
    "ENV_IDS",
    "GAMES",
    "LATEST",
    "VERSION_KWARGS",
    "GameEnv",
    "GameVectorEnv",
    "Vocabulary",
    "check_env_id",
    "make",
    "make_vec",
]
