"""Seeding: same seed, same episodes; vector slot i is the single env seeded s + i."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import envs

CASES: list[tuple[str, dict[str, Any]]] = [
    ("mbm/GoToObject-v0", {}),
    # A short time limit so truncation (not only termination) is exercised.
    ("mbm/GoToObject-v0", {"max_steps": 9}),
    ("mbm/FindSound-v0", {}),
    ("mbm/SoundMaze-v0", {"max_steps": 25}),
    ("mbm/ModalityProbe-v0", {"cue": "image"}),
    ("mbm/ModalityProbe-v0", {"cue": "audio"}),
]
CASE_IDS = [f"{e.split('/')[1]}-{'-'.join(f'{k}{v}' for k, v in kw.items())}" for e, kw in CASES]
EXPERT_PROB = 0.7


def mixed_actions(expert: np.ndarray, n_actions: int, rng: np.random.Generator) -> np.ndarray:
    """The expert's action with probability EXPERT_PROB, else a uniform random one."""
    random = rng.integers(0, n_actions, size=expert.shape)
    return np.where(rng.random(expert.shape) < EXPERT_PROB, expert, random).astype(np.int64)


def assert_obs_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray], where: str) -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        assert a[key].dtype == b[key].dtype, f"{where}: {key} dtype"
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{where}: {key}")


def slot(obs: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in obs.items()}


def run_single(env_id: str, kwargs: dict[str, Any], seed: int, episodes: int) -> list[Any]:
    env = envs.make(env_id, **kwargs)
    rng = np.random.default_rng(123)
    record: list[Any] = []
    obs, info = env.reset(seed=seed)
    record.append((obs, info))
    for _ in range(episodes):
        done = False
        while not done:
            expert = np.array([env.expert_action()])
            action = int(mixed_actions(expert, env.action_space.n, rng)[0])
            obs, reward, terminated, truncated, info = env.step(action)
            record.append((obs, reward, terminated, truncated, info))
            done = terminated or truncated
        obs, info = env.reset()
        record.append((obs, info))
    return record


@pytest.mark.parametrize(("env_id", "kwargs"), CASES, ids=CASE_IDS)
def test_single_env_same_seed_same_episodes(env_id: str, kwargs: dict[str, Any]) -> None:
    first = run_single(env_id, kwargs, seed=7, episodes=4)
    second = run_single(env_id, kwargs, seed=7, episodes=4)
    assert len(first) == len(second)
    for t, (a, b) in enumerate(zip(first, second, strict=True)):
        assert len(a) == len(b)
        assert_obs_equal(a[0], b[0], f"record {t}")
        assert a[1:] == b[1:], f"record {t}"  # reward, terminated, truncated, info
    other = run_single(env_id, kwargs, seed=8, episodes=1)
    assert any(not np.array_equal(first[0][0][k], other[0][0][k]) for k in first[0][0]), (
        "seeds 7 and 8 gave the same first observation"
    )


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize(("env_id", "kwargs"), CASES, ids=CASE_IDS)
def test_vector_slot_matches_single_env(
    env_id: str, kwargs: dict[str, Any], mode: AutoresetMode
) -> None:
    """Slot i of the vector env seeded s is the single env reset(seed=s + i),
    then reset() without a seed after each episode, under both autoreset modes."""
    n, seed, min_episodes = 3, 100, 3
    vec = envs.make_vec(env_id, n, autoreset_mode=mode, **kwargs)
    singles = [envs.make(env_id, **kwargs) for _ in range(n)]
    rng = np.random.default_rng(0)

    obs, info = vec.reset(seed=seed)
    for i, env in enumerate(singles):
        s_obs, s_info = env.reset(seed=seed + i)
        assert_obs_equal(slot(obs, i), s_obs, f"reset slot {i}")
        assert info["instruction"][i] == s_info["instruction"]

    pending = np.zeros(n, dtype=bool)  # next_step: the next vector step resets slot i
    episodes = np.zeros(n, dtype=int)
    final_obs_wrong: list[str] = []
    for t in range(400):
        expert = vec.expert_actions()
        for i, env in enumerate(singles):
            if not pending[i]:
                assert expert[i] == env.expert_action(), f"step {t} slot {i}: expert differs"
        actions = mixed_actions(expert, vec.single_action_space.n, rng)
        obs, reward, terminated, truncated, info = vec.step(actions)
        for i, env in enumerate(singles):
            where = f"step {t} slot {i}"
            if pending[i]:  # next_step: this step only resets the world
                s_obs, s_info = env.reset()
                assert reward[i] == 0.0 and not terminated[i] and not truncated[i], where
                assert_obs_equal(slot(obs, i), s_obs, where + " (autoreset)")
                assert info["instruction"][i] == s_info["instruction"], where
                assert not info["success"][i] and not s_info["success"], where
                pending[i] = False
                continue
            s_obs, s_rew, s_term, s_trunc, s_info = env.step(int(actions[i]))
            assert (reward[i], terminated[i], truncated[i]) == (s_rew, s_term, s_trunc), where
            assert reward[i].dtype == np.float32
            done = s_term or s_trunc
            if done:
                episodes[i] += 1
            if mode is AutoresetMode.NEXT_STEP or not done:
                assert_obs_equal(slot(obs, i), s_obs, where)
                assert info["instruction"][i] == s_info["instruction"], where
                assert info["success"][i] == s_info["success"], where
                pending[i] = done and mode is AutoresetMode.NEXT_STEP
                continue
            # same_step: the terminal step's obs/info are in final_obs/final_info
            # and the returned obs is already the next episode's first.
            assert info["_final_obs"][i] and info["_final_info"][i], where
            assert info["final_info"]["instruction"][i] == s_info["instruction"], where
            assert info["final_info"]["success"][i] == s_info["success"], where
            final = info["final_obs"][i]
            if not all(np.array_equal(final[k], s_obs[k]) for k in s_obs):
                final_obs_wrong.append(where)
            s_obs, s_info = env.reset()
            assert_obs_equal(slot(obs, i), s_obs, where + " (autoreset)")
            assert info["instruction"][i] == s_info["instruction"], where
        if mode is AutoresetMode.SAME_STEP and "_final_obs" in info:
            done_now = terminated | truncated
            np.testing.assert_array_equal(info["_final_obs"], done_now)
        if episodes.min() >= min_episodes and not pending.any():
            break
    assert episodes.min() >= min_episodes, f"only {episodes} episodes in 400 steps"
    assert not final_obs_wrong, (
        "info['final_obs'][i] is not the terminal observation the single env returned "
        f"({len(final_obs_wrong)} episode ends, first at {final_obs_wrong[0]})"
    )


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_same_step_final_obs_is_the_terminal_observation(env_id: str) -> None:
    """Minimal form: a 'same_step' vector env keeps the terminal obs in final_obs,
    distinct from the reset obs it returns (and equal to what next_step returns)."""
    kwargs = {"cue": "text"} if "Probe" in env_id else {"max_steps": 1}
    nxt = envs.make_vec(env_id, 2, autoreset_mode=AutoresetMode.NEXT_STEP, **kwargs)
    same = envs.make_vec(env_id, 2, autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
    nxt.reset(seed=3)
    same.reset(seed=3)
    actions = np.zeros(2, dtype=np.int64)
    terminal, *_ = nxt.step(actions)
    fresh, _, terminated, truncated, info = same.step(actions)
    assert (terminated | truncated).all()
    for i in range(2):
        for key in terminal:
            np.testing.assert_array_equal(
                info["final_obs"][i][key], terminal[key][i], err_msg=f"slot {i} {key}"
            )
    # ... and the returned observation is the new episode's (text differs here).
    assert not all(np.array_equal(fresh[k], terminal[k]) for k in fresh)


@pytest.mark.parametrize("env_id", ["mbm/GoToObject-v0", "mbm/SoundMaze-v0"])
def test_vector_unseeded_reset_continues_seeded_streams(env_id: str) -> None:
    """After reset(seed=s), a plain reset() is reproducible and equals the single
    env's reset() after reset(seed=s + i), as Gymnasium's own vector envs do."""
    n = 3
    a, b = envs.make_vec(env_id, n), envs.make_vec(env_id, n)
    a.reset(seed=42)
    b.reset(seed=42)
    obs_a, _ = a.reset()
    obs_b, _ = b.reset()
    assert_obs_equal(obs_a, obs_b, "second unseeded reset")
    for i in range(n):
        env = envs.make(env_id)
        env.reset(seed=42 + i)
        s_obs, _ = env.reset()
        assert_obs_equal(slot(obs_a, i), s_obs, f"slot {i}")


def test_vector_reset_accepts_a_seed_list() -> None:
    vec = envs.make_vec("mbm/FindSound-v0", 3)
    obs, _ = vec.reset(seed=[5, 9, 1])
    for i, s in enumerate([5, 9, 1]):
        s_obs, _ = envs.make("mbm/FindSound-v0").reset(seed=s)
        assert_obs_equal(slot(obs, i), s_obs, f"slot {i}")
    with pytest.raises(ValueError, match=r"seed list must have num_envs=3 entries, got 2"):
        vec.reset(seed=[1, 2])


def test_slot_does_not_depend_on_batch_size() -> None:
    """World i's trajectory is its own: a batch of 2 and of 5 agree on slots 0, 1."""
    small = envs.make_vec("mbm/SoundMaze-v0", 2)
    big = envs.make_vec("mbm/SoundMaze-v0", 5)
    o_small, _ = small.reset(seed=17)
    o_big, _ = big.reset(seed=17)
    rng = np.random.default_rng(1)
    for t in range(30):
        assert_obs_equal(o_small, {k: v[:2] for k, v in o_big.items()}, f"step {t}")
        acts = rng.integers(0, 3, 5)
        o_small, *_ = small.step(acts[:2])
        o_big, *_ = big.step(acts)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_different_seeds_give_different_layouts(env_id: str) -> None:
    env = gym.make(env_id).unwrapped
    seen = set()
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        # Whole observation: an egocentric frame alone can repeat (two agents facing a bare wall).
        seen.add(b"".join(obs[k].tobytes() for k in sorted(obs)) + info["instruction"].encode())
    assert len(seen) == 20
    if env_id != "mbm/ModalityProbe-v0":
        layouts = set()
        for seed in range(20):
            env.reset(seed=seed)
            game = env.game
            layouts.add((game.agent_pos.tobytes(), game.obj_pos.tobytes(), game.walls.tobytes()))
        assert len(layouts) >= 19
