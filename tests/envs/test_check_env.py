"""Every registered game passes Gymnasium's and SB3's env checkers, single and vector."""

from __future__ import annotations

import re
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs

# (env id, kwargs) for every registered game, and the probe once per cue.
CASES: list[tuple[str, dict[str, Any]]] = [
    (env_id, {}) for env_id in envs.ENV_IDS if env_id != "mbm/ModalityProbe-v0"
] + [("mbm/ModalityProbe-v0", {"cue": cue}) for cue in ("image", "text", "audio")]
CASE_IDS = [f"{env_id.split('/')[1]}{kw.get('cue', '')}" for env_id, kw in CASES]

# SB3's checker takes every 3-D Box as a CNN image. Our `audio` key is a
# (2, n_mels, n_frames) float32 log-mel map, not a picture: it is declared as
# audio by key name and encoded by the audio encoder, never by NatureCNN. These
# three warnings are about that key only (checked below: GoToObject, which has
# no audio, must raise none), so they are allowed for games with audio.
SB3_AUDIO_WARNINGS = (
    r"observation audio is an image but its `dtype` is \(float32\)",
    r"observation space audio is an image but the upper and lower bounds are not in \[0, 255\]",
    # Names no key; the audio map (32 x 8) is the only 3-D entry under 36 px
    # (frames are 64 x 64 by default, checked in test_image_key_fits_sb3_cnn).
    r"The minimal resolution for an image is 36x36",
)


def _raise_all_warnings(allowed: tuple[str, ...] = ()) -> None:
    warnings.simplefilter("error")
    for pattern in allowed:
        warnings.filterwarnings("ignore", message=f".*{pattern}", category=UserWarning)
    # Gymnasium's own notice when an older version of a game (GoToObject-v0) is made.
    warnings.filterwarnings("ignore", message=".*is out of date", category=DeprecationWarning)


@pytest.mark.parametrize(("env_id", "kwargs"), CASES, ids=CASE_IDS)
def test_gymnasium_check_env(env_id: str, kwargs: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        # check_env also makes a render_mode="human" env; headless, it warns and draws nowhere.
        _raise_all_warnings(("render_mode='human' without a display",))
        env = gym.make(env_id, **kwargs).unwrapped
        gym_check_env(env, skip_render_check=False)
        env.close()


@pytest.mark.parametrize(("env_id", "kwargs"), CASES, ids=CASE_IDS)
def test_sb3_check_env(env_id: str, kwargs: dict[str, Any]) -> None:
    env = gym.make(env_id, **kwargs).unwrapped
    allowed = SB3_AUDIO_WARNINGS if "audio" in env.observation_space.spaces else ()
    with warnings.catch_warnings():
        _raise_all_warnings(allowed)
        sb3_check_env(env, warn=True)
    env.close()


@pytest.mark.parametrize(("env_id", "kwargs"), CASES, ids=CASE_IDS)
def test_image_key_fits_sb3_cnn(env_id: str, kwargs: dict[str, Any]) -> None:
    """The allowed 36x36 warning above must not be about the image key."""
    space = gym.make(env_id, **kwargs).observation_space["image"]
    assert space.shape[0] >= 36 and space.shape[1] >= 36


def test_allowed_sb3_warnings_are_only_about_audio() -> None:
    """The exemptions are real: with them, a game without audio still raises nothing,
    and without them, a game with audio does warn (so the exemption is needed)."""
    with warnings.catch_warnings():
        _raise_all_warnings()
        sb3_check_env(gym.make("mbm/GoToObject-v0").unwrapped, warn=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(gym.make("mbm/FindSound-v0").unwrapped, warn=True)
    messages = [str(w.message) for w in caught]
    for pattern in SB3_AUDIO_WARNINGS:
        assert any(re.search(pattern, m) for m in messages), pattern


@pytest.mark.parametrize(("env_id", "kwargs"), CASES, ids=CASE_IDS)
def test_make_vec_vector_entry_point(env_id: str, kwargs: dict[str, Any]) -> None:
    n = 4
    single = gym.make(env_id, **kwargs)
    with warnings.catch_warnings():
        _raise_all_warnings()
        vec = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
    assert isinstance(vec, envs.GameVectorEnv)
    assert vec.num_envs == n
    assert vec.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    assert vec.single_observation_space == single.observation_space
    assert vec.single_action_space == single.action_space
    assert vec.observation_space == batch_space(single.observation_space, n)
    assert vec.action_space == batch_space(single.action_space, n)
    assert isinstance(vec.action_space, gym.spaces.MultiDiscrete)

    obs, info = vec.reset(seed=0)
    assert obs in vec.observation_space
    assert set(info) >= {"instruction", "success"}
    vec.action_space.seed(0)
    for _ in range(20):
        obs, reward, terminated, truncated, info = vec.step(vec.action_space.sample())
        assert obs in vec.observation_space
        assert reward.shape == terminated.shape == truncated.shape == (n,)
        assert reward.dtype == np.float32
        assert terminated.dtype == truncated.dtype == np.bool_
        assert info["instruction"].shape == (n,)
    vec.close()


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_vector_metadata_declares_autoreset_mode(mode: AutoresetMode) -> None:
    vec = envs.make_vec("mbm/GoToObject-v0", 2, autoreset_mode=mode)
    assert vec.metadata["autoreset_mode"] is mode
    # The class default must not be mutated by an instance.
    assert type(vec).metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP


def test_envs_make_helpers_match_gym() -> None:
    env = envs.make("mbm/SoundMaze-v0")
    assert isinstance(env, envs.GameEnv)
    assert env.observation_space == gym.make("mbm/SoundMaze-v0").observation_space
    with pytest.raises(gym.error.Error, match=r"Unknown game id 'mbm/Nope-v0'.*GoToObject"):
        envs.make("mbm/Nope-v0")
