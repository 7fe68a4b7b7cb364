"""Observations stay in their spaces, with exact dtypes and configurable frames."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs

CASES: list[tuple[str, dict[str, Any]]] = [
    ("mbm/GoToObject-v0", {}),
    # The smallest frames: 3 pixels per cell of the room (top-down) or of the view.
    ("mbm/GoToObject-v0", {"grid_size": 5, "n_objects": 3, "frame_size": 15, "view": "topdown"}),
    ("mbm/GoToObject-v0", {"grid_size": 5, "n_objects": 3, "frame_size": 15, "view_size": 5}),
    ("mbm/FindSound-v0", {"n_objects": 6, "noise": (0.0, 1.0)}),
    ("mbm/SoundMaze-v0", {}),
    ("mbm/SoundMaze-v0", {"grid_size": 6, "wall_density": 0.3, "n_objects": 2}),
    ("mbm/ModalityProbe-v0", {"cue": "image", "n_answers": 8}),
    ("mbm/ModalityProbe-v0", {"cue": "text"}),
    ("mbm/ModalityProbe-v0", {"cue": "audio", "n_answers": 2}),
]
CASE_IDS = [f"{e.split('/')[1]}-{'-'.join(f'{k}{v}' for k, v in kw.items())}" for e, kw in CASES]
_ENVS: dict[int, gym.Env[Any, Any]] = {}


def _env(case: int) -> gym.Env[Any, Any]:
    # One env per case per process: hypothesis examples only reseed it.
    if case not in _ENVS:
        env_id, kwargs = CASES[case]
        _ENVS[case] = envs.make(env_id, **kwargs)
    return _ENVS[case]


def assert_in_space(obs: dict[str, np.ndarray], space: gym.spaces.Dict, where: str) -> None:
    assert set(obs) == set(space.spaces), where
    for key, sub in space.spaces.items():
        value = obs[key]
        assert isinstance(value, np.ndarray), f"{where}: {key} is {type(value)}"
        assert value.dtype == sub.dtype, f"{where}: {key} dtype {value.dtype} != {sub.dtype}"
        assert value.shape == sub.shape, f"{where}: {key} shape {value.shape} != {sub.shape}"
        if not sub.contains(value):
            lo, hi = value.min(), value.max()
            raise AssertionError(f"{where}: {key} outside {sub} (min {lo}, max {hi})")
    assert space.contains(obs), where


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    case=st.integers(0, len(CASES) - 1),
    seed=st.integers(0, 2**32 - 1),
    actions=st.lists(st.integers(0, 7), min_size=1, max_size=40),
)
def test_observations_stay_in_space(case: int, seed: int, actions: list[int]) -> None:
    env = _env(case)
    obs, info = env.reset(seed=seed)
    assert_in_space(obs, env.observation_space, f"case {CASE_IDS[case]} seed {seed} reset")
    assert isinstance(info["instruction"], str) and isinstance(info["success"], bool)
    for t, a in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(a % env.action_space.n)
        assert_in_space(obs, env.observation_space, f"case {CASE_IDS[case]} seed {seed} step {t}")
        assert isinstance(reward, float) and 0.0 <= reward <= 1.0
        assert isinstance(terminated, bool) and isinstance(truncated, bool)
        assert not (terminated and truncated)
        assert reward == 0.0 or (terminated and info["success"])
        if terminated or truncated:
            obs, info = env.reset()
            assert_in_space(obs, env.observation_space, f"case {CASE_IDS[case]} re-reset")


@pytest.mark.parametrize(("env_id", "kwargs"), CASES, ids=CASE_IDS)
def test_vector_observations_stay_in_space_over_many_worlds(
    env_id: str, kwargs: dict[str, Any]
) -> None:
    """Many seeds at once: 64 worlds with random actions, autoresetting."""
    vec = envs.make_vec(env_id, 64, **kwargs)
    obs, _ = vec.reset(seed=2024)
    rng = np.random.default_rng(0)
    for t in range(30):
        assert obs in vec.observation_space, f"step {t}"
        for key, sub in vec.observation_space.spaces.items():
            assert obs[key].dtype == sub.dtype and obs[key].shape == sub.shape, key
        obs, reward, *_ = vec.step(rng.integers(0, vec.single_action_space.n, 64))
        assert ((reward >= 0) & (reward <= 1)).all()


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_dtypes_and_shapes_are_exact(env_id: str) -> None:
    env = gym.make(env_id).unwrapped
    obs, _ = env.reset(seed=0)
    space = env.observation_space
    assert isinstance(space, gym.spaces.Dict)
    img = space["image"]
    assert isinstance(img, gym.spaces.Box) and img.dtype == np.uint8
    assert img.shape == (64, 64, 3) and obs["image"].shape == (64, 64, 3)
    assert (img.low == 0).all() and (img.high == 255).all()
    assert obs["image"].dtype == np.uint8
    if "text" in space.spaces:
        txt = space["text"]
        assert txt.dtype == np.int64 and obs["text"].dtype == np.int64
        assert txt.shape == obs["text"].shape and len(txt.shape) == 1
        assert (txt.low == 0).all() and (txt.high == len(env.unwrapped.vocabulary) - 1).all()
    if "audio" in space.spaces:
        aud = space["audio"]
        assert aud.dtype == np.float32 and obs["audio"].dtype == np.float32
        assert aud.shape == (2, 32, 8) and obs["audio"].shape == (2, 32, 8)
    assert set(space.spaces) == set(env.unwrapped.game.modalities)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
@pytest.mark.parametrize(("frame_size", "shape"), [(48, (48, 48, 3)), ((64, 96), (64, 96, 3))])
def test_frame_size_sets_image_shape(
    env_id: str, frame_size: int | tuple[int, int], shape: tuple[int, int, int]
) -> None:
    env = envs.make(env_id, frame_size=frame_size, render_mode="rgb_array")
    assert env.observation_space["image"].shape == shape
    obs, _ = env.reset(seed=1)
    assert obs["image"].shape == shape
    obs, *_ = env.step(0)
    assert obs["image"].shape == shape
    vec = envs.make_vec(env_id, 3, frame_size=frame_size)
    vobs, _ = vec.reset(seed=1)
    assert vobs["image"].shape == (3, *shape)
    frame = env.render()
    assert frame is not None and frame.dtype == np.uint8 and frame.ndim == 3
    if env_id != "mbm/ModalityProbe-v0":
        game = env.game
        # The top-down room (what people see) draws the whole board: the wall colour
        # reaches the board's edges.
        room = game.frames()[0]
        assert room.shape == shape
        g, t = game.grid_size, game.renderer.tile
        top, left = game.renderer.top, game.renderer.left
        wall = np.array([110, 110, 110], dtype=np.uint8)
        assert (room[top, left] == wall).all()
        assert (room[top + g * t - 1, left + g * t - 1] == wall).all()
        # The observed egocentric view is the largest view x view board that fits,
        # centred on a black margin, with the agent at its bottom centre.
        ego = game.ego
        v, t = ego.view, ego.tile
        assert v * t <= min(shape[:2]) < v * (t + 1)
        top, left = ego.top, ego.left
        board = np.zeros(shape[:2], dtype=bool)
        board[top : top + v * t, left : left + v * t] = True
        assert (obs["image"][~board] == 0).all()
        r0, c0 = top + (v - 1) * t, left + (v // 2) * t
        np.testing.assert_array_equal(
            obs["image"][r0 : r0 + t, c0 : c0 + t], ego.tiles[ego.agent_id]
        )


@pytest.mark.parametrize("env_id", ["mbm/GoToObject-v0", "mbm/SoundMaze-v0"])
def test_text_decodes_to_instruction(env_id: str) -> None:
    env = gym.make(env_id).unwrapped
    vocab = env.unwrapped.vocabulary
    assert vocab is not None
    seen = set()
    for seed in range(60):
        obs, info = env.reset(seed=seed)
        assert vocab.decode(obs["text"]) == info["instruction"]
        assert (obs["text"] != 1).all(), "an instruction word is unknown to the vocabulary"
        seen.add(info["instruction"])
        obs, _, _, _, info = env.step(2)
        assert vocab.decode(obs["text"]) == info["instruction"]
    assert len(seen) > 10


def test_probe_text_decodes_to_instruction_when_cued() -> None:
    env = envs.make("mbm/ModalityProbe-v0", cue="text")
    for seed in range(30):
        obs, info = env.reset(seed=seed)
        assert env.vocabulary.decode(obs["text"]) == info["instruction"]
