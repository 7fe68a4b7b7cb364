"""What a policy's inputs must look like, and the one check every runtime runs.

:class:`InputSpec` describes one observation key as the env emits it: its
per-sample shape and the dtype exports take (``uint8`` frames, ``int64`` ids,
``float32`` numbers). :func:`check_observation` checks an observation dict
against specs by key and, for numpy inputs, converts it to exactly those dtypes.
The torch encoder (:class:`~mbm_agent.encoding.multimodal.MultimodalEncoder`, on
tensors), the exported-policy runtime (:class:`~mbm_agent.deploy.runtime.ExportedPolicy`)
and the Keras twin's runner (:class:`~mbm_agent.deploy.keras.runtime.PolicyRunner`)
all call it, so one observation is accepted, converted or refused the same way,
with the same message, everywhere.

What a dtype accepts:

- ``uint8`` (frames): uint8 only. Float frames are refused with the fix: the
  model scales frames itself, and a silent cast of frames already divided by 255
  would hand it a black image.
- an integer dtype (token ids, grids, discrete values): any integer dtype that
  converts without loss (``np.can_cast(..., "safe")``).
- a float dtype: any real number (float, integer or bool), converted.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from mbm_agent.encoding.values import float_frames_message

#: JSON form of one input: ``{"name", "dtype", "shape"}`` (``export.json``'s ``inputs``).
SpecJSON = dict[str, Any]


@dataclass(frozen=True)
class InputSpec:
    """What one observation key must look like when it reaches a policy.

    Attributes:
        shape: Per-sample shape (without the batch dimension).
        dtype: Numpy name of the dtype the policy takes (``"uint8"``, ``"int64"``,
            ``"float32"``); what else is accepted and converted is in the module docs.
        flexible_shape: Accept any per-sample shape with the same number of
            elements (a Discrete key arrives as ``(B,)`` or ``(B, 1)``).
        name: The observation key (empty in a per-key encoder, which does not know
            its key; :attr:`MultimodalEncoder.input_specs` names them).
    """

    shape: tuple[int, ...]
    dtype: str
    flexible_shape: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        np.dtype(self.dtype)  # a bad name fails here, not at the first observation

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """:attr:`dtype` as a numpy dtype."""
        return np.dtype(self.dtype)

    def dummy(self, batch: int) -> Tensor:
        """A zero batch that satisfies this spec."""
        return torch.from_numpy(np.zeros((batch, *self.shape), dtype=self.numpy_dtype))

    def describe(self) -> str:
        """``"a uint8 array of shape (B, 64, 64, 3)"``, for messages."""
        article = "an" if self.dtype.startswith("int") else "a"
        if self.flexible_shape:
            size = int(np.prod(self.shape))
            return f"{article} {self.dtype} array of shape (B, ...) with {size} values per sample"
        return f"{article} {self.dtype} array of shape (B, *{self.shape})"

    def to_json(self) -> SpecJSON:
        """JSON form (one entry of ``export.json``'s ``inputs``)."""
        out: SpecJSON = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.flexible_shape:
            out["flexible_shape"] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InputSpec:
        """Inverse of :meth:`to_json`."""
        return cls(
            tuple(int(s) for s in data["shape"]),
            str(data["dtype"]),
            bool(data.get("flexible_shape", False)),
            str(data["name"]),
        )


class CheckedObservation(NamedTuple):
    """What :func:`check_observation` returns.

    Attributes:
        values: The inputs by key, in the specs' order (absent keys left out); numpy
            inputs converted to the spec's dtype, C-contiguous and batched.
        batch: The batch size, or None when every key is absent.
        batched: Whether the observation had a batch dimension (always True for tensors).
    """

    values: dict[str, Any]
    batch: int | None
    batched: bool


def _dtype_of(x: np.ndarray | Tensor) -> np.dtype[Any] | None:
    """The numpy dtype of an array or tensor (None: a tensor dtype numpy lacks, e.g. bfloat16)."""
    if isinstance(x, Tensor):
        try:
            return torch.empty((), dtype=x.dtype).numpy().dtype
        except TypeError:
            return None
    return x.dtype


def _dtype_error(key: str, spec: InputSpec, x: np.ndarray | Tensor) -> ValueError | None:
    """Why ``x``'s dtype does not fit ``spec``, or None when it does (maybe after a cast)."""
    want = spec.numpy_dtype
    got = _dtype_of(x)
    if got == want:
        return None
    where = f"obs[{key!r}] has dtype {x.dtype}, expected {want} ({spec.describe()})"
    if got is None or not any(np.issubdtype(got, k) for k in (np.number, np.bool_)):
        return ValueError(f"{where}: give real numbers.")
    if want == np.uint8:
        if np.issubdtype(got, np.floating):  # the torch agent's words too
            return ValueError(float_frames_message(key, got))
        return ValueError(f"{where}: convert the frames with x.astype(np.uint8).")
    if np.issubdtype(want, np.integer):
        if np.issubdtype(got, np.integer) and np.can_cast(got, want, casting="safe"):
            return None
        hint = " (token ids from Vocabulary.encode)" if key == "text" else ""
        return ValueError(f"{where}: give integers{hint} that fit in {want}.")
    return None  # a float input takes any real number


def _shape_error(key: str, spec: InputSpec, shape: tuple[int, ...], single: bool) -> ValueError:
    if single:
        one = spec.shape if spec.shape else "() (a scalar)"
        message = (
            f"obs[{key!r}] has shape {shape}, expected {one} for one observation or "
            f"(B, {', '.join(str(s) for s in spec.shape)}) for a batch."
        )
    else:
        message = f"obs[{key!r}] has shape {shape}, expected {spec.describe()}."
        if shape == spec.shape:
            message += " It lacks the batch dimension; add one, e.g. x[None]."
    n = len(spec.shape)
    if n and len(shape) in (n, n + 1) and sorted(shape[-n:]) == sorted(spec.shape):
        message += (
            " The axes look permuted (channel-first vs channel-last); pass what the env emits "
            "(or build the policy from the space you feed)."
        )
    return ValueError(message)


def _batching(key: str, spec: InputSpec, shape: tuple[int, ...], single: bool) -> bool:
    """Whether ``shape`` is a batch of the spec's samples (else one sample, if allowed)."""
    if single and shape == spec.shape:
        return False
    if len(shape) == len(spec.shape) + 1 and shape[1:] == spec.shape:
        return True
    if spec.flexible_shape and len(shape) >= 1 and np.prod(shape[1:]) == np.prod(spec.shape):
        return True
    raise _shape_error(key, spec, shape, single)


def check_observation(
    specs: Sequence[InputSpec],
    obs: object,
    *,
    tensors: bool = False,
    single: bool = False,
    ignored: Collection[str] | None = (),
    absent: Collection[str] = (),
    missing_hint: str | Callable[[list[str]], str] = "Pass the observation dict the env emits.",
) -> CheckedObservation:
    """Check an observation dict against input specs (and convert numpy inputs).

    Args:
        specs: What each key must look like (named), in input order.
        obs: The observation: arrays (or, with ``tensors``, torch tensors) by key.
        tensors: The values must be torch tensors (the torch encoder); they are
            checked, never converted (the encoders cast them). Otherwise values are
            turned into numpy arrays of exactly the spec's dtype, batched and
            C-contiguous.
        single: Accept one observation without a batch dimension (every key alike).
        ignored: Extra keys that are allowed and dropped; None drops any extra key.
        absent: Keys that may be left out (e.g. modalities masked as missing).
        missing_hint: The fix a message about missing keys ends with (or a function of
            the missing keys that returns it).

    Returns:
        The checked values, the batch size and whether ``obs`` was batched.

    Raises:
        ValueError: Naming the key, what it must look like, what it is and the likely fix.
    """
    by_name = {spec.name: spec for spec in specs}
    names = list(by_name)
    if not isinstance(obs, Mapping):
        raise ValueError(
            f"obs must be a dict of {'tensors' if tensors else 'arrays'} keyed {names}, got "
            f"{type(obs).__name__}."
        )
    missing = [k for k in names if k not in obs and k not in absent]
    unknown = [] if ignored is None else [k for k in obs if k not in by_name and k not in ignored]
    if missing or unknown:
        parts = []
        if missing:
            plural = "s" if len(missing) > 1 else ""
            expected = ", ".join(f"{k!r} ({by_name[k].describe()})" for k in missing)
            parts.append(f"lacks key{plural} {expected}")
        if unknown:
            parts.append(f"has key(s) {unknown} it was not built for")
        extra = f" (keys it ignores: {sorted(ignored)})" if ignored else ""
        if not missing:
            fix = "Drop those keys, or build the policy from this observation space."
        else:
            fix = missing_hint(missing) if callable(missing_hint) else missing_hint
        raise ValueError(f"obs {' and '.join(parts)}; the policy takes {names}{extra}. {fix}")
    values: dict[str, Any] = {}
    batched: bool | None = None
    batch: int | None = None
    first: str | None = None
    for key, spec in by_name.items():
        if key not in obs:
            continue
        x = obs[key]
        if tensors:
            if not isinstance(x, Tensor):
                raise ValueError(
                    f"obs[{key!r}] is a {type(x).__name__}, expected a torch.Tensor "
                    f"({spec.describe()}); convert with torch.as_tensor."
                )
        else:
            x = np.asarray(x)
        error = _dtype_error(key, spec, x)
        if error is not None:
            raise error
        shape = tuple(int(s) for s in x.shape)
        this_batched = _batching(key, spec, shape, single)
        if batched is None:
            batched, first = this_batched, key
        elif this_batched != batched:
            raise ValueError(
                f"obs[{key!r}] is {'batched' if this_batched else 'a single sample'} (shape "
                f"{shape}) but obs[{first!r}] is {'batched' if batched else 'a single sample'}; "
                "give every key the same leading batch dimension, or none."
            )
        size = shape[0] if this_batched else 1
        if batch is None:
            batch = size
        elif size != batch:
            raise ValueError(
                f"obs[{key!r}] has batch size {size} but obs[{first!r}] has {batch}; every key "
                "needs one row per observation."
            )
        if not tensors:
            x = np.ascontiguousarray(x.astype(spec.numpy_dtype, copy=False)).reshape(
                size, *spec.shape
            )
            if not x.flags.writeable:
                x = x.copy()
        values[key] = x
    return CheckedObservation(values, batch, True if batched is None else batched)
