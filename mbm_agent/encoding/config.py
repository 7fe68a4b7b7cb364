"""Settings of the multimodal encoder: :class:`EncoderConfig` and the modality names.

Every field of :class:`EncoderConfig` is checked on creation; the names a field
may take come from the registries (``FUSION_MODES`` in
:mod:`mbm_agent.encoding.fusion`, ``IMAGE_ENCODERS`` and ``TEXT_ENCODERS`` in
:mod:`mbm_agent.encoding.encoders`).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium import spaces

from mbm_agent.encoding.encoders import IMAGE_ENCODERS, TEXT_ENCODERS
from mbm_agent.encoding.fusion import FUSION_MODES

MODALITIES: tuple[str, ...] = ("image", "text", "audio", "symbolic_grid", "vector", "ignore")
"""Modality names accepted in ``modalities=`` (``image`` and ``symbolic_grid`` also take a
``:hwc`` or ``:chw`` layout suffix)."""

DEFAULT_MODALITIES: dict[str, str] = {
    "image": "image",
    "text": "text",
    "audio": "audio",
    "symbolic_grid": "symbolic_grid",
}
"""Modality of the observation contract's keys when they are not declared (by key name);
every other key gets one by its space (:func:`infer_modality`)."""

IMAGE_CHANNELS: tuple[int, ...] = (1, 3, 4)
"""Channel counts of a frame (grey, RGB, RGBA)."""

MAX_VECTOR_SIZE = 4096
"""Most values a key may hold to be encoded as a vector without a declaration."""

MAX_MEMORY = 4096
"""Largest recurrent state (``memory``: a GRU over the fused features) a policy is built
with, by SB3's PPO, the RLlib module and the exports alike."""


def check_memory(memory: object) -> int:
    """``memory`` as the size of a recurrent state, or a ValueError naming the fix."""
    if isinstance(memory, bool) or not isinstance(memory, int) or not 0 <= memory <= MAX_MEMORY:
        raise ValueError(
            f"memory must be the size of the recurrent state, an integer in [0, {MAX_MEMORY}] "
            f"(0: no memory), got {memory!r}."
        )
    return memory


FLAT_FRAME_MIN_SIDE = 16
"""Smallest height and width of an undeclared 2-D uint8 Box taken for a greyscale frame
(a frame when too large for a vector; else a vector, with a warning)."""


def is_string_space(space: spaces.Space[Any]) -> bool:
    """A space of raw strings: ``spaces.Text`` or MiniGrid's ``MissionSpace``."""
    return any(cls.__name__ in ("Text", "MissionSpace") for cls in type(space).__mro__)


def is_frame_space(space: spaces.Space[Any]) -> bool:
    """A uint8 3-D Box with 1, 3 or 4 channels first or last (``H x W x C`` or ``C x H x W``)."""
    return (
        isinstance(space, spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and (space.shape[-1] in IMAGE_CHANNELS or space.shape[0] in IMAGE_CHANNELS)
    )


def is_flat_frame_space(space: spaces.Space[Any], min_side: int = 1) -> bool:
    """A 2-D uint8 Box ``(H, W)`` with both sides >= ``min_side``: a greyscale frame without a channel axis.

    The observation adapter gives such a key its channel axis, ``(H, W) -> (H, W, 1)``,
    when it is declared ``image`` (or, undeclared, when it is too large for a vector);
    the encoder itself reads frames with a channel axis.
    """
    return (
        isinstance(space, spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 2
        and min(space.shape) >= min_side
    )


def is_vector_space(space: spaces.Space[Any]) -> bool:
    """A discrete space, or a 1-D / 2-D Box of at most :data:`MAX_VECTOR_SIZE` values."""
    if isinstance(space, spaces.Discrete | spaces.MultiDiscrete | spaces.MultiBinary):
        return True
    return (
        isinstance(space, spaces.Box)
        and len(space.shape) <= 2
        and int(np.prod(space.shape)) <= MAX_VECTOR_SIZE
    )


def infer_modality(key: str, space: spaces.Space[Any]) -> str | None:
    """The modality of an undeclared key, or None when neither its name nor its space says.

    The contract's keys (``image``, ``text``, ``audio``, ``symbolic_grid``) go by
    name (:data:`DEFAULT_MODALITIES`: our games' ``audio`` is a float Box of
    log-mel features); any other key by its space: a uint8 frame
    (:func:`is_frame_space`) is an ``image``, a string space ``text`` (raw strings
    are turned into token ids at the env's edge, see
    :mod:`mbm_agent.training.adapter`), a small Box or a discrete space a ``vector``.
    A raw waveform looks like a vector and must be declared ``waveform``.
    """
    if key in DEFAULT_MODALITIES:
        return DEFAULT_MODALITIES[key]
    if is_string_space(space):
        return "text"
    if is_frame_space(space):
        return "image"
    if is_vector_space(space):
        return "vector"
    return None


def undeclared_error(key: str, space: spaces.Space[Any]) -> ValueError:
    """The error for a key whose modality neither a declaration, its name nor its space gives.

    It names the key, its space and the config line that fixes it (the encoder and
    ``mbm-agent train`` / ``inspect`` raise the same one).
    """
    if is_string_space(space):
        why = (
            "is a raw string space; the encoder takes token ids. `mbm-agent train` turns "
            "strings into ids at the env's edge (mbm_agent.AdaptObservation, or "
            "mbm_agent.TokenizeMission for MiniGrid missions); wrap the env the same way, "
            "or skip the key"
        )
        example = "ignore"
    else:
        why = (
            "is neither a uint8 frame (H x W x C with C in 1, 3, 4), nor a string space, nor "
            f"a small vector (a discrete space or a 1-D / 2-D Box of at most {MAX_VECTOR_SIZE} "
            "values)"
        )
        frame = isinstance(space, spaces.Box) and len(space.shape) == 3
        example = "image" if frame or is_flat_frame_space(space) else "ignore"
    return ValueError(
        f"Observation key {key!r} with space {space} {why}. Declare its modality, e.g. "
        f"modalities={{{key!r}: {example!r}}} (config file: `modalities: {{{key}: {example}}}`, "
        f"or --set modalities.{key}={example}); known modalities: {list(MODALITIES)}."
    )


MISSING_EMBEDDINGS: tuple[str, ...] = ("learned", "zeros")


@dataclass(frozen=True)
class EncoderConfig:
    """Settings of a :class:`MultimodalEncoder`; every field is checked on creation.

    Frozen, so a config checked once stays valid wherever it travels; change a
    field with :meth:`replace`.

    Attributes:
        fusion: Fusion mode, a key of ``FUSION_MODES``.
        features_dim: Width of the fused feature vector.
        image_encoder: Image CNN, one of ``IMAGE_ENCODERS``.
        image_dim: Embedding width of image and symbolic-grid encoders.
        image_cells: Grid cells per side of the frame (``image_encoder="cells"``).
        text_encoder: Text encoder, one of ``TEXT_ENCODERS``.
        word_dim: Word embedding width.
        text_dim: Text embedding width.
        audio_dim: Audio embedding width.
        vector_dim: Embedding width of each vector key.
        grid_embed_dim: Per-value embedding width of symbolic grids.
        fusion_dim: Token width (``attention``) or gated width (``gated``).
        attention_heads: Heads of attention layers (fusion and text).
        modality_dropout: Training-time probability of dropping each modality
            per sample (never all of a sample's modalities).
        missing_embedding: What replaces a missing modality's embedding.
        check_inputs: Check keys, dtypes and shapes at every forward call.
    """

    fusion: str = field(default="concat", metadata={"help": "Fusion mode.", "choices": "fusion"})
    features_dim: int = field(default=256, metadata={"help": "Width of the fused features."})
    image_encoder: str = field(
        default="small", metadata={"help": "Image CNN architecture.", "choices": "image"}
    )
    image_dim: int = field(default=128, metadata={"help": "Image / grid embedding width."})
    image_cells: int = field(
        default=7,
        metadata={
            "help": "Grid cells per side of the frame, for image_encoder=cells (7: our games' and MiniGrid's agent view)."
        },
    )
    # Bag-of-words by default: our instructions are short templates whose meaning is
    # in which words appear; it costs ~1/6 of the GRU and made end-to-end PPO 3.1-3.5x
    # SB3's default pipeline instead of 2.0-2.3x. Use "gru" (or "attention") where word
    # order matters, e.g. multi-step BabyAI missions.
    text_encoder: str = field(
        default="bow", metadata={"help": "Text encoder architecture.", "choices": "text"}
    )
    word_dim: int = field(default=32, metadata={"help": "Word embedding width."})
    text_dim: int = field(
        default=32,
        metadata={"help": "Text embedding width (the GRU's hidden size; it sets its cost)."},
    )
    audio_dim: int = field(default=64, metadata={"help": "Audio embedding width."})
    vector_dim: int = field(default=32, metadata={"help": "Embedding width per vector key."})
    grid_embed_dim: int = field(
        default=16, metadata={"help": "Per-value embedding width of symbolic grids."}
    )
    fusion_dim: int = field(
        default=128, metadata={"help": "Token width (attention) or gated width (gated)."}
    )
    attention_heads: int = field(default=4, metadata={"help": "Heads of attention layers."})
    modality_dropout: float = field(
        default=0.0,
        metadata={"help": "Training-time per-sample probability of dropping each modality."},
    )
    missing_embedding: str = field(
        default="learned",
        metadata={"help": "Replacement for a missing modality.", "choices": "missing"},
    )
    check_inputs: bool = field(
        default=True, metadata={"help": "Check keys, dtypes and shapes at every forward call."}
    )

    def __post_init__(self) -> None:
        self.validate()

    @staticmethod
    def choices() -> dict[str, tuple[str, ...]]:
        """Allowed values of the fields that take a name."""
        return {
            "fusion": tuple(FUSION_MODES),
            "image_encoder": IMAGE_ENCODERS,
            "text_encoder": TEXT_ENCODERS,
            "missing_embedding": MISSING_EMBEDDINGS,
        }

    @staticmethod
    def help() -> dict[str, str]:
        """One line of help per field."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(EncoderConfig)}

    def validate(self) -> None:
        """Check every field's type and value.

        Raises:
            ValueError: Naming the bad field, its value and what is allowed.
        """
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = f.type if isinstance(f.type, str) else f.type.__name__
            ok = {
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, (int, float)) and not isinstance(value, bool),
                "bool": isinstance(value, bool),
                "str": isinstance(value, str),
            }[expected]
            if not ok:
                raise ValueError(
                    f"EncoderConfig.{f.name} must be of type {expected}, got {value!r} "
                    f"({type(value).__name__})."
                )
            if expected == "int" and value < 1:
                raise ValueError(f"EncoderConfig.{f.name} must be >= 1, got {value}.")
        for name, allowed in self.choices().items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"EncoderConfig.{name}={getattr(self, name)!r} is not allowed; "
                    f"choose one of {list(allowed)}."
                )
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(
                f"EncoderConfig.modality_dropout must be in [0, 1), got {self.modality_dropout}."
            )
        for name in ("fusion_dim", "word_dim"):
            if getattr(self, name) % self.attention_heads:
                needed = (self.fusion == "attention" and name == "fusion_dim") or (
                    self.text_encoder == "attention" and name == "word_dim"
                )
                if needed:
                    raise ValueError(
                        f"EncoderConfig.{name}={getattr(self, name)} must be divisible by "
                        f"attention_heads={self.attention_heads}."
                    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderConfig:
        """Build a config from a (possibly partial) dict, e.g. parsed JSON or YAML.

        Args:
            data: Field values; missing fields keep their defaults.

        Returns:
            The validated config.

        Raises:
            ValueError: On an unknown field (with the closest known name) or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"EncoderConfig.from_dict needs a mapping, got {type(data).__name__}.")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            hints = ", ".join(unknown_key_hint(k, known) for k in unknown)
            raise ValueError(f"Unknown EncoderConfig field(s): {hints}. Known fields: {known}.")
        values = dict(data)
        if isinstance(values.get("modality_dropout"), int) and not isinstance(
            values.get("modality_dropout"), bool
        ):
            values["modality_dropout"] = float(values["modality_dropout"])
        return cls(**values)

    def replace(self, **changes: Any) -> EncoderConfig:
        """A copy with some fields changed (validated like :meth:`from_dict`)."""
        return self.from_dict({**self.to_dict(), **changes})


def unknown_key_hint(key: object, known: Sequence[str]) -> str:
    """``'key'``, with ``(did you mean 'x'?)`` when a known name is close to it."""
    close = difflib.get_close_matches(str(key), list(known), n=1)
    return f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
