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

How SB3's preprocessing is handled. Before the extractor, SB3's
``preprocess_obs`` turns every key into floats, one-hot encodes Discrete and
MultiDiscrete keys, and, when the policy's ``normalize_images`` is True (the
default), divides uint8 ``Box(0, 255)`` 3-D keys by 255. SB3 also transposes
such keys to channel-first (``VecTransposeImage``), so the extractor sees the
transposed space. The extractor builds its encoder with ``sb3_preprocessed=True``:
channel order is read from the space it is given, one-hot text is turned back
into ids, symbolic grids divided by 255 are turned back into integers, and
images are scaled exactly once. It cannot see the policy's ``normalize_images``,
so pass the same value in ``features_extractor_kwargs`` when you change it
(``policy_kwargs=dict(normalize_images=False, features_extractor_kwargs=
dict(normalize_images=False))``); a mismatch is caught on the first batch.

The weights are those of a raw-input :class:`~mbm_agent.encoding.multimodal.MultimodalEncoder`
(``extractor.encoder.state_dict()`` loads into one built from the env's
untransposed space), so the trained encoder can be exported without SB3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor

from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.encoding.multimodal import MultimodalEncoder, sb3_is_image


class MultimodalExtractor(BaseFeaturesExtractor):
    """SB3 features extractor wrapping a :class:`MultimodalEncoder`.

    Args:
        observation_space: The policy's (possibly image-transposed) Dict space.
        config: An :class:`EncoderConfig` or a dict of its fields; defaults to
            ``EncoderConfig()``.
        modalities: Per-key modality declarations (see :class:`MultimodalEncoder`).
        normalize_images: Must equal the policy's ``normalize_images`` (SB3's
            default is True): whether SB3 divides uint8 images by 255 first.
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
        encoder = MultimodalEncoder(
            observation_space,
            cfg,
            modalities,
            sb3_preprocessed=True,
            sb3_normalize_images=normalize_images,
        )
        super().__init__(observation_space, encoder.features_dim)
        self.encoder = encoder
        self.normalize_images = normalize_images
        self._scaled_keys = [
            k
            for k in encoder.keys
            if encoder.modalities[k] in ("image", "symbolic_grid")
            and sb3_is_image(observation_space[k])
        ]
        self._scaling_checked = not encoder.check_inputs
        #: Keys treated as missing at every forward call (e.g. ``mbm-agent eval --drop-modality``).
        self.drop_keys: frozenset[str] = frozenset()

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        """Encode SB3-preprocessed observations into ``(B, features_dim)`` features."""
        if not self._scaling_checked:
            self._check_scaling(observations)
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
