"""What the agent hears: synthesised sources, stereo propagation, log-mel features.

Sources are short stationary sounds with distinct timbres. Each step the agent
hears, in each ear, the sum of every source scaled by a gain that falls with
distance and pans with the source's direction relative to the agent's heading
(interaural level difference plus a head shadow for sources behind), plus
background noise. Features are ``log(mel(|STFT|^2) + eps)``.

Because the STFT is linear, the spectrum of a mix is the same mix of the
sources' spectra. We pre-compute the complex STFT of a bank of source and
noise clips once, and mix in that domain: exactly the STFT of the synthesised
waveform (``AudioBank.waveform`` rebuilds it, and a test checks both against
librosa), without an FFT per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from envs.core.grid import DIR_VEC

#: Timbre name -> the verb an instruction uses for it.
TIMBRES: dict[str, str] = {
    "buzz": "buzzes",
    "hum": "hums",
    "chirp": "chirps",
    "ring": "rings",
    "whistle": "whistles",
    "click": "clicks",
}
TIMBRE_NAMES = tuple(TIMBRES)
LOG_EPS = 1e-6


@dataclass(frozen=True)
class AudioConfig:
    """Signal parameters shared by all games.

    Attributes:
        sample_rate: Samples per second.
        n_fft: FFT size (and Hann window length).
        hop_length: Samples between STFT frames.
        n_frames: STFT frames per observation (no centring/padding).
        n_mels: Mel bands (Slaney scale and area normalisation, as librosa).
        variants: Pre-computed clips per source and for noise.
    """

    sample_rate: int = 8000
    n_fft: int = 256
    hop_length: int = 128
    n_frames: int = 8
    n_mels: int = 32
    variants: int = 8

    @property
    def n_samples(self) -> int:
        """Samples in one observation's clip."""
        return self.n_fft + (self.n_frames - 1) * self.hop_length

    @property
    def n_freqs(self) -> int:
        """STFT frequency bins."""
        return self.n_fft // 2 + 1

    @property
    def low(self) -> float:
        """Lower bound of the features (silence)."""
        return float(np.log(LOG_EPS))

    high: float = 12.0


def hz_to_mel(f: NDArray[np.float64]) -> NDArray[np.float64]:
    """Slaney mel scale (librosa's default, ``htk=False``)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(
        f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp
    )


def mel_to_hz(m: NDArray[np.float64]) -> NDArray[np.float64]:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> NDArray[np.float64]:
    """``(n_mels, n_fft // 2 + 1)`` triangular filters, Slaney-normalised (as librosa)."""
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_pts = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_pts[2 : n_mels + 2] - mel_pts[:n_mels])
    return weights * enorm[:, None]


def hann(n: int) -> NDArray[np.float64]:
    """Periodic Hann window (``scipy.signal.get_window("hann", n)``)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def stft(x: NDArray[np.floating], cfg: AudioConfig) -> NDArray[np.complex128]:
    """Complex STFT ``(..., n_freqs, n_frames)`` of clips ``(..., n_samples)`` (no centring)."""
    idx = np.arange(cfg.n_frames)[:, None] * cfg.hop_length + np.arange(cfg.n_fft)[None, :]
    frames = x[..., idx] * hann(cfg.n_fft)
    return np.swapaxes(np.fft.rfft(frames, axis=-1), -1, -2)


def log_mel(x: NDArray[np.floating], cfg: AudioConfig) -> NDArray[np.float32]:
    """Log-mel features of time-domain clips (the reference path, used by tests)."""
    power = np.abs(stft(x, cfg)) ** 2
    mel = np.einsum(
        "mf,...ft->...mt", mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels), power
    )
    return np.log(mel + LOG_EPS).astype(np.float32)


def synthesise(timbre: str, rng: np.random.Generator, cfg: AudioConfig) -> NDArray[np.float64]:
    """One clip of a timbre with random phase and slight pitch jitter, peak ~0.5."""
    n = cfg.n_samples
    t = np.arange(n) / cfg.sample_rate
    jitter = 1.0 + rng.uniform(-0.03, 0.03)
    phase = rng.uniform(0, 2 * np.pi)
    if timbre == "buzz":  # band-limited sawtooth at a low pitch
        f0 = 150.0 * jitter
        x = sum(np.sin(2 * np.pi * k * f0 * t + k * phase) / k for k in range(1, 12))
    elif timbre == "hum":  # low pure tone with a weak octave
        f0 = 420.0 * jitter
        x = np.sin(2 * np.pi * f0 * t + phase) + 0.3 * np.sin(4 * np.pi * f0 * t)
    elif timbre == "chirp":  # fast rising sweeps, 1.4 -> 2.4 kHz
        period = 0.036
        tau = (t + phase / (2 * np.pi) * period) % period
        f_start, f_end = 1400.0 * jitter, 2400.0 * jitter
        x = np.sin(2 * np.pi * (f_start * tau + (f_end - f_start) * tau**2 / (2 * period)))
    elif timbre == "ring":  # inharmonic bell partials
        x = sum(
            a * np.sin(2 * np.pi * f * jitter * t + i * phase)
            for i, (f, a) in enumerate([(900.0, 1.0), (2160.0, 0.6), (2930.0, 0.4)])
        )
    elif timbre == "whistle":  # high pure tone with vibrato
        f0 = 3300.0 * jitter
        x = np.sin(2 * np.pi * f0 * t + 0.002 * f0 * np.sin(2 * np.pi * 12 * t) + phase)
    elif timbre == "click":  # broadband impulse train
        x = np.zeros(n)
        start = int(rng.integers(0, 160))
        for s in range(start, n, 160):
            x[s : s + 6] += np.exp(-np.arange(min(6, n - s)))
        x = x * 1.5
    else:
        raise ValueError(f"Unknown timbre {timbre!r}; known timbres: {', '.join(TIMBRE_NAMES)}.")
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x / (np.max(np.abs(x)) + 1e-12)


class AudioBank:
    """Pre-computed spectra of every timbre and of background noise.

    Args:
        cfg: Signal parameters.
        tones: Extra pure-tone sources (Hz), used by the modality probe.
        seed: Seed of the bank itself (fixed, so every env hears the same clips).
    """

    def __init__(self, cfg: AudioConfig, tones: tuple[float, ...] = (), seed: int = 1234) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(seed)
        clips = [[synthesise(name, rng, cfg) for _ in range(cfg.variants)] for name in TIMBRE_NAMES]
        t = np.arange(cfg.n_samples) / cfg.sample_rate
        for f in tones:
            clips.append(
                [
                    0.5 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
                    for _ in range(cfg.variants)
                ]
            )
        self.clips = np.asarray(clips)  # (sources, variants, samples)
        self.noise_clips = rng.standard_normal((cfg.variants, cfg.n_samples)) * 0.25
        self.spectra = stft(self.clips, cfg).astype(np.complex64)  # (S, V, F, T)
        self.noise_spectra = stft(self.noise_clips, cfg).astype(np.complex64)  # (V, F, T)
        self.mel_fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels).astype(np.float32)

    def mix_features(
        self,
        sources: NDArray[np.int64],
        variants: NDArray[np.int64],
        gains: NDArray[np.float32],
        noise_variants: NDArray[np.int64],
        noise_gain: NDArray[np.float32],
    ) -> NDArray[np.float32]:
        """Stereo log-mel features of a mix, for ``n`` worlds at once.

        Args:
            sources: ``(n, k)`` source ids (rows of the bank).
            variants: ``(n, k)`` clip variant per source.
            gains: ``(n, k, 2)`` left/right gain per source (0 = silent).
            noise_variants: ``(n, 2)`` noise clip per ear.
            noise_gain: ``(n,)`` background noise level.

        Returns:
            ``(n, 2, n_mels, n_frames)`` float32 features.
        """
        spec = self.spectra[sources, variants]  # (n, k, F, T)
        mix = np.einsum("nkc,nkft->ncft", gains.astype(np.complex64), spec)
        mix += (
            noise_gain.astype(np.float32)[:, None, None, None] * self.noise_spectra[noise_variants]
        )
        power = mix.real**2 + mix.imag**2
        mel = np.einsum("mf,ncft->ncmt", self.mel_fb, power)
        out = np.log(mel + np.float32(LOG_EPS))
        np.clip(out, self.cfg.low, self.cfg.high, out=out)
        return out.astype(np.float32, copy=False)

    def waveform(
        self,
        sources: NDArray[np.int64],
        variants: NDArray[np.int64],
        gains: NDArray[np.float32],
        noise_variants: NDArray[np.int64],
        noise_gain: NDArray[np.float32],
    ) -> NDArray[np.float64]:
        """The time-domain stereo mix ``(n, 2, n_samples)`` that :meth:`mix_features` describes."""
        clips = self.clips[sources, variants]  # (n, k, S)
        mix = np.einsum("nkc,nks->ncs", gains.astype(np.float64), clips)
        return mix + noise_gain[:, None, None] * self.noise_clips[noise_variants]


def stereo_gains(
    agent_pos: NDArray[np.int64],
    heading: NDArray[np.int64],
    source_pos: NDArray[np.int64],
    loudness: NDArray[np.float32],
) -> NDArray[np.float32]:
    """Left/right gains ``(n, k, 2)`` of sources heard by agents.

    Loudness falls as ``1 / (1 + 0.5 d)`` with distance ``d`` in cells; the
    pan is constant-power on the lateral component of the source's direction
    relative to the heading; sources behind are damped by up to 40%.
    """
    fwd = DIR_VEC[heading]  # (n, 2) in (row, col)
    right = DIR_VEC[(heading + 1) % 4]
    v = (source_pos - agent_pos[:, None, :]).astype(np.float32)  # (n, k, 2)
    d = np.sqrt((v**2).sum(-1))
    unit = v / np.maximum(d, 1e-6)[..., None]
    lateral = (unit * right[:, None, :]).sum(-1)
    frontal = (unit * fwd[:, None, :]).sum(-1)
    level = loudness / (1.0 + 0.5 * d) * (0.6 + 0.2 * (1.0 + frontal))
    left = level * np.sqrt((1.0 - lateral) / 2.0)
    rght = level * np.sqrt((1.0 + lateral) / 2.0)
    return np.stack([left, rght], axis=-1).astype(np.float32)
