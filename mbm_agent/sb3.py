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

For speed, ``mbm-agent train`` also gives SB3 :class:`KeepChannelsLast` (no frame
transpose), :class:`MultimodalActorCriticPolicy` (``agent.policy_class``) and
:class:`MultimodalRolloutBuffer` (:func:`algorithm_kwargs`); each computes what
SB3's own class computes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples, PyTorchObs
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecTransposeImage
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn
from stable_baselines3.common.vec_env.vec_normalize import VecNormalize
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


class KeepChannelsLast(VecTransposeImage):
    """Marks a vector env so that SB3 does not transpose its frames to channel-first.

    SB3 wraps any env with a channel-last uint8 image key in
    ``VecTransposeImage``, which copies every frame of every step. The
    :class:`MultimodalExtractor` reads channel-last frames directly (the
    layout is taken from the space), so that copy buys nothing. SB3 skips its
    own wrapper when the env is already wrapped in one; this subclass is such
    a wrapper that passes observations through unchanged. The policy then
    sees, stores and saves the env's own observation space, which is also
    the one exported models take.

    Use it only with policies whose image keys go through our extractor::

        model = PPO("MultiInputPolicy", KeepChannelsLast(venv), policy_kwargs=...)
    """

    def __init__(self, venv: VecEnv) -> None:
        VecEnvWrapper.__init__(self, venv)
        self.image_space_keys: list[str] = []

    def transpose_observations(self, observations: VecEnvObs) -> VecEnvObs:
        """Observations unchanged."""
        return observations

    def step_wait(self) -> VecEnvStepReturn:
        """The wrapped env's step results unchanged."""
        return self.venv.step_wait()

    def reset(self) -> VecEnvObs:
        """The wrapped env's first observations unchanged."""
        return self.venv.reset()


class MultimodalRolloutBuffer(DictRolloutBuffer):
    """SB3's ``DictRolloutBuffer`` with minibatches gathered by torch, copied once.

    SB3 gathers each minibatch with numpy fancy indexing (a copy) and then
    copies it again into a tensor (``th.tensor``). Here each stored array is
    viewed as a tensor and the minibatch rows are gathered with ``index_select``
    straight into the minibatch tensor: one copy, by torch's parallel kernels.
    For a PPO minibatch of 256 64x64 frames that is a 3 MB copy fewer. The
    samples are the same tensors SB3's buffer yields (same dtypes; actions as
    float32). :func:`algorithm_kwargs` makes our trainer use it.
    """

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> DictRolloutBufferSamples:
        rows = torch.from_numpy(np.asarray(batch_inds, dtype=np.int64))

        def take(array: np.ndarray) -> Tensor:
            return torch.from_numpy(array).index_select(0, rows).to(self.device)

        return DictRolloutBufferSamples(
            observations={key: take(obs) for key, obs in self.observations.items()},
            actions=take(self.actions).float(),
            old_values=take(self.values).flatten(),
            old_log_prob=take(self.log_probs).flatten(),
            advantages=take(self.advantages).flatten(),
            returns=take(self.returns).flatten(),
        )


class MultimodalActorCriticPolicy(MultiInputActorCriticPolicy):
    """SB3's ``MultiInputActorCriticPolicy`` with a leaner training path for discrete actions.

    SB3 builds a ``torch.distributions.Categorical`` for every rollout step and
    every update minibatch: logits normalised by ``logsumexp``, probabilities by
    ``softmax``, entropy and log-probabilities each a few more small ops, and as
    many again in the backward pass. With ``Discrete`` actions and a shared
    features extractor, :meth:`forward` (rollouts) and :meth:`evaluate_actions`
    (updates) here compute ``log_softmax`` once and read the log-probabilities,
    the entropy and the sampled actions off it. Actions are drawn the way
    ``Categorical.sample`` draws them (``torch.multinomial`` of the
    probabilities), so a seeded run draws the same actions. Everything else
    (parameters, state dict, ``predict``, other action spaces, separate
    extractors) is SB3's. :func:`mbm_agent.agent.policy_class` makes our trainer
    and ``load_agent`` use it.
    """

    def _lean(self) -> bool:
        return self.share_features_extractor and isinstance(
            self.action_dist, CategoricalDistribution
        )

    def _heads(self, obs: PyTorchObs) -> tuple[Tensor, Tensor]:
        """Log-probabilities of every action ``(B, n)`` and values ``(B, 1)``."""
        latent_pi, latent_vf = self.mlp_extractor(self.extract_features(obs))
        return torch.log_softmax(self.action_net(latent_pi), dim=-1), self.value_net(latent_vf)

    def forward(
        self, obs: PyTorchObs, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Actions, values and log-probabilities of the actions (as SB3's)."""
        if not self._lean():
            return super().forward(obs, deterministic)
        log_probs, values = self._heads(obs)
        if deterministic:
            actions = log_probs.argmax(dim=-1)
        else:
            actions = torch.multinomial(log_probs.exp(), 1, True).squeeze(-1)
        return actions, values, log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    def evaluate_actions(
        self, obs: PyTorchObs, actions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Values, log-probabilities of ``actions`` and entropies (as SB3's)."""
        if not self._lean():
            return super().evaluate_actions(obs, actions)
        log_probs, values = self._heads(obs)
        taken = log_probs.gather(-1, actions.long().reshape(-1, 1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
        return values, taken, entropy


def algorithm_kwargs(algo: str, observation_space: spaces.Space[Any]) -> dict[str, Any]:
    """Arguments our trainer gives an SB3 algorithm besides the user's.

    On-policy algorithms (``ppo``, ``a2c``) over a Dict space get the
    :class:`MultimodalRolloutBuffer`; others nothing.
    """
    if algo in ("ppo", "a2c") and isinstance(observation_space, spaces.Dict):
        return {"rollout_buffer_class": MultimodalRolloutBuffer}
    return {}
