"""Gymnasium faces of a :class:`~envs.core.game.BatchedGame`.

:class:`GameEnv` is the single environment (a game of one world) and
:class:`GameVectorEnv` the natively batched vector environment; both drive the
same game code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from numpy.typing import NDArray

from envs.core.game import BatchedGame, Obs

_KEY_HIGH = np.uint64(2**63)


def draw_key(rng: np.random.Generator) -> np.uint64:
    """One episode key from a world's generator."""
    return np.uint64(rng.integers(0, _KEY_HIGH, dtype=np.uint64))


def caption_frame(frame: NDArray[np.uint8], caption: str, scale: int = 4) -> NDArray[np.uint8]:
    """Upscale a frame and write the instruction under it (what ``render()`` shows)."""
    from PIL import Image, ImageDraw

    big = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
    h, w, _ = big.shape
    canvas = Image.new("RGB", (w, h + 24), (0, 0, 0))
    canvas.paste(Image.fromarray(big), (0, 0))
    ImageDraw.Draw(canvas).text((4, h + 6), caption, fill=(255, 255, 255))
    return np.asarray(canvas, dtype=np.uint8)


class GameEnv(gym.Env[dict[str, NDArray[Any]], np.int64]):
    """A single env: the ``n = 1`` view of a batched game.

    Subclasses set ``game_class``; keyword arguments go to the game.

    Conventions (Gymnasium's, and what SB3 and RL Zoo read):

    * ``info`` has ``instruction`` (str), ``success`` and ``is_success`` (bool, the
      same value: True on the step that reaches the goal, so at an episode's end it
      says whether the episode succeeded; SB3's ``Monitor(info_keywords=("is_success",))``
      and ``EvalCallback`` read it).
    * ``step()`` after the episode terminated or was truncated raises
      :class:`gymnasium.error.ResetNeeded`: call ``reset()``; the single env never
      resets itself (the vector env does).
    * ``render()`` returns None unless a ``render_mode`` was given.
    * ``spec.max_episode_steps`` (set when made by ``gym.make``) is the game's own
      limit for the arguments it was made with: the game truncates itself, so no
      ``TimeLimit`` is registered.
    """

    game_class: ClassVar[type[BatchedGame]]
    metadata: dict[str, Any] = {"render_modes": ["rgb_array", "human"], "render_fps": 8}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode={render_mode!r} is not supported; use one of "
                f"{self.metadata['render_modes']} or None."
            )
        self.game = self.game_class(1, **kwargs)
        self.observation_space = self.game.observation_space
        self.action_space = self.game.action_space
        self.render_mode = render_mode
        self._idx = np.zeros(1, dtype=np.intp)
        self._window: Any = None
        #: None before the first reset, then whether the episode has ended.
        self._ended: bool | None = None
        self._spec: EnvSpec | None = None

    @property
    def spec(self) -> EnvSpec | None:
        """How ``gym.make`` made this env; ``max_episode_steps`` is the game's own limit."""
        return self._spec

    @spec.setter
    def spec(self, value: EnvSpec | None) -> None:
        # The limit depends on the game's arguments (2 * grid_size**2 by default), so it
        # is filled in per env rather than registered (a registered limit would also
        # make gym.make add a TimeLimit that cuts longer configurations short).
        self._spec = (
            None
            if value is None
            else dataclasses.replace(value, max_episode_steps=self.game.max_steps)
        )

    @property
    def vocabulary(self) -> Any:
        """The instruction vocabulary (None for games without text)."""
        return self.game.vocabulary

    def _obs(self, batch: Obs) -> dict[str, NDArray[Any]]:
        return {k: v[0] for k, v in batch.items()}

    def _info(self) -> dict[str, Any]:
        success = bool(self.game.success[0])
        return {
            "instruction": str(self.game.instruction[0]),
            "success": success,
            "is_success": success,
        }

    def _name(self) -> str:
        return self.spec.id if self.spec is not None else type(self).__name__

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        """Start a new episode; ``seed`` reseeds ``np_random`` as Gymnasium does."""
        super().reset(seed=seed)
        self.game.check_options(options)
        self.game.reset_worlds(self._idx, np.array([draw_key(self.np_random)], dtype=np.uint64))
        self._ended = False
        if self.render_mode == "human":
            self.render()
        return self._obs(self.game.observe()), self._info()

    def step(
        self, action: Any
    ) -> tuple[dict[str, NDArray[Any]], SupportsFloat, bool, bool, dict[str, Any]]:
        """Take one action (an int in the action space).

        Raises:
            gymnasium.error.ResetNeeded: Before the first ``reset()``, or once the
                episode has terminated or been truncated (stepping on would replay
                the last transition, and pay its reward again).
        """
        if self._ended is not False:
            self._reset_needed()
        if type(action) is int and 0 <= action < len(self.game.action_names):
            actions = np.array([action], dtype=np.int64)  # the common case, checked cheaply
        elif isinstance(action, bool | str) or np.ndim(action) != 0:
            raise ValueError(
                f"action must be a single integer in [0, {len(self.game.action_names) - 1}] "
                f"({', '.join(self.game.action_names)}), got {action!r}."
            )
        else:
            actions = self.game.check_actions(np.asarray([action]))
        reward, terminated, truncated = self.game.step(actions)
        self._ended = bool(terminated[0] or truncated[0])
        if self.render_mode == "human":
            self.render()
        return (
            self._obs(self.game.observe()),
            float(reward[0]),
            bool(terminated[0]),
            bool(truncated[0]),
            self._info(),
        )

    def _reset_needed(self) -> None:
        if self._ended is None:
            raise gym.error.ResetNeeded(f"{self._name()}: call reset() before the first step().")
        raise gym.error.ResetNeeded(
            f"{self._name()}: step() called after the episode ended (terminated or truncated); "
            "call reset() to start a new episode (only the vector env resets by itself)."
        )

    def expert_action(self) -> int:
        """The oracle's action in the current state."""
        return int(self.game.expert_actions()[0])

    # Gymnasium types render() with its unbound RenderFrame TypeVar, which no concrete
    # frame type matches.
    def render(self) -> NDArray[np.uint8] | None:  # type: ignore[override]
        """The frame with the instruction under it (``rgb_array``), or show it (``human``).

        Returns None when the env was made without a ``render_mode`` (Gymnasium's convention).
        """
        if self.render_mode is None:
            return None
        frame = caption_frame(self.game.frames()[0], str(self.game.instruction[0]))
        if self.render_mode == "human":
            from envs.play import show_frame

            self._window = show_frame(frame, self._window, self.metadata["render_fps"])
            return None
        return frame

    def close(self) -> None:
        """Close the human render window, if any."""
        if self._window is not None:
            from envs.play import close_window

            close_window()
            self._window = None


class GameVectorEnv(VectorEnv[dict[str, NDArray[Any]], NDArray[np.int64], NDArray[Any]]):
    """``num_envs`` worlds stepped together in numpy.

    Args:
        num_envs: Number of worlds.
        autoreset_mode: ``"next_step"`` (Gymnasium's default: the step after an
            episode ends resets that world and ignores its action) or
            ``"same_step"`` (the world resets at once; the last observation and
            info are in ``info["final_obs"]`` / ``info["final_info"]``).
        render_mode: ``"rgb_array"`` to get every world's frame from ``render()``.
        **kwargs: Game arguments, as for the single env.

    Slot ``i`` seeded with ``seed + i`` behaves exactly as the single env reset
    with that seed (and then reset without a seed after each episode).

    Infos are Gymnasium's dict of arrays: ``instruction``, ``success`` and
    ``is_success`` (the same bools, one per world), each with its ``_key`` mask.
    """

    game_class: ClassVar[type[BatchedGame]]
    metadata: dict[str, Any] = {
        "render_modes": ["rgb_array"],
        "render_fps": 8,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        modes = {"next_step": AutoresetMode.NEXT_STEP, "same_step": AutoresetMode.SAME_STEP}
        aliases = {m.value: m for m in modes.values()}  # "NextStep", "SameStep"
        mode: AutoresetMode | None
        if isinstance(autoreset_mode, AutoresetMode):
            mode = autoreset_mode
        else:
            mode = modes.get(autoreset_mode) or aliases.get(autoreset_mode)
        if mode not in modes.values():
            raise ValueError(
                f"autoreset_mode={autoreset_mode!r} is not supported; use one of {sorted(modes)}."
            )
        if render_mode not in (None, "rgb_array"):
            raise ValueError(
                f"render_mode={render_mode!r} is not supported; use 'rgb_array' or None."
            )
        self.game = self.game_class(num_envs, **kwargs)
        self.num_envs = self.game.num_worlds
        self.autoreset_mode = mode
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
        self.render_mode = render_mode
        self.single_observation_space = self.game.observation_space
        self.single_action_space = self.game.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._all = np.arange(self.num_envs)
        self._rngs: list[np.random.Generator] = []
        self._needs_reset = np.zeros(self.num_envs, dtype=bool)

    @property
    def vocabulary(self) -> Any:
        """The instruction vocabulary (None for games without text)."""
        return self.game.vocabulary

    def _reset_worlds(self, idx: NDArray[np.intp]) -> None:
        keys = np.array([draw_key(self._rngs[i]) for i in idx], dtype=np.uint64)
        self.game.reset_worlds(idx, keys)

    def restart(self, idx: NDArray[np.intp], obs: dict[str, NDArray[Any]]) -> None:
        """Start new episodes in worlds ``idx`` and write their first observations into ``obs``."""
        self._reset_worlds(idx)
        for k, v in self.game.observe(idx).items():
            obs[k][idx] = v

    def _infos(self) -> dict[str, Any]:
        ones = np.ones(self.num_envs, dtype=bool)
        success = self.game.success.copy()
        return {
            "instruction": self.game.instruction.copy(),
            "_instruction": ones,
            "success": success,
            "_success": ones.copy(),
            "is_success": success.copy(),
            "_is_success": ones.copy(),
        }

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        """Reset every world. An int seed gives slot ``i`` the seed ``seed + i``."""
        self.game.check_options(options)
        if seed is None or isinstance(seed, int | np.integer):
            seeds: list[int | None] = (
                [None] * self.num_envs
                if seed is None
                else [int(seed) + i for i in range(self.num_envs)]
            )
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(
                    f"seed list must have num_envs={self.num_envs} entries, got {len(seeds)}."
                )
        if seeds[0] is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seeds[0])
        if len(self._rngs) != self.num_envs:
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        else:  # unseeded slots carry on with their generators, as Gymnasium's do
            self._rngs = [
                seeding.np_random(s)[0] if s is not None else g
                for s, g in zip(seeds, self._rngs, strict=True)
            ]
        self._reset_worlds(self._all)
        self._needs_reset[:] = False
        return self.game.observe(), self._infos()

    def step(
        self, actions: Any
    ) -> tuple[
        dict[str, NDArray[Any]],
        NDArray[np.float32],
        NDArray[np.bool_],
        NDArray[np.bool_],
        dict[str, Any],
    ]:
        """Step every world (see ``autoreset_mode`` for what happens at episode ends)."""
        if not self._rngs:
            raise RuntimeError("Call reset() before step().")
        actions = self.game.check_actions(actions)
        reward, terminated, truncated = self.game.step(actions)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            restart = np.flatnonzero(self._needs_reset)
            if len(restart):
                self._reset_worlds(restart)
                reward[restart] = 0.0
                terminated[restart] = False
                truncated[restart] = False
            self._needs_reset = terminated | truncated
            return self.game.observe(), reward, terminated, truncated, self._infos()
        obs = self.game.observe()
        infos = self._infos()
        done = np.flatnonzero(terminated | truncated)
        if len(done):
            final_obs = np.full(self.num_envs, None, dtype=object)
            final_info = {k: v.copy() for k, v in infos.items()}
            for i in done:
                final_obs[i] = {k: v[i].copy() for k, v in obs.items()}
            mask = np.zeros(self.num_envs, dtype=bool)
            mask[done] = True
            self.restart(done, obs)
            infos = self._infos()
            infos.update(
                final_obs=final_obs, _final_obs=mask, final_info=final_info, _final_info=mask.copy()
            )
        return obs, reward, terminated, truncated, infos

    def expert_actions(self) -> NDArray[np.int64]:
        """One oracle action per world."""
        return self.game.expert_actions()

    # As GameEnv.render: Gymnasium's return type is its unbound RenderFrame TypeVar.
    def render(self) -> tuple[NDArray[np.uint8], ...] | None:  # type: ignore[override]
        """Every world's frame (``rgb_array``)."""
        if self.render_mode != "rgb_array":
            return None
        return tuple(self.game.frames())
