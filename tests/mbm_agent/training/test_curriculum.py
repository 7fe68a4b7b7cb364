"""The curriculum: levels parsed and checked, promotion on training success, envs rebuilt, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from stable_baselines3.common.logger import configure

import envs
from mbm_agent.training.callback import TrainerCallback
from mbm_agent.training.checkpoints import TrainState
from mbm_agent.training.config import ConfigError, merge, resolve_config
from mbm_agent.training.curriculum import Curriculum
from mbm_agent.training.envs import make_train_env
from mbm_agent.training.trainer import build_algorithm, train

ENV = "mbm/GoToObject-v0"
LEVELS = {"levels": [{"grid_size": 5}, {"grid_size": 6}], "promote_at": 0.01, "window": 1}


def _overrides(runs_dir: Path, **extra: Any) -> dict[str, Any]:
    base = {
        "runs_dir": str(runs_dir),
        "steps": 512,
        "n_envs": 4,
        "eval_every": 0,
        "checkpoint_every": 128,
        "final_eval_episodes": 2,
        "gif_episodes": 0,
        "algo_kwargs": {"n_steps": 32, "batch_size": 64, "n_epochs": 1},
        "curriculum": LEVELS,
    }
    return merge(base, extra)


def _grid_size(venv: Any) -> int:
    while not hasattr(venv, "game"):
        venv = venv.venv
    return int(venv.game.grid_size)


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "curriculum.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_levels_promote_on_the_success_rate_of_the_last_window() -> None:
    cur = Curriculum.from_config({"levels": [{"grid_size": 5}], "promote_at": 0.5, "window": 4})
    assert cur is not None and cur.levels == [{"grid_size": 5}, {}]
    assert cur.env_kwargs({"grid_size": 8, "n_objects": 3}) == {"grid_size": 5, "n_objects": 3}
    assert not cur.record([True, False, False])  # 3 < window episodes
    assert not cur.record([False])  # 1/4 < 0.5
    assert cur.record([True, True])  # last 4: F, F, T, T = 0.5
    cur.promote()
    assert cur.finished and cur.env_kwargs({"grid_size": 8}) == {"grid_size": 8}
    assert not cur.record([True] * 10)  # the last level never moves on
    cur.restore(7)
    assert cur.level == 1
    assert Curriculum.from_config({}) is None and Curriculum.from_config(None) is None


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"promote_at": 0.8}, "curriculum.levels"),
        ({"levels": []}, "curriculum.levels"),
        ({"levels": [{}]}, r"curriculum.levels\[0\]"),
        ({"levels": [5]}, r"curriculum.levels\[0\]"),
        ({"levels": [{"grid_size": 5}], "promote_at": 0}, "curriculum.promote_at"),
        ({"levels": [{"grid_size": 5}], "promote_at": 1.5}, "curriculum.promote_at"),
        ({"levels": [{"grid_size": 5}], "window": 0}, "curriculum.window"),
        ({"levels": [{"grid_size": 5}], "windw": 10}, "windw"),
        ("grid_size=5", "curriculum"),
    ],
)
def test_a_bad_curriculum_is_a_config_error_naming_the_field(section: Any, words: str) -> None:
    # ModalityProbe's config declares no curriculum, so the section is the whole of it.
    with pytest.raises(ConfigError, match=words):
        resolve_config("mbm/ModalityProbe-v0", overrides={"curriculum": section})


def test_the_callback_trains_on_the_level_and_refuses_a_level_that_changes_spaces(
    tmp_path: Path,
) -> None:
    cfg = resolve_config(ENV, overrides=_overrides(tmp_path))
    venv, vocab = make_train_env(cfg, cfg.seed)
    model = build_algorithm(cfg, venv, None)
    model.set_logger(configure(str(tmp_path / "log"), []))
    callback = TrainerCallback(cfg, tmp_path, vocab, TrainState(), None, progress=False)
    callback.curriculum = Curriculum.from_config({**LEVELS, "window": 100_000})  # never moves
    model.learn(128, callback=callback)
    assert _grid_size(model.env) == 5 and _grid_size(venv) == 8
    assert callback.curriculum is not None
    callback.curriculum.promote()
    callback._enter_level()
    assert _grid_size(model.env) == 6
    callback.curriculum.promote()
    callback._enter_level()
    assert _grid_size(model.env) == 8  # the run's own game
    assert [r["env_kwargs"] for r in _rows(tmp_path)] == [{"grid_size": 5}, {"grid_size": 6}, {}]
    callback.curriculum = Curriculum.from_config({"levels": [{"frame_size": 32}]})
    with pytest.raises(ConfigError, match="frame_size"):
        callback._enter_level()
    model.env.close()
    venv.close()


def test_a_run_climbs_its_levels_and_resumes_on_the_level_it_reached(tmp_path: Path) -> None:
    cfg = resolve_config(ENV, overrides=_overrides(tmp_path, steps=256))
    run = train(cfg, progress=False, finalize=False).run_dir
    rows = _rows(run)
    assert [r["level"] for r in rows] == [0, 1, 2]  # random play succeeds once in a while
    assert rows[0]["timesteps"] == 0 and rows[1]["timesteps"] > 0
    state = json.loads(
        next((run / "checkpoints").glob("step-*256")).joinpath("state.json").read_text()
    )
    assert state["curriculum_level"] == 2

    more = resolve_config(ENV, overrides=_overrides(tmp_path, steps=384))
    train(more, resume=run, progress=False, finalize=False)
    after = _rows(run)[len(rows) :]
    # Resumed on the level it reached (the run's own game), not on the first one.
    assert [(r["timesteps"], r["level"], r["env_kwargs"]) for r in after] == [(256, 2, {})]
    state = json.loads(
        next((run / "checkpoints").glob("step-*384")).joinpath("state.json").read_text()
    )
    assert state["curriculum_level"] == 2


def test_a_resumed_run_rebuilds_the_level_of_its_checkpoint(tmp_path: Path) -> None:
    never = {**LEVELS, "window": 100_000}  # stays on the first level
    cfg = resolve_config(ENV, overrides=_overrides(tmp_path, steps=128, curriculum=never))
    run = train(cfg, progress=False, finalize=False).run_dir
    assert [r["level"] for r in _rows(run)] == [0]
    more = resolve_config(ENV, overrides=_overrides(tmp_path, steps=256, curriculum=never))
    train(more, resume=run, progress=False, finalize=False)
    rows = _rows(run)
    assert [r["level"] for r in rows] == [0, 0] and rows[1]["timesteps"] == 128


def test_null_turns_a_games_curriculum_off() -> None:
    assert resolve_config(ENV).curriculum["levels"]  # GoToObject's config declares one
    assert resolve_config(ENV, overrides={"curriculum": None}).curriculum == {}


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_every_shipped_curriculum_level_builds_its_game(env_id: str) -> None:
    """A level is only tried mid-run: one that does not fit its game (GoToObject-v1's 4
    objects need a 6x6 room) would fail hours in, so each is built here."""
    cfg = resolve_config(env_id)
    levels = (cfg.curriculum or {}).get("levels", [])
    for level in levels:
        vec = envs.make_vec(env_id, 2, **{**cfg.env_kwargs, **level})
        obs, _ = vec.reset(seed=0)
        assert set(obs) == set(vec.single_observation_space.spaces)
        vec.close()


def test_goto_object_v1_climbs_from_two_objects_and_v0_keeps_its_rooms() -> None:
    v1 = resolve_config("mbm/GoToObject-v1").curriculum["levels"]
    assert [lv.get("n_objects") for lv in v1] == [2, 3, None, None]
    assert [lv["grid_size"] for lv in v1] == [5, 5, 6, 7]
    # v0's runs were made with rooms 5 -> 8 and 3 objects throughout: its config keeps them.
    v0 = resolve_config("mbm/GoToObject-v0").curriculum["levels"]
    assert v0 == [{"grid_size": 5}, {"grid_size": 6}, {"grid_size": 7}]
