"""The oracle solves every game; a random policy does not."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import envs

NAVIGATION = ("mbm/GoToObject-v0", "mbm/FindSound-v0", "mbm/SoundMaze-v0")
EPISODES = 200


def first_episode_success(
    vec: envs.GameVectorEnv, policy: Callable[[], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Run every world of a same_step vector env to the end of its first episode."""
    n = vec.num_envs
    done = np.zeros(n, dtype=bool)
    success = np.zeros(n, dtype=bool)
    returns = np.zeros(n, dtype=np.float64)
    for _ in range(vec.unwrapped.game.max_steps + 1):
        _, reward, terminated, truncated, info = vec.step(policy())
        returns += np.where(done, 0.0, reward)
        ended = (terminated | truncated) & ~done
        if ended.any():
            success[ended] = info["final_info"]["success"][ended]
            # Success means a terminal step that paid.
            assert (reward[ended & success] > 0).all()
            assert not truncated[ended & success].any()
        done |= terminated | truncated
        if done.all():
            break
    assert done.all(), "some episode outlived max_steps"
    return success, returns


@pytest.mark.parametrize("env_id", [*NAVIGATION, "mbm/ModalityProbe-v0"])
def test_batched_expert_succeeds(env_id: str) -> None:
    vec = envs.make_vec(env_id, EPISODES, autoreset_mode=AutoresetMode.SAME_STEP)
    vec.reset(seed=0)
    success, returns = first_episode_success(vec, vec.expert_actions)
    assert success.mean() >= 0.99, f"expert success {success.mean():.3f}"
    assert (returns[success] > 0.5).all()


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("mbm/GoToObject-v0", {"grid_size": 12, "n_objects": 6}),
        ("mbm/SoundMaze-v0", {"grid_size": 12, "n_objects": 5, "wall_density": 0.3}),
        ("mbm/SoundMaze-v0", {"grid_size": 6, "n_objects": 2, "wall_density": 0.3}),
        ("mbm/FindSound-v0", {"grid_size": 5, "n_objects": 2}),
    ],
    ids=["GoTo-big", "Maze-dense", "Maze-small-dense", "Find-small"],
)
def test_batched_expert_succeeds_on_hard_settings(env_id: str, kwargs: dict) -> None:
    vec = envs.make_vec(env_id, EPISODES, autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
    vec.reset(seed=1)
    success, _ = first_episode_success(vec, vec.expert_actions)
    assert success.mean() >= 0.99, f"expert success {success.mean():.3f}"


@pytest.mark.parametrize("env_id", [*NAVIGATION, "mbm/ModalityProbe-v0"])
def test_single_env_expert_succeeds(env_id: str) -> None:
    env = envs.make(env_id)
    successes = 0
    for episode in range(EPISODES):
        _, info = env.reset(seed=10_000 + episode)
        for _ in range(env.game.max_steps):
            _, reward, terminated, truncated, info = env.step(env.expert_action())
            if terminated or truncated:
                break
        else:
            pytest.fail("episode did not end within max_steps")
        successes += bool(info["success"])
        assert bool(info["success"]) == (reward > 0)
    assert successes / EPISODES >= 0.99, f"expert success {successes}/{EPISODES}"


def test_expert_path_is_shortest() -> None:
    """The oracle walks a shortest path: ``d`` forward moves (the last touches the
    target) plus at most 2 turns at the start and 1 per later cell (it never needs
    to turn back), and it never walks into another object."""
    vec = envs.make_vec("mbm/SoundMaze-v0", 100, autoreset_mode=AutoresetMode.SAME_STEP)
    vec.reset(seed=5)
    game = vec.unwrapped.game
    ar = np.arange(100)
    start_dist = game.dist[ar, game.agent_pos[:, 0], game.agent_pos[:, 1]].copy()
    steps = np.zeros(100, dtype=int)
    done = np.zeros(100, dtype=bool)
    for _ in range(game.max_steps):
        _, _, terminated, truncated, info = vec.step(vec.expert_actions())
        steps += ~done
        ended = (terminated | truncated) & ~done
        if ended.any():
            assert info["final_info"]["success"][ended].all()
        done |= terminated | truncated
        if done.all():
            break
    assert (start_dist > 0).all()
    assert (steps >= start_dist).all()
    assert (steps <= 2 * start_dist + 1).all()


@pytest.mark.parametrize("env_id", [*NAVIGATION, "mbm/ModalityProbe-v0"])
def test_random_policy_is_near_chance(env_id: str) -> None:
    """Sanity: the games are not trivial. A uniform random policy succeeds about as
    often as guessing among the objects (it may also time out), far below the expert."""
    n = 200
    vec = envs.make_vec(env_id, n, autoreset_mode=AutoresetMode.SAME_STEP)
    vec.reset(seed=3)
    rng = np.random.default_rng(0)
    n_actions = vec.single_action_space.n
    success, _ = first_episode_success(vec, lambda: rng.integers(0, n_actions, n))
    chance = vec.unwrapped.game.chance_level
    # 200 episodes: binomial sd ~ 0.035 at p = 1/3, so 0.12 is > 3 sd.
    assert success.mean() <= chance + 0.12, f"random {success.mean():.3f} vs chance {chance:.3f}"
    assert success.mean() < 0.6


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("mbm/GoToObject-v0", {}),
        ("mbm/SoundMaze-v0", {}),
        ("mbm/SoundMaze-v0", {"grid_size": 5, "n_objects": 3, "wall_density": 0.3}),
    ],
    ids=["GoTo", "Maze", "Maze-5x5-dense"],
)
def test_layouts_are_valid(env_id: str, kwargs: dict) -> None:
    """Starting State: agent and objects on distinct free (non-wall) cells, target reachable.
    Every argument combination the constructor accepts must produce such layouts."""
    n = 2000 if kwargs else 500
    vec = envs.make_vec(env_id, n, **kwargs)
    vec.reset(seed=0)
    game = vec.unwrapped.game
    ar = np.arange(n)
    cells = np.concatenate([game.agent_pos[:, None], game.obj_pos], axis=1)  # (n, k + 1, 2)
    on_wall = game.walls[ar[:, None], cells[..., 0], cells[..., 1]]
    assert not on_wall[:, 0].any(), "agent placed on a wall"
    assert not on_wall[:, 1:].any(), (
        f"{int(on_wall[:, 1:].any(1).sum())}/{n} worlds have an object inside a wall"
    )
    flat = cells[..., 0] * game.grid_size + cells[..., 1]
    assert all(len(set(row)) == row.size for row in flat), "two things share a cell"
    reach = game.dist[ar, game.agent_pos[:, 0], game.agent_pos[:, 1]]
    assert (reach < 10_000).all()
