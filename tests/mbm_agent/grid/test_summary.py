"""The grid's summary: it says when seeds differ in budget, and publishing a reference
agent never deletes the agent already there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mbm_agent.evaluation import EpisodeResults, build_report, eval_seeds, write_report
from mbm_agent.grid.spec import SAMPLED, build_grid
from mbm_agent.grid.summary import publish_agents, summary_markdown, write_summary

ROWS: list[dict[str, Any]] = [
    {
        "env_id": "mbm/FindSound-v0",
        "variant": "concat",
        "success": {"iqm": 0.9},
        "return": {"iqm": 0.8},
        "seeds": [0, 1],
        "per_seed_success": [0.8, 1.0],
    }
]


def make_run(root: Path, with_weights: bool) -> Path:
    run = root / "runs" / "FindSound-concat-s1"  # seed 1: the better of the two
    run.mkdir(parents=True)
    (run / "eval.json").write_text('{"new": "greedy"}')
    (run / f"{SAMPLED}.json").write_text('{"new": "sampled"}')
    if with_weights:
        (run / "best").mkdir()
        (run / "best" / "model.json").write_text('{"new": "model"}')
    return run


def published(root: Path) -> Path:
    agent = root / "agents" / "FindSound"
    agent.mkdir(parents=True)
    (agent / "model.json").write_text('{"old": "model"}')
    (agent / "eval.json").write_text('{"old": "greedy"}')
    return agent


def test_a_run_without_weights_keeps_the_published_agent(tmp_path: Path) -> None:
    """A committed reference folder has reports but no best/: its agent stays."""
    make_run(tmp_path, with_weights=False)
    agent = published(tmp_path)
    with pytest.warns(UserWarning, match=r"Not publishing FindSound's agent .* no best"):
        assert publish_agents(ROWS, tmp_path) == {}
    assert (agent / "model.json").read_text() == '{"old": "model"}'
    assert (agent / "eval.json").read_text() == '{"old": "greedy"}'


def test_a_complete_run_replaces_the_published_agent(tmp_path: Path) -> None:
    make_run(tmp_path, with_weights=True)
    agent = published(tmp_path)
    assert publish_agents(ROWS, tmp_path) == {"mbm/FindSound-v0": "agents/FindSound"}
    assert sorted(p.name for p in agent.iterdir()) == sorted(
        ["eval.json", f"{SAMPLED}.json", "model.json"]
    )
    assert (agent / "model.json").read_text() == '{"new": "model"}'
    assert (agent / f"{SAMPLED}.json").read_text() == '{"new": "sampled"}'
    assert sorted(p.name for p in (tmp_path / "agents").iterdir()) == ["FindSound"]  # no leftovers


def test_a_row_whose_seeds_had_different_budgets_says_so(tmp_path: Path) -> None:
    """A grid re-run with another --steps keeps the runs already trained: the row and
    a warning say that its seeds differ, instead of the first seed's budget alone."""
    cells = build_grid(
        ["mbm/ModalityProbe-v0"], ["concat"], [0, 1], ablations=False, baseline=False
    )
    for cell, steps in zip(cells, (512, 2048), strict=True):
        run = tmp_path / "runs" / cell.name
        run.mkdir(parents=True)
        config = {"env_id": cell.game.env_id, "algo": "ppo", "seed": cell.seed, "steps": steps}
        (run / "config.json").write_text(json.dumps(config))
        results = EpisodeResults(np.ones(4), np.full(4, 3), np.ones(4, bool), eval_seeds(4))
        for name in ("eval", SAMPLED):
            write_report(build_report(results, meta={"env_id": cell.game.env_id}), run, name)
    with pytest.warns(UserWarning, match=r"seed 0: 512, seed 1: 2,048 steps"):
        summary = write_summary(cells, tmp_path)
    (row,) = summary["rows"]
    assert row["per_seed_steps"] == [512, 2048] and row["steps"] == 2048
    assert "| 512-2,048 (differ by seed) |" in summary_markdown(summary)


def test_a_published_agent_holding_files_made_from_it_is_not_replaced(tmp_path: Path) -> None:
    """An export or report made in agents/<Game> would go with the folder: kept."""
    make_run(tmp_path, with_weights=True)
    agent = published(tmp_path)
    (agent / "exports" / "onnx").mkdir(parents=True)
    (agent / "eval-drop-audio.json").write_text("{}")
    with pytest.warns(UserWarning, match=r"also holds eval-drop-audio.json, exports"):
        assert publish_agents(ROWS, tmp_path) == {}
    assert (agent / "model.json").read_text() == '{"old": "model"}'
    assert (agent / "exports" / "onnx").is_dir()
