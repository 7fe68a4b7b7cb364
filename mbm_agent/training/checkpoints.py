"""Resumable checkpoints of a run: weights, optimizer state and counters, written atomically.

``checkpoints/step-N/`` holds ``policy/`` (a policy folder), ``optimizer.safetensors``
with ``optimizer.json``, and ``state.json`` (:class:`TrainState`'s counters).

Checkpoints are ordered by the step number in their name, and only *readable*
ones (complete, with a ``state.json`` that matches the name) count: pruning
keeps the newest ``keep_checkpoints`` of them and never deletes the one just
written, and folders that do not parse or do not read are left alone with a
warning. The best periodic evaluation score lives in ``best/score.json``, written
in the same rename as the ``best/`` policy it describes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from stable_baselines3.common.base_class import BaseAlgorithm

from envs.core.text import Vocabulary
from mbm_agent.encoding.values import is_finite_number
from mbm_agent.training.agent import model_spec, save_policy
from mbm_agent.training.config import TrainConfig
from mbm_agent.training.storage import (
    CHECKPOINT_FORMAT,
    RESTORE_HINT,
    SCORE_FILE,
    ModelFileError,
    atomic_save_tensors,
    atomic_write_text,
    fresh_tmp_dir,
    load_module,
    load_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_json,
    replace_dir,
)

#: A checkpoint folder's name: ``step-`` and the number of environment steps it holds.
STEP_PATTERN = re.compile(r"step-(\d{1,18})")

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


@dataclass
class TrainState:
    """Counters a checkpoint carries besides the weights."""

    num_timesteps: int = 0
    n_updates: int = 0
    best_eval: float = -float("inf")
    wall_time: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    curriculum_level: int = 0
    episodes: int = 0  # training episodes ended so far (metrics.csv's episodes column)


def checkpoint_folders(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoints/step-N`` folder, oldest first.

    Folders named ``step-*`` whose name does not parse are left alone, with a warning.
    """
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.glob("step-*"):
        if not path.is_dir():
            continue
        match = STEP_PATTERN.fullmatch(path.name)
        if match is None:
            _warn_once(
                f"Ignoring {path}: not a checkpoint name (step-<number>); it is left as it is."
            )
            continue
        found.append((int(match.group(1)), path))
    return sorted(found)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from, found without loading it; None if it looks complete.

    Checks ``state.json`` (ours, its step matching the folder name) and that every
    file is there with a readable safetensors header.
    """
    match = STEP_PATTERN.fullmatch(ckpt.name)
    try:
        state = _read_state(ckpt)
    except ModelFileError as exc:
        return str(exc)
    if match is not None and state["num_timesteps"] != int(match.group(1)):
        return (
            f"{ckpt / 'state.json'} says num_timesteps={state['num_timesteps']}, but the "
            f"folder is named for step {int(match.group(1))}"
        )
    for name in ("policy/model.json", "optimizer.json"):
        if not (ckpt / name).is_file():
            return f"{ckpt / name} is missing"
    for name in ("policy/model.safetensors", "optimizer.safetensors"):
        try:
            with safe_open(str(ckpt / name), framework="pt") as fh:
                fh.keys()
        except Exception as exc:  # SafetensorError, OSError, ...: any means unreadable
            return f"{ckpt / name} is unreadable ({exc})"
    return None


def save_checkpoint(
    run_dir: Path,
    model: BaseAlgorithm,
    cfg: TrainConfig,
    vocab: Vocabulary | None,
    state: TrainState,
) -> Path:
    """Write ``checkpoints/step-N`` atomically and prune old ones (see the module doc)."""
    root = run_dir / "checkpoints"
    final = root / f"step-{model.num_timesteps:012d}"
    tmp = fresh_tmp_dir(final)
    try:
        save_policy(model.policy, model_spec(model, cfg, vocab), tmp / "policy", vocab)
        tensors, meta = optimizer_to_tensors(model.policy.optimizer)
        atomic_save_tensors(tmp / "optimizer.safetensors", tensors)
        atomic_write_text(tmp / "optimizer.json", json.dumps(meta))
        payload = {
            "format": CHECKPOINT_FORMAT,
            "num_timesteps": int(model.num_timesteps),
            "n_updates": int(getattr(model, "_n_updates", 0)),
            "best_eval": state.best_eval if np.isfinite(state.best_eval) else None,
            "wall_time": state.wall_time,
            "curriculum_level": state.curriculum_level,
            "episodes": state.episodes,
        }
        atomic_write_text(tmp / "state.json", json.dumps(payload))
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(run_dir, cfg.keep_checkpoints, final)
    return final


def prune_checkpoints(run_dir: Path, keep: int, just_written: Path | None = None) -> list[Path]:
    """Delete readable checkpoints beyond the newest ``keep`` ones; the deleted folders.

    ``just_written`` is never deleted, and neither is a folder that does not read
    (it is warned about and left for inspection).
    """
    readable = []
    for step, path in checkpoint_folders(run_dir):
        problem = None if path == just_written else checkpoint_problem(path)
        if problem is None:
            readable.append((step, path))
        else:
            _warn_once(f"Leaving unreadable checkpoint {path} in place: {problem}.")
    kept = {path for _, path in readable[-keep:]}
    if just_written is not None:
        kept.add(just_written)
    deleted = []
    for _, path in readable:
        if path not in kept:
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
    return deleted


def _read_state(ckpt: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint, every field checked."""
    path = ckpt / "state.json"
    state = read_json(path, "the checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(
            f"{path} is not an mbm-agent checkpoint (format {state.get('format')!r}); "
            f"{RESTORE_HINT}."
        )
    for name in ("num_timesteps", "n_updates", "curriculum_level", "episodes"):
        value = state.get(name, None if name == "num_timesteps" else 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ModelFileError(
                f"{path}: field {name!r} must be an integer >= 0, got {value!r}; {RESTORE_HINT}."
            )
    for name, allow_none in (("best_eval", True), ("wall_time", False)):
        value = state.get(name, None if allow_none else 0.0)
        if value is None and allow_none:
            continue
        if not is_finite_number(value):
            raise ModelFileError(
                f"{path}: field {name!r} must be a finite number"
                + (" or null" if allow_none else "")
                + f", got {value!r}; {RESTORE_HINT}."
            )
    return state


def load_checkpoint(ckpt: Path, model: BaseAlgorithm) -> TrainState:
    """Restore weights, optimizer state and counters from one checkpoint into ``model``.

    Raises:
        ModelFileError: A file of the checkpoint is missing, corrupt or does not fit
            ``model`` (the message names the file and the field).
    """
    state = _read_state(ckpt)
    problem = checkpoint_problem(ckpt)
    if problem is not None:
        raise ModelFileError(f"{ckpt} cannot be resumed from: {problem}; {RESTORE_HINT}.")
    load_module(ckpt / "policy" / "model.safetensors", model.policy)
    optimizer_from_tensors(
        model.policy.optimizer,
        load_tensors(ckpt / "optimizer.safetensors"),
        read_json(ckpt / "optimizer.json", "the optimizer state"),
        where=ckpt / "optimizer.safetensors",
    )
    model.num_timesteps = int(state["num_timesteps"])
    if hasattr(model, "_n_updates"):
        model._n_updates = int(state.get("n_updates", 0))
    best = state.get("best_eval")
    return TrainState(
        num_timesteps=model.num_timesteps,
        n_updates=int(state.get("n_updates", 0)),
        best_eval=float(best) if best is not None else -float("inf"),
        wall_time=float(state.get("wall_time", 0.0)),
        curriculum_level=int(state.get("curriculum_level", 0)),
        episodes=int(state.get("episodes", 0)),  # 0 in checkpoints of before 2026-12
    )


def latest_checkpoint(run_dir: Path, model: BaseAlgorithm) -> TrainState | None:
    """Load the newest checkpoint that reads cleanly; older ones are tried if it is corrupt.

    Returns:
        Its counters, or None when the run has no checkpoint folder at all.

    Raises:
        ModelFileError: Checkpoints exist but none reads (the message lists why for each).
    """
    candidates = checkpoint_folders(run_dir)
    errors = []
    for _, ckpt in reversed(candidates):
        try:
            state = load_checkpoint(ckpt, model)
        except ModelFileError as exc:
            errors.append(str(exc))
            warnings.warn(f"Skipping unreadable checkpoint {ckpt}: {exc}", stacklevel=2)
            continue
        return state
    if errors:
        raise ModelFileError(
            f"No readable checkpoint in {run_dir / 'checkpoints'}; nothing was changed. "
            "Restore a checkpoint from a copy, or start a new run from the run's policy "
            "(--init-from).\n" + "\n".join(errors)
        )
    return None


def read_best_score(run_dir: Path) -> float | None:
    """The evaluation score of ``best/`` (``best/score.json``); None if unknown.

    Raises:
        ModelFileError: ``score.json`` exists but is damaged.
    """
    path = run_dir / "best" / SCORE_FILE
    if not path.is_file():
        return None
    data = read_json(path, "the best policy's score")
    value = data.get("score")
    if not is_finite_number(value):
        raise ModelFileError(
            f"{path}: field 'score' must be a finite number, got {value!r}; delete the file "
            "to let the next evaluation replace best/."
        )
    return float(value)


def truncate_log(path: Path, num_timesteps: int) -> int:
    """Drop rows of a JSON-lines log (``curriculum.jsonl``) written after the restart checkpoint.

    A run killed after a level change but before its next checkpoint resumes on
    the checkpoint's level; the lost attempt's rows would claim a level the run
    never kept. Lines that do not parse or carry no ``timesteps`` (a line cut by a
    crash) are dropped with a warning naming the line.

    Returns:
        The number of lines dropped.
    """
    if not path.is_file():
        return 0
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            step = row["timesteps"]
            valid = not isinstance(step, bool) and isinstance(step, int)
        except (ValueError, TypeError, KeyError):
            valid = False
        if not valid:
            warnings.warn(
                f"{path}, line {number}: dropping a malformed row {line!r}.", stacklevel=2
            )
            continue
        if step <= num_timesteps:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped or (text and not text.endswith("\n")):
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return dropped


def truncate_metrics(path: Path, num_timesteps: int) -> int:
    """Drop ``metrics.csv`` rows logged after the checkpoint a resumed run restarts from.

    Those steps are trained again; keeping their rows would repeat timesteps and
    make the curve go backwards. Rows that do not parse (a line cut by a crash)
    are dropped with a warning naming the line.

    Returns:
        The number of rows dropped.
    """
    if not path.is_file():
        return 0
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        return 0
    kept = [rows[0]]
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            step = float(row[0])
        except ValueError:
            step = math.nan
        if not math.isfinite(step) or len(row) != len(rows[0]):
            warnings.warn(f"{path}, line {line}: dropping a malformed row {row!r}.", stacklevel=2)
            continue
        if step <= num_timesteps:
            kept.append(row)
    dropped = len(rows) - len(kept)
    if dropped or not text.endswith("\n"):  # an unfinished line would swallow the next row
        buffer = io.StringIO()
        csv.writer(buffer).writerows(kept)
        atomic_write_text(path, buffer.getvalue())
    return dropped
