"""Each game's card (Gymnasium's docstring template) matches the code."""

from __future__ import annotations

import inspect
import re

import gymnasium as gym
import numpy as np
import pytest

import envs

SECTIONS = (
    "Description",
    "Observation Space",
    "Action Space",
    "Rewards",
    "Starting State",
    "Episode End",
    "Arguments",
    "Version History",
)


def env_class(env_id: str, vector: bool = False) -> type:
    spec = gym.spec(env_id)
    target = spec.vector_entry_point if vector else spec.entry_point
    assert isinstance(target, str)
    module, name = target.split(":")
    return getattr(__import__(module, fromlist=[name]), name)


def sections(doc: str) -> dict[str, str]:
    """``## Title`` -> body, in order."""
    doc = inspect.cleandoc(doc)
    parts = re.split(r"^## +(.+?)\s*$", doc, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def table_rows(body: str) -> list[list[str]]:
    """Cells of the markdown table rows in ``body``, header and separator dropped."""
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in body.splitlines()
        if line.strip().startswith("|")
    ]
    assert len(rows) >= 3, "no markdown table"
    header, separator, *data = rows
    assert [h.lower() for h in header] == ["key", "space", "meaning"], header
    assert all(set(c) <= set("-: ") for c in separator), separator
    return data


def documented_keys(doc: str) -> list[str]:
    keys = []
    for row in table_rows(sections(doc)["Observation Space"]):
        match = re.fullmatch(r"`([^`]+)`", row[0])
        assert match, f"key cell {row[0]!r} is not a `code` name"
        keys.append(match.group(1))
    return keys


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_docstring_has_the_gymnasium_sections_in_order(env_id: str) -> None:
    doc = env_class(env_id).__doc__
    assert doc, f"{env_id} has no docstring"
    found = list(sections(doc))
    assert found == list(SECTIONS), found
    body = sections(doc)
    assert "Termination" in body["Episode End"] and "Truncation" in body["Episode End"]
    assert re.search(r"\bv0\b", body["Version History"])
    for title, text in body.items():
        assert text.strip(), f"empty section {title}"


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
@pytest.mark.parametrize("vector", [False, True], ids=["single", "vector"])
def test_observation_table_documents_exactly_the_space_keys(env_id: str, vector: bool) -> None:
    keys = documented_keys(env_class(env_id, vector).__doc__ or "")
    assert len(keys) == len(set(keys)), f"duplicate rows: {keys}"
    space = gym.make(env_id).observation_space
    # gymnasium.spaces.Dict sorts its keys, so only the set is meaningful.
    assert sorted(keys) == sorted(space.spaces), (keys, list(space.spaces))


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_observation_table_dtypes_and_fixed_shapes_match(env_id: str) -> None:
    space = gym.make(env_id).observation_space
    doc = env_class(env_id).__doc__ or ""
    for row in table_rows(sections(doc)["Observation Space"]):
        key = row[0].strip("`")
        sub = space[key]
        assert str(sub.dtype) in row[1], f"{key}: {row[1]} vs dtype {sub.dtype}"
        # Shapes written with numbers only (not H, W, V) must be exact.
        shape = re.search(r"\((\d+(?:,\s*\d+)*,?)\)", row[1])
        if shape:
            written = tuple(int(s) for s in shape.group(1).split(",") if s.strip())
            assert written == sub.shape, f"{key}: documented {written}, actual {sub.shape}"
        if isinstance(sub, gym.spaces.Box) and sub.dtype == np.float32:
            low, high = re.findall(r"-?\d+\.\d+", row[1])[:2]
            assert float(low) == pytest.approx(float(sub.low.min()), abs=0.01)
            assert float(high) == pytest.approx(float(sub.high.max()), abs=0.01)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_arguments_section_names_every_constructor_argument(env_id: str) -> None:
    game = env_class(env_id).game_class
    params = [
        p for p in inspect.signature(game.__init__).parameters if p not in ("self", "num_worlds")
    ]
    body = sections(game.__doc__ or "")["Arguments"]
    missing = [p for p in params if f"``{p}``" not in body]
    assert not missing, f"undocumented arguments: {missing}"


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_action_space_section_matches(env_id: str) -> None:
    env = gym.make(env_id)
    body = sections(env_class(env_id).__doc__ or "")["Action Space"]
    if env_id == "mbm/ModalityProbe-v0":
        assert "Discrete(n_answers)" in body
    else:
        assert f"Discrete({env.action_space.n})" in body
        for i, name in enumerate(env.unwrapped.game.action_names):
            assert re.search(rf"{i} [^,]*{name}", body), (i, name)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_episode_end_documents_is_success_and_the_default_limit(env_id: str) -> None:
    """The card says what users' tools read: ``info["is_success"]`` and the default
    configuration's ``spec.max_episode_steps``."""
    body = sections(env_class(env_id).__doc__ or "")["Episode End"]
    assert 'info["is_success"]' in body and 'info["success"]' in body
    assert "ResetNeeded" in body and "reset()" in body
    limit = gym.make(env_id).spec.max_episode_steps
    assert "max_episode_steps" in body
    assert re.search(rf"\b{limit}\b", body), f"the default limit {limit} is not stated"


def test_parser_notices_a_missing_row() -> None:
    """The table parser is what the checks above rely on: it must see a dropped row."""
    doc = env_class("mbm/SoundMaze-v0").__doc__ or ""
    assert sorted(documented_keys(doc)) == ["audio", "image", "text"]
    dropped = "\n".join(
        line for line in doc.splitlines() if not line.strip().startswith("| `audio`")
    )
    assert sorted(documented_keys(dropped)) == ["image", "text"]


def test_docs_game_cards_are_current():
    from pathlib import Path

    from envs.cards import all_cards

    path = Path(__file__).resolve().parents[2] / "docs" / "games.md"
    assert path.read_text(encoding="utf-8") == all_cards(), (
        "docs/games.md is stale: python -m envs.cards > docs/games.md"
    )
    for env_id in envs.ENV_IDS:
        assert f"## `{env_id}`" in all_cards()
