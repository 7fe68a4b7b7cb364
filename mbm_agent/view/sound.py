"""Listenable sound and spectrograms for the viewer and the HTML report (off the training path).

What the agent hears is a log-mel feature array. For our navigation games the
exact waveform behind it is rebuilt from the game's sound state
(:func:`envs.core.audio.playback_waveform`); for any other log-mel key whose mel
settings are known (the modality probe, a third-party waveform the run's
adapter converts) the sound is resynthesised from the features by Griffin-Lim,
which keeps the spectrum but not the phase, and is labelled as approximate.
"""

from __future__ import annotations

import base64
import io
import wave
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from envs.core.audio import (
    LOG_EPS,
    AudioConfig,
    hann,
    mel_filterbank,
    playback_waveform,
    stft,
)
from envs.core.navigation import NavigationGame

#: Seconds of sound rendered per step.
PLAYBACK_SECONDS = 1.0


@dataclass(frozen=True)
class Sound:
    """A stereo (or mono) waveform to play.

    Attributes:
        samples: ``(channels, n)`` float32 in [-1, 1].
        sample_rate: Samples per second.
        exact: True when it is the game's own waveform, False when resynthesised
            from the features.
    """

    samples: NDArray[np.float32]
    sample_rate: int
    exact: bool

    @property
    def peak(self) -> float:
        """Largest absolute sample."""
        return float(np.max(np.abs(self.samples))) if self.samples.size else 0.0

    def pcm16(self) -> bytes:
        """Interleaved little-endian 16-bit PCM."""
        clipped = np.clip(self.samples, -1.0, 1.0)
        return (clipped.T * 32767.0).round().astype("<i2").tobytes()

    def wav(self) -> bytes:
        """A WAV file of the sound."""
        buf = io.BytesIO()
        with wave.open(buf, "wb") as out:
            out.setnchannels(int(self.samples.shape[0]))
            out.setsampwidth(2)
            out.setframerate(self.sample_rate)
            out.writeframes(self.pcm16())
        return buf.getvalue()

    def wav_data_uri(self) -> str:
        """The WAV file as a ``data:`` URI (for a self-contained page)."""
        return "data:audio/wav;base64," + base64.b64encode(self.wav()).decode("ascii")

    def to_json(self) -> dict[str, Any]:
        """What the page's Web Audio player takes: base64 PCM16, rate, channels."""
        return {
            "pcm16": base64.b64encode(self.pcm16()).decode("ascii"),
            "sample_rate": self.sample_rate,
            "channels": int(self.samples.shape[0]),
            "exact": self.exact,
            "peak": round(self.peak, 4),
        }


def game_sound(game: Any, world: int = 0, seconds: float = PLAYBACK_SECONDS) -> Sound | None:
    """The exact waveform world ``world`` of one of our navigation games hears now, else None.

    Reads the game's sound state (sources, loudness, noise level, the agent's pose)
    as ``tests/envs/test_audio.py`` does to check the features against the waveform.
    """
    if not isinstance(game, NavigationGame) or not hasattr(game, "bank"):
        return None
    s = slice(world, world + 1)
    gains = game.gains(game.agent_pos[s], game.heading[s], game.obj_pos[s], game.loudness[s])[0]
    samples = playback_waveform(
        game.bank, game.src_id[world], gains, float(game.noise_level[world]), seconds
    )
    return Sound(samples, game.audio_cfg.sample_rate, exact=True)


def _istft(spec: NDArray[np.complex128], cfg: AudioConfig) -> NDArray[np.float64]:
    """Least-squares inverse of :func:`envs.core.audio.stft` (overlap-add, window-normalised)."""
    frames = np.fft.irfft(np.swapaxes(spec, -1, -2), n=cfg.n_fft, axis=-1)  # (..., T, n_fft)
    window = hann(cfg.n_fft)
    out = np.zeros((*spec.shape[:-2], cfg.n_samples))
    norm = np.zeros(cfg.n_samples)
    for t in range(cfg.n_frames):
        start = t * cfg.hop_length
        out[..., start : start + cfg.n_fft] += frames[..., t, :] * window
        norm[start : start + cfg.n_fft] += window**2
    return out / np.maximum(norm, 1e-8)


def resynthesise(
    features: NDArray[np.floating],
    cfg: AudioConfig,
    seconds: float = PLAYBACK_SECONDS,
    iterations: int = 32,
    seed: int = 0,
) -> Sound:
    """An approximate waveform whose log-mel is close to ``features`` (Griffin-Lim).

    Args:
        features: ``(channels, n_mels, n_frames)`` (or ``(n_mels, n_frames)``) log-mel.
        cfg: The mel settings the features were computed with.
        seconds: Length of the result (the clip is looped with cross-fades).
        iterations: Griffin-Lim iterations.
        seed: Seed of the initial phase.
    """
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim == 2:
        feats = feats[None]
    fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)
    mel_power = np.maximum(np.exp(feats) - LOG_EPS, 0.0)  # (C, M, T)
    power = np.maximum(np.einsum("fm,cmt->cft", np.linalg.pinv(fb), mel_power), 0.0)
    magnitude = np.sqrt(power)
    rng = np.random.default_rng(seed)
    phase = np.exp(2j * np.pi * rng.random(magnitude.shape))
    signal = _istft(magnitude * phase, cfg)
    for _ in range(iterations):
        spec = stft(signal, cfg)
        signal = _istft(magnitude * np.exp(1j * np.angle(spec)), cfg)
    clip = signal / max(1.0, float(np.max(np.abs(signal))) / 0.9)
    return Sound(loop(clip, cfg.sample_rate, seconds), cfg.sample_rate, exact=False)


def loop(clip: NDArray[np.floating], sample_rate: int, seconds: float) -> NDArray[np.float32]:
    """Repeat a ``(channels, n)`` clip to ``seconds`` with short linear cross-fades."""
    n = clip.shape[-1]
    fade = min(64, n // 4)
    total = round(seconds * sample_rate)
    stride = n - fade
    window = np.ones(n)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade + 2)[1:-1]
        window[:fade], window[-fade:] = ramp, ramp[::-1]
    pieces = -(-max(total - fade, 1) // stride)
    out = np.zeros((clip.shape[0], pieces * stride + fade))
    for i in range(pieces):
        out[:, i * stride : i * stride + n] += clip * window
    return np.clip(out[:, :total], -1.0, 1.0).astype(np.float32)


def features_sound(
    features: NDArray[np.floating], cfg: AudioConfig | None, seconds: float = PLAYBACK_SECONDS
) -> Sound | None:
    """Resynthesised sound of log-mel ``features`` when their shape fits ``cfg``, else None."""
    if cfg is None:
        return None
    shape = np.shape(features)
    if len(shape) not in (2, 3) or tuple(shape[-2:]) != (cfg.n_mels, cfg.n_frames):
        return None
    return resynthesise(features, cfg, seconds)
