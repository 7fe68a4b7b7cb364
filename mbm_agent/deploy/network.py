"""A trained policy as one plain torch module on raw observations.

:class:`PolicyNetwork` is what exports, the Keras twin and behaviour cloning
share: the encoder built for *raw* observations (uint8 frames, integer token
ids, float audio, exactly what the env emits), the actor (and critic) layers
and the action head, with no SB3 object left inside. Its forward pass returns
``(action, logits, value)``:

- actor-critic policies (PPO, A2C): ``logits`` of the categorical action
  distribution, ``action = argmax(logits)`` (the deterministic action) and the
  critic's ``value``;
- DQN: ``logits`` are the Q-values, ``action = argmax(Q)`` and ``value = max(Q)``.

Only ``Discrete`` action spaces are expressed; recurrent policies are not (their
state would have to be an input and an output).

Example::

    agent = mbm_agent.load_agent("runs/my-run")
    net = PolicyNetwork.from_agent(agent)
    action, logits, value = net(to_tensor_obs(obs))
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.encoding.multimodal import MultimodalEncoder
from mbm_agent.sb3.algorithms import family

if TYPE_CHECKING:
    from mbm_agent.training.agent import Agent


OUTPUT_NAMES: tuple[str, ...] = ("action", "logits", "value")
"""What :class:`PolicyNetwork` returns, in order: the names of every export's outputs too."""


class UnsupportedPolicyError(ValueError):
    """The policy has a part a plain feed-forward network cannot express."""


class PolicyNetwork(nn.Module):
    """Raw observation dict -> ``(action, logits, value)``.

    Args:
        encoder: A :class:`MultimodalEncoder` (it takes raw observations).
        actor: Layers between the features and the action head (may be empty).
        action_net: Linear layer giving one logit (or Q-value) per action.
        critic: Layers between the features and the value head, or None (DQN).
        value_net: Linear layer giving the value, or None (DQN: value = max Q).
        critic_encoder: A separate encoder for the critic when the policy did
            not share its features extractor; None when shared.
        kind: ``"actor_critic"`` or ``"q"``.

    Attributes:
        keys: Observation keys, in the order exports take them as inputs.
    """

    def __init__(
        self,
        encoder: MultimodalEncoder,
        actor: nn.Module,
        action_net: nn.Linear,
        critic: nn.Module | None = None,
        value_net: nn.Linear | None = None,
        critic_encoder: MultimodalEncoder | None = None,
        kind: str = "actor_critic",
    ) -> None:
        super().__init__()
        if kind not in ("actor_critic", "q"):
            raise ValueError(f"kind must be 'actor_critic' or 'q', got {kind!r}.")
        if kind == "actor_critic" and (critic is None or value_net is None):
            raise ValueError("An actor-critic PolicyNetwork needs critic and value_net.")
        self.kind = kind
        self.encoder = encoder
        self.actor = actor
        self.action_net = action_net
        self.critic = critic if critic is not None else nn.Identity()
        self.value_net = value_net
        self.critic_encoder = critic_encoder
        self.keys: list[str] = list(encoder.keys)
        self.n_actions = int(action_net.out_features)

    @classmethod
    def from_agent(cls, agent: Agent) -> PolicyNetwork:
        """Build from a loaded :class:`~mbm_agent.training.agent.Agent` (weights copied).

        Raises:
            UnsupportedPolicyError: Recurrent policies and non-Discrete action spaces.
        """
        return cls.from_sb3_policy(agent.policy, agent.spec)

    @classmethod
    def from_sb3_policy(cls, policy: Any, spec: Mapping[str, Any]) -> PolicyNetwork:
        """Build from an SB3 policy using our extractor and its ``model.json`` spec."""
        algo = str(spec.get("algo", "ppo"))
        try:
            heads = family(algo)
        except ValueError as exc:
            raise UnsupportedPolicyError(str(exc)) from None
        if heads == "recurrent":
            raise UnsupportedPolicyError(
                f"A recurrent policy ({algo}) carries an LSTM state between steps; a plain "
                "feed-forward network cannot express it. Train with --algo ppo to export."
            )
        if spec.get("extractor", "mbm") != "mbm":
            raise UnsupportedPolicyError(
                "This policy uses SB3's default extractor (a baseline), not mbm-agent's encoder; "
                "only policies trained with --set extractor=mbm (the default) can be exported."
            )
        if not isinstance(policy.action_space, spaces.Discrete):
            raise UnsupportedPolicyError(
                f"Only Discrete action spaces are supported, this policy acts in "
                f"{policy.action_space}."
            )
        config = EncoderConfig.from_dict(spec["encoder"])
        modalities = dict(spec.get("modalities", {}))
        obs_space = policy.observation_space

        def raw_encoder(extractor: Any) -> MultimodalEncoder:
            enc = MultimodalEncoder(obs_space, config, modalities)
            enc.load_state_dict(extractor.encoder.state_dict())
            return enc

        if heads == "q":
            q_net = policy.q_net
            layers = list(q_net.q_net.children())
            head = layers[-1]
            if not isinstance(head, nn.Linear):
                raise UnsupportedPolicyError("The Q-network does not end in a linear layer.")
            net = cls(
                raw_encoder(q_net.features_extractor),
                nn.Sequential(*layers[:-1]),
                head,
                kind="q",
            )
        else:
            shared = getattr(policy, "share_features_extractor", True)
            actor_ext = policy.features_extractor if shared else policy.pi_features_extractor
            net = cls(
                raw_encoder(actor_ext),
                policy.mlp_extractor.policy_net,
                policy.action_net,
                policy.mlp_extractor.value_net,
                policy.value_net,
                None if shared else raw_encoder(policy.vf_features_extractor),
            )
        # Independent copies: exporting must not tie the agent's parameters to ours.
        net = copy.deepcopy(net)
        net.eval()
        return net

    def copy_into_sb3_policy(self, policy: Any) -> None:
        """Write these weights into an SB3 actor-critic policy of the same architecture.

        The inverse of :meth:`from_sb3_policy` (used to save a network trained
        outside SB3, e.g. by behaviour cloning, as a normal policy folder).

        Raises:
            UnsupportedPolicyError: For a Q-network (DQN) or a policy with separate
                actor and critic extractors that this network does not have.
        """
        if self.kind != "actor_critic":
            raise UnsupportedPolicyError("Only actor-critic networks copy into an SB3 policy.")
        shared = getattr(policy, "share_features_extractor", True)
        if shared != (self.critic_encoder is None):
            raise UnsupportedPolicyError(
                "The SB3 policy and this network disagree on share_features_extractor."
            )
        with torch.no_grad():
            actor_ext = policy.features_extractor if shared else policy.pi_features_extractor
            actor_ext.encoder.load_state_dict(self.encoder.state_dict())
            if not shared:
                assert self.critic_encoder is not None
                policy.vf_features_extractor.encoder.load_state_dict(
                    self.critic_encoder.state_dict()
                )
            policy.mlp_extractor.policy_net.load_state_dict(self.actor.state_dict())
            policy.mlp_extractor.value_net.load_state_dict(self.critic.state_dict())
            policy.action_net.load_state_dict(self.action_net.state_dict())
            assert self.value_net is not None
            policy.value_net.load_state_dict(self.value_net.state_dict())

    def forward(self, obs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``(action (B,) int64, logits (B, A) float32, value (B,) float32)``."""
        features = self.encoder(obs)
        logits = self.action_net(self.actor(features))
        if self.kind == "q":
            value = logits.max(dim=1).values
        else:
            critic_features = features if self.critic_encoder is None else self.critic_encoder(obs)
            assert self.value_net is not None
            value = self.value_net(self.critic(critic_features)).squeeze(1)
        return logits.argmax(dim=1), logits, value

    def dummy_observation(self, batch_size: int = 1) -> dict[str, Tensor]:
        """A zero observation batch with the raw dtypes and shapes."""
        return self.encoder.dummy_observation(batch_size)

    def random_observations(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        """``n`` random raw observations sampled from the observation space (for parity checks)."""
        space = self.encoder.observation_space
        rng = np.random.default_rng(seed)
        out: dict[str, np.ndarray] = {}
        for key in self.keys:
            sub = space[key]
            dummy = self.encoder.encoders[key].input_spec.dummy(1).numpy()
            if isinstance(sub, spaces.Box):
                low = np.broadcast_to(sub.low, sub.shape).astype(np.float64)
                high = np.broadcast_to(sub.high, sub.shape).astype(np.float64)
                low = np.where(np.isfinite(low), low, -3.0)
                high = np.where(np.isfinite(high), high, 3.0)
                if np.issubdtype(sub.dtype, np.integer):
                    values = rng.integers(low, high + 1, size=(n, *sub.shape))
                else:
                    values = rng.uniform(low, high, size=(n, *sub.shape))
            elif isinstance(sub, spaces.Discrete):
                values = rng.integers(sub.start, sub.start + sub.n, size=(n,))
            elif isinstance(sub, spaces.MultiDiscrete):
                values = rng.integers(sub.start, sub.start + sub.nvec, size=(n, *sub.nvec.shape))
            elif isinstance(sub, spaces.MultiBinary):
                values = rng.integers(0, 2, size=(n, *np.atleast_1d(sub.shape)))
            else:  # pragma: no cover - the encoder rejects other spaces
                raise UnsupportedPolicyError(f"Cannot sample {sub}.")
            out[key] = values.astype(dummy.dtype)
        return out
