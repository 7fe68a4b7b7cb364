"""WorkerGroupVecEnv: envs in a few worker processes give what one DummyVecEnv gives."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from mbm_agent.sb3.vec_env import (
    EnvWorkerError,
    RaiseWorkerErrors,
    ReportErrors,
    WorkerGroupVecEnv,
)
from mbm_agent.training.envs import async_start_method

N_ENVS = 5


class Walk(gym.Env[dict[str, Any], int]):
    """A seeded random walk: a frame, a position; episodes of seed-dependent length.

    ``fail_at``: the step (counted over the env's life) on which it raises.
    """

    def __init__(self, fail_at: int = 0) -> None:
        self.observation_space = spaces.Dict(
            {
                "frame": spaces.Box(0, 255, (4, 4, 3), np.uint8),
                "pos": spaces.Box(-100.0, 100.0, (2,), np.float32),
            }
        )
        self.action_space = spaces.Discrete(4)
        self.fail_at = fail_at
        self.steps = 0
        self.tag = "walk"

    def _obs(self) -> dict[str, Any]:
        frame = np.full((4, 4, 3), int(self.t * 7 + self.length) % 256, np.uint8)
        return {"frame": frame, "pos": self.pos.copy()}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        self.length = int(self.np_random.integers(2, 6))
        self.pos = self.np_random.normal(size=2).astype(np.float32)
        return self._obs(), {"length": self.length}

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        self.steps += 1
        if self.steps == self.fail_at:
            raise OSError("emulator crashed")
        self.t += 1
        self.pos += np.float32(action - 1.5)
        reward = float(self.np_random.normal())
        return self._obs(), reward, self.t >= self.length, False, {"t": self.t}

    def double(self, x: int) -> int:
        return 2 * x


def _walks() -> list[Any]:
    return [Walk] * N_ENVS


@pytest.fixture(scope="module")
def pair():
    """The same 5 envs in 2 workers and in one DummyVecEnv."""
    grouped = WorkerGroupVecEnv(_walks(), 2, async_start_method())
    plain = DummyVecEnv(_walks())
    yield grouped, plain
    grouped.close()
    plain.close()


def _assert_same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    else:
        assert a == b


def test_the_same_episodes_as_one_dummy_vec_env(pair):
    grouped, plain = pair
    assert [len(g) for g in grouped.groups] == [2, 3] or [len(g) for g in grouped.groups] == [3, 2]
    assert grouped.num_envs == N_ENVS and grouped.observation_space == plain.observation_space
    for venv in pair:
        venv.seed(11)
    _assert_same(grouped.reset(), plain.reset())
    _assert_same(grouped.reset_infos, plain.reset_infos)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(25):
        actions = rng.integers(0, 4, N_ENVS)
        for venv in pair:
            venv.step_async(actions)
        (obs_a, rew_a, done_a, info_a), (obs_b, rew_b, done_b, info_b) = (
            grouped.step_wait(),
            plain.step_wait(),
        )
        _assert_same(obs_a, obs_b)
        np.testing.assert_array_equal(rew_a, rew_b)
        np.testing.assert_array_equal(done_a, done_b)
        assert len(info_a) == N_ENVS
        for a, b in zip(info_a, info_b, strict=True):
            _assert_same(a, b)  # terminal_observation included
        _assert_same(grouped.reset_infos, plain.reset_infos)
        ends += int(done_a.sum())
    assert ends >= N_ENVS  # every env ran through at least one auto-reset


def test_attributes_and_methods_reach_the_envs_they_name(pair):
    grouped, _ = pair
    assert grouped.get_attr("tag") == ["walk"] * N_ENVS
    grouped.set_attr("tag", "seen", indices=[1, 3])
    assert grouped.get_attr("tag") == ["walk", "seen", "walk", "seen", "walk"]
    assert grouped.get_attr("tag", indices=[4, 1]) == ["walk", "seen"]
    assert grouped.env_method("double", 21, indices=[2, 4]) == [42, 42]
    assert grouped.get_attr("tag", indices=-1) == grouped.get_attr("tag", indices=4)
    with pytest.raises(IndexError, match="out of range for 5 envs"):
        grouped.get_attr("tag", indices=[5])
    assert grouped.env_is_wrapped(ReportErrors) == [False] * N_ENVS
    with pytest.warns(UserWarning, match="render mode is None"):
        assert grouped.get_images() == [None] * N_ENVS  # no render mode given


def test_an_error_in_a_command_comes_back_as_itself_and_the_workers_stay_up(pair):
    grouped, _ = pair
    assert not grouped.has_attr("no_such_attribute")  # SB3's has_attr catches AttributeError
    with pytest.raises(AttributeError, match="no_such_attribute") as info:
        grouped.get_attr("no_such_attribute", indices=[3])
    assert any("worker process 1" in note for note in getattr(info.value, "__notes__", []))
    with pytest.raises(TypeError):
        grouped.env_method("double", indices=[0])  # a missing argument
    assert grouped.env_method("double", 1) == [2] * N_ENVS  # every worker still answers


def test_an_env_error_in_a_later_worker_names_that_env():
    fns = [lambda: ReportErrors(Walk())] * 3 + [lambda: ReportErrors(Walk(fail_at=2))]
    venv = RaiseWorkerErrors(WorkerGroupVecEnv(fns, 2, async_start_method()), "my_pkg:Walk-v0")
    try:
        venv.reset()
        venv.step(np.zeros(4, dtype=np.int64))
        with pytest.raises(EnvWorkerError, match=r"OSError: emulator crashed in a step of env 3"):
            venv.step(np.zeros(4, dtype=np.int64))
    finally:
        venv.close()


def _unmakeable() -> gym.Env[Any, Any]:
    raise FileNotFoundError("no ROM for this game")


def test_envs_that_cannot_be_made_fail_at_construction_with_their_own_error():
    with pytest.raises(FileNotFoundError, match="no ROM for this game"):
        WorkerGroupVecEnv([Walk, Walk, _unmakeable], 2, async_start_method())


def test_worker_counts_outside_one_to_n_envs_are_refused():
    for workers in (0, N_ENVS + 1):
        with pytest.raises(ValueError, match="n_workers must be between 1 and the 5 envs"):
            WorkerGroupVecEnv(_walks(), workers, async_start_method())


def test_a_worker_that_dies_is_named_and_the_others_are_stopped():
    venv = WorkerGroupVecEnv(_walks(), 2, async_start_method())
    venv.reset()
    venv.processes[1].kill()  # as a segfault in an env's native code would end it
    venv.processes[1].join()
    with pytest.raises(
        EnvWorkerError, match=r"Worker process 1 \(envs 2-4\) ended with exit code -9"
    ):
        venv.step(np.zeros(N_ENVS, dtype=np.int64))
    assert venv.closed and not any(p.is_alive() for p in venv.processes)
    venv.close()  # closing again is harmless
