"""Encoding: raw observations in, one feature vector out, in plain torch.

- :mod:`~mbm_agent.encoding.spec`: :class:`InputSpec`, what one key's input must look
  like, and :func:`check_observation`, the input check every runtime runs.
- :mod:`~mbm_agent.encoding.encoders`: one encoder per modality (image, symbolic grid,
  text, audio, vector).
- :mod:`~mbm_agent.encoding.fusion`: the fusion modes and their registry, :data:`FUSION_MODES`.
- :mod:`~mbm_agent.encoding.config`: :class:`EncoderConfig` and the modality names.
- :mod:`~mbm_agent.encoding.multimodal`: :class:`MultimodalEncoder`, the per-key encoders
  and a fusion mode as one ``torch.nn.Module``.
- :mod:`~mbm_agent.encoding.memory`: :func:`unroll_memory`, a policy's GRU memory over
  training sequences that hold episode starts.

Nothing here knows about an RL framework; :mod:`mbm_agent.sb3` adapts it to
Stable-Baselines3.
"""

from __future__ import annotations

from mbm_agent.encoding.config import (
    DEFAULT_MODALITIES,
    MISSING_EMBEDDINGS,
    MODALITIES,
    EncoderConfig,
    unknown_key_hint,
)
from mbm_agent.encoding.encoders import IMAGE_ENCODERS, TEXT_ENCODERS, FilmParams
from mbm_agent.encoding.fusion import FUSION_MODES, Fusion, FusionMode, make_fusion
from mbm_agent.encoding.memory import unroll_memory
from mbm_agent.encoding.multimodal import KeyPlan, MultimodalEncoder, to_tensor_obs
from mbm_agent.encoding.spec import CheckedObservation, InputSpec, check_observation

__all__ = [
    "DEFAULT_MODALITIES",
    "FUSION_MODES",
    "IMAGE_ENCODERS",
    "MISSING_EMBEDDINGS",
    "MODALITIES",
    "TEXT_ENCODERS",
    "CheckedObservation",
    "EncoderConfig",
    "FilmParams",
    "Fusion",
    "FusionMode",
    "InputSpec",
    "KeyPlan",
    "MultimodalEncoder",
    "check_observation",
    "make_fusion",
    "to_tensor_obs",
    "unknown_key_hint",
    "unroll_memory",
]
