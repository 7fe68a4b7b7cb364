"""The evaluator: exact episode counts, seeds, success, baselines, reports."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

import envs
from mbm_agent.evaluation import (
    EVAL_SEED_BASE,
    EpisodeResults,
    build_report,
    check_agent_fits,
    env_suffix,
    eval_seeds,
    evaluate_episodes,
    expert_baseline,
    random_baseline,
    report_markdown,
    write_report,
)
from mbm_agent.training.config import ConfigError
from mbm_agent.training.envs import game_arguments, make_eval_env

GAME = "mbm/GoToObject-v0"
EPISODES = 20  # not a multiple of the batch size: the last batch has spare slots


def _expert_eval(num_envs: int, mode: AutoresetMode, seeds: list[int]) -> EpisodeResults:
    venv = envs.make_vec(GAME, num_envs, autoreset_mode=mode)
    return evaluate_episodes(
        lambda _obs: venv.expert_actions(), venv, episodes=len(seeds), seeds=seeds
    )


@pytest.fixture(scope="module")
def seeds() -> list[int]:
    return eval_seeds(EPISODES)


@pytest.fixture(scope="module")
def expert(seeds: list[int]) -> EpisodeResults:
    return expert_baseline(GAME, EPISODES, seeds, num_envs=8)


@pytest.fixture(scope="module")
def random(seeds: list[int]) -> EpisodeResults:
    return random_baseline(GAME, EPISODES, seeds, num_envs=8)


def test_eval_seeds() -> None:
    assert eval_seeds(3) == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1, EVAL_SEED_BASE + 2]
    assert eval_seeds(2, base=10) == [10, 11]
    with pytest.raises(ValueError, match="positive"):
        eval_seeds(0)


def test_expert_succeeds_on_exactly_the_requested_episodes(seeds: list[int]) -> None:
    results = _expert_eval(8, AutoresetMode.SAME_STEP, seeds)
    assert len(results) == EPISODES
    assert results.seeds.tolist() == seeds
    assert results.success_rate >= 0.99
    assert np.all(results.lengths >= 1) and np.all(results.returns > 0)
    again = _expert_eval(8, AutoresetMode.SAME_STEP, seeds)
    np.testing.assert_array_equal(again.returns, results.returns)
    np.testing.assert_array_equal(again.lengths, results.lengths)
    np.testing.assert_array_equal(again.successes, results.successes)


def test_results_do_not_depend_on_batching_or_autoreset_mode(seeds: list[int]) -> None:
    a = _expert_eval(8, AutoresetMode.SAME_STEP, seeds)
    b = _expert_eval(3, AutoresetMode.NEXT_STEP, seeds)
    np.testing.assert_array_equal(a.returns, b.returns)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.successes, b.successes)


def test_episode_k_is_the_single_env_reset_with_seed_k(expert: EpisodeResults) -> None:
    env = envs.make(GAME)
    for k in (0, 9, EPISODES - 1):
        env.reset(seed=int(expert.seeds[k]))
        total, steps, done, info = 0.0, 0, False, {}
        while not done:
            _, reward, terminated, truncated, info = env.step(env.expert_action())
            total += float(reward)
            steps += 1
            done = terminated or truncated
        assert expert.returns[k] == pytest.approx(total)
        assert expert.lengths[k] == steps
        assert expert.successes[k] == info["success"]


def test_random_baseline_is_low_and_reproducible(
    random: EpisodeResults, expert: EpisodeResults, seeds: list[int]
) -> None:
    assert random.success_rate <= 0.6
    assert random.mean_return < expert.mean_return
    again = random_baseline(GAME, EPISODES, seeds, num_envs=8)
    np.testing.assert_array_equal(again.returns, random.returns)


def test_other_gymnasium_envs_via_sync_vector_env() -> None:
    venv = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    seeds = eval_seeds(5)
    results = evaluate_episodes(
        lambda obs: np.zeros(len(obs), dtype=np.int64), venv, episodes=5, seeds=seeds
    )
    env = gym.make("CartPole-v1")
    for k, seed in enumerate(seeds):
        env.reset(seed=seed)
        steps, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(0)
            steps += 1
            done = terminated or truncated
        assert results.lengths[k] == steps
    assert results.successes.all()  # no success key: a positive return counts


def test_seed_errors_name_the_fix() -> None:
    venv = envs.make_vec(GAME, 2)
    with pytest.raises(ValueError, match="eval_seeds"):
        evaluate_episodes(lambda o: venv.expert_actions(), venv, episodes=3, seeds=[1, 2])
    with pytest.raises(ValueError, match="distinct"):
        evaluate_episodes(lambda o: venv.expert_actions(), venv, episodes=2, seeds=[1, 1])


def test_episode_results_round_trip_and_checks(expert: EpisodeResults) -> None:
    back = EpisodeResults.from_dict(json.loads(json.dumps(expert.to_dict())))
    np.testing.assert_array_equal(back.returns, expert.returns)
    np.testing.assert_array_equal(back.seeds, expert.seeds)
    with pytest.raises(ValueError, match="one length"):
        EpisodeResults(np.zeros(2), np.zeros(3), np.zeros(2), np.zeros(2))


def test_report_normalized_score_and_files(
    expert: EpisodeResults, random: EpisodeResults, tmp_path: Path
) -> None:
    meta = {
        "env_id": GAME,
        "run": "demo",
        "mode": "deterministic",
        "drop_modalities": ["audio"],
    }
    report = build_report(expert, random=random, expert=expert, meta=meta)
    assert report["normalized"]["mean"] == pytest.approx(1.0)
    assert report["success"]["rate"] == pytest.approx(expert.success_rate)
    assert report["meta"]["episodes"] == EPISODES
    assert report["episodes"]["seeds"] == expert.seeds.tolist()
    assert report["baselines"]["random"]["success_rate"] == pytest.approx(random.success_rate)

    json_path, md_path = write_report(report, tmp_path / "run")
    assert json.loads(json_path.read_text()) == report
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["eval.json", "eval.md"]
    md = md_path.read_text()
    assert md == report_markdown(report)
    assert GAME in md and "audio" in md and "deterministic" in md
    assert f"| {report['success']['rate']:.3f} |" in md
    assert f"{report['returns']['mean']:.3f}" in md
    assert "normalised score, IQM" in md


def test_failures_cut_off_by_the_step_limit_are_counted_apart(
    expert: EpisodeResults, seeds: list[int]
) -> None:
    # A policy that only turns never reaches an object: every episode runs to the limit.
    venv = envs.make_vec(GAME, 8)
    limit = envs.make(GAME).spec.max_episode_steps
    spinning = evaluate_episodes(
        lambda obs: np.zeros(8, dtype=np.int64), venv, episodes=EPISODES, seeds=seeds
    )
    assert spinning.timed_out is not None and spinning.timed_out.all()
    assert (spinning.lengths == limit).all() and not spinning.successes.any()
    assert spinning.failures_timed_out() == EPISODES
    # The expert ends every episode at the object: nothing is cut off.
    assert expert.timed_out is not None and not expert.timed_out.any()

    report = build_report(spinning, meta={"env_id": GAME})
    assert report["success"]["failures"] == EPISODES
    assert report["success"]["failures_timed_out"] == EPISODES
    assert f"| failures cut off by the step limit | {EPISODES}/{EPISODES} | |" in (
        report_markdown(report)
    )
    back = EpisodeResults.from_dict(json.loads(json.dumps(report["episodes"])))
    np.testing.assert_array_equal(back.timed_out, spinning.timed_out)


def test_reports_without_the_step_limit_record_still_load() -> None:
    # eval.json files written before ``timed_out`` was recorded have no such list.
    old = {"seeds": [1, 2], "returns": [0.0, 1.0], "lengths": [5, 3], "successes": [False, True]}
    results = EpisodeResults.from_dict(old)
    assert results.timed_out is None and results.failures_timed_out() is None
    assert results.to_dict() == old
    report = build_report(results, meta={})
    assert "failures_timed_out" not in report["success"]
    assert "step limit" not in report_markdown(report)
    with pytest.raises(ValueError, match="one length"):
        EpisodeResults(np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(3))


def test_report_without_or_with_bad_baselines(
    expert: EpisodeResults, random: EpisodeResults
) -> None:
    plain = build_report(random, meta={"env_id": GAME})
    assert plain["normalized"] is None and plain["baselines"] == {}
    assert "normalised" not in report_markdown(plain)
    shifted = EpisodeResults(expert.returns, expert.lengths, expert.successes, expert.seeds + 1)
    with pytest.raises(ValueError, match="same episodes"):
        build_report(random, expert=shifted, meta={})
    flat = build_report(random, random=random, expert=random, meta={})
    assert flat["normalized"] is None and "undefined" in flat["normalized_note"]
    json.dumps(flat, allow_nan=False)


@pytest.mark.parametrize(
    ("env_id", "env_args", "suffix"),
    [
        (None, None, ""),
        ("mbm/GoToObject-v0", None, "-on-mbm_GoToObject-v0"),
        ("pkg.mod:My Env-v0", {}, "-on-pkg.mod_My_Env-v0"),
        (None, {"n_objects": 2, "all_reachable": False}, "-with-all_reachable=false-n_objects=2"),
        (
            "mbm/X-v1",
            {"object_set": "grid", "sizes": [5, 6]},
            "-on-mbm_X-v1-with-object_set=grid-sizes=_5__6_",
        ),
    ],
)
def test_env_suffix_names_the_env_played_as_a_plain_file_name(
    env_id: str | None, env_args: dict[str, Any] | None, suffix: str
) -> None:
    assert env_suffix(env_id, env_args) == suffix


def test_env_suffix_of_long_arguments_is_a_short_stable_digest() -> None:
    args = {f"argument_{i}": "x" * 20 for i in range(10)}
    suffix = env_suffix("mbm/GoToObject-v0", args)
    assert suffix.startswith("-on-mbm_GoToObject-v0-with-")
    assert len(suffix) == len("-on-mbm_GoToObject-v0-with-") + 12
    assert suffix == env_suffix("mbm/GoToObject-v0", dict(reversed(args.items())))
    assert suffix != env_suffix("mbm/GoToObject-v0", {**args, "argument_0": "y"})
    assert env_suffix(None, args).startswith("-with-")  # never named like another env
    long_id = "pkg." + "m" * 120 + ":Env-v0"
    assert len(env_suffix(long_id, {"n": 1})) == len("-on-") + 12 + len("-with-n=1")


def _fake_agent(observation_space: spaces.Space[Any], action_space: spaces.Space[Any]) -> Any:
    policy = SimpleNamespace(observation_space=observation_space, action_space=action_space)
    return SimpleNamespace(policy=policy, spec={"env_id": "mbm/Trained-v0"})


def test_check_agent_fits_names_what_differs() -> None:
    venv = envs.make_vec(GAME, 1)
    try:
        obs, act = cast(spaces.Dict, venv.single_observation_space), venv.single_action_space
        check_agent_fits(_fake_agent(obs, act), venv, GAME)  # the env it trained on fits
        fewer = spaces.Dict({k: v for k, v in obs.spaces.items() if k != "text"})
        with pytest.raises(ValueError, match=r"keys .*'text'.* takes .*mbm/Trained-v0"):
            check_agent_fits(_fake_agent(fewer, act), venv, GAME)
        image = obs["image"]
        assert isinstance(image, spaces.Box)
        # SB3's own extractor keeps the frame's space channel-first; it fits.
        first = spaces.Dict(
            {
                **obs.spaces,
                "image": spaces.Box(0, 255, image.shape[::-1][:1] + image.shape[:2], np.uint8),
            }
        )
        check_agent_fits(_fake_agent(first, act), venv, GAME)
        smaller = spaces.Dict({**obs.spaces, "image": spaces.Box(0, 255, (8, 8, 3), np.uint8)})
        with pytest.raises(ValueError, match=rf"'image' is .*{image.shape}.*\(8, 8, 3\)"):
            check_agent_fits(_fake_agent(smaller, act), venv, GAME)
        with pytest.raises(
            ValueError, match=r"actions are Discrete\(\d+\), this agent's are Discrete\(99\)"
        ):
            check_agent_fits(_fake_agent(obs, spaces.Discrete(99)), venv, GAME)
    finally:
        venv.close()


@pytest.mark.parametrize("env_id", [GAME, "BabyAI-GoToObj-v0"])
def test_game_arguments_an_env_refuses_are_a_config_error_naming_them(env_id: str) -> None:
    if env_id.startswith("BabyAI"):
        pytest.importorskip("minigrid")
    with pytest.raises(ConfigError, match=r"room_sise.*do not fit .*--set KEY=VALUE"):
        make_eval_env(env_id, {"room_sise": 6}, 2, None)


def test_game_arguments_blames_only_the_user_s_arguments() -> None:
    bad = r"\{'n': 1\} do not fit mbm/X-v0: bad"
    with pytest.raises(ConfigError, match=bad), game_arguments("mbm/X-v0", {"n": 1}):
        raise TypeError("bad")
    # No arguments of the user's: the env's own error, unchanged.
    with pytest.raises(TypeError, match="a bug of the env"), game_arguments("mbm/X-v0", {}):
        raise TypeError("a bug of the env")
    with pytest.raises(RuntimeError), game_arguments("mbm/X-v0", {"n": 1}):  # others pass
        raise RuntimeError("other")
