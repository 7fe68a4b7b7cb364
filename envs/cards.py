"""Game cards for people: each game's docstring card plus how its expert plays.

``python -m envs.cards > docs/games.md`` regenerates ``docs/games.md``; a test
checks that the committed file is current.
"""

from __future__ import annotations

import inspect

import gymnasium as gym

import envs

EXPERTS: dict[str, str] = {
    "mbm/GoToObject-v0": "Shortest path (breadth-first search over the grid, turns counted) to the named object; 100% success.",
    "mbm/FindSound-v0": "Shortest path to the object that makes the sound; 100% success.",
    "mbm/SoundMaze-v0": "Shortest path around the walls to the object whose sound the instruction names; 100% success.",
    "mbm/ModalityProbe-v0": "Answers with the cued value; 100% success.",
}


def game_card(env_id: str) -> str:
    """The Markdown card of one game: its docstring sections and its expert."""
    spec = gym.spec(env_id)
    module, name = str(spec.entry_point).split(":")
    cls = getattr(__import__(module, fromlist=[name]), name)
    doc = inspect.cleandoc(cls.__doc__ or "")
    title, _, body = doc.partition("\n")
    body = body.replace("\n## ", "\n### ")
    return (
        f"## `{env_id}`\n\n{title.strip()}\n{body.rstrip()}\n\n### Expert\n"
        f"{EXPERTS[env_id]} `GameVectorEnv.expert_actions()` gives it for every world; "
        "`mbm-agent demos` records it.\n"
    )


def all_cards() -> str:
    """``docs/games.md``: every game's card."""
    head = (
        "# The games\n\n"
        "Generated from the games' docstrings by `python -m envs.cards > docs/games.md`.\n\n"
    )
    return head + "\n".join(game_card(env_id) for env_id in envs.ENV_IDS)


if __name__ == "__main__":
    print(all_cards(), end="")
