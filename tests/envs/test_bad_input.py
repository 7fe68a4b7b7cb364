"""Bad input fails loudly, with a message that names the argument and what is allowed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import envs
from envs.core.text import PAD_ID, UNK_ID, Vocabulary
from envs.games.goto_object import GoToObjectEnv

ALLOWED_ACTIONS = re.escape("[0, 2]")


@pytest.fixture
def single() -> envs.GameEnv:
    env = envs.make("mbm/GoToObject-v0")
    env.reset(seed=0)
    return env


@pytest.fixture
def vec() -> envs.GameVectorEnv:
    env = envs.make_vec("mbm/GoToObject-v0", 4)
    env.reset(seed=0)
    return env


# -- actions -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "action",
    [3, -1, np.int64(3), 1.5, np.float32(0.5), "a", None, True, np.array([1, 2]), [1]],
    ids=repr,
)
def test_single_env_rejects_invalid_action(single: envs.GameEnv, action: Any) -> None:
    with pytest.raises(ValueError, match=rf"action.*{ALLOWED_ACTIONS}") as info:
        single.step(action)
    # The message names the actions themselves.
    assert "left" in str(info.value) and "forward" in str(info.value)


def test_single_env_accepts_numpy_and_python_ints(single: envs.GameEnv) -> None:
    """Each integer type takes effect, and the same effect as the plain int."""
    reference = envs.make("mbm/GoToObject-v0")
    reference.reset(seed=0)
    moved = False
    for action in (0, np.int64(1), np.int32(2), np.array(2)):
        heading, pos = single.game.heading.copy(), single.game.agent_pos.copy()
        obs, reward, terminated, truncated, _ = single.step(action)
        expected = reference.step(int(action))
        for key in obs:
            np.testing.assert_array_equal(obs[key], expected[0][key], err_msg=f"{action!r}: {key}")
        assert (reward, terminated, truncated) == expected[1:4], repr(action)
        np.testing.assert_array_equal(single.game.heading, reference.game.heading)
        np.testing.assert_array_equal(single.game.agent_pos, reference.game.agent_pos)
        if int(action) in (0, 1):  # a turn always changes the heading, in place
            assert single.game.heading[0] != heading[0], repr(action)
            np.testing.assert_array_equal(single.game.agent_pos, pos)
        else:
            moved |= not np.array_equal(single.game.agent_pos, pos)
    assert moved, "neither forward step moved the agent"


def test_rejected_action_does_not_advance_the_episode(single: envs.GameEnv) -> None:
    before = single.game.step_count.copy(), single.game.agent_pos.copy()
    with pytest.raises(ValueError):
        single.step(7)
    np.testing.assert_array_equal(single.game.step_count, before[0])
    np.testing.assert_array_equal(single.game.agent_pos, before[1])


@pytest.mark.parametrize(
    "actions",
    [np.zeros(3, np.int64), np.zeros(5, np.int64), np.zeros((4, 2), np.int64), np.int64(0)],
    ids=["(3,)", "(5,)", "(4,2)", "scalar"],
)
def test_vector_env_rejects_wrong_batch_shape(vec: envs.GameVectorEnv, actions: Any) -> None:
    with pytest.raises(ValueError, match=re.escape("actions must have shape (4,)")):
        vec.step(actions)


def test_vector_env_rejects_a_batch_of_the_wrong_shape_but_right_size(
    vec: envs.GameVectorEnv,
) -> None:
    """A (2, 2) array is not 4 actions for 4 worlds: it must not be silently flattened."""
    with pytest.raises(ValueError, match=re.escape("actions must have shape (4,)")):
        vec.step(np.zeros((2, 2), np.int64))


@pytest.mark.parametrize(
    "actions",
    [np.array([0, 1, 2, 3]), np.array([-1, 0, 0, 0]), np.array([0, 0, 0, 0.5]), ["a"] * 4],
    ids=["3", "-1", "0.5", "str"],
)
def test_vector_env_rejects_invalid_action_values(vec: envs.GameVectorEnv, actions: Any) -> None:
    with pytest.raises(ValueError, match=rf"action.*{ALLOWED_ACTIONS}"):
        vec.step(actions)


def test_vector_env_names_the_first_invalid_action(vec: envs.GameVectorEnv) -> None:
    with pytest.raises(ValueError, match=re.escape("Invalid action -1: actions must be")):
        vec.step(np.array([0, -1, 7, 0]))


def test_vector_env_step_before_reset() -> None:
    with pytest.raises(RuntimeError, match=r"reset\(\) before step\(\)"):
        envs.make_vec("mbm/FindSound-v0", 2).step(np.zeros(2, np.int64))


def test_probe_actions_follow_n_answers() -> None:
    env = envs.make("mbm/ModalityProbe-v0", n_answers=5)
    env.reset(seed=0)
    assert env.action_space == gym.spaces.Discrete(5)
    with pytest.raises(ValueError, match=re.escape("[0, 4]")):
        env.step(5)
    # Answer 4 is taken as given: right exactly in the episodes whose answer is 4.
    outcomes = set()
    for seed in range(40):
        env.reset(seed=seed)
        answer = env.expert_action()
        _, reward, terminated, _, info = env.step(4)
        assert terminated and info["success"] == (answer == 4) == (reward > 0), seed
        outcomes.add(answer == 4)
    assert outcomes == {True, False}


# -- reset options -------------------------------------------------------------------
@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_unknown_reset_option(env_id: str) -> None:
    env = envs.make(env_id)
    with pytest.raises(
        ValueError, match=r"Unknown reset option\(s\) \['colour'\].*allowed options"
    ):
        env.reset(seed=0, options={"colour": "red"})
    with pytest.raises(ValueError, match=r"Unknown reset option\(s\) \['colour'\]"):
        envs.make_vec(env_id, 2).reset(seed=0, options={"colour": "red"})
    with pytest.raises(TypeError, match=r"reset options must be a dict or None"):
        env.reset(options=["colour"])  # type: ignore[arg-type]


# -- constructor arguments -----------------------------------------------------------
NAV = ("mbm/GoToObject-v0", "mbm/FindSound-v0", "mbm/SoundMaze-v0")


@pytest.mark.parametrize("env_id", NAV)
@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"grid_size": 4}, ValueError, r"grid_size must be an integer in \[5, 32\], got 4"),
        ({"grid_size": 33}, ValueError, r"grid_size must be an integer in \[5, 32\], got 33"),
        ({"grid_size": 8.0}, TypeError, r"grid_size must be an integer in \[5, 32\]"),
        ({"grid_size": "8"}, TypeError, r"grid_size must be an integer in \[5, 32\]"),
        ({"n_objects": 1}, ValueError, r"n_objects must be an integer in \[2, 6\], got 1"),
        ({"n_objects": 7}, ValueError, r"n_objects must be an integer in \[2, 6\], got 7"),
        (
            {"grid_size": 5, "n_objects": 4},
            ValueError,
            r"n_objects=4 does not fit a grid_size=5 world; use n_objects <= 3",
        ),
        ({"frame_size": 10}, ValueError, r"frame_size must be between \d+ and 1024"),
        ({"frame_size": (64, 2000)}, ValueError, r"frame_size must be between \d+ and 1024"),
        ({"frame_size": -64}, ValueError, r"frame_size must be between \d+ and 1024"),
        ({"frame_size": (64,)}, TypeError, r"frame_size must be an int or an \(H, W\) pair"),
        ({"frame_size": "64"}, TypeError, r"frame_size must be an int or an \(H, W\) pair"),
        ({"max_steps": 0}, ValueError, r"max_steps must be an integer in \[1, 100000\], got 0"),
        ({"max_steps": 10**6}, ValueError, r"max_steps must be an integer in \[1, 100000\]"),
        ({"max_steps": 1.5}, TypeError, r"max_steps must be an integer in \[1, 100000\]"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else "",
)
def test_navigation_arguments(
    env_id: str, kwargs: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        envs.make(env_id, **kwargs)
    with pytest.raises(error, match=pattern):
        envs.make_vec(env_id, 2, **kwargs)


def test_frame_size_minimum_scales_with_grid() -> None:
    """Each cell needs 3 pixels: the minimum is 3 * grid_size, and it is named."""
    with pytest.raises(ValueError, match=r"between 36 and 1024.*got \(35, 35\)"):
        envs.make("mbm/GoToObject-v0", grid_size=12, frame_size=35)
    envs.make("mbm/GoToObject-v0", grid_size=12, frame_size=36)


@pytest.mark.parametrize(
    ("density", "error"),
    [
        (-0.1, ValueError),
        (0.31, ValueError),
        (float("nan"), ValueError),
        ("x", TypeError),
        (None, TypeError),
        (False, TypeError),
    ],
    ids=repr,
)
def test_wall_density(density: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"wall_density must be a number in \[0, 0.3\]"):
        envs.make("mbm/SoundMaze-v0", wall_density=density)


@pytest.mark.parametrize("density", [0, 0.3, np.float32(0.1), np.float64(0.2)], ids=repr)
def test_wall_density_accepts_any_real_number(density: Any) -> None:
    assert envs.make("mbm/SoundMaze-v0", wall_density=density).game.wall_density == float(density)


@pytest.mark.parametrize("env_id", ["mbm/FindSound-v0", "mbm/SoundMaze-v0"])
@pytest.mark.parametrize("noise", [(-1.0, 0.2), (0.5, 0.1), "loud"], ids=repr)
def test_noise_range_is_validated(env_id: str, noise: Any) -> None:
    """``noise`` is a (low, high) level range; a bad one is refused at construction
    with a message naming it, not accepted (or failing obscurely at reset)."""
    with pytest.raises((ValueError, TypeError), match=r"noise"):
        envs.make(env_id, noise=noise).reset(seed=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (
            {"cue": "smell"},
            ValueError,
            r"cue must be one of \('image', 'text', 'audio'\), got 'smell'",
        ),
        ({"cue": None}, ValueError, r"cue must be one of"),
        ({"n_answers": 1}, ValueError, r"n_answers must be an integer in \[2, 8\], got 1"),
        ({"n_answers": 9}, ValueError, r"n_answers must be an integer in \[2, 8\], got 9"),
        ({"n_answers": 2.0}, TypeError, r"n_answers must be an integer in \[2, 8\]"),
        ({"n_answers": 8, "frame_size": 15}, ValueError, r"frame_size must be between 16 and 1024"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else "",
)
def test_probe_arguments(kwargs: dict[str, Any], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        envs.make("mbm/ModalityProbe-v0", **kwargs)


@pytest.mark.parametrize("num_envs", [0, -3])
def test_num_envs(num_envs: int) -> None:
    with pytest.raises(ValueError, match=r"num_envs must be an integer >= 1"):
        envs.make_vec("mbm/GoToObject-v0", num_envs)


@pytest.mark.parametrize("mode", ["bogus", "reset", AutoresetMode.DISABLED])
def test_autoreset_mode_rejected(mode: Any) -> None:
    with pytest.raises(
        ValueError, match=r"autoreset_mode=.*is not supported; use one of.*next_step"
    ):
        envs.make_vec("mbm/GoToObject-v0", 2, autoreset_mode=mode)


@pytest.mark.parametrize(
    ("name", "mode"),
    [("next_step", AutoresetMode.NEXT_STEP), ("same_step", AutoresetMode.SAME_STEP)],
)
def test_autoreset_mode_documented_strings_accepted(name: str, mode: AutoresetMode) -> None:
    """GameVectorEnv's docstring documents ``"next_step"`` / ``"same_step"``."""
    vec = envs.make_vec("mbm/GoToObject-v0", 2, autoreset_mode=name)
    assert vec.metadata["autoreset_mode"] is mode


def test_autoreset_mode_gymnasium_values_accepted() -> None:
    vec = envs.make_vec("mbm/GoToObject-v0", 2, autoreset_mode=AutoresetMode.SAME_STEP.value)
    assert vec.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP


def test_render_mode() -> None:
    with pytest.raises(ValueError, match=r"render_mode='bogus' is not supported.*rgb_array"):
        GoToObjectEnv(render_mode="bogus")
    with pytest.raises(ValueError, match=r"render_mode='human' is not supported.*rgb_array"):
        envs.make_vec("mbm/GoToObject-v0", 2, render_mode="human")
    env = envs.make("mbm/GoToObject-v0", render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame is not None and frame.dtype == np.uint8 and frame.shape[2] == 3
    vec = envs.make_vec("mbm/GoToObject-v0", 2, render_mode="rgb_array")
    vec.reset(seed=0)
    frames = vec.render()
    assert frames is not None and len(frames) == 2 and frames[0].shape == (64, 64, 3)


def test_unknown_game_argument_is_named() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'grid_size'"):
        envs.make("mbm/ModalityProbe-v0", grid_size=8)


# -- vocabulary ----------------------------------------------------------------------
@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary(["go", "to", "the", "red", "ball"], max_len=6)


def test_vocabulary_unknown_words_map_to_unk(vocab: Vocabulary) -> None:
    ids = vocab.encode("Go to the BLUE ball!")
    assert ids.dtype == np.int64 and ids.shape == (6,)
    assert ids.tolist() == [2, 3, 4, UNK_ID, 6, PAD_ID]
    assert vocab.word_id("blue") == UNK_ID
    assert vocab.decode(ids) == "go to the <unk> ball"
    assert vocab.decode([0, 0]) == ""


def test_vocabulary_long_instruction_is_cut_with_a_warning(vocab: Vocabulary) -> None:
    text = "go to the red ball go to the red ball"
    with pytest.warns(UserWarning, match=r"has 10 words; cut to max_len=6"):
        ids = vocab.encode(text)
    assert ids.tolist() == [2, 3, 4, 5, 6, 2]
    with pytest.warns(UserWarning, match=r"cut to max_len=6"):
        vocab.encode_batch(["go", text])


def test_vocabulary_json_round_trip(vocab: Vocabulary, tmp_path: Path) -> None:
    again = Vocabulary.from_json(vocab.to_json())
    assert again == vocab and again.tokens == vocab.tokens and again.max_len == vocab.max_len
    path = tmp_path / "vocab.json"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    text = "go to the red ball"
    np.testing.assert_array_equal(loaded.encode(text), vocab.encode(text))
    # The game vocabularies survive it too.
    for env_id in ("mbm/GoToObject-v0", "mbm/SoundMaze-v0", "mbm/ModalityProbe-v0"):
        game_vocab = envs.make(env_id).vocabulary
        assert Vocabulary.from_json(game_vocab.to_json()) == game_vocab


def _doc(**overrides: Any) -> str:
    data: dict[str, Any] = {
        "format": "mbm-agent/vocabulary",
        "version": 1,
        "max_len": 4,
        "tokens": ["<pad>", "<unk>", "go", "red"],
    }
    data.update(overrides)
    return json.dumps({k: v for k, v in data.items() if v is not ...})


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("{not json", r"Vocabulary JSON is corrupt"),
        ("", r"Vocabulary JSON is corrupt"),
        ("[]", r"Not an mbm-agent vocabulary"),
        (_doc(format="something-else"), r"Not an mbm-agent vocabulary"),
        (_doc(version=2), r"format version 2 is not supported"),
        (_doc(tokens=["go", "red"]), r"must be a list starting with"),
        (_doc(tokens="go red"), r"must be a list starting with"),
        (_doc(tokens=["<pad>", "<unk>", 3]), r"non-empty strings"),
        (_doc(max_len=0), r"max_len.* must be an integer >= 1"),
        (_doc(max_len=...), r"max_len"),
        # A duplicate would silently shift the ids of every later word.
        (_doc(tokens=["<pad>", "<unk>", "go", "go", "red"]), r"go"),
    ],
    ids=[
        "not-json",
        "empty",
        "list",
        "format",
        "version",
        "no-pad-unk",
        "tokens-str",
        "token-int",
        "max_len-0",
        "max_len-missing",
        "duplicate-token",
    ],
)
def test_vocabulary_corrupt_json(text: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        Vocabulary.from_json(text)


def test_vocabulary_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        Vocabulary.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match=r"corrupt"):
        Vocabulary.load(tmp_path / "bad.json")


@pytest.mark.parametrize("words", [[""], [None], [3]], ids=repr)
def test_vocabulary_bad_words(words: list[Any]) -> None:
    with pytest.raises(ValueError, match=r"Vocabulary words must be non-empty strings"):
        Vocabulary(words, max_len=3)
    with pytest.raises(ValueError, match=r"max_len must be >= 1, got 0"):
        Vocabulary(["a"], max_len=0)
