"""Stable-Baselines3 adapter: our encoder, policy and buffer in SB3's terms.

SB3's quirks (its observation preprocessing, its frame transpose, its policy and
buffer classes) are handled here and nowhere else:

- :mod:`~mbm_agent.sb3.extractor`: :class:`MultimodalExtractor`, the
  :class:`~mbm_agent.encoding.multimodal.MultimodalEncoder` as an SB3 features extractor.
- :mod:`~mbm_agent.sb3.policy`: :class:`MultimodalActorCriticPolicy` and
  :func:`policy_kwargs_for`.
- :mod:`~mbm_agent.sb3.buffer`: :class:`MultimodalRolloutBuffer`.
- :mod:`~mbm_agent.sb3.algorithms`: the registry :data:`ALGORITHMS` (algorithm
  class, policy class, family per name), :func:`policy_class`, :func:`algorithm_kwargs`
  and :func:`is_recurrent` (whether a saved policy carries a state between steps).
- :mod:`~mbm_agent.sb3.vec_env`: :class:`KeepChannelsLast`.

For speed, ``mbm-agent train`` also gives SB3 :class:`KeepChannelsLast` (no frame
transpose), :class:`MultimodalActorCriticPolicy` (:func:`policy_class`) and
:class:`MultimodalRolloutBuffer` (:func:`algorithm_kwargs`); each computes what
SB3's own class computes.
"""

from __future__ import annotations

from mbm_agent.sb3.algorithms import (
    ALGORITHMS,
    Algorithm,
    algorithm_class,
    algorithm_kwargs,
    is_recurrent,
    memory_size,
    policy_class,
)
from mbm_agent.sb3.buffer import MultimodalRolloutBuffer
from mbm_agent.sb3.extractor import MultimodalExtractor
from mbm_agent.sb3.policy import (
    ACTIVATIONS,
    MultimodalActorCriticPolicy,
    fast_adam,
    policy_kwargs_for,
)
from mbm_agent.sb3.vec_env import KeepChannelsLast

__all__ = [
    "ACTIVATIONS",
    "ALGORITHMS",
    "Algorithm",
    "KeepChannelsLast",
    "MultimodalActorCriticPolicy",
    "MultimodalExtractor",
    "MultimodalRolloutBuffer",
    "algorithm_class",
    "algorithm_kwargs",
    "fast_adam",
    "is_recurrent",
    "memory_size",
    "policy_class",
    "policy_kwargs_for",
]
