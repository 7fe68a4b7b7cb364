"""Stable-Baselines3 adapter: :class:`MultimodalExtractor`.

Use it with any SB3 (or sb3-contrib) algorithm that takes ``MultiInputPolicy``::

    model = PPO(
        "MultiInputPolicy",
        env,
        policy_kwargs=dict(
            features_extractor_class=MultimodalExtractor,
            features_extractor_kwargs=dict(fusion="film"),
        ),
    )

Our policy (:class:`~mbm_agent.sb3.policy.MultimodalActorCriticPolicy`, which
``mbm-agent train`` uses for PPO and A2C) skips SB3's preprocessing and hands
the extractor the observations as the env emits them and the rollout buffer
stores them (:meth:`MultimodalExtractor.encode`): uint8 frames stay uint8,
token ids stay integers. The encoder takes nothing else.

SB3's own policies (``"MultiInputPolicy"`` above, DQN, sb3-contrib's) first run
``preprocess_obs``: every key becomes float, Discrete and MultiDiscrete keys
become one-hot, and with the policy's ``normalize_images`` (True by default)
uint8 ``Box(0, 255)`` 3-D keys are divided by 255. :meth:`MultimodalExtractor.forward`
(what they call) undoes that here, in the adapter (:func:`raw_observations`):
values go back to their space's dtype, one-hot keys back to ids, divided
frames back to 0-255. The extractor cannot see the policy's ``normalize_images``,
so pass the same value in ``features_extractor_kwargs`` when you change it
(``policy_kwargs=dict(normalize_images=False, features_extractor_kwargs=
dict(normalize_images=False))``); a mismatch is caught on the first batch. SB3
also transposes channel-last frames (``VecTransposeImage``) and gives the policy
the transposed space; the encoder reads the layout from the space it is given.

Either way the encoder's weights are those of a raw-input
:class:`~mbm_agent.encoding.multimodal.MultimodalEncoder` (``extractor.encoder.state_dict()``
loads into one built from the env's untransposed space), so the trained encoder
can be exported without SB3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor

from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.encoding.multimodal import MultimodalEncoder


def _torch_dtype(space: spaces.Space[Any]) -> torch.dtype:
    dtype = space.dtype
    assert dtype is not None
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


def raw_observation(x: Tensor, space: spaces.Space[Any], normalize_images: bool) -> Tensor:
    """Undo SB3's ``preprocess_obs`` on one key: its space's dtype, ids instead of one-hot.

    Args:
        x: What ``preprocess_obs`` made of a batch of the key's observations.
        space: The key's space (as the policy sees it).
        normalize_images: The policy's ``normalize_images`` (whether uint8 frames
            were divided by 255).

    Returns:
        The batch as the env emitted it (up to float rounding, which integers survive).
    """
    if isinstance(space, spaces.Discrete):
        return x.argmax(dim=-1)
    if isinstance(space, spaces.MultiDiscrete):
        sizes = [int(n) for n in np.asarray(space.nvec).reshape(-1)]
        parts = x.reshape(x.shape[0], -1).split(sizes, dim=1)
        return torch.stack([part.argmax(dim=1) for part in parts], dim=1)
    if isinstance(space, spaces.Box):
        if normalize_images and is_image_space(space):
            x = x * 255.0
        dtype = _torch_dtype(space)
        if not dtype.is_floating_point:
            return torch.round(x).to(dtype)
    return x


def raw_observations(
    observations: Mapping[str, Tensor], space: spaces.Dict, normalize_images: bool
) -> dict[str, Tensor]:
    """:func:`raw_observation` for every key of an SB3-preprocessed observation dict."""
    return {
        k: raw_observation(v, space[k], normalize_images) if k in space.spaces else v
        for k, v in observations.items()
    }


class MultimodalExtractor(BaseFeaturesExtractor):
    """SB3 features extractor wrapping a :class:`MultimodalEncoder`.

    Args:
        observation_space: The policy's (possibly image-transposed) Dict space.
        config: An :class:`EncoderConfig` or a dict of its fields; defaults to
            ``EncoderConfig()``.
        modalities: Per-key modality declarations (see :class:`MultimodalEncoder`).
        normalize_images: Must equal the policy's ``normalize_images`` (SB3's
            default is True): whether SB3's preprocessing divides uint8 images by
            255 (it matters only to policies that preprocess, see :meth:`forward`).
        **overrides: ``EncoderConfig`` fields that override ``config``, e.g.
            ``fusion="film", features_dim=128``.

    Attributes:
        encoder: The wrapped encoder.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        config: EncoderConfig | Mapping[str, Any] | None = None,
        modalities: Mapping[str, str] | None = None,
        normalize_images: bool = True,
        **overrides: Any,
    ) -> None:
        if config is None:
            cfg = EncoderConfig()
        elif isinstance(config, EncoderConfig):
            cfg = config
        else:
            cfg = EncoderConfig.from_dict(config)
        if overrides:
            cfg = cfg.replace(**overrides)
        encoder = MultimodalEncoder(observation_space, cfg, modalities)
        super().__init__(observation_space, encoder.features_dim)
        self.encoder = encoder
        self.normalize_images = normalize_images
        # The keys SB3's preprocess_obs divides by 255 when normalize_images is set.
        self._scaled_keys = [k for k in encoder.keys if is_image_space(observation_space[k])]
        self._scaling_checked = not encoder.check_inputs
        #: Keys treated as missing at every forward call (e.g. ``mbm-agent eval --drop-modality``).
        self.drop_keys: frozenset[str] = frozenset()

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        """Encode SB3-preprocessed observations (what SB3's policies pass) into ``(B, features_dim)``.

        The preprocessing is undone first (:func:`raw_observations`).
        """
        if not self._scaling_checked:
            self._check_scaling(observations)
        return self.encode(
            raw_observations(
                observations, cast(spaces.Dict, self._observation_space), self.normalize_images
            )
        )

    def encode(self, observations: Mapping[str, Tensor]) -> Tensor:
        """Encode raw observations (as the env emits them) into ``(B, features_dim)`` features.

        What :class:`~mbm_agent.sb3.policy.MultimodalActorCriticPolicy` calls, with the
        observations as the rollout buffer stores them.
        """
        if self.drop_keys:
            return self.encoder(observations, {k: False for k in self.drop_keys})
        return self.encoder(observations)

    def _check_scaling(self, observations: Mapping[str, Tensor]) -> None:
        """Catch a ``normalize_images`` mismatch with the policy on the first batch.

        Unscaled uint8 values are integers above 1 somewhere; values SB3 divided by
        255 never exceed 1 and are fractional somewhere unless the batch is binary.
        """
        for key in self._scaled_keys:
            x = observations.get(key)
            if x is None or x.numel() == 0:
                continue
            with torch.no_grad():
                above_one = bool((x > 1.0).any())
                fractional = bool((x != torch.round(x)).any())
            if self.normalize_images and above_one:
                raise ValueError(
                    f"observations[{key!r}] reach {float(x.max()):.0f}, so the policy did not "
                    "divide images by 255 (normalize_images=False), but the extractor was built "
                    "with normalize_images=True. Pass the same value to both: policy_kwargs="
                    "dict(normalize_images=False, features_extractor_kwargs=dict("
                    "normalize_images=False, ...))."
                )
            if not self.normalize_images and fractional:
                raise ValueError(
                    f"observations[{key!r}] are fractional, so the policy divided images by 255 "
                    "(normalize_images=True, SB3's default), but the extractor was built with "
                    "normalize_images=False. Pass the same value to both."
                )
        self._scaling_checked = True
