"""The trainer in-process: every algorithm, a MiniGrid/BabyAI env, run folders, failed starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from runs_helpers import (
    BABYAI,
    ENV,
    GIF_MAGIC,
    POLICY_FILES,
    ROLLOUT,
    checkpoint_steps,
    env_fusion,
    read_metrics,
    step_dir,
)
from safetensors.torch import load_file
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from mbm_agent.evaluation import evaluate_agent
from mbm_agent.sb3 import policy_class
from mbm_agent.training.agent import load_agent
from mbm_agent.training.checkpoints import load_checkpoint
from mbm_agent.training.config import ConfigError, merge, resolve_config
from mbm_agent.training.envs import SuccessInfo, make_train_env
from mbm_agent.training.trainer import _new_run_dir, build_algorithm, train

ALGO_BUDGETS: dict[str, dict[str, Any]] = {
    "a2c": {"algo_kwargs": {"n_steps": 8}, "sb3_zip": True, "eval_every": 0},
    "dqn": {
        "algo_kwargs": {
            "buffer_size": 500,
            "learning_starts": 64,
            "batch_size": 32,
            "train_freq": 4,
            "target_update_interval": 64,
        }
    },
    "recurrent_ppo": {
        "algo_kwargs": {"n_steps": 32, "batch_size": 64, "n_epochs": 1},
        "eval_every": 0,
    },
}


def _overrides(runs_dir: Path, **extra: Any) -> dict[str, Any]:
    base = {
        "runs_dir": str(runs_dir),
        "steps": 256,
        "n_envs": 4,
        "eval_every": ROLLOUT,
        "eval_episodes": 2,
        "checkpoint_every": ROLLOUT,
        "final_eval_episodes": 2,
        "gif_episodes": 0,
    }
    return merge(base, extra)


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a)), load_file(str(b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _check_actor_carries_state(agent: Any) -> None:
    env = gym.make(ENV)
    obs, _ = env.reset(seed=3)
    batch = {k: np.asarray(v)[None] for k, v in obs.items()}
    actor = agent.actor()
    actor(batch)
    first = actor.state
    assert first is not None
    actor(batch)
    assert actor.state is not None
    assert not all(np.array_equal(a, b) for a, b in zip(first, actor.state, strict=True))
    actor.reset()
    assert actor.state is None


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(ALGO_BUDGETS))
def test_every_algorithm_trains_saves_loads_and_evaluates(algo: str, tmp_path: Path) -> None:
    cfg = resolve_config(ENV, overrides=_overrides(tmp_path, algo=algo, **ALGO_BUDGETS[algo]))
    result = train(cfg, progress=False)
    run = result.run_dir
    assert not result.interrupted
    assert result.num_timesteps == 256
    assert run.name == f"GoToObject-{algo}-{env_fusion()}-s0"
    assert result.report is not None
    assert result.report["meta"]["algo"] == algo
    assert result.report["meta"]["episodes"] == 2
    for policy in ("best", "final"):
        assert all((run / policy / name).is_file() for name in POLICY_FILES)
    assert checkpoint_steps(run) == [ROLLOUT, 2 * ROLLOUT]
    assert (run / "sb3_model.zip").is_file() == (algo == "a2c")
    # final/ is the policy of the last checkpoint.
    assert _same_weights(
        run / "final" / "model.safetensors",
        step_dir(run, 256) / "policy" / "model.safetensors",
    )

    agent = load_agent(run, "final")
    assert agent.spec["algo"] == algo
    assert isinstance(agent.policy, policy_class(algo))
    assert agent.recurrent == (algo == "recurrent_ppo")
    report = evaluate_agent(agent, ENV, cfg.env_kwargs, episodes=3, n_envs=2)
    assert report["meta"]["episodes"] == 3
    assert report["meta"]["algo"] == algo
    # The rate is the episodes' own successes, and greedy play on held-out seeds repeats.
    successes = report["episodes"]["successes"]
    assert len(successes) == 3
    assert report["success"]["rate"] == pytest.approx(sum(successes) / 3)
    again = evaluate_agent(agent, ENV, cfg.env_kwargs, episodes=3, n_envs=2)
    assert again["episodes"] == report["episodes"]
    if algo == "recurrent_ppo":
        _check_actor_carries_state(agent)

    # The checkpoint restores into a freshly built algorithm (optimizer included).
    venv, _ = make_train_env(cfg, cfg.seed)
    model = build_algorithm(cfg, venv, None)
    state = load_checkpoint(step_dir(run, 256), model)
    venv.close()
    assert state.num_timesteps == model.num_timesteps == 256
    assert model.policy.optimizer.state_dict()["state"], "optimizer state was not restored"


@pytest.mark.slow
def test_babyai_trains_with_a_tokenised_mission(tmp_path: Path) -> None:
    pytest.importorskip("minigrid")
    cfg = resolve_config(
        BABYAI,
        overrides=_overrides(
            tmp_path,
            algo_kwargs={"n_steps": 32, "batch_size": 64},
            eval_every=0,
            gif_episodes=1,
        ),
    )
    result = train(cfg, progress=False)
    run = result.run_dir
    assert run.name == "BabyAI-GoToObj-ppo-film-s0"  # configs/families/BabyAI.yaml: FiLM
    assert result.num_timesteps == 256
    assert result.report is not None
    assert result.report["baselines"] == {}  # no expert/random baselines outside our games
    assert (run / "episodes.gif").read_bytes()[:6] in GIF_MAGIC
    spec = json.loads((run / "final" / "model.json").read_text())
    assert set(spec["observation_space"]["spaces"]) == {"direction", "symbolic_grid", "text"}
    assert spec["vocabulary"] is True

    agent = load_agent(run)
    assert agent.vocabulary is not None
    for word in ("go", "to", "the", "ball", "key", "red"):
        assert word in agent.vocabulary
    ids = agent.vocabulary.encode("go to the red ball")
    assert agent.vocabulary.decode(ids) == "go to the red ball"
    report = evaluate_agent(agent, BABYAI, episodes=2, n_envs=2)
    assert report["meta"]["episodes"] == 2
    assert len(report["episodes"]["lengths"]) == 2


def test_rl_zoo_linear_schedules_decay_to_zero_over_the_run(
    tmp_path: Path, sb3_logger: Logger
) -> None:
    """``lin_<start>`` (RL Zoo's spelling) decays the learning rate and the clip range to 0."""
    cfg = resolve_config(
        ENV,
        overrides=_overrides(
            tmp_path,
            algo_kwargs={
                "n_steps": 32,
                "batch_size": 64,
                "n_epochs": 1,
                "learning_rate": "lin_0.001",
                "clip_range": "lin_0.2",
                "clip_range_vf": None,  # null: the value is not clipped
            },
        ),
    )
    assert cfg.algo_kwargs["learning_rate"] == "lin_0.001"  # saved as written
    venv, _ = make_train_env(cfg, cfg.seed)
    model = build_algorithm(cfg, venv, None)
    model.set_logger(sb3_logger)
    assert model.clip_range(0.5) == pytest.approx(0.1)  # type: ignore[operator]
    seen: list[tuple[int, float]] = []

    class Rates(BaseCallback):
        def _on_rollout_start(self) -> None:
            seen.append(
                (self.model.num_timesteps, self.model.policy.optimizer.param_groups[0]["lr"])
            )

        def _on_step(self) -> bool:
            return True

    model.learn(total_timesteps=3 * ROLLOUT, callback=Rates())
    venv.close()
    # Before each rollout the optimizer has the rate of the update that just ran.
    expected = [(0, 1e-3), (ROLLOUT, 1e-3 * 2 / 3), (2 * ROLLOUT, 1e-3 / 3)]
    assert [step for step, _ in seen] == [step for step, _ in expected]
    assert [lr for _, lr in seen] == pytest.approx([lr for _, lr in expected])
    assert model.policy.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


@pytest.mark.slow
def test_metrics_rows_follow_the_rollouts(tmp_path: Path) -> None:
    cfg = resolve_config(
        ENV,
        overrides=_overrides(
            tmp_path,
            steps=3 * ROLLOUT,
            algo_kwargs={"n_steps": 32, "batch_size": 64},
            checkpoint_every=64,
            eval_every=0,
        ),
    )
    result = train(cfg, progress=False, finalize=False)
    run = result.run_dir
    rows = read_metrics(run)
    assert [int(r["timesteps"]) for r in rows] == [ROLLOUT, 2 * ROLLOUT, 3 * ROLLOUT]
    assert all(r["eval_return"] == "" for r in rows)
    # Checkpoints at the first rollout boundary past every 64 steps (after that
    # rollout's update), plus one at the end; the newest keep_checkpoints=2 kept.
    assert checkpoint_steps(run) == [2 * ROLLOUT, 3 * ROLLOUT]
    state = json.loads((step_dir(run, 2 * ROLLOUT) / "state.json").read_text())
    assert state["n_updates"] == 2 * cfg.algo_kwargs["n_epochs"]  # both rollouts' updates
    assert not (run / "eval.json").exists()  # finalize=False
    assert (run / "best").is_dir()  # no periodic evaluation: best is a copy of final
    assert _same_weights(run / "best" / "model.safetensors", run / "final" / "model.safetensors")


def test_run_names_are_unique_unless_given(tmp_path: Path) -> None:
    cfg = resolve_config(ENV, overrides={"runs_dir": str(tmp_path)})
    base = f"GoToObject-ppo-{env_fusion()}-s0"  # the fusion of the env's YAML
    assert _new_run_dir(cfg) == tmp_path / base
    assert _new_run_dir(cfg) == tmp_path / f"{base}-2"
    assert _new_run_dir(cfg) == tmp_path / f"{base}-3"
    assert all((tmp_path / n).is_dir() for n in (base, f"{base}-2", f"{base}-3"))
    # --fusion (and --seed, --algo) change the default name.
    other = resolve_config(
        ENV, overrides={"runs_dir": str(tmp_path), "fusion": "gated", "seed": 4, "algo": "a2c"}
    )
    assert _new_run_dir(other) == tmp_path / "GoToObject-a2c-gated-s4"
    named = resolve_config(ENV, overrides={"runs_dir": str(tmp_path), "run_name": "mine"})
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="--resume"):
        _new_run_dir(named)


@pytest.mark.parametrize(
    ("env_id", "overrides", "match"),
    [
        ("MbmTestUnencodable-v0", {}, "'depth'.*modalities"),  # conftest: a float 3-D key
        ("Nope-v0", {}, "Unknown env id"),
        (ENV, {"algo_kwargs": {"learning_rat": 0.1}}, "algo_kwargs"),
        (ENV, {"env_kwargs": {"bogus": 1}}, "env_kwargs"),
    ],
)
def test_a_failed_start_leaves_no_run_folder(
    env_id: str, overrides: dict[str, Any], match: str, tmp_path: Path
) -> None:
    cfg = resolve_config(env_id, overrides={"runs_dir": str(tmp_path / "runs"), **overrides})
    with pytest.raises(ConfigError, match=match):
        train(cfg, progress=False)
    runs = tmp_path / "runs"
    leftovers = list(runs.iterdir()) if runs.exists() else []
    assert not leftovers, f"a failed start left {leftovers} behind"


def test_success_info_marks_episode_ends() -> None:
    class OneStep(gym.Env[int, int]):
        observation_space = gym.spaces.Discrete(1)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[int, dict]:
            super().reset(seed=seed)
            return 0, {}

        def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
            return 0, float(action), True, False, {}

    env = SuccessInfo(OneStep())
    env.reset(seed=0)
    assert env.step(1)[4]["is_success"] is True
    env.reset()
    assert env.step(0)[4]["is_success"] is False


def test_agent_from_run_prefers_best(tmp_path: Path) -> None:
    from mbm_agent.training.agent import resolve_model_dir

    for name in ("best", "final"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.json").write_text("{}")
    assert resolve_model_dir(tmp_path) == tmp_path / "best"
    assert resolve_model_dir(tmp_path, "final") == tmp_path / "final"
    assert resolve_model_dir(tmp_path / "final") == tmp_path / "final"
    with pytest.raises(ValueError, match="which"):
        resolve_model_dir(tmp_path, "newest")
