"""Any env's observations brought into our contract at the env's edge: :class:`ObservationAdapter`.

The encoder takes arrays: uint8 frames, integer token ids, float features.
Some envs emit other things, and the adapter converts them before anything
learns from them:

- a plain (non-Dict) observation becomes a one-key ``Dict`` (``image`` for a
  uint8 frame, else ``obs``);
- a raw string key (``spaces.Text``, MiniGrid's ``MissionSpace``), or a uint8
  byte array declared ``text`` (MiniHack's ``message``), becomes ``max_len``
  token ids: words hashed into a fixed table (:class:`HashedWords`, no word
  list needed) or looked up in a given word list (:class:`KnownWords`);
- a key declared ``waveform`` (mono or multi-channel PCM, float, int or uint8,
  one chunk of any length per step) becomes stereo-style log-mel features
  ``(channels, n_mels, n_frames)``, computed by the games' own STFT and mel code
  (:func:`envs.core.audio.log_mel`) over a rolling window of the last samples,
  so a chunk shorter than the window still gives a full spectrogram. The window
  is per-env state, silent at the start of each episode;
- a 2-D integer grid declared ``symbolic_grid`` (MiniHack's ``glyphs`` and
  ``glyphs_crop``) gets a channel axis, ``(H, W) -> (H, W, 1)``, the layout the
  symbolic-grid encoder takes (:class:`GridTransform`); so does a 2-D uint8
  greyscale frame declared ``image``, or undeclared and too large for a vector
  (:class:`FrameTransform`; a smaller undeclared one with both sides >= 16 stays a
  vector, with a warning naming the declaration that reads it as a frame);
- a nested ``Dict`` or ``Tuple`` key is flattened into one key per part,
  ``parent_child`` and ``parent_0``, ``parent_1`` (a plain ``Tuple`` observation
  into ``obs_0``, ``obs_1``, ...), each encoded by its own space; a key declared
  ``ignore`` whose space SB3's vector envs cannot store (a nested space, a raw
  string) is dropped, from the observation and its space.

Every other key passes unchanged and the encoder gives it a modality by its
name or space (:func:`mbm_agent.encoding.config.infer_modality`).

:meth:`ObservationAdapter.observation_check` checks every raw observation of a
third-party env as it leaves the env (``mbm-agent train`` and ``eval`` wrap the
env with it): each key's shape and dtype kind against the env's own space, and
float keys for NaN and infinity, each failure an :class:`ObservationError` that
names the env, the key, the step and the fix.

The adapter is plain numpy and JSON: ``to_dict()`` is stored in ``model.json``
(``observation_adapter``) and in every export's ``export.json``, so evaluation,
:func:`~mbm_agent.training.agent.load_agent` and the exported runtimes apply
exactly the conversion training saw. It converts batches (``adapt``) and keeps
the rolling windows in an :class:`AdapterState`; the Gymnasium wrapper
:class:`~mbm_agent.training.wrappers.AdaptObservation` applies it to one env.

Declarations (``TrainConfig.modalities``, a config file's ``modalities:``) take
a string or a mapping per key::

    modalities:
      grid: symbolic_grid                       # an encoder modality, as before
      mic: {kind: waveform, sample_rate: 8000}  # n_fft, hop_length, n_mels, n_frames
      message: {kind: text, max_len: 64}        # table_size, or words: [...]
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from envs.core.audio import AudioConfig, log_mel, mel_filterbank
from envs.core.text import Vocabulary, tokenize
from mbm_agent.encoding.config import (
    FLAT_FRAME_MIN_SIDE,
    MODALITIES,
    infer_modality,
    is_flat_frame_space,
    is_frame_space,
    is_string_space,
    undeclared_error,
)

ADAPTER_FORMAT = "mbm-agent/observation-adapter"
ADAPTER_VERSION = 2
"""Version written by an adapter that flattens or drops keys; one that does neither
writes version 1, which every mbm-agent reads (:data:`READABLE_VERSIONS`)."""
READABLE_VERSIONS: tuple[int, ...] = (1, 2)

SEPARATOR = "_"
"""Joins a nested key's parts into its flat key: ``robot`` / ``pos`` -> ``robot_pos``."""

MAX_DEPTH = 16
"""Deepest nesting a saved adapter may address."""

DECLARABLE: tuple[str, ...] = (*MODALITIES, "waveform")
"""Modalities a config may declare: the encoder's, plus ``waveform`` (converted here)."""

TEXT_MAX_LEN = 32
"""Words kept of a raw string by default; longer texts are cut with a warning."""

HASH_TABLE_SIZE = 4096
"""Token ids of hashed words by default (ids 2..4095; 0 pads, 1 is unused by hashing)."""

WAVEFORM_N_MELS = 32
WAVEFORM_N_FRAMES = 8
MAX_CHANNELS = 8

#: Options each declarable kind takes besides ``kind`` and ``layout``.
OPTIONS: dict[str, tuple[str, ...]] = {
    "text": ("max_len", "table_size", "words"),
    "waveform": ("sample_rate", "n_fft", "hop_length", "n_mels", "n_frames"),
}

#: Env metadata key through which an env may advertise its waveform sample rate.
SAMPLE_RATE_METADATA = "audio_sample_rate"


# -- declarations -------------------------------------------------------------------
@dataclass(frozen=True)
class Declaration:
    """One key's declared modality.

    Attributes:
        kind: A member of :data:`DECLARABLE`.
        layout: ``"hwc"`` or ``"chw"`` for ``image`` / ``symbolic_grid``, else None.
        options: The kind's options (see :data:`OPTIONS`).
    """

    kind: str
    layout: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def encoder_string(self) -> str:
        """The declaration as the encoder takes it, e.g. ``"image:chw"``."""
        return self.kind + (f":{self.layout}" if self.layout else "")


def _hint(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_declaration(key: str, value: Any) -> Declaration:
    """Check one key's declaration (a string such as ``"image:chw"`` or a mapping with ``kind``).

    Raises:
        ValueError: Naming the key, what is wrong and the form that works.
    """
    where = f"modalities.{key}"
    if isinstance(value, str):
        kind, _, layout = value.partition(":")
        options: dict[str, Any] = {}
    elif isinstance(value, Mapping):
        options = dict(value)
        kind = options.pop("kind", None)
        layout = options.pop("layout", None) or ""
        if not isinstance(kind, str) or not isinstance(layout, str):
            raise ValueError(
                f"{where}: a mapping declaration needs a string kind, e.g. "
                f"{{kind: waveform, sample_rate: 8000}}; got {dict(value)!r}."
            )
    else:
        raise ValueError(
            f"{where} must be a modality name such as 'image' or a mapping such as "
            f"{{kind: waveform, sample_rate: 8000}}, got {value!r}."
        )
    if kind not in DECLARABLE:
        raise ValueError(
            f"{where}: unknown modality {kind!r}{_hint(kind, DECLARABLE)}; choose one of "
            f"{list(DECLARABLE)}."
        )
    if layout and (kind not in ("image", "symbolic_grid") or layout not in ("hwc", "chw")):
        raise ValueError(
            f"{where}: a layout ({layout!r}) is only allowed on 'image' and 'symbolic_grid', "
            "and must be 'hwc' or 'chw'."
        )
    allowed = OPTIONS.get(kind, ())
    unknown = [name for name in options if name not in allowed]
    if unknown:
        hints = ", ".join(f"{name!r}{_hint(str(name), allowed)}" for name in unknown)
        raise ValueError(
            f"{where}: {kind} takes no option {hints}"
            + (f"; its options are {list(allowed)}." if allowed else "; it takes no options.")
        )
    for name, option in options.items():
        if name == "words":
            if (
                not isinstance(option, list)
                or not option
                or not all(isinstance(w, str) and w for w in option)
            ):
                raise ValueError(
                    f"{where}.words must be a list of non-empty words, got {option!r}."
                )
        elif isinstance(option, bool) or not isinstance(option, int) or option < 1:
            raise ValueError(f"{where}.{name} must be an integer >= 1, got {option!r}.")
    if "table_size" in options and "words" in options:
        raise ValueError(f"{where}: give words (a word list) or table_size (hashing), not both.")
    if options.get("table_size", 3) < 3:
        raise ValueError(f"{where}.table_size must be >= 3 (ids 0 and 1 are reserved).")
    return Declaration(kind, layout or None, options)


def parse_declarations(declared: Mapping[str, Any]) -> dict[str, Declaration]:
    """:func:`parse_declaration` of every key of a ``modalities`` mapping."""
    if not isinstance(declared, Mapping):
        raise ValueError(f"modalities must map observation keys to modalities, got {declared!r}.")
    return {str(key): parse_declaration(str(key), value) for key, value in declared.items()}


# -- text ---------------------------------------------------------------------------
class TextCodec(Protocol):
    """Words to token ids: ``size`` ids (0 pads, 1 is unknown), ``max_len`` per text."""

    size: int
    max_len: int

    def word_id(self, word: str) -> int:
        """Id of one lower-case word."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        ...

    def describe(self) -> str:
        """One line for ``mbm-agent inspect``."""
        ...


@functools.lru_cache(maxsize=65536)
def _hashed(word: str, buckets: int) -> int:
    digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
    return 2 + int.from_bytes(digest, "little") % buckets


class HashedWords:
    """Words hashed into a fixed table: no word list, any word of any env gets an id.

    A word's id is ``2 + blake2b-64(word) mod (table_size - 2)`` (little-endian,
    UTF-8 word): the same in every process, machine and Python, so a saved
    model and its exports agree. Different words may share an id (with 200
    distinct words in 4096 ids, about 5 pairs do); 0 pads and 1 is never given.

    Args:
        table_size: Number of ids (the text encoder's embedding rows).
        max_len: Words kept per text.
    """

    kind = "hash"

    def __init__(self, table_size: int = HASH_TABLE_SIZE, max_len: int = TEXT_MAX_LEN) -> None:
        if table_size < 3 or max_len < 1:
            raise ValueError("HashedWords needs table_size >= 3 and max_len >= 1.")
        self.size = int(table_size)
        self.max_len = int(max_len)

    def word_id(self, word: str) -> int:
        """The word's bucket."""
        return _hashed(word, self.size - 2)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "codec": self.kind,
            "hash": "blake2b-64",
            "table_size": self.size,
            "max_len": self.max_len,
        }

    def describe(self) -> str:
        """One line for ``mbm-agent inspect``."""
        return f"hashed words -> ids (table {self.size}, max {self.max_len} words)"


class KnownWords:
    """Words looked up in a word list (:class:`~envs.core.text.Vocabulary`); others are 1."""

    kind = "vocabulary"

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self.size = len(vocabulary)
        self.max_len = vocabulary.max_len

    def word_id(self, word: str) -> int:
        """The word's id, or ``UNK_ID``."""
        return self.vocabulary.word_id(word)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"codec": self.kind, "vocabulary": self.vocabulary.to_dict()}

    def describe(self) -> str:
        """One line for ``mbm-agent inspect``."""
        return f"word list ({self.size - 2} words) -> ids (max {self.max_len} words)"


def codec_from_dict(data: Mapping[str, Any]) -> TextCodec:
    """Inverse of the codecs' ``to_dict``."""
    kind = data.get("codec")
    if kind == HashedWords.kind:
        if data.get("hash") != "blake2b-64":
            raise ValueError(
                f"Unknown word hash {data.get('hash')!r}; this mbm-agent has blake2b-64."
            )
        return HashedWords(int(data["table_size"]), int(data["max_len"]))
    if kind == KnownWords.kind:
        return KnownWords(Vocabulary.from_dict(dict(data["vocabulary"])))
    raise ValueError(f"Unknown text codec {kind!r}; known: hash, vocabulary.")


class TextTransform:
    """A raw string key (or UTF-8 byte array) -> ``max_len`` int64 token ids, 0-padded.

    Args:
        key: Observation key.
        codec: Words to ids.
        source: ``"string"`` (``spaces.Text``, ``MissionSpace``) or ``"bytes"`` (a
            uint8 array of ``length`` bytes, cut at the first NUL and decoded as UTF-8).
        length: Bytes per observation (``"bytes"`` only).
    """

    modality = "text"

    def __init__(self, key: str, codec: TextCodec, source: str, length: int | None = None) -> None:
        if source not in ("string", "bytes") or (source == "bytes") != (length is not None):
            raise ValueError(f"TextTransform({key!r}): bad source {source!r} / length {length!r}.")
        self.key, self.codec, self.source, self.length = key, codec, source, length
        self._warned_long = False

    @property
    def output_space(self) -> spaces.Box:
        """The token-id space the encoder sees."""
        return spaces.Box(0, self.codec.size - 1, (self.codec.max_len,), dtype=np.int64)

    def check_space(self, space: spaces.Space[Any]) -> None:
        """Raise if ``space`` is not the raw space this transform was built for."""
        ok = (
            is_string_space(space)
            if self.source == "string"
            else isinstance(space, spaces.Box)
            and space.dtype == np.uint8
            and space.shape == (self.length,)
        )
        if not ok:
            raise ValueError(
                f"Observation key {self.key!r} has space {space}, but this policy reads it as "
                f"{self.describe_input()}; was it trained on another env?"
            )

    def describe_input(self) -> str:
        """What the raw input is."""
        if self.source == "string":
            return "a string"
        return f"UTF-8 bytes (uint8 array of {self.length})"

    def describe(self) -> str:
        """One line for ``mbm-agent inspect``."""
        return ("" if self.source == "string" else "UTF-8 bytes -> ") + self.codec.describe()

    def classify(self, value: Any) -> tuple[bool, int | None, Any]:
        """``(is_raw, batch size or None for one observation, value)``."""
        if isinstance(value, str | bytes):
            return True, None, [value]
        if isinstance(value, list | tuple) and all(isinstance(v, str | bytes) for v in value):
            return True, len(value), list(value)
        arr = np.asarray(value)
        if arr.dtype.kind in "OSU":
            if arr.ndim == 0:
                return True, None, [arr.item()]
            if arr.ndim == 1:
                return True, len(arr), list(arr.tolist())
        if self.source == "bytes" and arr.dtype == np.uint8:
            if arr.shape == (self.length,):
                return True, None, arr[None]
            if arr.ndim == 2 and arr.shape[1] == self.length:
                return True, arr.shape[0], arr
        if arr.dtype.kind in "iu" and arr.shape[-1:] == (self.codec.max_len,) and arr.ndim <= 2:
            return False, arr.shape[0] if arr.ndim == 2 else None, arr
        raise ValueError(
            f"obs[{self.key!r}] is {arr.dtype} {arr.shape}; expected {self.describe_input()} "
            f"(or a batch of them), or its token ids: integers of shape ({self.codec.max_len},)."
        )

    def apply(self, raw: Any, buffer: NDArray[Any] | None = None) -> NDArray[np.int64]:
        """Token ids ``(B, max_len)`` of a batch of raw texts (strings, bytes or byte rows)."""
        out = np.zeros((len(raw), self.codec.max_len), dtype=np.int64)
        for i, item in enumerate(raw):
            words = tokenize(self._text(item))
            if len(words) > self.codec.max_len:
                self._warn_long(len(words))
                words = words[: self.codec.max_len]
            out[i, : len(words)] = [self.codec.word_id(w) for w in words]
        return out

    @staticmethod
    def _text(item: Any) -> str:
        if isinstance(item, str):
            return item
        data = bytes(item) if not isinstance(item, bytes) else item
        return data.split(b"\0", 1)[0].decode("utf-8", errors="replace")

    def _warn_long(self, n_words: int) -> None:
        if self._warned_long:
            return
        self._warned_long = True
        max_len = self.codec.max_len
        warnings.warn(
            f"Observation key {self.key!r} holds a text of {n_words} words, more than "
            f"max_len={max_len}: it is cut to its first {max_len} words (warned once). Keep "
            f"more with `modalities: {{{self.key}: {{kind: text, max_len: {n_words}}}}}` "
            "(a new model: the text input widens).",
            stacklevel=4,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": "text",
            "source": self.source,
            "length": self.length,
            "codec": self.codec.to_dict(),
        }


def text_transform(key: str, space: spaces.Space[Any], options: Mapping[str, Any]) -> TextTransform:
    """The transform of a raw text key declared (or inferred) ``text``."""
    max_len = int(options.get("max_len", TEXT_MAX_LEN))
    codec: TextCodec
    if "words" in options:
        codec = KnownWords(Vocabulary(list(options["words"]), max_len))
    else:
        codec = HashedWords(int(options.get("table_size", HASH_TABLE_SIZE)), max_len)
    if is_string_space(space):
        return TextTransform(key, codec, "string")
    assert isinstance(space, spaces.Box)
    return TextTransform(key, codec, "bytes", int(space.shape[0]))


# -- waveform -----------------------------------------------------------------------
def default_n_fft(sample_rate: int) -> int:
    """A ~32 ms analysis window, a power of two (256 at 8 kHz, as our games; 1024 at 30.7 kHz)."""
    return int(2 ** max(4, round(math.log2(0.032 * sample_rate))))


class WaveformTransform:
    """Per-step PCM chunks -> log-mel features ``(channels, n_mels, n_frames)``, float32.

    Each step's chunk is appended to a per-env rolling buffer of the last
    ``audio.n_samples = n_fft + (n_frames - 1) * hop_length`` samples (zeros,
    i.e. silence, at the start of an episode); the features are
    :func:`envs.core.audio.log_mel` of that buffer, clipped to the games' bounds
    ``[log(1e-6), 12]``. PCM is scaled to [-1, 1]: float as given, signed
    integers by ``2**(bits-1)``, unsigned ones (8-bit WAV, ALE's sound) centred
    on ``2**(bits-1)`` first.

    Args:
        key: Observation key.
        dtype: The raw dtype.
        shape: The raw per-step shape: ``(samples,)`` (mono), ``(channels,
            samples)`` or ``(samples, channels)`` (the smaller axis is the channels).
        audio: Sample rate and STFT / mel settings.
    """

    modality = "audio"

    def __init__(self, key: str, dtype: str, shape: Sequence[int], audio: AudioConfig) -> None:
        self.key = key
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self.audio = audio
        if self.dtype.kind not in "fiu" or len(self.shape) not in (1, 2) or min(self.shape) < 1:
            raise ValueError(
                f"Observation key {key!r}: a waveform needs a real-valued Box of shape "
                f"(samples,), (channels, samples) or (samples, channels); got {self.dtype} "
                f"{self.shape}."
            )
        if len(self.shape) == 1:
            self.channel_axis: int | None = None
            self.channels, self.chunk = 1, self.shape[0]
        else:
            self.channel_axis = 0 if self.shape[0] <= self.shape[1] else 1
            self.channels = self.shape[self.channel_axis]
            self.chunk = self.shape[1 - self.channel_axis]
        if self.channels > MAX_CHANNELS:
            raise ValueError(
                f"Observation key {key!r}: a waveform of shape {self.shape} has "
                f"{self.channels} channels on its smaller axis (at most {MAX_CHANNELS}); give "
                "(samples,), (channels, samples) or (samples, channels)."
            )
        self.filterbank = mel_filterbank(audio.sample_rate, audio.n_fft, audio.n_mels)
        self.filterbank.flags.writeable = False

    @property
    def output_space(self) -> spaces.Box:
        """The log-mel feature space the encoder sees."""
        cfg = self.audio
        return spaces.Box(
            cfg.low, cfg.high, (self.channels, cfg.n_mels, cfg.n_frames), dtype=np.float32
        )

    def check_space(self, space: spaces.Space[Any]) -> None:
        """Raise if ``space`` is not the raw space this transform was built for."""
        _check_raw_box(self, space, "hears", "another env or chunk length")

    def describe_input(self) -> str:
        """What the raw input is."""
        return f"{self.dtype} PCM chunks of shape {self.shape} at {self.audio.sample_rate} Hz"

    def describe(self) -> str:
        """One line for ``mbm-agent inspect``."""
        cfg = self.audio
        steps = cfg.n_samples / self.chunk
        return (
            f"{self.dtype} PCM, {self.channels} ch x {self.chunk} samples/step -> log-mel at "
            f"{cfg.sample_rate} Hz (n_fft {cfg.n_fft}, hop {cfg.hop_length}, {cfg.n_mels} mels "
            f"x {cfg.n_frames} frames), window {cfg.n_samples} samples = {steps:.3g} steps"
        )

    def new_buffer(self, batch: int) -> NDArray[np.float64]:
        """Silence for ``batch`` envs: ``(batch, channels, n_samples)``."""
        return np.zeros((batch, self.channels, self.audio.n_samples), dtype=np.float64)

    def classify(self, value: Any) -> tuple[bool, int | None, Any]:
        """``(is_raw, batch size or None for one observation, value)``."""
        arr = np.asarray(value)
        # Not self.output_space.shape: building a Box each step cost 12% of an Atari step.
        out = (self.channels, self.audio.n_mels, self.audio.n_frames)
        if arr.shape == self.shape:
            self._check_kind(arr)
            return True, None, arr[None]
        if arr.shape[1:] == self.shape:
            self._check_kind(arr)
            return True, arr.shape[0], arr
        if arr.shape == out:
            return False, None, arr
        if arr.shape[1:] == out:
            return False, arr.shape[0], arr
        raise ValueError(
            f"obs[{self.key!r}] has shape {arr.shape}; this policy takes "
            f"{self.describe_input()} ({self.chunk} samples per step), or a batch "
            f"(B, {', '.join(map(str, self.shape))}). Resample or re-chunk the audio to that "
            "rate and length, or retrain with the env's own (modalities: "
            f"{{{self.key}: {{kind: waveform, sample_rate: RATE}}}})."
        )

    def _check_kind(self, arr: NDArray[Any]) -> None:
        """Raise when a raw chunk's dtype kind is not the declared one (it would be scaled wrongly)."""
        if arr.dtype.kind != self.dtype.kind:
            raise ValueError(
                f"obs[{self.key!r}] holds {arr.dtype} samples, but this policy reads the key "
                f"as {self.dtype} PCM ({pcm_mismatch(self.dtype, arr.dtype)}); convert the "
                f"chunks to {self.dtype}, or train with a space of the dtype the env emits."
            )

    def pcm(self, raw: NDArray[Any]) -> NDArray[np.float64]:
        """A batch of raw chunks as float ``(B, channels, chunk)`` in [-1, 1]."""
        x = np.asarray(raw)
        if self.dtype.kind == "f":
            out = x.astype(np.float64)
        else:
            half = float(2 ** (8 * self.dtype.itemsize - 1))
            out = x.astype(np.float64)
            if self.dtype.kind == "u":
                out -= half
            out /= half
        if self.channel_axis is None:
            return out[:, None, :]
        return out if self.channel_axis == 0 else np.swapaxes(out, 1, 2)

    def apply(self, raw: NDArray[Any], buffer: NDArray[np.float64] | None) -> NDArray[np.float32]:
        """Roll a batch of chunks into ``buffer`` (in place) and return its log-mel features."""
        assert buffer is not None and buffer.shape[0] == len(raw)
        x = self.pcm(raw)
        n, window = x.shape[-1], buffer.shape[-1]
        if n >= window:
            buffer[...] = x[..., -window:]
        else:
            buffer[..., : window - n] = buffer[..., n:]
            buffer[..., window - n :] = x
        feats = log_mel(buffer, self.audio, self.filterbank)
        np.minimum(np.maximum(feats, self.audio.low, out=feats), self.audio.high, out=feats)
        return feats

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        cfg = self.audio
        return {
            "kind": "waveform",
            "dtype": self.dtype.name,
            "shape": list(self.shape),
            "sample_rate": cfg.sample_rate,
            "n_fft": cfg.n_fft,
            "hop_length": cfg.hop_length,
            "n_mels": cfg.n_mels,
            "n_frames": cfg.n_frames,
        }


def pcm_mismatch(declared: np.dtype[Any], emitted: np.dtype[Any]) -> str:
    """Why PCM of dtype ``emitted`` read as ``declared`` goes wrong, with the conversion that fixes it."""
    if declared.kind in "iu" and emitted.kind == "f":
        full = 2 ** (8 * declared.itemsize - 1) - 1
        return (
            f"float samples in [-1, 1] read as {declared} integers are near-silence; scale "
            f"them, e.g. (x * {full}).astype(np.{declared.name})"
        )
    if declared.kind == "f" and emitted.kind in "iu":
        return (
            f"{emitted} samples read as float PCM are far outside [-1, 1]; scale them, e.g. "
            f"x.astype(np.float32) / {2 ** (8 * emitted.itemsize - 1)}"
        )
    return f"{emitted} samples read as {declared} are centred and scaled wrongly"


def waveform_transform(
    key: str,
    space: spaces.Space[Any],
    options: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> WaveformTransform:
    """The transform of a key declared ``waveform``, its settings checked.

    The sample rate comes from the declaration, else from the env's
    ``metadata["audio_sample_rate"]``; when both are given they must agree.

    Raises:
        ValueError: A space that is no PCM Box, a missing or contradicted sample
            rate, or settings that leave mel bands empty (each names the fix).
    """
    where = f"modalities.{key}"
    if not isinstance(space, spaces.Box) or len(space.shape) not in (1, 2):
        raise ValueError(
            f"Observation key {key!r} with space {space} cannot be a waveform: it needs a Box "
            "of shape (samples,), (channels, samples) or (samples, channels)."
        )
    env_rate = (metadata or {}).get(SAMPLE_RATE_METADATA)
    rate = options.get("sample_rate", env_rate)
    if rate is None:
        raise ValueError(
            f"{where}: a waveform needs its sample rate; declare it, e.g. "
            f"`modalities: {{{key}: {{kind: waveform, sample_rate: 16000}}}}` (or --set "
            f"modalities.{key}.kind=waveform --set modalities.{key}.sample_rate=16000)."
        )
    if env_rate is not None and int(env_rate) != int(rate):
        raise ValueError(
            f"{where}: sample_rate={rate} but the env says its audio is sampled at {env_rate} Hz "
            f"(metadata[{SAMPLE_RATE_METADATA!r}]); declare sample_rate: {env_rate}."
        )
    rate = int(rate)
    n_fft = int(options.get("n_fft", default_n_fft(rate)))
    hop = int(options.get("hop_length", max(1, n_fft // 2)))
    n_mels = int(options.get("n_mels", WAVEFORM_N_MELS))
    n_frames = int(options.get("n_frames", WAVEFORM_N_FRAMES))
    if n_fft < 16 or hop > n_fft:
        raise ValueError(
            f"{where}: needs n_fft >= 16 and hop_length <= n_fft (got {n_fft}, {hop})."
        )
    audio = AudioConfig(
        sample_rate=rate, n_fft=n_fft, hop_length=hop, n_frames=n_frames, n_mels=n_mels
    )
    bands = mel_filterbank(rate, n_fft, n_mels).max(axis=1)
    if np.any(bands <= 0):
        fits = max(
            (m for m in range(1, n_mels) if np.all(mel_filterbank(rate, n_fft, m).max(axis=1) > 0)),
            default=1,
        )
        raise ValueError(
            f"{where}: n_mels={n_mels} is too many for n_fft={n_fft} at {rate} Hz "
            f"({int(np.sum(bands <= 0))} mel bands get no FFT bin); use n_mels <= {fits} or a "
            "larger n_fft."
        )
    # A Box's dtype is never None (Gymnasium types Space.dtype Optional).
    transform = WaveformTransform(key, cast(np.dtype, space.dtype).name, space.shape, audio)
    if transform.chunk > audio.n_samples:
        needed = 1 + math.ceil((transform.chunk - n_fft) / hop)
        warnings.warn(
            f"{where}: each step's chunk of {transform.chunk} samples is longer than the "
            f"analysis window ({audio.n_samples} samples = n_fft + (n_frames - 1) * "
            f"hop_length); only its last {audio.n_samples} samples are heard. Declare "
            f"n_frames: {needed} to hear all of it.",
            stacklevel=3,
        )
    return transform


# -- 2-D grids ----------------------------------------------------------------------
def is_flat_grid_space(space: spaces.Space[Any]) -> bool:
    """A 2-D Box of non-negative integers (MiniHack's ``glyphs``): a grid without a channel axis."""
    return (
        isinstance(space, spaces.Box)
        and len(space.shape) == 2
        and np.issubdtype(space.dtype, np.integer)
        and bool(np.all(space.low >= 0))
    )


class GridTransform:
    """A 2-D integer grid ``(H, W)`` -> ``(H, W, 1)``: one channel for the symbolic-grid encoder.

    MiniHack's ``glyphs`` (21 x 79) and ``glyphs_crop`` (9 x 9) hold one id per
    cell (5,976 glyphs); the symbolic-grid encoder embeds each id and reads grids
    with a channel axis, as MiniGrid's ``(7, 7, 3)`` grid has. Values and dtype
    are kept.

    Args:
        key: Observation key.
        dtype: The raw dtype (an integer type).
        shape: The raw ``(H, W)``.
        high: The largest value a cell may hold (the space's upper bound).
    """

    modality = "symbolic_grid"

    def __init__(self, key: str, dtype: str, shape: Sequence[int], high: int) -> None:
        self.key = key
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self.high = int(high)
        if self.dtype.kind not in "iu" or len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(
                f"Observation key {key!r}: a 2-D symbolic grid needs an integer Box of shape "
                f"(H, W); got {self.dtype} {self.shape}."
            )
        if self.high < 0:
            raise ValueError(f"Observation key {key!r}: a grid's upper bound must be >= 0.")

    @property
    def output_space(self) -> spaces.Box:
        """The ``(H, W, 1)`` grid the encoder sees."""
        # Gymnasium annotates dtype as a scalar class; it takes any dtype.
        return spaces.Box(0, self.high, (*self.shape, 1), dtype=self.dtype)  # type: ignore[arg-type]

    def check_space(self, space: spaces.Space[Any]) -> None:
        """Raise if ``space`` is not the raw space this transform was built for."""
        _check_raw_box(self, space, "reads", "another env")

    def describe_input(self) -> str:
        """What the raw input is."""
        return f"a {self.dtype} grid of shape {self.shape}"

    def describe(self) -> str:
        """One line for ``mbm-agent inspect``."""
        h, w = self.shape
        return f"2-D grid ({h}, {w}) -> ({h}, {w}, 1), values 0..{self.high}"

    def classify(self, value: Any) -> tuple[bool, int | None, Any]:
        """``(is_raw, batch size or None for one observation, value)``."""
        arr = np.asarray(value)
        out = (*self.shape, 1)
        if arr.shape == self.shape:
            return True, None, arr[None]
        if arr.shape[1:] == self.shape:
            return True, arr.shape[0], arr
        if arr.shape == out:
            return False, None, arr
        if arr.shape[1:] == out:
            return False, arr.shape[0], arr
        raise ValueError(
            f"obs[{self.key!r}] has shape {arr.shape}; this policy takes "
            f"{self.describe_input()}, a batch (B, {self.shape[0]}, {self.shape[1]}), or "
            f"either with a trailing channel axis of 1."
        )

    def apply(self, raw: NDArray[Any], buffer: NDArray[Any] | None = None) -> NDArray[Any]:
        """A batch of grids ``(B, H, W)`` as ``(B, H, W, 1)``."""
        return np.asarray(raw)[..., None].copy()

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": "grid",
            "dtype": self.dtype.name,
            "shape": list(self.shape),
            "high": self.high,
        }


class FrameTransform(GridTransform):
    """A 2-D uint8 greyscale frame ``(H, W)`` -> ``(H, W, 1)``: the channel axis the image encoder reads.

    Args:
        key: Observation key.
        dtype: The raw dtype (``uint8``).
        shape: The raw ``(H, W)``.
        high: The space's upper bound (255).
    """

    modality = "image"

    def __init__(self, key: str, dtype: str, shape: Sequence[int], high: int = 255) -> None:
        super().__init__(key, dtype, shape, high)
        if self.dtype != np.uint8:
            raise ValueError(
                f"Observation key {key!r}: a 2-D greyscale frame must be uint8, got {self.dtype}."
            )

    def describe_input(self) -> str:
        """What the raw input is."""
        return f"a uint8 greyscale frame of shape {self.shape}"

    def describe(self) -> str:
        """One line for ``mbm-agent inspect``."""
        h, w = self.shape
        return f"greyscale frame ({h}, {w}) -> ({h}, {w}, 1)"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {**super().to_dict(), "kind": "frame"}


# -- nested keys ----------------------------------------------------------------------
ObsPath = tuple[str | int, ...]
"""Where a flat key's value lies in the raw observation: Dict keys and Tuple indices."""


def is_nested_space(space: spaces.Space[Any]) -> bool:
    """A ``Dict`` or ``Tuple`` space (flattened into one key per part at the env's edge)."""
    return isinstance(space, spaces.Dict | spaces.Tuple)


def is_array_space(space: spaces.Space[Any]) -> bool:
    """A space whose values SB3's vector envs store: ``Box``, ``Discrete``, ``MultiDiscrete``, ``MultiBinary``."""
    return isinstance(
        space, spaces.Box | spaces.Discrete | spaces.MultiDiscrete | spaces.MultiBinary
    )


def _leaves(
    name: str, path: ObsPath, space: spaces.Space[Any]
) -> Iterator[tuple[str, ObsPath, spaces.Space[Any]]]:
    """``(flat key, path, space)`` of every non-nested part of ``space``."""
    if isinstance(space, spaces.Dict):
        parts: list[tuple[str | int, spaces.Space[Any]]] = list(space.spaces.items())
    elif isinstance(space, spaces.Tuple):
        parts = list(enumerate(space.spaces))
    else:
        yield name, path, space
        return
    if len(path) > MAX_DEPTH:
        raise ValueError(f"Observation key {path[0]!r} is nested deeper than {MAX_DEPTH} levels.")
    for part, sub in parts:
        yield from _leaves(f"{name}{SEPARATOR}{part}", (*path, part), sub)


def path_text(path: ObsPath, plain: bool = False) -> str:
    """``obs['robot']['pos']`` (``obs[0]`` for a part of a plain Tuple observation)."""
    return "obs" + "".join(f"[{p!r}]" for p in (path[1:] if plain else path))


def _walk_space(space: spaces.Dict, path: ObsPath) -> spaces.Space[Any]:
    sub: spaces.Space[Any] = space
    for part in path:
        in_dict = isinstance(sub, spaces.Dict) and isinstance(part, str) and part in sub.spaces
        in_tuple = isinstance(sub, spaces.Tuple) and isinstance(part, int) and part < len(sub)
        if in_dict or in_tuple:
            sub = sub[part]  # type: ignore[index]
        else:
            raise ValueError(
                f"This policy reads {path_text(path)}, which the env's observation space "
                f"{space} lacks; was it trained on another env?"
            )
    return sub


# -- the adapter --------------------------------------------------------------------
KeyTransform = TextTransform | WaveformTransform | GridTransform | FrameTransform


#: Bounds of the settings a saved adapter may ask for (a model.json from a stranger
#: must not make loading allocate without limit).
LIMITS: dict[str, int] = {
    "length": 2**20,
    "table_size": 2**24,
    "max_len": 2**14,
    "sample_rate": 2**20,
    "n_fft": 2**16,
    "hop_length": 2**16,
    "n_mels": 2**10,
    "n_frames": 2**12,
    "shape": 2**22,
    "high": 2**20,
    "keys": 2**12,
}


def _check_raw_box(
    transform: WaveformTransform | GridTransform,
    space: spaces.Space[Any],
    verb: str,
    trained_on: str,
) -> None:
    """Raise unless ``space`` is the Box (shape, dtype) a transform was built for."""
    if (
        not isinstance(space, spaces.Box)
        or space.shape != transform.shape
        or space.dtype != transform.dtype
    ):
        raise ValueError(
            f"Observation key {transform.key!r} has space {space}, but this policy {verb} it as "
            f"{transform.describe_input()}; was it trained on {trained_on}?"
        )


def _bounded(data: Mapping[str, Any], name: str) -> int:
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= LIMITS[name]:
        raise ValueError(f"{name} must be an integer in [1, {LIMITS[name]}], got {value!r:.80}.")
    return value


def transform_from_dict(key: str, data: Mapping[str, Any]) -> KeyTransform:
    """Inverse of the transforms' ``to_dict`` (values bounded by :data:`LIMITS`)."""
    kind = data.get("kind")
    if kind == "text":
        codec = dict(data["codec"])
        if codec.get("codec") == HashedWords.kind:
            _bounded(codec, "table_size")
            _bounded(codec, "max_len")
        return TextTransform(
            key,
            codec_from_dict(codec),
            str(data["source"]),
            None if data.get("length") is None else _bounded(data, "length"),
        )
    if kind == "waveform":
        audio = AudioConfig(
            sample_rate=_bounded(data, "sample_rate"),
            n_fft=_bounded(data, "n_fft"),
            hop_length=_bounded(data, "hop_length"),
            n_frames=_bounded(data, "n_frames"),
            n_mels=_bounded(data, "n_mels"),
        )
        shape = data["shape"]
        if not isinstance(shape, list) or not all(_bounded({"shape": s}, "shape") for s in shape):
            raise ValueError(f"shape must be a list of sizes, got {shape!r:.80}.")
        return WaveformTransform(key, str(data["dtype"]), shape, audio)
    if kind in ("grid", "frame"):
        shape = data["shape"]
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(_bounded({"shape": s}, "shape") for s in shape)
        ):
            raise ValueError(f"shape must be a list of 2 sizes, got {shape!r:.80}.")
        dtype = np.dtype(str(data["dtype"]))
        if dtype.kind not in "iu":
            raise ValueError(f"a grid's dtype must be an integer type, got {dtype}.")
        if kind == "frame":
            return FrameTransform(key, dtype.name, shape, _bounded(data, "high"))
        return GridTransform(key, dtype.name, shape, _bounded(data, "high"))
    raise ValueError(f"Unknown observation transform {kind!r} for key {key!r}.")


class AdapterState:
    """The rolling waveform windows of a batch of envs (one row per env).

    Args:
        adapter: The adapter whose waveform keys get a window.
        batch: Number of envs.
    """

    def __init__(self, adapter: ObservationAdapter, batch: int = 1) -> None:
        self.adapter = adapter
        self.batch = 0
        self.buffers: dict[str, NDArray[np.float64]] = {}
        self.resize(batch)

    def resize(self, batch: int) -> None:
        """Silent windows for ``batch`` envs (when the batch size changes)."""
        self.batch = int(batch)
        self.buffers = {
            key: t.new_buffer(self.batch)
            for key, t in self.adapter.transforms.items()
            if isinstance(t, WaveformTransform)
        }

    def reset(
        self, slots: NDArray[np.bool_] | NDArray[np.integer[Any]] | Sequence[int] | None = None
    ) -> None:
        """Silence the windows of ``slots`` (all when None): call it at episode starts."""
        index = None if slots is None else np.asarray(slots)
        if index is not None and index.dtype != np.bool_:
            index = index.astype(np.intp)
        for buffer in self.buffers.values():
            if index is None:
                buffer[...] = 0.0
            else:
                buffer[index] = 0.0


class ObservationAdapter:
    """How raw env observations become the encoder's ``Dict`` observation (see the module doc).

    Build one with :meth:`for_space` (from a space and the config's declarations)
    or :meth:`from_dict` / :meth:`from_spec` (from a saved model).

    Args:
        transforms: Per converted key, its transform.
        box_key: Key a plain (non-Dict) observation is put under, or None for Dict envs.
        modalities: The encoder's declarations for the converted observation
            (converted keys and keys the config declared).
        declared: The config's declarations as written (``train --init-from`` reuses them).
        paths: Per flat key of a nested key, where its value lies in the raw
            observation (``{"robot_pos": ("robot", "pos")}``).
        nested: The raw keys flattened into ``paths`` (removed from the observation).
        dropped: Keys declared ``ignore`` that SB3 cannot store, removed at the edge
            (raw keys, or flat keys of nested ones).
    """

    def __init__(
        self,
        transforms: Mapping[str, KeyTransform] | None = None,
        *,
        box_key: str | None = None,
        modalities: Mapping[str, str] | None = None,
        declared: Mapping[str, Any] | None = None,
        paths: Mapping[str, Sequence[str | int]] | None = None,
        nested: Sequence[str] = (),
        dropped: Sequence[str] = (),
    ) -> None:
        self.transforms: dict[str, KeyTransform] = dict(transforms or {})
        self.box_key = box_key
        self.modalities: dict[str, str] = dict(modalities or {})
        self.declared: dict[str, Any] = dict(declared or {})
        self.paths: dict[str, ObsPath] = {k: tuple(v) for k, v in (paths or {}).items()}
        self.nested: tuple[str, ...] = tuple(nested)
        self.dropped: tuple[str, ...] = tuple(dropped)
        self._removed = frozenset(self.nested) | frozenset(self.dropped)

    @classmethod
    def for_space(
        cls,
        space: spaces.Space[Any],
        declared: Mapping[str, Any] | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> ObservationAdapter:
        """The adapter of an env with observation space ``space``.

        Args:
            space: The env's raw observation space (a Dict, or any other space, made a
                one-key Dict).
            declared: ``TrainConfig.modalities``: per key a modality string or mapping.
            metadata: The env's ``metadata`` (may give ``audio_sample_rate``).

        Raises:
            ValueError: A declared key the space lacks, a bad declaration, a
                declaration that does not fit its key's space, or an undeclared key
                whose modality cannot be inferred (naming the key, its space and the
                config line that fixes it).
        """
        decls = parse_declarations(declared or {})
        box_key = None
        if not isinstance(space, spaces.Dict):
            box_key = "image" if is_frame_space(space) else "obs"
            space = spaces.Dict({box_key: space})
        flat, paths, nested, dropped = _flatten(space, decls)
        known = [*space.spaces, *paths, *(k for k in dropped if k not in space.spaces)]
        unknown = [k for k in decls if k not in known]
        if unknown:
            hints = ", ".join(f"{k!r}{_hint(k, known)}" for k in unknown)
            raise ValueError(
                f"modalities declares {hints}, which the observation space lacks; its keys are "
                f"{known}."
            )
        transforms: dict[str, KeyTransform] = {}
        modalities: dict[str, str] = {}
        for key, sub in flat.items():
            decl = decls.get(key)
            if decl is None:
                inferred = infer_modality(key, sub)
                if is_flat_frame_space(sub, FLAT_FRAME_MIN_SIDE) and inferred == "vector":
                    _warn_flat_frame(key, sub)
                elif (
                    is_flat_frame_space(sub)
                    and inferred in ("image", None)
                    and (inferred == "image" or is_flat_frame_space(sub, FLAT_FRAME_MIN_SIDE))
                ):
                    # Too large for a vector (or named image): a greyscale frame.
                    transforms[key] = _frame_transform(key, sub)
                    modalities[key] = "image:hwc"
                    continue
                if inferred is None:
                    raise undeclared_error(key, sub)
                if is_string_space(sub):
                    transforms[key] = text_transform(key, sub, {})
                    modalities[key] = "text"
                continue
            if decl.kind == "waveform":
                transforms[key] = waveform_transform(key, sub, decl.options, metadata)
                modalities[key] = "audio"
            elif decl.kind == "symbolic_grid" and is_flat_grid_space(sub):
                assert isinstance(sub, spaces.Box)
                transforms[key] = GridTransform(
                    key, cast(np.dtype, sub.dtype).name, sub.shape, int(np.max(sub.high))
                )
                modalities[key] = decl.encoder_string()
            elif decl.kind == "image" and is_flat_frame_space(sub):
                transforms[key] = _frame_transform(key, sub)
                modalities[key] = "image:hwc"
            elif decl.kind == "text" and (is_string_space(sub) or _is_byte_text(sub)):
                transforms[key] = text_transform(key, sub, decl.options)
                modalities[key] = "text"
            elif decl.options:
                raise ValueError(
                    f"modalities.{key}: {sorted(decl.options)} apply to raw strings or bytes, "
                    f"but {key!r} is {sub} (token ids: declare it plain 'text')."
                )
            else:
                modalities[key] = decl.encoder_string()
        return cls(
            transforms,
            box_key=box_key,
            modalities=modalities,
            declared=declared,
            paths=paths,
            nested=nested,
            dropped=dropped,
        )

    @property
    def is_identity(self) -> bool:
        """Whether observations pass unchanged (a Dict env with nothing to convert)."""
        return not (self.transforms or self.paths or self.nested or self.dropped) and (
            self.box_key is None
        )

    def raw_leaves(self, raw: spaces.Space[Any]) -> dict[str, tuple[ObsPath, spaces.Space[Any]]]:
        """Per key of the flat observation, where it lies in a raw one and its raw space.

        Raises:
            ValueError: ``raw`` lacks a key (or a part of a nested key) this adapter reads.
        """
        if self.box_key is not None:
            if isinstance(raw, spaces.Dict):
                raise ValueError(
                    f"This adapter expects a plain observation (put under {self.box_key!r}), "
                    f"got {raw}."
                )
            raw = spaces.Dict({self.box_key: raw})
        if not isinstance(raw, spaces.Dict):
            raise ValueError(f"Expected a Dict observation space, got {raw}.")
        out: dict[str, tuple[ObsPath, spaces.Space[Any]]] = {
            key: ((key,), sub) for key, sub in raw.spaces.items() if key not in self._removed
        }
        for key, path in self.paths.items():
            out[key] = (path, _walk_space(raw, path))
        return out

    def observation_space(self, raw: spaces.Space[Any]) -> spaces.Dict:
        """The converted space of an env whose raw space is ``raw`` (checked against this adapter)."""
        out = {key: sub for key, (_, sub) in self.raw_leaves(raw).items()}
        for key, transform in self.transforms.items():
            if key not in out:
                raise ValueError(
                    f"This policy reads observation key {key!r} ({transform.describe_input()}), "
                    f"which the env lacks; its keys are {list(out)}."
                )
            transform.check_space(out[key])
            out[key] = transform.output_space
        return spaces.Dict(out)

    def observation_check(self, raw: spaces.Space[Any], env_id: str) -> ObservationCheck:
        """The per-step check of the raw observations of an env whose raw space is ``raw``."""
        return ObservationCheck(self, raw, env_id)

    def new_state(self, batch: int = 1) -> AdapterState:
        """Silent rolling windows for ``batch`` envs."""
        return AdapterState(self, batch)

    def flatten(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """The observation with nested keys flattened and dropped keys removed.

        Keys already flat (as the wrapped envs of evaluation emit them) pass unchanged.
        """
        out = {k: v for k, v in obs.items() if k not in self._removed}
        for key, path in self.paths.items():
            if path[0] in obs:
                value: Any = obs
                for part in path:
                    value = value[part]
                out[key] = value
        return out

    def adapt(self, obs: Any, state: AdapterState | None = None) -> dict[str, Any]:
        """Convert one observation or a batch (a leading batch axis on every key).

        Converted keys may also be given already converted (as the wrapped envs
        of evaluation emit them): those pass unchanged. A waveform advances the
        rolling windows of ``state``, which is resized (and silenced) when the
        batch size changes.

        Raises:
            ValueError: A value that is neither the raw input nor its conversion,
                or keys that disagree on the batch size.
        """
        if self.box_key is not None and not isinstance(obs, Mapping):
            obs = {self.box_key: obs}
        if not isinstance(obs, Mapping):
            raise ValueError(f"obs must be a dict of arrays, got {type(obs).__name__}.")
        out = self.flatten(obs) if self._removed else dict(obs)
        if not self.transforms:
            return out
        pending: dict[str, tuple[int | None, Any]] = {}
        for key, transform in self.transforms.items():
            if key in out:
                is_raw, batch, value = transform.classify(out[key])
                if is_raw:
                    pending[key] = (batch, value)
        if not pending:
            return out
        batches = {batch for batch, _ in pending.values()}
        if len(batches) > 1:
            raise ValueError(
                f"obs keys {sorted(pending)} disagree on the batch size ({sorted(batches, key=str)}; "
                "None is one observation); give every key the same leading batch axis, or none."
            )
        batch = batches.pop()
        if any(isinstance(self.transforms[k], WaveformTransform) for k in pending):
            if state is None:
                raise ValueError("Converting a waveform needs an AdapterState (new_state()).")
            if state.batch != (batch or 1):
                state.resize(batch or 1)
        for key, (_, value) in pending.items():
            buffer = state.buffers.get(key) if state is not None else None
            converted = self.transforms[key].apply(value, buffer)
            out[key] = converted if batch is not None else converted[0]
        return out

    def describe(self, key: str) -> str:
        """What happens to ``key`` at the env's edge, for ``mbm-agent inspect``."""
        parts = []
        if key in self.paths:
            parts.append(f"from {path_text(self.paths[key], self.box_key is not None)}")
        if key in self.transforms:
            parts.append(self.transforms[key].describe())
        return "; ".join(parts) or "-"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored as ``model.json``'s and ``export.json``'s ``observation_adapter``).

        Version 1 unless keys are flattened or dropped (then version 2, which an
        older mbm-agent refuses instead of misreading).
        """
        data: dict[str, Any] = {
            "format": ADAPTER_FORMAT,
            "version": 1,
            "box_key": self.box_key,
            "transforms": {key: t.to_dict() for key, t in self.transforms.items()},
            "modalities": dict(self.modalities),
            "declared": dict(self.declared),
        }
        if any(isinstance(t, FrameTransform) for t in self.transforms.values()):
            data["version"] = ADAPTER_VERSION  # an older reader does not know "frame"
        if self._removed:
            data["version"] = ADAPTER_VERSION
            data["paths"] = {key: list(path) for key, path in self.paths.items()}
            data["nested"] = list(self.nested)
            data["dropped"] = list(self.dropped)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ObservationAdapter:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: Not an adapter of a readable version, or a malformed one.
        """
        if not isinstance(data, Mapping) or data.get("format") != ADAPTER_FORMAT:
            raise ValueError(f"Not an mbm-agent observation adapter (format {ADAPTER_FORMAT!r}).")
        if data.get("version") not in READABLE_VERSIONS:
            raise ValueError(
                f"Observation adapter version {data.get('version')!r} is not supported (this "
                f"mbm-agent reads versions {list(READABLE_VERSIONS)}); use the mbm-agent that "
                "wrote it."
            )
        try:
            transforms = {
                str(key): transform_from_dict(str(key), value)
                for key, value in dict(data.get("transforms") or {}).items()
            }
            box_key = data.get("box_key")
            paths = {str(k): _saved_path(k, v) for k, v in dict(data.get("paths") or {}).items()}
            nested = [str(k) for k in list(data.get("nested") or [])]
            dropped = [str(k) for k in list(data.get("dropped") or [])]
            if max(len(paths), len(nested), len(dropped)) > LIMITS["keys"]:
                raise ValueError(f"more than {LIMITS['keys']} flattened or dropped keys.")
            return cls(
                transforms,
                box_key=None if box_key is None else str(box_key),
                modalities={str(k): str(v) for k, v in dict(data.get("modalities") or {}).items()},
                declared=dict(data.get("declared") or {}),
                paths=paths,
                nested=nested,
                dropped=dropped,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"Malformed observation adapter ({type(exc).__name__}: {exc})."
            ) from exc

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ObservationAdapter:
        """The adapter of a saved policy (``model.json``); identity for models saved without one."""
        data = spec.get("observation_adapter")
        if data:
            return cls.from_dict(data)
        modalities = spec.get("modalities") or {}
        return cls(modalities=modalities, declared=modalities)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObservationAdapter) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))

    def __repr__(self) -> str:
        parts = [f"{key}: {t.describe()}" for key, t in self.transforms.items()]
        if self.nested:
            parts.insert(0, f"flattened {list(self.nested)} -> {list(self.paths)}")
        if self.dropped:
            parts.insert(0, f"dropped {list(self.dropped)}")
        if self.box_key is not None:
            parts.insert(0, f"plain observation -> {self.box_key!r}")
        return f"ObservationAdapter({'; '.join(parts) or 'identity'})"


def _warn_flat_frame(key: str, space: spaces.Space[Any]) -> None:
    size = int(np.prod(cast(spaces.Box, space).shape))
    warnings.warn(
        f"Observation key {key!r} with space {space} looks like a greyscale frame (2-D uint8) "
        f"but is encoded as a flat vector of {size} values. Declare `modalities: {{{key}: "
        f"image}}` to read it as a frame (it gets a channel axis), `symbolic_grid` if it holds "
        f"ids (MiniHack's chars), or `vector` to keep it flat and silence this warning.",
        stacklevel=3,
    )


def _frame_transform(key: str, space: spaces.Space[Any]) -> FrameTransform:
    assert isinstance(space, spaces.Box)
    return FrameTransform(key, "uint8", space.shape, int(np.max(space.high)))


def _saved_path(key: object, value: Any) -> ObsPath:
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_DEPTH + 1
        or not isinstance(value[0], str)
        or not all(isinstance(p, str) or (type(p) is int and 0 <= p < 2**16) for p in value)
    ):
        raise ValueError(
            f"paths.{key} must be a list of Dict keys and Tuple indices, got {value!r:.80}."
        )
    return tuple(value)


def _flatten(
    space: spaces.Dict, decls: Mapping[str, Declaration]
) -> tuple[dict[str, spaces.Space[Any]], dict[str, ObsPath], list[str], list[str]]:
    """``(flat spaces, paths of flattened parts, nested raw keys, dropped keys)`` of a raw Dict."""
    flat: dict[str, spaces.Space[Any]] = {}
    paths: dict[str, ObsPath] = {}
    nested: list[str] = []
    dropped: list[str] = []

    def ignored(key: str, sub: spaces.Space[Any]) -> bool:
        decl = decls.get(key)
        return decl is not None and decl.kind == "ignore" and not is_array_space(sub)

    for key, sub in space.spaces.items():
        if ignored(key, sub):
            dropped.append(key)
            continue
        if not is_nested_space(sub):
            flat[key] = sub
            continue
        leaves = list(_leaves(key, (key,), sub))
        names = [name for name, _, _ in leaves]
        if key in decls:
            raise ValueError(
                f"modalities.{key}: {key!r} is a nested space ({sub}); its parts become the keys "
                f"{names} at the env's edge. Declare those (e.g. `modalities: {{{names[0]}: "
                f"vector}}`), or `{key}: ignore` to drop all of it."
            )
        nested.append(key)
        for name, path, leaf in leaves:
            if name in space.spaces or name in paths:
                raise ValueError(
                    f"Observation key {key!r}: its part {path_text(path)} would become the key "
                    f"{name!r}, which the observation already has; rename one of them with a "
                    "wrapper (e.g. mbm_agent.RenameObservationKeys)."
                )
            if ignored(name, leaf):
                dropped.append(name)
                continue
            paths[name] = path
            flat[name] = leaf
    return flat, paths, nested, dropped


class ObservationError(ValueError):
    """An env emitted an observation its own space forbids, or one no policy can learn from."""


@dataclass(frozen=True)
class _Leaf:
    key: str
    path: ObsPath
    space: spaces.Space[Any]
    shape: tuple[int, ...]
    kind: str
    exact: bool  # converted at the edge: the shape must match exactly
    finite: bool  # checked for NaN / inf (not for keys declared ignore)
    transform: KeyTransform | None


def _kinds_fit(declared: str, emitted: str) -> bool:
    """Whether values of dtype kind ``emitted`` are stored exactly in a space of kind ``declared``."""
    if emitted not in "biuf":
        return False
    return declared == "f" or emitted != "f"


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


class ObservationCheck:
    """Checks each raw observation of an env against its own space, where it leaves the env.

    Per array key (Box, Discrete, MultiDiscrete, MultiBinary, nested parts
    included): its shape (exactly, for keys converted at the edge; else up to axes
    of size 1), its dtype kind (integers in a float space are fine; floats in an
    integer space only when they hold whole numbers) and, for float values, that
    all are finite (not for keys declared ``ignore``). The cost is one
    ``np.isfinite`` per float key and step. Raises :class:`ObservationError`.

    Args:
        adapter: The run's adapter (which keys, where they lie, which are ignored).
        raw: The env's raw observation space.
        env_id: Named in the errors.
    """

    def __init__(self, adapter: ObservationAdapter, raw: spaces.Space[Any], env_id: str) -> None:
        self.env_id = env_id
        self.box_key = adapter.box_key
        self.leaves: list[_Leaf] = []
        for key, (path, sub) in adapter.raw_leaves(raw).items():
            if not is_array_space(sub):
                continue
            transform = adapter.transforms.get(key)
            self.leaves.append(
                _Leaf(
                    key,
                    path,
                    sub,
                    tuple(sub.shape or ()),
                    cast(np.dtype, sub.dtype).kind,
                    transform is not None,
                    adapter.modalities.get(key) != "ignore",
                    transform,
                )
            )

    def __call__(self, obs: Any, step: int | None = None) -> None:
        """Check one raw observation; ``step`` is its step in the episode (None: from reset).

        Raises:
            ObservationError: Naming the env, the key, the step, what was emitted,
                what the space declares and what to do.
        """
        if self.box_key is not None:
            obs = {self.box_key: obs}
        for leaf in self.leaves:
            value = obs
            try:
                for part in leaf.path:
                    value = value[part]
            except (KeyError, IndexError, TypeError):
                raise ObservationError(
                    f"{self.env_id} breaks its own observation_space: {self._where(step)} its "
                    f"observation has no {self._name(leaf)}, which its space declares as "
                    f"{leaf.space}. Make the env emit every key its observation_space declares."
                ) from None
            arr = value if isinstance(value, np.ndarray) else np.asarray(value)
            kind = arr.dtype.kind
            if arr.shape != leaf.shape or kind != leaf.kind:
                self._check_mismatch(leaf, arr, step)
            if leaf.finite and kind == "f" and not np.isfinite(arr).all():
                raise self._non_finite(leaf, arr, step)

    def _check_mismatch(self, leaf: _Leaf, arr: NDArray[Any], step: int | None) -> None:
        """The slow path of a shape or dtype that differs from the space: raise unless benign."""
        same = arr.shape == leaf.shape or (
            not leaf.exact and _squeezed(arr.shape) == _squeezed(leaf.shape)
        )
        kind = arr.dtype.kind
        why = ""
        if not same:
            why = "its shape differs"
        elif not _kinds_fit(leaf.kind, kind):
            if kind == "f" and leaf.kind in "biu":
                if leaf.finite and not np.isfinite(arr).all():
                    raise self._non_finite(leaf, arr, step)
                if isinstance(leaf.transform, WaveformTransform):
                    why = "its dtype kind differs"
                elif np.any(arr != np.round(arr)):
                    why = "its float values would be truncated to integers"
            else:
                why = "its dtype kind differs"
        if isinstance(leaf.transform, WaveformTransform) and not why and kind != leaf.kind:
            why = "its dtype kind differs"
        if not why:
            return
        hint = ""
        if isinstance(leaf.transform, WaveformTransform):
            t = leaf.transform
            hint = (
                f" {leaf.key!r} is a waveform of {t.chunk} samples per step"
                + (f" on {t.channels} channels" if t.channels > 1 else "")
                + f" ({t.dtype}): each step must emit exactly that many samples of that dtype"
                + (f"; {pcm_mismatch(t.dtype, arr.dtype)}" if same and kind != leaf.kind else "")
                + "."
            )
        raise ObservationError(
            f"{self.env_id} breaks its own observation_space: {self._where(step)} it emitted "
            f"{self._name(leaf)} as {arr.dtype} of shape {arr.shape}, but its space declares "
            f"{leaf.space} ({why}).{hint} Make the env emit what its observation_space declares, "
            "or declare the space it emits."
        )

    def _name(self, leaf: _Leaf) -> str:
        where = path_text(leaf.path, self.box_key is not None)
        if len(leaf.path) == 1:
            return "its plain observation" if self.box_key is not None else f"key {leaf.key!r}"
        return f"key {leaf.key!r} ({where})"

    @staticmethod
    def _where(step: int | None) -> str:
        return "at reset" if step is None else f"at step {step} of an episode"

    def _non_finite(self, leaf: _Leaf, arr: NDArray[Any], step: int | None) -> ObservationError:
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        ignore = f"`modalities: {{{leaf.key}: ignore}}`"
        return ObservationError(
            f"{self.env_id} emitted {n_nan} NaN and {n_inf} infinite value(s) in "
            f"{self._name(leaf)} {self._where(step)} ({arr.dtype}, shape {arr.shape}); a policy "
            "cannot learn from them (they end as 'probability tensor contains either inf, nan'). "
            "Replace or clip them in the env, e.g. np.nan_to_num(x, nan=0.0, posinf=HIGH, "
            "neginf=LOW), or wrap it (gymnasium.wrappers.TransformObservation) and train the "
            f"wrapped env; or declare {ignore} if the policy needs no {leaf.key!r}."
        )


def _is_byte_text(space: spaces.Space[Any]) -> bool:
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 1


__all__ = [
    "ADAPTER_FORMAT",
    "DECLARABLE",
    "HASH_TABLE_SIZE",
    "TEXT_MAX_LEN",
    "AdapterState",
    "Declaration",
    "FrameTransform",
    "GridTransform",
    "HashedWords",
    "KnownWords",
    "ObservationAdapter",
    "ObservationCheck",
    "ObservationError",
    "TextTransform",
    "WaveformTransform",
    "default_n_fft",
    "parse_declaration",
    "parse_declarations",
]
