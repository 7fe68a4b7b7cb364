"""SoundMaze: read which sound to find, hear where it is, walk around walls to it."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from envs.core.audio import TIMBRE_NAMES, TIMBRES
from envs.core.env import GameEnv, GameVectorEnv
from envs.core.game import Obs, check_float_arg
from envs.core.grid import border_walls
from envs.core.navigation import SPEAKER_TILE, NavigationGame
from envs.core.text import instruction_table

TEMPLATES = (
    "go to the one that {verb}",
    "find the thing that {verb}",
    "walk to the object that {verb}",
    "which one {verb} go to it",
    "reach the one that {verb}",
)
MAX_LEN = 8


class SoundMazeGame(NavigationGame):
    """SoundMaze: go to the object whose sound the instruction names (text + image + audio).

    ## Description
    A text + image + audio game. Identical objects stand in a room broken up by
    wall segments; each object makes a different sound (distinct timbres: buzz,
    hum, chirp, ring, whistle, click). The instruction names the sound to find
    ("go to the one that buzzes"). The frame shows walls and objects but not
    which sound is whose; the stereo audio tells where each timbre comes from;
    only the text says which one is wanted, and the walls make the path matter.
    Walking into the named object pays; into another, the episode ends.

    ## Observation Space
    A ``Dict``:

    | key | space | meaning |
    |---|---|---|
    | `image` | `Box(0, 255, (H, W, 3), uint8)` | RGB frame of what the agent sees (see `view`): walls grey, the look-alike objects beige, agent a white triangle |
    | `text` | `Box(0, V - 1, (8,), int64)` | instruction token ids, 0 = padding |
    | `audio` | `Box(-13.82, 12.0, (2, 32, 8), float32)` | stereo log-mel features (left, right) of the mix the agent hears |

    ## Action Space
    ``Discrete(3)``: 0 turn left, 1 turn right, 2 move forward.

    ## Rewards
    ``1 - 0.9 * t / T`` for reaching the named object at step ``t``, 0 otherwise.

    ## Starting State
    Random interior wall cells (``wall_density`` of the floor), agent and objects
    on random free cells, random heading, distinct random timbres, random noise
    level. v1 (``all_reachable=True``) draws a room again until the agent can reach
    every object, so the target is any of them alike wherever it stands: an agent
    that cannot read or hear does no better than chance. v0 only ensures the
    target is reachable (3.6% of rooms wall a distractor off), so the target is a
    little more often the nearest object: walking to the nearest object succeeds in
    35.7% of rooms, not 33.3%.

    ## Episode End
    Termination: the agent walks into any object. Truncation: after ``max_steps``
    steps (by default ``2 * grid_size**2``: 162 at the default ``grid_size`` 9). The game
    truncates itself, so ``gym.make`` adds no ``TimeLimit``; ``env.spec.max_episode_steps``
    holds the limit of the env's own arguments.
    ``info["success"]`` and ``info["is_success"]`` (the same bool; ``is_success`` is the
    key SB3's ``Monitor`` and RL Zoo read) are True on the winning step, so at the
    episode's end they say whether it succeeded; ``info["instruction"]`` holds the
    instruction as text. Once the episode has ended, ``step()`` raises
    ``gymnasium.error.ResetNeeded`` until ``reset()`` (the vector env resets finished
    worlds itself).

    ## Arguments
    ``grid_size`` (9), ``n_objects`` (3, in [2, 6]), ``frame_size`` (64),
    ``max_steps`` (default ``2 * grid_size**2``), ``wall_density`` (0.15),
    ``noise`` (``(0.05, 0.2)``), ``all_reachable`` (v1: True, v0: False; see
    *Starting State*),
    ``view`` (``"egocentric"``, the default: the agent's own ``view_size x view_size``
    window rotated to its heading, agent at the bottom centre facing up, cells outside
    the world drawn as wall; or ``"topdown"``: the whole room from above),
    ``view_size`` (7, odd, in [3, 15]; cells per side of the egocentric window: the agent
    sees ``view_size - 1`` cells ahead and ``view_size // 2`` to each side). ``frame_size``
    must be at least ``3 * max(grid_size, view_size)`` (``3 * grid_size`` top-down);
    ``render()`` always shows the top-down room.

    ## Version History
    * v1: every object reachable (``all_reachable=True``): v0's nearest object was the
      target more often than chance.
    * v0: initial version. Since added without changing any episode: ``info["is_success"]``,
      ``spec.max_episode_steps``, ``render()`` returns None without a ``render_mode``, and
      ``step()`` after the episode's end raises instead of replaying the last step.
    """

    modalities = ("image", "text", "audio")

    def __init__(
        self,
        num_worlds: int,
        *,
        grid_size: int = 9,
        n_objects: int = 3,
        frame_size: int | tuple[int, int] = 64,
        max_steps: int | None = None,
        view: str = "egocentric",
        view_size: int = 7,
        wall_density: float = 0.15,
        noise: tuple[float, float] = (0.05, 0.2),
        all_reachable: bool = False,
    ) -> None:
        super().__init__(
            num_worlds,
            grid_size=grid_size,
            n_objects=n_objects,
            frame_size=frame_size,
            max_steps=max_steps,
            view=view,
            view_size=view_size,
            all_reachable=all_reachable,
        )
        self.wall_density = check_float_arg("wall_density", wall_density, 0.0, 0.3)
        self._init_sound(noise)
        self.vocabulary, self._ids, self._texts = instruction_table(
            TEMPLATES, {"verb": tuple(TIMBRES.values())}, MAX_LEN
        )
        h, w = self.renderer.frame_size
        cfg = self.audio_cfg
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (h, w, 3), np.uint8),
                "text": spaces.Box(0, len(self.vocabulary) - 1, (MAX_LEN,), np.int64),
                "audio": spaces.Box(cfg.low, cfg.high, (2, cfg.n_mels, cfg.n_frames), np.float32),
            }
        )
        self.text = np.zeros((self.num_worlds, MAX_LEN), dtype=np.int64)

    def _layout_walls(self, idx: NDArray[np.intp]) -> NDArray[np.bool_]:
        g = self.grid_size
        walls = border_walls(len(idx), g)
        walls[:, 1:-1, 1:-1] = (
            self.rand.uniform(idx, (g - 2) ** 2).reshape(-1, g - 2, g - 2) < self.wall_density
        )
        return walls

    def _assign(self, idx: NDArray[np.intp]) -> None:
        m, k = len(idx), self.n_objects
        timbre = self.rand.permutations(idx, len(TIMBRE_NAMES))[:, :k]
        u = self.rand.integers(idx, k * len(TEMPLATES), 2)
        target = u[:, 0] % k
        template = u[:, 1] % len(TEMPLATES)
        tt = timbre[np.arange(m), target]
        self.target[idx] = target
        self.obj_tile[idx] = SPEAKER_TILE
        self.src_id[idx] = timbre
        self.loudness[idx] = 1.0
        self._draw_noise_level(idx)
        self.text[idx] = self._ids[template, tt]
        self.instruction[idx] = self._texts[template, tt]

    def observe(self, idx: NDArray[np.intp] | None = None) -> Obs:
        """Image, instruction and stereo log-mel of worlds ``idx``."""
        sel = slice(None) if idx is None else idx
        return {"image": self._image(idx), "text": self.text[sel].copy(), "audio": self._audio(idx)}


class SoundMazeEnv(GameEnv):  # noqa: D101 - the card is the game docstring
    __doc__ = SoundMazeGame.__doc__
    game_class = SoundMazeGame


class SoundMazeVectorEnv(GameVectorEnv):  # noqa: D101 - the card is the game docstring
    __doc__ = SoundMazeGame.__doc__
    game_class = SoundMazeGame
