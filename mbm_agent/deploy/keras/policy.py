"""The Keras twin of :class:`~mbm_agent.deploy.network.PolicyNetwork` and its weights both ways.

:func:`build_keras_policy` makes a functional ``keras.Model`` with one named
input per observation key and outputs ``{"action", "logits", "value"}``, from a
:class:`PolicyNetwork` (architecture only) or from a space and settings;
:func:`torch_to_keras` and :func:`keras_to_torch` copy the weights across.

A policy with memory has one more input, ``recurrent_state`` ``(B, memory)``, and
one more output, ``next_recurrent_state``: a ``keras.layers.GRUCell`` over the
features (``mbm_memory``), mirroring the torch ``memory_core``, whose new state the
actor and critic layers read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import keras
import tensorflow as tf
from gymnasium import spaces
from torch import nn

from mbm_agent.deploy.keras.layers import KerasMultimodalEncoder
from mbm_agent.deploy.keras.porting import (
    Tie,
    differ_error,
    gru_cell_ties,
    linear_ties,
    variable_numpy,
)
from mbm_agent.deploy.network import (
    STATE_INPUT,
    STATE_OUTPUT,
    PolicyNetwork,
    UnsupportedPolicyError,
)
from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.encoding.multimodal import MultimodalEncoder
from mbm_agent.sb3.policy import ACTIVATIONS


# ---------------------------------------------------------------------------- policy model
class _ArgMax(keras.layers.Layer):
    """``argmax`` over actions as int64 (``tf.argmax``: keras.ops' version needs a Flex op)."""

    def call(self, logits: Any) -> Any:
        return tf.argmax(logits, axis=1, output_type=tf.int64)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any]:
        return (input_shape[0],)


class _Value(keras.layers.Layer):
    """``(B, 1)`` critic output -> ``(B,)``, or Q-values -> ``max Q`` (DQN)."""

    def __init__(self, reduce_max: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reduce_max = reduce_max

    def call(self, x: Any) -> Any:
        return tf.reduce_max(x, axis=1) if self.reduce_max else tf.reshape(x, (-1,))

    def compute_output_shape(self, input_shape: Any) -> tuple[Any]:
        return (input_shape[0],)


class _Memory(keras.layers.Layer):
    """The memory core: ``(features, state) -> new state``, a GRU cell as torch's ``nn.GRUCell``.

    ``reset_after=True`` is the gate arithmetic torch uses (the reset gate scales the
    recurrent term after its bias).
    """

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.cell = keras.layers.GRUCell(self.units, reset_after=True, name="cell")

    def build(self, input_shape: Any) -> None:
        self.cell.build(input_shape[0])

    def call(self, inputs: Any) -> Any:
        features, state = inputs
        new_state, _ = self.cell(features, [state])
        return new_state

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, int]:
        return (input_shape[0][0], self.units)


@dataclass(frozen=True)
class _Arch:
    encoder: MultimodalEncoder
    critic_encoder: MultimodalEncoder | None
    actor: list[tuple[int, str | None]]
    critic: list[tuple[int, str | None]]
    n_actions: int
    kind: str
    memory: int = 0


def _mlp_layers(module: nn.Module, what: str) -> list[tuple[int, str | None]]:
    """``Sequential(Linear, act, Linear, act, ...)`` -> ``[(units, activation name), ...]``."""
    names = {cls: name for name, cls in ACTIVATIONS.items()}
    children = [] if isinstance(module, nn.Identity) else list(module.children())
    layers: list[tuple[int, str | None]] = []
    for child in children:
        if isinstance(child, nn.Linear):
            layers.append((int(child.out_features), None))
        elif type(child) in names and layers and layers[-1][1] is None:
            if isinstance(child, nn.GELU) and child.approximate != "none":
                raise UnsupportedPolicyError(f"The {what} uses a tanh-approximated GELU.")
            if isinstance(child, nn.ELU) and child.alpha != 1.0:
                raise UnsupportedPolicyError(f"The {what} uses ELU(alpha={child.alpha}).")
            layers[-1] = (layers[-1][0], names[type(child)])
        else:
            raise UnsupportedPolicyError(
                f"The {what} has a {type(child).__name__} layer; the Keras twin mirrors Linear "
                f"layers followed by one of {list(ACTIVATIONS)}."
            )
    return layers


def _torch_linears(module: nn.Module) -> list[nn.Linear]:
    return (
        []
        if isinstance(module, nn.Identity)
        else [m for m in module.children() if isinstance(m, nn.Linear)]
    )


def _arch_from_net(net: PolicyNetwork) -> _Arch:
    return _Arch(
        encoder=net.encoder,
        critic_encoder=net.critic_encoder,
        actor=_mlp_layers(net.actor, "actor"),
        critic=_mlp_layers(net.critic, "critic") if net.kind == "actor_critic" else [],
        n_actions=net.n_actions,
        kind=net.kind,
        memory=net.memory,
    )


def _build_model(arch: _Arch, name: str) -> Any:
    space = arch.encoder.observation_space
    inputs = {
        key: keras.Input(
            shape=cast(tuple[int, ...], space[key].shape), dtype=str(space[key].dtype), name=key
        )
        for key in arch.encoder.keys
    }
    encoder = KerasMultimodalEncoder(template=arch.encoder, name="mbm_encoder")
    features = encoder(inputs)
    outputs: dict[str, Any] = {}
    if arch.memory:
        state = keras.Input(shape=(arch.memory,), dtype="float32", name=STATE_INPUT)
        new_state = _Memory(arch.memory, name="mbm_memory")([features, state])
        outputs[STATE_OUTPUT] = keras.layers.Identity(name=STATE_OUTPUT)(new_state)
        inputs = {**inputs, STATE_INPUT: state}
        features = new_state  # what the actor and critic layers read

    def mlp(x: Any, layers: list[tuple[int, str | None]], prefix: str) -> Any:
        for i, (units, activation) in enumerate(layers):
            x = keras.layers.Dense(units, activation=activation, name=f"{prefix}_{i}")(x)
        return x

    latent = mlp(features, arch.actor, "mbm_actor")
    q_or_logits = keras.layers.Dense(arch.n_actions, name="mbm_action_net")(latent)
    logits = keras.layers.Identity(name="logits")(q_or_logits)
    if arch.kind == "q":
        value = _Value(True, name="value")(logits)
    else:
        critic_features = features
        if arch.critic_encoder is not None:
            critic_encoder = KerasMultimodalEncoder(
                template=arch.critic_encoder, name="mbm_critic_encoder"
            )
            critic_features = critic_encoder(inputs)
        v = keras.layers.Dense(1, name="mbm_value_net")(
            mlp(critic_features, arch.critic, "mbm_critic")
        )
        value = _Value(False, name="value")(v)
    action = _ArgMax(name="action")(logits)
    outputs = {"action": action, "logits": logits, "value": value, **outputs}
    return keras.Model(inputs, outputs, name=name)


def build_keras_policy(
    source: PolicyNetwork | spaces.Dict,
    n_actions: int | None = None,
    config: EncoderConfig | None = None,
    modalities: Mapping[str, str] | None = None,
    net_arch: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    activation: str | None = None,
    kind: str = "actor_critic",
    *,
    name: str = "mbm_policy",
) -> Any:
    """A functional ``keras.Model`` mirroring :class:`PolicyNetwork` (fresh Keras weights).

    Inputs: one ``keras.Input`` per encoded observation key, named by the key,
    with the space's raw dtype and shape (dynamic batch). Outputs: a dict with
    ``"action"`` (B,) int64 argmax, ``"logits"`` (B, A) (Q-values for DQN) and
    ``"value"`` (B,) (``max Q`` for DQN). For behaviour cloning, compile with a
    loss on ``"logits"`` only, e.g.
    ``loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}``.

    Args:
        source: A :class:`PolicyNetwork` whose architecture is mirrored (then leave
            the other arguments unset; use :func:`torch_to_keras` to copy weights
            too), or an observation space to build from settings.
        n_actions: Number of discrete actions (with a space).
        config: Encoder settings (with a space); defaults to ``EncoderConfig()``.
        modalities: Per-key modality declarations (with a space).
        net_arch: Hidden layer widths after the features: a list shared by actor
            and critic, or SB3's ``{"pi": [...], "vf": [...]}``; default ``[64, 64]``.
        activation: ``"tanh"``, ``"relu"``, ``"elu"`` or ``"gelu"``; default SB3's
            (``tanh`` for actor-critic, ``relu`` for ``"q"``).
        kind: ``"actor_critic"`` or ``"q"`` (with a space).
        name: Model name.

    Returns:
        The uncompiled ``keras.Model``.

    Raises:
        ValueError: On settings given alongside a PolicyNetwork, or bad settings.
        UnsupportedPolicyError: On a PolicyNetwork with a part the twin cannot mirror.
    """
    if isinstance(source, PolicyNetwork):
        given = {
            "n_actions": n_actions,
            "config": config,
            "modalities": modalities,
            "net_arch": net_arch,
            "activation": activation,
        }
        extra = [k for k, v in given.items() if v is not None]
        if extra or kind != "actor_critic":
            raise ValueError(
                f"build_keras_policy(net) reads the architecture from the PolicyNetwork; do not "
                f"also pass {extra or ['kind']}."
            )
        return _build_model(_arch_from_net(source), name)
    if not isinstance(source, spaces.Dict):
        raise ValueError(
            f"build_keras_policy needs a PolicyNetwork or a spaces.Dict, got {type(source).__name__}."
        )
    if n_actions is None or int(n_actions) < 1:
        raise ValueError(
            f"build_keras_policy(space, n_actions) needs n_actions >= 1, got {n_actions}."
        )
    if kind not in ("actor_critic", "q"):
        raise ValueError(f"kind must be 'actor_critic' or 'q', got {kind!r}.")
    activation = activation or ("relu" if kind == "q" else "tanh")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not known; use one of {list(ACTIVATIONS)}.")
    if net_arch is None:
        net_arch = [64, 64]
    if isinstance(net_arch, Mapping):
        unknown = [k for k in net_arch if k not in ("pi", "vf", "qf")]
        if unknown:
            raise ValueError(f"net_arch keys must be 'pi' and 'vf' (or 'qf'), got {unknown}.")
        pi = net_arch.get("qf" if kind == "q" else "pi", [])
        vf = net_arch.get("vf", [])
    else:
        pi = vf = net_arch
    encoder = MultimodalEncoder(source, config, modalities)
    arch = _Arch(
        encoder=encoder,
        critic_encoder=None,
        actor=[(int(u), activation) for u in pi],
        critic=[] if kind == "q" else [(int(u), activation) for u in vf],
        n_actions=int(n_actions),
        kind=kind,
    )
    return _build_model(arch, name)


def _policy_ties(model: Any, net: PolicyNetwork) -> list[Tie]:
    try:
        encoder = model.get_layer("mbm_encoder")
        action_net = model.get_layer("mbm_action_net")
    except ValueError as exc:
        raise ValueError(
            "The Keras model was not built by build_keras_policy / torch_to_keras "
            f"(no layer mbm_encoder / mbm_action_net): {exc}"
        ) from None
    ties = encoder.ties("encoder", net.encoder)

    def mlp_ties(module: nn.Module, prefix: str, what: str) -> list[Tie]:
        linears = _torch_linears(module)
        dense = [
            layer
            for layer in model.layers
            if layer.name.startswith(f"{prefix}_") and layer.name[len(prefix) + 1 :].isdigit()
        ]
        if len(dense) != len(linears):
            raise differ_error(
                f"The torch {what} has {len(linears)} linear layers, Keras {len(dense)}"
            )
        out: list[Tie] = []
        for i, linear in enumerate(linears):
            out += linear_ties(f"{what}.{i}", model.get_layer(f"{prefix}_{i}"), linear)
        return out

    if net.memory_core is not None:
        try:
            memory = model.get_layer("mbm_memory")
        except ValueError:
            raise differ_error("The torch network has memory, the Keras model none") from None
        ties += gru_cell_ties("memory_core", memory.cell, net.memory_core)
    elif any(layer.name == "mbm_memory" for layer in model.layers):
        raise differ_error("The Keras model has memory, the torch network none")
    ties += mlp_ties(net.actor, "mbm_actor", "actor")
    ties += linear_ties("action_net", action_net, net.action_net)
    if net.kind == "actor_critic":
        assert net.value_net is not None
        ties += mlp_ties(net.critic, "mbm_critic", "critic")
        ties += linear_ties("value_net", model.get_layer("mbm_value_net"), net.value_net)
        if net.critic_encoder is not None:
            ties += model.get_layer("mbm_critic_encoder").ties("critic_encoder", net.critic_encoder)
    return ties


def torch_to_keras(net: PolicyNetwork) -> Any:
    """Build the Keras twin of a PolicyNetwork and copy its weights in.

    Args:
        net: The torch policy.

    Returns:
        A ``keras.Model`` as :func:`build_keras_policy` makes, computing the same
        ``action``, ``logits`` and ``value`` as ``net`` (to float32 rounding).

    Raises:
        UnsupportedPolicyError: On a part the twin cannot mirror.
    """
    model = build_keras_policy(net)
    for tie in _policy_ties(model, net):
        tie.load()
    return model


def keras_to_torch(model: Any, net: PolicyNetwork) -> None:
    """Copy a Keras twin's weights into a PolicyNetwork of the same architecture, in place.

    Use it after training the twin (e.g. behaviour cloning with ``model.fit``)
    to save, evaluate or export the result as torch. The torch ``missing``
    embeddings are left as they are.

    Args:
        model: A model from :func:`build_keras_policy` or :func:`torch_to_keras`.
        net: The torch policy to overwrite.

    Raises:
        ValueError: If the two architectures differ (naming the first weight that does).
    """
    ties = _policy_ties(model, net)
    for tie in ties:  # check every shape before writing anything
        shapes = [tuple(v.shape) for v in tie.to_torch(variable_numpy(tie.variable))]
        expected = [tuple(t.shape) for t in tie.tensors]
        if shapes != expected:
            raise ValueError(
                f"Weight {tie.name}: the Keras model gives shape(s) {shapes}, the torch network "
                f"has {expected}; the two networks differ."
            )
    for tie in ties:
        tie.save()
