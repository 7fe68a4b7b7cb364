"""What ``mbm-agent inspect`` prints: how each observation key of an env will be encoded.

:func:`observation_plan` makes the env once, builds the run's
:class:`~mbm_agent.training.adapter.ObservationAdapter` and the encoder for the
adapted space (nothing is trained), and reports per key its raw space, its
modality, the conversion at the env's edge and the encoder with its output
width; :func:`format_plan` lays that out as a table. A nested ``Dict`` or
``Tuple`` key shows as the flat keys it becomes (``robot_pos``, ``pair_0``), and
a key dropped at the edge (declared ``ignore``, not storable) as ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from gymnasium import spaces

from mbm_agent.encoding.encoders import (
    AudioEncoder,
    ImageEncoder,
    ModalityEncoder,
    SymbolicGridEncoder,
    TextEncoder,
)
from mbm_agent.encoding.multimodal import MultimodalEncoder
from mbm_agent.training.config import TrainConfig
from mbm_agent.training.envs import is_minigrid, make_base_env, observation_adapter


@dataclass(frozen=True)
class KeyPlan:
    """How one observation key is encoded.

    Attributes:
        key: Observation key (of the adapted observation).
        space: Its raw space, as the env declares it.
        modality: The encoder's modality (``ignore`` for dropped keys), with the
            declared edge modality first where one converts it (``waveform -> audio``).
        edge: The conversion at the env's edge, ``-`` for none.
        encoder: The per-key encoder and its settings, ``-`` for ignored keys.
        width: The encoder's output width (0 for ignored keys).
    """

    key: str
    space: str
    modality: str
    edge: str
    encoder: str
    width: int


@dataclass(frozen=True)
class ObservationPlan:
    """Every key's :class:`KeyPlan`, the fusion and the fused width."""

    env_id: str
    keys: list[KeyPlan]
    fusion: str
    features_dim: int
    note: str = ""


def _encoder_text(encoder: ModalityEncoder) -> str:
    if isinstance(encoder, ImageEncoder):
        c, h, w = encoder.frame_shape
        layout = "(H, W, C)" if encoder.channels_last else "(C, H, W)"
        return (
            f"ImageEncoder ({encoder.arch} CNN; {h}x{w} frames, {c} channel(s), read as {layout})"
        )
    if isinstance(encoder, SymbolicGridEncoder):
        return "SymbolicGridEncoder (per-value embeddings + CNN)"
    if isinstance(encoder, TextEncoder):
        return f"TextEncoder ({encoder.kind}, {encoder.vocab_size} ids x {encoder.seq_len})"
    if isinstance(encoder, AudioEncoder):
        return "AudioEncoder (conv over mel x time)"
    return type(encoder).__name__


def observation_plan(cfg: TrainConfig) -> ObservationPlan:
    """How ``cfg``'s env observations will be converted and encoded (nothing trains).

    Raises:
        ConfigError: An unknown env id or a declaration that does not fit its key.
        ValueError: A key whose encoding cannot be inferred (the message names the
            key, its space and the config line that fixes it).
    """
    env, _ = make_base_env(cfg.env_id, cfg.env_kwargs, None, None)
    try:
        raw = env.observation_space
    finally:
        env.close()
    adapter = observation_adapter(cfg)
    space = adapter.observation_space(raw)
    encoder = MultimodalEncoder(space, cfg.encoder_config(), adapter.modalities)
    raw_spaces = {key: sub for key, (_, sub) in adapter.raw_leaves(raw).items()}
    declared = {k: str(v) for k, v in adapter.modalities.items()}
    rows = []
    for key in space.spaces:
        edge = adapter.describe(key)
        if key in encoder.encoders:
            module = encoder.encoder(key)
            modality = encoder.modalities[key]
            text, width = _encoder_text(module), int(module.output_dim)
        else:
            modality, text, width = "ignore", "-", 0
        if key in adapter.transforms and declared.get(key) == "audio":
            modality = f"waveform -> {modality}"
        rows.append(KeyPlan(key, str(raw_spaces[key]), modality, edge, text, width))
    top = dict(cast(spaces.Dict, raw).spaces) if adapter.box_key is None else {adapter.box_key: raw}
    rows.extend(
        KeyPlan(key, str(top.get(key, "-")), "ignore", "dropped (declared ignore)", "-", 0)
        for key in adapter.dropped
    )
    note = ""
    if adapter.box_key is not None and adapter.box_key in adapter.nested:
        note = (
            f"The env's plain {type(raw).__name__} observation is split into the keys "
            f"{list(adapter.paths)}."
        )
    elif adapter.box_key is not None:
        note = f"The env's plain (non-Dict) observation is the key {adapter.box_key!r}."
    if is_minigrid(cfg.env_id):
        note = (
            "MiniGrid / BabyAI: the mission is tokenised with the BabyAI words and the "
            "grid renamed symbolic_grid (make_minigrid_env) before the spaces shown."
        )
    if cfg.extractor == "sb3":
        note += " extractor=sb3: SB3's CombinedExtractor encodes instead (shown: ours)."
    return ObservationPlan(
        cfg.env_id, rows, cfg.encoder_config().fusion, encoder.features_dim, note.strip()
    )


def format_plan(plan: ObservationPlan) -> str:
    """The plan as plain text: per key its space, then its edge conversion and encoder."""
    lines = [f"{plan.env_id}: {len(plan.keys)} observation key(s)"]
    pad = max(len(r.key) for r in plan.keys) + 2
    for r in plan.keys:
        lines.append(f"  {r.key.ljust(pad)}{r.space}")
        indent = " " * (pad + 2)
        modality = r.modality.split(" -> ")
        if r.edge != "-":
            lines.append(f"{indent}at the env's edge ({modality[0]}): {r.edge}")
        if r.width:
            lines.append(f"{indent}{modality[-1]}: {r.encoder}, width {r.width}")
        else:
            lines.append(f"{indent}ignored")
    total = sum(r.width for r in plan.keys)
    lines.append(f"fusion {plan.fusion}: {total} -> {plan.features_dim} features")
    if plan.note:
        lines.append(plan.note)
    return "\n".join(lines)
