"""What the agent hears: synthesised sources, stereo propagation, log-mel features.

Sources are short stationary sounds with distinct timbres. Each step the agent
hears, in each ear, the sum of every source scaled by a gain that falls with
distance and pans with the source's direction relative to the agent's heading
(interaural level difference plus a head shadow for sources behind), plus
background noise. Features are ``log(mel(|STFT|^2) + eps)``.

Because the STFT is linear, the power spectrum of a mix is a quadratic form
in the gains over pre-computable cross-spectra of the clips. We pre-compute
those (projected on the mel bands) once for a bank of clips, so each step costs
a few small gathers and a matmul, and equals the log-mel of the STFT of the
synthesised waveform (``AudioBank.waveform`` rebuilds it; a test checks both
against librosa).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

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


def hz_to_mel(f: ArrayLike) -> NDArray[np.float64]:
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


def log_mel(
    x: NDArray[np.floating], cfg: AudioConfig, filterbank: NDArray[np.float64] | None = None
) -> NDArray[np.float32]:
    """Log-mel features ``(..., n_mels, n_frames)`` of time-domain clips ``(..., n_samples)``.

    The games' reference path (used by tests) and the feature extractor of raw
    third-party waveforms (``mbm_agent``'s ``waveform`` modality), which passes
    its cached ``mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)``.
    """
    if filterbank is None:
        filterbank = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)
    power = np.abs(stft(x, cfg)) ** 2
    mel = np.einsum("mf,...ft->...mt", filterbank, power)
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
    """Pre-computed clips of every timbre and of background noise, and their mel Gram tensors.

    Each of ``cfg.variants`` variants holds one clip per source plus a left and a
    right noise clip. For a mix ``x = sum_i a_i s_i`` of clips of one variant, the
    mel power is ``sum_ij a_i a_j G_ij`` with ``G_ij = mel_fb @ Re(S_i conj(S_j))``
    (``S`` the STFT): exactly the mel power of the STFT of ``x``, computed from a
    handful of pre-computed blocks instead of an FFT per step.

    Args:
        cfg: Signal parameters.
        tones: Extra pure-tone sources (Hz), used by the modality probe.
        seed: Seed of the bank itself (fixed, so every env hears the same clips).
    """

    def __init__(self, cfg: AudioConfig, tones: tuple[float, ...] = (), seed: int = 1234) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(seed)
        t = np.arange(cfg.n_samples) / cfg.sample_rate
        variants = []
        for _ in range(cfg.variants):
            clips = [synthesise(name, rng, cfg) for name in TIMBRE_NAMES]
            clips += [0.5 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in tones]
            clips += list(rng.standard_normal((2, cfg.n_samples)) * 0.25)  # left, right noise
            variants.append(clips)
        #: ``(variants, sources + 2, samples)``: sources, then left and right noise.
        self.clips = np.asarray(variants)
        self.n_sources = self.clips.shape[1] - 2
        spec = stft(self.clips, cfg)  # (V, C, F, T)
        cross = np.real(spec[:, :, None] * np.conj(spec[:, None, :]))  # (V, C, C, F, T)
        fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels)
        gram = np.einsum("mf,vijft->vijmt", fb, cross)
        #: Rows ``(variant * C + i) * C + j`` hold ``G_ij`` of that variant, flattened.
        self.gram = np.ascontiguousarray(
            gram.reshape(-1, cfg.n_mels * cfg.n_frames), dtype=np.float32
        )
        self._pairs: dict[int, tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float32]]] = {}

    def _pair_index(self, m: int) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float32]]:
        if m not in self._pairs:
            i, j = np.triu_indices(m)
            self._pairs[m] = (i, j, np.where(i == j, 1.0, 2.0).astype(np.float32))
        return self._pairs[m]

    def mix_features(
        self,
        sources: NDArray[np.int64],
        variant: NDArray[np.int64],
        gains: NDArray[np.float32],
        noise_gain: NDArray[np.float32],
    ) -> NDArray[np.float32]:
        """Stereo log-mel features of a mix, for ``n`` worlds at once.

        Args:
            sources: ``(n, k)`` source ids (timbres, then any tones).
            variant: ``(n,)`` clip variant heard this step.
            gains: ``(n, k, 2)`` left/right gain per source (0 = silent).
            noise_gain: ``(n,)`` background noise level.

        Returns:
            ``(n, 2, n_mels, n_frames)`` float32 features.
        """
        n, k = sources.shape
        c = self.n_sources + 2
        # Clips heard per world: its k sources, then the left and right noise.
        ids = np.empty((n, k + 2), dtype=np.intp)
        ids[:, :k] = sources
        ids[:, k] = self.n_sources
        ids[:, k + 1] = self.n_sources + 1
        # Per-ear amplitude of each clip; an ear does not hear the other ear's noise.
        amp = np.zeros((n, 2, k + 2), dtype=np.float32)
        amp[:, :, :k] = gains.transpose(0, 2, 1)
        amp[:, 0, k] = amp[:, 1, k + 1] = noise_gain
        pi, pj, mult = self._pair_index(k + 2)
        rows = (variant[:, None] * c + ids[:, pi]) * c + ids[:, pj]  # (n, P)
        blocks = np.take(self.gram, rows, axis=0)  # (n, P, mels * frames), shared by both ears
        weights = amp[:, :, pi] * amp[:, :, pj] * mult  # (n, 2, P)
        mel = np.matmul(weights, blocks)  # (n, 2, mels * frames)
        np.maximum(mel, 0.0, out=mel)
        mel += np.float32(LOG_EPS)
        out = np.log(mel, out=mel)
        # np.maximum/np.minimum: np.clip's Python wrapper costs more than the work here.
        np.minimum(np.maximum(out, self.cfg.low, out=out), self.cfg.high, out=out)
        return out.reshape(n, 2, self.cfg.n_mels, self.cfg.n_frames)

    def waveform(
        self,
        sources: NDArray[np.int64],
        variant: NDArray[np.int64],
        gains: NDArray[np.float32],
        noise_gain: NDArray[np.float32],
    ) -> NDArray[np.float64]:
        """The time-domain stereo mix ``(n, 2, n_samples)`` that :meth:`mix_features` describes."""
        clips = self.clips[variant[:, None], sources]  # (n, k, S)
        mix = np.einsum("nkc,nks->ncs", gains.astype(np.float64), clips)
        noise = self.clips[variant, self.n_sources :]  # (n, 2, S)
        return mix + noise_gain[:, None, None] * noise


def playback_waveform(
    bank: AudioBank,
    sources: NDArray[np.int64],
    gains: NDArray[np.float32],
    noise_gain: float,
    seconds: float = 1.0,
    fade: int = 64,
) -> NDArray[np.float32]:
    """A listenable stereo waveform ``(2, n)`` of what one world hears now (off the training path).

    One observation is a single clip of ``cfg.n_samples`` samples (0.14 s at 8 kHz) of a
    variant drawn that step: too short to listen to. This chains every variant of the same
    mix (each piece is exactly :meth:`AudioBank.waveform`, so its log-mel is the feature the
    game emits for that variant), overlapping neighbours by ``fade`` samples with linear
    cross-fades, and repeats the chain to ``seconds``. Samples are clipped to [-1, 1].

    Args:
        bank: The game's bank.
        sources: ``(k,)`` source ids of the world's sounds.
        gains: ``(k, 2)`` left/right gain of each source at the agent's pose.
        noise_gain: Background noise level.
        seconds: Length of the result.
        fade: Cross-fade length in samples (less than half a clip).

    Returns:
        ``(2, round(seconds * sample_rate))`` float32 samples.
    """
    cfg = bank.cfg
    clip = cfg.n_samples
    if not 0 <= fade < clip // 2:
        raise ValueError(f"fade must be in [0, {clip // 2}), got {fade}.")
    if not 0.0 < seconds <= 60.0:
        raise ValueError(f"seconds must be in (0, 60], got {seconds}.")
    v = cfg.variants
    pieces = bank.waveform(
        np.broadcast_to(np.asarray(sources, dtype=np.int64), (v, len(sources))),
        np.arange(v, dtype=np.int64),
        np.broadcast_to(np.asarray(gains, dtype=np.float32), (v, len(sources), 2)),
        np.full(v, noise_gain, dtype=np.float32),
    )  # (v, 2, clip)
    total = round(seconds * cfg.sample_rate)
    stride = clip - fade
    ramp = np.linspace(0.0, 1.0, fade + 2)[1:-1] if fade else np.zeros(0)
    window = np.ones(clip)
    if fade:
        window[:fade], window[-fade:] = ramp, ramp[::-1]
    n_pieces = -(-max(total - fade, 1) // stride)
    out = np.zeros((2, n_pieces * stride + fade))
    for i in range(n_pieces):
        out[:, i * stride : i * stride + clip] += pieces[i % v] * window
    return np.clip(out[:, :total], -1.0, 1.0).astype(np.float32)


@cache
def shared_bank(cfg: AudioConfig, tones: tuple[float, ...] = ()) -> AudioBank:
    """The :class:`AudioBank` of a config and extra tones, built once per process.

    A bank takes a moment to build and every env of a config hears the same clips,
    so all games (and every env of one game) share it; treat it as read-only.
    """
    return AudioBank(cfg, tuple(float(f) for f in tones))


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


class GainTable:
    """:func:`stereo_gains` tabulated over every offset of a ``size``-cell grid.

    Gains depend only on the heading and the source's offset from the agent,
    so a grid game looks them up instead of recomputing them each step.
    """

    def __init__(self, size: int) -> None:
        r = np.arange(-(size - 1), size)
        dy, dx = np.meshgrid(r, r, indexing="ij")
        offsets = np.stack([dy.ravel(), dx.ravel()], axis=-1)  # (m, 2)
        m = len(offsets)
        table = np.stack(
            [
                stereo_gains(
                    np.zeros((1, 2), np.int64),
                    np.array([h]),
                    offsets[None],
                    np.ones((1, m), np.float32),
                )[0]
                for h in range(4)
            ]
        )
        self.size = size
        self.table = table.reshape(4, 2 * size - 1, 2 * size - 1, 2)

    def __call__(
        self,
        agent_pos: NDArray[np.int64],
        heading: NDArray[np.int64],
        source_pos: NDArray[np.int64],
        loudness: NDArray[np.float32],
    ) -> NDArray[np.float32]:
        """Same as :func:`stereo_gains`."""
        off = source_pos - agent_pos[:, None, :] + (self.size - 1)
        return self.table[heading[:, None], off[..., 0], off[..., 1]] * loudness[..., None]
