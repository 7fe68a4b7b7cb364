"""Saving and loading policies and checkpoints without pickle.

A saved policy is a folder with ``model.json`` (format, versions, algorithm,
observation and action spaces, encoder config, policy arguments),
``model.safetensors`` (the weights) and, for text games, ``vocabulary.json``.
Loading reads only JSON and safetensors, so a file from a stranger cannot run
code. Every file is written to a temporary name and renamed into place, so a
crash never leaves a half-written model or checkpoint behind; a folder is
replaced by moving the old one aside to ``.NAME.old`` first, and
:func:`recover_dir` (run at the start of every replacement and of every
training) puts it back if a crash came between the two renames.

Fault injection (tests): with ``MBM_FAULT_AT=PATTERN[:N[:before|after]]`` in the
environment, the process kills itself with SIGKILL right before (default) or
after the N-th (default 1st) rename or append whose destination name matches
the glob ``PATTERN`` (e.g. ``best``, ``.best.old``, ``step-*``, ``metrics.csv``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import tempfile
import warnings
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

#: The file beside a ``best/`` policy's weights that holds the evaluation score that
#: chose it (written in the same rename as the weights).
SCORE_FILE = "score.json"


#: What to do about a damaged file of a saved policy or checkpoint.
RESTORE_HINT = (
    "restore it from a copy, or use another saved policy or checkpoint of the run "
    "(best/, final/, checkpoints/step-*/)"
)


#: Largest JSON file (model.json, export.json, state.json, ...) read, in bytes: ours
#: are a few kB; a bigger one is refused before it is read.
MAX_JSON_BYTES = 16 * 2**20

FAULT_ENV = "MBM_FAULT_AT"
_fault_counts: dict[str, int] = {}


class ModelFileError(ValueError):
    """A saved file is missing, corrupt or from an incompatible version.

    Policies, checkpoints, exports, vocabularies and demonstrations; the message
    names the file, the field and the fix.
    """


def fault_point(name: str, when: str) -> None:
    """Kill this process (SIGKILL) here if ``MBM_FAULT_AT`` asks for it (see the module doc).

    Args:
        name: The file or folder name being renamed into place or appended to.
        when: ``"before"`` or ``"after"`` the operation.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    pattern = parts[0]
    nth = int(parts[1]) if len(parts) > 1 and parts[1] else 1
    at = parts[2] if len(parts) > 2 else "before"
    if at != when or not fnmatch.fnmatchcase(name, pattern):
        return
    _fault_counts[spec] = _fault_counts.get(spec, 0) + 1
    if _fault_counts[spec] == nth:
        os.kill(os.getpid(), signal.SIGKILL)


def _rename(src: str | Path, dst: Path) -> None:
    """``os.replace`` with the fault-injection points around it."""
    fault_point(dst.name, "before")
    os.replace(src, dst)
    fault_point(dst.name, "after")


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` in one write, refusing to follow a symbolic link.

    Raises:
        ModelFileError: ``path`` is a symbolic link (a run folder holds only its own files).
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    if path.is_symlink():
        raise ModelFileError(_symlink_message(path))
    fault_point(path.name, "before")
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if path.is_symlink():
            raise ModelFileError(_symlink_message(path)) from exc
        raise
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
    fault_point(path.name, "after")


def _symlink_message(path: Path) -> str:
    return (
        f"{path} is a symbolic link; mbm-agent writes only its own files in a run folder. "
        f"Replace the link with a copy of its target (cp --remove-destination "
        f'"$(readlink -f {path})" {path}) or remove it.'
    )


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
        _rename(tmp, path)
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
        _rename(tmp, path)
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
        _rename(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_module(path: Path, module: torch.nn.Module) -> None:
    """Load weights saved by :func:`atomic_save_module` into ``module`` (strict)."""
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; {RESTORE_HINT}.")
    try:
        load_model(module, str(path), strict=True, device="cpu")
    except (SafetensorError, OSError, ValueError, OverflowError, MemoryError) as exc:
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
    except (SafetensorError, OSError, ValueError, OverflowError, MemoryError, RuntimeError) as exc:
        raise ModelFileError(f"{path} is corrupt or truncated ({exc}); {RESTORE_HINT}.") from exc


def read_json(path: Path, what: str, fix: str = RESTORE_HINT) -> dict[str, Any]:
    """Read a JSON object, with errors naming the file, what it should be and ``fix``."""
    if not path.is_file():
        raise ModelFileError(f"{path} is missing: {what} cannot be loaded; {fix}.")
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ModelFileError(
                f"{path} is {size} bytes, more than the {MAX_JSON_BYTES} bytes of any file "
                f"mbm-agent writes; {what} cannot be loaded; {fix}."
            )
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelFileError(f"{path} cannot be read ({exc}); {what} cannot be loaded.") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
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


#: Most values one space of a saved policy may hold (a 1024 x 1024 x 4 frame); its
#: bounds are arrays of this size, so a larger one is refused before they are made.
MAX_SPACE_ELEMENTS = 2**22
#: Most axes of a Box, and most levels of nested Dict spaces.
MAX_SPACE_DIMS = 8
#: Largest ``n`` of a Discrete space (and entry of a MultiDiscrete one).
MAX_DISCRETE = 2**31 - 1
_SPACE_DTYPES = frozenset(
    [
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    ]
)


def _space_error(where: str, message: str) -> ModelFileError:
    return ModelFileError(f"{where}: malformed space: {message}; {RESTORE_HINT}.")


def _count(value: Any, where: str, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _space_error(where, f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_SPACE_DIMS:
        raise _space_error(
            where, f"shape must be a list of at most {MAX_SPACE_DIMS} sizes, got {value!r}"
        )
    shape = tuple(_count(v, where, "every size in shape", 1, MAX_SPACE_ELEMENTS) for v in value)
    if int(np.prod(shape, dtype=np.float64)) > MAX_SPACE_ELEMENTS:
        raise _space_error(
            where, f"shape {list(shape)} holds more than {MAX_SPACE_ELEMENTS} values"
        )
    return shape


def _bound_values(value: Any, shape: tuple[int, ...], where: str, name: str) -> np.ndarray:
    def one(x: Any) -> float:
        if x in ("inf", "-inf"):
            return float(x)
        if isinstance(x, bool) or not isinstance(x, int | float) or x != x:
            raise _space_error(where, f"{name} holds {x!r}, not a number, 'inf' or '-inf'")
        return float(x)

    if isinstance(value, list):
        if len(value) != int(np.prod(shape)):
            raise _space_error(where, f"{name} has {len(value)} values for shape {list(shape)}")
        return np.array([one(x) for x in value], dtype=np.float64).reshape(shape)
    return np.full(shape, one(value), dtype=np.float64)


def space_from_dict(
    data: Any, where: str = "model.json observation/action space", depth: int = 0
) -> spaces.Space[Any]:
    """Inverse of :func:`space_to_dict`; every field is checked before any array is made.

    Raises:
        ModelFileError: A malformed field or a size beyond :data:`MAX_SPACE_ELEMENTS`,
            :data:`MAX_SPACE_DIMS` or :data:`MAX_DISCRETE` (the message names ``where``).
    """
    if not isinstance(data, Mapping):
        raise _space_error(where, f"a space must be a JSON object, got {data!r:.80}")
    kind = data.get("type")
    if kind == "Dict":
        subs = data.get("spaces")
        if not isinstance(subs, Mapping) or depth >= MAX_SPACE_DIMS:
            raise _space_error(where, "a Dict space needs 'spaces', an object of spaces")
        return spaces.Dict(
            {str(k): space_from_dict(v, f"{where}[{k!r}]", depth + 1) for k, v in subs.items()}
        )
    if kind == "Box":
        shape = _shape(data.get("shape"), where)
        dtype_name = data.get("dtype")
        if not isinstance(dtype_name, str) or dtype_name not in _SPACE_DTYPES:
            raise _space_error(
                where, f"dtype must be one of {sorted(_SPACE_DTYPES)}, got {dtype_name!r}"
            )
        dtype = np.dtype(str(dtype_name))
        low = _bound_values(data.get("low"), shape, where, "low")
        high = _bound_values(data.get("high"), shape, where, "high")
        if np.any(low > high):
            raise _space_error(where, "low is above high")
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            if np.any(~np.isfinite(low) | ~np.isfinite(high)) or (
                np.any(low < info.min) or np.any(high > info.max)
            ):
                raise _space_error(where, f"the bounds do not fit in {dtype}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # float64 -> float32 precision notes
                # Gymnasium annotates dtype as a scalar class; it takes any np.dtype.
                return spaces.Box(low.astype(dtype), high.astype(dtype), shape, dtype)  # type: ignore[arg-type]
        except (ValueError, TypeError, OverflowError) as exc:
            raise _space_error(where, f"not a valid Box ({exc})") from exc
    if kind == "Discrete":
        n = _count(data.get("n"), where, "n", 1, MAX_DISCRETE)
        start = _count(data.get("start", 0), where, "start", -MAX_DISCRETE, MAX_DISCRETE)
        return spaces.Discrete(n, start=start)
    if kind == "MultiDiscrete":
        nvec = data.get("nvec")
        if not isinstance(nvec, list) or not nvec:
            raise _space_error(where, f"nvec must be a non-empty list, got {nvec!r:.80}")
        _shape([len(nvec)], where)
        values = [_count(v, where, "every nvec entry", 1, MAX_DISCRETE) for v in nvec]
        dtype_name = data.get("dtype", "int64")
        if not isinstance(dtype_name, str) or dtype_name not in ("int32", "int64"):
            raise _space_error(where, f"dtype must be int32 or int64, got {dtype_name!r}")
        # Gymnasium annotates dtype as a str or scalar class; it takes any np.dtype.
        return spaces.MultiDiscrete(np.array(values), dtype=np.dtype(dtype_name))  # type: ignore[arg-type]
    if kind == "MultiBinary":
        n_field = data.get("n")
        shape = _shape(n_field if isinstance(n_field, list) else [n_field], where)
        return spaces.MultiBinary(list(shape) if isinstance(n_field, list) else shape[0])
    raise _space_error(
        where,
        f"Unknown space type {kind!r} (known: Box, Discrete, MultiDiscrete, MultiBinary, Dict)",
    )


# -- folders replaced whole ----------------------------------------------------------
def old_dir(final_dir: Path) -> Path:
    """Where :func:`replace_dir` moves the previous ``final_dir`` while it renames the new one in."""
    return final_dir.with_name(f".{final_dir.name}.old")


def recover_dir(final_dir: Path) -> bool:
    """Undo a replacement that a crash cut between its two renames; whether it did.

    If ``final_dir`` is missing and ``.NAME.old`` (the previous copy) is there,
    the previous copy is moved back: it is the newest complete version.
    """
    old = old_dir(final_dir)
    if final_dir.exists() or final_dir.is_symlink() or not old.is_dir():
        return False
    os.replace(old, final_dir)
    warnings.warn(
        f"Restored {final_dir} from {old.name}: a run was stopped while replacing it.",
        stacklevel=2,
    )
    return True


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written ``tmp_dir`` to ``final_dir``, replacing it as atomically as a folder allows.

    The previous folder is first moved aside to ``.NAME.old`` and deleted once the new
    one is in place; a crash in between leaves it there for :func:`recover_dir`.
    """
    recover_dir(final_dir)
    if final_dir.exists():
        old = old_dir(final_dir)
        if old.exists():
            shutil.rmtree(old)
        _rename(final_dir, old)
        try:
            _rename(tmp_dir, final_dir)
        except BaseException:
            os.replace(old, final_dir)  # put the previous folder back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        _rename(tmp_dir, final_dir)


def clean_stale(folder: Path) -> list[str]:
    """Tidy what killed writers left in ``folder``; the names of what it removed.

    Restores ``.NAME.old`` folders whose ``NAME`` is missing (:func:`recover_dir`),
    deletes ``.NAME.old`` folders whose ``NAME`` exists and every ``.*.tmp`` entry
    (files and folders being written when the writer died). Call it only while
    holding the folder's lock (:class:`~mbm_agent.training.lock.RunLock`): a live
    writer's temporaries look the same.
    """
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if not name.startswith("."):
            continue
        if name.endswith(".old") and entry.is_dir() and not entry.is_symlink():
            final = folder / name[1 : -len(".old")]
            if not recover_dir(final):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(name)
        elif name.endswith(".tmp"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(name)
    return removed


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
    optimizer: torch.optim.Optimizer,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    where: Path | str = "optimizer state",
) -> None:
    """Restore what :func:`optimizer_to_tensors` saved into ``optimizer``.

    Every tensor is checked against the parameter it belongs to (a moment of the
    wrong shape would only fail later, in the middle of an update).

    Raises:
        ModelFileError: The state is malformed or does not fit ``optimizer``'s parameters.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid_text, _, key = name.partition(".")
        if not pid_text.isdigit() or not key or int(pid_text) >= len(params):
            raise ModelFileError(
                f"{where}: tensor {name!r} names no parameter of this model (expected "
                f"'<index>.<name>' with an index below {len(params)}); {RESTORE_HINT}."
            )
        param = params[int(pid_text)]
        if key != "step" and tuple(value.shape) != tuple(param.shape):
            raise ModelFileError(
                f"{where}: tensor {name!r} has shape {tuple(value.shape)}, but parameter "
                f"{pid_text} has shape {tuple(param.shape)}; {RESTORE_HINT}."
            )
        if not value.dtype.is_floating_point:
            raise ModelFileError(f"{where}: tensor {name!r} is not floating point; {RESTORE_HINT}.")
        state.setdefault(int(pid_text), {})[key] = value
    scalars = meta.get("scalars", {})
    if not isinstance(scalars, Mapping):
        raise ModelFileError(f"{where}: 'scalars' must be an object; {RESTORE_HINT}.")
    for pid, values in scalars.items():
        if not str(pid).isdigit() or int(pid) >= len(params) or not isinstance(values, Mapping):
            raise ModelFileError(
                f"{where}: 'scalars' entry {pid!r} names no parameter of this model; {RESTORE_HINT}."
            )
        state.setdefault(int(pid), {}).update(values)
    groups = meta.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, Mapping) for g in groups):
        raise ModelFileError(f"{where}: 'param_groups' must be a list of objects; {RESTORE_HINT}.")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelFileError(
            f"{where}: the optimizer state does not fit this model: {exc}"
        ) from exc
    for group in optimizer.param_groups:
        for name in ("lr", "eps", "weight_decay"):
            setting = group.get(name)
            if name in group and (
                isinstance(setting, bool)
                or not isinstance(setting, int | float)
                or not setting >= 0
            ):
                raise ModelFileError(
                    f"{where}: param_groups field {name!r} must be a number >= 0, got "
                    f"{setting!r}; {RESTORE_HINT}."
                )
