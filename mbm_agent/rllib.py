"""Ray RLlib integration: our :class:`~mbm_agent.encoding.multimodal.MultimodalEncoder` as an RLModule.

RLlib's new API stack (Ray >= 2.40) builds policies from ``RLModule`` classes.
:class:`MultimodalPPOModule` is one whose trunk is our encoder, built from the
env's ``Dict`` observation space, with a policy-logits head and a value head, so
RLlib's PPO trains it on our games (or any Dict-observation env) with its own
env runners, connectors and learners.

RLlib's default connectors hand Dict observations over untouched: each key is
batched and turned into a torch tensor of the same dtype (uint8 frames stay
uint8, token ids int64; only float64 becomes float32). That is exactly what the
raw-input encoder takes, so no preprocessing sits in between and the encoder
checks every batch. Do not add RLlib's ``FlattenObservations`` connector: the
module needs the Dict.

Example::

    import ray
    from ray.rllib.core.columns import Columns

    import envs
    from mbm_agent.encoding.multimodal import to_tensor_obs
    from mbm_agent.rllib import ppo_config

    ray.init(num_cpus=2, include_dashboard=False)
    algo = ppo_config("mbm/ModalityProbe-v0", num_env_runners=2, seed=0).build_algo()
    for _ in range(16):
        algo.train()
    module = algo.get_module()  # the trained MultimodalPPOModule (inference-only copy)
    obs, _ = envs.make_vec("mbm/ModalityProbe-v0", 64).reset(seed=1_000_003)
    out = module.forward_inference({Columns.OBS: to_tensor_obs(obs)})
    greedy = out[Columns.ACTION_DIST_INPUTS].argmax(-1)
    algo.stop()
    ray.shutdown()

Importing this module needs Ray: ``pip install 'mbm-agent[ray]'``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from numpy.typing import NDArray
from torch import Tensor, nn

try:
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, ValueFunctionAPI
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.core.rl_module.torch import TorchRLModule
    from ray.tune.registry import register_env
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mbm_agent.rllib needs Ray RLlib, which is not installed (or failed to import: "
        f"{exc}). Install it with: pip install 'mbm-agent[ray]'."
    ) from exc

import envs
from envs.core.env import GameEnv
from mbm_agent.deploy.network import PolicyNetwork, UnsupportedPolicyError
from mbm_agent.encoding.config import EncoderConfig, check_memory, unknown_key_hint
from mbm_agent.encoding.memory import unroll_memory
from mbm_agent.encoding.multimodal import MultimodalEncoder
from mbm_agent.evaluation import check_agent_fits
from mbm_agent.sb3.policy import ACTIVATIONS
from mbm_agent.training.agent import Agent, load_agent, policy_source
from mbm_agent.training.config import linear_start, resolve_config
from mbm_agent.training.envs import is_our_game, mission_vocabulary
from mbm_agent.training.wrappers import make_minigrid_env

__all__ = [
    "MODULE_KEYS",
    "EnvCreator",
    "ModuleSettings",
    "MultimodalPPOModule",
    "check_memory_config",
    "model_config_from_agent",
    "ppo_config",
    "register_rllib_env",
    "register_rllib_envs",
]

_ENCODER_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EncoderConfig))
MODULE_KEYS: tuple[str, ...] = (
    *_ENCODER_FIELDS,
    "modalities",
    "hidden_sizes",
    "vf_share_layers",
    "memory",
    "activation",
    "init_from",
)
"""Keys :class:`MultimodalPPOModule` reads from ``model_config``: every
:class:`~mbm_agent.encoding.config.EncoderConfig` field, ``modalities`` (per-key
declarations), ``hidden_sizes`` (the policy and value heads' hidden layers),
``vf_share_layers`` (one encoder for policy and value, or two), ``activation`` (of the
heads' hidden layers, a name of SB3 policies' ``ACTIVATIONS``; default ``tanh``) and
``memory`` (the size
of a GRU state carried over the fused features, as SB3's ``MultimodalPPO``; 0: none).
With memory, RLlib's own ``max_seq_len`` (default 20) is the length of the sequences
the learner unrolls the GRU over. ``init_from`` (a policy folder of ``mbm-agent train``)
loads that agent's weights into every copy of the module; :func:`model_config_from_agent`
gives the whole ``model_config`` that fits it."""

#: Sequence length the learner unrolls a memory module over when nothing says (RLlib's).
DEFAULT_MAX_SEQ_LEN = 20
#: Activation of the heads' hidden layers when nothing says (SB3's PPO default).
DEFAULT_ACTIVATION = "tanh"

# RLlib merges its own model-config keys into every module's ``model_config``
# (PPO adds ``vf_share_layers``; ``config.rl_module(model_config=DefaultModelConfig())``
# adds them all). Those are RLlib's to set, not typos, so the module ignores them.
_RLLIB_KEYS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(DefaultModelConfig))

# SB3 hyperparameter names of our per-env YAML defaults -> RLlib PPO's.
_SB3_TO_RLLIB: dict[str, str] = {
    "learning_rate": "lr",
    "gamma": "gamma",
    "gae_lambda": "lambda_",
    "ent_coef": "entropy_coeff",
    "clip_range": "clip_param",
    "n_epochs": "num_epochs",
    "batch_size": "minibatch_size",
    "vf_coef": "vf_loss_coeff",
    "max_grad_norm": "grad_clip",
}


# ---------------------------------------------------------------------- module
def check_memory_config(config: Mapping[str, Any]) -> int:
    """The ``memory`` a module's ``model_config`` asks for, or a ValueError naming the fix.

    ``memory`` is the size of a GRU state over the fused features, the core our SB3
    PPO carries (``hyperparams.ppo.memory`` in the per-env YAML). RLlib's own
    ``use_lstm`` / ``use_attention`` wrap RLlib's default models, not this module: they
    are refused with ``memory`` named, rather than silently ignored.

    Raises:
        ValueError: ``memory`` not an integer in [0, MAX_MEMORY]; ``use_lstm`` or
            ``use_attention`` set; memory without a shared encoder (the value head
            reads the policy's GRU state, as in SB3).
    """
    memory = check_memory(config.get("memory", 0))
    asked = [k for k in ("use_lstm", "use_attention") if config.get(k)]
    if asked:
        raise ValueError(
            f"model_config {asked}: RLlib's recurrent wrappers do not apply to "
            "MultimodalPPOModule; its own recurrent core is model_config['memory'] (the GRU "
            "state size, e.g. 128), or ppo_config(..., memory=128)."
        )
    if memory and config.get("vf_share_layers", True) is False:
        raise ValueError(
            f"model_config memory={memory} needs vf_share_layers=True: the value head reads "
            "the policy's GRU state (as SB3's MultimodalPPO). Set model_config['vf_share_layers'] "
            "= True (RLlib's PPOConfig adds False to every module's model_config unless "
            "told otherwise; ppo_config sets True), or set memory=0."
        )
    return memory


@dataclass(frozen=True)
class ModuleSettings:
    """What :class:`MultimodalPPOModule` builds, parsed from its ``model_config``.

    Attributes:
        encoder: The encoder's architecture.
        modalities: Per-key modality declarations (see :class:`MultimodalEncoder`).
        hidden_sizes: Hidden layer widths of the policy and of the value head (tanh).
        vf_share_layers: One encoder feeds both heads (True) or the value head
            has its own encoder (False).
        memory: Size of the GRU state over the fused features (0: no memory).
        max_seq_len: With memory, the length of the sequences the learner unrolls over.
        activation: Activation of the heads' hidden layers (a name of ``ACTIVATIONS``).
        init_from: A policy folder of ``mbm-agent train`` whose weights the module starts
            from, or None (a fresh initialisation). Every copy of the module (each Ray
            worker) reads it, so it should be absolute.
    """

    encoder: EncoderConfig
    modalities: dict[str, str]
    hidden_sizes: tuple[int, ...]
    vf_share_layers: bool
    memory: int = 0
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    activation: str = DEFAULT_ACTIVATION
    init_from: str | None = None

    @classmethod
    def from_model_config(
        cls, model_config: Mapping[str, Any] | DefaultModelConfig | None
    ) -> ModuleSettings:
        """Parse and check a module's ``model_config``.

        Args:
            model_config: Keys from :data:`MODULE_KEYS`; RLlib's own
                ``DefaultModelConfig`` keys (or such an object) are ignored except
                ``vf_share_layers``.

        Returns:
            The settings (encoder defaults for absent fields, one 64-wide hidden
            layer per head, a shared encoder).

        Raises:
            ValueError: On an unknown key (with the closest known one) or a bad value.
        """
        if isinstance(model_config, DefaultModelConfig):
            config = dataclasses.asdict(model_config)
        else:
            config = dict(model_config or {})
        unknown = [k for k in config if k not in MODULE_KEYS and k not in _RLLIB_KEYS]
        if unknown:
            hints = ", ".join(unknown_key_hint(k, MODULE_KEYS) for k in unknown)
            raise ValueError(
                f"Unknown MultimodalPPOModule model_config key(s): {hints}. "
                f"Known keys: {list(MODULE_KEYS)}."
            )
        encoder = EncoderConfig.from_dict({k: config[k] for k in _ENCODER_FIELDS if k in config})
        modalities = config.get("modalities") or {}
        if not isinstance(modalities, Mapping):
            raise ValueError(
                f"model_config['modalities'] must map observation keys to modality names, "
                f"e.g. {{'image': 'symbolic_grid'}}; got {modalities!r}."
            )
        hidden = config.get("hidden_sizes", (64,))
        if isinstance(hidden, int) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden
        ):
            raise ValueError(
                f"model_config['hidden_sizes'] must be a list of positive ints (e.g. [64], "
                f"or [] for linear heads); got {hidden!r}."
            )
        share = config.get("vf_share_layers", True)
        if not isinstance(share, bool):
            raise ValueError(f"model_config['vf_share_layers'] must be a bool, got {share!r}.")
        memory = check_memory_config(config)
        seq = config.get("max_seq_len", DEFAULT_MAX_SEQ_LEN)
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise ValueError(f"model_config['max_seq_len'] must be a positive int, got {seq!r}.")
        activation = config.get("activation", DEFAULT_ACTIVATION)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"model_config['activation'] must be one of {list(ACTIVATIONS)}, got {activation!r}."
            )
        init_from = config.get("init_from")
        if isinstance(init_from, os.PathLike):
            init_from = os.fspath(init_from)
        if init_from is not None and not isinstance(init_from, str):
            raise ValueError(
                f"model_config['init_from'] must be the absolute path of a policy folder, got "
                f"{init_from!r}; model_config_from_agent(RUN) gives one."
            )
        return cls(
            encoder, dict(modalities), tuple(hidden), share, memory, seq, activation, init_from
        )

    def architecture(self) -> dict[str, Any]:
        """What decides the module's weights' shapes (all but ``max_seq_len`` and ``init_from``)."""
        return {
            "encoder": self.encoder.to_dict(),
            "modalities": self.modalities,
            "hidden_sizes": list(self.hidden_sizes),
            "vf_share_layers": self.vf_share_layers,
            "memory": self.memory,
            "activation": self.activation,
        }


def _head(
    in_dim: int, hidden_sizes: Sequence[int], out_dim: int, out_gain: float, activation: str
) -> nn.Sequential:
    """An MLP with orthogonal init, as SB3's PPO policies (small last-layer gain)."""
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        linear = nn.Linear(in_dim, width)
        nn.init.orthogonal_(linear.weight, gain=math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear, ACTIVATIONS[activation]()]
        in_dim = width
    out = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(out.weight, gain=out_gain)
    nn.init.zeros_(out.bias)
    layers.append(out)
    return nn.Sequential(*layers)


class MultimodalPPOModule(TorchRLModule, ValueFunctionAPI, InferenceOnlyAPI):
    """RLlib RLModule for PPO: our multimodal encoder, a policy head and a value head.

    RLlib constructs it from an ``RLModuleSpec`` (see :func:`ppo_config`); every
    setting comes from ``model_config`` (keys in :data:`MODULE_KEYS`), e.g.
    ``{"fusion": "film", "image_encoder": "nature", "hidden_sizes": [64]}``.
    Observations reach it as a dict of raw tensors per key (RLlib's default
    connectors keep dtypes), which the encoder checks and scales itself.

    Inference-only copies (those on RLlib's env runners) skip the value head
    and the value encoder.

    With ``memory`` > 0 the module is stateful, as SB3's ``MultimodalPPO``: a GRU cell
    carries a state over the fused features and both heads read it. RLlib then hands
    every key with a time axis, ``(B, T, ...)``, and the state each sequence starts
    from in ``batch[Columns.STATE_IN]["h"]`` ``(B, memory)``; the outputs have the
    time axis too and ``Columns.STATE_OUT`` is the state after the last step.

    Attributes:
        settings: The parsed ``model_config``.
        encoder: The trunk (shared with the value head when ``vf_share_layers``).
        policy_head: Features to action logits.
        value_encoder: The value head's own encoder, or None when shared or
            inference-only.
        value_head: Features to the state value, or None when inference-only.
        memory_core: The GRU cell over the fused features, or None without memory.

    Example::

        module = MultimodalPPOModule(
            observation_space=env.observation_space,
            action_space=env.action_space,
            model_config={"fusion": "concat", "hidden_sizes": [64]},
        )
        out = module.forward_inference({Columns.OBS: to_tensor_obs(obs_batch)})
        logits = out[Columns.ACTION_DIST_INPUTS]  # (B, n_actions)
        values = module.compute_values({Columns.OBS: to_tensor_obs(obs_batch)})  # (B,)
    """

    settings: ModuleSettings
    encoder: MultimodalEncoder
    policy_head: nn.Sequential
    value_encoder: MultimodalEncoder | None
    value_head: nn.Sequential | None
    memory_core: nn.GRUCell | None

    def setup(self) -> None:
        """Build the encoder(s) and heads from the spaces and ``model_config``."""
        obs_space, action_space = self.observation_space, self.action_space
        if not isinstance(obs_space, spaces.Dict):
            raise ValueError(
                f"MultimodalPPOModule needs a gymnasium.spaces.Dict observation space, got "
                f"{obs_space}. If the env's observations are a Dict, something flattened them "
                "before the module (e.g. RLlib's FlattenObservations connector): remove it, the "
                "encoder takes the raw Dict. Otherwise wrap the env so it emits a Dict."
            )
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError(
                f"MultimodalPPOModule supports Discrete action spaces only, got {action_space}. "
                "Discretise the actions with a wrapper, or use RLlib's default PPO module for "
                "continuous or composite action spaces."
            )
        self.settings = ModuleSettings.from_model_config(self.model_config)
        s = self.settings
        if s.memory and isinstance(self.model_config, dict):
            # RLlib's connectors read the sequence length from here.
            self.model_config.setdefault("max_seq_len", s.max_seq_len)
        self.encoder = MultimodalEncoder(obs_space, s.encoder, s.modalities)
        dim = self.encoder.features_dim
        self.memory_core = nn.GRUCell(dim, s.memory) if s.memory else None
        dim = s.memory or dim
        self.policy_head = _head(
            dim, s.hidden_sizes, int(action_space.n), out_gain=0.01, activation=s.activation
        )
        self.value_encoder = None
        self.value_head = None
        if not self.inference_only:
            if not s.vf_share_layers:
                self.value_encoder = MultimodalEncoder(obs_space, s.encoder, s.modalities)
            self.value_head = _head(dim, s.hidden_sizes, 1, out_gain=1.0, activation=s.activation)
        if s.init_from is not None:
            self.load_agent_weights(s.init_from)

    def load_agent_weights(self, path: str | Path) -> None:
        """Copy a trained agent's weights (a run or policy folder of ``mbm-agent train``) in.

        The encoder, the memory core, and the policy and value layers are copied as they
        are; the agent's reward-prediction head has no counterpart here and is left out.

        Raises:
            ValueError: The agent cannot be expressed by this module (DQN, an LSTM policy,
                SB3's own extractor, an observation adapter), or this module is built
                differently (the message names each difference and
                :func:`model_config_from_agent`, which builds it alike).
            FileNotFoundError, ModelFileError: As :func:`~mbm_agent.training.agent.load_agent`.
        """
        source = policy_source(path)
        agent = load_agent(source.model_dir)
        net = _agent_network(agent, source.model_dir)
        want = ModuleSettings.from_model_config(_agent_model_config(agent, source.model_dir, net))
        ours, theirs = self.settings.architecture(), want.architecture()
        diff = [f"{k}={ours[k]!r} (the agent: {theirs[k]!r})" for k in ours if ours[k] != theirs[k]]
        if diff:
            raise ValueError(
                f"This MultimodalPPOModule is not built like the agent in {source.model_dir}: "
                f"{'; '.join(diff)}. Build it with model_config_from_agent({str(path)!r}) (or "
                "ppo_config(..., init_from=...)), which takes every setting from the agent."
            )
        pairs: list[tuple[str, nn.Module | None, nn.Module | None]] = [
            ("encoder", self.encoder, net.encoder),
            ("memory core", self.memory_core, net.memory_core),
            ("value encoder", self.value_encoder, net.critic_encoder),
        ]
        heads = [("policy head", self.policy_head, [*_linears(net.actor), net.action_net])]
        if self.value_head is not None:
            assert net.value_net is not None  # an actor-critic network has one
            heads.append(("value head", self.value_head, [*_linears(net.critic), net.value_net]))
        for name, head, layers in heads:
            pairs += [
                (f"{name} layer {i}", a, b)
                for i, (a, b) in enumerate(zip(_linears(head), layers, strict=True))
            ]
        with torch.no_grad():
            for name, mine, src in pairs:
                if mine is None or src is None:
                    continue
                try:
                    mine.load_state_dict(src.state_dict())
                except RuntimeError as exc:
                    raise ValueError(
                        f"The {name} of the agent in {source.model_dir} does not fit this "
                        f"module's: the env's observation or action spaces differ from the "
                        f"agent's ({exc})."
                    ) from None

    def get_non_inference_attributes(self) -> list[str]:
        """Submodules that inference-only copies (on env runners) leave out."""
        return ["value_head"] if self.settings.vf_share_layers else ["value_encoder", "value_head"]

    def _observations(self, batch: Mapping[str, Any]) -> Mapping[str, Tensor]:
        obs = batch[Columns.OBS]
        if not isinstance(obs, Mapping):
            raise ValueError(
                f"batch[{Columns.OBS!r}] is a {type(obs).__name__}, expected a dict of tensors "
                "keyed like the Dict observation space. Remove connectors that flatten "
                "observations (e.g. FlattenObservations) from the pipeline."
            )
        return obs

    def get_initial_state(self) -> dict[str, NDArray[np.float32]]:
        """The state of a new episode: ``{"h": zeros(memory)}``, or ``{}`` without memory."""
        if self.memory_core is None:
            return {}
        return {"h": np.zeros(self.settings.memory, dtype=np.float32)}

    def _features(self, encoder: MultimodalEncoder, batch: Mapping[str, Any]) -> Tensor:
        """The fused features ``(B, F)``; with memory, the GRU states ``(B, T, memory)``."""
        obs = self._observations(batch)
        if self.memory_core is None:
            return encoder(obs)
        start = batch.get(Columns.STATE_IN)
        if not isinstance(start, Mapping) or "h" not in start:
            raise ValueError(
                f"This MultimodalPPOModule has memory: its batch needs the start state, "
                f"batch[{Columns.STATE_IN!r}] = {{'h': (B, {self.settings.memory}) tensor}} "
                "(zeros at an episode's start, else the last step's STATE_OUT), and every "
                "observation key with a time axis, (B, T, ...)."
            )
        state = start["h"]
        lead = next(iter(obs.values())).shape[:2]
        flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in obs.items()}
        features = encoder(flat).reshape(*lead, -1)
        return unroll_memory(self.memory_core, features, state, features.new_ones(lead))

    def _state_out(self, states: Tensor) -> dict[str, Any]:
        return {Columns.STATE_OUT: {"h": states[:, -1]}} if self.memory_core is not None else {}

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Action logits for inference and exploration (and the state after, with memory)."""
        features = self._features(self.encoder, batch)
        return {Columns.ACTION_DIST_INPUTS: self.policy_head(features), **self._state_out(features)}

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Action logits, plus the value head's features so the loss reuses them."""
        features = self._features(self.encoder, batch)
        embeddings = (
            features if self.value_encoder is None else self._features(self.value_encoder, batch)
        )
        return {
            Columns.ACTION_DIST_INPUTS: self.policy_head(features),
            Columns.EMBEDDINGS: embeddings,
            **self._state_out(features),
        }

    def compute_values(self, batch: dict[str, Any], embeddings: Tensor | None = None) -> Tensor:
        """State values ``(B,)`` (``(B, T)`` with memory), from ``embeddings`` when given."""
        if self.value_head is None:
            raise ValueError(
                "This MultimodalPPOModule is inference-only (as on RLlib's env runners) and has "
                "no value head; build it with inference_only=False to compute values."
            )
        if embeddings is None:
            encoder = self.encoder if self.value_encoder is None else self.value_encoder
            embeddings = self._features(encoder, batch)
        return self.value_head(embeddings).squeeze(-1)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _agent_network(agent: Agent, model_dir: Path) -> PolicyNetwork:
    """The agent's policy as one torch network, or a ValueError saying why this module cannot hold it."""
    where = f"The agent in {model_dir}"
    if not agent.adapter.is_identity:
        raise ValueError(
            f"{where} converts its env's raw observations first (raw text, waveforms or "
            "renamed keys: model.json's observation_adapter), which RLlib's env runners do "
            "not do; train with mbm-agent, or give RLlib an env that emits the converted Dict."
        )
    try:
        net = PolicyNetwork.from_agent(agent)
    except UnsupportedPolicyError as exc:
        raise ValueError(f"{where} cannot become a MultimodalPPOModule: {exc}") from None
    if net.kind != "actor_critic":
        raise ValueError(
            f"{where} is a {agent.spec.get('algo', 'dqn')} Q-network; MultimodalPPOModule is "
            "an actor-critic (policy and value heads). Start RLlib from a PPO or A2C agent."
        )
    return net


def _agent_model_config(
    agent: Agent, model_dir: Path, net: PolicyNetwork | None = None
) -> dict[str, Any]:
    net = net if net is not None else _agent_network(agent, model_dir)
    hidden = [layer.out_features for layer in _linears(net.actor)]
    if hidden != [layer.out_features for layer in _linears(net.critic)]:
        raise ValueError(
            f"The agent in {model_dir} has policy and value layers of different widths "
            "(net_arch {pi: ..., vf: ...}); MultimodalPPOModule's two heads share hidden_sizes."
        )
    activation_fn = getattr(agent.policy, "activation_fn", None)
    activation = next((k for k, v in ACTIVATIONS.items() if v is activation_fn), None)
    if activation is None:
        raise ValueError(
            f"The agent in {model_dir} uses the activation {activation_fn}, none of "
            f"{list(ACTIVATIONS)} that MultimodalPPOModule builds."
        )
    return {
        **EncoderConfig.from_dict(agent.spec["encoder"]).to_dict(),
        "modalities": dict(agent.spec.get("modalities") or {}),
        "hidden_sizes": hidden,
        "vf_share_layers": net.critic_encoder is None,
        "memory": net.memory,
        "activation": activation,
        "init_from": str(model_dir),
    }


def model_config_from_agent(path: str | Path, which: str = "best") -> dict[str, Any]:
    """The ``model_config`` of a :class:`MultimodalPPOModule` that starts as a trained agent.

    Every architecture setting is the agent's (encoder, modalities, head widths and
    activation, memory, one shared encoder or two) and ``init_from`` names its policy
    folder, so each copy of the module (learners and env runners) loads its weights.
    The folder must be readable from every Ray worker (on one machine it is).

    Args:
        path: A run folder (``runs/NAME``) or a policy folder.
        which: A run's ``"best"`` (falling back to ``final``) or ``"final"`` policy.

    Raises:
        ValueError: An agent this module cannot hold (DQN, sb3-contrib's LSTM, SB3's own
            extractor, an observation adapter, unequal policy and value widths).
        FileNotFoundError, ModelFileError: As :func:`~mbm_agent.training.agent.load_agent`.
    """
    source = policy_source(path, which)
    return _agent_model_config(load_agent(source.model_dir), source.model_dir)


# ---------------------------------------------------------------------- envs
@dataclass(frozen=True)
class EnvCreator:
    """RLlib env creator for one Gymnasium id (picklable, so env runners can rebuild it).

    Called with RLlib's ``env_config`` (the env's keyword arguments). When RLlib
    vectorises with ``gym_env_vectorize_mode="vector_entry_point"`` it adds
    ``num_envs``: our games then return their natively batched vector env,
    other ids a ``SyncVectorEnv``.

    Attributes:
        env_id: A Gymnasium id: one of ``envs.ENV_IDS``, a MiniGrid / BabyAI id
            (wrapped by :func:`mbm_agent.training.wrappers.make_minigrid_env`, so the
            mission becomes ``text`` token ids), or any registered id of an env
            with Dict observations (``"module:EnvId"`` imports ``module`` first).
    """

    env_id: str

    def __call__(self, env_config: Mapping[str, Any]) -> gym.Env | gym.vector.VectorEnv:
        """Make the env (or vector env, with ``num_envs`` in ``env_config``)."""
        # Env runners are separate processes: registering our games happens here,
        # not only in the driver.
        import envs

        kwargs = dict(env_config)
        num_envs = kwargs.pop("num_envs", None)
        if num_envs is None:
            return self._make_one(kwargs)
        if self.env_id in envs.GAMES:
            return envs.make_vec(self.env_id, int(num_envs), **kwargs)
        return gym.vector.SyncVectorEnv(
            [lambda: self._make_one(kwargs) for _ in range(int(num_envs))]
        )

    def _make_one(self, kwargs: Mapping[str, Any]) -> gym.Env:
        if self.env_id.split(":")[-1].startswith(("MiniGrid-", "BabyAI-")):
            return make_minigrid_env(self.env_id.split(":")[-1], **kwargs)
        return gym.make(self.env_id, **kwargs)


def register_rllib_env(env_id: str) -> str:
    """Register one Gymnasium id with Ray Tune / RLlib under the same name.

    Args:
        env_id: See :class:`EnvCreator`.

    Returns:
        ``env_id``, to pass to ``config.environment(...)``.
    """
    register_env(env_id, EnvCreator(env_id))
    return env_id


def register_rllib_envs() -> tuple[str, ...]:
    """Register every game of ``envs.ENV_IDS`` with Ray Tune / RLlib (same names).

    Returns:
        The registered ids.
    """
    for env_id in envs.ENV_IDS:
        register_rllib_env(env_id)
    return envs.ENV_IDS


# ---------------------------------------------------------------------- config
@dataclass(frozen=True)
class YamlDefaults:
    """The repo's per-env defaults (``mbm_agent/configs``) in RLlib's terms.

    Attributes:
        encoder: Encoder fields.
        training: PPO hyperparameters, by RLlib's names.
        hidden_sizes: The heads' hidden widths (``policy_kwargs.net_arch``).
        activation: The heads' activation (``policy_kwargs.activation_fn``).
        n_envs: Parallel envs.
        memory: The GRU state size (``hyperparams.ppo.memory`` or ``policy_kwargs.memory``).
        max_seq_len: The sequences the memory is trained on (``sequence_length``; else 20).
    """

    encoder: dict[str, Any]
    training: dict[str, Any]
    hidden_sizes: list[int]
    activation: str
    n_envs: int
    memory: int
    max_seq_len: int


def _yaml_defaults(env_id: str) -> YamlDefaults:
    """The per-env YAML's defaults for :func:`ppo_config`.

    Warns when the YAML turns on what RLlib's PPO does not apply here: reward
    prediction (``aux_reward_coef``) and a curriculum.
    """
    cfg = resolve_config(env_id)
    sb3 = dict(cfg.algo_kwargs)
    dropped = [f"aux_reward_coef={sb3['aux_reward_coef']}"] if sb3.get("aux_reward_coef") else []
    if cfg.curriculum:
        dropped.append("a curriculum")
    if dropped:
        warnings.warn(
            f"{env_id}'s config turns on {' and '.join(dropped)}, which belong to mbm-agent's "
            "SB3 trainer: RLlib's PPO trains this module without them (see docs/rllib.md). "
            "Train with `mbm-agent train` for the whole recipe.",
            stacklevel=3,
        )
    training = {_SB3_TO_RLLIB[k]: v for k, v in sb3.items() if k in _SB3_TO_RLLIB}
    lr_start = linear_start(training.get("lr"))
    if lr_start is not None:  # RLlib's schedule: [timestep, value] pairs, interpolated
        training["lr"] = [[0, lr_start], [cfg.steps, 0.0]]
    clip_start = linear_start(training.get("clip_param"))
    if clip_start is not None:
        training["clip_param"] = clip_start
        warnings.warn(
            f"{env_id}'s config decays clip_range ({sb3['clip_range']}); RLlib's PPO has no "
            f"clip schedule, so it stays at {clip_start}.",
            stacklevel=3,
        )
    n_steps = int(sb3.get("n_steps", 128))
    training["train_batch_size_per_learner"] = n_steps * cfg.n_envs
    net_arch = cfg.policy_kwargs.get("net_arch", [64])
    activation = cfg.policy_kwargs.get("activation_fn", DEFAULT_ACTIVATION)
    return YamlDefaults(
        encoder=cfg.encoder.to_dict(),
        training=training,
        hidden_sizes=list(net_arch) if isinstance(net_arch, list) else [64],
        activation=activation if isinstance(activation, str) else DEFAULT_ACTIVATION,
        n_envs=cfg.n_envs,
        memory=int(sb3.get("memory") or cfg.policy_kwargs.get("memory") or 0),
        max_seq_len=int(sb3.get("sequence_length") or DEFAULT_MAX_SEQ_LEN),
    )


def _check_env_fits(agent: Agent, env_id: str, env_config: Mapping[str, Any]) -> None:
    """Raise ValueError unless RLlib's ``env_id`` emits what ``agent`` takes, words included."""
    env = EnvCreator(env_id)._make_one(env_config)
    venv = gym.vector.SyncVectorEnv([lambda: env])
    try:
        check_agent_fits(agent, venv, env_id)
        ours = (
            cast(GameEnv, env.unwrapped).vocabulary
            if is_our_game(env_id)
            else mission_vocabulary(env)
        )
        if agent.vocabulary is not None and ours is not None and ours != agent.vocabulary:
            raise ValueError(
                f"{env_id}'s instructions are tokenised with another vocabulary than the "
                f"agent's ({len(ours)} vs {len(agent.vocabulary)} words, max_len {ours.max_len} "
                f"vs {agent.vocabulary.max_len}): the same token ids would mean other words. "
                "Give RLlib an env that tokenises with the agent's vocabulary.json."
            )
    finally:
        venv.close()


def ppo_config(
    env_id: str,
    *,
    fusion: str | None = None,
    encoder: EncoderConfig | Mapping[str, Any] | None = None,
    modalities: Mapping[str, str] | None = None,
    hidden_sizes: Sequence[int] | None = None,
    vf_share_layers: bool | None = None,
    memory: int | None = None,
    max_seq_len: int | None = None,
    init_from: str | Path | None = None,
    env_config: Mapping[str, Any] | None = None,
    num_env_runners: int = 2,
    num_envs_per_env_runner: int | None = None,
    seed: int | None = 0,
    register: bool = True,
    **training: Any,
) -> PPOConfig:
    """An RLlib ``PPOConfig`` training a :class:`MultimodalPPOModule` on ``env_id``.

    Defaults come from the repo's per-env YAML (``mbm_agent/configs``, the same
    the SB3 trainer uses): the encoder settings (e.g. FiLM for GoToObject), the
    head sizes, the number of parallel envs and the PPO hyperparameters, mapped
    to RLlib's names (``n_steps * n_envs`` becomes ``train_batch_size_per_learner``,
    ``batch_size`` ``minibatch_size``, ...). Like SB3's PPO it uses no KL penalty,
    ``grad_clip=0.5`` and ``vf_loss_coeff=0.5``.

    Args:
        env_id: A Gymnasium id (see :class:`EnvCreator`).
        fusion: Fusion mode; overrides ``encoder``'s.
        encoder: Encoder settings (an ``EncoderConfig`` or a dict of its fields),
            merged over the env's YAML defaults.
        modalities: Per-key modality declarations (see :class:`MultimodalEncoder`).
        hidden_sizes: Hidden widths of each head (default: the YAML's ``net_arch``).
        vf_share_layers: One encoder for policy and value (as SB3's PPO; the default) or two.
        memory: Size of the GRU state over the fused features (0: none). None takes
            the YAML's (``hyperparams.ppo.memory``: 128 for the games the from-scratch
            recipe trains), as SB3's ``MultimodalPPO`` would.
        max_seq_len: With memory, the length of the sequences the learner unrolls the
            GRU over (RLlib's ``max_seq_len``; the state itself carries on between them).
            None takes the YAML's ``sequence_length`` (16 in the from-scratch recipe), else 20.
        init_from: A run folder (its best policy) or policy folder of ``mbm-agent train``:
            the module is built as that agent was (:func:`model_config_from_agent`) and
            starts from its weights, to fine-tune or serve it with RLlib. The architecture
            arguments above must then be left out, and ``env_id`` must emit what the
            agent takes (keys, shapes, dtypes, actions and instruction vocabulary).
        env_config: Keyword arguments of the env (e.g. ``{"cue": "text"}``).
        num_env_runners: Sampling processes (0: sample in the driver).
        num_envs_per_env_runner: Envs per runner (default: the YAML's ``n_envs``
            split over the runners).
        seed: Seed of the env runners' envs and of the module's initialisation.
        register: Register ``env_id`` with Tune first (:func:`register_rllib_env`).
        **training: ``PPOConfig.training`` arguments that override the defaults,
            e.g. ``lr=3e-4, train_batch_size_per_learner=1024``.

    Returns:
        The config; build it with ``.build_algo()`` (after ``ray.init``).

    Raises:
        ValueError: On an unknown training argument or encoder field, or a bad memory;
            with ``init_from``, an architecture argument, an agent this module cannot
            hold, or an env the agent does not fit.
    """
    yaml = _yaml_defaults(env_id)
    if init_from is not None:
        arguments = {
            "fusion": fusion,
            "encoder": encoder,
            "modalities": modalities,
            "hidden_sizes": hidden_sizes,
            "vf_share_layers": vf_share_layers,
            "memory": memory,
        }
        given = [k for k, v in arguments.items() if v is not None]
        if given:
            raise ValueError(
                f"ppo_config(init_from={str(init_from)!r}) builds the module as the agent was "
                f"built; drop {given} (or train from scratch without init_from)."
            )
        source = policy_source(init_from)
        agent = load_agent(source.model_dir)
        model_config = _agent_model_config(agent, source.model_dir)
        _check_env_fits(agent, env_id, env_config or {})
    else:
        enc = encoder.to_dict() if isinstance(encoder, EncoderConfig) else dict(encoder or {})
        enc = {**yaml.encoder, **enc}
        if fusion is not None:
            enc["fusion"] = fusion
        model_config = {
            **EncoderConfig.from_dict(enc).to_dict(),
            "modalities": dict(modalities or {}),
            "hidden_sizes": list(yaml.hidden_sizes if hidden_sizes is None else hidden_sizes),
            "vf_share_layers": True if vf_share_layers is None else vf_share_layers,
            "memory": yaml.memory if memory is None else memory,
            "activation": yaml.activation,
        }
    model_config["max_seq_len"] = yaml.max_seq_len if max_seq_len is None else max_seq_len
    ModuleSettings.from_model_config(model_config)  # fail here, not inside a Ray actor
    if num_envs_per_env_runner is None:
        num_envs_per_env_runner = max(1, -(-yaml.n_envs // max(1, num_env_runners)))
    if register:
        register_rllib_env(env_id)
    native = env_id in envs.GAMES
    params = {
        **yaml.training,
        "use_kl_loss": False,
        "grad_clip": yaml.training.get("grad_clip", 0.5),
        "vf_loss_coeff": yaml.training.get("vf_loss_coeff", 0.5),
        **training,
    }
    config = (
        PPOConfig()
        .environment(env_id, env_config=dict(env_config or {}))
        .env_runners(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=num_envs_per_env_runner,
            # Our games are batched in numpy: one vector env per runner, not N copies.
            gym_env_vectorize_mode="vector_entry_point" if native else "sync",
        )
        .rl_module(
            rl_module_spec=RLModuleSpec(module_class=MultimodalPPOModule, model_config=model_config)
        )
        .debugging(seed=seed)
    )
    try:
        config = config.training(**params)
    except TypeError as exc:
        raise ValueError(
            f"ppo_config got an argument PPOConfig.training does not take ({exc}). Pass "
            "PPO hyperparameters by RLlib's names, e.g. lr, gamma, lambda_, entropy_coeff, "
            "clip_param, num_epochs, minibatch_size, train_batch_size_per_learner."
        ) from None
    return config
