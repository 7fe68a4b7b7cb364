r"""Our policy for RL Baselines3 Zoo, whose hyperparameter files hold data only.

RL Zoo imports a ``policy`` given as a dotted name (``rl_zoo3.utils.get_class_by_name``)
and passes a ``policy_kwargs`` mapping to it as it is; it ``eval``\\ s
``policy_kwargs`` only when it is a string. :class:`ZooPolicy` takes everything as
plain values, so a YAML file names our encoder without any Python in it::

    mbm/FindSound-v0:
      policy: mbm_agent.sb3.zoo.ZooPolicy
      policy_kwargs:
        encoder: {fusion: concat}       # EncoderConfig fields
        modalities: {}                  # per-key declarations, as in our configs
        net_arch: [64]
        activation_fn: tanh             # a name of mbm_agent.sb3.policy.ACTIVATIONS

``mbm_agent/configs/zoo/ppo.yml`` has an entry per game:
``python -m rl_zoo3.train --algo ppo --env mbm/FindSound-v0 --gym-packages envs
-conf mbm_agent/configs/zoo/ppo.yml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import Tensor, nn

from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.sb3.extractor import MultimodalExtractor
from mbm_agent.sb3.policy import MultimodalActorCriticPolicy, policy_kwargs_for

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float32": torch.float32,
    "float64": torch.float64,
    "bool": torch.bool,
}


def stored_dtype(space: spaces.Space[Any]) -> torch.dtype | None:
    """The dtype a key's values have as the env emits them (None: leave as it is)."""
    if isinstance(space, spaces.Discrete | spaces.MultiDiscrete | spaces.MultiBinary):
        return torch.int64
    if isinstance(space, spaces.Box):
        return _TORCH_DTYPES.get(cast(np.dtype, space.dtype).name)  # a Box's is never None
    return None


class ZooPolicy(MultimodalActorCriticPolicy):
    """:class:`MultimodalActorCriticPolicy` with our extractor, configured by plain values.

    RL Zoo trains with SB3's own ``DictRolloutBuffer``, which stores every key as
    float32; the observations are cast back to the dtypes the env emits (exact:
    frames and ids are small integers) before our extractor reads them.

    Args:
        observation_space: The env's observation space (RL Zoo may have moved
            frames' channels first; the encoder reads either layout).
        action_space: The env's action space.
        lr_schedule: SB3's learning-rate schedule.
        encoder: :class:`EncoderConfig` fields (or the object).
        modalities: Per-key modality declarations (``{"grid": "symbolic_grid"}``).
        activation_fn: Activation of the policy heads, by name (``tanh``, ``relu``,
            ...) or as a ``torch.nn`` class.
        **kwargs: The rest of SB3's ``MultiInputActorCriticPolicy`` arguments
            (``net_arch``, ``ortho_init``, ...) and ours (``reward_head``, ``memory``).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Space[Any],
        lr_schedule: Any,
        *,
        encoder: EncoderConfig | Mapping[str, Any] | None = None,
        modalities: Mapping[str, str] | None = None,
        activation_fn: str | type[nn.Module] = "tanh",
        **kwargs: Any,
    ) -> None:
        config = (
            encoder
            if isinstance(encoder, EncoderConfig)
            else EncoderConfig.from_dict(encoder or {})
        )
        extra: dict[str, Any] = (
            {"activation_fn": activation_fn} if isinstance(activation_fn, str) else {}
        )
        built = policy_kwargs_for(config, dict(modalities or {}), extra)
        if not isinstance(activation_fn, str):
            built["activation_fn"] = activation_fn
        for name, value in built.items():
            kwargs.setdefault(name, value)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _features(self, obs: PyTorchObs, extractor: BaseFeaturesExtractor) -> Tensor:
        """Features of observations in the env's dtypes (SB3's buffer stores float32)."""
        if isinstance(extractor, MultimodalExtractor) and isinstance(obs, dict):
            space = self.observation_space
            assert isinstance(space, spaces.Dict)
            cast = {}
            for key, value in obs.items():
                dtype = stored_dtype(space[key]) if key in space.spaces else None
                cast[key] = value if dtype is None or value.dtype == dtype else value.to(dtype)
            return extractor.encode(cast)
        return super()._features(obs, extractor)


__all__ = ["ZooPolicy", "stored_dtype"]
