"""A faster MiniGrid ``gen_obs``: the same observation, without building four Grid objects.

MiniGrid computes the agent's 7x7 view each step by slicing the world into a new
``Grid``, rotating it ``agent_dir + 1`` times (a new ``Grid`` each time), tracing
visibility and encoding it cell by cell into numpy. :func:`use_fast_observations`
replaces the env's ``gen_obs`` with :func:`fast_gen_obs`, which reads the 49 cells
once, already in the turned order (a table of offsets per direction, made once), and
traces visibility on plain lists: 1.6-1.7x env steps/s on BabyAI levels
(``benchmarks/minigrid_view.py``), ~1.1x on a whole training run. The result is the same
observation, cell for cell (tests compare it with MiniGrid's own over random
episodes of many levels), so a run's trajectories and results do not change.

Only envs that keep MiniGrid's own ``gen_obs``, ``gen_obs_grid``, ``get_view_exts``
and ``Grid`` are changed; any env that overrides one of them (in its class or on the
instance) keeps its own. ``gen_obs_grid`` itself (used for rendering the agent's view
and by MiniGrid's wrappers and bot) is left as it is. The visibility rules are
MiniGrid 3's (``pyproject.toml`` asks for ``minigrid>=3.0,<4``; the tests compare the
two views on the installed version).
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import numpy as np

_EMPTY = (1, 0, 0)
"""MiniGrid's encoding of an empty cell: (OBJECT_TO_IDX["empty"], 0, 0)."""
_HIDDEN = (0, 0, 0)
"""A cell the agent cannot see (MiniGrid leaves it zero; 0 is "unseen")."""


def _visibility(clear: list[list[bool]], size: int) -> list[list[bool]]:
    """MiniGrid's ``Grid.process_vis`` on a ``[i][j]`` table of see-through cells.

    The agent sits at ``(size // 2, size - 1)``; visibility spreads row by row
    away from it, sideways then forward, stopping behind cells one cannot see
    through. Same order and rules as MiniGrid, so the same mask.
    """
    mask = [[False] * size for _ in range(size)]
    mask[size // 2][size - 1] = True
    for j in reversed(range(size)):
        for i in range(size - 1):
            if not mask[i][j] or not clear[i][j]:
                continue
            mask[i + 1][j] = True
            if j > 0:
                mask[i + 1][j - 1] = True
                mask[i][j - 1] = True
        for i in reversed(range(1, size)):
            if not mask[i][j] or not clear[i][j]:
                continue
            mask[i - 1][j] = True
            if j > 0:
                mask[i - 1][j - 1] = True
                mask[i][j - 1] = True
    return mask


@functools.cache
def _outside_wall() -> Any:
    """What every cell outside the world reads as: a ``Wall`` (one, never placed in a grid)."""
    from minigrid.core.world_object import Wall

    return Wall()


@functools.cache
def _view_offsets(direction: int, size: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """For each view cell ``[i][j]``, its ``(dx, dy)`` in the slice MiniGrid takes.

    MiniGrid slices the world from ``get_view_exts`` (index ``[dx, dy]``) and rotates
    the slice left (counter-clockwise) ``direction + 1`` times; on an ``[i, j]``
    array one such turn is ``np.rot90(k=-1)``. Rotating a table of offsets once
    here saves rotating every observation.
    """
    dx, dy = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    turned_dx = np.rot90(dx, -(direction + 1))
    turned_dy = np.rot90(dy, -(direction + 1))
    return tuple(
        tuple((int(turned_dx[i, j]), int(turned_dy[i, j])) for j in range(size))
        for i in range(size)
    )


def fast_gen_obs(env: Any) -> dict[str, Any]:
    """The observation MiniGrid's ``MiniGridEnv.gen_obs`` returns for ``env``, computed faster.

    Args:
        env: A ``MiniGridEnv`` (the unwrapped env).

    Returns:
        ``{"image": (view, view, 3) uint8, "direction": int, "mission": str}``.
    """
    size = int(env.agent_view_size)
    top_x, top_y, _, _ = env.get_view_exts(size)
    grid = env.grid
    width, height, cells = grid.width, grid.height, grid.grid
    wall = _outside_wall()
    # The view's cells, already turned the way the agent faces.
    view: list[list[Any]] = []
    clear: list[list[bool]] = []
    for column in _view_offsets(int(env.agent_dir), size):
        objs = []
        for dx, dy in column:
            x, y = top_x + dx, top_y + dy
            objs.append(cells[y * width + x] if 0 <= x < width and 0 <= y < height else wall)
        view.append(objs)
        clear.append([obj is None or obj.see_behind() for obj in objs])
    if env.see_through_walls:
        visible = [[True] * size for _ in range(size)]
    else:
        visible = _visibility(clear, size)
    # The agent sees what it carries, in its own cell.
    view[size // 2][size - 1] = env.carrying if env.carrying else None
    codes: list[int] = []
    for objs, seen in zip(view, visible, strict=True):
        for obj, shown in zip(objs, seen, strict=True):
            codes.extend((obj.encode() if obj is not None else _EMPTY) if shown else _HIDDEN)
    image = np.array(codes, dtype=np.uint8).reshape(size, size, 3)
    return {"image": image, "direction": env.agent_dir, "mission": env.mission}


_VIEW_METHODS = ("gen_obs", "gen_obs_grid", "get_view_exts")
"""The MiniGridEnv methods that make the view: an env overriding any of them keeps its own."""


def can_use_fast_observations(env: gym.Env[Any, Any]) -> bool:
    """Whether ``env`` is a MiniGrid env that computes its view with MiniGrid's own methods."""
    try:
        from minigrid.minigrid_env import MiniGridEnv
    except ImportError:  # pragma: no cover - depends on the environment
        return False
    base = env.unwrapped
    if not isinstance(base, MiniGridEnv):
        return False
    cls = type(base)
    return all(
        name not in vars(base) and getattr(cls, name) is getattr(MiniGridEnv, name)
        for name in _VIEW_METHODS
    )


def use_fast_observations(env: gym.Env[Any, Any]) -> bool:
    """Make ``env`` (a MiniGrid env, under any wrappers) compute its view with :func:`fast_gen_obs`.

    Envs that override how the view is made (or are not MiniGrid envs) are left as
    they are. The replacement also checks, on each call, that the world is still a
    plain MiniGrid ``Grid`` and falls back to MiniGrid's method if not.

    Args:
        env: The env to speed up.

    Returns:
        Whether the env now uses the fast path.
    """
    base = env.unwrapped
    if isinstance(vars(base).get("gen_obs"), FastGenObs):
        return True  # already
    if not can_use_fast_observations(env):
        return False
    base.gen_obs = FastGenObs(base)  # type: ignore[attr-defined]
    return True


class FastGenObs:
    """An env's ``gen_obs`` under :func:`use_fast_observations`.

    :func:`fast_gen_obs` on a plain ``Grid``, else MiniGrid's own. A plain object
    rather than a bound function, so the env still deep-copies and pickles (each copy
    gets its own). A shallow ``copy.copy`` of the unwrapped env shares it with the
    original and would observe the original: deep-copy instead.
    """

    def __init__(self, env: Any) -> None:
        from minigrid.core.grid import Grid
        from minigrid.minigrid_env import MiniGridEnv

        self.env = env
        self._grid_type = Grid
        self._minigrid_gen_obs = MiniGridEnv.gen_obs

    def __call__(self) -> dict[str, Any]:
        """The env's observation now."""
        if type(self.env.grid) is self._grid_type:
            return fast_gen_obs(self.env)
        return self._minigrid_gen_obs(self.env)
