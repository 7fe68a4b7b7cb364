"""mbm-agent: multimodal reinforcement-learning agents that see, read and hear.

The public API is re-exported here; see ``docs`` and ``DESIGN.md`` for the layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from envs.core.text import Vocabulary
from mbm_agent._version import __version__
from mbm_agent.encoder import (
    DEFAULT_MODALITIES,
    MODALITIES,
    EncoderConfig,
    MultimodalEncoder,
    to_tensor_obs,
)
from mbm_agent.encoders import IMAGE_ENCODERS, TEXT_ENCODERS
from mbm_agent.fusion import FUSION_MODES, Fusion, make_fusion
from mbm_agent.sb3 import MultimodalExtractor
from mbm_agent.wrappers import (
    BABYAI_WORDS,
    RenameObservationKeys,
    TokenizeMission,
    make_minigrid_env,
)

if TYPE_CHECKING:
    from mbm_agent.agent import Agent


def load_agent(path: str, which: str = "best", device: str = "cpu") -> Agent:
    """Load a trained agent from a run or policy folder (JSON + safetensors, no pickle).

    See :func:`mbm_agent.agent.load_agent`; imported lazily so ``import mbm_agent``
    stays light.
    """
    from mbm_agent.agent import load_agent as _load

    return _load(path, which, device)


__all__ = [
    "BABYAI_WORDS",
    "DEFAULT_MODALITIES",
    "FUSION_MODES",
    "IMAGE_ENCODERS",
    "MODALITIES",
    "TEXT_ENCODERS",
    "EncoderConfig",
    "Fusion",
    "MultimodalEncoder",
    "MultimodalExtractor",
    "RenameObservationKeys",
    "TokenizeMission",
    "Vocabulary",
    "__version__",
    "load_agent",
    "make_fusion",
    "make_minigrid_env",
    "to_tensor_obs",
]
