"""Fusion modes: how per-modality embeddings become one feature vector.

Every mode receives the embeddings of all declared keys (a missing modality
has already been replaced by its "missing" embedding) and a ``present`` mask,
and returns ``(B, features_dim)`` features:

- ``concat``: concatenation, then a linear layer and ReLU.
- ``film``: the non-spatial embeddings (text, audio, vectors) produce FiLM
  scales and shifts for every conv block of the spatial encoders (image,
  symbolic grid), as in BabyAI; the conditioned embeddings are then
  concatenated as in ``concat``. Without a spatial or a conditioning modality
  it is the same as ``concat``.
- ``attention``: each embedding becomes a token (projection plus a learned
  modality embedding); a summary token attends over them through one
  transformer layer. Missing modalities are masked out of the attention; the
  summary token is never masked, so masking everything stays finite.
- ``gated``: each embedding is projected and squashed (``tanh``); learned,
  input-dependent sigmoid gates weight them (a missing modality's gate is
  zero) before a sum and a linear layer (a Gated Multimodal Unit).

New modes subclass :class:`Fusion` and are added to :data:`FUSION_MODES`, whose
entry names the torch module and the Keras layer that mirrors it in the Keras twin
(by a ``"module:Class"`` string, imported only by :mod:`mbm_agent.deploy.keras`:
nothing here imports Keras). A test builds every registered mode in both
frameworks and compares them, so a mode without a working mirror fails it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from mbm_agent.encoding.encoders import FilmParams


class Fusion(nn.Module):
    """Base class of fusion modes.

    Args:
        dims: Embedding width of every key, in the order used for ``present``.
        spatial: Block channels of every key whose encoder accepts FiLM.
        features_dim: Output width.
        hidden_dim: Width of tokens (``attention``) or gated projections (``gated``).
        heads: Attention heads (``attention`` only).

    Attributes:
        uses_film: Whether :meth:`film` must be called to condition the spatial
            encoders before they run.
    """

    uses_film: bool = False

    def __init__(
        self,
        dims: dict[str, int],
        spatial: dict[str, list[int]],
        features_dim: int,
        hidden_dim: int = 128,
        heads: int = 4,
    ) -> None:
        super().__init__()
        if not dims:
            raise ValueError("Fusion needs at least one modality.")
        self.keys = list(dims)
        self.dims = dict(dims)
        self.features_dim = int(features_dim)

    def film(self, conditions: dict[str, Tensor]) -> dict[str, FilmParams]:
        """FiLM parameters for each spatial key (only for modes with ``uses_film``)."""
        raise NotImplementedError(f"{type(self).__name__} does not produce FiLM parameters.")

    def forward(self, embeddings: dict[str, Tensor], present: Tensor | None) -> Tensor:
        """Fuse embeddings.

        Args:
            embeddings: ``(B, dims[key])`` per key.
            present: ``(B, len(keys))`` bool, True where the modality is present;
                None when every modality is present.

        Returns:
            ``(B, features_dim)`` features.
        """
        raise NotImplementedError


class ConcatFusion(Fusion):
    """Concatenate embeddings, then linear + ReLU."""

    def __init__(
        self,
        dims: dict[str, int],
        spatial: dict[str, list[int]],
        features_dim: int,
        hidden_dim: int = 128,
        heads: int = 4,
    ) -> None:
        super().__init__(dims, spatial, features_dim, hidden_dim, heads)
        self.head = nn.Sequential(nn.Linear(sum(dims.values()), features_dim), nn.ReLU())

    def forward(self, embeddings: dict[str, Tensor], present: Tensor | None) -> Tensor:
        """Concatenate in key order and project; ``present`` is not needed here."""
        return self.head(torch.cat([embeddings[k] for k in self.keys], dim=1))


class FilmFusion(ConcatFusion):
    """BabyAI-style FiLM: non-spatial embeddings modulate the spatial encoders' conv blocks.

    The FiLM generators start at zero, so training starts from plain ``concat``.
    """

    def __init__(
        self,
        dims: dict[str, int],
        spatial: dict[str, list[int]],
        features_dim: int,
        hidden_dim: int = 128,
        heads: int = 4,
    ) -> None:
        super().__init__(dims, spatial, features_dim, hidden_dim, heads)
        self.condition_keys = [k for k in self.keys if k not in spatial]
        cond_dim = sum(dims[k] for k in self.condition_keys)
        self.uses_film = bool(spatial) and cond_dim > 0
        self.generators = nn.ModuleDict()
        if self.uses_film:
            for key, channels in spatial.items():
                layers = [nn.Linear(cond_dim, 2 * c) for c in channels]
                for layer in layers:
                    nn.init.zeros_(layer.weight)
                    nn.init.zeros_(layer.bias)
                self.generators[key] = nn.ModuleList(layers)

    def film(self, conditions: dict[str, Tensor]) -> dict[str, FilmParams]:
        """FiLM ``(gamma, beta)`` per conv block of each spatial key.

        Args:
            conditions: ``(B, dim)`` embedding of every non-spatial key.

        Returns:
            For each spatial key, one ``(gamma, beta)`` pair per conv block.
        """
        cond = torch.cat([conditions[k] for k in self.condition_keys], dim=1)
        out: dict[str, FilmParams] = {}
        for key, layers in self.generators.items():
            params: FilmParams = []
            for layer in cast(nn.ModuleList, layers):
                gamma, beta = layer(cond).chunk(2, dim=1)
                params.append((gamma, beta))
            out[key] = params
        return out


class AttentionFusion(Fusion):
    """Modality tokens through one cross-modal transformer layer, read by a summary token."""

    def __init__(
        self,
        dims: dict[str, int],
        spatial: dict[str, list[int]],
        features_dim: int,
        hidden_dim: int = 128,
        heads: int = 4,
    ) -> None:
        super().__init__(dims, spatial, features_dim, hidden_dim, heads)
        if hidden_dim % heads:
            raise ValueError(
                f"fusion_dim={hidden_dim} must be divisible by attention_heads={heads}."
            )
        self.proj = nn.ModuleDict({k: nn.Linear(d, hidden_dim) for k, d in dims.items()})
        self.modality = nn.Parameter(torch.randn(len(self.keys), hidden_dim) * 0.02)
        self.summary = nn.Parameter(torch.randn(1, 1, hidden_dim) * 0.02)
        self.layer = nn.TransformerEncoderLayer(
            hidden_dim,
            heads,
            dim_feedforward=2 * hidden_dim,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.head = nn.Sequential(
            nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, features_dim), nn.ReLU()
        )

    def forward(self, embeddings: dict[str, Tensor], present: Tensor | None) -> Tensor:
        """Attend from the summary token over the present modality tokens."""
        tokens = torch.stack([self.proj[k](embeddings[k]) for k in self.keys], dim=1)
        tokens = tokens + self.modality
        batch = tokens.shape[0]
        tokens = torch.cat([self.summary.expand(batch, -1, -1), tokens], dim=1)
        ignore = None
        if present is not None:
            keep_summary = torch.ones_like(present[:, :1])
            ignore = ~torch.cat([keep_summary, present], dim=1)
        return self.head(self.layer(tokens, src_key_padding_mask=ignore)[:, 0])


class GatedFusion(Fusion):
    """Gated Multimodal Unit: sigmoid gates from all embeddings weight per-modality projections."""

    def __init__(
        self,
        dims: dict[str, int],
        spatial: dict[str, list[int]],
        features_dim: int,
        hidden_dim: int = 128,
        heads: int = 4,
    ) -> None:
        super().__init__(dims, spatial, features_dim, hidden_dim, heads)
        self.proj = nn.ModuleDict({k: nn.Linear(d, hidden_dim) for k, d in dims.items()})
        self.gate = nn.Linear(sum(dims.values()), len(self.keys))
        self.head = nn.Sequential(nn.Linear(hidden_dim, features_dim), nn.ReLU())

    def forward(self, embeddings: dict[str, Tensor], present: Tensor | None) -> Tensor:
        """Gate, sum and project; an absent modality gets gate 0."""
        gates = torch.sigmoid(self.gate(torch.cat([embeddings[k] for k in self.keys], dim=1)))
        if present is not None:
            gates = gates * present.to(gates.dtype)
        fused = torch.zeros((), device=gates.device, dtype=gates.dtype)
        for i, key in enumerate(self.keys):
            fused = fused + gates[:, i : i + 1] * torch.tanh(self.proj[key](embeddings[key]))
        return self.head(fused)


@dataclass(frozen=True)
class FusionMode:
    """One entry of :data:`FUSION_MODES`.

    Attributes:
        torch: The fusion module.
        keras: ``"module:Class"`` of the Keras layer mirroring it (built from the torch
            module as its template), imported lazily by :mod:`mbm_agent.deploy.keras`.
    """

    torch: type[Fusion]
    keras: str


_KERAS_LAYERS = "mbm_agent.deploy.keras.layers"

FUSION_MODES: dict[str, FusionMode] = {
    "concat": FusionMode(ConcatFusion, f"{_KERAS_LAYERS}:KerasConcatFusion"),
    "film": FusionMode(FilmFusion, f"{_KERAS_LAYERS}:KerasFilmFusion"),
    "attention": FusionMode(AttentionFusion, f"{_KERAS_LAYERS}:KerasAttentionFusion"),
    "gated": FusionMode(GatedFusion, f"{_KERAS_LAYERS}:KerasGatedFusion"),
}
"""Registry of fusion modes by name; add an entry to make a new mode selectable."""


def make_fusion(
    name: str,
    dims: dict[str, int],
    spatial: dict[str, list[int]],
    features_dim: int,
    hidden_dim: int = 128,
    heads: int = 4,
) -> Fusion:
    """Build a fusion mode by name.

    Args:
        name: A key of :data:`FUSION_MODES`.
        dims: Embedding width of every key.
        spatial: Block channels of every FiLM-capable key.
        features_dim: Output width.
        hidden_dim: Token / gate width.
        heads: Attention heads.

    Returns:
        The fusion module.

    Raises:
        ValueError: If ``name`` is not a known mode.
    """
    try:
        cls = FUSION_MODES[name].torch
    except KeyError:
        raise ValueError(
            f"Unknown fusion mode {name!r}; known modes: {sorted(FUSION_MODES)}."
        ) from None
    return cls(dims, spatial, features_dim, hidden_dim, heads)
