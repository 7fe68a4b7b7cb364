"""envs.core.audio.playback_waveform: the listenable sound of one world's current mix."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from envs.core.audio import AudioConfig, log_mel, playback_waveform, shared_bank


def test_each_piece_is_the_waveform_whose_features_the_game_emits() -> None:
    env = envs.make("mbm/SoundMaze-v0")
    obs, _ = env.reset(seed=4)
    game = env.unwrapped.game
    cfg = game.audio_cfg
    gains = game.gains(game.agent_pos, game.heading, game.obj_pos, game.loudness)
    wave = playback_waveform(game.bank, game.src_id[0], gains[0], float(game.noise_level[0]), 2.0)
    assert wave.shape == (2, 2 * cfg.sample_rate) and wave.dtype == np.float32
    assert np.abs(wave).max() <= 1.0 and np.abs(wave).max() > 0.01
    # Between cross-fades, piece i is variant i of the mix: one of them is what was heard.
    fade = 64
    stride = cfg.n_samples - fade
    errors = []
    for i in range(cfg.variants):
        start = i * stride
        inner = wave[:, start + fade : start + cfg.n_samples - fade]
        ref = game.bank.waveform(game.src_id[:1], np.array([i]), gains[:1], game.noise_level[:1])[
            0, :, fade:-fade
        ]
        np.testing.assert_allclose(inner, np.clip(ref, -1, 1), atol=1e-6)
        full = game.bank.waveform(game.src_id[:1], np.array([i]), gains[:1], game.noise_level[:1])
        feats = np.clip(log_mel(full, cfg), cfg.low, cfg.high)[0]
        errors.append(np.abs(feats - obs["audio"]).max())
    assert min(errors) < 2e-3


def test_silence_is_silent_and_arguments_are_checked() -> None:
    bank = shared_bank(AudioConfig())
    silent = playback_waveform(bank, np.array([0, 1]), np.zeros((2, 2), np.float32), 0.0, 0.3)
    assert silent.shape == (2, 2400) and not silent.any()
    with pytest.raises(ValueError, match="fade"):
        playback_waveform(bank, np.array([0]), np.ones((1, 2), np.float32), 0.0, fade=10_000)
    with pytest.raises(ValueError, match="seconds"):
        playback_waveform(bank, np.array([0]), np.ones((1, 2), np.float32), 0.0, seconds=0.0)
