"""Atari with sound (``mbm-atari/<Game>-v0``): SB3's Atari preprocessing of the frame, every sample kept.

Each step is checked against ALE itself stepped one emulator frame at a time.
Needs the ``atari`` extra (``ale-py`` >= 0.10.2, ROMs in its wheel); skipped,
saying so, without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("ale_py", reason="needs ale-py >= 0.10.2 (the atari extra)")

from ale_py.env import AtariEnv

from envs.core.audio import LOG_EPS
from mbm_agent.cli import main
from mbm_agent.training.atari import (
    FULL_GAMES,
    SAMPLE_RATE,
    AtariSoundPreprocessing,
    ale_game_name,
    grey_resize,
)
from mbm_agent.training.config import resolve_config
from mbm_agent.training.envs import make_single_env, observation_adapter
from mbm_agent.training.trainer import train
from mbm_agent.view.session import LoadedRun

SEAQUEST = "mbm-atari/Seaquest-v0"


def _ale(game: str = "seaquest") -> AtariEnv:
    return AtariEnv(
        game=game,
        obs_type="rgb",
        frameskip=1,
        repeat_action_probability=0.0,
        full_action_space=False,
        sound_obs=True,
    )


def test_names_and_grey_frames() -> None:
    assert ale_game_name("MsPacman") == "ms_pacman"
    assert ale_game_name("Seaquest") == "seaquest"
    assert SAMPLE_RATE == 30720
    # ITU-R 601 luma, as OpenCV's RGB2GRAY, then area averaging.
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[:2, :2] = (200, 100, 50)  # luma 124.2
    frame[2:, 2:] = (10, 250, 30)  # luma 152.9
    out = grey_resize(frame, 2)
    assert out.dtype == np.uint8
    np.testing.assert_allclose(out, [[124, 0], [0, 153]], atol=1)
    np.testing.assert_allclose(grey_resize(frame, 1), [[(124.2 + 152.9) / 4]], atol=1)


def test_each_step_is_four_emulator_frames_with_all_their_sound() -> None:
    env = AtariSoundPreprocessing(_ale(), noop_max=0, fire_reset=False, clip_reward=False)
    ref = _ale()
    assert env.observation_space["image"] == gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)
    assert env.observation_space["sound"] == gym.spaces.Box(0, 255, (2048,), np.uint8)
    assert env.metadata["audio_sample_rate"] == SAMPLE_RATE
    obs, _ = env.reset(seed=4)
    ref_obs, _ = ref.reset(seed=4)
    assert not obs["image"][..., :3].any()  # zeros before the first frame
    np.testing.assert_array_equal(obs["image"][..., 3], grey_resize(ref_obs["image"], 84))
    np.testing.assert_array_equal(obs["sound"][-512:], ref_obs["sound"])
    rng = np.random.default_rng(0)
    heard = False
    previous = obs["image"]
    for _ in range(60):
        action = int(rng.integers(env.action_space.n))
        obs, reward, terminated, truncated, _ = env.step(action)
        sounds, frames, total = [], [], 0.0
        for _ in range(4):
            r_obs, r, *_ = ref.step(action)
            sounds.append(r_obs["sound"])
            frames.append(r_obs["image"])
            total += float(r)
        np.testing.assert_array_equal(obs["sound"], np.concatenate(sounds))
        pooled = np.maximum(frames[-2], frames[-1])
        np.testing.assert_array_equal(obs["image"][..., 3], grey_resize(pooled, 84))
        np.testing.assert_array_equal(obs["image"][..., :3], previous[..., 1:])  # the stack
        assert reward == total
        heard |= bool(np.any(obs["sound"] != 128))
        previous = obs["image"]
        if terminated or truncated:
            break
    assert heard  # Seaquest makes sounds in its first seconds


def test_a_lost_life_ends_the_training_episode_not_the_game() -> None:
    raw_points = False

    def lives_lost(env: gym.Env, clipped: bool) -> tuple[bool, dict]:
        nonlocal raw_points
        env.reset(seed=1)
        rng = np.random.default_rng(1)
        for _ in range(3000):
            _, reward, terminated, truncated, info = env.step(int(rng.integers(18)))
            if clipped:
                assert reward in (-1.0, 0.0, 1.0)
            else:
                raw_points |= reward > 1.0
            if terminated or truncated:
                return terminated, info
        raise AssertionError("no episode end in 3000 steps")

    train_env = gym.make(SEAQUEST)
    terminated, info = lives_lost(train_env, clipped=True)
    ale = train_env.unwrapped.ale
    assert terminated and not info["game_over"] and ale.lives() == 3
    frame = ale.getEpisodeFrameNumber()
    train_env.reset()  # the game goes on
    assert ale.getEpisodeFrameNumber() > frame and ale.lives() == 3

    full = gym.make(SEAQUEST, **FULL_GAMES)
    terminated, info = lives_lost(full, clipped=False)
    assert info["game_over"] and full.unwrapped.ale.lives() == 0
    assert raw_points  # Seaquest's 20 points a kill, not clipped to 1


def test_mbm_agent_hears_the_sound_as_log_mel_features() -> None:
    cfg = resolve_config(SEAQUEST)
    adapter = observation_adapter(cfg)
    assert adapter.modalities == {"sound": "audio"}
    env, _ = make_single_env(SEAQUEST, {}, adapter=adapter)
    assert env.observation_space["sound"].shape == (1, 32, 8)
    obs, _ = env.reset(seed=0)
    # The rolling window (2.25 steps) starts silent: its oldest mel frames are log(eps);
    # the reset's own 2,048 samples (no-ops, FIRE) fill the newest.
    first = obs["sound"].copy()
    np.testing.assert_array_equal(first[..., 0], np.float32(np.log(LOG_EPS)))
    frames = {first.tobytes()}
    for _ in range(40):
        obs, *_ = env.step(0)
        assert env.observation_space.contains(obs)
        frames.add(obs["sound"].tobytes())
    assert len(frames) > 10  # what it hears changes from step to step
    env.close()
    assert resolve_config(
        SEAQUEST, config_file="mbm_agent/configs/variants/frame-only.yaml"
    ).modalities == {"sound": "ignore"}


@pytest.mark.slow
def test_trains_with_frame_and_sound(tmp_path: Path) -> None:
    """A tiny run with the game's own config (nature CNN + waveform): the pipeline, not the score."""
    cfg = resolve_config(
        SEAQUEST,
        overrides={
            "steps": 128,
            "n_envs": 2,
            "runs_dir": str(tmp_path),
            "algo_kwargs": {"n_steps": 32, "batch_size": 64, "n_epochs": 1},
            "eval_every": 0,
            "final_eval_episodes": 1,
            "checkpoint_every": 0,
            "gif_episodes": 0,
            # a greedy untrained sub may idle at the surface for the 30 minutes of a game
            "env_kwargs": {"max_frames": 800},
        },
    )
    result = train(cfg, progress=False)
    run_dir = Path(result.run_dir)
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["lengths"]["max"] <= 200  # 800 emulator frames, 4 a step
    # Trained on lives with clipped rewards, scored on full games with raw points, as
    # RL Zoo scores; `mbm-agent eval` of the run too, unless --set says otherwise.
    assert report["meta"]["env_kwargs"] == {"max_frames": 800, **FULL_GAMES}
    assert main(["eval", str(run_dir), "--episodes", "1", "--stochastic"]) == 0
    sampled = json.loads((run_dir / "eval-sampled.json").read_text())
    assert sampled["meta"]["env_kwargs"] == {"max_frames": 800, **FULL_GAMES}
    cli = ["eval", str(run_dir), "--episodes", "1", "--set", "clip_reward=true", "--name", "clip"]
    assert main(cli) == 0
    clipped = json.loads((run_dir / "clip.json").read_text())
    assert clipped["meta"]["env_kwargs"]["clip_reward"] is True
    # The viewer plays the games the evaluations score.
    assert LoadedRun.load(run_dir).env_kwargs == {"max_frames": 800, **FULL_GAMES}
    spec = json.loads((run_dir / "best" / "model.json").read_text())
    assert spec["modalities"] == {"sound": "audio"}
    sound = spec["observation_adapter"]["transforms"]["sound"]
    assert sound["dtype"] == "uint8" and sound["sample_rate"] == SAMPLE_RATE
