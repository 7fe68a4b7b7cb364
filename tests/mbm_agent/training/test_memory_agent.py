"""A policy with memory is played with its state carried: load_agent, eval, the GIF.

One small memory policy (a small GoToObject, weights drawn so that its state
changes its greedy actions) is saved as a run; every way of playing it must give
what a hand-rolled loop carrying the GRU state through each episode gives.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from memory_helpers import GAME, GAME_KWARGS, save_memory_run
from numpy.typing import NDArray

import envs
from mbm_agent import evaluation
from mbm_agent.cli import main
from mbm_agent.evaluation import EVAL_SEED_BASE, eval_seeds, evaluate_agent
from mbm_agent.sb3 import is_recurrent, memory_size
from mbm_agent.training import trainer
from mbm_agent.training.agent import Agent, load_agent
from mbm_agent.training.config import resolve_config

EPISODES = 6


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_memory_run(tmp_path_factory.mktemp("memory-run") / "run")


@pytest.fixture(scope="module")
def agent(run: Path) -> Agent:
    return load_agent(run)


def hand_rolled(agent: Agent, seeds: list[int], carry: bool = True) -> dict[str, list[Any]]:
    """Greedy episodes, one env each, the GRU state carried (or reset at every step)."""
    policy = agent.policy
    out: dict[str, list[Any]] = {"returns": [], "lengths": [], "successes": [], "actions": []}
    env = envs.make(GAME, **GAME_KWARGS)
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        state = policy.initial_state(1)  # type: ignore[operator]
        ret, actions, done, info = 0.0, [], False, {}
        while not done:
            batch = {k: torch.as_tensor(np.asarray(v)[None]) for k, v in obs.items()}
            start = torch.tensor([1.0 if not actions or not carry else 0.0])
            with torch.no_grad():
                log_probs, _, state = policy.step(batch, state, start)  # type: ignore[operator]
            actions.append(int(log_probs.argmax()))
            obs, reward, terminated, truncated, info = env.step(actions[-1])
            ret += float(reward)
            done = terminated or truncated
        out["returns"].append(ret)
        out["lengths"].append(len(actions))
        out["successes"].append(bool(info["is_success"]))
        out["actions"].append(actions)
    env.close()
    return out


class Recording:
    """A vector env that records the actions of each slot's first episode after each reset."""

    def __init__(self, venv: Any, log: list[list[int]]) -> None:
        self.venv = venv
        self.log = log
        self.num_envs = venv.num_envs
        self.batch: list[list[int]] = []

    def reset(self, **kwargs: Any) -> Any:
        self.batch = [[] for _ in range(self.num_envs)]
        self.done = np.zeros(self.num_envs, dtype=bool)
        self.log.extend(self.batch)
        return self.venv.reset(**kwargs)

    def step(self, actions: NDArray[Any]) -> Any:
        for i in np.flatnonzero(~self.done):
            self.batch[i].append(int(actions[i]))
        out = self.venv.step(actions)
        self.done |= np.asarray(out[2]) | np.asarray(out[3])
        return out

    def close(self) -> None:
        self.venv.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.venv, name)


@pytest.fixture
def played(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Per slot and batch, the actions evaluations play (padding slots included)."""
    log: list[list[int]] = []
    real = evaluation.make_eval_env
    monkeypatch.setattr(evaluation, "make_eval_env", lambda *a, **k: Recording(real(*a, **k), log))
    return log


def test_one_predicate_says_which_policies_carry_a_state() -> None:
    assert is_recurrent({"algo": "ppo", "policy_kwargs": {"memory": 128}})
    assert is_recurrent({"algo": "recurrent_ppo", "policy_kwargs": {}})
    for spec in (
        {"algo": "ppo", "policy_kwargs": {"net_arch": [64]}},
        {"algo": "ppo", "policy_kwargs": {"memory": 0}},
        {"algo": "ppo"},
        {"algo": "dqn", "policy_kwargs": {}},
        {"algo": "sac", "policy_kwargs": {"memory": 8}},  # unknown: nothing to carry
        {"algo": "ppo", "policy_kwargs": {"memory": True}},
        {"algo": "ppo", "policy_kwargs": "memory"},
    ):
        assert not is_recurrent(spec), spec
    assert memory_size({"policy_kwargs": {"memory": 16}}) == 16
    assert memory_size({"policy_kwargs": {"memory": "16"}}) == 0


def test_the_loaded_agent_is_recurrent(agent: Agent) -> None:
    assert agent.recurrent
    assert agent.policy.memory == 16  # type: ignore[attr-defined]


def test_the_actor_hands_predict_the_previous_state(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, NDArray[np.bool_]]] = []
    returned: list[tuple[NDArray[Any], ...]] = []
    real = agent.policy.predict

    def spy(obs: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False):
        calls.append((state, np.array(episode_start, dtype=bool)))
        out = real(obs, state, episode_start, deterministic)
        returned.append(out[1])
        return out

    monkeypatch.setattr(agent.policy, "predict", spy)
    venv = envs.make_vec(GAME, 2, **GAME_KWARGS)
    obs, _ = venv.reset(seed=[1, 2])
    actor = agent.actor()
    for _ in range(3):
        obs = venv.step(actor(obs))[0]
    actor.reset([1])
    obs = venv.step(actor(obs))[0]
    actor(obs, episode_start=np.array([True, False]))
    actor.reset()
    actor(obs)
    venv.close()

    assert calls[0][0] is None and calls[0][1].tolist() == [True, True]
    for i in (1, 2, 3, 4):
        assert calls[i][0] is returned[i - 1]  # the state the last call gave back
    assert [c[1].tolist() for c in calls[1:]] == [
        [False, False],
        [False, False],
        [False, True],  # reset([1])
        [True, False],  # episode_start=
        [True, True],  # reset()
    ]
    assert calls[5][0] is None
    assert returned[0][0].shape == (2, 16) and returned[0][0].dtype == np.float32


def test_evaluation_and_the_eval_command_carry_the_state(
    agent: Agent, run: Path, played: list[list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    seeds = eval_seeds(EPISODES)
    expected = hand_rolled(agent, seeds)
    # The test tells the two apart: this policy acts otherwise without its memory.
    assert hand_rolled(agent, seeds, carry=False)["actions"] != expected["actions"]

    report = evaluate_agent(agent, GAME, GAME_KWARGS, episodes=EPISODES, n_envs=4, baselines=False)
    assert report["episodes"]["seeds"] == seeds
    assert same_episodes(report["episodes"], expected)
    assert played[:4] + played[4:6] == expected["actions"]

    played.clear()
    assert main(["eval", str(run), "--episodes", str(EPISODES), "--n-envs", "4"]) == 0
    capsys.readouterr()
    written = json.loads((run / "eval.json").read_text())
    assert same_episodes(written["episodes"], expected)
    # Slots 0-3 of the first batch, then slots 0-1 of the second (2-3 repeat its seeds).
    assert played[:4] + played[4:6] == expected["actions"]


def same_episodes(got: Mapping[str, list[Any]], expected: Mapping[str, list[Any]]) -> bool:
    return (
        got["lengths"] == expected["lengths"]
        and got["successes"] == expected["successes"]
        and np.allclose(got["returns"], expected["returns"])
    )


def test_the_gif_plays_each_episode_with_its_state(
    agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    actions: list[int] = []
    real = trainer.make_single_env

    def recording(*args: Any, **kwargs: Any) -> Any:
        env, vocab = real(*args, **kwargs)
        step = env.step
        env.step = lambda action: actions.append(int(action)) or step(action)  # type: ignore[method-assign]
        return env, vocab

    monkeypatch.setattr(trainer, "make_single_env", recording)
    saved: list[list[NDArray[Any]]] = []
    monkeypatch.setattr(trainer, "save_gif", lambda frames, path: saved.append(frames) or path)
    cfg = resolve_config(GAME, overrides={"env_kwargs": GAME_KWARGS})
    trainer.record_gif(agent, cfg, tmp_path / "episodes.gif", 2)

    seeds = [EVAL_SEED_BASE + 10_000_000 + ep for ep in range(2)]
    expected = hand_rolled(agent, seeds)
    assert actions == expected["actions"][0] + expected["actions"][1]
    assert actions != [a for ep in hand_rolled(agent, seeds, carry=False)["actions"] for a in ep]
    # One frame before each action and the last one of each episode.
    assert len(saved[0]) == len(actions) + 2
