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

A policy with memory (``policy_kwargs.memory``: a GRU cell over the fused
features, :class:`~mbm_agent.sb3.policy.MultimodalActorCriticPolicy`) takes its
recurrent state as one more input, :data:`STATE_INPUT` ``(B, memory)`` (zeros at
an episode's start), and returns the new state as a fourth output,
:data:`STATE_OUTPUT`; whoever steps it feeds that back on the next step of the
episode. Only ``Discrete`` action spaces are expressed, and sb3-contrib's
RecurrentPPO (an LSTM) is not.

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

STATE_INPUT = "recurrent_state"
"""The input of a policy with memory holding its state before the step ``(B, memory)`` float32."""

STATE_OUTPUT = "next_recurrent_state"
"""The output of a policy with memory holding its state after the step (fed back next step)."""


def output_names(memory: int) -> tuple[str, ...]:
    """The outputs of a policy, in order: :data:`OUTPUT_NAMES`, then the new state with memory."""
    return (*OUTPUT_NAMES, STATE_OUTPUT) if memory else OUTPUT_NAMES


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
        memory_core: The GRU cell over the features of a policy with memory (its
            actor and critic layers then read the state), or None.

    Attributes:
        keys: Observation keys, in the order exports take them as inputs.
        memory: Size of the recurrent state (0: no memory).
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
        memory_core: nn.GRUCell | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("actor_critic", "q"):
            raise ValueError(f"kind must be 'actor_critic' or 'q', got {kind!r}.")
        if kind == "actor_critic" and (critic is None or value_net is None):
            raise ValueError("An actor-critic PolicyNetwork needs critic and value_net.")
        if memory_core is not None and (kind != "actor_critic" or critic_encoder is not None):
            raise ValueError("memory_core needs an actor-critic network with one shared encoder.")
        if memory_core is not None and STATE_INPUT in encoder.keys:
            raise UnsupportedPolicyError(
                f"The observation key {STATE_INPUT!r} is the name of the recurrent state's "
                "input; rename that key at the env's edge to export this policy."
            )
        self.kind = kind
        self.encoder = encoder
        self.actor = actor
        self.action_net = action_net
        self.critic = critic if critic is not None else nn.Identity()
        self.value_net = value_net
        self.critic_encoder = critic_encoder
        self.memory_core = memory_core
        self.keys: list[str] = list(encoder.keys)
        self.n_actions = int(action_net.out_features)
        self.memory = 0 if memory_core is None else int(memory_core.hidden_size)

    @property
    def output_names(self) -> tuple[str, ...]:
        """This network's outputs, in order (with memory, the new state last)."""
        return output_names(self.memory)

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
                f"A {algo} policy carries sb3-contrib's LSTM state between steps, which exports "
                "do not express; train with --algo ppo and --set policy_kwargs.memory=N (a GRU "
                "memory) to export a policy with memory."
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
                memory_core=getattr(policy, "memory_core", None)
                if getattr(policy, "memory", 0)
                else None,
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
        if int(getattr(policy, "memory", 0)) != self.memory:
            raise UnsupportedPolicyError(
                f"The SB3 policy has memory={getattr(policy, 'memory', 0)}, this network "
                f"memory={self.memory}."
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
            if self.memory_core is not None:
                policy.memory_core.load_state_dict(self.memory_core.state_dict())

    def initial_state(self, batch_size: int) -> Tensor:
        """The recurrent state of ``batch_size`` new episodes: zeros ``(B, memory)``."""
        return torch.zeros((batch_size, self.memory))

    def remember(self, features: Tensor, state: Tensor) -> Tensor:
        """The memory core's new state ``(B, memory)`` from the features and the last state.

        ``nn.GRUCell``'s arithmetic written out (gates r, z, n), so every exporter
        traces plain matrix products rather than a fused GRU op some lack.
        """
        core = self.memory_core
        if core is None:
            raise ValueError("This network has no memory.")
        x = nn.functional.linear(features, core.weight_ih, core.bias_ih)
        h = nn.functional.linear(state, core.weight_hh, core.bias_hh)
        x_r, x_z, x_n = x.chunk(3, dim=1)
        h_r, h_z, h_n = h.chunk(3, dim=1)
        reset = torch.sigmoid(x_r + h_r)
        update = torch.sigmoid(x_z + h_z)
        new = torch.tanh(x_n + reset * h_n)
        return (1.0 - update) * new + update * state

    def heads(
        self, features: Tensor, critic_features: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(action, logits, value)`` from the latent the actor (and critic) layers read.

        Args:
            features: The encoder's features, or with memory the new state.
            critic_features: The critic encoder's features when the critic has its own.
        """
        logits = self.action_net(self.actor(features))
        if self.kind == "q":
            value = logits.max(dim=1).values
        else:
            assert self.value_net is not None
            critic_in = features if critic_features is None else critic_features
            value = self.value_net(self.critic(critic_in)).squeeze(1)
        return logits.argmax(dim=1), logits, value

    def forward(self, obs: Mapping[str, Tensor], state: Tensor | None = None) -> tuple[Tensor, ...]:
        """``(action (B,) int64, logits (B, A) float32, value (B,) float32)``.

        Args:
            obs: A batch of raw observations.
            state: With memory, ``(B, memory)`` state before this step (None: the
                zeros of new episodes); ignored without memory.

        Returns:
            The three outputs, and with memory the new state ``(B, memory)`` fourth.
        """
        features = self.encoder(obs)
        if self.memory_core is not None:
            if state is None:
                state = self.initial_state(features.shape[0]).to(features)
            new_state = self.remember(features, state)
            return (*self.heads(new_state), new_state)
        critic_features = None if self.critic_encoder is None else self.critic_encoder(obs)
        return self.heads(features, critic_features)

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
            dummy = self.encoder.encoder(key).input_spec.dummy(1).numpy()
            values: np.ndarray
            if isinstance(sub, spaces.Box):
                low = np.broadcast_to(sub.low, sub.shape).astype(np.float64)
                high = np.broadcast_to(sub.high, sub.shape).astype(np.float64)
                low = np.where(np.isfinite(low), low, -3.0)
                high = np.where(np.isfinite(high), high, 3.0)
                if np.issubdtype(sub.dtype, np.integer):
                    # numpy's stubs want integer bounds; integer-valued floats work the same.
                    values = rng.integers(low, high + 1, size=(n, *sub.shape))  # type: ignore[arg-type]
                else:
                    values = rng.uniform(low, high, size=(n, *sub.shape))
            elif isinstance(sub, spaces.Discrete):
                values = rng.integers(int(sub.start), int(sub.start) + int(sub.n), size=(n,))
            elif isinstance(sub, spaces.MultiDiscrete):
                values = rng.integers(sub.start, sub.start + sub.nvec, size=(n, *sub.nvec.shape))
            elif isinstance(sub, spaces.MultiBinary):
                values = rng.integers(0, 2, size=(n, *np.atleast_1d(sub.shape)))
            else:  # pragma: no cover - the encoder rejects other spaces
                raise UnsupportedPolicyError(f"Cannot sample {sub}.")
            out[key] = values.astype(dummy.dtype)
        return out
