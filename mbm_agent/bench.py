"""Reference results: train and evaluate a grid of runs, summarise them with intervals.

``mbm-agent bench`` runs, for each game, each fusion mode over several seeds,
plus ablations and a baseline, and writes under ``runs/reference/`` (default):

- ``runs/<game>-<variant>-s<seed>/``: ordinary run folders (``mbm-agent eval``,
  ``compare``, ``load_agent`` and exports take them);
- ``summary.md`` / ``summary.json``: per game and variant the IQM over seeds of
  held-out success and return with 95% stratified-bootstrap intervals, the
  steps to reach 90% periodic-evaluation success, wall time, and each required
  modality masked at evaluation next to the chance level the game implies;
- ``curves-<game>.png``: held-out success against environment steps, mean over seeds.

Variants: a fusion mode (``concat``, ``film``, ``attention``, ``gated``);
``mask-<modality>``: the game's recipe without that key (the encoder ignores
it), so it is masked at training and at evaluation: its default fusion trained
by PPO, or on a game with a BC recipe, that recipe (clone and fine-tune);
``sb3-default``: SB3's own ``MultiInputPolicy`` (``CombinedExtractor``) on the
same observations and budget. Runs that finished (``eval.json`` present) are
skipped, runs that stopped are resumed from their last checkpoint, so the
command picks up where it stopped. ``--quick`` shrinks every budget to a smoke
test that CI runs.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import envs
from mbm_agent.encoding.fusion import FUSION_MODES
from mbm_agent.training.config import merge
from mbm_agent.training.storage import atomic_write_text

#: Report of a run's policy with sampled actions (the trainer's ``eval.json`` is greedy).
SAMPLED = "eval-sampled"


@dataclass(frozen=True)
class BCRecipe:
    """The ``bc-ppo`` variant: clone the expert, then fine-tune the clone with PPO.

    Attributes:
        episodes: Expert episodes recorded (``mbm-agent demos``); their env steps
            count towards the budget next to PPO's.
        noise: DART noise of the recording (random action executed, expert's label kept).
        epochs: BC epochs (the lowest held-out-loss epoch is kept).
        encoder: Encoder settings of the cloned (and fine-tuned) policy.
        ppo_steps: PPO steps after BC (``train --init-from``).
        learning_rate: PPO's learning rate (lower than from scratch, to keep the clone).
    """

    episodes: int
    noise: float
    epochs: int
    encoder: Mapping[str, Any]
    ppo_steps: int = 300_000
    learning_rate: float = 2e-4


@dataclass(frozen=True)
class GameSpec:
    """What the reference grid needs to know about one game.

    Attributes:
        env_id: The game id.
        required: Modalities (observation keys) the design makes necessary.
        chance: Success rate the design implies without a required modality.
        steps: Training budget per run.
        fusion: The fusion mode the ablations use (the game's default config's).
        note: Why the chance level is what it is.
        bc: The ``bc-ppo`` recipe, for games PPO does not learn from scratch
            within the budget.
        sampled: Score runs on the policy's sampled actions rather than its
            greedy (argmax) ones. For the egocentric navigation games: a memoryless
            policy of a partially observed game may need to randomise (Singh,
            Jaakkola & Jordan, 1994), and the argmax of an imperfect one can cycle
            (turn left, turn right, ...) until time-out. Both modes are evaluated
            and summarised either way.
    """

    env_id: str
    required: tuple[str, ...]
    chance: float
    steps: int
    fusion: str
    note: str = ""
    bc: BCRecipe | None = None
    sampled: bool = False

    @property
    def headline(self) -> str:
        """Report (file stem) the summary scores: :data:`SAMPLED` or greedy ``eval``."""
        return SAMPLED if self.sampled else "eval"


REFERENCE_GAMES: dict[str, GameSpec] = {
    "mbm/ModalityProbe-v0": GameSpec(
        "mbm/ModalityProbe-v0",
        ("image",),
        0.25,
        10_000,
        "concat",
        "cue=image: one of 4 answers is shown only in the frame",
    ),
    "mbm/FindSound-v0": GameSpec(
        "mbm/FindSound-v0",
        ("audio",),
        1 / 3,
        300_000,
        "concat",
        "3 look-alike objects; only the sound says which one to reach",
        sampled=True,
    ),
    "mbm/GoToObject-v0": GameSpec(
        "mbm/GoToObject-v0",
        ("text",),
        1 / 3,
        500_000,
        "film",
        "3 objects; only the instruction says which one to reach",
        BCRecipe(10_000, 0.2, 10, {"fusion": "film", "image_encoder": "nature"}),
        sampled=True,
    ),
    "mbm/SoundMaze-v0": GameSpec(
        "mbm/SoundMaze-v0",
        ("text", "audio"),
        1 / 3,
        500_000,
        "film",
        "3 identical objects; the text names a sound, the audio says where it is",
        BCRecipe(8_000, 0.2, 8, {"fusion": "film"}),
        sampled=True,
    ),
}

#: The variant that clones the game's expert, then fine-tunes with PPO (:class:`BCRecipe`).
BC_PPO = "bc-ppo"
#: Demonstrations of seed ``s`` start at world ``1 + DEMO_SEED_STRIDE * s``.
DEMO_SEED_STRIDE = 100_000


def uses_bc(game: GameSpec, variant: str) -> bool:
    """Whether a variant follows the game's BC recipe (clone, then fine-tune with PPO).

    ``bc-ppo`` does, and so do the ``mask-<m>`` ablations of a game with a recipe.
    """
    return game.bc is not None and (variant == BC_PPO or variant.startswith("mask-"))


def full_sense(variant: str) -> bool:
    """Whether a variant sees every modality (its masked evaluations are then run)."""
    return variant in FUSION_MODES or variant == BC_PPO


#: Overrides that make every run a smoke test (``--quick``).
QUICK: dict[str, Any] = {
    "n_envs": 4,
    "algo_kwargs": {"n_steps": 32, "batch_size": 64, "n_epochs": 1},
    "eval_every": 256,
    "eval_episodes": 4,
    "final_eval_episodes": 8,
    "checkpoint_every": 256,
    "gif_episodes": 0,
}
QUICK_STEPS = 512


@dataclass(frozen=True)
class Cell:
    """One run of the grid.

    Attributes:
        game: The game's spec.
        variant: A fusion mode, ``mask-<modality>``, ``sb3-default`` or ``bc-ppo``.
        seed: Training seed.
        overrides: Config overrides on top of the game's defaults.
    """

    game: GameSpec
    variant: str
    seed: int
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Run folder name: ``<game>-<variant>-s<seed>``."""
        game = envs.game_name(self.game.env_id)
        return f"{game}-{self.variant}-s{self.seed}"


def build_grid(
    games: Sequence[str] | None = None,
    fusions: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    *,
    ablations: bool = True,
    baseline: bool = True,
    bc: bool = True,
    steps: int | None = None,
) -> list[Cell]:
    """The grid's cells: games x (fusions + bc-ppo + masks + baseline) x seeds.

    Args:
        games: Game ids (default: all of :data:`REFERENCE_GAMES`).
        fusions: Fusion modes (default: all).
        seeds: Training seeds.
        ablations: Add one ``mask-<modality>`` variant per required modality.
        baseline: Add the ``sb3-default`` variant.
        bc: Add the ``bc-ppo`` variant for games with a :class:`BCRecipe`.
        steps: Budget per run (default: each game's; for ``bc-ppo`` the PPO
            steps after cloning).

    Raises:
        ValueError: Unknown game or fusion mode, or no seeds.
    """
    games = list(games or REFERENCE_GAMES)
    fusions = list(fusions or FUSION_MODES)
    unknown = [g for g in games if g not in REFERENCE_GAMES]
    if unknown:
        raise ValueError(f"Unknown game(s) {unknown}; the grid knows {list(REFERENCE_GAMES)}.")
    bad = [f for f in fusions if f not in FUSION_MODES]
    if bad:
        raise ValueError(f"Unknown fusion mode(s) {bad}; known: {list(FUSION_MODES)}.")
    if not seeds:
        raise ValueError("Give at least one seed.")
    cells = []
    for env_id in games:
        game = REFERENCE_GAMES[env_id]
        variants: list[tuple[str, dict[str, Any]]] = [
            (f, {"encoder": {"fusion": f}}) for f in fusions
        ]
        if bc and game.bc is not None:
            variants.append(
                (
                    BC_PPO,
                    {
                        "encoder": dict(game.bc.encoder),
                        "algo_kwargs": {"learning_rate": game.bc.learning_rate},
                    },
                )
            )
        if ablations:
            for m in game.required:
                # the game's own recipe without m: PPO from scratch with its default
                # fusion, or (a game PPO alone does not learn) its BC recipe
                recipe: dict[str, Any] = (
                    {"encoder": {"fusion": game.fusion}}
                    if game.bc is None
                    else {
                        "encoder": dict(game.bc.encoder),
                        "algo_kwargs": {"learning_rate": game.bc.learning_rate},
                    }
                )
                variants.append((f"mask-{m}", {**recipe, "modalities": {m: "ignore"}}))
        if baseline:
            variants.append(("sb3-default", {"extractor": "sb3"}))
        for variant, overrides in variants:
            budget = {"steps": steps or default_steps(game, variant)}
            for seed in seeds:
                cells.append(Cell(game, variant, seed, {**overrides, **budget, "seed": seed}))
    return cells


def default_steps(game: GameSpec, variant: str) -> int:
    """A variant's budget unless ``--steps`` says otherwise (``bc-ppo``: its PPO steps)."""
    if uses_bc(game, variant):
        assert game.bc is not None
        return game.bc.ppo_steps
    return game.steps


def grid_evaluations(cell: Cell) -> list[tuple[str, tuple[str, ...], bool]]:
    """``(report name, masked modalities, greedy)`` of a grid run's evaluations.

    These follow the trainer's own greedy ``eval.json``. Every run is evaluated
    with sampled actions too (:data:`SAMPLED`): PPO trains the stochastic policy,
    and the greedy one of a memoryless policy in a partially observed game can
    cycle until time-out. Full-sense runs are also evaluated with each required
    modality masked, in both modes (``eval-drop-<m>``, greedy, and
    ``eval-sampled-drop-<m>``).
    """
    evals: list[tuple[str, tuple[str, ...], bool]] = [(SAMPLED, (), False)]
    if full_sense(cell.variant):
        for m in cell.game.required:
            evals += [(f"eval-drop-{m}", (m,), True), (f"{SAMPLED}-drop-{m}", (m,), False)]
    return evals


def missing_evaluations(cell: Cell, run_dir: Path) -> list[tuple[str, tuple[str, ...], bool]]:
    """The cell's :func:`grid_evaluations` whose report is not in ``run_dir`` yet."""
    return [e for e in grid_evaluations(cell) if not (run_dir / f"{e[0]}.json").is_file()]


def cell_done(cell: Cell, root: Path) -> bool:
    """Whether the cell's run is trained and has every evaluation of :func:`grid_evaluations`."""
    run_dir = root / "runs" / cell.name
    return (run_dir / "eval.json").is_file() and not missing_evaluations(cell, run_dir)


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
    from mbm_agent.training.config import resolve_config
    from mbm_agent.training.trainer import train

    runs = root / "runs"
    run_dir = runs / cell.name
    if (run_dir / "eval.json").is_file():
        # Trained (a stop came after the final evaluation, or an earlier version ran
        # fewer evaluations): finish the missing ones, train nothing.
        if not cell_done(cell, root):
            from mbm_agent.training.config import load_run_config

            _grid_evals(cell, run_dir, load_run_config(run_dir).final_eval_episodes)
        return run_dir
    overrides = merge(dict(cell.overrides), {"runs_dir": str(runs), "run_name": cell.name})
    if quick:
        default = default_steps(cell.game, cell.variant)
        explicit = cell.overrides.get("steps", default) != default
        steps = cell.overrides["steps"] if explicit else QUICK_STEPS
        overrides = merge(overrides, {**QUICK, "steps": steps})
    if command is None:  # the grid command that (re)runs this cell, as typed
        command = ["mbm-agent", *sys.argv[1:]] if "bench" in sys.argv[1:2] else ["mbm_agent.bench"]
    command = list(command)
    if uses_bc(cell.game, cell.variant):
        from mbm_agent.training.agent import source_architecture

        cloned = _cloned_policy(cell, root, quick=quick, command=command)
        overrides = merge(source_architecture(cloned), {**overrides, "init_from": str(cloned)})
    cfg = resolve_config(cell.game.env_id, overrides=overrides)
    if run_dir.is_dir() and (run_dir / "config.json").is_file():
        result = train(cfg, resume=run_dir, command=command, progress=progress)
    else:
        if run_dir.exists():  # a start that died before writing its config
            import shutil

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
    from mbm_agent.imitation.bc import BCConfig, bc_run
    from mbm_agent.imitation.demos import load_demos, record_demos, save_demos

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
        import shutil

        shutil.rmtree(run_dir)
    cfg = BCConfig(
        epochs=1 if quick else recipe.epochs,
        seed=cell.seed,
        encoder=dict(recipe.encoder),
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
    from mbm_agent.evaluation import evaluate_agent, write_report
    from mbm_agent.training.agent import load_agent

    todo = missing_evaluations(cell, run_dir)
    if not todo:
        return
    agent = load_agent(run_dir, "best")
    for name, dropped, greedy in todo:
        report = evaluate_agent(
            agent,
            cell.game.env_id,
            agent.spec.get("env_kwargs", {}),
            episodes=episodes,
            n_envs=min(episodes, 64),
            deterministic=greedy,
            drop_modalities=dropped,
            baselines=False,
            meta={"run": run_dir.name, "policy": "best"},
        )
        write_report(report, run_dir, name=name)


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
    from mbm_agent.ray_grid import ray_available, require_ray

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
        backend: ``auto``, ``ray`` (Ray Tune trials, see :mod:`mbm_agent.ray_grid`)
            or ``sequential`` (one run after another in this process).
        ray_address: Run on this Ray cluster instead of a local Ray.
        cpus_per_trial: CPUs and torch threads per Ray trial.
        command: The command recorded in every run folder.

    Raises:
        KeyboardInterrupt: Ctrl-C; every run keeps its checkpoints.
        mbm_agent.ray_grid.GridError: Ray trials that failed after their retries.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pending = [c for c in cells if not cell_done(c, root)]
    mode = resolve_backend(backend, ray_address, cpus_per_trial, len(pending))
    if not pending:
        mode = "sequential"  # nothing to run: no Ray to start
    if mode == "ray":
        from mbm_agent.ray_grid import run_cells_on_ray

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


def finished_cells(root: str | Path) -> list[Cell]:
    """Every grid cell with an evaluated run under ``root/runs`` (from any invocation)."""
    import re

    done = [p for p in sorted(Path(root).glob("runs/*-s*")) if (p / "eval.json").is_file()]
    seeds = {int(m.group(1)) for p in done if (m := re.search(r"-s(\d+)$", p.name))}
    known = {c.name: c for c in build_grid(seeds=sorted(seeds))} if seeds else {}
    return [known[p.name] for p in done if p.name in known]


def _steps_to(metrics_csv: Path, bar: float) -> float:
    """First logged step whose periodic held-out success reached ``bar`` (NaN if never)."""
    from mbm_agent.plots import read_metrics

    try:
        m = read_metrics(metrics_csv)
    except (FileNotFoundError, ValueError):
        return math.nan
    succ = m.get("eval_success")
    if succ is None:
        return math.nan
    hit = np.flatnonzero(np.nan_to_num(succ, nan=-1.0) >= bar)
    return float(m["timesteps"][hit[0]]) if len(hit) else math.nan


def _wall_time(metrics_csv: Path) -> float:
    from mbm_agent.plots import read_metrics

    try:
        m = read_metrics(metrics_csv)
    except (FileNotFoundError, ValueError):
        return math.nan
    elapsed = m.get("time_s")
    return float(np.nanmax(elapsed)) if elapsed is not None and len(elapsed) else math.nan


def _demo_steps(config: Mapping[str, Any]) -> int:
    """Demonstration steps behind a run started ``--init-from`` a BC run (else 0)."""
    source = config.get("init_from")
    if not source:
        return 0
    try:
        bc_config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    return int(bc_config.get("demos", {}).get("steps", 0))


def _success_of(path: Path) -> float | None:
    if not path.is_file():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))
    return float(report["success"]["rate"])


def write_summary(cells: Sequence[Cell], root: str | Path) -> dict[str, Any]:
    """Aggregate the finished cells into ``summary.json``, ``summary.md`` and curve plots.

    Success and return are scored on the game's :attr:`GameSpec.headline` report
    (sampled or greedy actions); both modes' success stand next to them. Runs
    trained but not yet evaluated with sampled actions (by an earlier version) are
    left out with a warning: ``mbm-agent bench --summary-only`` evaluates them.
    """
    import warnings

    from mbm_agent.compare import load_run
    from mbm_agent.stats import aggregate_runs

    root = Path(root)
    groups: dict[tuple[str, str], list[Cell]] = {}
    unsampled = []
    for cell in cells:
        run_dir = root / "runs" / cell.name
        if not (run_dir / "eval.json").is_file():
            continue
        if not (run_dir / f"{SAMPLED}.json").is_file():
            unsampled.append(cell.name)
            continue
        groups.setdefault((cell.game.env_id, cell.variant), []).append(cell)
    if unsampled:
        warnings.warn(
            f"{len(unsampled)} run(s) lack {SAMPLED}.json and are left out of the summary "
            f"({', '.join(unsampled)}); `mbm-agent bench --summary-only --out {root}` "
            "evaluates them (no training).",
            stacklevel=2,
        )
    rows = []
    for (env_id, variant), members in groups.items():
        game = members[0].game
        dirs = [root / "runs" / c.name for c in members]
        by_mode = {name: [load_run(d, name) for d in dirs] for name in ("eval", SAMPLED)}
        runs = by_mode[game.headline]
        greedy = [r["success"] for r in by_mode["eval"]]
        sampled = [r["success"] for r in by_mode[SAMPLED]]
        agg = aggregate_runs(
            {
                "success": {env_id: [r["success"] for r in runs]},
                "return": {env_id: [r["return"] for r in runs]},
                "greedy_success": {env_id: greedy},
                "sampled_success": {env_id: sampled},
            }
        )
        drops = {}
        for m in game.required:
            values = [_success_of(d / f"{game.headline}-drop-{m}.json") for d in dirs]
            if variant.startswith("mask-"):
                values = [r["success"] for r in runs] if variant == f"mask-{m}" else [None]
            kept = [v for v in values if v is not None]
            if kept:
                drops[m] = float(np.mean(kept))
        demo_steps = [_demo_steps(r["config"]) for r in runs]
        steps90 = [_steps_to(d / "metrics.csv", 0.9) for d in dirs]
        walls = [_wall_time(d / "metrics.csv") for d in dirs]
        rows.append(
            {
                "env_id": env_id,
                "variant": variant,
                "seeds": [c.seed for c in members],
                "steps": int(runs[0]["config"].get("steps", 0)),
                # bc-ppo: the expert's env steps the clone learnt from (mean over seeds)
                "demo_steps": int(np.mean([d for d in demo_steps if d])) if any(demo_steps) else 0,
                "success": agg["success"],
                "return": agg["return"],
                "per_seed_success": [r["success"] for r in runs],
                "actions": "sampled" if game.sampled else "greedy",
                "greedy_success": agg["greedy_success"],
                "per_seed_greedy_success": greedy,
                "sampled_success": agg["sampled_success"],
                "per_seed_sampled_success": sampled,
                "masked_success": drops,
                "chance": game.chance,
                "steps_to_90": float(np.nanmedian(steps90)) if np.isfinite(steps90).any() else None,
                "wall_time_s": float(np.nansum(walls)),
            }
        )
    summary = {
        "rows": rows,
        "games": {g: asdict(s) for g, s in REFERENCE_GAMES.items()},
        "agents": publish_agents(rows, root),
    }
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=2, default=_json_default))
    atomic_write_text(root / "summary.md", summary_markdown(summary))
    try:
        for env_id in {r["env_id"] for r in rows}:
            curves_plot(
                [c for c in cells if c.game.env_id == env_id],
                root,
                root / f"curves-{envs.game_name(env_id)}.png",
            )
    except ImportError:
        pass
    return summary


def publish_agents(rows: Sequence[Mapping[str, Any]], root: Path) -> dict[str, str]:
    """Copy one reference agent per game to ``root/agents/<Game>/`` (policy files + its eval).

    The agent is the best seed of the fusion variant with the highest IQM success.
    These folders are small (JSON + safetensors) and meant to be committed: after a
    clone, ``mbm-agent eval runs/reference/agents/<Game>`` and ``load_agent`` take them.
    """
    import shutil

    agents: dict[str, str] = {}
    for env_id in sorted({r["env_id"] for r in rows}):
        fusion_rows = [r for r in rows if r["env_id"] == env_id and full_sense(r["variant"])]
        if not fusion_rows:
            continue
        best = max(fusion_rows, key=lambda r: (r["success"]["iqm"], r["return"]["iqm"]))
        seed = best["seeds"][int(np.argmax(best["per_seed_success"]))]
        game = envs.game_name(env_id)
        source = root / "runs" / f"{game}-{best['variant']}-s{seed}"
        target = root / "agents" / game
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source / "best", target)
        for name in ("eval", SAMPLED):
            shutil.copy2(source / f"{name}.json", target / f"{name}.json")
        agents[env_id] = str(target.relative_to(root))
    return agents


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _pct(stat: Mapping[str, Any]) -> str:
    ci = stat.get("iqm_ci")
    text = f"{100 * stat['iqm']:.1f}"
    return text + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def _num(stat: Mapping[str, Any]) -> str:
    ci = stat.get("iqm_ci")
    text = f"{stat['iqm']:.3f}"
    return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The summary as a Markdown table, one row per game and variant."""
    lines = [
        "| game | variant | seeds | steps | success % (IQM [95% CI]) | return (IQM [95% CI]) "
        "| actions | greedy / sampled: success % | masked at eval: success % (chance %) "
        "| steps to 90% | wall time (all seeds) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        masked = ", ".join(
            f"{m}: {100 * v:.1f} ({100 * r['chance']:.1f})" for m, v in r["masked_success"].items()
        )
        s90 = "-" if r["steps_to_90"] is None else f"{r['steps_to_90'] / 1000:.0f}k"
        steps = f"{r['steps']:,}" + (f" + {r['demo_steps']:,} demo" if r.get("demo_steps") else "")
        lines.append(
            f"| {r['env_id']} | {r['variant']} | {len(r['seeds'])} | {steps} "
            f"| {_pct(r['success'])} | {_num(r['return'])} | {r['actions']} "
            f"| {100 * r['greedy_success']['iqm']:.1f} / {100 * r['sampled_success']['iqm']:.1f} "
            f"| {masked or '-'} | {s90} "
            f"| {r['wall_time_s'] / 60:.1f} min |"
        )
    lines.append("")
    for env_id, path in summary.get("agents", {}).items():
        lines.append(
            f"Reference agent for {env_id}: `{path}` (`mbm-agent eval` / `load_agent` take it)."
        )
    lines.append("")
    lines.append(
        "Success and return: held-out seeds, IQM over training seeds with 95% stratified "
        "bootstrap intervals, with the policy's `actions`: sampled for the egocentric "
        "navigation games (a memoryless policy of a partially observed game may need to "
        "randomise; an imperfect one's argmax can cycle until time-out), greedy (argmax) "
        "for ModalityProbe; both modes' IQM success is listed (periodic evaluations and "
        "steps to 90% are greedy). `mask-X` variants never see X (masked at training and "
        "evaluation); the masked column of a fusion variant drops X at evaluation only. "
        "`bc-ppo` (and the `mask-X` runs of its games, cloned without X): behaviour "
        "cloning from noisy expert demonstrations (their env steps "
        "listed as `demo`), then PPO from the cloned policy; its wall time is PPO's."
    )
    return "\n".join(lines) + "\n"


def curves_plot(cells: Sequence[Cell], root: Path, out: Path) -> Path:
    """Held-out success against steps per variant (mean over seeds) for one game."""
    from mbm_agent.plots import new_figure, read_metrics

    fig, axes = new_figure(6.0, 3.6)
    ax = axes[0]
    by_variant: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for cell in cells:
        path = root / "runs" / cell.name / "metrics.csv"
        try:
            m = read_metrics(path)
        except (FileNotFoundError, ValueError):
            continue
        keep = np.isfinite(m.get("eval_success", np.array([])))
        if keep.any():
            by_variant.setdefault(cell.variant, []).append(
                (m["timesteps"][keep], m["eval_success"][keep])
            )
    for variant, curves in sorted(by_variant.items()):
        grid = np.unique(np.concatenate([x for x, _ in curves]))
        ys = np.array([np.interp(grid, x, y) for x, y in curves])
        ax.plot(grid, ys.mean(axis=0), label=f"{variant} ({len(curves)} seeds)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("held-out success")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title(cells[0].game.env_id if cells else "")
    fig.savefig(out, dpi=110)
    return out
