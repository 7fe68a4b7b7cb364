"""mbm-agent: multimodal reinforcement-learning agents that see, read and hear.

The public API is re-exported here; ``docs/architecture.md`` describes the layout.
"""

from __future__ import annotations

# First, before anything below imports SB3: keeps TensorBoard from importing TensorFlow.
import mbm_agent._compat  # noqa: F401  (imported for its effect)

# isort: split
from typing import TYPE_CHECKING

from envs.core.text import Vocabulary
from mbm_agent._version import __version__
from mbm_agent.encoding.config import DEFAULT_MODALITIES, MODALITIES, EncoderConfig
from mbm_agent.encoding.encoders import IMAGE_ENCODERS, TEXT_ENCODERS
from mbm_agent.encoding.fusion import FUSION_MODES, Fusion, make_fusion
from mbm_agent.encoding.multimodal import MultimodalEncoder, to_tensor_obs
from mbm_agent.sb3.extractor import MultimodalExtractor
from mbm_agent.training.adapter import ObservationAdapter
from mbm_agent.training.wrappers import (
    BABYAI_WORDS,
    AdaptObservation,
    RenameObservationKeys,
    TokenizeMission,
    make_minigrid_env,
)

if TYPE_CHECKING:
    from mbm_agent.training.agent import Agent


def load_agent(path: str, which: str = "best", device: str = "cpu") -> Agent:
    """Load a trained agent from a run or policy folder (JSON + safetensors, no pickle).

    See :func:`mbm_agent.training.agent.load_agent`; imported lazily so ``import mbm_agent``
    stays light.
    """
    from mbm_agent.training import agent

    return agent.load_agent(path, which, device)


def __getattr__(name: str) -> object:
    """Lazy access to the heavier API: exports, the plain torch policy network."""
    if name == "export_policy":
        from mbm_agent.deploy import export

        return export.export_policy
    if name == "load_exported":
        from mbm_agent.deploy import runtime

        return runtime.load_exported
    if name == "PolicyNetwork":
        from mbm_agent.deploy import network

        return network.PolicyNetwork
    raise AttributeError(f"module 'mbm_agent' has no attribute {name!r}")


__all__ = [
    "BABYAI_WORDS",
    "DEFAULT_MODALITIES",
    "FUSION_MODES",
    "IMAGE_ENCODERS",
    "MODALITIES",
    "TEXT_ENCODERS",
    "AdaptObservation",
    "EncoderConfig",
    "Fusion",
    "MultimodalEncoder",
    "MultimodalExtractor",
    "ObservationAdapter",
    "PolicyNetwork",
    "RenameObservationKeys",
    "TokenizeMission",
    "Vocabulary",
    "__version__",
    "export_policy",
    "load_agent",
    "load_exported",
    "make_fusion",
    "make_minigrid_env",
    "to_tensor_obs",
]
