"""FindSound: several identical objects, one makes a sound; go to it."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from envs.core.audio import TIMBRE_NAMES
from envs.core.env import GameEnv, GameVectorEnv
from envs.core.game import Obs
from envs.core.navigation import SPEAKER_TILE, NavigationGame


class FindSoundGame(NavigationGame):
    """FindSound: go to the one object that makes a sound (audio + image).

    ## Description
    An audio + image game. Identical objects stand in a room; exactly one of them
    emits a sound (a random timbre each episode) over background noise. Only
    hearing tells which: the stereo level difference depends on the source's
    direction relative to the agent's heading, loudness falls with distance, and
    sources behind the agent are damped. Walking into the sounding object pays;
    walking into a silent one ends the episode. A deaf agent does no better than
    ``1 / n_objects``.

    ## Observation Space
    A ``Dict``:

    | key | space | meaning |
    |---|---|---|
    | `image` | `Box(0, 255, (H, W, 3), uint8)` | RGB frame of what the agent sees (see `view`): walls grey, the look-alike objects beige, agent a white triangle pointing where it faces |
    | `audio` | `Box(-13.82, 12.0, (2, 32, 8), float32)` | stereo log-mel features (left, right) of what the agent hears this step |

    ## Action Space
    ``Discrete(3)``: 0 turn left, 1 turn right, 2 move forward.

    ## Rewards
    ``1 - 0.9 * t / T`` for reaching the sounding object at step ``t``, 0 otherwise.

    ## Starting State
    Agent and objects on random distinct free cells, random heading, a random
    timbre and background noise level.

    ## Episode End
    Termination: the agent walks into any object. Truncation: after ``max_steps``
    steps (by default ``2 * grid_size**2``: 128 at the default ``grid_size`` 8). The game
    truncates itself, so ``gym.make`` adds no ``TimeLimit``; ``env.spec.max_episode_steps``
    holds the limit of the env's own arguments.
    ``info["success"]`` and ``info["is_success"]`` (the same bool; ``is_success`` is the
    key SB3's ``Monitor`` and RL Zoo read) are True on the winning step, so at the
    episode's end they say whether it succeeded; ``info["instruction"]`` holds the
    instruction as text. Once the episode has ended, ``step()`` raises
    ``gymnasium.error.ResetNeeded`` until ``reset()`` (the vector env resets finished
    worlds itself).

    ## Arguments
    ``grid_size`` (8), ``n_objects`` (3, in [2, 6]), ``frame_size`` (64),
    ``max_steps`` (default ``2 * grid_size**2``), ``noise`` (background noise
    level range, default ``(0.05, 0.2)``),
    ``view`` (``"egocentric"``, the default: the agent's own ``view_size x view_size``
    window rotated to its heading, agent at the bottom centre facing up, cells outside
    the world drawn as wall; or ``"topdown"``: the whole room from above),
    ``view_size`` (7, odd, in [3, 15]; cells per side of the egocentric window: the agent
    sees ``view_size - 1`` cells ahead and ``view_size // 2`` to each side). ``frame_size``
    must be at least ``3 * max(grid_size, view_size)`` (``3 * grid_size`` top-down);
    ``render()`` always shows the top-down room.

    ## Version History
    * v0: initial version. Since added without changing any episode: ``info["is_success"]``,
      ``spec.max_episode_steps``, ``render()`` returns None without a ``render_mode``, and
      ``step()`` after the episode's end raises instead of replaying the last step.
    """

    modalities = ("image", "audio")

    def __init__(
        self,
        num_worlds: int,
        *,
        grid_size: int = 8,
        n_objects: int = 3,
        frame_size: int | tuple[int, int] = 64,
        max_steps: int | None = None,
        view: str = "egocentric",
        view_size: int = 7,
        noise: tuple[float, float] = (0.05, 0.2),
    ) -> None:
        super().__init__(
            num_worlds,
            grid_size=grid_size,
            n_objects=n_objects,
            frame_size=frame_size,
            max_steps=max_steps,
            view=view,
            view_size=view_size,
        )
        self._init_sound(noise)
        h, w = self.renderer.frame_size
        cfg = self.audio_cfg
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (h, w, 3), np.uint8),
                "audio": spaces.Box(cfg.low, cfg.high, (2, cfg.n_mels, cfg.n_frames), np.float32),
            }
        )
        self.instruction[:] = "go to the object that makes a sound"

    def _assign(self, idx: NDArray[np.intp]) -> None:
        m = len(idx)
        u = self.rand.integers(idx, self.n_objects * len(TIMBRE_NAMES), 2)
        target = u[:, 0] % self.n_objects
        self.target[idx] = target
        self.obj_tile[idx] = SPEAKER_TILE
        self.src_id[idx] = (u[:, 1] % len(TIMBRE_NAMES))[:, None]
        loud = np.zeros((m, self.n_objects), dtype=np.float32)
        loud[np.arange(m), target] = 1.0
        self.loudness[idx] = loud
        self._draw_noise_level(idx)

    def observe(self, idx: NDArray[np.intp] | None = None) -> Obs:
        """Image and stereo log-mel of worlds ``idx``."""
        return {"image": self._image(idx), "audio": self._audio(idx)}


class FindSoundEnv(GameEnv):  # noqa: D101 - the card is the game docstring
    __doc__ = FindSoundGame.__doc__
    game_class = FindSoundGame


class FindSoundVectorEnv(GameVectorEnv):  # noqa: D101 - the card is the game docstring
    __doc__ = FindSoundGame.__doc__
    game_class = FindSoundGame
