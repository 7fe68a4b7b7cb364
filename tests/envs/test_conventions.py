"""The conventions users' tools read (Gymnasium, SB3, RL Zoo): ``is_success`` in infos,
``render()`` None without a render mode, ``spec.max_episode_steps``, and no stepping
past an episode's end without ``reset()``."""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.monitor import Monitor

import envs
from envs.sb3 import SB3VecEnv

PROBE = "mbm/ModalityProbe-v0"
NAVIGATION = tuple(env_id for env_id in envs.ENV_IDS if env_id != PROBE)
CASES: list[tuple[str, dict[str, Any]]] = [(env_id, {}) for env_id in NAVIGATION] + [
    (PROBE, {"cue": cue}) for cue in ("image", "text", "audio")
]
CASE_IDS = [f"{env_id.split('/')[1]}{kw.get('cue', '')}" for env_id, kw in CASES]
TURN_LEFT = 0  # never ends a navigation episode: only truncation does


def wrong_action(env: envs.GameEnv) -> int:
    """An action that ends the episode without success (the probe's wrong answer)."""
    return (env.expert_action() + 1) % int(env.action_space.n)


def play_expert(env: gym.Env[Any, Any]) -> tuple[float, bool, bool, dict[str, Any]]:
    """Play the unwrapped game's expert to the episode's end: last reward, flags, info."""
    game_env = env.unwrapped
    assert isinstance(game_env, envs.GameEnv)
    for _ in range(game_env.game.max_steps):
        _, reward, terminated, truncated, info = env.step(game_env.expert_action())
        if terminated or truncated:
            return float(reward), terminated, truncated, info
    raise AssertionError("the expert's episode outlived max_steps")


# -- is_success ----------------------------------------------------------------------
@pytest.mark.parametrize(("env_id", "kwargs"), CASES, ids=CASE_IDS)
def test_single_env_reports_is_success(env_id: str, kwargs: dict[str, Any]) -> None:
    env = envs.make(env_id, **kwargs)
    _, info = env.reset(seed=0)
    assert info["is_success"] is False and info["success"] is False
    reward, terminated, _, info = play_expert(env)
    assert terminated and reward > 0
    assert info["is_success"] is True and info["success"] is True

    # Episodes that end without success: a wrong answer, or the time limit.
    env.reset(seed=1)
    if env_id == PROBE:
        *_, terminated, truncated, info = env.step(wrong_action(env))
    else:
        env = envs.make(env_id, max_steps=3, **kwargs)
        env.reset(seed=1)
        for _ in range(3):
            *_, terminated, truncated, info = env.step(TURN_LEFT)
        assert truncated
    assert terminated or truncated
    assert info["is_success"] is False and info["success"] is False


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_sb3_monitor_fills_the_success_column(env_id: str) -> None:
    """What SB3 and RL Zoo log: ``Monitor(info_keywords=("is_success",))``."""
    env = Monitor(gym.make(env_id), info_keywords=("is_success",))
    env.reset(seed=0)
    *_, info = play_expert(env)
    assert info["episode"]["is_success"] is True
    env.close()


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_vector_env_infos_carry_is_success(env_id: str, mode: AutoresetMode) -> None:
    vec = envs.make_vec(env_id, 6, autoreset_mode=mode)
    _, info = vec.reset(seed=0)
    assert info["_is_success"].all() and not info["is_success"].any()
    ended_with_success = 0
    for _ in range(60):
        *_, terminated, truncated, info = vec.step(vec.expert_actions())
        np.testing.assert_array_equal(info["is_success"], info["success"])
        assert info["is_success"].dtype == np.bool_ and info["_is_success"].all()
        if mode is AutoresetMode.SAME_STEP and "final_info" in info:
            final = info["final_info"]
            np.testing.assert_array_equal(final["is_success"], final["success"])
            ended_with_success += int(final["is_success"][info["_final_info"]].sum())
        elif mode is AutoresetMode.NEXT_STEP:
            ended_with_success += int(info["is_success"][terminated | truncated].sum())
    assert ended_with_success > 0


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_sb3_vec_env_reports_is_success_at_episode_ends(env_id: str) -> None:
    venv = SB3VecEnv(env_id, 4)
    venv.seed(0)
    venv.reset()
    ends = successes = 0
    for _ in range(60):
        _, reward, dones, infos = venv.step(venv.expert_actions())
        for i, info in enumerate(infos):
            if dones[i]:
                ends += 1
                assert isinstance(info["is_success"], bool)
                assert info["is_success"] == (reward[i] > 0)
                successes += info["is_success"]
            else:
                assert "is_success" not in info
    assert ends > 0 and successes == ends  # the expert always succeeds


# -- render ----------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_render_returns_none_without_a_render_mode(env_id: str) -> None:
    env = envs.make(env_id)
    env.reset(seed=0)
    assert env.render_mode is None and env.render() is None
    vec = envs.make_vec(env_id, 2)
    vec.reset(seed=0)
    assert vec.render() is None
    env = envs.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3


# -- spec.max_episode_steps ------------------------------------------------------------
@pytest.mark.parametrize(
    ("env_id", "kwargs", "limit"),
    [
        ("mbm/GoToObject-v0", {}, 128),  # 2 * grid_size**2, grid_size 8
        ("mbm/FindSound-v0", {}, 128),
        ("mbm/SoundMaze-v0", {}, 162),  # grid_size 9
        (PROBE, {}, 1),
        ("mbm/GoToObject-v0", {"grid_size": 12}, 288),
        ("mbm/SoundMaze-v0", {"max_steps": 20}, 20),
        ("mbm/FindSound-v0", {"grid_size": 5, "max_steps": 7}, 7),
    ],
)
def test_spec_max_episode_steps_is_the_games_own_limit(
    env_id: str, kwargs: dict[str, Any], limit: int
) -> None:
    env = gym.make(env_id, **kwargs)
    assert env.spec is not None and env.spec.max_episode_steps == limit
    assert env.unwrapped.spec.max_episode_steps == limit
    assert env.unwrapped.game.max_steps == limit
    # The game truncates itself: gym.make adds no TimeLimit that could disagree with it.
    wrapper: Any = env
    while wrapper is not env.unwrapped:
        assert not isinstance(wrapper, gym.wrappers.TimeLimit)
        wrapper = wrapper.env
    # And the episode does end exactly there.
    env.reset(seed=0)
    steps, done = 0, False
    while not done:
        *_, terminated, truncated, _ = env.step(TURN_LEFT if env_id != PROBE else 0)
        steps += 1
        done = terminated or truncated
    assert steps == limit
    assert truncated or env_id == PROBE


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_registration_adds_no_time_limit(env_id: str) -> None:
    """Why the limit is per env, not registered: a registered one would make gym.make add a
    TimeLimit of the default configuration's length to every configuration."""
    assert gym.spec(env_id).max_episode_steps is None


# -- stepping past the end -------------------------------------------------------------
def assert_reset_needed(env: gym.Env[Any, Any], env_id: str, action: int) -> None:
    with pytest.raises(gym.error.ResetNeeded, match=rf"{re.escape(env_id)}.*call reset\(\)"):
        env.step(action)


@pytest.mark.parametrize(("env_id", "kwargs"), CASES, ids=CASE_IDS)
def test_step_after_termination_raises(env_id: str, kwargs: dict[str, Any]) -> None:
    """Issue 15: stepping on after success paid the success reward again on every step."""
    env = gym.make(env_id, **kwargs)
    env.reset(seed=0)
    reward, terminated, _, _ = play_expert(env)
    assert terminated and reward > 0
    game_env = env.unwrapped
    for _ in range(2):  # it keeps refusing, and the episode stays as it ended
        assert_reset_needed(env, env_id, game_env.expert_action())
    # A new episode steps normally.
    env.reset(seed=1)
    env.step(game_env.expert_action())


@pytest.mark.parametrize(("env_id", "kwargs"), CASES, ids=CASE_IDS)
def test_step_after_a_failed_ending_or_truncation_raises(
    env_id: str, kwargs: dict[str, Any]
) -> None:
    if env_id == PROBE:  # the probe never truncates; a wrong answer ends it
        env = envs.make(env_id, **kwargs)
        env.reset(seed=0)
        *_, terminated, _, _ = env.step(wrong_action(env))
        assert terminated
    else:
        env = envs.make(env_id, max_steps=2, **kwargs)
        env.reset(seed=0)
        env.step(TURN_LEFT)
        *_, truncated, _ = env.step(TURN_LEFT)
        assert truncated
    assert_reset_needed(env, env_id, 0)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_step_before_the_first_reset_raises(env_id: str) -> None:
    env = envs.make(env_id)
    with pytest.raises(gym.error.ResetNeeded, match=r"call reset\(\) before the first step"):
        env.step(0)


def test_reset_needed_names_the_class_when_made_directly() -> None:
    from envs.games.goto_object import GoToObjectEnv

    env = GoToObjectEnv(max_steps=1)
    env.reset(seed=0)
    env.step(TURN_LEFT)
    with pytest.raises(gym.error.ResetNeeded, match=r"GoToObjectEnv: step\(\) called after"):
        env.step(TURN_LEFT)


def test_vector_env_still_autoresets() -> None:
    """Only the single env refuses: the vector env resets finished worlds itself."""
    vec = envs.make_vec(PROBE, 3)
    vec.reset(seed=0)
    for t in range(4):  # next_step autoreset: every other step only resets the worlds
        *_, terminated, _, _ = vec.step(np.zeros(3, np.int64))
        assert terminated.all() == (t % 2 == 0)
