"""Per-modality encoders: each turns one observation key into a flat embedding.

Every encoder takes one key's raw observation, as the env emits it (uint8
frames, integer ids, float features), and owns its preprocessing (dtype cast,
scaling to a unit range, channel order, token lookup). SB3, a hand-written PPO
loop and an exported model therefore compute the same numbers from the same
observation, and weights move freely between them. Whatever a framework does
to observations first (SB3's float casts and one-hot encodings) is undone in
that framework's adapter (:mod:`mbm_agent.sb3.extractor`), not here.

The spatial encoders (:class:`ImageEncoder`, :class:`SymbolicGridEncoder`)
accept per-block FiLM parameters so that a fusion module can condition their
feature maps on other modalities.

All ops are plain tensor ops (no ``pack_padded_sequence``, no data-dependent
Python branches) so the modules trace for TorchScript and ONNX export.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn
from torch.nn import functional as F

from mbm_agent.encoding.spec import InputSpec

IMAGE_ENCODERS: tuple[str, ...] = ("small", "nature", "cells")
"""Names accepted by ``EncoderConfig.image_encoder``."""

TEXT_ENCODERS: tuple[str, ...] = ("gru", "bow", "attention")
"""Names accepted by ``EncoderConfig.text_encoder``."""

#: Token id of an unknown word (the observation contract: 0 = padding, 1 = unknown).
UNKNOWN_TOKEN_ID = 1

FilmParams = list[tuple[Tensor, Tensor]]
"""Per conv block ``(gamma, beta)``, each ``(B, C)``; features become ``x * (1 + gamma) + beta``."""

_NATURE_MIN_SIZE = 36
#: Channels of every conv of the ``cells`` image encoder (32: 2.5x faster PPO than 64, same learning).
_CELL_CHANNELS = 32


class _SummedEmbedding(torch.autograd.Function):
    """``weight[idx].sum(-2)``: ``embedding_bag`` forward, ``index_add_`` backward.

    The same function as ``F.embedding(idx, weight).sum(dim=-2)``, equal up to float
    rounding (the gradient rows are added in another order). On CPU, for a minibatch of
    4,096 7x7x3 grids (602k looked-up rows), torch's lookup, sum and dense embedding
    backward take ~78 ms; the bag forward (no per-channel embeddings built) and adding
    the rows' gradients into the table channel by channel ~17 ms
    (``benchmarks/update_speed.py``: 1.1x env steps/s on a whole PPO iteration of
    BabyAI-GoToObjMaze-v0, on top of the fused memory unroll).
    """

    @staticmethod
    def forward(ctx: Any, idx: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.rows = weight.shape[0]
        bags = F.embedding_bag(idx.reshape(-1, idx.shape[-1]), weight, mode="sum")
        return bags.reshape(*idx.shape[:-1], weight.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:
        (idx,) = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1]).contiguous()
        table = flat.new_zeros(ctx.rows, flat.shape[1])
        for channel in range(idx.shape[-1]):
            table.index_add_(0, idx[..., channel].reshape(-1), flat)
        return None, table


def summed_embedding(idx: Tensor, weight: Tensor) -> Tensor:
    """``(..., C)`` ids to the sum of their ``C`` embedding rows, ``(..., D)``.

    The fast path (:class:`_SummedEmbedding`) runs when gradients flow; tracing,
    scripting and exporting see the plain lookup and sum.
    """
    if (
        weight.requires_grad
        and torch.is_grad_enabled()
        and not torch.jit.is_scripting()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not torch.onnx.is_in_onnx_export()
    ):
        return cast(Tensor, _SummedEmbedding.apply(idx, weight))
    return F.embedding(idx, weight).sum(dim=-2)


class ModalityEncoder(nn.Module):
    """Base class of the per-key encoders.

    Attributes:
        output_dim: Width of the embedding ``forward`` returns.
        input_spec: What the input must look like (checked by the caller).
    """

    output_dim: int
    input_spec: InputSpec


class SpatialEncoder(ModalityEncoder):
    """A convolutional encoder whose blocks can be FiLM-conditioned.

    Attributes:
        block_channels: Number of channels after each conv block; a FiLM
            conditioner produces one ``(gamma, beta)`` pair of that width per block.
    """

    block_channels: list[int]
    convs: nn.ModuleList
    head: nn.Module

    def _trunk(self, x: Tensor, film: FilmParams | None, scale: float = 1.0) -> Tensor:
        for i, conv in enumerate(self.convs):
            if i == 0 and scale != 1.0:
                # conv(x * s) computed as conv with weight * s: the same function and
                # gradients, without a pass over the full-resolution input.
                first = cast(nn.Conv2d, conv)
                x = F.conv2d(x, first.weight * scale, first.bias, first.stride, first.padding)
            else:
                x = conv(x)
            if film is not None:
                gamma, beta = film[i]
                x = x * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]
            x = F.relu(x)
        return self.head(x)


def _channels_last_from_flag(shape: tuple[int, ...], channels_last: bool) -> tuple[int, int, int]:
    """(C, H, W) of a 3-D shape given its layout."""
    if channels_last:
        return shape[2], shape[0], shape[1]
    return shape[0], shape[1], shape[2]


def _flat_dim(module: SpatialEncoder, c: int, h: int, w: int) -> int:
    with torch.no_grad():
        x = torch.zeros(1, c, h, w)
        for conv in module.convs:
            x = conv(x)
        return int(x[0].numel())


class ImageEncoder(SpatialEncoder):
    """CNN over an RGB (or grey / RGBD) frame, sized to the frame.

    Architectures:
        ``"small"`` (default): three convs with 8, 16, 32 channels; the first is a
        non-overlapping ``s x s`` patch conv with ``s = 4`` for frames of at least
        32 px (2 for 16-31 px, 1 below), then two 3x3 stride-2 convs. On 64x64
        frames: a 16x16 then 8x8 then 4x4 map, about a tenth of NatureCNN's
        multiply-adds. Few early channels matter most on CPU, where the wide
        early activation maps (memory traffic) cost more than the arithmetic.
        ``"nature"``: the DQN Nature CNN (32, 64, 64 channels, 8/4, 4/2, 3/1);
        needs frames of at least 36 px.
        ``"cells"``: for frames drawn as a grid of ``cells x cells`` tiles (our
        games' 7x7 egocentric view, MiniGrid's RGB views): a patch conv with one
        patch per tile (``min(H, W) // cells`` pixels), so each tile's colour and
        shape become one 32-channel vector, as BabyAI's per-cell embeddings of its
        symbolic grid, then two 3x3 convs over the tile map. Measured on
        GoToObject's 64x64 frames of 9-pixel tiles: behaviour cloning from 4,000
        noisy expert episodes reached 94.5% held-out success, against 59% with
        the Nature CNN and 33.5% (chance) with the small CNN.

    Args:
        shape: Space shape, ``(H, W, C)`` or ``(C, H, W)``.
        channels_last: Layout of ``shape`` and of the incoming tensors.
        scale: Multiplier taking raw values to ``[0, 1]`` (``1/255`` for uint8).
        dtype: :attr:`InputSpec.dtype` of the frames (``"uint8"``, or ``"float32"``
            for frames of another dtype).
        arch: One of :data:`IMAGE_ENCODERS`.
        output_dim: Embedding width.
        cells: Tiles per side of the frame (``arch="cells"`` only).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        channels_last: bool,
        scale: float,
        dtype: str,
        arch: str = "small",
        output_dim: int = 128,
        cells: int = 7,
    ) -> None:
        super().__init__()
        c, h, w = _channels_last_from_flag(shape, channels_last)
        self.channels_last = channels_last
        self.frame_shape = (c, h, w)  # channels, height, width (whatever the layout)
        self.scale = float(scale)
        self.arch = arch
        if arch == "small":
            stride = 4 if min(h, w) >= 32 else 2 if min(h, w) >= 16 else 1
            first = (
                nn.Conv2d(c, 8, kernel_size=stride, stride=stride)
                if stride > 1
                else nn.Conv2d(c, 8, kernel_size=3, padding=1)
            )
            self.convs = nn.ModuleList(
                [
                    first,
                    nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1),
                    nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1),
                ]
            )
        elif arch == "nature":
            if min(h, w) < _NATURE_MIN_SIZE:
                raise ValueError(
                    f'image_encoder="nature" needs frames of at least {_NATURE_MIN_SIZE}x'
                    f'{_NATURE_MIN_SIZE} pixels, got {h}x{w}; use image_encoder="small".'
                )
            self.convs = nn.ModuleList(
                [
                    nn.Conv2d(c, 32, kernel_size=8, stride=4),
                    nn.Conv2d(32, 64, kernel_size=4, stride=2),
                    nn.Conv2d(64, 64, kernel_size=3, stride=1),
                ]
            )
        elif arch == "cells":
            tile = min(h, w) // cells if cells >= 1 else 0
            if tile < 2:
                raise ValueError(
                    f'image_encoder="cells" with image_cells={cells} needs at least 2 pixels per '
                    f"cell, but the frames are {h}x{w}; set encoder.image_cells to the number of "
                    'grid cells per side of the frame, or use image_encoder="small".'
                )
            self.convs = nn.ModuleList(
                [
                    nn.Conv2d(c, _CELL_CHANNELS, kernel_size=tile, stride=tile),
                    nn.Conv2d(_CELL_CHANNELS, _CELL_CHANNELS, kernel_size=3, padding=1),
                    nn.Conv2d(_CELL_CHANNELS, _CELL_CHANNELS, kernel_size=3, padding=1),
                ]
            )
        else:
            raise ValueError(f"Unknown image encoder {arch!r}; known: {list(IMAGE_ENCODERS)}.")
        self.block_channels = [cast(nn.Conv2d, conv).out_channels for conv in self.convs]
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(_flat_dim(self, c, h, w), output_dim), nn.ReLU()
        )
        self.output_dim = output_dim
        self.input_spec = InputSpec(tuple(int(s) for s in shape), dtype)

    def forward(self, x: Tensor, film: FilmParams | None = None) -> Tensor:
        """Encode a batch of frames.

        Args:
            x: ``(B, *shape)`` frames in the declared layout and dtype.
            film: Optional per-block FiLM parameters.

        Returns:
            ``(B, output_dim)`` embeddings.
        """
        x = x.float()
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)  # a free view; convs read channel-last memory fine
        return self._trunk(x, film, self.scale)


class SymbolicGridEncoder(SpatialEncoder):
    """Encoder for categorical grids such as MiniGrid's (object, colour, state) cells.

    As in BabyAI, each channel value has its own learned embedding (one table,
    offset per channel); a cell's embedding is the sum over channels. A small
    CNN (3x3 convs, 32 then 64 channels, the second stride 2) follows.

    Args:
        shape: Space shape, ``(H, W, C)`` or ``(C, H, W)``.
        channels_last: Layout of ``shape`` and of the incoming tensors.
        num_values: Number of distinct values of each channel (space high + 1).
        embed_dim: Width of the per-value embeddings.
        output_dim: Embedding width.
    """

    offsets: Tensor
    max_values: Tensor

    def __init__(
        self,
        shape: tuple[int, ...],
        channels_last: bool,
        num_values: list[int],
        embed_dim: int = 16,
        output_dim: int = 128,
    ) -> None:
        super().__init__()
        c, h, w = _channels_last_from_flag(shape, channels_last)
        if len(num_values) != c:
            raise ValueError(f"num_values has {len(num_values)} entries for {c} channels.")
        self.channels_last = channels_last
        offsets = np.concatenate([[0], np.cumsum(num_values)[:-1]]).astype(np.int64)
        self.register_buffer("offsets", torch.as_tensor(offsets), persistent=False)
        self.register_buffer(
            "max_values", torch.as_tensor(np.asarray(num_values) - 1), persistent=False
        )
        self.embedding = nn.Embedding(int(sum(num_values)), embed_dim)
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(embed_dim, 32, kernel_size=3, padding=1),
                nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1),
            ]
        )
        self.block_channels = [32, 64]
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(_flat_dim(self, embed_dim, h, w), output_dim), nn.ReLU()
        )
        self.output_dim = output_dim
        self.input_spec = InputSpec(tuple(int(s) for s in shape), "int64")

    def forward(self, x: Tensor, film: FilmParams | None = None) -> Tensor:
        """Encode a batch of grids.

        Args:
            x: ``(B, *shape)`` integer grids in the declared layout. Values outside
                the space bounds are clamped.
            film: Optional per-block FiLM parameters.

        Returns:
            ``(B, output_dim)`` embeddings.
        """
        idx = x.long()
        if not self.channels_last:
            idx = idx.permute(0, 2, 3, 1)
        idx = torch.minimum(idx.clamp(min=0), self.max_values) + self.offsets  # (B, H, W, C)
        emb = summed_embedding(idx, self.embedding.weight)  # (B, H, W, D)
        return self._trunk(emb.permute(0, 3, 1, 2), film)


class TextEncoder(ModalityEncoder):
    """Encoder for instructions given as token ids (0 = padding).

    Kinds:
        ``"gru"``: word embeddings through a GRU; the state after the last
        non-padding token is the embedding (padding after it never reaches it).
        ``"bow"``: masked mean of word embeddings, then a linear layer.
        ``"attention"``: one transformer layer over the words plus a summary
        token that is never masked (so all-padding text stays finite); the
        summary token's output is the embedding.

    All-padding text yields a finite embedding (zeros for ``gru``).

    Args:
        vocab_size: Number of token ids (max id + 1).
        seq_len: Instruction length L.
        kind: ``"gru"``, ``"bow"`` or ``"attention"``.
        word_dim: Word embedding width.
        output_dim: Embedding width.
        heads: Attention heads (``"attention"`` only).
    """

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        kind: str = "gru",
        word_dim: int = 32,
        output_dim: int = 64,
        heads: int = 4,
    ) -> None:
        super().__init__()
        if kind not in TEXT_ENCODERS:
            raise ValueError(f"Unknown text encoder {kind!r}; known: {list(TEXT_ENCODERS)}.")
        self.kind = kind
        self.vocab_size = int(vocab_size)
        self._unknown_id = min(UNKNOWN_TOKEN_ID, self.vocab_size - 1)
        self.seq_len = int(seq_len)
        self.word_embedding = nn.Embedding(self.vocab_size, word_dim, padding_idx=0)
        self.rnn: nn.GRU | None = None
        self.layer: nn.TransformerEncoderLayer | None = None
        if kind == "gru":
            self.rnn = nn.GRU(word_dim, output_dim, batch_first=True)
            self.proj: nn.Module = nn.Identity()
        else:
            if kind == "attention":
                self.position = nn.Parameter(torch.randn(self.seq_len + 1, word_dim) * 0.02)
                self.summary = nn.Parameter(torch.randn(word_dim) * 0.02)
                self.layer = nn.TransformerEncoderLayer(
                    word_dim,
                    heads,
                    dim_feedforward=2 * word_dim,
                    dropout=0.0,
                    batch_first=True,
                    norm_first=True,
                )
            self.proj = nn.Sequential(nn.Linear(word_dim, output_dim), nn.ReLU())
        self.output_dim = output_dim
        self.input_spec = InputSpec((self.seq_len,), "int64")

    def token_ids(self, x: Tensor) -> Tensor:
        """The incoming ``(B, L)`` token ids as int64 ids of the vocabulary.

        An id outside the vocabulary is an unknown word (``UNKNOWN_TOKEN_ID``), as
        ``Vocabulary.encode`` makes it, not the last word or padding; the Keras twin
        and every export do the same.
        """
        ids = x.long()
        outside = (ids < 0) | (ids >= self.vocab_size)
        return torch.where(outside, torch.full_like(ids, self._unknown_id), ids)

    def forward(self, x: Tensor) -> Tensor:
        """Encode a batch of instructions.

        Args:
            x: ``(B, L)`` integer token ids.

        Returns:
            ``(B, output_dim)`` embeddings.
        """
        ids = self.token_ids(x)
        valid = ids != 0
        emb = self.word_embedding(ids)  # (B, L, D); padding rows are zero
        if self.rnn is not None:
            out, _ = self.rnn(emb)
            positions = torch.arange(1, ids.shape[1] + 1, device=ids.device)
            last = (valid.long() * positions).amax(dim=1)  # 0 when all padding
            index = (last - 1).clamp(min=0)[:, None, None].expand(-1, 1, out.shape[2])
            h = out.gather(1, index).squeeze(1)
            return h * (last > 0).unsqueeze(1).to(h.dtype)
        if self.layer is not None:
            batch = ids.shape[0]
            tokens = torch.cat([self.summary.expand(batch, 1, -1), emb], dim=1) + self.position
            ignore = torch.cat([torch.zeros_like(valid[:, :1]), ~valid], dim=1)
            pooled = self.layer(tokens, src_key_padding_mask=ignore)[:, 0]
            return self.proj(pooled)
        count = valid.sum(dim=1, keepdim=True).clamp(min=1).to(emb.dtype)
        return self.proj(emb.sum(dim=1) / count)


def _bounds_affine(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-element (center, inverse half range) mapping finite bounds to [-1, 1]; identity else."""
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    finite = np.isfinite(low) & np.isfinite(high) & (high > low)
    center = np.where(finite, (np.where(finite, low, 0.0) + np.where(finite, high, 0.0)) / 2, 0.0)
    inv_half = np.where(finite, 2.0 / np.where(finite, high - low, 1.0), 1.0)
    return center.astype(np.float32), inv_half.astype(np.float32)


class AudioEncoder(ModalityEncoder):
    """Patch CNN over log-mel features, microphones (stereo) as input channels.

    Inputs are mapped to ``[-1, 1]`` using the space bounds when those are
    finite (left as they are otherwise). One non-overlapping patch conv (16
    channels; patches of 4 mel bands x 2 frames when the input is that large)
    runs over mel x time, then a linear layer reads the whole patch map, so
    where a sound sits in frequency, time and between the microphones all stay
    visible. The patch conv is computed as a reshape and a matrix product: on
    these tiny maps a ``conv2d`` call costs several times its arithmetic (a
    second 3x3 conv layer was 8% of a PPO update on 2 cores and is gone).
    Bands or frames that do not fill a whole patch are dropped, as a strided
    conv would.

    Args:
        shape: Space shape ``(channels, n_mels, n_frames)`` or ``(n_mels, n_frames)``.
        low: Space lower bound (scalar or array).
        high: Space upper bound (scalar or array).
        output_dim: Embedding width.
        channels: Patch conv channels.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        low: np.ndarray,
        high: np.ndarray,
        output_dim: int = 64,
        channels: int = 16,
    ) -> None:
        super().__init__()
        if len(shape) not in (2, 3):
            raise ValueError(f"Audio needs a (channels, n_mels, n_frames) shape, got {shape}.")
        self.add_channel = len(shape) == 2
        c, h, w = (1, *shape) if self.add_channel else tuple(shape)
        center, inv_half = _bounds_affine(
            np.array(float(np.min(low))), np.array(float(np.max(high)))
        )
        self.center = float(center)
        self.inv_half = float(inv_half)
        self.in_channels = int(c)
        self.patch = (4 if h >= 16 else 2 if h >= 4 else 1, 2 if w >= 4 else 1)
        self.grid = (h // self.patch[0], w // self.patch[1])
        #: The patch conv: weights over one (channel, mel, frame) patch, flattened in that order.
        self.patch_conv = nn.Linear(c * self.patch[0] * self.patch[1], channels)
        self.head = nn.Sequential(
            nn.Linear(self.grid[0] * self.grid[1] * channels, output_dim), nn.ReLU()
        )
        self.output_dim = output_dim
        self.input_spec = InputSpec(tuple(int(s) for s in shape), "float32")

    def patches(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` features -> ``(B, H/ph * W/pw, C * ph * pw)`` patches."""
        (ph, pw), (gh, gw) = self.patch, self.grid
        x = x[:, :, : gh * ph, : gw * pw]
        x = x.reshape(x.shape[0], self.in_channels, gh, ph, gw, pw)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(x.shape[0], gh * gw, -1)

    def forward(self, x: Tensor) -> Tensor:
        """Encode a batch of ``(B, *shape)`` spectrograms into ``(B, output_dim)``."""
        x = (x.float() - self.center) * self.inv_half
        if self.add_channel:
            x = x.unsqueeze(1)
        maps = F.relu(self.patch_conv(self.patches(x)))
        return self.head(maps.flatten(1))


class VectorEncoder(ModalityEncoder):
    """One-layer MLP for small vectors: Box, Discrete, MultiDiscrete, MultiBinary.

    Box values are mapped to ``[-1, 1]`` per element where the bounds are
    finite. Discrete and MultiDiscrete values are one-hot encoded.

    Args:
        space: The key's space.
        output_dim: Embedding width.
    """

    center: Tensor
    inv_half: Tensor
    md_start: Tensor

    def __init__(self, space: spaces.Space[Any], output_dim: int = 32) -> None:
        super().__init__()
        self.kind = type(space).__name__
        self.start = 0
        self.nvec: list[int] = []
        if isinstance(space, spaces.Box):
            n_in = int(np.prod(space.shape))
            center, inv_half = _bounds_affine(
                np.broadcast_to(space.low, space.shape).reshape(-1),
                np.broadcast_to(space.high, space.shape).reshape(-1),
            )
            self.register_buffer("center", torch.as_tensor(center), persistent=False)
            self.register_buffer("inv_half", torch.as_tensor(inv_half), persistent=False)
            spec = InputSpec(tuple(int(s) for s in space.shape), "float32")
        elif isinstance(space, spaces.Discrete):
            n_in = int(space.n)
            self.start = int(space.start)
            spec = InputSpec((), "int64", flexible_shape=True)
        elif isinstance(space, spaces.MultiDiscrete):
            if space.nvec.ndim != 1:
                raise ValueError(f"Only 1-D MultiDiscrete vectors are supported, got {space}.")
            self.nvec = [int(n) for n in space.nvec]
            self.register_buffer(
                "md_start",
                torch.as_tensor(np.asarray(space.start, dtype=np.int64)),
                persistent=False,
            )
            n_in = int(sum(self.nvec))
            spec = InputSpec((len(self.nvec),), "int64")
        elif isinstance(space, spaces.MultiBinary):
            n_in = int(np.prod(space.shape))
            spec = InputSpec(tuple(int(s) for s in np.atleast_1d(space.shape)), "float32")
        else:
            raise ValueError(f"VectorEncoder cannot take {space}.")
        self.n_in = n_in
        self.linear = nn.Linear(n_in, output_dim)
        self.output_dim = output_dim
        self.input_spec = spec

    def features(self, x: Tensor) -> Tensor:
        """The ``(B, n_in)`` float vector fed to the linear layer."""
        batch = x.shape[0]
        if self.kind == "Box":
            return (x.reshape(batch, -1).float() - self.center) * self.inv_half
        if self.kind == "Discrete":
            idx = (x.reshape(batch).long() - self.start).clamp(0, self.n_in - 1)
            return F.one_hot(idx, self.n_in).float()
        if self.kind == "MultiDiscrete":
            idx = x.reshape(batch, -1).long() - self.md_start
            parts = [
                F.one_hot(idx[:, i].clamp(0, n - 1), n).float() for i, n in enumerate(self.nvec)
            ]
            return torch.cat(parts, dim=1)
        return x.reshape(batch, -1).float()

    def forward(self, x: Tensor) -> Tensor:
        """Encode a batch into ``(B, output_dim)``."""
        return F.relu(self.linear(self.features(x)))
