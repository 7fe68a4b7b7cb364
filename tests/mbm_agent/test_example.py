from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import pytest

import envs

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cleanrl_ppo.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cleanrl_ppo_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_runs_on_our_native_vector_env(example):
    venv = example.make_probe_vec_env(4, seed=0, cue="audio")
    assert isinstance(venv.unwrapped, envs.GameVectorEnv)
    assert venv.num_envs == 4


@pytest.mark.slow
@pytest.mark.parametrize("cue", ["image", "text", "audio"])
def test_hand_written_ppo_learns_each_cue(example, cue):
    result = example.train(
        4096,
        num_envs=16,
        num_steps=16,
        seed=0,
        make_envs=lambda n, s: example.make_probe_vec_env(n, s, cue),
    )
    assert result["first_reward_rate"] < 0.4  # chance is 0.25
    assert result["reward_rate"] > 0.9, result  # measured 0.99-1.0 for every cue


@pytest.mark.parametrize("fusion", ["film", "attention", "gated"])
def test_next_step_autoreset_and_other_fusions_run(example, fusion):
    def make_envs(n: int, seed: int) -> gym.vector.VectorEnv:
        venv = envs.make_vec("mbm/ModalityProbe-v0", n, cue="text", autoreset_mode="next_step")
        venv.reset(seed=seed)
        return venv

    result = example.train(64, num_envs=4, num_steps=8, fusion=fusion, make_envs=make_envs)
    assert result["updates"] == 2
    assert all(math.isfinite(v) for v in result.values())


def test_trains_any_game_and_reports_held_out_success(example):
    settings = example.game_settings("mbm/FindSound-v0")
    assert settings["encoder"].image_encoder == "cells"  # the game's own encoder
    settings.update(num_envs=4, num_steps=16, num_minibatches=2)
    points = []
    result = example.train(
        128,
        **settings,
        env_id="mbm/FindSound-v0",
        eval_every=64,
        eval_episodes=4,
        on_eval=points.append,
    )
    assert [p.steps for p in points] == [64, 128]
    assert all(0.0 <= p.greedy <= 1.0 and 0.0 <= p.sampled <= 1.0 for p in points)
    assert 0.0 < points[0].train_seconds < points[1].train_seconds <= result["train_seconds"]
    assert result["greedy_success"] == points[-1].greedy
    assert result["sampled_success"] == points[-1].sampled


def test_game_settings_read_rl_zoo_schedules_by_their_start(example, monkeypatch):
    from mbm_agent.training.config import resolve_config

    scheduled = resolve_config(
        "mbm/FindSound-v0",
        overrides={"algo_kwargs": {"learning_rate": "lin_0.002", "clip_range": "lin_0.3"}},
    )
    monkeypatch.setattr(example, "resolve_config", lambda env_id: scheduled)
    settings = example.game_settings("mbm/FindSound-v0")
    assert settings["learning_rate"] == pytest.approx(0.002)
    assert settings["clip_coef"] == pytest.approx(0.3)
