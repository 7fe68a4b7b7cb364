"""The fast MiniGrid view is MiniGrid's own view, cell for cell, and is used only where it may be."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from mbm_agent.training.minigrid_obs import fast_gen_obs, use_fast_observations
from mbm_agent.training.wrappers import make_minigrid_env

minigrid = pytest.importorskip("minigrid")
from minigrid.core.grid import Grid  # noqa: E402
from minigrid.minigrid_env import MiniGridEnv  # noqa: E402


def _same_view_over_random_play(
    env: gym.Env[Any, Any], episodes: int, steps: int, favour: tuple[int, ...] = ()
) -> dict[str, int]:
    """Compare the fast view with MiniGrid's at every step of random play; count what they showed.

    Half the actions are one of ``favour`` when it is given.
    """
    rng = np.random.default_rng(0)
    seen = {"steps": 0, "carrying": 0, "hidden": 0, "open_doors": 0, "edge": 0}
    for episode in range(episodes):
        env.reset(seed=episode)
        for _ in range(steps):
            base = env.unwrapped
            fast, reference = fast_gen_obs(base), MiniGridEnv.gen_obs(base)
            assert fast["image"].dtype == reference["image"].dtype == np.uint8
            np.testing.assert_array_equal(fast["image"], reference["image"])
            assert fast["direction"] == reference["direction"]
            assert fast["mission"] == reference["mission"]
            seen["steps"] += 1
            seen["carrying"] += base.carrying is not None
            seen["hidden"] += int((reference["image"][..., 0] == 0).any())
            seen["open_doors"] += int(
                ((reference["image"][..., 0] == 4) & (reference["image"][..., 2] == 0)).any()
            )
            x, y = base.agent_pos
            view = base.agent_view_size
            seen["edge"] += int(min(x, y) < view or max(base.width - x, base.height - y) <= view)
            if favour and rng.random() < 0.5:
                action = int(rng.choice(favour))
            else:
                action = int(rng.integers(env.action_space.n))
            *_, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    return seen


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        # A 3x3 maze of rooms behind closed doors: occlusion, doors opening, world edges.
        ("BabyAI-GoToObjMaze-v0", {}),
        # Locked doors and keys to carry.
        ("BabyAI-UnlockPickup-v0", {}),
        # A smaller view than the default 7.
        ("BabyAI-GoToRedBall-v0", {"agent_view_size": 5}),
        # Lava, and walls one cannot see through in a small world.
        ("MiniGrid-LavaCrossingS9N1-v0", {}),
        # see_through_walls=True, and things to pick up.
        ("MiniGrid-Fetch-5x5-N2-v0", {}),
        # Obstacles that move every step.
        ("MiniGrid-Dynamic-Obstacles-5x5-v0", {}),
    ],
)
def test_the_fast_view_equals_minigrids_at_every_step_of_random_play(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    seen = _same_view_over_random_play(env, episodes=20, steps=100)
    assert seen["steps"] >= 50  # Dynamic-Obstacles ends at the first collision
    assert seen["edge"] > 0  # part of the view fell outside the world or on its walls
    if not env.unwrapped.see_through_walls:
        assert seen["hidden"] > 0  # the visibility trace hid something


def test_the_fast_view_shows_what_the_agent_carries_and_doors_it_opened():
    # DoorKey: pick the key up (3) and open the locked door with it (5).
    seen = _same_view_over_random_play(
        gym.make("MiniGrid-DoorKey-5x5-v0"), episodes=30, steps=100, favour=(3, 5)
    )
    assert seen["carrying"] > 0
    assert seen["open_doors"] > 0


def test_make_minigrid_env_uses_the_fast_view_and_observes_the_same():
    fast = make_minigrid_env("BabyAI-GoToObjMaze-v0")
    slow = make_minigrid_env("BabyAI-GoToObjMaze-v0", fast_observations=False)
    assert "gen_obs" in vars(fast.unwrapped)
    assert "gen_obs" not in vars(slow.unwrapped)
    rng = np.random.default_rng(0)
    obs_fast, _ = fast.reset(seed=3)
    obs_slow, _ = slow.reset(seed=3)
    for _ in range(200):
        assert obs_fast.keys() == obs_slow.keys()
        for key in obs_fast:
            np.testing.assert_array_equal(obs_fast[key], obs_slow[key])
        action = int(rng.integers(fast.action_space.n))
        obs_fast, reward_fast, *end_fast, _ = fast.step(action)
        obs_slow, reward_slow, *end_slow, _ = slow.step(action)
        assert (reward_fast, end_fast) == (reward_slow, end_slow)
        if any(end_fast):
            obs_fast, _ = fast.reset()
            obs_slow, _ = slow.reset()


class OwnViewEnv(MiniGridEnv):
    """A MiniGrid env that makes its view its own way: it must keep it."""

    def __init__(self) -> None:
        from minigrid.core.mission import MissionSpace

        super().__init__(mission_space=MissionSpace(lambda: "own view"), grid_size=6, max_steps=10)

    def _gen_grid(self, width: int, height: int) -> None:
        self.grid = Grid(width, height)
        self.grid.wall_rect(0, 0, width, height)
        self.place_agent()

    def gen_obs(self) -> dict[str, Any]:
        obs = super().gen_obs()
        obs["image"] = np.full_like(obs["image"], 7)
        return obs


class OwnExtentsEnv(OwnViewEnv):
    """Looks one cell further left than MiniGrid would: its own ``get_view_exts``."""

    gen_obs = MiniGridEnv.gen_obs

    def get_view_exts(self, agent_view_size: int | None = None) -> tuple[int, int, int, int]:
        top_x, top_y, bot_x, bot_y = super().get_view_exts(agent_view_size)
        return top_x - 1, top_y, bot_x - 1, bot_y


class OwnGridViewEnv(OwnViewEnv):
    """Makes the view grid its own way (everything hidden but the agent's cell)."""

    gen_obs = MiniGridEnv.gen_obs

    def gen_obs_grid(self, agent_view_size: int | None = None) -> tuple[Grid, np.ndarray]:
        grid, visible = super().gen_obs_grid(agent_view_size)
        visible[:] = False
        visible[grid.width // 2, grid.height - 1] = True
        return grid, visible


@pytest.mark.parametrize("env_class", [OwnViewEnv, OwnExtentsEnv, OwnGridViewEnv])
def test_envs_that_make_their_own_view_keep_it(env_class):
    env = env_class()
    assert not use_fast_observations(env)
    assert "gen_obs" not in vars(env)
    env.reset(seed=0)
    for _ in range(5):
        env.step(1)
        np.testing.assert_array_equal(env.gen_obs()["image"], env_class.gen_obs(env)["image"])
    if env_class is OwnGridViewEnv:  # the fast view would not be its view
        assert not np.array_equal(env.gen_obs()["image"], fast_gen_obs(env)["image"])


def test_an_env_patched_on_the_instance_keeps_its_patch():
    env = gym.make("BabyAI-GoToRedBall-v0").unwrapped
    env.get_view_exts = lambda size=None: (0, 0, 7, 7)  # always the world's corner
    assert not use_fast_observations(env)
    assert not use_fast_observations(gym.make("CartPole-v1"))


def test_a_grid_of_another_kind_falls_back_to_minigrids_view():
    from minigrid.core.world_object import Lava

    class MarkedGrid(Grid):
        """A grid that reads as lava everywhere through its own ``get``."""

        def get(self, i: int, j: int) -> Any:
            return Lava()

    env = gym.make("BabyAI-GoToRedBall-v0")
    assert use_fast_observations(env)
    assert use_fast_observations(env)  # a second call is harmless
    env.reset(seed=0)
    base = env.unwrapped
    lava = 9  # OBJECT_TO_IDX["lava"]; GoToRedBall has none
    marked = MarkedGrid(base.grid.width, base.grid.height)
    marked.grid = list(base.grid.grid)
    base.grid = marked
    image = base.gen_obs()["image"]
    np.testing.assert_array_equal(image, MiniGridEnv.gen_obs(base)["image"])
    # All lava but the agent's cell and the world's edge (out of the world reads as wall).
    assert np.isin(image[..., 0], [lava, 2]).sum() == image.shape[0] * image.shape[1] - 1
    assert (image[..., 0] == lava).any()


def test_a_fast_env_copies_and_pickles():
    env = make_minigrid_env("BabyAI-GoToRedBall-v0")
    env.reset(seed=0)
    for clone in (copy.deepcopy(env), pickle.loads(pickle.dumps(env))):
        base = clone.unwrapped
        assert base.gen_obs.env is base  # the clone's own, not the original's
        np.testing.assert_array_equal(base.gen_obs()["image"], MiniGridEnv.gen_obs(base)["image"])
        clone.step(2)
