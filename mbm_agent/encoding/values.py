"""One rule for the observation values every runtime refuses: :func:`check_values`.

The torch agent (:meth:`mbm_agent.training.agent.Agent.act`) and every export's
runtime (:class:`mbm_agent.deploy.runtime.ExportedPolicy`: ONNX, TorchScript,
SavedModel, TFLite) call it on each input before the model runs, so they all
refuse the same inputs with the same message instead of each backend doing
something of its own (a NaN gave action 0 in some formats and 2 in others);
the torch encoder refuses an empty batch with the same message:

- float frames for a uint8 image input (frames scaled to [0, 1] would play at chance);
- NaN or infinite values;
- an empty batch.

It also holds :func:`is_finite_number`, the one test of a numeric config value or saved
score, here in the lowest layer so that every part of the package can use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeGuard

import numpy as np
from numpy.typing import NDArray


def is_finite_number(value: Any) -> TypeGuard[int | float]:
    """Whether ``value`` is a finite real number: an int or float, not a bool, NaN or inf.

    The one test behind every numeric config value and saved score the package checks
    (coefficients, success rates, checkpoint fields).
    """
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def float_frames_message(key: str, dtype: Any) -> str:
    """Why float frames are refused for a uint8 image input, and the fix (every runtime's words)."""
    return (
        f"obs[{key!r}] has dtype {np.dtype(dtype)}, expected uint8: this input takes the raw "
        "frames the env emits (uint8, 0-255); the model scales them itself. Frames holding "
        "0-255 values: x.astype(np.uint8); frames scaled to [0, 1]: "
        "(x * 255).round().astype(np.uint8); frames that are floats by nature: give the key "
        "a float Box space (e.g. Box(0, 1, shape, float32)) when training."
    )


def empty_batch_message(key: str, shape: tuple[int, ...]) -> str:
    """The one message for a batch of no observations (the encoder's too)."""
    return f"obs[{key!r}] is a batch of 0 observations (shape {shape}); pass at least one."


def check_values(
    key: str, x: NDArray[Any], dtype: Any, shape: tuple[int, ...] | None = None
) -> None:
    """Refuse what no runtime acts on (see the module doc).

    Args:
        key: The observation key, for the message.
        x: One observation or a batch of them for that key.
        dtype: The dtype the model takes for that key.
        shape: The per-observation shape, when known (tells a batch from one observation).

    Raises:
        ValueError: Float frames for a uint8 input, NaN or infinite values, or an
            empty batch; the message names the key and the fix.
    """
    want = np.dtype(dtype)
    if want == np.uint8 and np.issubdtype(x.dtype, np.floating):
        raise ValueError(float_frames_message(key, x.dtype))
    if shape is not None and x.ndim == len(shape) + 1 and x.shape[0] == 0:
        raise ValueError(empty_batch_message(key, tuple(x.shape)))
    if np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.complexfloating):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise ValueError(
                f"obs[{key!r}] holds {bad} NaN or infinite value(s); observations must be "
                "finite (no format gives a meaningful action for them). Fix the sensor or "
                "feature pipeline, or replace them first (np.nan_to_num)."
            )


def emitted_shapes(shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    """The shapes an env may emit for a policy's space of ``shape``.

    SB3 policies may hold the channel-first space of a frame the env emits channel-last
    (VecTransposeImage); they transpose it themselves, so a 3-D shape fits either way.
    """
    return {shape} | ({(shape[1], shape[2], shape[0])} if len(shape) == 3 else set())


def check_space_observation(space: Any, obs: Any) -> None:
    """Check an observation (one, or a batch) against a ``gymnasium.spaces.Dict`` before acting.

    Keys, shapes and dtypes must fit the space (numbers only; every key batched alike),
    then :func:`check_values` applies to each key.

    Raises:
        ValueError: Naming the key, what it must look like and what it is.
    """
    from gymnasium import spaces

    if not isinstance(obs, Mapping):
        raise ValueError(
            f"obs must be a dict of arrays keyed {list(space.spaces)}, got {type(obs).__name__}."
        )
    missing = [k for k in space.spaces if k not in obs]
    unknown = [k for k in obs if k not in space.spaces]
    if missing or unknown:
        parts = ([f"lacks key(s) {missing}"] if missing else []) + (
            [f"has unexpected key(s) {unknown}"] if unknown else []
        )
        raise ValueError(
            f"obs {' and '.join(parts)}; this policy takes {list(space.spaces)}. Pass the "
            "observation dict the env emits."
        )
    batches: set[int | None] = set()
    for key, sub in space.spaces.items():
        x = np.asarray(obs[key])
        if x.dtype.kind not in "biuf":
            raise ValueError(
                f"obs[{key!r}] has dtype {x.dtype}, expected numbers ({sub}); pass the array "
                "the env emits."
            )
        shape = tuple(sub.shape or ())
        alike = emitted_shapes(shape)
        if tuple(x.shape) in alike:
            batches.add(None)
        elif tuple(x.shape[1:]) in alike or (
            isinstance(sub, spaces.Discrete) and x.ndim == 2 and x.shape[1] == 1
        ):
            batches.add(int(x.shape[0]))
        else:
            raise ValueError(
                f"obs[{key!r}] has shape {tuple(x.shape)}, expected {shape} for one "
                f"observation or (B, {', '.join(map(str, shape))}) for a batch."
            )
        dtype = sub.dtype if isinstance(sub, spaces.Box) else x.dtype
        check_values(key, x, dtype, tuple(x.shape[1:]) if x.ndim > len(shape) else shape)
    if 0 in batches:
        key = next(iter(space.spaces))
        raise ValueError(empty_batch_message(key, tuple(np.asarray(obs[key]).shape)))
    if len(batches) > 1:
        raise ValueError(
            "obs keys disagree on the batch: every key needs the same leading batch "
            f"dimension, or none (found {sorted(batches, key=str)})."
        )
