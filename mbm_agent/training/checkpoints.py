"""Resumable checkpoints of a run: weights, optimizer state and counters, written atomically.

``checkpoints/step-N/`` holds ``policy/`` (a policy folder), ``optimizer.safetensors``
with ``optimizer.json``, and ``state.json`` (:class:`TrainState`'s counters).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm

from envs.core.text import Vocabulary
from mbm_agent.training.agent import model_spec, save_policy
from mbm_agent.training.config import TrainConfig
from mbm_agent.training.storage import (
    CHECKPOINT_FORMAT,
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


@dataclass
class TrainState:
    """Counters a checkpoint carries besides the weights."""

    num_timesteps: int = 0
    n_updates: int = 0
    best_eval: float = -float("inf")
    wall_time: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(
    run_dir: Path,
    model: BaseAlgorithm,
    cfg: TrainConfig,
    vocab: Vocabulary | None,
    state: TrainState,
) -> Path:
    """Write ``checkpoints/step-N`` atomically and prune old ones."""
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
        }
        atomic_write_text(tmp / "state.json", json.dumps(payload))
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    existing = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in existing[: -cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path, model: BaseAlgorithm) -> TrainState:
    """Restore weights, optimizer state and counters from one checkpoint into ``model``."""
    state = read_json(ckpt / "state.json", "the checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{ckpt / 'state.json'} is not an mbm-agent checkpoint.")
    load_module(ckpt / "policy" / "model.safetensors", model.policy)
    optimizer_from_tensors(
        model.policy.optimizer,
        load_tensors(ckpt / "optimizer.safetensors"),
        read_json(ckpt / "optimizer.json", "the optimizer state"),
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
    )


def latest_checkpoint(run_dir: Path, model: BaseAlgorithm) -> TrainState | None:
    """Load the newest checkpoint that reads cleanly; older ones are tried if it is corrupt."""
    root = run_dir / "checkpoints"
    candidates = (
        sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)
        if root.is_dir()
        else []
    )
    errors = []
    for ckpt in candidates:
        try:
            state = load_checkpoint(ckpt, model)
        except ModelFileError as exc:
            errors.append(str(exc))
            warnings.warn(f"Skipping unreadable checkpoint {ckpt}: {exc}", stacklevel=2)
            continue
        return state
    if errors:
        raise ModelFileError("No readable checkpoint in " + str(root) + ":\n" + "\n".join(errors))
    return None


def truncate_metrics(path: Path, num_timesteps: int) -> None:
    """Drop ``metrics.csv`` rows logged after the checkpoint a resumed run restarts from.

    Those steps are trained again; keeping their rows would repeat timesteps and
    make the curve go backwards.
    """
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= num_timesteps]
    if len(kept) == len(rows):
        return
    buffer = io.StringIO()
    csv.writer(buffer).writerows(kept)
    atomic_write_text(path, buffer.getvalue())
