"""Sprite tiles and a batched top-down renderer.

A frame is a grid of ``tile x tile`` pixel cells. The static layer (floor,
walls, objects) is drawn once per episode by gathering pre-drawn tiles for all
worlds at once; each step only copies that layer and pastes the agent's tile.
"""

from __future__ import annotations

import numpy as np
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
        tile = min(h, w) // grid_size
        if tile < 3:
            raise ValueError(
                f"frame_size={frame_size} is too small for a {grid_size}x{grid_size} grid: "
                f"each cell needs >= 3 pixels, so use frame_size >= {3 * grid_size}."
            )
        if tiles.shape[1:] != (tile, tile, 3):
            raise ValueError(f"tiles must be (n, {tile}, {tile}, 3), got {tiles.shape}.")
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
