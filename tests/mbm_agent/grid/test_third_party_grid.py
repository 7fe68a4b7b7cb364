"""The grid's third-party games (``THIRD_PARTY_GAMES``): named cells only, their own configs.

Nothing trains here (their runs take hours: ``docs/third_party_envs.md``,
"Reference runs"); the cells, the configs they resolve to and the summary's
rows without a chance level are checked.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from mbm_agent.grid.cell import run_cell
from mbm_agent.grid.spec import (
    ALL_GAMES,
    EARLIER_VERSIONS,
    REFERENCE_GAMES,
    THIRD_PARTY_GAMES,
    build_grid,
    cell_done,
    finished_cells,
)
from mbm_agent.grid.summary import summary_markdown
from mbm_agent.training.atari import FULL_GAMES
from mbm_agent.training.config import resolve_config
from mbm_agent.training.envs import evaluation_env_kwargs

SEAQUEST = "mbm-atari/Seaquest-v0"
EAT = "MiniHack-Eat-v0"


def test_third_party_games_are_named_never_defaulted() -> None:
    assert set(THIRD_PARTY_GAMES) == {SEAQUEST, EAT}
    assert not set(THIRD_PARTY_GAMES) & set(REFERENCE_GAMES)
    assert ALL_GAMES == {**REFERENCE_GAMES, **EARLIER_VERSIONS, **THIRD_PARTY_GAMES}
    assert not set(EARLIER_VERSIONS) & set(REFERENCE_GAMES)
    assert {c.game.env_id for c in build_grid(seeds=[0])} == set(REFERENCE_GAMES)
    for game in THIRD_PARTY_GAMES.values():
        assert game.chance is None and game.sampled and game.bc is None
        assert game.extra in ("atari", "minihack")
    assert FULL_GAMES == {"terminal_on_life_loss": False, "clip_reward": False}


def test_atari_is_evaluated_on_full_games_whatever_it_trained_on() -> None:
    trained = {"terminal_on_life_loss": True, "clip_reward": True, "max_frames": 800}
    assert evaluation_env_kwargs(SEAQUEST, trained) == {"max_frames": 800, **FULL_GAMES}
    assert evaluation_env_kwargs("mbm-atari/Pong-v0", {}) == FULL_GAMES
    # Other games keep their training arguments as they are.
    assert evaluation_env_kwargs(EAT, {"max_episode_steps": 50}) == {"max_episode_steps": 50}
    assert evaluation_env_kwargs("mbm/FindSound-v0", {}) == {}


@pytest.mark.parametrize(("env_id", "key"), [(SEAQUEST, "sound"), (EAT, "message")])
def test_cells_of_a_third_party_game_resolve_to_its_config(env_id: str, key: str) -> None:
    cells = build_grid([env_id], ["concat"], [0, 1], baseline=False)
    short = env_id.split("/")[-1].removesuffix("-v0")
    assert [c.name for c in cells] == [
        f"{short}-concat-s0",
        f"{short}-concat-s1",
        f"{short}-mask-{key}-s0",
        f"{short}-mask-{key}-s1",
    ]
    game = THIRD_PARTY_GAMES[env_id]
    full = resolve_config(env_id, overrides=dict(cells[0].overrides))
    masked = resolve_config(env_id, overrides=dict(cells[2].overrides))
    assert full.steps == masked.steps == game.budget()
    assert full.encoder_config() == masked.encoder_config() == game.encoder()
    assert masked.modalities[key] == "ignore"
    assert full.modalities.get(key, "") != "ignore"


def test_finished_third_party_runs_are_found_again(tmp_path) -> None:
    run = tmp_path / "runs" / "Seaquest-mask-sound-s2"
    run.mkdir(parents=True)
    (run / "eval.json").write_text("{}")
    (found,) = finished_cells(tmp_path)
    assert (found.game.env_id, found.variant, found.seed) == (SEAQUEST, "mask-sound", 2)


def seaquest_row(**changes: Any) -> dict[str, Any]:
    """A summary row of a third-party game (no chance level), with ``changes``."""
    stat = {"iqm": 0.5, "iqm_ci": [0.4, 0.6]}
    return {
        "env_id": SEAQUEST,
        "variant": "concat",
        "seeds": [0, 1, 2],
        "steps": 250_000,
        "success": stat,
        "return": {"iqm": 812.0, "iqm_ci": [700.0, 900.0]},
        "actions": "sampled",
        "greedy_success": stat,
        "sampled_success": stat,
        "masked_success": {"sound": 0.25},
        "chance": None,
        "steps_to_90": None,
        "wall_time_s": 600.0,
        **changes,
    }


def test_summary_rows_without_a_chance_level() -> None:
    md = summary_markdown({"rows": [seaquest_row()], "games": {}, "agents": {}})
    assert "| sound: 25.0 (-) |" in md
    assert "| mbm-atari/Seaquest-v0 | concat | 3 | 250,000 |" in md


def test_a_game_scored_by_return_shows_no_success_and_its_masked_return() -> None:
    """Atari reports no success: its row leaves the success columns empty (not 0.0) and
    the run with the sound masked says its return."""
    iqm = {"iqm": 0.0, "iqm_ci": [0.0, 0.0]}
    zero = {"success": iqm, "greedy_success": iqm, "sampled_success": iqm}
    row = seaquest_row(
        **zero,
        seeds=[0],
        **{"return": {"iqm": 426.0, "iqm_ci": [426.0, 426.0]}},
        masked_success={"sound": 418.0},
        scored_by="return",
    )
    line = summary_markdown({"rows": [row]}).splitlines()[2]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4] == "-" and cells[7] == "-"  # success, greedy / sampled success
    assert cells[5].startswith("426.0") and cells[8] == "sound: return 418.000"
    success_row = {**row, "scored_by": "success", "masked_success": {"sound": 0.5}}
    cells = summary_markdown({"rows": [success_row]}).splitlines()[2].strip("|").split("|")
    assert cells[4].strip().startswith("0.0") and cells[8].strip() == "sound: 50.0 (-)"


@pytest.mark.parametrize("env_id", ["mbm/GoToObject-v0", "mbm/GoToObject-v1"])
def test_a_finished_run_is_the_cell_of_the_version_it_trained_on(tmp_path, env_id: str) -> None:
    # Both versions name their runs GoToObject-*: the run's own config says which.
    run = tmp_path / "runs" / "GoToObject-mask-text-s0"
    run.mkdir(parents=True)
    (run / "eval.json").write_text("{}")
    (run / "config.json").write_text(json.dumps({"env_id": env_id}))
    [cell] = finished_cells(tmp_path)
    assert cell.game.env_id == env_id and cell.variant == "mask-text"
    assert cell.game.chance == (0.25 if env_id.endswith("v1") else 1 / 3)


def test_two_versions_of_a_game_are_not_benched_into_one_folder() -> None:
    with pytest.raises(ValueError, match=r"Two versions of GoToObject.*own --out"):
        build_grid(["mbm/GoToObject-v0", "mbm/GoToObject-v1"], seeds=[0])


def test_a_run_of_another_version_under_a_cells_name_is_refused_untouched(tmp_path) -> None:
    # A v0 run where the v1 cell of the same name would go: never counted as done, never
    # evaluated on v1 or resumed with v1's config.
    [cell] = build_grid(
        ["mbm/GoToObject-v1"], ["film"], [0], ablations=False, baseline=False, bc=False
    )
    run = tmp_path / "runs" / cell.name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"env_id": "mbm/GoToObject-v0"}))
    (run / "eval.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert not cell_done(cell, tmp_path)
    with pytest.raises(ValueError, match=r"holds a run of mbm/GoToObject-v0.*own --out"):
        run_cell(cell, tmp_path)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
