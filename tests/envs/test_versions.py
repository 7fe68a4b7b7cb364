"""Game versions: v1 closes the ways v0 let an agent win without the sense it asks for.

GoToObject-v0's target is always the object whose colour and shape both recur among the
others, so an agent that sees the room needs no words; SoundMaze-v0 only makes sure the
target can be reached, so the nearest reachable object is the target more often than
1 in 3. The v1 tests check that rules which neither read nor hear stay at chance there,
and the v0 tests that v0 is as it was (its episodes reproduce earlier results).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from numpy.typing import NDArray

import envs
from envs.core.grid import UNREACHABLE, distance_maps
from envs.core.navigation import NavigationGame

WORLDS = 2000


def _game(env_id: str, num: int = WORLDS, seed: int = 0, **kwargs: Any) -> Any:
    vec = envs.make_vec(env_id, num, **kwargs)
    vec.reset(seed=seed)
    return vec.game


def _shared(col: NDArray[np.int64], shp: NDArray[np.int64]) -> NDArray[np.int64]:
    """Per object: how many others share its colour plus how many share its shape."""
    same_col = (col[:, :, None] == col[:, None, :]).sum(-1) - 1
    same_shp = (shp[:, :, None] == shp[:, None, :]).sum(-1) - 1
    return same_col + same_shp


def _hub_rule(game: Any) -> NDArray[np.bool_]:
    """Pick the object sharing the most with the others (ties at random); no words read."""
    score = _shared(game.obj_colour, game.obj_shape).astype(np.float64)
    score += np.random.default_rng(0).uniform(0.0, 0.5, score.shape)
    return np.argmax(score, axis=1) == game.target


def _reach(game: NavigationGame) -> NDArray[np.int32]:
    """``(n, k)`` steps from the agent's start to each object, around walls and objects."""
    n, k = game.obj_pos.shape[:2]
    blocked = game.walls | (game.occupant >= 0)
    each = distance_maps(np.repeat(blocked, k, axis=0), game.obj_pos.reshape(-1, 2))
    each = each.reshape(n, k, *blocked.shape[1:])
    start = game.agent_pos
    return each[np.arange(n), :, start[:, 0], start[:, 1]]


def _nearest_rule(game: NavigationGame) -> NDArray[np.bool_]:
    """Walk to the nearest reachable object (ties at random): neither reads nor hears."""
    steps = _reach(game).astype(np.float64)
    steps += np.random.default_rng(0).uniform(0.0, 0.5, steps.shape)
    return np.argmin(steps, axis=1) == game.target


def _within_chance(hits: NDArray[np.bool_], chance: float) -> None:
    sd = np.sqrt(chance * (1 - chance) / len(hits))
    assert abs(hits.mean() - chance) < 4 * sd, (hits.mean(), chance)


def test_goto_object_v1_registers_four_objects_on_a_colour_by_shape_table() -> None:
    game = _game("mbm/GoToObject-v1")
    assert game.n_objects == 4 and game.chance_level == 0.25
    # Two colours by two shapes: every object shares its colour with exactly one other
    # and its shape with exactly one other, so neither word alone names it.
    col, shp = game.obj_colour, game.obj_shape
    assert ((col[:, :, None] == col[:, None, :]).sum(-1) == 2).all()
    assert ((shp[:, :, None] == shp[:, None, :]).sum(-1) == 2).all()
    pairs = col * 100 + shp
    assert all(len(set(row)) == 4 for row in pairs.tolist())


@pytest.mark.parametrize("grid_size", [6, 8])
def test_goto_object_v1_every_object_is_reachable(grid_size: int) -> None:
    # In v0 the other objects can box one into a corner (5% of 6x6 rooms with 4
    # objects): never the target, so a rule that skips it beats chance.
    game = _game("mbm/GoToObject-v1", grid_size=grid_size)
    assert (_reach(game) < UNREACHABLE).all()
    v0 = _game("mbm/GoToObject-v0", grid_size=6, n_objects=4)
    assert (_reach(v0) >= UNREACHABLE).any(axis=1).mean() > 0.02


def test_goto_object_v1_target_is_any_object_alike() -> None:
    game = _game("mbm/GoToObject-v1")
    counts = np.bincount(game.target, minlength=4) / WORLDS
    assert np.all(np.abs(counts - 0.25) < 0.04), counts
    # The rule that wins every v0 room stays at chance without the words.
    _within_chance(_hub_rule(game), 0.25)


@pytest.mark.parametrize("k", [2, 3, 5, 6])
def test_goto_object_grid_object_set_keeps_the_target_at_chance_for_any_count(k: int) -> None:
    game = _game("mbm/GoToObject-v1", n_objects=k, grid_size=10)
    assert game.n_objects == k
    pairs = game.obj_colour * 100 + game.obj_shape
    assert all(len(set(row)) == k for row in pairs.tolist())  # the objects look distinct
    _within_chance(_hub_rule(game), 1 / k)
    for i in range(k):  # no slot is likelier to hold the target
        assert abs((game.target == i).mean() - 1 / k) < 4 * np.sqrt((1 / k) / WORLDS)


def test_goto_object_v0_is_unchanged_its_target_recurs_in_colour_and_shape() -> None:
    game = _game("mbm/GoToObject-v0")
    assert game.n_objects == 3 and game.object_set == "around-target"
    # v0's leak, kept so that its episodes reproduce the results made on it.
    assert _hub_rule(game).all()


def test_sound_maze_v1_every_object_is_reachable() -> None:
    game = _game("mbm/SoundMaze-v1")
    assert (_reach(game) < UNREACHABLE).all()
    _within_chance(_nearest_rule(game), 1 / 3)


def test_sound_maze_v0_is_unchanged_it_can_wall_a_distractor_off() -> None:
    game = _game("mbm/SoundMaze-v0")
    steps = _reach(game)
    hidden = (steps >= UNREACHABLE).any(axis=1)
    # ~3.6% of v0 rooms wall a distractor off; never the target.
    assert 0.01 < hidden.mean() < 0.07
    assert (steps[np.arange(WORLDS), game.target] < UNREACHABLE).all()


def test_sound_maze_v1_changes_only_the_rooms_that_walled_an_object_off() -> None:
    # Same seeds: a v0 room with every object reachable is the v1 room (same draws).
    v0, v1 = _game("mbm/SoundMaze-v0", 300), _game("mbm/SoundMaze-v1", 300)
    fine = (_reach(v0) < UNREACHABLE).all(axis=1)
    assert fine.mean() > 0.9
    assert np.array_equal(v0.walls[fine], v1.walls[fine])
    assert np.array_equal(v0.obj_pos[fine], v1.obj_pos[fine])
    assert np.array_equal(v0.target[fine], v1.target[fine])


def test_a_users_arguments_win_over_the_versions() -> None:
    env = gym.make("mbm/GoToObject-v1", n_objects=6, grid_size=10)
    game = env.unwrapped.game  # type: ignore[attr-defined]
    assert game.n_objects == 6 and game.object_set == "grid"
    env.close()
    maze = envs.make("mbm/SoundMaze-v1", all_reachable=False)
    assert maze.game.reach_all_objects is False
    assert envs.make("mbm/GoToObject-v1").game.reach_all_objects is True


def test_bad_version_arguments_name_the_choices() -> None:
    with pytest.raises(ValueError, match=r"object_set must be one of .*'grid'"):
        envs.make("mbm/GoToObject-v1", object_set="random")
    for env_id in ("mbm/SoundMaze-v1", "mbm/GoToObject-v1"):
        with pytest.raises(ValueError, match="all_reachable must be True"):
            envs.make(env_id, all_reachable="yes")


def test_every_earlier_version_has_a_newer_one() -> None:
    latest = {envs.game_name(i): i for i in envs.LATEST}
    assert len(latest) == len(envs.LATEST)
    for env_id in envs.ENV_IDS:
        newest = latest[envs.game_name(env_id)]
        assert int(env_id.rsplit("-v", 1)[1]) <= int(newest.rsplit("-v", 1)[1])
