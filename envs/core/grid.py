"""Batched grid-world mechanics shared by the navigation games.

Conventions (as MiniGrid): positions are ``(row, col)``; headings are
0 = east, 1 = south, 2 = west, 3 = north (clockwise); actions are
0 = turn left, 1 = turn right, 2 = move forward.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

TURN_LEFT, TURN_RIGHT, FORWARD = 0, 1, 2
ACTION_NAMES = ("left", "right", "forward")
#: (d_row, d_col) of one step forward for each heading.
DIR_VEC = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]], dtype=np.int64)
DIR_NAMES = ("east", "south", "west", "north")

UNREACHABLE = np.int32(10_000)


def border_walls(n: int, size: int) -> NDArray[np.bool_]:
    """``(n, size, size)`` wall maps with only the outer wall set."""
    walls = np.zeros((n, size, size), dtype=bool)
    walls[:, 0, :] = walls[:, -1, :] = walls[:, :, 0] = walls[:, :, -1] = True
    return walls


def distance_maps(blocked: NDArray[np.bool_], goals: NDArray[np.int64]) -> NDArray[np.int32]:
    """Shortest-path step counts from every cell to each world's goal cell.

    A batched breadth-first search by repeated relaxation: each sweep lets the
    known distances flow one cell further, all worlds at once.

    Args:
        blocked: ``(n, h, w)`` cells that cannot be entered (walls, other objects).
            The goal cell itself may be marked blocked; it is always a source.
        goals: ``(n, 2)`` goal positions.

    Returns:
        ``(n, h, w)`` int32 distances, ``UNREACHABLE`` where no path exists.
    """
    n, h, w = blocked.shape
    dist = np.full((n, h, w), UNREACHABLE, dtype=np.int32)
    ar = np.arange(n)
    dist[ar, goals[:, 0], goals[:, 1]] = 0
    free = ~blocked
    for _ in range(h * w):
        best = dist.copy()
        np.minimum(best[:, 1:, :], dist[:, :-1, :] + 1, out=best[:, 1:, :])
        np.minimum(best[:, :-1, :], dist[:, 1:, :] + 1, out=best[:, :-1, :])
        np.minimum(best[:, :, 1:], dist[:, :, :-1] + 1, out=best[:, :, 1:])
        np.minimum(best[:, :, :-1], dist[:, :, 1:] + 1, out=best[:, :, :-1])
        best = np.where(free, best, dist)
        if np.array_equal(best, dist):
            break
        dist = best
    return dist


def navigation_expert(
    dist: NDArray[np.int32], pos: NDArray[np.int64], heading: NDArray[np.int64]
) -> NDArray[np.int64]:
    """Shortest-path actions (left/right/forward) towards the goal of each world.

    Moves forward when the cell ahead is one step closer; otherwise turns
    towards the best neighbour (right when it lies behind).
    """
    n = dist.shape[0]
    ar = np.arange(n)
    nbr = pos[:, None, :] + DIR_VEC[None, :, :]  # (n, 4, 2)
    nd = dist[ar[:, None], nbr[..., 0], nbr[..., 1]]  # (n, 4)
    best_dir = np.argmin(nd, axis=1)
    # Prefer going straight on ties so the oracle never turns needlessly.
    straight = nd[ar, heading] == nd[ar, best_dir]
    best_dir = np.where(straight, heading, best_dir)
    delta = (best_dir - heading) % 4
    action = np.where(delta == 0, FORWARD, np.where(delta == 3, TURN_LEFT, TURN_RIGHT))
    return action.astype(np.int64)


def random_free_cells(
    free: NDArray[np.bool_], k: int, uniforms: NDArray[np.float64]
) -> NDArray[np.int64]:
    """Pick ``k`` distinct free cells per world.

    Args:
        free: ``(n, h, w)`` cells that may be chosen (each world needs >= k).
        k: Cells to pick per world.
        uniforms: ``(n, h * w)`` uniform draws that rank the cells.

    Returns:
        ``(n, k, 2)`` positions.
    """
    n, _, w = free.shape
    score = np.where(free.reshape(n, -1), uniforms, 2.0)
    flat = np.argsort(score, axis=1, kind="stable")[:, :k]
    return np.stack([flat // w, flat % w], axis=-1).astype(np.int64)
