"""Saving and loading policies and checkpoints without pickle.

A saved policy is a folder with ``model.json`` (format, versions, algorithm,
observation and action spaces, encoder config, policy arguments),
``model.safetensors`` (the weights) and, for text games, ``vocabulary.json``.
Loading reads only JSON and safetensors, so a file from a stranger cannot run
code. Every file is written to a temporary name and renamed into place, so a
crash never leaves a half-written model or checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

FORMAT = "mbm-agent/policy"
FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "mbm-agent/checkpoint"


#: What to do about a damaged file of a saved policy or checkpoint.
RESTORE_HINT = (
    "restore it from a copy, or use another saved policy or checkpoint of the run "
    "(best/, final/, checkpoints/step-*/)"
)


class ModelFileError(ValueError):
    """A model or checkpoint folder is missing, corrupt or from an incompatible version."""


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Read once: ``mkstemp``/``mkdtemp`` create private (0600/0700) entries, and the
#: atomic writes give them the permissions an ordinary ``open`` would have.
_UMASK = _current_umask()


def _mkstemp_beside(path: Path) -> tuple[int, str]:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """``safetensors`` save through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp_beside(path)
    os.close(fd)
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata
        )
        os.chmod(tmp, 0o666 & ~_UMASK)  # safetensors writes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_module(
    path: Path, module: torch.nn.Module, metadata: dict[str, str] | None = None
) -> None:
    """Save a module's weights (shared tensors stored once) through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp_beside(path)
    os.close(fd)
    try:
        save_model(module, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_UMASK)  # safetensors writes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_module(path: Path, module: torch.nn.Module) -> None:
    """Load weights saved by :func:`atomic_save_module` into ``module`` (strict)."""
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; {RESTORE_HINT}.")
    try:
        load_model(module, str(path), strict=True, device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{path} is corrupt or truncated ({exc}); {RESTORE_HINT}.") from exc
    except RuntimeError as exc:
        raise ModelFileError(
            f"{path} does not fit the architecture in model.json (were the files of two "
            f"models mixed?); {RESTORE_HINT}. {exc}"
        ) from exc


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning corruption into :class:`ModelFileError`."""
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; {RESTORE_HINT}.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is corrupt or truncated ({exc}); {RESTORE_HINT}.") from exc


def read_json(path: Path, what: str, fix: str = RESTORE_HINT) -> dict[str, Any]:
    """Read a JSON object, with errors naming the file, what it should be and ``fix``."""
    if not path.is_file():
        raise ModelFileError(f"{path} is missing: {what} cannot be loaded; {fix}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(
            f"{path} is corrupt, not valid JSON ({exc}); {what} cannot be loaded; {fix}."
        ) from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} must hold a JSON object ({what}); {fix}.")
    return data


# -- spaces as JSON ---------------------------------------------------------------
def _bound(x: np.ndarray) -> Any:
    flat = np.asarray(x, dtype=np.float64)
    if flat.size and np.all(flat == flat.flat[0]):
        v = float(flat.flat[0])
        return "inf" if v == np.inf else "-inf" if v == -np.inf else v
    return [("inf" if v == np.inf else "-inf" if v == -np.inf else float(v)) for v in flat.ravel()]


def _unbound(v: Any, shape: tuple[int, ...]) -> np.ndarray:
    def one(x: Any) -> float:
        return float("inf") if x == "inf" else float("-inf") if x == "-inf" else float(x)

    if isinstance(v, list):
        return np.array([one(x) for x in v], dtype=np.float64).reshape(shape)
    return np.full(shape, one(v), dtype=np.float64)


def space_to_dict(space: spaces.Space[Any]) -> dict[str, Any]:
    """Describe a Box / Discrete / MultiDiscrete / MultiBinary / Dict space as JSON."""
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_dict(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _bound(space.low),
            "high": _bound(space.high),
        }
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "dtype": str(space.dtype)}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    raise ModelFileError(
        f"Cannot save a {type(space).__name__} space; supported: Box, Discrete, MultiDiscrete, MultiBinary, Dict."
    )


def space_from_dict(data: Mapping[str, Any]) -> spaces.Space[Any]:
    """Inverse of :func:`space_to_dict`."""
    kind = data.get("type")
    try:
        if kind == "Dict":
            return spaces.Dict({k: space_from_dict(v) for k, v in data["spaces"].items()})
        if kind == "Box":
            shape = tuple(int(s) for s in data["shape"])
            dtype = np.dtype(data["dtype"])
            low, high = _unbound(data["low"], shape), _unbound(data["high"], shape)
            if np.issubdtype(dtype, np.integer):
                return spaces.Box(low.astype(dtype), high.astype(dtype), shape, dtype)
            return spaces.Box(low.astype(dtype), high.astype(dtype), shape, dtype)
        if kind == "Discrete":
            return spaces.Discrete(int(data["n"]), start=int(data.get("start", 0)))
        if kind == "MultiDiscrete":
            return spaces.MultiDiscrete(
                np.array(data["nvec"]), dtype=np.dtype(data.get("dtype", "int64"))
            )
        if kind == "MultiBinary":
            return spaces.MultiBinary(data["n"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"Space description {dict(data)!r} is malformed: {exc}") from exc
    raise ModelFileError(f"Unknown space type {kind!r} in model.json.")


# -- checkpoint folders -----------------------------------------------------------
def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written ``tmp_dir`` to ``final_dir``, replacing it as atomically as a folder allows."""
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final_dir, old)
        try:
            os.replace(tmp_dir, final_dir)
        except BaseException:
            os.replace(old, final_dir)  # put the previous folder back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def fresh_tmp_dir(final_dir: Path) -> Path:
    """An empty temporary folder beside ``final_dir`` for writing it."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.", suffix=".tmp")
    os.chmod(tmp, 0o777 & ~_UMASK)
    return Path(tmp)


def optimizer_to_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state into tensors (safetensors) and JSON (param groups, scalars)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Restore what :func:`optimizer_to_tensors` saved into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = meta.get("param_groups")
    if not isinstance(groups, list):
        raise ModelFileError("Checkpoint optimizer.json has no param_groups.")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelFileError(f"Checkpoint optimizer state does not fit this model: {exc}") from exc
