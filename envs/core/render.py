"""Sprite tiles and a batched top-down renderer.

A frame is a grid of ``tile x tile`` pixel cells. The static layer (floor,
walls, objects) is drawn once per episode by gathering pre-drawn tiles for all
worlds at once; each step only copies that layer and pastes the agent's tile.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided
from numpy.typing import NDArray

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (170, 60, 220),
    "orange": (250, 140, 20),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("ball", "box", "key", "diamond", "cross")
FLOOR = (20, 20, 20)
WALL = (110, 110, 110)
AGENT = (245, 245, 245)
SPEAKER = (200, 170, 120)  # the one look shared by sound-emitting objects
#: (d_row, d_col) of one step forward per heading (as ``envs.core.grid.DIR_VEC``).
DIR_VEC_RC = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]], dtype=np.int64)


def _grid(tile: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    c = (np.arange(tile) + 0.5) / tile * 2.0 - 1.0  # cell-centred coords in [-1, 1]
    return np.meshgrid(c, c, indexing="ij")  # (y, x)


def shape_mask(shape: str, tile: int) -> NDArray[np.bool_]:
    """Boolean ``(tile, tile)`` mask of one object shape."""
    y, x = _grid(tile)
    if shape == "ball":
        return x**2 + y**2 <= 0.62
    if shape == "box":
        inner = (np.abs(x) <= 0.38) & (np.abs(y) <= 0.38)
        return (np.abs(x) <= 0.78) & (np.abs(y) <= 0.78) & ~inner
    if shape == "key":
        head = (x + 0.35) ** 2 + y**2 <= 0.2
        shaft = (x >= -0.35) & (x <= 0.8) & (np.abs(y) <= 0.16)
        tooth = (x >= 0.45) & (x <= 0.8) & (y >= 0.0) & (y <= 0.5)
        return head | shaft | tooth
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 0.85
    if shape == "cross":
        return ((np.abs(x) <= 0.25) | (np.abs(y) <= 0.25)) & (np.abs(x) <= 0.8) & (np.abs(y) <= 0.8)
    raise ValueError(f"Unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}.")


def agent_mask(heading: int, tile: int) -> NDArray[np.bool_]:
    """Triangle pointing along ``heading`` (0 east, 1 south, 2 west, 3 north)."""
    y, x = _grid(tile)
    # Triangle pointing east, rotated by swapping/negating coordinates.
    u, v = {0: (x, y), 1: (y, -x), 2: (-x, -y), 3: (-y, x)}[heading]
    return (u >= -0.75) & (u <= 0.8) & (np.abs(v) <= (0.8 - u) * 0.5)


def solid_tile(colour: tuple[int, int, int], tile: int) -> NDArray[np.uint8]:
    """A tile filled with one colour."""
    return np.broadcast_to(np.array(colour, np.uint8), (tile, tile, 3)).copy()


def sprite_tile(
    mask: NDArray[np.bool_], colour: tuple[int, int, int], tile: int
) -> NDArray[np.uint8]:
    """A floor tile with ``mask`` painted in ``colour``."""
    t = solid_tile(FLOOR, tile)
    t[mask] = colour
    return t


def cell_pixels(
    frame_size: tuple[int, int], cells: int, what: str, tiles: NDArray[np.uint8]
) -> int:
    """Pixels per cell when ``cells`` cells span the frame; checks size and ``tiles``."""
    tile = min(frame_size) // cells
    if tile < 3:
        raise ValueError(
            f"frame_size={frame_size} is too small for a {cells}x{cells} {what}: each cell "
            f"needs >= 3 pixels, so use frame_size >= {3 * cells}."
        )
    if tiles.shape[1:] != (tile, tile, 3):
        raise ValueError(f"tiles must be (n, {tile}, {tile}, 3), got {tiles.shape}.")
    return tile


class GridRenderer:
    """Draws ``(n, H, W, 3)`` uint8 frames of grid worlds.

    Args:
        grid_size: Cells per side (walls included).
        frame_size: ``(H, W)`` of the frame; cells are ``min(H, W) // grid_size``
            pixels wide and the board is centred on a dark margin.
        tiles: ``(n_tiles, tile, tile, 3)`` static tiles; tile 0 must be the floor.
    """

    def __init__(
        self, grid_size: int, frame_size: tuple[int, int], tiles: NDArray[np.uint8]
    ) -> None:
        h, w = frame_size
        tile = cell_pixels(frame_size, grid_size, "grid", tiles)
        self.grid_size = grid_size
        self.frame_size = (h, w)
        self.tile = tile
        self.tiles = tiles
        self.agent_tiles = np.stack(
            [sprite_tile(agent_mask(d, tile), AGENT, tile) for d in range(4)]
        )
        self.top = (h - tile * grid_size) // 2
        self.left = (w - tile * grid_size) // 2
        self._ar = np.arange(tile)

    def static_layer(self, tile_ids: NDArray[np.integer]) -> NDArray[np.uint8]:
        """Frames ``(n, H, W, 3)`` for a ``(n, G, G)`` map of tile ids."""
        n, g, _ = tile_ids.shape
        t = self.tile
        board = self.tiles[tile_ids]  # (n, g, g, t, t, 3)
        board = board.transpose(0, 1, 3, 2, 4, 5).reshape(n, g * t, g * t, 3)
        h, w = self.frame_size
        if (h, w) == (g * t, g * t):
            return np.ascontiguousarray(board)
        frames = np.zeros((n, h, w, 3), dtype=np.uint8)
        frames[:, self.top : self.top + g * t, self.left : self.left + g * t] = board
        return frames

    def paste_agent(
        self, frames: NDArray[np.uint8], pos: NDArray[np.int64], heading: NDArray[np.int64]
    ) -> None:
        """Draw each world's agent in place (``frames`` is modified)."""
        n = frames.shape[0]
        if n == 1:  # the single env: plain slicing beats fancy indexing
            t, (r, c) = self.tile, pos[0]
            r0, c0 = self.top + r * t, self.left + c * t
            frames[0, r0 : r0 + t, c0 : c0 + t] = self.agent_tiles[heading[0]]
            return
        rows = self.top + pos[:, 0:1] * self.tile + self._ar[None, :]  # (n, t)
        cols = self.left + pos[:, 1:2] * self.tile + self._ar[None, :]
        frames[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = self.agent_tiles[
            heading
        ]


class EgocentricRenderer:
    """Draws what the agent sees: a ``view x view`` window rotated to its heading.

    As MiniGrid's agent view: the agent sits at the bottom centre facing up and
    sees ``view - 1`` cells ahead and ``view // 2`` to each side; cells outside the
    world look like walls. Objects keep their look whatever the heading.

    Args:
        view: Cells per side of the window (odd).
        frame_size: ``(H, W)`` of the frame; cells are ``min(H, W) // view`` pixels.
        tiles: ``(n_tiles, tile, tile, 3)`` static tiles, as for :class:`GridRenderer`.
        void_tile: Tile id drawn outside the world.
    """

    def __init__(
        self, view: int, frame_size: tuple[int, int], tiles: NDArray[np.uint8], void_tile: int
    ) -> None:
        h, w = frame_size
        tile = cell_pixels(frame_size, view, "view", tiles)
        self.view = view
        self.frame_size = (h, w)
        self.tile = tile
        agent = sprite_tile(agent_mask(3, tile), AGENT, tile)  # always facing up
        self.agent_id = len(tiles)
        self.tiles = np.concatenate([tiles, agent[None]])
        self._tile_rows = np.ascontiguousarray(self.tiles.reshape(len(self.tiles), tile, tile * 3))
        self.void_tile = void_tile
        i, j = np.meshgrid(np.arange(view), np.arange(view), indexing="ij")
        ahead = (view - 1) - i  # cells in front of the agent
        lateral = j - view // 2  # cells to its right
        fwd, right = DIR_VEC_RC, np.roll(DIR_VEC_RC, -1, axis=0)
        #: World offset (per heading) of each view cell from the agent.
        self._row_offsets = ahead * fwd[:, 0, None, None] + lateral * right[:, 0, None, None]
        self._col_offsets = ahead * fwd[:, 1, None, None] + lateral * right[:, 1, None, None]
        self.top = (h - tile * view) // 2
        self.left = (w - tile * view) // 2

    def pad(self, tile_map: NDArray[np.integer]) -> NDArray[np.int64]:
        """``tile_map`` ``(n, G, G)`` framed by ``view`` cells of the void tile, as :meth:`frames` takes it."""
        v = self.view
        return np.pad(
            tile_map.astype(np.int64), ((0, 0), (v, v), (v, v)), constant_values=self.void_tile
        )

    def frames(
        self, padded_map: NDArray[np.integer], pos: NDArray[np.int64], heading: NDArray[np.int64]
    ) -> NDArray[np.uint8]:
        """``(n, H, W, 3)`` views of worlds whose :meth:`pad`-ded tile maps are ``padded_map``."""
        n = len(padded_map)
        rows = (pos[:, 0] + self.view)[:, None, None] + self._row_offsets[heading]
        cols = (pos[:, 1] + self.view)[:, None, None] + self._col_offsets[heading]
        ids = padded_map[np.arange(n)[:, None, None], rows, cols]
        ids[:, self.view - 1, self.view // 2] = self.agent_id
        v, t = self.view, self.tile
        h, w = self.frame_size
        out = np.zeros((n, h, w, 3), dtype=np.uint8)
        board = out[:, self.top : self.top + v * t, self.left : self.left + v * t]
        s = board.strides
        # Write the gathered tile rows straight into the frame through a
        # (world, view row, pixel row, view col, pixel row bytes) view: one copy.
        cells = as_strided(board, (n, v, t, v, t * 3), (s[0], t * s[1], s[1], t * s[2], s[3]))
        cells[...] = np.take(self._tile_rows, ids, axis=0).transpose(0, 1, 3, 2, 4)
        return out
