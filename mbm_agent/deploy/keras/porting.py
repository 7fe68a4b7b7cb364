"""Weight porting between torch and Keras: one :class:`Tie` per Keras variable.

A tie pairs a Keras variable with the torch tensor(s) it mirrors and maps the
layout both ways (``nn.Linear``'s (out, in) weight and ``Dense``'s (in, out)
kernel, OIHW and HWIO convolutions, GRU gate order, flattened feature maps).
Each Keras layer of :mod:`~mbm_agent.deploy.keras.layers` lists its ties;
:func:`~mbm_agent.deploy.keras.policy.torch_to_keras` and
:func:`~mbm_agent.deploy.keras.policy.keras_to_torch` load or save them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn


@dataclass
class Tie:
    """One Keras variable and the torch tensor(s) it mirrors, with the layout maps both ways."""

    name: str
    variable: Any
    tensors: tuple[torch.Tensor, ...]
    to_keras: Callable[..., np.ndarray]
    to_torch: Callable[[np.ndarray], tuple[np.ndarray, ...]]

    def load(self) -> None:
        """Copy the torch tensor(s) into the Keras variable."""
        value = self.to_keras(*(t.detach().cpu().numpy() for t in self.tensors))
        if tuple(value.shape) != tuple(self.variable.shape):
            raise ValueError(
                f"Weight {self.name}: torch gives shape {value.shape} after conversion, the Keras "
                f"variable has {tuple(self.variable.shape)}; the two networks differ."
            )
        self.variable.assign(value.astype(np.float32))

    def save(self) -> None:
        """Copy the Keras variable into the torch tensor(s)."""
        values = self.to_torch(variable_numpy(self.variable))
        with torch.no_grad():
            for tensor, value in zip(self.tensors, values, strict=True):
                if tuple(value.shape) != tuple(tensor.shape):
                    raise ValueError(
                        f"Weight {self.name}: the Keras model gives shape {value.shape}, the "
                        f"torch tensor has {tuple(tensor.shape)}; the two networks differ."
                    )
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(tensor.dtype))


def variable_numpy(variable: Any) -> np.ndarray:
    """A Keras variable's value as a numpy array."""
    return np.asarray(variable.numpy())


def differ_error(what: str) -> ValueError:
    """The error for a Keras model and a torch network whose architectures differ."""
    return ValueError(f"{what}; the Keras model and the torch network differ in architecture.")


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _one(x: np.ndarray) -> tuple[np.ndarray]:
    return (x,)


def direct_tie(name: str, variable: Any, tensor: torch.Tensor) -> Tie:
    """A variable and a tensor of the same layout."""
    return Tie(name, variable, (tensor,), _identity, _one)


def linear_ties(name: str, dense: Any, linear: nn.Linear) -> list[Tie]:
    """``nn.Linear`` (out, in) weight <-> ``Dense`` (in, out) kernel."""
    ties = [Tie(f"{name}.weight", dense.kernel, (linear.weight,), np.transpose, lambda k: (k.T,))]
    if linear.bias is not None:
        ties.append(direct_tie(f"{name}.bias", dense.bias, linear.bias))
    return ties


def conv_ties(name: str, conv: Any, torch_conv: nn.Conv2d) -> list[Tie]:
    """``nn.Conv2d`` OIHW weight <-> ``Conv2D`` HWIO kernel."""
    return [
        Tie(
            f"{name}.weight",
            conv.kernel,
            (torch_conv.weight,),
            lambda w: w.transpose(2, 3, 1, 0),
            lambda k: (k.transpose(3, 2, 0, 1),),
        ),
        # Our convs all have a bias (nn.Conv2d types it Optional).
        direct_tie(f"{name}.bias", conv.bias, cast(torch.Tensor, torch_conv.bias)),
    ]


def flatten_linear_ties(
    name: str, dense: Any, linear: nn.Linear, chw: tuple[int, ...]
) -> list[Tie]:
    """A linear layer reading a flattened feature map: torch flattens (C, H, W), Keras (H, W, C)."""
    c, h, w = chw

    def to_keras(weight: np.ndarray) -> np.ndarray:
        out = weight.shape[0]
        return weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)

    def to_torch(kernel: np.ndarray) -> tuple[np.ndarray]:
        out = kernel.shape[1]
        return (kernel.reshape(h, w, c, out).transpose(3, 2, 0, 1).reshape(out, c * h * w),)

    return [
        Tie(f"{name}.weight", dense.kernel, (linear.weight,), to_keras, to_torch),
        direct_tie(f"{name}.bias", dense.bias, linear.bias),
    ]


def layernorm_ties(name: str, norm: Any, torch_norm: nn.LayerNorm) -> list[Tie]:
    """``nn.LayerNorm`` weight and bias <-> ``LayerNormalization`` gamma and beta."""
    return [
        direct_tie(f"{name}.weight", norm.gamma, torch_norm.weight),
        direct_tie(f"{name}.bias", norm.beta, torch_norm.bias),
    ]


def gru_ties(name: str, gru: Any, torch_gru: nn.GRU) -> list[Tie]:
    """Map torch GRU gates (r, z, n) to Keras GRU gates (z, r, h), ``reset_after=True``.

    Keras keeps the input and the recurrent bias as the two rows of one ``(2, 3H)`` bias.
    """
    return _gate_ties(
        name,
        gru.cell,
        torch_gru.hidden_size,
        # nn.GRU's per-layer parameters are dynamic attributes (typed Tensor | Module).
        cast(
            tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
            (
                torch_gru.weight_ih_l0,
                torch_gru.weight_hh_l0,
                torch_gru.bias_ih_l0,
                torch_gru.bias_hh_l0,
            ),
        ),
        ("weight_ih_l0", "weight_hh_l0"),
    )


def gru_cell_ties(name: str, cell: Any, torch_cell: nn.GRUCell) -> list[Tie]:
    """``nn.GRUCell`` <-> ``keras.layers.GRUCell(reset_after=True)``, as :func:`gru_ties`."""
    return _gate_ties(
        name,
        cell,
        torch_cell.hidden_size,
        (torch_cell.weight_ih, torch_cell.weight_hh, torch_cell.bias_ih, torch_cell.bias_hh),
        ("weight_ih", "weight_hh"),
    )


def _gate_ties(
    name: str,
    cell: Any,
    units: int,
    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    weight_names: tuple[str, str],
) -> list[Tie]:
    """A Keras GRU cell's kernel, recurrent kernel and bias and torch's (w_ih, w_hh, b_ih, b_hh)."""
    to_keras_order = np.concatenate(
        [np.arange(units, 2 * units), np.arange(units), np.arange(2 * units, 3 * units)]
    )
    to_torch_order = np.argsort(to_keras_order)
    weight_ih, weight_hh, bias_ih, bias_hh = tensors

    def weight_to_keras(w: np.ndarray) -> np.ndarray:
        return w[to_keras_order].T

    def kernel_to_torch(k: np.ndarray) -> tuple[np.ndarray]:
        return (k.T[to_torch_order],)

    def bias_to_keras(b_ih: np.ndarray, b_hh: np.ndarray) -> np.ndarray:
        return np.stack([b_ih[to_keras_order], b_hh[to_keras_order]])

    def bias_to_torch(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return b[0][to_torch_order], b[1][to_torch_order]

    return [
        Tie(
            f"{name}.{weight_names[0]}", cell.kernel, (weight_ih,), weight_to_keras, kernel_to_torch
        ),
        Tie(
            f"{name}.{weight_names[1]}",
            cell.recurrent_kernel,
            (weight_hh,),
            weight_to_keras,
            kernel_to_torch,
        ),
        Tie(f"{name}.bias", cell.bias, (bias_ih, bias_hh), bias_to_keras, bias_to_torch),
    ]
