"""The algorithms our trainer runs: the registry :data:`ALGORITHMS`, one entry per name.

Each entry names the SB3 (or sb3-contrib) algorithm class, the policy class it
trains with our extractor, SB3's own policy class for it (the ``extractor="sb3"``
baseline), its family of network heads and whether it takes our faster rollout
buffer. Everything that depends on the algorithm (the config's allowed names,
the trainer, ``load_agent``, ``--init-from``, exports) reads it from here, so a
new algorithm is one new entry.

Classes are named as ``"module:Class"`` and imported when first needed: an
optional one (``recurrent_ppo``, from sb3-contrib) then fails with an error that
names its pip extra, and only when it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy

from mbm_agent.sb3.buffer import MultimodalRolloutBuffer

FAMILIES: tuple[str, ...] = ("actor_critic", "recurrent", "q")
"""Families of network heads; weights move (``train --init-from``) only within one."""


@dataclass(frozen=True)
class Algorithm:
    """One algorithm our trainer can run.

    Attributes:
        algorithm: ``"module:Class"`` of the SB3 algorithm class.
        policy: ``"module:Class"`` of the policy it trains with our extractor.
        baseline_policy: ``"module:Class"`` of SB3's own policy for the algorithm
            (the ``extractor="sb3"`` baseline).
        family: One of :data:`FAMILIES`: actor-critic heads, a recurrent actor-critic
            or a Q-network.
        fast_rollout_buffer: Whether it takes :class:`MultimodalRolloutBuffer` on a Dict
            observation space (SB3's on-policy algorithms with a ``DictRolloutBuffer``).
        extra: The pip extra that installs it, if it is optional.
    """

    algorithm: str
    policy: str
    baseline_policy: str
    family: str
    fast_rollout_buffer: bool = False
    extra: str | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r} is not one of {list(FAMILIES)}.")


_SB3_AC_POLICY = "stable_baselines3.common.policies:MultiInputActorCriticPolicy"
_RECURRENT_POLICY = "sb3_contrib.common.recurrent.policies:RecurrentMultiInputActorCriticPolicy"

ALGORITHMS: dict[str, Algorithm] = {
    # SB3's PPO plus our reward prediction and memory (both off by default: then it is
    # SB3's PPO exactly); our games' configs turn them on (mbm_agent/sb3/ppo.py).
    "ppo": Algorithm(
        "mbm_agent.sb3.ppo:MultimodalPPO",
        "mbm_agent.sb3.policy:MultimodalActorCriticPolicy",
        _SB3_AC_POLICY,
        "actor_critic",
        fast_rollout_buffer=True,
    ),
    "a2c": Algorithm(
        "stable_baselines3:A2C",
        "mbm_agent.sb3.policy:MultimodalActorCriticPolicy",
        _SB3_AC_POLICY,
        "actor_critic",
        fast_rollout_buffer=True,
    ),
    "dqn": Algorithm(
        "stable_baselines3:DQN",
        "stable_baselines3.dqn.policies:MultiInputPolicy",
        "stable_baselines3.dqn.policies:MultiInputPolicy",
        "q",
    ),
    "recurrent_ppo": Algorithm(
        "sb3_contrib:RecurrentPPO",
        _RECURRENT_POLICY,
        _RECURRENT_POLICY,
        "recurrent",
        extra="contrib",
    ),
}
"""Registry of the algorithms ``mbm-agent train --algo`` accepts, by name."""


def get_algorithm(name: str) -> Algorithm:
    """The registry entry of an algorithm.

    Raises:
        ValueError: An unknown name (the message lists the known ones).
    """
    try:
        return ALGORITHMS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}.") from None


def _load(path: str, name: str, extra: str | None) -> Any:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        if extra is None:
            raise
        raise ImportError(
            f"{name} needs {module.split('.')[0]} ({exc}): pip install 'mbm-agent[{extra}]'."
        ) from exc


def algorithm_class(name: str) -> type[BaseAlgorithm]:
    """The algorithm class of ``name``.

    Raises:
        ValueError: An unknown algorithm.
        ImportError: An optional algorithm whose package is missing (the message names the extra).
    """
    entry = get_algorithm(name)
    cls: type[BaseAlgorithm] = _load(entry.algorithm, name, entry.extra)
    return cls


def policy_class(name: str, extractor: str = "mbm") -> type[BasePolicy]:
    """The SB3 policy class an algorithm trains and loads.

    Args:
        name: An algorithm of :data:`ALGORITHMS`.
        extractor: ``"mbm"`` (our extractor: PPO and A2C then get
            :class:`~mbm_agent.sb3.policy.MultimodalActorCriticPolicy`) or ``"sb3"``
            (the SB3-default baseline: SB3's own class).

    Raises:
        ValueError: An unknown algorithm or extractor.
        ImportError: An optional algorithm whose package is missing (the message names the extra).
    """
    entry = get_algorithm(name)
    if extractor not in ("mbm", "sb3"):
        raise ValueError(f"extractor={extractor!r} is not known; use 'mbm' or 'sb3'.")
    path = entry.policy if extractor == "mbm" else entry.baseline_policy
    cls: type[BasePolicy] = _load(path, name, entry.extra)
    return cls


def family(name: str) -> str:
    """The family of network heads (one of :data:`FAMILIES`) of an algorithm.

    Raises:
        ValueError: An unknown algorithm.
    """
    return get_algorithm(name).family


def memory_size(spec: Mapping[str, Any]) -> int:
    """Size of the recurrent state our policy's ``memory`` core carries (0: none).

    Args:
        spec: A policy's description (``model.json``); its ``policy_kwargs.memory``.
    """
    kwargs = spec.get("policy_kwargs")
    memory = kwargs.get("memory", 0) if isinstance(kwargs, Mapping) else 0
    if isinstance(memory, bool) or not isinstance(memory, int):
        return 0
    return max(memory, 0)


def is_recurrent(spec: Mapping[str, Any]) -> bool:
    """Whether a saved policy carries a state from one step of an episode to the next.

    The one test of it everything that loads, evaluates, exports or shows a policy
    reads: an algorithm of the ``recurrent`` family (sb3-contrib's RecurrentPPO, an
    LSTM), or our policy with a memory core (``policy_kwargs.memory > 0``, a GRU over
    the fused features: :class:`~mbm_agent.sb3.policy.MultimodalActorCriticPolicy`).
    Such a policy acts through ``predict(obs, state, episode_start)``, its state
    carried between the steps of an episode and reset where one starts.

    Args:
        spec: A policy's description (``model.json``: ``algo``, ``policy_kwargs``).
    """
    entry = ALGORITHMS.get(str(spec.get("algo")))
    if entry is None:
        return False
    return entry.family == "recurrent" or memory_size(spec) > 0


def algorithm_kwargs(name: str, observation_space: spaces.Space[Any]) -> dict[str, Any]:
    """Arguments our trainer gives an SB3 algorithm besides the user's.

    Algorithms with :attr:`Algorithm.fast_rollout_buffer` over a Dict space get the
    :class:`MultimodalRolloutBuffer`; others nothing.
    """
    if get_algorithm(name).fast_rollout_buffer and isinstance(observation_space, spaces.Dict):
        return {"rollout_buffer_class": MultimodalRolloutBuffer}
    return {}
