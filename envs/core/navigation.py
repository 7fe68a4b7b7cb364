"""Shared mechanics of the navigation games: walk to the right object.

Worlds are square grids with an outer wall. The agent turns left/right or
moves forward; walking into an object ends the episode, paying
``1 - 0.9 t / T`` when it is the target and nothing otherwise. Subclasses decide
the layout, how objects look, what the instruction says and what sounds play.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from envs.core.audio import GainTable, shared_bank
from envs.core.game import BatchedGame, Obs, check_int_arg, frame_size_arg, is_real
from envs.core.grid import (
    ACTION_NAMES,
    DIR_VEC,
    FORWARD,
    TURN_LEFT,
    TURN_RIGHT,
    UNREACHABLE,
    border_walls,
    distance_maps,
    navigation_expert,
    random_free_cells,
)
from envs.core.render import (
    COLOUR_NAMES,
    COLOURS,
    FLOOR,
    SHAPES,
    SPEAKER,
    WALL,
    EgocentricRenderer,
    GridRenderer,
    shape_mask,
    solid_tile,
    sprite_tile,
)

FLOOR_TILE, WALL_TILE = 0, 1
#: How the observed frame is drawn: the agent's rotated view, or the whole room from above.
VIEWS = ("egocentric", "topdown")
#: Tile id of the object every sound-emitting game draws (they all look alike).
SPEAKER_TILE = 2 + len(COLOUR_NAMES) * len(SHAPES)


def object_tile(
    colour: NDArray[np.int64] | int, shape: NDArray[np.int64] | int
) -> NDArray[np.int64]:
    """Tile id of a coloured shape."""
    return 2 + np.asarray(colour) * len(SHAPES) + np.asarray(shape)


def build_tiles(tile: int) -> NDArray[np.uint8]:
    """Floor, wall, every coloured shape, then the speaker."""
    tiles = [solid_tile(FLOOR, tile), solid_tile(WALL, tile)]
    for c in COLOUR_NAMES:
        for s in SHAPES:
            tiles.append(sprite_tile(shape_mask(s, tile), COLOURS[c], tile))
    tiles.append(sprite_tile(shape_mask("box", tile) | shape_mask("ball", tile), SPEAKER, tile))
    return np.stack(tiles)


class NavigationGame(BatchedGame):
    """Base of the grid navigation games (see module docstring)."""

    action_names: ClassVar[tuple[str, ...]] = ACTION_NAMES
    #: Smallest and largest grid side (walls included).
    grid_limits: ClassVar[tuple[int, int]] = (5, 32)
    object_limits: ClassVar[tuple[int, int]] = (2, 6)

    def __init__(
        self,
        num_worlds: int,
        *,
        grid_size: int,
        n_objects: int,
        frame_size: int | tuple[int, int],
        max_steps: int | None,
        view: str = "egocentric",
        view_size: int = 7,
        all_reachable: bool = False,
    ) -> None:
        g = check_int_arg("grid_size", grid_size, *self.grid_limits)
        k = check_int_arg("n_objects", n_objects, *self.object_limits)
        super().__init__(num_worlds, max_steps if max_steps is not None else 2 * g * g)
        if k + 1 > (g - 2) ** 2 // 2:
            raise ValueError(
                f"n_objects={k} does not fit a grid_size={g} world; use n_objects <= "
                f"{(g - 2) ** 2 // 2 - 1} or a larger grid_size."
            )
        self.grid_size = g
        self.n_objects = k
        self.chance_level = 1.0 / k
        if not isinstance(all_reachable, (bool, np.bool_)):
            raise ValueError(
                f"all_reachable must be True (v1) or False (v0), got {all_reachable!r}."
            )
        #: Redraw a room until the agent can reach every object (else only the target).
        self.reach_all_objects = bool(all_reachable)
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}.")
        self.view = view
        self.view_size = check_int_arg("view_size", view_size, 3, 15)
        if self.view_size % 2 == 0:
            raise ValueError(
                f"view_size must be odd, in [3, 15] (the agent sits in the middle column), got {view_size}."
            )
        # The top-down renderer (what render() shows) is built whatever the view.
        cells, what = (
            (g, f"grid_size={g}")
            if view == "topdown" or g >= self.view_size
            else (self.view_size, f"view_size={self.view_size}")
        )
        h, w = frame_size_arg(frame_size, 3 * cells, f" (3 per cell of the {what})")
        self.renderer = GridRenderer(g, (h, w), build_tiles(min(h, w) // g))
        self.ego = (
            EgocentricRenderer(
                self.view_size, (h, w), build_tiles(min(h, w) // self.view_size), WALL_TILE
            )
            if view == "egocentric"
            else None
        )
        n = self.num_worlds
        self.walls = border_walls(n, g)
        self.agent_pos = np.ones((n, 2), dtype=np.int64)
        self.heading = np.zeros(n, dtype=np.int64)
        self.obj_pos = np.zeros((n, k, 2), dtype=np.int64)
        self.obj_tile = np.full((n, k), SPEAKER_TILE, dtype=np.int64)
        self.target = np.zeros(n, dtype=np.int64)
        self.occupant = np.full((n, g, g), -1, dtype=np.int64)
        self.dist = np.zeros((n, g, g), dtype=np.int32)
        self.static = np.zeros((n, h, w, 3), dtype=np.uint8)
        self.tile_map = np.zeros((n, g, g), dtype=np.int64)
        #: The tile map framed by void cells, so the egocentric view never indexes outside it.
        pad = 2 * self.view_size if self.ego is not None else 0
        self.view_map = np.zeros((n, g + pad, g + pad), dtype=np.int64)

    # -- generation --------------------------------------------------------------
    def _layout_walls(self, idx: NDArray[np.intp]) -> NDArray[np.bool_]:
        """Wall maps for worlds ``idx``; an empty room by default."""
        return border_walls(len(idx), self.grid_size)

    @abstractmethod
    def _assign(self, idx: NDArray[np.intp]) -> None:
        """Pick target, object looks, instruction and sounds for worlds ``idx``."""

    def _generate(self, idx: NDArray[np.intp]) -> None:
        g, k = self.grid_size, self.n_objects
        pending = idx
        ar_k = np.arange(k)
        while len(pending):
            walls = self._layout_walls(pending)
            cells = random_free_cells(~walls, k + 1, self.rand.uniform(pending, g * g))
            self.walls[pending] = walls
            self.agent_pos[pending] = cells[:, 0]
            self.obj_pos[pending] = cells[:, 1:]
            self.heading[pending] = self.rand.integers(pending, 4, 1)[:, 0]
            self._assign(pending)
            occ = np.full((len(pending), g, g), -1, dtype=np.int64)
            rows = np.arange(len(pending))[:, None]
            occ[rows, cells[:, 1:, 0], cells[:, 1:, 1]] = ar_k[None, :]
            self.occupant[pending] = occ
            tgt = self.obj_pos[pending, self.target[pending]]
            blocked = walls | (occ >= 0)
            dist = distance_maps(blocked, tgt)
            self.dist[pending] = dist
            start = self.agent_pos[pending]
            reachable = dist[np.arange(len(pending)), start[:, 0], start[:, 1]] < UNREACHABLE
            if self.reach_all_objects:
                # Every object, not only the target: a walled-off distractor would make the
                # nearest object the target more often than 1 in k. One search from the
                # agent: an object can be walked into when a cell beside it can be reached.
                from_start = distance_maps(blocked, start)
                pos = self.obj_pos[pending]
                # (m, k, 4, 2), clipped: an object drawn on a border wall is redrawn anyway.
                beside = np.clip(pos[:, :, None, :] + DIR_VEC[None, None, :, :], 0, g - 1)
                steps = from_start[rows[:, :, None], beside[..., 0], beside[..., 1]]
                reachable &= (steps < UNREACHABLE).any(axis=2).all(axis=1)
            # Too few free cells makes random_free_cells pick walls: draw that world again.
            reachable &= ~walls[rows, cells[..., 0], cells[..., 1]].any(axis=1)
            done = pending[reachable]
            self._draw_static(done)
            pending = pending[~reachable]

    def _draw_static(self, idx: NDArray[np.intp]) -> None:
        if not len(idx):
            return
        tiles = np.where(self.walls[idx], WALL_TILE, FLOOR_TILE).astype(np.int64)
        rows = np.arange(len(idx))[:, None]
        pos = self.obj_pos[idx]
        tiles[rows, pos[..., 0], pos[..., 1]] = self.obj_tile[idx]
        self.tile_map[idx] = tiles
        if self.ego is not None:
            self.view_map[idx] = self.ego.pad(tiles)
        self.static[idx] = self.renderer.static_layer(tiles)

    # -- dynamics ----------------------------------------------------------------
    def _transition(
        self, actions: NDArray[np.int64]
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        self.heading = (self.heading + (actions == TURN_RIGHT) - (actions == TURN_LEFT)) % 4
        ar = np.arange(self.num_worlds)
        front = self.agent_pos + DIR_VEC[self.heading]
        fwd = actions == FORWARD
        wall = self.walls[ar, front[:, 0], front[:, 1]]
        occupant = self.occupant[ar, front[:, 0], front[:, 1]]
        touch = fwd & ~wall & (occupant >= 0)
        move = fwd & ~wall & ~touch
        self.agent_pos = np.where(move[:, None], front, self.agent_pos)
        self.success = touch & (occupant == self.target)
        return self.success_reward(self.success), touch

    # -- observation -------------------------------------------------------------
    def _image(self, idx: NDArray[np.intp] | None) -> NDArray[np.uint8]:
        """The observed frames: the agent's view, or the whole room from above."""
        if self.ego is not None:
            sel = slice(None) if idx is None else idx
            return self.ego.frames(self.view_map[sel], self.agent_pos[sel], self.heading[sel])
        return self._topdown(idx)

    def _topdown(self, idx: NDArray[np.intp] | None) -> NDArray[np.uint8]:
        if idx is None:
            frames = self.static.copy()
            self.renderer.paste_agent(frames, self.agent_pos, self.heading)
        else:
            frames = self.static[idx]  # fancy indexing copies
            self.renderer.paste_agent(frames, self.agent_pos[idx], self.heading[idx])
        return frames

    def frames(self, idx: NDArray[np.intp] | None = None) -> NDArray[np.uint8]:
        """RGB frames of worlds ``idx``."""
        return self._topdown(idx)

    def expert_actions(self) -> NDArray[np.int64]:
        """Shortest-path action per world towards its target."""
        return navigation_expert(self.dist, self.agent_pos, self.heading)

    # -- sound -------------------------------------------------------------------
    def _init_sound(self, noise: tuple[float, float]) -> None:
        """Give objects voices: per-object source id and loudness, background noise range."""
        if (
            not isinstance(noise, tuple | list)
            or len(noise) != 2
            or not all(is_real(v) for v in noise)
            or not 0.0 <= noise[0] <= noise[1] <= 1.0
        ):
            raise ValueError(
                f"noise must be a (low, high) pair with 0 <= low <= high <= 1, got {noise!r}."
            )
        n, k = self.num_worlds, self.n_objects
        self.bank = shared_bank(self.audio_cfg)
        self.src_id = np.zeros((n, k), dtype=np.int64)
        self.loudness = np.zeros((n, k), dtype=np.float32)
        self.noise_level = np.zeros(n, dtype=np.float32)
        self.noise_range = (float(noise[0]), float(noise[1]))
        self.gains = GainTable(self.grid_size)

    def _draw_noise_level(self, idx: NDArray[np.intp]) -> None:
        lo, hi = self.noise_range
        self.noise_level[idx] = lo + (hi - lo) * self.rand.uniform(idx, 1)[:, 0]

    def _audio(self, idx: NDArray[np.intp] | None) -> NDArray[np.float32]:
        """Stereo log-mel of every object's sound as heard from the agent's pose."""
        sel = slice(None) if idx is None else idx
        variant = self.rand.integers(sel, self.audio_cfg.variants, 1)[:, 0]
        gains = self.gains(
            self.agent_pos[sel], self.heading[sel], self.obj_pos[sel], self.loudness[sel]
        )
        return self.bank.mix_features(self.src_id[sel], variant, gains, self.noise_level[sel])


__all__ = [
    "SPEAKER_TILE",
    "NavigationGame",
    "Obs",
    "object_tile",
]
