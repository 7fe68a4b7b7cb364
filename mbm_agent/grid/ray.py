"""Run grid cells as Ray Tune trials, on this machine or on a Ray cluster.

:func:`mbm_agent.grid.run.run_grid` calls :func:`run_cells_on_ray` when the
``ray`` extra is installed (``pip install 'mbm-agent[ray]'``). Each cell is one
Tune trial that calls :func:`mbm_agent.grid.cell.run_cell`, the same function the
sequential runner calls, so trials write ordinary run folders under
``OUT/runs/`` that ``mbm-agent eval`` and ``compare`` read unchanged.

Fault tolerance comes from the run folders, not from Tune checkpoints:
``run_cell`` skips finished runs and resumes stopped ones from their last
checkpoint. A trial whose worker dies is retried by Tune (``max_failures``)
and resumes where its checkpoints left off; if the driver dies, running the
same command again resumes every unfinished cell.

On a cluster (``address``) every node needs mbm-agent installed, and ``OUT``
must be a path every node can write (a shared file system): trials write their
run folders there directly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mbm_agent.grid.cell import run_cell
from mbm_agent.grid.spec import Cell, cell_done
from mbm_agent.grid.summary import score_of

RAY_EXTRA = "pip install 'mbm-agent[ray]'"
#: Where Tune keeps its own experiment state, under the grid's output folder.
TUNE_DIR = ".ray"


class GridError(RuntimeError):
    """Some cells of a grid failed; the message names them and how to resume."""


def ray_available() -> bool:
    """Whether Ray Tune can be imported."""
    try:
        import ray.tune  # noqa: F401
    except ImportError:
        return False
    return True


def require_ray(why: str) -> None:
    """Raise an ImportError naming the extra when Ray Tune is missing.

    Args:
        why: What needed Ray, e.g. ``"--ray-address"``.
    """
    if not ray_available():
        raise ImportError(
            f"{why} runs the grid on Ray, which is not installed: {RAY_EXTRA}. "
            "Without it, `mbm-agent bench --backend sequential` runs the same grid here, "
            "one run after another."
        )


def pid_file(root: Path, name: str) -> Path:
    """File in which the trial running cell ``name`` records its process id."""
    return root / TUNE_DIR / "pids" / f"{name}.pid"


def _trial(
    config: dict[str, Any],
    cells: dict[str, Cell],
    root: str,
    quick: bool,
    command: Sequence[str],
    threads: int,
) -> None:
    """Tune trainable: run one cell (in a Ray worker process)."""
    from ray import tune

    torch.set_num_threads(threads)
    name = config["cell"]
    out = Path(root)
    pids = pid_file(out, name)
    pids.parent.mkdir(parents=True, exist_ok=True)
    pids.write_text(str(os.getpid()), encoding="utf-8")
    run_dir = run_cell(cells[name], out, quick=quick, command=command)
    success = score_of(run_dir / "eval.json")
    tune.report({"success": float("nan") if success is None else success})


def _log_callback(log: Callable[[str], None], total: int) -> Any:
    """A Tune callback that reports trial completions, failures and retries through ``log``."""
    from ray import tune

    class _Log(tune.Callback):
        def __init__(self) -> None:
            self.done = 0

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self.done += 1
            log(f"[{self.done}/{total}] {trial.config['cell']} finished")

        def on_trial_recover(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            log(
                f"{trial.config['cell']}: its worker failed; retrying (resumes from its checkpoint)"
            )

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            log(f"{trial.config['cell']}: failed, retries used up")

    return _Log()


def run_cells_on_ray(
    cells: Sequence[Cell],
    root: Path,
    *,
    quick: bool = False,
    address: str | None = None,
    cpus_per_trial: int = 1,
    max_failures: int = 2,
    command: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Run ``cells`` as Ray Tune trials; returns when every trial has ended.

    Args:
        cells: Cells to run (finished ones are cheap: ``run_cell`` skips them).
        root: The grid's output folder (absolute paths are passed to trials).
        quick: Smoke-test budgets.
        address: A Ray cluster's address (``ray://host:10001`` or ``auto``);
            ``None`` starts a local Ray for this call with this machine's cores.
        cpus_per_trial: CPUs (and torch threads) each trial gets; Tune runs as
            many trials at once as the cluster's CPUs allow.
        max_failures: Retries of a trial whose worker died or raised.
        command: The command recorded in every run folder.
        log: Progress messages.

    Raises:
        ImportError: Ray is not installed (the message names the extra).
        GridError: Cells still unfinished after their retries (named, with the
            first error); the run folders of every other cell are complete.
    """
    require_ray("--backend ray" if address is None else "--ray-address")
    # Ctrl-C then reaches us as KeyboardInterrupt (Tune would otherwise swallow it
    # and report errored trials); the runs resume on the next call either way.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    root = Path(root).resolve()
    started = False
    if not ray.is_initialized():
        if address is None:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        log(
            f"Ray: {len(cells)} trials, {cpus_per_trial} CPU each, up to "
            f"{max(1, cpus // cpus_per_trial)} at once"
            + (f" on {address}" if address else " on a local Ray")
        )
        trainable = tune.with_resources(
            tune.with_parameters(
                _trial,
                cells={c.name: c for c in cells},
                root=str(root),
                quick=quick,
                command=command or ["mbm_agent.grid"],
                threads=cpus_per_trial,
            ),
            {"cpu": cpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"cell": tune.grid_search([c.name for c in cells])},
            tune_config=tune.TuneConfig(
                trial_name_creator=lambda t: str(t.config["cell"]),
                trial_dirname_creator=lambda t: str(t.config["cell"]),
            ),
            run_config=tune.RunConfig(
                name=time.strftime("bench-%Y%m%d-%H%M%S"),
                storage_path=str(root / TUNE_DIR),
                failure_config=tune.FailureConfig(max_failures=max_failures),
                callbacks=[_log_callback(log, len(cells))],
                verbose=0,
            ),
        )
        results = tuner.fit()
        # ResultGrid iterates through __getitem__ and __len__ (it has no __iter__).
        errors = {str(r.config.get("cell")): r.error for r in results if r.error is not None}  # type: ignore[attr-defined]
    finally:
        if started:
            ray.shutdown()
    failed = [c.name for c in cells if not cell_done(c, root)]
    if failed:
        first = next((errors[n] for n in failed if n in errors), None)
        # A trial's error is its worker's whole traceback; its last line says what failed.
        last = str(first).strip().splitlines()[-1] if first is not None else ""
        raise GridError(
            f"{len(failed)} of {len(cells)} grid runs did not finish: {', '.join(failed)}"
            + (f"; first error: {last}" if last else "")
            + f" (tracebacks: {root / TUNE_DIR}/*/<run>/error.txt). Their run folders keep "
            "their checkpoints: run the same command again to resume them."
        )
