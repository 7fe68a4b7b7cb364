"""The example game of ``docs/custom_envs.md`` (``examples/lift.py``): a game on ``envs/core``.

It must pass the checks the guide tells a game author to run (Gymnasium's
``check_env``, determinism, the single env = the N = 1 view of the batched
game, an expert that always wins) and it must train: ``mbm-agent train
examples.lift:Lift-v0`` (the generic ``module:EnvId`` path, in process here)
learns it far above chance, and needs both of its senses to do so.

Budget: 8,192 steps of PPO (16 envs x 16 steps per rollout) reached 100%
greedy success on 200 held-out episodes for training seeds 0 and 1 (0.98 after
6,144 steps for seed 0; chance is 1/4); ~15 s on 2 shared CPU cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mbm_agent.evaluation import evaluate_agent
from mbm_agent.training.agent import load_agent
from mbm_agent.training.config import resolve_config
from mbm_agent.training.trainer import train

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # the example module, as `mbm-agent` finds it from the repo root
    sys.path.append(str(REPO))

from examples.lift import DOWN, OPEN, UP, LiftGame  # noqa: E402

ENV_ID = "examples.lift:Lift-v0"


def _play(env: gym.Env, policy, seed: int) -> tuple[list[dict[str, np.ndarray]], dict]:
    obs, info = env.reset(seed=seed)
    seen = [obs]
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(policy(env))
        seen.append(obs)
        done = terminated or truncated
    return seen, info


def test_the_example_passes_the_checks_of_the_guide() -> None:
    env = gym.make("Lift-v0")
    check_env(env.unwrapped, skip_render_check=True)
    assert env.spec is not None and env.spec.max_episode_steps == 8
    env.reset(seed=0)
    assert env.render() is None  # no render_mode given
    # Determinism: the same seed replays the same episode; another seed another one.
    expert = lambda e: e.unwrapped.expert_action()  # noqa: E731
    a, info_a = _play(env, expert, seed=5)
    b, info_b = _play(env, expert, seed=5)
    assert len(a) == len(b) and info_a == info_b
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    starts = {
        env.reset(seed=s)[1]["instruction"] + str(env.unwrapped.game.floor) for s in range(20)
    }
    assert len(starts) > 4
    # The expert always wins, by the shortest route.
    for seed in range(50):
        env.reset(seed=seed)
        game = env.unwrapped.game
        shortest = abs(int(game.floor[0]) - int(game.target[0])) + 1
        seen, info = _play(env, expert, seed=seed)
        assert info["is_success"] and len(seen) - 1 == shortest
    # Opening at another floor ends the episode without reward or success.
    env.reset(seed=0)
    game = env.unwrapped.game
    game.floor[0] = (game.target[0] + 1) % game.n_floors
    _, reward, terminated, _, info = env.step(OPEN)
    assert terminated and reward == 0.0 and not info["is_success"]


def test_the_single_env_is_the_n1_view_of_the_batched_game() -> None:
    vec = gym.make_vec("Lift-v0", num_envs=6, vectorization_mode="vector_entry_point")
    single = gym.make("Lift-v0")
    obs, _ = vec.reset(seed=100)
    actions = np.array([UP, DOWN, OPEN, UP, UP, DOWN])
    vec_next, vec_reward, *_ = vec.step(actions)
    for i in range(6):
        one, _ = single.reset(seed=100 + i)  # slot i == single env reset(seed + i)
        for key in one:
            np.testing.assert_array_equal(one[key], obs[key][i])
        nxt, reward, *_ = single.step(int(actions[i]))
        assert reward == vec_reward[i]
        for key in nxt:
            np.testing.assert_array_equal(nxt[key], vec_next[key][i])


def test_the_frame_shows_the_lift_and_the_words_name_the_floor() -> None:
    game = LiftGame(1, shuffle=True)
    game.reset_worlds(np.zeros(1, dtype=np.intp), np.array([7], dtype=np.uint64))
    before = game.observe()
    target_colour = game.colours[0, game.target[0]]
    words = game.vocabulary.decode(before["text"][0])
    assert ["red", "green", "blue", "yellow", "purple", "orange"][target_colour] in words.split()
    game.step(np.array([UP if game.floor[0] == 0 else DOWN]))
    after = game.observe()
    assert not np.array_equal(before["image"], after["image"])  # the lift moved
    np.testing.assert_array_equal(before["text"], after["text"])
    with pytest.raises(ValueError, match="shuffle"):
        LiftGame(1, shuffle="yes")  # type: ignore[arg-type]


def test_the_example_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "lift.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and all("success True" in line for line in lines), lines


@pytest.mark.slow
def test_mbm_agent_trains_the_example_game(tmp_path: Path) -> None:
    cfg = resolve_config(
        ENV_ID,
        overrides={
            "steps": 8192,
            "n_envs": 16,
            "seed": 0,
            "runs_dir": str(tmp_path),
            "fusion": "concat",
            "algo_kwargs": {
                "n_steps": 16,
                "batch_size": 128,
                "n_epochs": 4,
                "learning_rate": 1e-3,
                "ent_coef": 0.01,
            },
            "eval_every": 0,
            "final_eval_episodes": 200,
            "checkpoint_every": 0,
            "gif_episodes": 0,
        },
    )
    result = train(cfg, progress=False)
    run = Path(result.run_dir)
    report = json.loads((run / "eval.json").read_text())
    assert report["success"]["n"] == 200
    assert report["success"]["rate"] >= 0.9, report["success"]  # chance: 0.25
    # Each sense is needed: without the words or the frame it is back near chance.
    agent = load_agent(run)
    for sense in ("text", "image"):
        masked = evaluate_agent(agent, ENV_ID, {}, episodes=200, drop_modalities=[sense])
        assert masked["success"]["rate"] <= 0.6, (sense, masked["success"])
