"""GoToObject: read the instruction, find the named object among look-alikes."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from envs.core.env import GameEnv, GameVectorEnv
from envs.core.game import Obs
from envs.core.navigation import NavigationGame, object_tile
from envs.core.render import COLOUR_NAMES, SHAPES
from envs.core.text import instruction_table

TEMPLATES = (
    "go to the {colour} {shape}",
    "find the {colour} {shape}",
    "walk to the {colour} {shape}",
    "get the {colour} {shape}",
    "the {colour} {shape} please go there",
    "please reach the {colour} {shape}",
)
MAX_LEN = 8
#: How the objects' looks are drawn (argument ``object_set``), by game version.
OBJECT_SETS = ("around-target", "grid")


class GoToObjectGame(NavigationGame):
    """GoToObject: go to the object the instruction names (text + image).

    ## Description
    A text + image game. Several objects that differ in colour and shape lie in a
    room; the instruction names one of them ("go to the red key", in six
    phrasings). Walking into the named object pays; walking into any other ends
    the episode with nothing.

    In v1 (``object_set="grid"``) the objects are ``n_objects`` cells of a table of
    two colours by ``ceil(n_objects / 2)`` shapes (or the other way round), and the
    target is any of them alike: the room does not say which one is named, so an
    agent that cannot read does no better than chance (``1 / n_objects``; 25% at
    v1's 4 objects). At 4 objects every object shares its colour with one other and
    its shape with another (at 6, its two-valued attribute with two others), so
    neither word alone suffices.

    v0 (``object_set="around-target"``) draws the target first, then distractors
    that copy its colour or its shape. Both words matter there too, but the target
    is always the object whose colour and whose shape both recur among the others,
    so an agent that sees every object can pick it without reading (checked: 500
    of 500 rooms at 3 objects). Kept so that earlier results can be reproduced;
    use v1.

    ## Observation Space
    A ``Dict``:

    | key | space | meaning |
    |---|---|---|
    | `image` | `Box(0, 255, (H, W, 3), uint8)` | RGB frame of what the agent sees (see `view`): walls grey, objects coloured shapes, agent a white triangle pointing where it faces |
    | `text` | `Box(0, V - 1, (8,), int64)` | instruction token ids, 0 = padding; `env.unwrapped.vocabulary` decodes them |

    ## Action Space
    ``Discrete(3)``: 0 turn left, 1 turn right, 2 move forward.

    ## Rewards
    ``1 - 0.9 * t / T`` for reaching the target at step ``t`` (``T = max_steps``), 0 otherwise.

    ## Starting State
    Agent and objects on random distinct free cells, random heading. v1
    (``all_reachable=True``) draws a room again until the agent can reach every
    object around the others; v0 only ensures the target is reachable, so a
    distractor boxed into a corner by the others (0.4% of 8x8 rooms with 4 objects,
    5% of 6x6 ones) is never the target.

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
    ``grid_size`` (8, walls included), ``n_objects`` (v1: 4, v0: 3; in [2, 6]),
    ``object_set`` (v1: ``"grid"``, v0: ``"around-target"``; see above),
    ``all_reachable`` (v1: True, v0: False; see *Starting State*), ``frame_size``
    (64 or ``(H, W)``), ``max_steps`` (default ``2 * grid_size**2``),
    ``view`` (``"egocentric"``, the default: the agent's own ``view_size x view_size``
    window rotated to its heading, agent at the bottom centre facing up, cells outside
    the world drawn as wall; or ``"topdown"``: the whole room from above),
    ``view_size`` (7, odd, in [3, 15]; cells per side of the egocentric window: the agent
    sees ``view_size - 1`` cells ahead and ``view_size // 2`` to each side). ``frame_size``
    must be at least ``3 * max(grid_size, view_size)`` (``3 * grid_size`` top-down);
    ``render()`` always shows the top-down room.

    ## Version History
    * v1: the objects are a colour-by-shape table with the target drawn among them
      alike (``object_set="grid"``), 4 objects, every object reachable
      (``all_reachable=True``): v0's target could be told apart without reading.
    * v0: initial version. Since added without changing any episode: ``info["is_success"]``,
      ``spec.max_episode_steps``, ``render()`` returns None without a ``render_mode``, and
      ``step()`` after the episode's end raises instead of replaying the last step.
    """

    modalities = ("image", "text")

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
        object_set: str = "around-target",
        all_reachable: bool = False,
    ) -> None:
        if object_set not in OBJECT_SETS:
            raise ValueError(
                f"object_set must be one of {OBJECT_SETS} (v1: 'grid', v0: "
                f"'around-target'), got {object_set!r}."
            )
        self.object_set = object_set
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
        self.vocabulary, self._ids, self._texts = instruction_table(
            TEMPLATES, {"colour": COLOUR_NAMES, "shape": SHAPES}, MAX_LEN
        )
        h, w = self.renderer.frame_size
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (h, w, 3), np.uint8),
                "text": spaces.Box(0, len(self.vocabulary) - 1, (MAX_LEN,), np.int64),
            }
        )
        self.text = np.zeros((self.num_worlds, MAX_LEN), dtype=np.int64)
        self.obj_colour = np.zeros((self.num_worlds, self.n_objects), dtype=np.int64)
        self.obj_shape = np.zeros((self.num_worlds, self.n_objects), dtype=np.int64)

    def _assign(self, idx: NDArray[np.intp]) -> None:
        if self.object_set == "grid":
            colour, shape, target, template = self._draw_grid(idx)
        else:
            colour, shape, target, template = self._draw_around_target(idx)
        m = len(idx)
        tc, ts = colour[np.arange(m), target], shape[np.arange(m), target]
        self.obj_colour[idx], self.obj_shape[idx] = colour, shape
        self.obj_tile[idx] = object_tile(colour, shape)
        self.target[idx] = target
        self.text[idx] = self._ids[template, tc, ts]
        self.instruction[idx] = self._texts[template, tc, ts]

    def _draw_grid(self, idx: NDArray[np.intp]) -> tuple[NDArray[np.int64], ...]:
        """v1: ``k`` cells of a 2 x ceil(k/2) colour-by-shape table; the target any of them."""
        m, k = len(idx), self.n_objects
        side = -(-k // 2)
        rows = np.arange(m)[:, None]
        colours = self.rand.permutations(idx, len(COLOUR_NAMES))
        shapes = self.rand.permutations(idx, len(SHAPES))
        cells = self.rand.permutations(idx, 2 * side)[:, :k]
        u = self.rand.integers(idx, 2 * k * len(TEMPLATES), 1)[:, 0]
        # Which attribute takes two values and which ceil(k/2): either, alike.
        two_colours = u % 2 == 0
        short, long_ = cells // side, cells % side
        colour = colours[rows, np.where(two_colours[:, None], short, long_)]
        shape = shapes[rows, np.where(two_colours[:, None], long_, short)]
        target = (u // 2) % k
        template = (u // (2 * k)) % len(TEMPLATES)
        return colour, shape, target, template

    def _draw_around_target(self, idx: NDArray[np.intp]) -> tuple[NDArray[np.int64], ...]:
        """v0: the target, then distractors sharing its colour or its shape."""
        m, k = len(idx), self.n_objects
        n_col, n_shp = len(COLOUR_NAMES), len(SHAPES)
        # Distinct (colour, shape) pairs; the first is the target. Half the
        # distractors copy the target's colour, half its shape, each with a
        # different other attribute, so neither word alone suffices.
        u = self.rand.integers(idx, n_col * n_shp, 4 + 2 * k)
        colour = np.zeros((m, k), dtype=np.int64)
        shape = np.zeros((m, k), dtype=np.int64)
        colour[:, 0], shape[:, 0] = u[:, 0] % n_col, u[:, 1] % n_shp
        rows = np.arange(m)[:, None]
        col_rank = self.rand.uniform(idx, n_col)
        col_rank[rows[:, 0], colour[:, 0]] = 2.0  # the target's colour sorts last
        shp_rank = self.rand.uniform(idx, n_shp)
        shp_rank[rows[:, 0], shape[:, 0]] = 2.0
        other_col = np.argsort(col_rank, axis=1)
        other_shp = np.argsort(shp_rank, axis=1)
        for j in range(1, k):
            if j % 2 == 1:  # same colour, another shape
                colour[:, j], shape[:, j] = colour[:, 0], other_shp[:, (j - 1) // 2]
            else:  # same shape, another colour
                colour[:, j], shape[:, j] = other_col[:, (j - 2) // 2], shape[:, 0]
        # Shuffle which slot (position) holds the target.
        order = self.rand.permutations(idx, k)
        colour, shape = colour[rows, order], shape[rows, order]
        target = np.argmin(order, axis=1)
        template = u[:, 2] % len(TEMPLATES)
        return colour, shape, target, template

    def observe(self, idx: NDArray[np.intp] | None = None) -> Obs:
        """Image and instruction of worlds ``idx``."""
        sel = slice(None) if idx is None else idx
        return {"image": self._image(idx), "text": self.text[sel].copy()}


class GoToObjectEnv(GameEnv):  # noqa: D101 - the card is the game docstring
    __doc__ = GoToObjectGame.__doc__
    game_class = GoToObjectGame


class GoToObjectVectorEnv(GameVectorEnv):  # noqa: D101 - the card is the game docstring
    __doc__ = GoToObjectGame.__doc__
    game_class = GoToObjectGame
