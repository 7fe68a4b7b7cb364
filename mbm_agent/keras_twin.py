"""The Keras twin of :class:`~mbm_agent.inference.PolicyNetwork`: same function, TensorFlow graph.

Every torch encoder and fusion mode has a Keras 3 layer here computing the same
numbers from the same raw observations (uint8 frames, integer token ids, float
spectrograms): casts, ``/255`` and bounds scaling, one-hot encodings and channel
order all happen inside, as in torch. The layers are ordinary trainable Keras
layers, so the twin also serves behaviour cloning with ``model.fit``.

- :class:`KerasMultimodalEncoder`: dict of raw inputs -> ``(B, features_dim)``.
- :func:`build_keras_policy`: a functional ``keras.Model`` with one named input
  per observation key and outputs ``{"action", "logits", "value"}``, built from a
  :class:`PolicyNetwork` (architecture only) or from a space and settings.
- :func:`torch_to_keras` / :func:`keras_to_torch`: weights across, both ways.
- :func:`export_savedmodel` / :func:`export_tflite`: deployable files with a
  serving signature on the raw observation dict (dynamic batch), and
  :func:`load_savedmodel` / :func:`load_tflite` to run them on numpy.

Not mirrored: modality masks and modality dropout (the twin always sees every
modality; the torch ``missing`` embeddings are neither used nor copied).

Example::

    net = PolicyNetwork.from_agent(mbm_agent.load_agent("runs/my-run"))
    export_tflite(net, "policy.tflite")
    run = load_tflite("policy.tflite")
    out = run(obs)  # {"action": (B,) int64, "logits": (B, A), "value": (B,)}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from mbm_agent.encoding.config import EncoderConfig
from mbm_agent.encoding.encoders import (
    AudioEncoder,
    ImageEncoder,
    SpatialEncoder,
    SymbolicGridEncoder,
    TextEncoder,
    VectorEncoder,
)
from mbm_agent.encoding.fusion import AttentionFusion, ConcatFusion, FilmFusion, Fusion, GatedFusion
from mbm_agent.encoding.multimodal import MultimodalEncoder
from mbm_agent.inference import PolicyNetwork, UnsupportedPolicyError

try:
    import keras
    import tensorflow as tf
    from keras import ops
except ImportError as _exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "mbm_agent.keras_twin needs TensorFlow: pip install 'mbm-agent[tf]'"
    ) from _exc

__all__ = [
    "KerasMultimodalEncoder",
    "PolicyRunner",
    "build_keras_policy",
    "export_savedmodel",
    "export_tflite",
    "keras_to_torch",
    "load_savedmodel",
    "load_tflite",
    "torch_to_keras",
]

OUTPUTS: tuple[str, ...] = ("action", "logits", "value")
"""Output names of the policy model, the SavedModel signature and the TFLite signature."""

SIGNATURE = "serving_default"
_LN_EPS = 1e-5  # torch.nn.LayerNorm's default
_MASKED = -1e9  # additive attention mask; exp() of it underflows to exactly 0 in float32
_ACTIVATIONS = ("tanh", "relu", "elu", "gelu")


# ---------------------------------------------------------------------------- weight ties
@dataclass
class _Tie:
    """One Keras variable and the torch tensor(s) it mirrors, with the layout maps both ways."""

    name: str
    variable: Any
    tensors: tuple[torch.Tensor, ...]
    to_keras: Callable[..., np.ndarray]
    to_torch: Callable[[np.ndarray], tuple[np.ndarray, ...]]

    def load(self) -> None:
        value = self.to_keras(*(t.detach().cpu().numpy() for t in self.tensors))
        if tuple(value.shape) != tuple(self.variable.shape):
            raise ValueError(
                f"Weight {self.name}: torch gives shape {value.shape} after conversion, the Keras "
                f"variable has {tuple(self.variable.shape)}; the two networks differ."
            )
        self.variable.assign(value.astype(np.float32))

    def save(self) -> None:
        values = self.to_torch(_numpy(self.variable))
        with torch.no_grad():
            for tensor, value in zip(self.tensors, values, strict=True):
                if tuple(value.shape) != tuple(tensor.shape):
                    raise ValueError(
                        f"Weight {self.name}: the Keras model gives shape {value.shape}, the "
                        f"torch tensor has {tuple(tensor.shape)}; the two networks differ."
                    )
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(tensor.dtype))


def _numpy(variable: Any) -> np.ndarray:
    return np.asarray(variable.numpy())


def _differ(what: str) -> ValueError:
    return ValueError(f"{what}; the Keras model and the torch network differ in architecture.")


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _one(x: np.ndarray) -> tuple[np.ndarray]:
    return (x,)


def _direct(name: str, variable: Any, tensor: torch.Tensor) -> _Tie:
    return _Tie(name, variable, (tensor,), _identity, _one)


def _linear_ties(name: str, dense: Any, linear: nn.Linear) -> list[_Tie]:
    """``nn.Linear`` (out, in) weight <-> ``Dense`` (in, out) kernel."""
    ties = [_Tie(f"{name}.weight", dense.kernel, (linear.weight,), np.transpose, lambda k: (k.T,))]
    if linear.bias is not None:
        ties.append(_direct(f"{name}.bias", dense.bias, linear.bias))
    return ties


def _conv_ties(name: str, conv: Any, torch_conv: nn.Conv2d) -> list[_Tie]:
    """``nn.Conv2d`` OIHW weight <-> ``Conv2D`` HWIO kernel."""
    return [
        _Tie(
            f"{name}.weight",
            conv.kernel,
            (torch_conv.weight,),
            lambda w: w.transpose(2, 3, 1, 0),
            lambda k: (k.transpose(3, 2, 0, 1),),
        ),
        _direct(f"{name}.bias", conv.bias, torch_conv.bias),
    ]


def _flatten_linear_ties(
    name: str, dense: Any, linear: nn.Linear, chw: tuple[int, ...]
) -> list[_Tie]:
    """A linear layer reading a flattened feature map: torch flattens (C, H, W), Keras (H, W, C)."""
    c, h, w = chw

    def to_keras(weight: np.ndarray) -> np.ndarray:
        out = weight.shape[0]
        return weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)

    def to_torch(kernel: np.ndarray) -> tuple[np.ndarray]:
        out = kernel.shape[1]
        return (kernel.reshape(h, w, c, out).transpose(3, 2, 0, 1).reshape(out, c * h * w),)

    return [
        _Tie(f"{name}.weight", dense.kernel, (linear.weight,), to_keras, to_torch),
        _direct(f"{name}.bias", dense.bias, linear.bias),
    ]


def _layernorm_ties(name: str, norm: Any, torch_norm: nn.LayerNorm) -> list[_Tie]:
    return [
        _direct(f"{name}.weight", norm.gamma, torch_norm.weight),
        _direct(f"{name}.bias", norm.beta, torch_norm.bias),
    ]


def _gru_ties(name: str, gru: Any, torch_gru: nn.GRU) -> list[_Tie]:
    """Map torch GRU gates (r, z, n) to Keras GRU gates (z, r, h), ``reset_after=True``.

    Keras keeps the input and the recurrent bias as the two rows of one ``(2, 3H)`` bias.
    """
    units = torch_gru.hidden_size
    to_keras_order = np.concatenate(
        [np.arange(units, 2 * units), np.arange(units), np.arange(2 * units, 3 * units)]
    )
    to_torch_order = np.argsort(to_keras_order)
    cell = gru.cell

    def weight_to_keras(w: np.ndarray) -> np.ndarray:
        return w[to_keras_order].T

    def kernel_to_torch(k: np.ndarray) -> tuple[np.ndarray]:
        return (k.T[to_torch_order],)

    def bias_to_keras(b_ih: np.ndarray, b_hh: np.ndarray) -> np.ndarray:
        return np.stack([b_ih[to_keras_order], b_hh[to_keras_order]])

    def bias_to_torch(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return b[0][to_torch_order], b[1][to_torch_order]

    return [
        _Tie(
            f"{name}.weight_ih_l0",
            cell.kernel,
            (torch_gru.weight_ih_l0,),
            weight_to_keras,
            kernel_to_torch,
        ),
        _Tie(
            f"{name}.weight_hh_l0",
            cell.recurrent_kernel,
            (torch_gru.weight_hh_l0,),
            weight_to_keras,
            kernel_to_torch,
        ),
        _Tie(
            f"{name}.bias",
            cell.bias,
            (torch_gru.bias_ih_l0, torch_gru.bias_hh_l0),
            bias_to_keras,
            bias_to_torch,
        ),
    ]


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
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
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

    def ties(self, name: str, template: SpatialEncoder) -> list[_Tie]:
        if len(self.convs) != len(template.convs):
            raise _differ(f"{name}: {len(self.convs)} Keras convs, {len(template.convs)} torch")
        out: list[_Tie] = []
        for i, (conv, torch_conv) in enumerate(zip(self.convs, template.convs, strict=True)):
            if not isinstance(torch_conv, nn.Conv2d):
                raise _differ(f"{name}.convs.{i} is a {type(torch_conv).__name__}")
            out += _conv_ties(f"{name}.convs.{i}", conv, torch_conv)
        return out + _flatten_linear_ties(
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

    def __init__(self, template: ImageEncoder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
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

    def ties(self, name: str, template: ImageEncoder) -> list[_Tie]:
        """Weight ties with the torch encoder ``template``."""
        return self.trunk.ties(name, template)


class KerasSymbolicGridEncoder(keras.layers.Layer):
    """Keras mirror of :class:`~mbm_agent.encoding.encoders.SymbolicGridEncoder` (per-value embeddings, CNN).

    Args:
        template: The torch encoder whose architecture is mirrored (weights not copied).
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    spatial = True

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

    def ties(self, name: str, template: SymbolicGridEncoder) -> list[_Tie]:
        """Weight ties with the torch encoder ``template``."""
        return [
            _direct(
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

    def ties(self, name: str, layer: nn.TransformerEncoderLayer) -> list[_Tie]:
        """Weight ties with a torch ``TransformerEncoderLayer``."""
        check = layer.activation_relu_or_gelu == 1 and layer.norm_first
        if not check or layer.self_attn.num_heads != self.heads:
            raise UnsupportedPolicyError(
                f"Only norm_first ReLU transformer layers with {self.heads} heads are mirrored."
            )
        attn = layer.self_attn
        return [
            *_layernorm_ties(f"{name}.norm1", self.norm1, layer.norm1),
            _Tie(
                f"{name}.self_attn.in_proj_weight",
                self.in_proj.kernel,
                (attn.in_proj_weight,),
                np.transpose,
                lambda k: (k.T,),
            ),
            _direct(f"{name}.self_attn.in_proj_bias", self.in_proj.bias, attn.in_proj_bias),
            *_linear_ties(f"{name}.self_attn.out_proj", self.out_proj, attn.out_proj),
            *_layernorm_ties(f"{name}.norm2", self.norm2, layer.norm2),
            *_linear_ties(f"{name}.linear1", self.linear1, layer.linear1),
            *_linear_ties(f"{name}.linear2", self.linear2, layer.linear2),
        ]


class KerasTextEncoder(keras.layers.Layer):
    """Keras mirror of :class:`~mbm_agent.encoding.encoders.TextEncoder` (``gru``, ``bow``, ``attention``).

    Args:
        template: The torch encoder whose architecture is mirrored (weights not copied).
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    spatial = False

    def __init__(self, template: TextEncoder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if template.one_hot:
            raise UnsupportedPolicyError("The Keras twin takes token ids, not one-hot text.")
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
        ids = ops.clip(ops.cast(x, "int32"), 0, self.vocab_size - 1)
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

    def ties(self, name: str, template: TextEncoder) -> list[_Tie]:
        """Weight ties with the torch encoder ``template``."""
        out = [
            _direct(
                f"{name}.word_embedding.weight",
                self.word_embedding.embeddings,
                template.word_embedding.weight,
            )
        ]
        if self.kind == "gru":
            assert template.rnn is not None
            return out + _gru_ties(f"{name}.rnn", self.rnn, template.rnn)
        if self.kind == "attention":
            assert template.layer is not None
            out += [
                _direct(f"{name}.position", self.position, template.position),
                _direct(f"{name}.summary", self.summary, template.summary),
                *self.layer.ties(f"{name}.layer", template.layer),
            ]
        return out + _linear_ties(f"{name}.proj.0", self.proj, _head_linear(template.proj))


class KerasAudioEncoder(keras.layers.Layer):
    """Keras mirror of :class:`~mbm_agent.encoding.encoders.AudioEncoder`.

    torch computes the non-overlapping patch conv as a reshape and a matrix
    product; here it is a ``Conv2D`` with stride = kernel = patch, the same function.

    Args:
        template: The torch encoder whose architecture is mirrored (weights not copied).
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    spatial = False

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

    def ties(self, name: str, template: AudioEncoder) -> list[_Tie]:
        """Weight ties with the torch encoder ``template``."""
        c, (ph, pw) = template.in_channels, self.patch

        def to_keras(weight: np.ndarray) -> np.ndarray:
            return weight.reshape(-1, c, ph, pw).transpose(2, 3, 1, 0)

        def to_torch(kernel: np.ndarray) -> tuple[np.ndarray]:
            return (kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[3], -1),)

        return [
            _Tie(
                f"{name}.patch_conv.weight",
                self.patch_conv.kernel,
                (template.patch_conv.weight,),
                to_keras,
                to_torch,
            ),
            _direct(f"{name}.patch_conv.bias", self.patch_conv.bias, template.patch_conv.bias),
            *_linear_ties(f"{name}.head.0", self.head, _head_linear(template.head)),
        ]


class KerasVectorEncoder(keras.layers.Layer):
    """Keras mirror of :class:`~mbm_agent.encoding.encoders.VectorEncoder` (Box, Discrete, MultiDiscrete, MultiBinary).

    Args:
        template: The torch encoder whose architecture is mirrored (weights not copied).
        **kwargs: Passed to ``keras.layers.Layer``.
    """

    spatial = False

    def __init__(self, template: VectorEncoder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if template.sb3:
            raise UnsupportedPolicyError(
                "The Keras twin takes raw inputs, not SB3-preprocessed ones."
            )
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

    def ties(self, name: str, template: VectorEncoder) -> list[_Tie]:
        """Weight ties with the torch encoder ``template``."""
        return _linear_ties(f"{name}.linear", self.linear, template.linear)


def _one_hot(idx: Any, n: int) -> Any:
    return ops.cast(ops.equal(idx[:, None], ops.arange(n, dtype="int32")[None, :]), "float32")


_ENCODERS: list[tuple[type[nn.Module], type[keras.layers.Layer]]] = [
    (ImageEncoder, KerasImageEncoder),
    (SymbolicGridEncoder, KerasSymbolicGridEncoder),
    (TextEncoder, KerasTextEncoder),
    (AudioEncoder, KerasAudioEncoder),
    (VectorEncoder, KerasVectorEncoder),
]


# ---------------------------------------------------------------------------- fusion
_FUSION_NAMES: dict[type[Fusion], str] = {
    ConcatFusion: "concat",
    FilmFusion: "film",
    AttentionFusion: "attention",
    GatedFusion: "gated",
}


class KerasFusion(keras.layers.Layer):
    """Keras mirror of every fusion mode (``concat``, ``film``, ``attention``, ``gated``).

    Args:
        template: The torch fusion module whose architecture is mirrored (weights not copied).
        **kwargs: Passed to ``keras.layers.Layer``.

    Attributes:
        uses_film: Whether :meth:`film` must condition the spatial encoders.
    """

    def __init__(self, template: Fusion, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keys = list(template.keys)
        self.dims = dict(template.dims)
        self.mode = _FUSION_NAMES.get(type(template))
        if self.mode is None:
            raise UnsupportedPolicyError(
                f"The Keras twin has no mirror of {type(template).__name__}."
            )
        self.uses_film = bool(template.uses_film)
        total = sum(self.dims.values())
        if isinstance(template, ConcatFusion):  # concat and film
            self.head = _dense(template.features_dim, total, "relu")
            self.condition_keys: list[str] = []
            self.generators: dict[str, list[Any]] = {}
            if isinstance(template, FilmFusion) and self.uses_film:
                self.condition_keys = list(template.condition_keys)
                cond_dim = sum(self.dims[k] for k in self.condition_keys)
                self.generators = {
                    key: [_dense(layer.out_features, cond_dim) for layer in layers]  # type: ignore[union-attr]
                    for key, layers in template.generators.items()
                }
            # A flat list too: TensorFlow's checkpoint tracking does not see layers in a
            # dict of lists, and a SavedModel must track every variable it captures.
            self.generator_layers = [g for layers in self.generators.values() for g in layers]
        elif isinstance(template, AttentionFusion):
            hidden = int(template.modality.shape[1])
            self.proj = {k: _dense(hidden, d) for k, d in self.dims.items()}
            self.modality = self.add_weight(
                shape=(len(self.keys), hidden), initializer="zeros", name="modality"
            )
            self.summary = self.add_weight(
                shape=(1, 1, hidden), initializer="zeros", name="summary"
            )
            self.layer = KerasTransformerLayer(
                hidden, template.layer.self_attn.num_heads, 2 * hidden
            )
            self.norm = keras.layers.LayerNormalization(epsilon=_LN_EPS)
            self.norm.build((None, hidden))
            self.head = _dense(template.features_dim, hidden, "relu")
        else:
            assert isinstance(template, GatedFusion)
            hidden = int(template.proj[self.keys[0]].out_features)  # type: ignore[union-attr]
            self.proj = {k: _dense(hidden, d) for k, d in self.dims.items()}
            self.gate = _dense(len(self.keys), total)
            self.head = _dense(template.features_dim, hidden, "relu")

    def build(self, input_shape: Any) -> None:
        """Nothing to create: the sublayers are built in ``__init__``."""
        self.built = True

    def film(self, conditions: Mapping[str, Any]) -> dict[str, list[tuple[Any, Any]]]:
        """FiLM ``(gamma, beta)`` per conv block of each spatial key (``film`` mode)."""
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

    def call(self, embeddings: Mapping[str, Any]) -> Any:
        """``(B, dims[key])`` per key -> ``(B, features_dim)`` (every modality present)."""
        if self.mode in ("concat", "film"):
            return self.head(ops.concatenate([embeddings[k] for k in self.keys], axis=1))
        if self.mode == "attention":
            tokens = ops.stack([self.proj[k](embeddings[k]) for k in self.keys], axis=1)
            tokens = tokens + self.modality
            summary = ops.zeros_like(tokens[:, :1, :]) + self.summary
            tokens = ops.concatenate([summary, tokens], axis=1)
            return self.head(self.norm(self.layer(tokens)[:, 0]))
        gates = ops.sigmoid(self.gate(ops.concatenate([embeddings[k] for k in self.keys], axis=1)))
        fused = None
        for i, key in enumerate(self.keys):
            part = gates[:, i : i + 1] * ops.tanh(self.proj[key](embeddings[key]))
            fused = part if fused is None else fused + part
        return self.head(fused)

    def ties(self, name: str, template: Fusion) -> list[_Tie]:
        """Weight ties with the torch fusion module ``template``."""
        mode = _FUSION_NAMES.get(type(template))
        if mode != self.mode or list(template.keys) != self.keys:
            raise _differ(
                f"{name}: Keras {self.mode} fusion of {self.keys}, torch {mode} of {template.keys}"
            )
        if template.uses_film != self.uses_film:
            raise _differ(f"{name}: FiLM is used on one side only")
        out: list[_Tie] = []
        if isinstance(template, ConcatFusion):
            out += _linear_ties(f"{name}.head.0", self.head, template.head[0])
            for key, layers in self.generators.items():
                for i, layer in enumerate(layers):
                    torch_layer = template.generators[key][i]  # type: ignore[index]
                    out += _linear_ties(f"{name}.generators.{key}.{i}", layer, torch_layer)
            return out
        for key, layer in self.proj.items():
            out += _linear_ties(f"{name}.proj.{key}", layer, template.proj[key])  # type: ignore[index]
        if isinstance(template, AttentionFusion):
            return [
                *out,
                _direct(f"{name}.modality", self.modality, template.modality),
                _direct(f"{name}.summary", self.summary, template.summary),
                *self.layer.ties(f"{name}.layer", template.layer),
                *_layernorm_ties(f"{name}.head.0", self.norm, template.head[0]),
                *_linear_ties(f"{name}.head.1", self.head, template.head[1]),
            ]
        assert isinstance(template, GatedFusion)
        return [
            *out,
            *_linear_ties(f"{name}.gate", self.gate, template.gate),
            *_linear_ties(f"{name}.head.0", self.head, template.head[0]),
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
        if template.sb3_preprocessed:
            raise UnsupportedPolicyError(
                "The template encoder takes SB3-preprocessed inputs; build it with "
                "sb3_preprocessed=False (PolicyNetwork does)."
            )
        self.observation_space = template.observation_space
        self.config = template.config
        self.keys = list(template.keys)
        self.spatial_keys = list(template.spatial_keys)
        self.flat_keys = list(template.flat_keys)
        self.modalities = dict(template.modalities)
        self.encoders: dict[str, Any] = {}
        for key in self.keys:
            torch_encoder = template.encoders[key]
            for torch_cls, keras_cls in _ENCODERS:
                if type(torch_encoder) is torch_cls:
                    self.encoders[key] = keras_cls(torch_encoder, name=f"{key}_encoder")
                    break
            else:
                raise UnsupportedPolicyError(
                    f"The Keras twin has no mirror of {type(torch_encoder).__name__} (key {key!r})."
                )
        self.fusion = KerasFusion(template.fusion, name="fusion")
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

    def ties(self, name: str, template: MultimodalEncoder) -> list[_Tie]:
        """Weight ties with the torch encoder ``template`` (its ``missing`` embeddings excluded)."""
        if list(template.keys) != self.keys:
            raise _differ(f"{name}: torch encodes keys {list(template.keys)}, Keras {self.keys}")
        out: list[_Tie] = []
        for key in self.keys:
            layer, torch_encoder = self.encoders[key], template.encoders[key]
            mirrored = dict(_ENCODERS).get(type(torch_encoder))
            same_kind = getattr(layer, "kind", None) == getattr(torch_encoder, "kind", None)
            if type(layer) is not mirrored or not same_kind:
                raise _differ(
                    f"{name}: key {key!r} has a {type(layer).__name__} in Keras but a "
                    f"{type(torch_encoder).__name__} (kind {getattr(torch_encoder, 'kind', '-')!r}) "
                    "in torch"
                )
            out += layer.ties(f"{name}.encoders.{key}", torch_encoder)
        return out + self.fusion.ties(f"{name}.fusion", template.fusion)


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


@dataclass(frozen=True)
class _Arch:
    encoder: MultimodalEncoder
    critic_encoder: MultimodalEncoder | None
    actor: list[tuple[int, str | None]]
    critic: list[tuple[int, str | None]]
    n_actions: int
    kind: str


def _mlp_layers(module: nn.Module, what: str) -> list[tuple[int, str | None]]:
    """``Sequential(Linear, act, Linear, act, ...)`` -> ``[(units, activation name), ...]``."""
    from mbm_agent.sb3.policy import ACTIVATIONS

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
    )


def _build_model(arch: _Arch, name: str) -> Any:
    space = arch.encoder.observation_space
    inputs = {
        key: keras.Input(shape=tuple(space[key].shape), dtype=str(space[key].dtype), name=key)
        for key in arch.encoder.keys
    }
    encoder = KerasMultimodalEncoder(template=arch.encoder, name="mbm_encoder")
    features = encoder(inputs)

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
    return keras.Model(inputs, {"action": action, "logits": logits, "value": value}, name=name)


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
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"activation={activation!r} is not known; use one of {list(_ACTIVATIONS)}."
        )
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


def _policy_ties(model: Any, net: PolicyNetwork) -> list[_Tie]:
    try:
        encoder = model.get_layer("mbm_encoder")
        action_net = model.get_layer("mbm_action_net")
    except ValueError as exc:
        raise ValueError(
            "The Keras model was not built by build_keras_policy / torch_to_keras "
            f"(no layer mbm_encoder / mbm_action_net): {exc}"
        ) from None
    ties = encoder.ties("encoder", net.encoder)

    def mlp_ties(module: nn.Module, prefix: str, what: str) -> list[_Tie]:
        linears = _torch_linears(module)
        dense = [
            layer
            for layer in model.layers
            if layer.name.startswith(f"{prefix}_") and layer.name[len(prefix) + 1 :].isdigit()
        ]
        if len(dense) != len(linears):
            raise _differ(f"The torch {what} has {len(linears)} linear layers, Keras {len(dense)}")
        out: list[_Tie] = []
        for i, linear in enumerate(linears):
            out += _linear_ties(f"{what}.{i}", model.get_layer(f"{prefix}_{i}"), linear)
        return out

    ties += mlp_ties(net.actor, "mbm_actor", "actor")
    ties += _linear_ties("action_net", action_net, net.action_net)
    if net.kind == "actor_critic":
        assert net.value_net is not None
        ties += mlp_ties(net.critic, "mbm_critic", "critic")
        ties += _linear_ties("value_net", model.get_layer("mbm_value_net"), net.value_net)
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
        shapes = [tuple(v.shape) for v in tie.to_torch(_numpy(tie.variable))]
        expected = [tuple(t.shape) for t in tie.tensors]
        if shapes != expected:
            raise ValueError(
                f"Weight {tie.name}: the Keras model gives shape(s) {shapes}, the torch network "
                f"has {expected}; the two networks differ."
            )
    for tie in ties:
        tie.save()


# ---------------------------------------------------------------------------- export
def _as_model(net_or_model: PolicyNetwork | Any) -> Any:
    if isinstance(net_or_model, PolicyNetwork):
        return torch_to_keras(net_or_model)
    if isinstance(net_or_model, keras.Model):
        return net_or_model
    raise ValueError(
        f"Expected a PolicyNetwork or a keras.Model from build_keras_policy, got "
        f"{type(net_or_model).__name__}."
    )


def _require_tf_backend() -> None:
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"SavedModel/TFLite export needs the TensorFlow Keras backend, this process uses "
            f"{keras.backend.backend()!r}; set KERAS_BACKEND=tensorflow before importing keras."
        )


def _serving_module(model: Any) -> tuple[Any, Any]:
    """A ``tf.Module`` holding the model and its serving function on the raw input dict."""
    signature = {
        inp.name: tf.TensorSpec((None, *inp.shape[1:]), tf.as_dtype(inp.dtype), name=inp.name)
        for inp in model.inputs
    }
    module = tf.Module()
    # Track the underlying tf.Variables themselves (as keras.export does): tracked through
    # the Keras model object they are saved in a form the TFLite converter cannot freeze.
    module.variables_ = [v.value for v in model.variables]

    @tf.function(input_signature=[signature])
    def serve(obs: dict[str, Any]) -> dict[str, Any]:
        out = model(obs, training=False)
        return {k: out[k] for k in OUTPUTS}

    module.serve = serve
    return module, serve


def export_savedmodel(net_or_model: PolicyNetwork | Any, path: str | os.PathLike[str]) -> Path:
    """Write a TensorFlow SavedModel of the policy.

    The ``serving_default`` signature takes one tensor per observation key
    (named by the key, raw dtype, dynamic batch) and returns ``action`` (B,)
    int64, ``logits`` (B, A) float32 and ``value`` (B,) float32. Load it with
    :func:`load_savedmodel`, ``tf.saved_model.load`` or TF Serving.

    Args:
        net_or_model: A PolicyNetwork (converted with :func:`torch_to_keras`) or a
            Keras model from :func:`build_keras_policy` (e.g. trained with ``fit``).
        path: Output directory (created; files of an earlier export there are overwritten).

    Returns:
        The directory written.
    """
    _require_tf_backend()
    model = _as_model(net_or_model)
    module, serve = _serving_module(model)
    path = Path(path)
    tf.saved_model.save(module, str(path), signatures={SIGNATURE: serve})
    return path


def export_tflite(net_or_model: PolicyNetwork | Any, path: str | os.PathLike[str]) -> Path:
    """Write a float32 TFLite flatbuffer of the policy (builtin ops only).

    The ``serving_default`` signature has the same named inputs and outputs as
    :func:`export_savedmodel`. The batch dimension is dynamic: the runner
    resizes the input tensors to each call's batch (:func:`load_tflite` does).

    Args:
        net_or_model: A PolicyNetwork or a Keras model from :func:`build_keras_policy`.
        path: Output file (``.tflite``).

    Returns:
        The file written.

    Raises:
        RuntimeError: If the converter needs ops outside the TFLite builtins.
    """
    _require_tf_backend()
    module, serve = _serving_module(_as_model(net_or_model))
    # The converter names the signature of a single concrete function serving_default,
    # with the input and output names of the SavedModel one.
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], module
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        flatbuffer = converter.convert()
    except Exception as exc:  # the converter raises its own error types
        raise RuntimeError(f"TFLite conversion with builtin ops failed: {exc}") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flatbuffer)
    return path


# ---------------------------------------------------------------------------- runners
@dataclass(frozen=True)
class _InputSpec:
    shape: tuple[int, ...]
    dtype: np.dtype


class PolicyRunner:
    """Run an exported policy on a dict of numpy observations.

    Calling it with ``{key: (B, *shape) array}`` returns ``{"action", "logits",
    "value"}`` as numpy arrays. Inputs are checked by name (missing key, shape)
    and cast to the expected dtype when that loses no kind (e.g. int32 ids to
    int64); extra keys are ignored.

    Args:
        inputs: Expected per-sample shape and dtype of every input, by name.
        run: Function from the checked input dict to the output dict.
        source: Description of the file, for error messages.

    Attributes:
        inputs: Expected per-sample shape and dtype of every input, by name.
    """

    def __init__(
        self,
        inputs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
        run: Callable[[dict[str, np.ndarray]], Mapping[str, Any]],
        source: str,
    ) -> None:
        self.inputs = {k: _InputSpec(tuple(s), np.dtype(d)) for k, (s, d) in inputs.items()}
        self._run = run
        self.source = source

    def check(self, obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate and convert the observation dict.

        Raises:
            ValueError: Naming the key and the expected shape / dtype.
        """
        if not isinstance(obs, Mapping):
            raise ValueError(f"Observations must be a dict of arrays keyed by {list(self.inputs)}.")
        out: dict[str, np.ndarray] = {}
        batch: int | None = None
        for key, spec in self.inputs.items():
            expected = f"a {spec.dtype} array of shape (B, *{spec.shape})"
            if key not in obs:
                raise ValueError(f"obs lacks key {key!r}: {self.source} expects {expected}.")
            x = np.asarray(obs[key])
            if spec.shape == () and x.ndim == 2 and x.shape[1] == 1:
                x = x.reshape(-1)
            if x.shape[1:] != spec.shape or x.ndim != len(spec.shape) + 1:
                hint = " It lacks the batch dimension." if x.shape == spec.shape else ""
                raise ValueError(f"obs[{key!r}] has shape {x.shape}, expected {expected}.{hint}")
            if x.dtype != spec.dtype:
                if not np.can_cast(x.dtype, spec.dtype, casting="same_kind"):
                    raise ValueError(f"obs[{key!r}] has dtype {x.dtype}, expected {expected}.")
                x = x.astype(spec.dtype)
            if batch is None:
                batch = x.shape[0]
            elif x.shape[0] != batch:
                raise ValueError(f"obs[{key!r}] has batch size {x.shape[0]}, other keys {batch}.")
            out[key] = np.ascontiguousarray(x)
        return out

    def __call__(self, obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``{key: (B, *shape)}`` -> ``{"action": (B,), "logits": (B, A), "value": (B,)}``."""
        out = self._run(self.check(obs))
        return {k: np.asarray(out[k]) for k in OUTPUTS}


def load_savedmodel(path: str | os.PathLike[str]) -> PolicyRunner:
    """Load a SavedModel written by :func:`export_savedmodel` as a numpy runner.

    Args:
        path: The SavedModel directory.

    Returns:
        A :class:`PolicyRunner`.
    """
    loaded = tf.saved_model.load(str(path))
    if SIGNATURE not in loaded.signatures:
        raise ValueError(
            f"{path} has no {SIGNATURE!r} signature; was it written by export_savedmodel?"
        )
    fn = loaded.signatures[SIGNATURE]
    specs = fn.structured_input_signature[1]
    inputs = {
        name: (tuple(spec.shape[1:]), spec.dtype.as_numpy_dtype) for name, spec in specs.items()
    }

    def run(obs: dict[str, np.ndarray]) -> dict[str, Any]:
        out = fn(**{k: tf.constant(v) for k, v in obs.items()})
        return {k: v.numpy() for k, v in out.items()}

    runner = PolicyRunner(inputs, run, f"the SavedModel {path}")
    runner._loaded = loaded  # type: ignore[attr-defined]  # keep the variables alive
    return runner


def load_tflite(path: str | os.PathLike[str], num_threads: int | None = None) -> PolicyRunner:
    """Load a TFLite file written by :func:`export_tflite` as a numpy runner.

    Uses ``ai_edge_litert`` when installed, else ``tf.lite.Interpreter``. Inputs
    and outputs are matched by signature name; the input tensors are resized to
    each call's batch.

    Args:
        path: The ``.tflite`` file.
        num_threads: Interpreter threads (None: the runtime's default).

    Returns:
        A :class:`PolicyRunner`.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    if SIGNATURE not in interpreter.get_signature_list():
        raise ValueError(f"{path} has no {SIGNATURE!r} signature; was it written by export_tflite?")
    runner_fn = interpreter.get_signature_runner(SIGNATURE)
    details = runner_fn.get_input_details()
    inputs = {
        name: (tuple(int(s) for s in d["shape_signature"][1:]), np.dtype(d["dtype"]))
        for name, d in details.items()
    }

    def run(obs: dict[str, np.ndarray]) -> dict[str, Any]:
        return runner_fn(**obs)

    runner = PolicyRunner(inputs, run, f"the TFLite model {path}")
    runner._interpreter = interpreter  # type: ignore[attr-defined]
    return runner
