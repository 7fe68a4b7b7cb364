"""The SB3 policy our trainer builds: its class, its ``policy_kwargs`` and its optimizer.

:class:`MultimodalActorCriticPolicy` is SB3's ``MultiInputActorCriticPolicy``
with a leaner training path for discrete actions (:mod:`mbm_agent.sb3.algorithms`
names it as the policy PPO and A2C train); :func:`policy_kwargs_for` turns an
:class:`~mbm_agent.encoding.config.EncoderConfig` and JSON-like settings into
SB3's ``policy_kwargs`` (activations by name, see :data:`ACTIVATIONS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution, Distribution
from stable_baselines3.common.policies import BaseModel, MultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, MlpExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import Tensor, nn

from mbm_agent.encoding.config import MAX_MEMORY, EncoderConfig, check_memory
from mbm_agent.encoding.memory import unroll_memory
from mbm_agent.sb3.extractor import MultimodalExtractor

__all__ = ["MAX_MEMORY", "MultimodalActorCriticPolicy", "check_memory"]


class MultimodalActorCriticPolicy(MultiInputActorCriticPolicy):
    """SB3's ``MultiInputActorCriticPolicy`` on raw observations, leaner for discrete actions.

    Raw observations: with our :class:`MultimodalExtractor`, observations reach the
    encoder as the env emits them and the rollout buffer stores them (uint8
    frames, integer ids), not through SB3's ``preprocess_obs``, whose float casts
    and one-hot encodings the encoder would only undo (:meth:`_features`).

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
    extractors) is SB3's. The algorithm registry
    (:data:`~mbm_agent.sb3.algorithms.ALGORITHMS`) makes our trainer and ``load_agent`` use it.

    Reward head: with ``reward_head=True`` the policy also has ``reward_net``, a
    linear layer from the features to one predicted reward per action, which
    :class:`~mbm_agent.sb3.ppo.MultimodalPPO` trains as an auxiliary loss (it
    shapes the shared encoder). Acting never uses it, and exports leave it out.

    Args:
        *args: SB3's ``MultiInputActorCriticPolicy`` arguments.
        reward_head: Add ``reward_net`` (needs a ``Discrete`` action space).
        **kwargs: SB3's ``MultiInputActorCriticPolicy`` keyword arguments.
    """

    def __init__(
        self, *args: Any, reward_head: bool = False, memory: int = 0, **kwargs: Any
    ) -> None:
        self.reward_head = bool(reward_head)
        self.memory = check_memory(memory)
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule: Schedule) -> None:
        # Before SB3's _build, which creates the optimizer over every parameter.
        if (self.reward_head or self.memory) and not isinstance(self.action_space, spaces.Discrete):
            raise ValueError(
                f"reward_head and memory need a Discrete action space, got {self.action_space}."
            )
        if self.memory and not self.share_features_extractor:
            raise ValueError("memory needs a shared features extractor (share_features_extractor).")
        if self.reward_head:
            n_actions = int(cast(spaces.Discrete, self.action_space).n)  # checked just above
            self.reward_net = nn.Linear(self.features_dim, n_actions)
        if self.memory:
            self.memory_core = nn.GRUCell(self.features_dim, self.memory)
        super()._build(lr_schedule)

    def _build_mlp_extractor(self) -> None:
        """SB3's actor and critic layers, reading the recurrent state when there is memory."""
        self.mlp_extractor = MlpExtractor(
            self.memory or self.features_dim,
            net_arch=self.net_arch,
            activation_fn=self.activation_fn,
            device=self.device,
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {
            **super()._get_constructor_parameters(),
            "reward_head": self.reward_head,
            "memory": self.memory,
        }

    # ---------------------------------------------------------------- memory
    def initial_state(self, n: int) -> Tensor:
        """The recurrent state of ``n`` new episodes: zeros ``(n, memory)``."""
        return torch.zeros((n, self.memory), device=self.device)

    def _log_probs_values(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        latent_pi, latent_vf = self.mlp_extractor(latent)
        return torch.log_softmax(self.action_net(latent_pi), dim=-1), self.value_net(latent_vf)

    def step(
        self, obs: PyTorchObs, state: Tensor, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One step of a policy with memory.

        Args:
            obs: A batch of observations.
            state: ``(B, memory)`` recurrent state before this step.
            episode_starts: ``(B,)`` 1.0 where ``obs`` starts an episode (its state is
                reset to zeros first), else 0.0.

        Returns:
            ``(B, n)`` action log-probabilities, ``(B, 1)`` values and the new state.
        """
        features = self._features(obs, self.features_extractor)
        state = state * (1.0 - episode_starts.to(state.dtype))[:, None]
        state = self.memory_core(features, state)
        log_probs, values = self._log_probs_values(state)
        return log_probs, values, state

    def evaluate_sequences(
        self, obs: PyTorchObs, actions: Tensor, states: Tensor, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Values, log-probabilities, entropies (and predicted rewards) over sequences.

        Args:
            obs: ``n * L`` observations: ``n`` sequences of ``L`` consecutive steps of
                one env each, sequence by sequence.
            actions: ``(n * L,)`` actions taken.
            states: ``(n, memory)`` state each sequence started from in the rollout.
            episode_starts: ``(n * L,)`` 1.0 where a step starts an episode (its
                state is reset to zeros first, as in :meth:`step`).

        Returns:
            ``(n * L, 1)`` values, ``(n * L,)`` log-probabilities of ``actions``,
            ``(n * L,)`` entropies and, with a reward head, ``(n * L,)`` predicted
            rewards of ``actions`` (else None).
        """
        features = self._features(obs, self.features_extractor)
        n = states.shape[0]
        length = features.shape[0] // n
        seq = features.reshape(n, length, -1)
        keep = (1.0 - episode_starts.to(seq.dtype)).reshape(n, length)
        latent = unroll_memory(self.memory_core, seq, states, keep).reshape(n * length, -1)
        log_probs, values = self._log_probs_values(latent)
        index = actions.long().reshape(-1, 1)
        taken = log_probs.gather(-1, index).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
        predicted = (
            self.reward_net(features).gather(-1, index).squeeze(-1) if self.reward_head else None
        )
        return values, taken, entropy, predicted

    def predict(
        self,
        observation: Any,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's ``predict``; with memory, ``state`` is carried between calls.

        A memory policy starts from zeros when ``state`` is None and resets the
        slots where ``episode_start`` is set (as sb3-contrib's recurrent policies).
        """
        if not self.memory:
            return super().predict(observation, state, episode_start, deterministic)
        self.set_training_mode(False)
        obs_tensor, vectorized = self.obs_to_tensor(observation)
        n = (
            int(next(iter(obs_tensor.values())).shape[0])
            if isinstance(obs_tensor, dict)
            else int(obs_tensor.shape[0])
        )
        with torch.no_grad():
            h = (
                self.initial_state(n)
                if state is None
                else torch.as_tensor(np.asarray(state[0]), dtype=torch.float32, device=self.device)
            )
            starts = torch.as_tensor(
                np.zeros(n) if episode_start is None else np.asarray(episode_start),
                dtype=torch.float32,
                device=self.device,
            ).reshape(n)
            log_probs, _, h = self.step(obs_tensor, h, starts)
            if deterministic:
                actions = log_probs.argmax(dim=-1)
            else:
                actions = torch.multinomial(log_probs.exp(), 1, True).squeeze(-1)
        out = actions.cpu().numpy()
        if not vectorized:
            out = out.squeeze(axis=0)
        return out, (h.cpu().numpy(),)

    def reward_predictions(self, obs: PyTorchObs) -> Tensor:
        """``(B, n_actions)`` predicted reward of each action (needs ``reward_head``)."""
        if not self.reward_head:
            raise ValueError("This policy has no reward head (build it with reward_head=True).")
        features = self._features(obs, self.features_extractor)
        return self.reward_net(features)

    def evaluate_actions_and_rewards(
        self, obs: PyTorchObs, actions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`evaluate_actions` plus the predicted reward of each taken action.

        One pass through the encoder serves the policy, the value and the reward heads.
        """
        if not (self.reward_head and self._lean()):
            raise ValueError(
                "evaluate_actions_and_rewards needs reward_head=True, Discrete actions and a "
                "shared features extractor."
            )
        features = self._features(obs, self.features_extractor)
        latent_pi, latent_vf = self.mlp_extractor(features)
        log_probs = torch.log_softmax(self.action_net(latent_pi), dim=-1)
        index = actions.long().reshape(-1, 1)
        taken = log_probs.gather(-1, index).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
        predicted = self.reward_net(features).gather(-1, index).squeeze(-1)
        return self.value_net(latent_vf), taken, entropy, predicted

    def _features(self, obs: PyTorchObs, extractor: BaseFeaturesExtractor) -> Tensor:
        """Features of observations as the rollout buffer stores them (the env's dtypes).

        Our extractor reads them as they are (:meth:`MultimodalExtractor.encode`): SB3's
        ``preprocess_obs`` would cast every frame to float and one-hot encode ids, only
        for the extractor to undo it. Any other extractor gets SB3's preprocessing.
        """
        if isinstance(extractor, MultimodalExtractor) and isinstance(obs, dict):
            return extractor.encode(obs)
        return BaseModel.extract_features(self, obs, extractor)

    # SB3's ActorCriticPolicy overrides BaseModel's the same way (and ignores the same error).
    def extract_features(  # type: ignore[override]
        self, obs: PyTorchObs, features_extractor: BaseFeaturesExtractor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """As SB3's, without its preprocessing for our extractor (see :meth:`_features`)."""
        if self.share_features_extractor:
            return self._features(
                obs, self.features_extractor if features_extractor is None else features_extractor
            )
        return (
            self._features(obs, self.pi_features_extractor),
            self._features(obs, self.vf_features_extractor),
        )

    def _no_memory(self, method: str) -> None:
        if self.memory:
            raise ValueError(
                f"{type(self).__name__}.{method} has no recurrent state; a policy with memory "
                "acts through step() or predict(obs, state, episode_start) and trains through "
                "evaluate_sequences()."
            )

    def get_distribution(self, obs: PyTorchObs) -> Distribution:
        """As SB3's, through :meth:`_features`."""
        self._no_memory("get_distribution")
        latent_pi = self.mlp_extractor.forward_actor(
            self._features(obs, self.pi_features_extractor)
        )
        return self._get_action_dist_from_latent(latent_pi)

    def predict_values(self, obs: PyTorchObs) -> Tensor:
        """As SB3's, through :meth:`_features`."""
        self._no_memory("predict_values")
        latent_vf = self.mlp_extractor.forward_critic(
            self._features(obs, self.vf_features_extractor)
        )
        return self.value_net(latent_vf)

    def _lean(self) -> bool:
        return (
            not self.memory
            and self.share_features_extractor
            and isinstance(self.action_dist, CategoricalDistribution)
        )

    def _heads(self, obs: PyTorchObs) -> tuple[Tensor, Tensor]:
        """Log-probabilities of every action ``(B, n)`` and values ``(B, 1)``."""
        latent_pi, latent_vf = self.mlp_extractor(self._features(obs, self.features_extractor))
        return torch.log_softmax(self.action_net(latent_pi), dim=-1), self.value_net(latent_vf)

    def forward(
        self, obs: PyTorchObs, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Actions, values and log-probabilities of the actions (as SB3's)."""
        self._no_memory("forward")
        if not self._lean():
            # SB3 annotates forward's obs as a Tensor; it takes dict observations too.
            return super().forward(obs, deterministic)  # type: ignore[arg-type]
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
        self._no_memory("evaluate_actions")
        if not self._lean():
            return super().evaluate_actions(obs, actions)
        log_probs, values = self._heads(obs)
        taken = log_probs.gather(-1, actions.long().reshape(-1, 1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
        return values, taken, entropy


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}
"""Activations of the policy's hidden layers by config name (the Keras twin's names too)."""


def policy_kwargs_for(
    encoder: EncoderConfig,
    modalities: Mapping[str, str],
    extra: Mapping[str, Any],
    extractor: str = "mbm",
) -> dict[str, Any]:
    """SB3 ``policy_kwargs``; ``extra`` is JSON-like (activation by name).

    ``extractor="mbm"`` uses our :class:`MultimodalExtractor`; ``"sb3"`` leaves
    SB3's default (``CombinedExtractor``, images scaled by SB3) for baselines.
    """
    kwargs = dict(extra)
    act = kwargs.pop("activation_fn", None)
    if act is not None:
        if act not in ACTIVATIONS:
            raise ValueError(
                f"policy_kwargs.activation_fn={act!r} is not known; use one of {list(ACTIVATIONS)}."
            )
        kwargs["activation_fn"] = ACTIVATIONS[act]
    if extractor == "sb3":
        return kwargs
    if extractor != "mbm":
        raise ValueError(f"extractor={extractor!r} is not known; use 'mbm' or 'sb3'.")
    kwargs.update(
        features_extractor_class=MultimodalExtractor,
        features_extractor_kwargs={
            "config": encoder.to_dict(),
            "modalities": dict(modalities),
            "normalize_images": False,
        },
        # Scaling happens inside the encoder, so every consumer (SB3, exports,
        # plain torch code) feeds raw uint8 frames and gets the same numbers.
        normalize_images=False,
    )
    # Same Adam, one fused kernel per tensor: the policy has many small tensors.
    # On 2 cores a step of our default policy takes 0.3 ms fused, 0.9 ms with the
    # multi-tensor (foreach) loop and 1.3 ms with the per-tensor one; a PPO
    # minibatch is ~30 ms. Kept as given when the config names either.
    optimizer = kwargs.setdefault("optimizer_kwargs", {})
    if "fused" not in optimizer and "foreach" not in optimizer:
        optimizer.update(fast_adam())
    return kwargs


def fast_adam() -> dict[str, Any]:
    """Adam keyword arguments for the fastest implementation this torch has on CPU.

    Fused CPU kernels arrived in torch 2.4; before that, the multi-tensor loop.
    """
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return {"fused": True} if (major, minor) >= (2, 4) else {"foreach": True}
