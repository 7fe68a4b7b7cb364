"""The egocentric view: the agent's own window, rotated so that it always faces up.

Frames are decoded back into tile ids by matching each cell against the
renderer's tiles, and compared with an oracle built independently from the
world state (walls, object cells and looks) by padding the room with wall and
rotating it with ``np.rot90``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import envs
from envs.core.grid import DIR_VEC, FORWARD, TURN_LEFT, TURN_RIGHT
from envs.core.navigation import FLOOR_TILE, WALL_TILE, NavigationGame
from envs.core.render import AGENT, EgocentricRenderer, agent_mask, sprite_tile

NAV_IDS = ("mbm/GoToObject-v0", "mbm/FindSound-v0", "mbm/SoundMaze-v0")
EAST, SOUTH, WEST, NORTH = range(4)


def decode(image: np.ndarray, ego: EgocentricRenderer) -> np.ndarray:
    """``(view, view)`` tile ids of an egocentric frame; -1 where no tile matches exactly."""
    v, t = ego.view, ego.tile
    board = image[ego.top : ego.top + v * t, ego.left : ego.left + v * t]
    cells = board.reshape(v, t, v, t, 3).transpose(0, 2, 1, 3, 4)  # (v, v, t, t, 3)
    match = (cells[:, :, None] == ego.tiles[None, None]).all(axis=(-3, -2, -1))  # (v, v, n)
    assert (match.sum(-1) <= 1).all(), "two tiles look the same"
    return np.where(match.any(-1), match.argmax(-1), -1)


def world_tiles(game: NavigationGame, i: int) -> np.ndarray:
    """Tile ids of world ``i`` from its walls and objects (not from the renderer's map)."""
    ids = np.where(game.walls[i], WALL_TILE, FLOOR_TILE).astype(np.int64)
    ids[game.obj_pos[i, :, 0], game.obj_pos[i, :, 1]] = game.obj_tile[i]
    return ids


def expected_view(game: NavigationGame, i: int) -> np.ndarray:
    """What world ``i``'s agent should see: the room padded with wall, turned so it faces up."""
    v = game.view_size
    room = np.pad(world_tiles(game, i), v, constant_values=WALL_TILE)
    marker = np.zeros(room.shape, dtype=bool)
    marker[tuple(game.agent_pos[i] + v)] = True
    # Counter-clockwise quarter turns that bring the heading to the top: north 0, east 1, ...
    k = (int(game.heading[i]) + 1) % 4
    room, marker = np.rot90(room, k), np.rot90(marker, k)
    r, c = np.argwhere(marker)[0]
    view = room[r - (v - 1) : r + 1, c - v // 2 : c + v // 2 + 1].copy()
    view[v - 1, v // 2] = game.ego.agent_id
    return view


def cell(image: np.ndarray, ego: EgocentricRenderer, row: int, col: int) -> np.ndarray:
    t = ego.tile
    return image[ego.top + row * t : ego.top + (row + 1) * t, ego.left + col * t :][:, :t]


def free(game: NavigationGame, pos: np.ndarray) -> bool:
    """Whether world 0's cell ``pos`` is inside, not a wall and not an object."""
    g = game.grid_size
    r, c = int(pos[0]), int(pos[1])
    return 0 <= r < g and 0 <= c < g and not game.walls[0, r, c] and game.occupant[0, r, c] < 0


def place(env: Any, pos: np.ndarray, heading: int) -> dict[str, np.ndarray]:
    """Put world 0's agent at ``pos`` facing ``heading``; its new observation."""
    game = env.game
    game.agent_pos[0] = pos
    game.heading[0] = heading
    return {k: v[0] for k, v in game.observe().items()}


# -- the view is the room seen from the agent ---------------------------------------------
def test_tiles_are_distinct_so_frames_decode() -> None:
    ego = envs.make("mbm/GoToObject-v0").game.ego
    flat = ego.tiles.reshape(len(ego.tiles), -1)
    assert len(np.unique(flat, axis=0)) == len(flat)


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("mbm/GoToObject-v0", {}),
        ("mbm/GoToObject-v0", {"view_size": 3, "frame_size": (48, 80)}),
        ("mbm/FindSound-v0", {"view_size": 9}),
        ("mbm/SoundMaze-v0", {"view_size": 15, "grid_size": 12}),
    ],
    ids=["default", "view3-wide", "findsound-view9", "soundmaze-view15"],
)
def test_view_is_the_room_turned_to_face_up(env_id: str, kwargs: dict[str, Any]) -> None:
    """Over walks with autoresets, every frame is the rotated room, all headings."""
    n = 16
    vec = envs.make_vec(env_id, n, autoreset_mode="same_step", **kwargs)
    game = vec.unwrapped.game
    obs, _ = vec.reset(seed=3)
    rng = np.random.default_rng(0)
    headings: set[int] = set()
    resets = 0
    for t in range(30):
        for i in range(n):
            got = decode(obs["image"][i], game.ego)
            np.testing.assert_array_equal(
                got, expected_view(game, i), err_msg=f"step {t} world {i}"
            )
        headings.update(game.heading.tolist())
        # Half expert, half random: objects get reached, so worlds reset.
        actions = np.where(rng.random(n) < 0.5, vec.expert_actions(), rng.integers(0, 3, n))
        obs, _, terminated, truncated, _ = vec.step(actions)
        resets += int((terminated | truncated).sum())
    assert headings == {EAST, SOUTH, WEST, NORTH}
    assert resets > 0, "no world reset: the view after an autoreset went untested"


@pytest.mark.parametrize("heading", [EAST, SOUTH, WEST, NORTH], ids=["E", "S", "W", "N"])
def test_the_cell_ahead_is_just_above_the_agent(heading: int) -> None:
    """The cell the agent would walk into is at view row view_size - 2, middle column."""
    env = envs.make("mbm/GoToObject-v0")
    game, ego = env.game, env.game.ego
    v, ahead = game.view_size, DIR_VEC[heading]
    # An object ahead: stepping forward then touches it (the episode ends).
    for seed in range(100):
        env.reset(seed=seed)
        pos = game.obj_pos[0, 0] - ahead
        if free(game, pos):
            break
    else:
        pytest.fail("no seed leaves room behind object 0")
    obs = place(env, pos, heading)
    tile = game.obj_tile[0, 0]
    np.testing.assert_array_equal(cell(obs["image"], ego, v - 2, v // 2), ego.tiles[tile])
    assert not np.array_equal(ego.tiles[tile], ego.tiles[FLOOR_TILE])
    _, _, terminated, _, _ = env.step(FORWARD)
    assert terminated
    # A wall ahead: the agent stands beside the border, facing it, and cannot move.
    for seed in range(100):
        env.reset(seed=seed)
        pos = np.array([game.grid_size // 2] * 2)
        pos = np.where(ahead > 0, game.grid_size - 2, np.where(ahead < 0, 1, pos))
        if free(game, pos):
            break
    else:
        pytest.fail("no seed leaves the cell beside the wall free")
    obs = place(env, pos, heading)
    np.testing.assert_array_equal(cell(obs["image"], ego, v - 2, v // 2), ego.tiles[WALL_TILE])
    obs, *_ = env.step(FORWARD)
    np.testing.assert_array_equal(game.agent_pos[0], pos)
    np.testing.assert_array_equal(cell(obs["image"], ego, v - 2, v // 2), ego.tiles[WALL_TILE])


@pytest.mark.parametrize("env_id", NAV_IDS)
def test_agent_is_always_at_the_bottom_centre_facing_up(env_id: str) -> None:
    n = 8
    vec = envs.make_vec(env_id, n)
    game = vec.unwrapped.game
    ego = game.ego
    v, t = ego.view, ego.tile
    up = sprite_tile(agent_mask(NORTH, t), AGENT, t)
    for other in (EAST, SOUTH, WEST):  # the triangle shows which way is up
        assert not np.array_equal(up, sprite_tile(agent_mask(other, t), AGENT, t))
    obs, _ = vec.reset(seed=11)
    rng = np.random.default_rng(1)
    for _ in range(30):
        for i in range(n):
            np.testing.assert_array_equal(cell(obs["image"][i], ego, v - 1, v // 2), up)
            assert (decode(obs["image"][i], ego) == ego.agent_id).sum() == 1
        obs, *_ = vec.step(rng.integers(0, 3, n))


def test_cells_outside_the_world_look_like_walls() -> None:
    """A 15x15 view of a 5x5 room from its corner: all but three cells are wall."""
    env = envs.make("mbm/GoToObject-v0", grid_size=5, n_objects=2, view_size=15)
    game, ego = env.game, env.game.ego
    for seed in range(100):
        env.reset(seed=seed)
        if free(game, np.array([1, 1])):
            break
    obs = place(env, np.array([1, 1]), NORTH)
    ids = decode(obs["image"], ego)
    # Inside the view: world rows 0..1 (ahead 1, 0) by cols 0..4 (lateral -1..3). Of
    # those only (1, 1) (the agent), (1, 2) and (1, 3) are not wall.
    assert (ids == WALL_TILE).sum() == 15 * 15 - 3
    assert ids[14, 7] == ego.agent_id
    assert ids[14, 8] != WALL_TILE and ids[14, 9] != WALL_TILE
    assert (ids[:14] == WALL_TILE).all()  # the border row (13) and everything beyond it


# -- turning -------------------------------------------------------------------------------
def test_turning_rotates_the_view_about_the_agent() -> None:
    """After a left turn what was ahead is on the right; after a right turn, on the left."""
    env = envs.make("mbm/GoToObject-v0")
    ego, v, m = env.game.ego, env.game.view_size, env.game.view_size // 2
    changed = 0
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        before = decode(obs["image"], ego)
        obs, *_ = env.step(TURN_LEFT)
        left = decode(obs["image"], ego)
        # New (ahead a, right l) is old (ahead l, right -a): the old front-left quadrant.
        for a in range(m + 1):
            for lat in range(m + 1):
                assert left[v - 1 - a, m + lat] == before[v - 1 - lat, m - a], (seed, a, lat)
        obs, *_ = env.step(TURN_RIGHT)
        np.testing.assert_array_equal(decode(obs["image"], ego), before)
        obs, *_ = env.step(TURN_RIGHT)
        right = decode(obs["image"], ego)
        # New (ahead a, right l) is old (ahead -l, right a): the old front-right quadrant.
        for a in range(m + 1):
            for lat in range(m + 1):
                assert right[v - 1 - a, m - lat] == before[v - 1 - lat, m + a], (seed, a, lat)
        for _ in range(3):
            obs, *_ = env.step(TURN_RIGHT)
        np.testing.assert_array_equal(decode(obs["image"], ego), before)  # a full turn
        changed += not np.array_equal(left, before)
    assert changed >= 15


# -- the top-down view ---------------------------------------------------------------------
@pytest.mark.parametrize("env_id", NAV_IDS)
def test_topdown_view_is_the_whole_room_and_the_agent_moves_in_it(env_id: str) -> None:
    env = envs.make(env_id, view="topdown")
    ego_env = envs.make(env_id)
    game, r = env.game, env.game.renderer
    assert game.ego is None
    obs, _ = env.reset(seed=5)
    ego_obs, _ = ego_env.reset(seed=5)
    # The view changes only what is drawn: the same seed gives the same world.
    np.testing.assert_array_equal(game.agent_pos, ego_env.game.agent_pos)
    np.testing.assert_array_equal(game.obj_pos, ego_env.game.obj_pos)
    assert not np.array_equal(obs["image"], ego_obs["image"])
    np.testing.assert_array_equal(obs["image"], game.frames()[0])
    heading = next(h for h in range(4) if free(game, game.agent_pos[0] + DIR_VEC[h]))
    start = game.agent_pos[0].copy()
    obs = place(env, start, heading)
    obs, *_ = env.step(FORWARD)
    end = game.agent_pos[0]
    np.testing.assert_array_equal(end, start + DIR_VEC[heading])
    np.testing.assert_array_equal(obs["image"], game.frames()[0])
    t = r.tile

    def crop(pos: np.ndarray) -> np.ndarray:
        return obs["image"][r.top + pos[0] * t :][:t, r.left + pos[1] * t :][:, :t]

    np.testing.assert_array_equal(crop(start), r.tiles[FLOOR_TILE])
    np.testing.assert_array_equal(crop(end), r.agent_tiles[heading])


# -- arguments -----------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", NAV_IDS)
@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (
            {"view": "bird"},
            ValueError,
            r"view must be one of \('egocentric', 'topdown'\), got 'bird'",
        ),
        ({"view": None}, ValueError, r"view must be one of \('egocentric', 'topdown'\), got None"),
        ({"view_size": 6}, ValueError, r"view_size must be odd.*got 6"),
        ({"view_size": 8}, ValueError, r"view_size must be odd.*got 8"),
        ({"view_size": 1}, ValueError, r"view_size must be an integer in \[3, 15\], got 1"),
        ({"view_size": 17}, ValueError, r"view_size must be an integer in \[3, 15\], got 17"),
        ({"view_size": 7.0}, TypeError, r"view_size must be an integer in \[3, 15\]"),
        ({"view_size": True}, TypeError, r"view_size must be an integer in \[3, 15\]"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else "",
)
def test_bad_view_arguments_are_named(
    env_id: str, kwargs: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        envs.make(env_id, **kwargs)
    with pytest.raises(error, match=pattern):
        envs.make_vec(env_id, 2, **kwargs)


def test_frame_size_minimum_scales_with_the_view() -> None:
    """Each view cell needs 3 pixels; top-down only the room's cells count."""
    with pytest.raises(ValueError, match=r"between 45 and 1024.*got \(44, 44\)"):
        envs.make("mbm/GoToObject-v0", view_size=15, frame_size=44)
    envs.make("mbm/GoToObject-v0", view_size=15, frame_size=45)
    envs.make("mbm/GoToObject-v0", view="topdown", view_size=15, frame_size=24)


# -- seeding -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("mbm/GoToObject-v0", {"view_size": 5, "max_steps": 12}),
        ("mbm/SoundMaze-v0", {"view_size": 9}),
    ],
    ids=["goto-view5", "soundmaze-view9"],
)
def test_seeding_and_batch_equivalence_hold_for_the_view(
    env_id: str, kwargs: dict[str, Any]
) -> None:
    """Same seed, same frames; slot i of a batch is the single env seeded s + i."""
    n, seed = 3, 40
    vecs = [envs.make_vec(env_id, n, autoreset_mode="same_step", **kwargs) for _ in range(2)]
    singles = [envs.make(env_id, **kwargs) for _ in range(n)]
    obs = [v.reset(seed=seed)[0] for v in vecs]
    other, _ = envs.make_vec(env_id, n, **kwargs).reset(seed=seed + 100)
    assert not np.array_equal(obs[0]["image"], other["image"])
    s_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    rng = np.random.default_rng(2)
    ends = 0
    for t in range(40):
        np.testing.assert_array_equal(obs[0]["image"], obs[1]["image"], err_msg=f"step {t}")
        for i in range(n):
            for key in s_obs[i]:
                np.testing.assert_array_equal(
                    obs[0][key][i], s_obs[i][key], err_msg=f"step {t} slot {i} {key}"
                )
        actions = rng.integers(0, 3, n)
        steps = [v.step(actions) for v in vecs]
        obs = [s[0] for s in steps]
        _, reward, terminated, truncated, info = steps[0]
        for i, env in enumerate(singles):
            o, r, term, trunc, _ = env.step(int(actions[i]))
            assert (reward[i], terminated[i], truncated[i]) == (r, term, trunc), (t, i)
            if term or trunc:
                ends += 1
                np.testing.assert_array_equal(info["final_obs"][i]["image"], o["image"])
                o, _ = env.reset()
            s_obs[i] = o
    assert ends > 0
