"""Running one cell of the grid: train (or clone, then fine-tune), evaluate, resume if stopped."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import envs
from mbm_agent.evaluation import evaluate_agent, policy_meta, write_report
from mbm_agent.grid.spec import (
    BC_PPO,
    DEMO_SEED_STRIDE,
    QUICK,
    QUICK_STEPS,
    Cell,
    cell_done,
    default_steps,
    grid_evaluations,
    missing_evaluations,
    run_env_id,
    uses_bc,
)
from mbm_agent.imitation.bc import BCConfig, bc_run
from mbm_agent.imitation.demos import load_demos, record_demos, save_demos
from mbm_agent.training.agent import load_agent, source_architecture
from mbm_agent.training.config import load_run_config, merge, resolve_config
from mbm_agent.training.envs import evaluation_env_kwargs
from mbm_agent.training.trainer import train


def run_cell(
    cell: Cell,
    root: Path,
    *,
    quick: bool = False,
    progress: bool = False,
    command: Sequence[str] | None = None,
) -> Path:
    """Train and evaluate one cell (skipped when done, resumed when stopped); its run folder.

    Args:
        cell: The cell.
        root: The grid's output folder; the run goes to ``root/runs/<cell.name>``.
        quick: Smoke-test settings (:data:`QUICK`); the budget shrinks to
            :data:`QUICK_STEPS` unless the cell's budget was set explicitly.
        progress: Show the training progress bar.
        command: The command recorded in the run folder (default: this process's).
    """
    runs = root / "runs"
    run_dir = runs / cell.name
    trained_on = run_env_id(run_dir)
    if trained_on is not None and trained_on != cell.game.env_id:
        raise ValueError(
            f"{run_dir} holds a run of {trained_on}, not of {cell.game.env_id} (two versions "
            "of a game name their runs alike): bench each version into its own --out folder. "
            "Nothing was changed."
        )
    if (run_dir / "eval.json").is_file():
        # Trained (a stop came after the final evaluation, or an earlier version ran
        # fewer evaluations): finish the missing ones, train nothing.
        if not cell_done(cell, root):
            _grid_evals(cell, run_dir, load_run_config(run_dir).final_eval_episodes)
        return run_dir
    overrides = merge(dict(cell.overrides), {"runs_dir": str(runs), "run_name": cell.name})
    if quick:
        default = default_steps(cell.game, cell.variant)
        explicit = cell.overrides.get("steps", default) != default
        steps = cell.overrides["steps"] if explicit else QUICK_STEPS
        overrides = merge(overrides, {**QUICK, "steps": steps})
    if command is None:  # the grid command that (re)runs this cell, as typed
        command = ["mbm-agent", *sys.argv[1:]] if "bench" in sys.argv[1:2] else ["mbm_agent.grid"]
    command = list(command)
    if uses_bc(cell.game, cell.variant):
        cloned = _cloned_policy(cell, root, quick=quick, command=command)
        overrides = merge(source_architecture(cloned), {**overrides, "init_from": str(cloned)})
    cfg = resolve_config(cell.game.env_id, overrides=overrides)
    if run_dir.is_dir() and (run_dir / "config.json").is_file():
        result = train(cfg, resume=run_dir, command=command, progress=progress)
    else:
        if run_dir.exists():  # a start that died before writing its config
            shutil.rmtree(run_dir)
        result = train(cfg, command=command, progress=progress)
    if result.interrupted:  # Ctrl-C: stop the grid here; the next call resumes this run
        raise KeyboardInterrupt(f"{cell.name} stopped at {result.num_timesteps} steps")
    for name, _, _ in grid_evaluations(cell):  # left by an earlier policy of this run: redo them
        (run_dir / f"{name}.json").unlink(missing_ok=True)
    _grid_evals(cell, run_dir, cfg.final_eval_episodes)
    return run_dir


def _cloned_policy(cell: Cell, root: Path, *, quick: bool, command: Sequence[str]) -> Path:
    """The BC run a :func:`uses_bc` cell starts from, made first if missing.

    ``runs/<game>-bc-s<seed>`` for ``bc-ppo``, ``runs/<game>-bc-mask-<m>-s<seed>``
    (cloned with ``m`` ignored) for an ablation. Demonstrations go to
    ``root/demos/<game>-s<seed>.npz``, shared by a seed's cells (kept: a rerun
    after a stop reuses them); a BC run without its evaluation (stopped) is made again.
    """
    recipe = cell.game.bc
    if recipe is None:
        raise ValueError(f"{cell.game.env_id} has no BC recipe; {BC_PPO} does not apply to it.")
    game = envs.game_name(cell.game.env_id)
    ablation = "" if cell.variant == BC_PPO else f"-{cell.variant}"
    run_dir = root / "runs" / f"{game}-bc{ablation}-s{cell.seed}"
    if (run_dir / "best").is_dir() and (run_dir / "eval.json").is_file():
        return run_dir
    episodes = min(recipe.episodes, 64) if quick else recipe.episodes
    demos_path = root / "demos" / f"{game}-s{cell.seed}{'-quick' if quick else ''}.npz"
    if demos_path.is_file():
        demos = load_demos(demos_path)
    else:
        demos = record_demos(
            cell.game.env_id,
            episodes,
            seed=1 + DEMO_SEED_STRIDE * cell.seed,
            noise=recipe.noise,
        )
        save_demos(demos, demos_path)
    if run_dir.exists():  # stopped before its evaluation: clone again
        shutil.rmtree(run_dir)
    cfg = BCConfig(
        epochs=1 if quick else recipe.epochs,
        seed=cell.seed,
        encoder=cell.game.encoder(),
        modalities=dict(cell.overrides.get("modalities", {})),
        eval_episodes=QUICK["final_eval_episodes"] if quick else 200,
        gif_episodes=0,
    )
    bc_run(
        demos,
        cfg,
        run_name=run_dir.name,
        runs_dir=root / "runs",
        demos_path=demos_path,
        command=command,
        progress=False,
    )
    return run_dir


def _grid_evals(cell: Cell, run_dir: Path, episodes: int) -> None:
    """Write the run's missing :func:`grid_evaluations` reports (``eval.json``'s seeds)."""
    todo = missing_evaluations(cell, run_dir)
    if not todo:
        return
    agent = load_agent(run_dir, "best")
    for name, dropped, greedy in todo:
        report = evaluate_agent(
            agent,
            cell.game.env_id,
            evaluation_env_kwargs(cell.game.env_id, agent.spec.get("env_kwargs", {})),
            episodes=episodes,
            n_envs=min(episodes, 64),
            deterministic=greedy,
            drop_modalities=dropped,
            baselines=False,
            meta=policy_meta(run_dir.name, "best", run_dir / "best"),
        )
        write_report(report, run_dir, name=name)
