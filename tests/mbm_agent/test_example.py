from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import pytest
from gymnasium.vector import AutoresetMode

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cleanrl_ppo.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cleanrl_ppo_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cue_env_passes_the_gymnasium_checker(example):
    from gymnasium.utils.env_checker import check_env

    check_env(example.CueEnv(), skip_render_check=True)


@pytest.mark.slow
def test_hand_written_ppo_learns_to_read_see_and_hear(example):
    result = example.train(4096, num_envs=16, num_steps=16, seed=0)
    assert result["first_reward_rate"] < 0.4  # chance is 0.25
    # Above 2/3 only if the cue is read from at least two modalities.
    assert result["reward_rate"] > 0.6, result


@pytest.mark.parametrize("fusion", ["film", "attention"])
def test_same_step_autoreset_and_other_fusions_run(example, fusion):
    def make_envs(n: int, seed: int) -> gym.vector.VectorEnv:
        return gym.vector.SyncVectorEnv(
            [lambda: example.CueEnv(episode_len=3) for _ in range(n)],
            autoreset_mode=AutoresetMode.SAME_STEP,
        )

    result = example.train(64, num_envs=4, num_steps=8, fusion=fusion, make_envs=make_envs)
    assert result["updates"] == 2
    assert all(math.isfinite(v) for v in result.values())
