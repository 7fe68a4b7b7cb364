"""Audio features agree with librosa, and the fast mix equals the slow reference."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.signal

import envs
from envs.core.audio import (
    LOG_EPS,
    AudioBank,
    AudioConfig,
    GainTable,
    hann,
    hz_to_mel,
    log_mel,
    mel_filterbank,
    mel_to_hz,
    stereo_gains,
    stft,
)

CONFIGS = [
    AudioConfig(),
    AudioConfig(sample_rate=16000, n_fft=512, hop_length=160, n_frames=5, n_mels=40),
    AudioConfig(sample_rate=22050, n_fft=1024, hop_length=256, n_frames=3, n_mels=64),
]
CFG_IDS = [f"sr{c.sample_rate}-fft{c.n_fft}-mels{c.n_mels}" for c in CONFIGS]


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_mel_filterbank_matches_librosa(cfg: AudioConfig) -> None:
    ours = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)
    ref = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels)
    assert ours.shape == ref.shape == (cfg.n_mels, cfg.n_fft // 2 + 1)
    # librosa returns float32: compare at float32 precision, relative to the peak.
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * ref.max())


def test_mel_scale_matches_librosa() -> None:
    f = np.array([0.0, 50.0, 200.0, 999.0, 1000.0, 1001.0, 3000.0, 11025.0])
    np.testing.assert_allclose(hz_to_mel(f), librosa.hz_to_mel(f), rtol=1e-12, atol=1e-12)
    m = hz_to_mel(f)
    np.testing.assert_allclose(mel_to_hz(m), librosa.mel_to_hz(m), rtol=1e-10)
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("n", [16, 256, 1024])
def test_hann_is_scipy_periodic_hann(n: int) -> None:
    np.testing.assert_allclose(hann(n), scipy.signal.get_window("hann", n), atol=1e-15)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_stft_matches_librosa(cfg: AudioConfig) -> None:
    x = np.random.default_rng(0).standard_normal(cfg.n_samples)
    ours = stft(x, cfg)
    ref = librosa.stft(x, n_fft=cfg.n_fft, hop_length=cfg.hop_length, center=False, window="hann")
    assert ours.shape == ref.shape == (cfg.n_freqs, cfg.n_frames)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
    # Batched input: leading axes are carried through.
    batch = np.stack([x, 2 * x])
    np.testing.assert_allclose(stft(batch, cfg)[1], 2 * ref, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_log_mel_matches_librosa(cfg: AudioConfig) -> None:
    rng = np.random.default_rng(1)
    t = np.arange(cfg.n_samples) / cfg.sample_rate
    for x in (rng.standard_normal(cfg.n_samples) * 0.1, 0.5 * np.sin(2 * np.pi * 440.0 * t)):
        ours = log_mel(x, cfg)
        mel = librosa.feature.melspectrogram(
            y=x,
            sr=cfg.sample_rate,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            center=False,
            window="hann",
            power=2.0,
            n_mels=cfg.n_mels,
        )
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, np.log(mel + LOG_EPS), atol=1e-4)


def test_feature_bounds_match_the_space() -> None:
    cfg = AudioConfig()
    assert cfg.low == pytest.approx(np.log(LOG_EPS))
    assert cfg.n_samples == cfg.n_fft + (cfg.n_frames - 1) * cfg.hop_length
    space = envs.make("mbm/FindSound-v0").observation_space["audio"]
    assert space.low.min() == np.float32(cfg.low) and space.high.max() == np.float32(cfg.high)
    # Silence is exactly the lower bound after clipping, and lies in the space.
    bank = AudioBank(cfg)
    silent = bank.mix_features(
        np.zeros((1, 1), np.int64),
        np.zeros(1, np.int64),
        np.zeros((1, 1, 2), np.float32),
        np.zeros(1, np.float32),
    )
    assert (silent == np.float32(cfg.low)).all()
    assert space.contains(silent[0])


def _random_mix(
    bank: AudioBank, rng: np.random.Generator, n: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    cfg = bank.cfg
    sources = rng.integers(0, bank.n_sources, (n, k))
    variant = rng.integers(0, cfg.variants, n)
    gains = rng.uniform(0, 1.2, (n, k, 2)).astype(np.float32)
    gains[: n // 8] = 0.0  # noise only
    gains[n // 8 : n // 4, :, 0] = 0.0  # one ear silent
    noise = rng.uniform(0, 0.3, n).astype(np.float32)
    noise[: n // 16] = 0.0  # silence
    noise[n // 4 : n // 2] *= 1e-3  # faint noise: a large dynamic range
    return sources, variant, gains, noise


@pytest.mark.parametrize("k", [1, 3, 6])
def test_mix_features_equals_log_mel_of_waveform(k: int) -> None:
    """The spectral-domain shortcut is the log-mel of the mixed waveform."""
    cfg = AudioConfig()
    bank = AudioBank(cfg, tones=(250.0, 1200.0, 3500.0))
    args = _random_mix(bank, np.random.default_rng(k), 256, k)
    fast = bank.mix_features(*args)
    wave = bank.waveform(*args)
    assert wave.shape == (256, 2, cfg.n_samples)
    ref = np.clip(log_mel(wave, cfg), cfg.low, cfg.high)
    assert fast.shape == ref.shape == (256, 2, cfg.n_mels, cfg.n_frames)
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, ref, atol=2e-3, rtol=0)


def test_mix_features_is_linear_in_power_per_ear() -> None:
    """Left and right ears are mixed independently: swapping the gains swaps the ears
    (up to the per-ear noise clips, silenced here)."""
    cfg = AudioConfig()
    bank = AudioBank(cfg)
    sources, variant, gains, _ = _random_mix(bank, np.random.default_rng(9), 64, 3)
    quiet = np.zeros(64, np.float32)
    a = bank.mix_features(sources, variant, gains, quiet)
    b = bank.mix_features(sources, variant, gains[..., ::-1].copy(), quiet)
    np.testing.assert_allclose(a[:, 0], b[:, 1], atol=1e-4)
    np.testing.assert_allclose(a[:, 1], b[:, 0], atol=1e-4)


def test_gain_table_equals_stereo_gains() -> None:
    rng = np.random.default_rng(3)
    size, n, k = 9, 500, 4
    agent = rng.integers(1, size - 1, (n, 2))
    heading = rng.integers(0, 4, n)
    sources = rng.integers(1, size - 1, (n, k, 2))
    loud = rng.uniform(0, 1, (n, k)).astype(np.float32)
    table = GainTable(size)
    np.testing.assert_allclose(
        table(agent, heading, sources, loud), stereo_gains(agent, heading, sources, loud), atol=1e-6
    )


@pytest.mark.parametrize("env_id", ["mbm/FindSound-v0", "mbm/SoundMaze-v0"])
def test_env_audio_is_the_reference_mix_of_its_state(env_id: str) -> None:
    """What the game emits is log_mel of the waveform its own state describes
    (for the clip variant drawn this step, whichever it is)."""
    n = 16
    vec = envs.make_vec(env_id, n)
    obs, _ = vec.reset(seed=21)
    rng = np.random.default_rng(0)
    for _ in range(3):
        game = vec.unwrapped.game
        bank, cfg = game.bank, game.audio_cfg
        gains = stereo_gains(game.agent_pos, game.heading, game.obj_pos, game.loudness)
        for i in range(n):
            s = slice(i, i + 1)
            errors = []
            for variant in range(cfg.variants):
                wave = bank.waveform(
                    game.src_id[s], np.array([variant]), gains[s], game.noise_level[s]
                )
                ref = np.clip(log_mel(wave, cfg), cfg.low, cfg.high)[0]
                errors.append(np.abs(ref - obs["audio"][i]).max())
            assert min(errors) < 2e-3, f"world {i}: no clip variant reproduces the audio"
        obs, *_ = vec.step(rng.integers(0, 3, n))
