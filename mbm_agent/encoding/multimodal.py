"""The multimodal encoder: per-key encoders plus a fusion mode, one feature vector out.

:class:`MultimodalEncoder` is a plain ``torch.nn.Module`` that takes a dict of
observation tensors straight from the environment (uint8 frames, int64 token
ids, float spectrograms) and returns ``(B, features_dim)`` features. It is what
:class:`mbm_agent.sb3.MultimodalExtractor` wraps for Stable-Baselines3 and what
a hand-written RL loop or an exporter uses directly. Its settings are an
:class:`~mbm_agent.encoding.config.EncoderConfig`.

Modalities are declared per key. Undeclared keys get one from
:func:`~mbm_agent.encoding.config.infer_modality`: the contract's keys by name
(``image``, ``text``, ``audio``, ``symbolic_grid``), any other key by its space
(a uint8 frame is an ``image``; a small Box, Discrete, MultiDiscrete or
MultiBinary key a ``vector``); ``modalities=`` overrides it per key, e.g.
``{"image": "symbolic_grid"}`` for MiniGrid or ``{"depth": "image"}`` for a
float frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from mbm_agent.encoding.config import (
    MODALITIES,
    EncoderConfig,
    infer_modality,
    is_string_space,
    is_vector_space,
    undeclared_error,
)
from mbm_agent.encoding.encoders import (
    AudioEncoder,
    FilmParams,
    ImageEncoder,
    ModalityEncoder,
    SpatialEncoder,
    SymbolicGridEncoder,
    TextEncoder,
    VectorEncoder,
)
from mbm_agent.encoding.fusion import make_fusion
from mbm_agent.encoding.spec import InputSpec, check_observation
from mbm_agent.encoding.values import empty_batch_message

_LAYOUTS = ("hwc", "chw")
_SPATIAL = ("image", "symbolic_grid")
_MAX_VOCAB = 1_000_000


@dataclass(frozen=True)
class KeyPlan:
    """How one observation key is encoded (resolved from the space and the declaration)."""

    key: str
    modality: str
    channels_last: bool | None = None


def _parse_declaration(key: str, declared: str) -> tuple[str, str | None]:
    if not isinstance(declared, str):
        raise ValueError(
            f"modalities[{key!r}] must be a string such as 'image' or 'symbolic_grid:chw', "
            f"got {declared!r}."
        )
    name, _, layout = declared.partition(":")
    if name == "waveform":
        raise ValueError(
            f"modalities[{key!r}]='waveform': raw waveforms become log-mel features at the "
            "env's edge (mbm_agent.AdaptObservation, which `mbm-agent train` applies), and "
            "the encoder takes the converted key as 'audio'."
        )
    if name not in MODALITIES:
        raise ValueError(
            f"modalities[{key!r}]={declared!r}: unknown modality {name!r}; "
            f"choose one of {list(MODALITIES)}."
        )
    if layout and (name not in _SPATIAL or layout not in _LAYOUTS):
        raise ValueError(
            f"modalities[{key!r}]={declared!r}: a layout suffix is only allowed on "
            f"{list(_SPATIAL)} and must be one of {list(_LAYOUTS)}."
        )
    return name, layout or None


def _detect_channels_last(
    space: spaces.Box, declared: str | None, channels: tuple[int, ...]
) -> bool:
    """Whether a 3-D space is channel-last.

    The declared layout wins; else the only end axis whose size is a plausible
    channel count; else SB3's rule (channel-first iff the first axis is the
    smallest), which is the rule ``VecTransposeImage`` uses.
    """
    if declared is not None:
        return declared == "hwc"
    shape = space.shape
    last_ok, first_ok = shape[-1] in channels, shape[0] in channels
    if last_ok != first_ok:
        return last_ok
    return int(np.argmin(shape)) != 0


def _finite_scale(space: spaces.Box) -> float:
    high = float(np.max(space.high))
    return 1.0 / high if np.isfinite(high) and high > 1.0 else 1.0


def _suggestion(space: spaces.Space, rejected: str) -> str:
    """A modality to suggest for a key that cannot be ``rejected``: one its space fits, else ignore."""
    if rejected != "vector" and is_vector_space(space):
        return "vector"
    if rejected != "image" and isinstance(space, spaces.Box) and len(space.shape) == 3:
        return "image"
    return "ignore"


def _space_error(key: str, space: spaces.Space, modality: str, why: str) -> ValueError:
    example = _suggestion(space, modality)
    other = "" if example == "ignore" else ", or 'ignore' to skip it"
    return ValueError(
        f"Observation key {key!r} with space {space} cannot be encoded as {modality!r}: {why} "
        f"Declare another modality, e.g. modalities={{{key!r}: {example!r}}}{other} "
        f"(known modalities: {list(MODALITIES)})."
    )


class MultimodalEncoder(nn.Module):
    """Encode a Dict observation into one feature vector.

    Args:
        observation_space: The environment's ``spaces.Dict``.
        config: Architecture settings; defaults to ``EncoderConfig()``.
        modalities: Per-key modality declarations overriding the key-name
            defaults; values from ``MODALITIES`` (``"ignore"`` drops a key),
            ``image``/``symbolic_grid`` optionally with ``:hwc`` or ``:chw``.

    Attributes:
        features_dim: Width of the output, measured by a dummy forward pass.
        keys: Encoded keys, in order.
        modalities: Resolved modality of every encoded key.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        config: EncoderConfig | None = None,
        modalities: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(observation_space, spaces.Dict):
            raise ValueError(
                f"MultimodalEncoder needs a gymnasium.spaces.Dict observation space, got "
                f"{observation_space}. Wrap single-array observations in a Dict, e.g. "
                "gymnasium.wrappers.FilterObservation / TransformObservation."
            )
        self.config = config if config is not None else EncoderConfig()
        if not isinstance(self.config, EncoderConfig):
            raise ValueError(
                f"config must be an EncoderConfig, got {type(self.config).__name__}; "
                "use EncoderConfig.from_dict(...) for a dict."
            )
        self.check_inputs = self.config.check_inputs
        self.observation_space = observation_space

        plans = self._resolve(observation_space, dict(modalities or {}))
        self.ignored = [p.key for p in plans if p.modality == "ignore"]
        plans = [p for p in plans if p.modality != "ignore"]
        if not plans:
            raise ValueError(
                f"No observation key left to encode in {observation_space}; every key is "
                "declared 'ignore'."
            )
        self.modalities: dict[str, str] = {p.key: p.modality for p in plans}
        self.encoders = nn.ModuleDict(
            {p.key: self._build(p, observation_space[p.key]) for p in plans}
        )
        # Spatial encoders run last so FiLM can condition them on the others.
        self.keys = [p.key for p in plans]
        self.spatial_keys = [k for k in self.keys if isinstance(self.encoders[k], SpatialEncoder)]
        self.flat_keys = [k for k in self.keys if k not in self.spatial_keys]
        self._index = {k: i for i, k in enumerate(self.keys)}
        self._input_specs = [replace(self.encoder(k).input_spec, name=k) for k in self.keys]
        dims = {k: self.encoder(k).output_dim for k in self.keys}
        learned = self.config.missing_embedding == "learned"
        self.missing = nn.ParameterDict(
            {k: nn.Parameter(torch.zeros(d), requires_grad=learned) for k, d in dims.items()}
        )
        spatial = {
            k: list(cast(SpatialEncoder, self.encoders[k]).block_channels)
            for k in self.spatial_keys
        }
        self.fusion = make_fusion(
            self.config.fusion,
            dims,
            spatial,
            self.config.features_dim,
            self.config.fusion_dim,
            self.config.attention_heads,
        )
        self.features_dim = self._measure_features_dim()

    # ------------------------------------------------------------------ building
    @staticmethod
    def _resolve(space: spaces.Dict, declared: dict[str, str]) -> list[KeyPlan]:
        unknown = [k for k in declared if k not in space.spaces]
        if unknown:
            raise ValueError(
                f"modalities declares key(s) {unknown} that the observation space lacks; "
                f"its keys are {list(space.spaces)}."
            )
        plans = []
        for key, sub in space.spaces.items():
            if "." in key or not key:
                raise ValueError(
                    f"Observation key {key!r} cannot name a torch submodule (empty or "
                    "contains '.'); rename it with a wrapper."
                )
            if hasattr(nn.ModuleDict, key) or hasattr(nn.ParameterDict, key):
                raise ValueError(
                    f"Observation key {key!r} clashes with a torch container attribute; rename "
                    "it, e.g. with mbm_agent.RenameObservationKeys(env, {"
                    f"{key!r}: '{key}_obs'}})."
                )
            if key in declared:
                modality, layout = _parse_declaration(key, declared[key])
            else:
                inferred = infer_modality(key, sub)
                if inferred is None or (inferred == "text" and is_string_space(sub)):
                    raise undeclared_error(key, sub)
                modality, layout = inferred, None
            channels_last = None
            if modality in _SPATIAL:
                if not isinstance(sub, spaces.Box) or len(sub.shape) != 3:
                    raise _space_error(
                        key, sub, modality, "it needs a 3-D Box (H, W, C) or (C, H, W)."
                    )
                allowed = (1, 3, 4) if modality == "image" else tuple(range(1, 9))
                channels_last = _detect_channels_last(sub, layout, allowed)
            plans.append(KeyPlan(key, modality, channels_last))
        return plans

    def _build(self, plan: KeyPlan, space: spaces.Space) -> ModalityEncoder:
        cfg = self.config
        key, modality = plan.key, plan.modality
        if modality == "image":
            assert isinstance(space, spaces.Box) and plan.channels_last is not None
            integer = np.issubdtype(space.dtype, np.integer)
            if not integer and not np.issubdtype(space.dtype, np.floating):
                raise _space_error(key, space, modality, "its dtype is not numeric.")
            return ImageEncoder(
                space.shape,
                plan.channels_last,
                _finite_scale(space),
                "uint8" if space.dtype == np.uint8 else "float32",
                cfg.image_encoder,
                cfg.image_dim,
                cfg.image_cells,
            )
        if modality == "symbolic_grid":
            assert isinstance(space, spaces.Box) and plan.channels_last is not None
            if not np.issubdtype(space.dtype, np.integer) or np.any(space.low < 0):
                raise _space_error(
                    key, space, modality, "a symbolic grid needs non-negative integer values."
                )
            high = np.broadcast_to(space.high, space.shape)
            per_channel = high.max(axis=(0, 1)) if plan.channels_last else high.max(axis=(1, 2))
            if np.any(per_channel >= _MAX_VOCAB):
                raise _space_error(key, space, modality, "its upper bound is not a small integer.")
            return SymbolicGridEncoder(
                space.shape,
                plan.channels_last,
                [int(v) + 1 for v in per_channel],
                cfg.grid_embed_dim,
                cfg.image_dim,
            )
        if modality == "text":
            return self._build_text(key, space)
        if modality == "audio":
            if not isinstance(space, spaces.Box) or len(space.shape) not in (2, 3):
                raise _space_error(
                    key, space, modality, "audio needs a Box (channels, n_mels, n_frames)."
                )
            return AudioEncoder(space.shape, space.low, space.high, cfg.audio_dim)
        try:
            return VectorEncoder(space, cfg.vector_dim)
        except ValueError as exc:
            raise _space_error(key, space, modality, str(exc)) from None

    def _build_text(self, key: str, space: spaces.Space) -> TextEncoder:
        cfg = self.config
        common: dict[str, Any] = dict(
            kind=cfg.text_encoder,
            word_dim=cfg.word_dim,
            output_dim=cfg.text_dim,
            heads=cfg.attention_heads,
        )
        if isinstance(space, spaces.MultiDiscrete):
            nvec = np.asarray(space.nvec)
            if nvec.ndim != 1 or np.any(nvec != nvec.flat[0]) or np.any(np.asarray(space.start)):
                raise _space_error(
                    key, space, "text", "token ids need MultiDiscrete([V] * L) with start 0."
                )
            return TextEncoder(int(nvec[0]), len(nvec), **common)
        if isinstance(space, spaces.Box):
            if len(space.shape) != 1 or not np.issubdtype(space.dtype, np.integer):
                raise _space_error(
                    key, space, "text", "token ids need an integer Box of shape (L,)."
                )
            high = int(np.max(space.high))
            if np.any(space.low < 0) or high >= _MAX_VOCAB:
                raise _space_error(
                    key, space, "text", "token ids need bounds Box(0, V - 1) with a small V."
                )
            return TextEncoder(high + 1, space.shape[0], **common)
        raise _space_error(
            key,
            space,
            "text",
            "text must be token ids (Box or MultiDiscrete); wrap raw strings with "
            "mbm_agent.TokenizeMission.",
        )

    def _measure_features_dim(self) -> int:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            out = self(self.dummy_observation(batch_size=2))
        self.train(was_training)
        if out.dim() != 2 or out.shape[0] != 2:
            raise RuntimeError(f"Fusion returned shape {tuple(out.shape)}, expected (2, D).")
        return int(out.shape[1])

    def dummy_observation(self, batch_size: int = 1) -> dict[str, Tensor]:
        """A zero observation batch in the format this encoder expects (e.g. for export)."""
        return {k: self.encoder(k).input_spec.dummy(batch_size) for k in self.keys}

    # ------------------------------------------------------------------ forward
    def forward(
        self, obs: Mapping[str, Tensor], mask: Mapping[str, Tensor | bool] | None = None
    ) -> Tensor:
        """Encode a batch of observations.

        Args:
            obs: ``(B, ...)`` tensor per key. A key may be left out when ``mask``
                marks it missing.
            mask: Per key, True / a ``(B,)`` bool tensor where the modality is
                present, False where it is missing. A missing modality's
                embedding is replaced by the learned "missing" embedding, so its
                input has no effect on the output.

        Returns:
            ``(B, features_dim)`` features.
        """
        if self.check_inputs:
            batch = self._check(obs, mask)
        else:
            batch = next(iter(obs.values())).shape[0] if obs else self._batch_from_mask(mask)
        device = self.missing[self.keys[0]].device
        present = self._presence(obs, mask, batch, device)
        if self.training and self.config.modality_dropout > 0.0 and len(self.keys) > 1:
            if present is None:
                present = torch.ones(batch, len(self.keys), dtype=torch.bool, device=device)
            present = self._drop_modalities(present)

        embeddings: dict[str, Tensor] = {}
        for key in self.flat_keys:
            embeddings[key] = self._embed(key, obs, mask, present, batch, None)
        film: dict[str, FilmParams] = {}
        if self.fusion.uses_film:
            film = self.fusion.film({k: embeddings[k] for k in self.flat_keys})
        for key in self.spatial_keys:
            embeddings[key] = self._embed(key, obs, mask, present, batch, film.get(key))
        return self.fusion(embeddings, present)

    def _embed(
        self,
        key: str,
        obs: Mapping[str, Tensor],
        mask: Mapping[str, Tensor | bool] | None,
        present: Tensor | None,
        batch: int,
        film: FilmParams | None,
    ) -> Tensor:
        missing = self.missing[key]
        if key not in obs:
            return missing.expand(batch, -1)
        x = obs[key]
        if present is not None:
            keep = present[:, self._index[key]]
            if mask is not None and key in mask:
                # Zero the inputs of masked samples: garbage (even NaN) there must not
                # reach the parameter gradients through the encoder.
                shape = (batch,) + (1,) * (x.dim() - 1)
                x = torch.where(
                    keep.reshape(shape), x, torch.zeros((), dtype=x.dtype, device=x.device)
                )
        encoder = self.encoders[key]
        emb = encoder(x, film) if isinstance(encoder, SpatialEncoder) else encoder(x)
        if present is not None:
            emb = torch.where(keep[:, None], emb, missing.to(emb.dtype))
        return emb

    def _presence(
        self,
        obs: Mapping[str, Tensor],
        mask: Mapping[str, Tensor | bool] | None,
        batch: int,
        device: torch.device,
    ) -> Tensor | None:
        if mask is None and all(k in obs for k in self.keys):
            return None
        columns = []
        for key in self.keys:
            value = True if mask is None else mask.get(key, True)
            if key not in obs:
                value = False
            if isinstance(value, Tensor):
                columns.append(value.reshape(batch).to(device=device, dtype=torch.bool))
            else:
                columns.append(torch.full((batch,), bool(value), dtype=torch.bool, device=device))
        return torch.stack(columns, dim=1)

    def _drop_modalities(self, present: Tensor) -> Tensor:
        """Drop each present modality with probability p, keeping at least one per sample."""
        p = self.config.modality_dropout
        kept = present & (torch.rand(present.shape, device=present.device) >= p)
        lost_all = present.any(dim=1) & ~kept.any(dim=1)
        scores = torch.rand(present.shape, device=present.device).masked_fill(~present, -1.0)
        rescue = nn.functional.one_hot(scores.argmax(dim=1), present.shape[1]).bool()
        return kept | (rescue & lost_all[:, None])

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _batch_from_mask(mask: Mapping[str, Tensor | bool] | None) -> int:
        for value in (mask or {}).values():
            if isinstance(value, Tensor) and value.dim() >= 1:
                return int(value.shape[0])
        raise ValueError(
            "Cannot tell the batch size: obs has no tensors. Pass at least one modality, or "
            "per-sample mask tensors of shape (B,)."
        )

    def encoder(self, key: str) -> ModalityEncoder:
        """The encoder of ``key`` (``self.encoders[key]``, typed)."""
        return cast(ModalityEncoder, self.encoders[key])

    @property
    def input_specs(self) -> list[InputSpec]:
        """What each encoded key must look like, named, in :attr:`keys` order (what exports take)."""
        return self._input_specs

    def _check(self, obs: Mapping[str, Tensor], mask: Mapping[str, Tensor | bool] | None) -> int:
        if mask is not None:
            bad = [k for k in mask if k not in self._index]
            if bad:
                raise ValueError(f"mask has unknown key(s) {bad}; encoded keys are {self.keys}.")
        absent = [
            k
            for k, value in (mask or {}).items()
            if value is False or (isinstance(value, Tensor) and not bool(value.any()))
        ]
        checked = check_observation(
            self.input_specs,
            obs,
            tensors=True,
            ignored=self.ignored,
            absent=absent,
            missing_hint=lambda keys: (
                "Pass it, or mark the modality missing with "
                f"mask={{{', '.join(f'{k!r}: False' for k in keys)}}}."
            ),
        )
        batch = checked.batch if checked.batch is not None else self._batch_from_mask(mask)
        if batch == 0:  # refused as every runtime refuses it (encoding/values.py)
            key, value = next(iter(checked.values.items()), ("mask", torch.zeros(0)))
            raise ValueError(empty_batch_message(key, tuple(value.shape)))
        for key, value in (mask or {}).items():
            if isinstance(value, Tensor):
                if value.numel() != batch or value.dtype != torch.bool:
                    raise ValueError(
                        f"mask[{key!r}] must be a bool tensor of shape ({batch},), got "
                        f"{value.dtype} {tuple(value.shape)}."
                    )
            elif not isinstance(value, bool):
                raise ValueError(
                    f"mask[{key!r}] must be a bool or a (B,) bool tensor, got {value!r}."
                )
        return batch

    def extra_repr(self) -> str:
        """Modalities and output width in the module's printout."""
        mods = ", ".join(f"{k}={m}" for k, m in self.modalities.items())
        return f"modalities=({mods}), fusion={self.config.fusion!r}"


def to_tensor_obs(obs: Mapping[str, Any], device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Convert a dict of numpy arrays (e.g. from a vector env) into tensors, keeping dtypes."""
    return {k: torch.as_tensor(np.asarray(v), device=device) for k, v in obs.items()}
