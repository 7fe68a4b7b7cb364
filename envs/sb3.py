"""Stable-Baselines3 ``VecEnv`` adapter over a natively batched game.

SB3 expects ``step_wait`` to return a list of info dicts and to reset finished
worlds itself, putting the last observation in ``info["terminal_observation"]``.
This adapter steps the batched game directly: one numpy call per step for all
worlds, Python only for the (few) worlds that just finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from envs.core.env import GameVectorEnv


class SB3VecEnv(VecEnv):
    """Present a :class:`~envs.core.env.GameVectorEnv` (or a game id) to SB3.

    Args:
        env: A game id such as ``"mbm/SoundMaze-v1"`` or a built vector env.
        num_envs: Number of worlds when ``env`` is an id.
        **kwargs: Game arguments when ``env`` is an id.

    Infos carry ``is_success`` and ``TimeLimit.truncated`` at episode ends, so
    SB3's ``VecMonitor(info_keywords=("is_success",))`` and ``EvalCallback`` work.
    """

    def __init__(
        self, env: str | GameVectorEnv, num_envs: int | None = None, **kwargs: Any
    ) -> None:
        if isinstance(env, str):
            import envs

            env = envs.make_vec(env, num_envs if num_envs is not None else 1, **kwargs)
        elif num_envs is not None or kwargs:
            raise TypeError(
                "num_envs and game arguments are only accepted with an env id, not a built env."
            )
        self.venv: GameVectorEnv = env
        self.game = env.game
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self.render_mode = env.render_mode
        self._actions: NDArray[np.int64] | None = None
        self._started = False

    def reset(self) -> VecEnvObs:
        """Reset all worlds, with the seeds given to :meth:`seed` if any."""
        obs, info = self.venv.reset(seed=list(self._seeds), options=self._options[0] or None)
        self._started = True
        self.reset_infos = [{"instruction": info["instruction"][i]} for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions for :meth:`step_wait`."""
        self._actions = self.game.check_actions(actions)

    def step_wait(self) -> VecEnvStepReturn:
        """Step all worlds; reset the finished ones in place."""
        if self._actions is None:
            raise RuntimeError("step_async() must be called before step_wait().")
        if not self._started:
            raise RuntimeError("Call reset() before step().")
        game = self.game
        reward, terminated, truncated = game.step(self._actions)
        self._actions = None
        obs = game.observe()
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        done_idx = np.flatnonzero(dones)
        if len(done_idx):
            for i in done_idx:
                infos[i] = {
                    "terminal_observation": {k: v[i].copy() for k, v in obs.items()},
                    "TimeLimit.truncated": bool(truncated[i]),
                    "is_success": bool(game.success[i]),
                }
            self.venv.restart(done_idx, obs)
        return obs, reward, dones, infos

    def expert_actions(self) -> NDArray[np.int64]:
        """One oracle action per world."""
        return self.game.expert_actions()

    def close(self) -> None:
        """Nothing to release: the game lives in this process."""

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Every world's RGB frame."""
        return list(self.game.frames())

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        return list(self._get_indices(indices))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """An attribute of the vector env, repeated per index (all worlds share it)."""
        value = getattr(self.venv, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute on the (shared) vector env."""
        setattr(self.venv, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Call a method of the shared vector env once per index."""
        method = getattr(self.venv, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """Worlds are never wrapped individually."""
        return [False for _ in self._indices(indices)]
