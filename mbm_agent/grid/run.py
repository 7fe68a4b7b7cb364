"""Running the grid: every unfinished cell, one after another or as Ray Tune trials, then the summary."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mbm_agent.grid.cell import run_cell
from mbm_agent.grid.ray import ray_available, require_ray, run_cells_on_ray
from mbm_agent.grid.spec import Cell, cell_done, finished_cells, missing_evaluations
from mbm_agent.grid.summary import write_summary

#: How ``run_grid`` runs the cells (see :func:`resolve_backend`).
BACKENDS = ("auto", "ray", "sequential")


def resolve_backend(
    backend: str, ray_address: str | None = None, cpus_per_trial: int = 1, pending: int = 2
) -> str:
    """``"ray"`` or ``"sequential"`` for a requested backend and ``pending`` runs.

    ``auto`` picks Ray when it is installed, the machine can run two trials at
    once and more than one run is left (one run gains nothing from Ray).

    Raises:
        ValueError: Unknown backend, or an address with ``sequential``.
        ImportError: Ray was asked for (``ray`` or an address) but is not
            installed; the message names the extra.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; use one of {list(BACKENDS)}.")
    if cpus_per_trial < 1:
        raise ValueError(f"cpus_per_trial must be at least 1, got {cpus_per_trial}.")
    if ray_address is not None:
        if backend == "sequential":
            raise ValueError(
                "--ray-address runs the grid on Ray; drop --backend sequential (or the address)."
            )
        require_ray("--ray-address")
        return "ray"
    if backend == "ray":
        require_ray("--backend ray")
        return "ray"
    if (
        backend == "auto"
        and pending > 1
        and (os.cpu_count() or 1) >= 2 * cpus_per_trial
        and ray_available()
    ):
        return "ray"
    return "sequential"


def run_grid(
    cells: Sequence[Cell],
    root: str | Path,
    *,
    quick: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print,
    backend: str = "auto",
    ray_address: str | None = None,
    cpus_per_trial: int = 1,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run every unfinished cell (resuming stopped ones), then write the summary; returns it.

    Args:
        cells: The grid.
        root: Output folder (``root/runs/<cell>`` and the summary files).
        quick: Smoke-test budgets.
        progress: Progress bars (sequential backend only).
        log: Progress messages.
        backend: ``auto``, ``ray`` (Ray Tune trials, see :mod:`mbm_agent.grid.ray`)
            or ``sequential`` (one run after another in this process).
        ray_address: Run on this Ray cluster instead of a local Ray.
        cpus_per_trial: CPUs and torch threads per Ray trial.
        command: The command recorded in every run folder.

    Raises:
        KeyboardInterrupt: Ctrl-C; every run keeps its checkpoints.
        mbm_agent.grid.ray.GridError: Ray trials that failed after their retries.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pending = [c for c in cells if not cell_done(c, root)]
    mode = resolve_backend(backend, ray_address, cpus_per_trial, len(pending))
    if not pending:
        mode = "sequential"  # nothing to run: no Ray to start
    if mode == "ray":
        for i, cell in enumerate(cells, 1):
            if cell not in pending:
                log(f"[{i}/{len(cells)}] {cell.name} (done)")
        run_cells_on_ray(
            pending,
            root,
            quick=quick,
            address=ray_address,
            cpus_per_trial=cpus_per_trial,
            command=command,
            log=log,
        )
    else:
        for i, cell in enumerate(cells, 1):
            log(f"[{i}/{len(cells)}] {cell.name}{'' if cell in pending else ' (done)'}")
            run_cell(cell, root, quick=quick, progress=progress, command=command)
    log(
        f"grid: {len(cells)} runs ({len(pending)} run now, {mode}), "
        f"{time.perf_counter() - start:.0f} s in this session"
    )
    return write_summary(finished_cells(root), root)


def complete_evaluations(
    cells: Sequence[Cell], root: str | Path, log: Callable[[str], None] = print
) -> None:
    """Run the missing :func:`grid_evaluations` of trained cells (no training)."""
    root = Path(root)
    for cell in cells:
        run_dir = root / "runs" / cell.name
        todo = missing_evaluations(cell, run_dir)
        if (run_dir / "eval.json").is_file() and todo:
            log(f"{cell.name}: evaluating ({', '.join(name for name, _, _ in todo)})")
            run_cell(cell, root)
