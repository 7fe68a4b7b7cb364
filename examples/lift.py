"""Lift: a small text + image game written on ``envs/core``, the example of docs/custom_envs.md.

A lift serves a few floors, each with a door of its own colour. The instruction
names a colour ("take me to the blue floor"); the frame shows the shaft, the
coloured doors and where the lift is. The agent moves the lift up and down and
opens the doors where it stops. Only the words say which floor is wanted, only
the frame says where the lift is (and, with ``shuffle=True``, where that floor is).

The game is written once, over ``n`` worlds in numpy (:class:`LiftGame`); the
single env and the natively batched vector env are its two Gymnasium faces::

    import gymnasium as gym
    import examples.lift  # registers Lift-v0

    env = gym.make("Lift-v0")
    vec = gym.make_vec("Lift-v0", num_envs=64, vectorization_mode="vector_entry_point")

and ``mbm-agent train examples.lift:Lift-v0`` trains on it (from the repository
root). ``python examples/lift.py`` plays a few episodes with the expert.
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from envs.core.env import GameEnv, GameVectorEnv
from envs.core.game import BatchedGame, Obs, check_int_arg, frame_size_arg
from envs.core.render import COLOUR_NAMES, COLOURS
from envs.core.text import Vocabulary

#: Door colours: the games' own (names and RGB, envs/core/render.py).
PALETTE = np.array(list(COLOURS.values()), dtype=np.uint8)
#: Ways of asking; ``{c}`` is the colour.
TEMPLATES = ("take me to the {c} floor", "the {c} door please", "{c} floor")
ACTIONS = ("down", "up", "open")
DOWN, UP, OPEN = range(3)


class LiftGame(BatchedGame):
    """Lift: take the passenger to the floor whose door has the colour they name.

    ## Description
    A lift serves ``n_floors`` floors, each with a door of a different colour
    (the first ``n_floors`` of six, bottom up; ``shuffle=True`` draws them anew
    each episode). The instruction names one of the colours; the agent moves the
    lift up or down, one floor a step, and opens the doors. Opening at the named
    floor wins; opening anywhere else ends the episode. The words alone do not say
    where the lift is, and the frame alone does not say which floor is wanted;
    with shuffled colours the frame is also the only place that says where the
    named floor is.

    ## Observation Space
    A ``Dict``:

    | key | space | meaning |
    |---|---|---|
    | `image` | `Box(0, 255, (H, W, 3), uint8)` | the shaft: one band per floor (floor 0 at the bottom), its door's colour on the right, the lift a white block on the left |
    | `text` | `Box(0, V - 1, (6,), int64)` | token ids of the instruction, 0 = padding |

    ## Action Space
    ``Discrete(3)``: 0 down, 1 up (both stop at the end of the shaft), 2 open the doors.

    ## Rewards
    ``1 - 0.9 t / T`` for opening at the named floor at step ``t`` of at most
    ``T = max_steps``, 0 otherwise.

    ## Starting State
    The named floor and the lift's floor are drawn uniformly (and, with
    ``shuffle=True``, the door colours).

    ## Episode End
    Termination: the doors open (``info["is_success"]`` says whether at the named
    floor). Truncation: after ``max_steps`` steps (``env.spec.max_episode_steps``).

    ## Arguments
    ``n_floors`` (4, in [2, 6]), ``shuffle`` (False), ``max_steps`` (default
    ``2 * n_floors``), ``frame_size`` (32).

    ## Version History
    * v0: initial version.
    """

    modalities = ("image", "text")
    action_names: ClassVar[tuple[str, ...]] = ACTIONS

    def __init__(
        self,
        num_worlds: int,
        *,
        n_floors: int = 4,
        shuffle: bool = False,
        max_steps: int | None = None,
        frame_size: int | tuple[int, int] = 32,
    ) -> None:
        self.n_floors = check_int_arg("n_floors", n_floors, 2, len(COLOURS))
        if not isinstance(shuffle, bool | np.bool_):
            raise ValueError(f"shuffle must be a bool, got {shuffle!r}.")
        self.shuffle = bool(shuffle)
        super().__init__(num_worlds, 2 * self.n_floors if max_steps is None else max_steps)
        self.chance_level = 1.0 / self.n_floors
        h, w = frame_size_arg(frame_size, 2 * self.n_floors, " (two rows per floor at least)")
        self.frame_size = (h, w)
        texts = [t.format(c=c) for t in TEMPLATES for c in COLOUR_NAMES]
        self.vocabulary = Vocabulary.from_texts(texts)
        # Every (template, colour) instruction as token ids, looked up by index.
        self._texts = self.vocabulary.encode_batch(texts).reshape(
            len(TEMPLATES), len(COLOUR_NAMES), -1
        )
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (h, w, 3), np.uint8),
                "text": spaces.Box(
                    0, len(self.vocabulary) - 1, (self.vocabulary.max_len,), np.int64
                ),
            }
        )
        # Which floor each pixel row shows (floor 0 at the bottom) and which columns
        # are the lift's and the door's: the frame is a lookup, not a loop.
        self._row_floor = (self.n_floors - 1) - (np.arange(h) * self.n_floors // h)
        self._lift_cols = slice(w // 8, w // 2 - w // 8)
        self._door_cols = slice(w // 2 + w // 8, w - w // 8)
        n = self.num_worlds
        self.colours = np.zeros((n, self.n_floors), dtype=np.int64)  # colour id per floor
        self.target = np.zeros(n, dtype=np.int64)  # the named floor
        self.floor = np.zeros(n, dtype=np.int64)  # where the lift is
        self.template = np.zeros(n, dtype=np.int64)

    # -- the game's own steps: every one is array code over the worlds ``idx`` -----
    def _generate(self, idx: NDArray[np.intp]) -> None:
        if self.shuffle:
            self.colours[idx] = self.rand.permutations(idx, len(COLOUR_NAMES))[:, : self.n_floors]
        else:
            self.colours[idx] = np.arange(self.n_floors)
        u = self.rand.uniform(idx, 3)
        self.target[idx] = (u[:, 0] * self.n_floors).astype(np.int64)
        self.floor[idx] = (u[:, 1] * self.n_floors).astype(np.int64)
        self.template[idx] = (u[:, 2] * len(TEMPLATES)).astype(np.int64)
        named = self.colours[idx, self.target[idx]]
        self.instruction[idx] = [
            TEMPLATES[t].format(c=COLOUR_NAMES[c])
            for t, c in zip(self.template[idx], named, strict=True)
        ]

    def _transition(
        self, actions: NDArray[np.int64]
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        self.floor = np.clip(self.floor + (actions == UP) - (actions == DOWN), 0, self.n_floors - 1)
        opened = actions == OPEN
        self.success = opened & (self.floor == self.target)
        return self.success_reward(self.success), opened

    def observe(self, idx: NDArray[np.intp] | None = None) -> Obs:
        """The shaft's frame and the instruction's ids of worlds ``idx`` (all when None)."""
        sel = slice(None) if idx is None else idx
        colours, floor = self.colours[sel], self.floor[sel]
        m = len(floor)
        h, w = self.frame_size
        image = np.zeros((m, h, w, 3), dtype=np.uint8)
        image[:, :, self._door_cols] = PALETTE[colours[:, self._row_floor]][:, :, None, :]
        lift_rows = self._row_floor[None, :] == floor[:, None]  # (m, h)
        image[:, :, self._lift_cols] = np.where(lift_rows[:, :, None, None], 255, 0).astype(
            np.uint8
        )
        image[:, self._row_floor != np.roll(self._row_floor, 1)] = 90  # a line above each floor
        named = colours[np.arange(m), self.target[sel]]
        return {"image": image, "text": self._texts[self.template[sel], named]}

    def expert_actions(self) -> NDArray[np.int64]:
        """Towards the named floor, then open: the shortest solution."""
        return np.where(
            self.floor < self.target, UP, np.where(self.floor > self.target, DOWN, OPEN)
        ).astype(np.int64)


class LiftEnv(GameEnv):  # noqa: D101 - the card is the game docstring
    __doc__ = LiftGame.__doc__
    game_class = LiftGame


class LiftVectorEnv(GameVectorEnv):  # noqa: D101 - the card is the game docstring
    __doc__ = LiftGame.__doc__
    game_class = LiftGame


if "Lift-v0" not in gym.registry:
    gym.register(
        id="Lift-v0",
        entry_point=LiftEnv,  # the classes, not "module:Class": works as a script too
        vector_entry_point=LiftVectorEnv,
    )


if __name__ == "__main__":
    env = gym.make("Lift-v0")
    for seed in range(3):
        obs, info = env.reset(seed=seed)
        done, steps = False, 0
        while not done:
            action = env.unwrapped.expert_action()  # type: ignore[attr-defined]
            obs, reward, terminated, truncated, info = env.step(action)
            done, steps = terminated or truncated, steps + 1
        print(f"{info['instruction']!r}: success {info['is_success']} in {steps} steps")
