"""The committed reference agents (runs/reference/agents/) load and play as reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mbm_agent import load_agent
from mbm_agent.evaluation import evaluate_agent
from mbm_agent.grid.spec import ALL_GAMES

ROOT = Path(__file__).resolve().parents[3] / "runs" / "reference"
AGENTS = sorted(p for p in (ROOT / "agents").glob("*") if (p / "model.json").is_file())
EPISODES = 100


@pytest.mark.slow
@pytest.mark.parametrize("agent_dir", AGENTS, ids=[p.name for p in AGENTS])
def test_reference_agent_plays_as_reported_and_needs_its_senses(agent_dir: Path) -> None:
    """Held-out success within 10 points of the committed report (>= 90% everywhere);
    with a required modality masked the agent does no better than the game's chance
    level (+10 points for 100-episode noise): the sense is needed, not decoration."""
    agent = load_agent(agent_dir)
    env_id = agent.spec["env_id"]
    reported = json.loads((agent_dir / "eval.json").read_text())["success"]["rate"]
    kwargs = agent.spec.get("env_kwargs", {})
    report = evaluate_agent(agent, env_id, kwargs, episodes=EPISODES, n_envs=50, baselines=False)
    assert report["success"]["rate"] >= min(0.9, reported - 0.1), report["success"]
    game = ALL_GAMES[env_id]  # an agent made on an earlier version plays that version
    for modality in game.required:
        masked = evaluate_agent(
            agent,
            env_id,
            kwargs,
            episodes=EPISODES,
            n_envs=50,
            drop_modalities=(modality,),
            baselines=False,
        )
        assert masked["success"]["rate"] <= game.chance + 0.10, (modality, masked["success"])


def test_every_reference_game_has_a_committed_agent_or_is_listed_as_missing() -> None:
    summary = json.loads((ROOT / "summary.json").read_text())
    for env_id, path in summary["agents"].items():
        assert (ROOT / path / "model.json").is_file(), env_id
        assert (ROOT / path / "model.safetensors").is_file(), env_id
