"""Game cards for people: each game's docstring card plus how its expert plays.

``python -m envs.cards > docs/games.md`` regenerates ``docs/games.md``; a test
checks that the committed file is current.
"""

from __future__ import annotations

import inspect

import gymnasium as gym

import envs

EXPERTS: dict[str, str] = {
    "mbm/GoToObject-v1": "Shortest path (breadth-first search over the grid, turns counted) to the named object; 100% success.",
    "mbm/GoToObject-v0": "Shortest path (breadth-first search over the grid, turns counted) to the named object; 100% success.",
    "mbm/FindSound-v0": "Shortest path to the object that makes the sound; 100% success.",
    "mbm/SoundMaze-v1": "Shortest path around the walls to the object whose sound the instruction names; 100% success.",
    "mbm/SoundMaze-v0": "Shortest path around the walls to the object whose sound the instruction names; 100% success.",
    "mbm/ModalityProbe-v0": "Answers with the cued value; 100% success.",
}


def _registered(env_id: str) -> str:
    kwargs = envs.VERSION_KWARGS.get(env_id, {})
    args = ", ".join(f"`{k}={v!r}`" for k, v in kwargs.items()) or "the game's own defaults"
    return f"Registered with {args}."


def game_card(env_id: str) -> str:
    """The Markdown card of one game: its docstring sections and its expert.

    An earlier version gets a short card that points to its newest one (the card
    there tells both apart in its Version History).
    """
    spec = gym.spec(env_id)
    if env_id not in envs.LATEST:
        latest = next(i for i in envs.LATEST if envs.game_name(i) == envs.game_name(env_id))
        return (
            f"## `{env_id}`\n\nAn earlier version of [`{latest}`](#{_anchor(latest)}), "
            f"kept so that earlier results can be reproduced; its card's *Version History* "
            f"says what changed. {_registered(env_id)}\n"
        )
    module, name = str(spec.entry_point).split(":")
    cls = getattr(__import__(module, fromlist=[name]), name)
    doc = inspect.cleandoc(cls.__doc__ or "")
    title, _, body = doc.partition("\n")
    body = body.replace("\n## ", "\n### ")
    return (
        f"## `{env_id}`\n\n{title.strip()} {_registered(env_id)}\n{body.rstrip()}\n\n### Expert\n"
        f"{EXPERTS[env_id]} `GameVectorEnv.expert_actions()` gives it for every world; "
        "`mbm-agent demos` records it.\n"
    )


def _anchor(env_id: str) -> str:
    """GitHub's heading anchor of a card's title (letters, digits, ``-`` and ``_`` kept)."""
    return "".join(c for c in env_id.lower() if c.isalnum() or c in "-_")


def all_cards() -> str:
    """``docs/games.md``: every game's card."""
    head = (
        "# The games\n\n"
        "Generated from the games' docstrings by `python -m envs.cards > docs/games.md`.\n\n"
    )
    return head + "\n".join(game_card(env_id) for env_id in envs.ENV_IDS)


if __name__ == "__main__":
    print(all_cards(), end="")
