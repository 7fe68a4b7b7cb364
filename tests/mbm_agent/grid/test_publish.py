"""Publishing a grid's reference agents never deletes the agent already there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mbm_agent.grid.spec import SAMPLED
from mbm_agent.grid.summary import publish_agents

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
