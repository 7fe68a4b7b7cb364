"""Keras 3 layers mirroring the torch encoders, fusion modes and the multimodal encoder.

Every torch encoder and fusion mode has a layer here computing the same numbers
from the same raw observations (uint8 frames, integer token ids, float
spectrograms): casts, ``/255`` and bounds scaling, one-hot encodings and channel
order all happen inside, as in torch. Each layer is built from its torch
template (architecture only) and lists the weight ties that copy its weights
(:mod:`~mbm_agent.deploy.keras.porting`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, cast

import keras
import numpy as np
from gymnasium import spaces
from keras import ops
from torch import nn

from mbm_agent.deploy.keras.porting import (
    Tie,
    conv_ties,
    differ_error,
    direct_tie,
    flatten_linear_ties,
    gru_ties,
    layernorm_ties,
    linear_ties,
)
from mbm_agent.deploy.network import UnsupportedPolicyError
from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.encoding.encoders import (
    UNKNOWN_TOKEN_ID,
    AudioEncoder,
    ImageEncoder,
    SpatialEncoder,
    SymbolicGridEncoder,
    TextEncoder,
    VectorEncoder,
)
from mbm_agent.encoding.fusion import (
    FUSION_MODES,
    AttentionFusion,
    ConcatFusion,
    FilmFusion,
    Fusion,
    GatedFusion,
)
from mbm_agent.encoding.multimodal import MultimodalEncoder

_LN_EPS = 1e-5  # torch.nn.LayerNorm's default
_MASKED = -1e9  # additive attention mask; exp() of it underflows to exactly 0 in float32


# ---------------------------------------------------------------------------- small helpers
def _dense(units: int, in_dim: int, activation: str | None = None, name: str | None = None) -> Any:
    layer = keras.layers.Dense(units, activation=activation, name=name)
    layer.build((None, in_dim))
    return layer


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _head_linear(head: nn.Module) -> nn.Linear:
    """The linear layer of an encoder head (``Sequential(Flatten?, Linear, ReLU)``)."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if len(linears) != 1:
        raise UnsupportedPolicyError(f"Unexpected encoder head {head}.")
    return linears[0]


def _film(x: Any, film: tuple[Any, Any] | None) -> Any:
    if film is None:
        return x
    gamma, beta = film
    return x * (1.0 + gamma[:, None, None, :]) + beta[:, None, None, :]


class _ConvTrunk(keras.layers.Layer):
    """Conv blocks (conv, optional FiLM, ReLU) then flatten + linear + ReLU, channel-last.

    torch pads symmetrically; Keras' ``"same"`` would pad stride-2 convs on one side
    only, so the padding is an explicit ``pad`` before a ``"valid"`` conv.
    """

    def __init__(self, template: SpatialEncoder, chw: tuple[int, int, int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c, h, w = chw
        self.paddings: list[int] = []
        self.convs = []
        for conv in template.convs:
            assert isinstance(conv, nn.Conv2d)
            # Our convs pad by integers (nn.Conv2d also allows "same"/"valid" strings).
            k, s, p = conv.kernel_size[0], conv.stride[0], cast(tuple[int, ...], conv.padding)[0]
            if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1]:
                raise UnsupportedPolicyError(
                    f"Only square kernels and strides are mirrored: {conv}."
                )
            layer = keras.layers.Conv2D(conv.out_channels, k, strides=s, padding="valid")
            layer.build((None, h + 2 * p, w + 2 * p, c))
            self.convs.append(layer)
            self.paddings.append(int(p))
            c, h, w = conv.out_channels, _conv_out(h, k, s, p), _conv_out(w, k, s, p)
        self.map_chw = (c, h, w)
        linear = _head_linear(template.head)
        self.head = _dense(linear.out_features, c * h * w, "relu")
        self.output_dim = int(linear.out_features)

    def build(self, input_shape: Any) -> None:
        """Nothing to create: the sublayers are built in ``__init__``."""
        self.built = True

    def call(self, x: Any, film: Sequence[tuple[Any, Any]] | None = None) -> Any:
        for i, (conv, pad) in enumerate(zip(self.convs, self.paddings, strict=True)):
            if pad:
                x = ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
            x = ops.relu(_film(conv(x), None if film is None else film[i]))
        return self.head(ops.reshape(x, (-1, int(np.prod(self.map_chw)))))

    def ties(self, name: str, template: SpatialEncoder) -> list[Tie]:
        if len(self.convs) != len(template.convs):
            raise differ_error(
                f"{name}: {len(self.convs)} Keras convs, {len(template.convs)} torch"
            )
        out: list[Tie] = []
        for i, (conv, torch_conv) in enumerate(zip(self.convs, template.convs, strict=True)):
            if not isinstance(torch_conv, nn.Conv2d):
                raise differ_error(f"{name}.convs.{i} is a {type(torch_conv).__name__}")
            out += conv_ties(f"{name}.convs.{i}", conv, torch_conv)
        return out + flatten_linear_ties(
            f"{name}.head", self.head, _head_linear(template.head), self.map_chw
        )


# ---------------------------------------------------------------------------- encoders
class KerasImageEncoder(keras.layers.Layer):
    """Keras mirror of :class:`~mbm_agent.encoding.encoders.ImageEncoder` (small / nature CNN).

    Args:
        template: The torch encoder whose architecture is mirrored (weights not copied).
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    spatial = True
    mirrors = ImageEncoder
    #: The ``EncoderConfig.image_encoder`` architectures mirrored (a test checks each).
    archs: tuple[str, ...] = ("small", "nature", "cells")

    def __init__(self, template: ImageEncoder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if template.arch not in self.archs:
            raise UnsupportedPolicyError(
                f"The Keras twin mirrors image_encoder {list(self.archs)}, not {template.arch!r}."
            )
        shape = template.input_spec.shape
        self.channels_last = bool(template.channels_last)
        c, h, w = (shape[2], shape[0], shape[1]) if self.channels_last else shape
        # torch folds the scale into the first conv's weights; scaling the input is the
        # same function (to float rounding).
        self.scale = float(template.scale)
        self.trunk = _ConvTrunk(template, (c, h, w))
        self.block_channels = list(template.block_channels)
        self.output_dim = self.trunk.output_dim

    def build(self, input_shape: Any) -> None:
        """Nothing to create: the sublayers are built in ``__init__``."""
        self.built = True

    def call(self, x: Any, film: Sequence[tuple[Any, Any]] | None = None) -> Any:
        """``(B, *shape)`` raw frames -> ``(B, output_dim)``."""
        x = ops.cast(x, "float32")
        if not self.channels_last:
            x = ops.transpose(x, (0, 2, 3, 1))
        if self.scale != 1.0:
            x = x * self.scale
        return self.trunk(x, film)

    def ties(self, name: str, template: ImageEncoder) -> list[Tie]:
        """Weight ties with the torch encoder ``template``."""
        return self.trunk.ties(name, template)


class KerasSymbolicGridEncoder(keras.layers.Layer):
    """Keras mirror of :class:`~mbm_agent.encoding.encoders.SymbolicGridEncoder` (per-value embeddings, CNN).

    Args:
        template: The torch encoder whose architecture is mirrored (weights not copied).
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    spatial = True
    mirrors = SymbolicGridEncoder

    def __init__(self, template: SymbolicGridEncoder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        shape = template.input_spec.shape
        self.channels_last = bool(template.channels_last)
        _, h, w = (shape[2], shape[0], shape[1]) if self.channels_last else shape
        self.offsets = template.offsets.cpu().numpy().astype(np.int32)
        self.max_values = template.max_values.cpu().numpy().astype(np.int32)
        table = template.embedding
        self.embedding = keras.layers.Embedding(table.num_embeddings, table.embedding_dim)
        self.embedding.build((None,))
        self.trunk = _ConvTrunk(template, (table.embedding_dim, h, w))
        self.block_channels = list(template.block_channels)
        self.output_dim = self.trunk.output_dim

    def build(self, input_shape: Any) -> None:
        """Nothing to create: the sublayers are built in ``__init__``."""
        self.built = True

    def call(self, x: Any, film: Sequence[tuple[Any, Any]] | None = None) -> Any:
        """``(B, *shape)`` integer grids -> ``(B, output_dim)``; out-of-range values are clamped."""
        idx = ops.cast(x, "int32")
        if not self.channels_last:
            idx = ops.transpose(idx, (0, 2, 3, 1))
        idx = ops.minimum(ops.maximum(idx, 0), self.max_values) + self.offsets
        emb = ops.sum(self.embedding(idx), axis=3)  # (B, H, W, D)
        return self.trunk(emb, film)

    def ties(self, name: str, template: SymbolicGridEncoder) -> list[Tie]:
        """Weight ties with the torch encoder ``template``."""
        return [
            direct_tie(
                f"{name}.embedding.weight", self.embedding.embeddings, template.embedding.weight
            ),
            *self.trunk.ties(name, template),
        ]


class KerasTransformerLayer(keras.layers.Layer):
    """Mirror of ``nn.TransformerEncoderLayer(norm_first=True, dropout=0, activation=relu)``.

    ``x = x + SelfAttention(LayerNorm(x)); x = x + FF(LayerNorm(x))`` with a fused
    q/k/v projection (torch's ``in_proj``) and ``FF = Linear(ReLU(Linear(x)))``.

    Args:
        dim: Token width.
        heads: Attention heads.
        feedforward: Hidden width of the feed-forward block.
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    def __init__(self, dim: int, heads: int, feedforward: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if dim % heads:
            raise ValueError(f"Token width {dim} must be divisible by heads={heads}.")
        self.dim, self.heads = int(dim), int(heads)
        self.norm1 = keras.layers.LayerNormalization(epsilon=_LN_EPS)
        self.norm1.build((None, None, dim))
        self.norm2 = keras.layers.LayerNormalization(epsilon=_LN_EPS)
        self.norm2.build((None, None, dim))
        self.in_proj = _dense(3 * dim, dim)
        self.out_proj = _dense(dim, dim)
        self.linear1 = _dense(feedforward, dim, "relu")
        self.linear2 = _dense(dim, feedforward)

    def build(self, input_shape: Any) -> None:
        """Nothing to create: the sublayers are built in ``__init__``."""
        self.built = True

    def call(self, x: Any, ignore: Any = None) -> Any:
        """Run the layer.

        Args:
            x: ``(B, S, dim)`` tokens (S static).
            ignore: Optional ``(B, S)`` bool, True where a key token is masked out.

        Returns:
            ``(B, S, dim)`` tokens.
        """
        seq, head_dim = int(x.shape[1]), self.dim // self.heads

        def split_heads(t: Any) -> Any:
            return ops.transpose(ops.reshape(t, (-1, seq, self.heads, head_dim)), (0, 2, 1, 3))

        qkv = self.in_proj(self.norm1(x))
        q = split_heads(qkv[:, :, : self.dim]) * (1.0 / float(np.sqrt(head_dim)))
        k = split_heads(qkv[:, :, self.dim : 2 * self.dim])
        v = split_heads(qkv[:, :, 2 * self.dim :])
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))  # (B, H, S, S)
        if ignore is not None:
            scores = scores + ops.cast(ignore, "float32")[:, None, None, :] * _MASKED
        attended = ops.matmul(ops.softmax(scores, axis=-1), v)
        attended = ops.reshape(ops.transpose(attended, (0, 2, 1, 3)), (-1, seq, self.dim))
        x = x + self.out_proj(attended)
        return x + self.linear2(self.linear1(self.norm2(x)))

    def ties(self, name: str, layer: nn.TransformerEncoderLayer) -> list[Tie]:
        """Weight ties with a torch ``TransformerEncoderLayer``."""
        check = layer.activation_relu_or_gelu == 1 and layer.norm_first
        if not check or layer.self_attn.num_heads != self.heads:
            raise UnsupportedPolicyError(
                f"Only norm_first ReLU transformer layers with {self.heads} heads are mirrored."
            )
        attn = layer.self_attn
        return [
            *layernorm_ties(f"{name}.norm1", self.norm1, layer.norm1),
            Tie(
                f"{name}.self_attn.in_proj_weight",
                self.in_proj.kernel,
                (attn.in_proj_weight,),
                np.transpose,
                lambda k: (k.T,),
            ),
            direct_tie(f"{name}.self_attn.in_proj_bias", self.in_proj.bias, attn.in_proj_bias),
            *linear_ties(f"{name}.self_attn.out_proj", self.out_proj, attn.out_proj),
            *layernorm_ties(f"{name}.norm2", self.norm2, layer.norm2),
            *linear_ties(f"{name}.linear1", self.linear1, layer.linear1),
            *linear_ties(f"{name}.linear2", self.linear2, layer.linear2),
        ]


class KerasTextEncoder(keras.layers.Layer):
    """Keras mirror of :class:`~mbm_agent.encoding.encoders.TextEncoder` (``gru``, ``bow``, ``attention``).

    Args:
        template: The torch encoder whose architecture is mirrored (weights not copied).
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    spatial = False
    mirrors = TextEncoder
    #: The ``EncoderConfig.text_encoder`` kinds mirrored (a test checks each).
    kinds: tuple[str, ...] = ("gru", "bow", "attention")

    def __init__(self, template: TextEncoder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if template.kind not in self.kinds:
            raise UnsupportedPolicyError(
                f"The Keras twin mirrors text_encoder {list(self.kinds)}, not {template.kind!r}."
            )
        self.kind = template.kind
        self.vocab_size = template.vocab_size
        self.seq_len = template.seq_len
        word_dim = template.word_embedding.embedding_dim
        self.word_embedding = keras.layers.Embedding(self.vocab_size, word_dim)
        self.word_embedding.build((None,))
        self.output_dim = int(template.output_dim)
        if self.kind == "gru":
            # Unrolled over the fixed length: plain ops, no while loop, for TFLite.
            self.rnn = keras.layers.GRU(
                self.output_dim, return_sequences=True, reset_after=True, unroll=True
            )
            self.rnn.build((None, self.seq_len, word_dim))
        else:
            if self.kind == "attention":
                assert template.layer is not None
                self.position = self.add_weight(
                    shape=(self.seq_len + 1, word_dim), initializer="zeros", name="position"
                )
                self.summary = self.add_weight(
                    shape=(word_dim,), initializer="zeros", name="summary"
                )
                self.layer = KerasTransformerLayer(
                    word_dim, template.layer.self_attn.num_heads, 2 * word_dim
                )
            self.proj = _dense(self.output_dim, word_dim, "relu")

    def build(self, input_shape: Any) -> None:
        """Nothing to create: the sublayers are built in ``__init__``."""
        self.built = True

    def call(self, x: Any) -> Any:
        """``(B, L)`` token ids (0 = padding) -> ``(B, output_dim)``."""
        # Ids outside the vocabulary are unknown words, as in the torch encoder.
        outside = ops.logical_or(ops.less(x, 0), ops.greater_equal(x, self.vocab_size))
        unknown = min(UNKNOWN_TOKEN_ID, self.vocab_size - 1)
        ids = ops.cast(ops.where(outside, ops.full_like(x, unknown), x), "int32")
        valid = ops.not_equal(ids, 0)
        emb = self.word_embedding(ids)  # (B, L, D)
        if self.kind == "gru":
            out = self.rnn(emb)
            positions = ops.arange(1, self.seq_len + 1, dtype="int32")
            last = ops.max(ops.cast(valid, "int32") * positions, axis=1)  # 0 when all padding
            pick = ops.cast(ops.equal(positions[None, :], last[:, None]), "float32")
            return ops.sum(out * pick[:, :, None], axis=1)  # zeros when all padding
        if self.kind == "attention":
            summary = ops.zeros_like(emb[:, :1, :]) + self.summary  # (B, 1, D), dynamic batch
            tokens = ops.concatenate([summary, emb], axis=1) + self.position
            ignore = ops.concatenate([ops.zeros_like(valid[:, :1]), ops.logical_not(valid)], axis=1)
            return self.proj(self.layer(tokens, ignore)[:, 0])
        count = ops.maximum(ops.sum(ops.cast(valid, "float32"), axis=1, keepdims=True), 1.0)
        return self.proj(ops.sum(emb, axis=1) / count)

    def ties(self, name: str, template: TextEncoder) -> list[Tie]:
        """Weight ties with the torch encoder ``template``."""
        out = [
            direct_tie(
                f"{name}.word_embedding.weight",
                self.word_embedding.embeddings,
                template.word_embedding.weight,
            )
        ]
        if self.kind == "gru":
            assert template.rnn is not None
            return out + gru_ties(f"{name}.rnn", self.rnn, template.rnn)
        if self.kind == "attention":
            assert template.layer is not None
            out += [
                direct_tie(f"{name}.position", self.position, template.position),
                direct_tie(f"{name}.summary", self.summary, template.summary),
                *self.layer.ties(f"{name}.layer", template.layer),
            ]
        return out + linear_ties(f"{name}.proj.0", self.proj, _head_linear(template.proj))


class KerasAudioEncoder(keras.layers.Layer):
    """Keras mirror of :class:`~mbm_agent.encoding.encoders.AudioEncoder`.

    torch computes the non-overlapping patch conv as a reshape and a matrix
    product; here it is a ``Conv2D`` with stride = kernel = patch, the same function.

    Args:
        template: The torch encoder whose architecture is mirrored (weights not copied).
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    spatial = False
    mirrors = AudioEncoder

    def __init__(self, template: AudioEncoder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_channel = bool(template.add_channel)
        self.center = float(template.center)
        self.inv_half = float(template.inv_half)
        shape = template.input_spec.shape
        _, h, w = (1, *shape) if self.add_channel else shape
        self.patch = tuple(int(p) for p in template.patch)
        self.grid = tuple(int(g) for g in template.grid)
        channels = template.patch_conv.out_features
        self.patch_conv = keras.layers.Conv2D(channels, self.patch, strides=self.patch)
        self.patch_conv.build((None, h, w, template.in_channels))
        linear = _head_linear(template.head)
        self.head = _dense(linear.out_features, linear.in_features, "relu")
        self.output_dim = int(linear.out_features)

    def build(self, input_shape: Any) -> None:
        """Nothing to create: the sublayers are built in ``__init__``."""
        self.built = True

    def call(self, x: Any) -> Any:
        """``(B, [channels,] n_mels, n_frames)`` features -> ``(B, output_dim)``."""
        x = (ops.cast(x, "float32") - self.center) * self.inv_half
        x = ops.expand_dims(x, 3) if self.add_channel else ops.transpose(x, (0, 2, 3, 1))
        maps = ops.relu(self.patch_conv(x))  # (B, gh, gw, C): torch's (patch, C) order
        return self.head(ops.reshape(maps, (-1, int(np.prod(maps.shape[1:])))))

    def ties(self, name: str, template: AudioEncoder) -> list[Tie]:
        """Weight ties with the torch encoder ``template``."""
        c, (ph, pw) = template.in_channels, self.patch

        def to_keras(weight: np.ndarray) -> np.ndarray:
            return weight.reshape(-1, c, ph, pw).transpose(2, 3, 1, 0)

        def to_torch(kernel: np.ndarray) -> tuple[np.ndarray]:
            return (kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[3], -1),)

        return [
            Tie(
                f"{name}.patch_conv.weight",
                self.patch_conv.kernel,
                (template.patch_conv.weight,),
                to_keras,
                to_torch,
            ),
            direct_tie(f"{name}.patch_conv.bias", self.patch_conv.bias, template.patch_conv.bias),
            *linear_ties(f"{name}.head.0", self.head, _head_linear(template.head)),
        ]


class KerasVectorEncoder(keras.layers.Layer):
    """Keras mirror of :class:`~mbm_agent.encoding.encoders.VectorEncoder` (Box, Discrete, MultiDiscrete, MultiBinary).

    Args:
        template: The torch encoder whose architecture is mirrored (weights not copied).
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    spatial = False
    mirrors = VectorEncoder

    def __init__(self, template: VectorEncoder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind = template.kind
        self.n_in = int(template.n_in)
        self.start = int(template.start)
        self.nvec = list(template.nvec)
        if self.kind == "Box":
            self.center = template.center.cpu().numpy().astype(np.float32)
            self.inv_half = template.inv_half.cpu().numpy().astype(np.float32)
        if self.kind == "MultiDiscrete":
            self.md_start = template.md_start.cpu().numpy().astype(np.int32)
        self.linear = _dense(template.linear.out_features, self.n_in, "relu")
        self.output_dim = int(template.output_dim)

    def build(self, input_shape: Any) -> None:
        """Nothing to create: the sublayers are built in ``__init__``."""
        self.built = True

    def features(self, x: Any) -> Any:
        """The ``(B, n_in)`` float vector fed to the linear layer."""
        if self.kind == "Box":
            return (
                ops.reshape(ops.cast(x, "float32"), (-1, self.n_in)) - self.center
            ) * self.inv_half
        if self.kind == "Discrete":
            idx = ops.clip(ops.reshape(ops.cast(x, "int32"), (-1,)) - self.start, 0, self.n_in - 1)
            return _one_hot(idx, self.n_in)
        if self.kind == "MultiDiscrete":
            idx = ops.reshape(ops.cast(x, "int32"), (-1, len(self.nvec))) - self.md_start
            parts = [_one_hot(ops.clip(idx[:, i], 0, n - 1), n) for i, n in enumerate(self.nvec)]
            return ops.concatenate(parts, axis=1)
        return ops.reshape(ops.cast(x, "float32"), (-1, self.n_in))

    def call(self, x: Any) -> Any:
        """``(B, *shape)`` raw values -> ``(B, output_dim)``."""
        return self.linear(self.features(x))

    def ties(self, name: str, template: VectorEncoder) -> list[Tie]:
        """Weight ties with the torch encoder ``template``."""
        return linear_ties(f"{name}.linear", self.linear, template.linear)


def _one_hot(idx: Any, n: int) -> Any:
    return ops.cast(ops.equal(idx[:, None], ops.arange(n, dtype="int32")[None, :]), "float32")


KERAS_ENCODERS: dict[str, type[keras.layers.Layer]] = {
    "image": KerasImageEncoder,
    "symbolic_grid": KerasSymbolicGridEncoder,
    "text": KerasTextEncoder,
    "audio": KerasAudioEncoder,
    "vector": KerasVectorEncoder,
}
"""The Keras mirror of each modality's torch encoder, by modality name (``MODALITIES``)."""


# ---------------------------------------------------------------------------- fusion
def keras_fusion_class(mode: str) -> type[KerasFusion]:
    """The Keras layer that :data:`~mbm_agent.encoding.fusion.FUSION_MODES` names for ``mode``.

    Raises:
        UnsupportedPolicyError: An unknown mode, or a registry entry whose Keras
            layer cannot be imported or is not a :class:`KerasFusion`.
    """
    entry = FUSION_MODES.get(mode)
    if entry is None:
        raise UnsupportedPolicyError(
            f"Unknown fusion mode {mode!r}; known modes: {sorted(FUSION_MODES)}."
        )
    module, _, attr = entry.keras.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UnsupportedPolicyError(
            f"FUSION_MODES[{mode!r}] names the Keras layer {entry.keras!r}, which cannot be "
            f"imported ({exc}); the Keras twin has no mirror of this mode."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, KerasFusion)):
        raise UnsupportedPolicyError(
            f"FUSION_MODES[{mode!r}] names {entry.keras!r}, which is not a KerasFusion layer."
        )
    return cls


class KerasFusion(keras.layers.Layer):
    """Base of the Keras mirrors of the fusion modes (one subclass per mode).

    Args:
        template: The torch fusion module whose architecture is mirrored (weights not copied).
        **kwargs: Passed to ``keras.layers.Layer``.

    Attributes:
        uses_film: Whether :meth:`film` must condition the spatial encoders.
    """

    #: The torch module this layer mirrors.
    mirrors: type[Fusion] = Fusion

    def __init__(self, template: Fusion, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if type(template) is not self.mirrors:
            raise differ_error(
                f"{type(self).__name__} mirrors {self.mirrors.__name__}, not "
                f"{type(template).__name__}"
            )
        self.keys = list(template.keys)
        self.dims = dict(template.dims)
        self.uses_film = bool(template.uses_film)

    def build(self, input_shape: Any) -> None:
        """Nothing to create: the sublayers are built in ``__init__``."""
        self.built = True

    def film(self, conditions: Mapping[str, Any]) -> dict[str, list[tuple[Any, Any]]]:
        """FiLM ``(gamma, beta)`` per conv block of each spatial key (modes with ``uses_film``)."""
        raise NotImplementedError(f"{type(self).__name__} does not produce FiLM parameters.")

    def call(self, embeddings: Mapping[str, Any]) -> Any:
        """``(B, dims[key])`` per key -> ``(B, features_dim)`` (every modality present)."""
        raise NotImplementedError

    def ties(self, name: str, template: Fusion) -> list[Tie]:
        """Weight ties with the torch fusion module ``template``."""
        if type(template) is not self.mirrors or list(template.keys) != self.keys:
            raise differ_error(
                f"{name}: Keras {type(self).__name__} of {self.keys}, torch "
                f"{type(template).__name__} of {template.keys}"
            )
        if template.uses_film != self.uses_film:
            raise differ_error(f"{name}: FiLM is used on one side only")
        return self._ties(name, template)

    def _ties(self, name: str, template: Any) -> list[Tie]:
        raise NotImplementedError


class KerasConcatFusion(KerasFusion):
    """Keras mirror of :class:`~mbm_agent.encoding.fusion.ConcatFusion`."""

    mirrors = ConcatFusion

    def __init__(self, template: ConcatFusion, **kwargs: Any) -> None:
        super().__init__(template, **kwargs)
        self.head = _dense(template.features_dim, sum(self.dims.values()), "relu")

    def call(self, embeddings: Mapping[str, Any]) -> Any:
        """Concatenate in key order and project."""
        return self.head(ops.concatenate([embeddings[k] for k in self.keys], axis=1))

    def _ties(self, name: str, template: ConcatFusion) -> list[Tie]:
        return linear_ties(f"{name}.head.0", self.head, cast(nn.Linear, template.head[0]))


class KerasFilmFusion(KerasConcatFusion):
    """Keras mirror of :class:`~mbm_agent.encoding.fusion.FilmFusion`."""

    mirrors = FilmFusion

    def __init__(self, template: FilmFusion, **kwargs: Any) -> None:
        super().__init__(template, **kwargs)
        self.condition_keys: list[str] = []
        self.generators: dict[str, list[Any]] = {}
        if self.uses_film:
            self.condition_keys = list(template.condition_keys)
            cond_dim = sum(self.dims[k] for k in self.condition_keys)
            self.generators = {
                key: [
                    _dense(cast(nn.Linear, layer).out_features, cond_dim)
                    for layer in cast(nn.ModuleList, layers)
                ]
                for key, layers in template.generators.items()
            }
        # A flat list too: TensorFlow's checkpoint tracking does not see layers in a
        # dict of lists, and a SavedModel must track every variable it captures.
        self.generator_layers = [g for layers in self.generators.values() for g in layers]

    def film(self, conditions: Mapping[str, Any]) -> dict[str, list[tuple[Any, Any]]]:
        """FiLM ``(gamma, beta)`` per conv block of each spatial key."""
        cond = ops.concatenate([conditions[k] for k in self.condition_keys], axis=1)
        out: dict[str, list[tuple[Any, Any]]] = {}
        for key, layers in self.generators.items():
            params = []
            for layer in layers:
                both = layer(cond)
                half = int(both.shape[1]) // 2
                params.append((both[:, :half], both[:, half:]))
            out[key] = params
        return out

    # A mirror's template is always its own `mirrors` class (a FilmFusion here), which
    # narrows KerasConcatFusion's ConcatFusion.
    def _ties(self, name: str, template: FilmFusion) -> list[Tie]:  # type: ignore[override]
        out = super()._ties(name, template)
        for key, layers in self.generators.items():
            for i, layer in enumerate(layers):
                torch_layer = cast(nn.Linear, cast(nn.ModuleList, template.generators[key])[i])
                out += linear_ties(f"{name}.generators.{key}.{i}", layer, torch_layer)
        return out


class KerasAttentionFusion(KerasFusion):
    """Keras mirror of :class:`~mbm_agent.encoding.fusion.AttentionFusion`."""

    mirrors = AttentionFusion

    def __init__(self, template: AttentionFusion, **kwargs: Any) -> None:
        super().__init__(template, **kwargs)
        hidden = int(template.modality.shape[1])
        self.proj = {k: _dense(hidden, d) for k, d in self.dims.items()}
        self.modality = self.add_weight(
            shape=(len(self.keys), hidden), initializer="zeros", name="modality"
        )
        self.summary = self.add_weight(shape=(1, 1, hidden), initializer="zeros", name="summary")
        self.layer = KerasTransformerLayer(hidden, template.layer.self_attn.num_heads, 2 * hidden)
        self.norm = keras.layers.LayerNormalization(epsilon=_LN_EPS)
        self.norm.build((None, hidden))
        self.head = _dense(template.features_dim, hidden, "relu")

    def call(self, embeddings: Mapping[str, Any]) -> Any:
        """Attend from the summary token over the modality tokens."""
        tokens = ops.stack([self.proj[k](embeddings[k]) for k in self.keys], axis=1)
        tokens = tokens + self.modality
        summary = ops.zeros_like(tokens[:, :1, :]) + self.summary
        tokens = ops.concatenate([summary, tokens], axis=1)
        return self.head(self.norm(self.layer(tokens)[:, 0]))

    def _ties(self, name: str, template: AttentionFusion) -> list[Tie]:
        out: list[Tie] = []
        for key, layer in self.proj.items():
            out += linear_ties(f"{name}.proj.{key}", layer, cast(nn.Linear, template.proj[key]))
        return [
            *out,
            direct_tie(f"{name}.modality", self.modality, template.modality),
            direct_tie(f"{name}.summary", self.summary, template.summary),
            *self.layer.ties(f"{name}.layer", template.layer),
            *layernorm_ties(f"{name}.head.0", self.norm, cast(nn.LayerNorm, template.head[0])),
            *linear_ties(f"{name}.head.1", self.head, cast(nn.Linear, template.head[1])),
        ]


class KerasGatedFusion(KerasFusion):
    """Keras mirror of :class:`~mbm_agent.encoding.fusion.GatedFusion`."""

    mirrors = GatedFusion

    def __init__(self, template: GatedFusion, **kwargs: Any) -> None:
        super().__init__(template, **kwargs)
        hidden = cast(nn.Linear, template.proj[self.keys[0]]).out_features
        self.proj = {k: _dense(hidden, d) for k, d in self.dims.items()}
        self.gate = _dense(len(self.keys), sum(self.dims.values()))
        self.head = _dense(template.features_dim, hidden, "relu")

    def call(self, embeddings: Mapping[str, Any]) -> Any:
        """Gate, sum and project."""
        gates = ops.sigmoid(self.gate(ops.concatenate([embeddings[k] for k in self.keys], axis=1)))
        fused = None
        for i, key in enumerate(self.keys):
            part = gates[:, i : i + 1] * ops.tanh(self.proj[key](embeddings[key]))
            fused = part if fused is None else fused + part
        return self.head(fused)

    def _ties(self, name: str, template: GatedFusion) -> list[Tie]:
        out: list[Tie] = []
        for key, layer in self.proj.items():
            out += linear_ties(f"{name}.proj.{key}", layer, cast(nn.Linear, template.proj[key]))
        return [
            *out,
            *linear_ties(f"{name}.gate", self.gate, template.gate),
            *linear_ties(f"{name}.head.0", self.head, cast(nn.Linear, template.head[0])),
        ]


# ---------------------------------------------------------------------------- full encoder
class KerasMultimodalEncoder(keras.layers.Layer):
    """Keras mirror of :class:`~mbm_agent.encoding.multimodal.MultimodalEncoder`: raw inputs -> features.

    The architecture is resolved exactly as torch resolves it (a torch encoder
    is built as the template, or given), so the two always agree. Call it on a
    dict ``{key: (B, *space.shape) tensor}`` in the env's raw dtypes; keys the
    encoder ignores may be present. Every modality must be present (no masks).

    Args:
        observation_space: The environment's ``spaces.Dict``.
        config: Architecture settings; defaults to ``EncoderConfig()``.
            ``modality_dropout`` is not applied by the twin.
        modalities: Per-key modality declarations, as for ``MultimodalEncoder``.
        template: A raw-input torch encoder to mirror instead of building one
            from the three arguments above (which are then ignored).
        **kwargs: Passed to ``keras.layers.Layer`` (e.g. ``name``).

    Attributes:
        keys: Encoded keys, in order.
        spatial_keys: Keys with a FiLM-capable conv encoder (run last).
        flat_keys: The other keys.
        modalities: Resolved modality of every encoded key.
        features_dim: Output width.
    """

    def __init__(
        self,
        observation_space: spaces.Dict | None = None,
        config: EncoderConfig | None = None,
        modalities: Mapping[str, str] | None = None,
        *,
        template: MultimodalEncoder | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if template is None:
            if observation_space is None:
                raise ValueError("KerasMultimodalEncoder needs an observation_space or a template.")
            template = MultimodalEncoder(observation_space, config, modalities)
        self.observation_space = template.observation_space
        self.config = template.config
        self.keys = list(template.keys)
        self.spatial_keys = list(template.spatial_keys)
        self.flat_keys = list(template.flat_keys)
        self.modalities = dict(template.modalities)
        self.encoders: dict[str, Any] = {}
        for key in self.keys:
            keras_cls = KERAS_ENCODERS.get(self.modalities[key])
            if keras_cls is None:
                raise UnsupportedPolicyError(
                    f"The Keras twin has no mirror of the {self.modalities[key]!r} encoder "
                    f"(key {key!r}); export to 'onnx' or 'torchscript' instead."
                )
            torch_encoder = template.encoders[key]
            if type(torch_encoder) is not keras_cls.mirrors:
                raise UnsupportedPolicyError(
                    f"The Keras twin mirrors {keras_cls.mirrors.__name__} for {key!r}, not "
                    f"{type(torch_encoder).__name__}; export to 'onnx' or 'torchscript' instead."
                )
            self.encoders[key] = keras_cls(torch_encoder, name=f"{key}_encoder")
        self.fusion = keras_fusion_class(template.config.fusion)(template.fusion, name="fusion")
        self.features_dim = int(template.features_dim)

    def build(self, input_shape: Any) -> None:
        """Nothing to create: the sublayers are built in ``__init__``."""
        self.built = True

    def call(self, inputs: Mapping[str, Any]) -> Any:
        """``{key: (B, *shape)}`` raw observations -> ``(B, features_dim)``."""
        missing = [k for k in self.keys if k not in inputs]
        if missing:
            raise ValueError(f"Inputs lack key(s) {missing}; the encoder expects {self.keys}.")
        embeddings = {k: self.encoders[k](inputs[k]) for k in self.flat_keys}
        film = (
            self.fusion.film({k: embeddings[k] for k in self.flat_keys})
            if self.fusion.uses_film
            else {}
        )
        for key in self.spatial_keys:
            embeddings[key] = self.encoders[key](inputs[key], film.get(key))
        return self.fusion(embeddings)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, int]:
        """``(batch, features_dim)``."""
        return (None, self.features_dim)

    def ties(self, name: str, template: MultimodalEncoder) -> list[Tie]:
        """Weight ties with the torch encoder ``template`` (its ``missing`` embeddings excluded)."""
        if list(template.keys) != self.keys:
            raise differ_error(
                f"{name}: torch encodes keys {list(template.keys)}, Keras {self.keys}"
            )
        out: list[Tie] = []
        for key in self.keys:
            layer, torch_encoder = self.encoders[key], template.encoders[key]
            mirrored = KERAS_ENCODERS.get(template.modalities[key])
            same_kind = getattr(layer, "kind", None) == getattr(torch_encoder, "kind", None)
            if (
                type(layer) is not mirrored
                or type(torch_encoder) is not layer.mirrors
                or not same_kind
            ):
                raise differ_error(
                    f"{name}: key {key!r} has a {type(layer).__name__} in Keras but a "
                    f"{type(torch_encoder).__name__} (kind {getattr(torch_encoder, 'kind', '-')!r}) "
                    "in torch"
                )
            out += layer.ties(f"{name}.encoders.{key}", torch_encoder)
        return out + self.fusion.ties(f"{name}.fusion", template.fusion)
