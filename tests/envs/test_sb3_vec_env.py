"""The SB3 adapter over a batched game steps exactly as SB3's DummyVecEnv of single envs.

Same seeds, same actions: observations, rewards, dones and the infos SB3 reads at
episode ends (``terminal_observation``, ``TimeLimit.truncated``, ``is_success``)
match step for step, across terminations (the expert reaches the goal),
truncations (a short time limit) and the automatic resets that follow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

import envs
from envs.sb3 import SB3VecEnv

N_ENVS = 4
STEPS = 60
SEED = 11

#: Short time limits, so that random worlds are truncated within the test.
GAMES: dict[str, dict[str, Any]] = {
    "mbm/GoToObject-v0": {"max_steps": 9},
    "mbm/FindSound-v0": {"max_steps": 9},
    "mbm/SoundMaze-v0": {"max_steps": 9},
    "mbm/ModalityProbe-v0": {},
}


def _assert_obs_equal(
    ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], where: str
) -> None:
    assert ours.keys() == theirs.keys(), where
    for key in ours:
        a, b = np.asarray(ours[key]), np.asarray(theirs[key])
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {key}"
        np.testing.assert_array_equal(a, b, err_msg=f"{where}: {key}")


@pytest.mark.parametrize("env_id", sorted(GAMES))
def test_sb3_vec_env_steps_as_a_dummy_vec_env_of_single_envs(env_id: str) -> None:
    kwargs = GAMES[env_id]
    ours = SB3VecEnv(env_id, N_ENVS, **kwargs)
    theirs = DummyVecEnv([lambda: envs.make(env_id, **kwargs) for _ in range(N_ENVS)])
    ours.seed(SEED)
    theirs.seed(SEED)
    _assert_obs_equal(ours.reset(), theirs.reset(), "reset")

    rng = np.random.default_rng(0)
    n_actions = int(ours.action_space.n)
    ends = {"terminated": 0, "truncated": 0, "success": 0}
    for t in range(STEPS):
        # World 0 follows the expert (it succeeds), the others act at random (they time out).
        actions = rng.integers(0, n_actions, N_ENVS)
        actions[0] = ours.expert_actions()[0]
        obs_a, rew_a, done_a, infos_a = ours.step(actions)
        obs_b, rew_b, done_b, infos_b = theirs.step(actions)
        where = f"step {t}"
        _assert_obs_equal(obs_a, obs_b, where)
        np.testing.assert_array_equal(rew_a, rew_b, err_msg=where)
        np.testing.assert_array_equal(done_a, done_b, err_msg=where)
        for i in range(N_ENVS):
            if not done_b[i]:
                assert "terminal_observation" not in infos_a[i], f"{where}, world {i}"
                continue
            a, b = infos_a[i], infos_b[i]
            _assert_obs_equal(a["terminal_observation"], b["terminal_observation"], where)
            assert a["TimeLimit.truncated"] == b["TimeLimit.truncated"], f"{where}, world {i}"
            assert a["is_success"] == b["is_success"], f"{where}, world {i}"
            ends["truncated" if b["TimeLimit.truncated"] else "terminated"] += 1
            ends["success"] += int(b["is_success"])
    # The comparison saw every kind of episode end.
    assert ends["terminated"] > 0 and ends["success"] > 0, ends
    if env_id != "mbm/ModalityProbe-v0":  # one-step episodes always terminate
        assert ends["truncated"] > 0, ends
