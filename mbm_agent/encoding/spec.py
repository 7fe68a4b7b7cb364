"""What one observation key must look like when it reaches an encoder: :class:`InputSpec`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class InputSpec:
    """What one observation key must look like when it reaches an encoder.

    Attributes:
        shape: Per-sample shape (without the batch dimension).
        kind: ``"uint8"``, ``"int"`` (any integer dtype), ``"float"`` or ``"number"``
            (any real dtype, bool included).
        flexible_shape: Accept any per-sample shape with the same number of
            elements (SB3 sometimes adds a singleton axis to Discrete keys).
    """

    shape: tuple[int, ...]
    kind: str
    flexible_shape: bool = False

    def dummy(self, batch: int) -> Tensor:
        """A zero batch that satisfies this spec."""
        dtype = {
            "uint8": torch.uint8,
            "int": torch.int64,
            "float": torch.float32,
            "number": torch.float32,
        }[self.kind]
        return torch.zeros((batch, *self.shape), dtype=dtype)


def dtype_matches(dtype: torch.dtype, kind: str) -> bool:
    """Whether a tensor dtype is of the given :class:`InputSpec` kind."""
    if kind == "uint8":
        return dtype == torch.uint8
    if kind == "int":
        return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool
    if kind == "float":
        return dtype.is_floating_point
    return not dtype.is_complex
