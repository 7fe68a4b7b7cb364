"""The grid's summary: IQM and intervals per game and variant, curves, the published agents."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

import envs
from mbm_agent.compare import load_run
from mbm_agent.grid.spec import ALL_GAMES, COMPONENTS, SAMPLED, Cell, full_sense
from mbm_agent.plots import new_figure, read_metrics, save_figure
from mbm_agent.stats import aggregate_runs
from mbm_agent.training.storage import atomic_write_text, fresh_tmp_dir, replace_dir


def _steps_to(metrics_csv: Path, bar: float) -> float:
    """First logged step whose periodic held-out success reached ``bar`` (NaN if never)."""
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


def score_of(path: Path, scored_by: str = "success") -> float | None:
    """An evaluation report's success rate (or mean return), None when it is missing."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))
    if scored_by == "return":
        return float(report["returns"]["mean"])
    return float(report["success"]["rate"])


def write_summary(cells: Sequence[Cell], root: str | Path) -> dict[str, Any]:
    """Aggregate the finished cells into ``summary.json``, ``summary.md`` and curve plots.

    Success and return are scored on the game's :attr:`GameSpec.headline` report
    (sampled or greedy actions); both modes' success stand next to them. Runs
    trained but not yet evaluated with sampled actions (by an earlier version) are
    left out with a warning: ``mbm-agent bench --summary-only`` evaluates them.
    """
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
            values = [score_of(d / f"{game.headline}-drop-{m}.json", game.scored_by) for d in dirs]
            if variant.startswith("mask-"):
                values = [r[game.scored_by] for r in runs] if variant == f"mask-{m}" else [None]
            kept = [v for v in values if v is not None]
            if kept:
                drops[m] = float(np.mean(kept))
        demo_steps = [_demo_steps(r["config"]) for r in runs]
        budgets = [int(r["config"].get("steps", 0)) for r in runs]
        if len(set(budgets)) > 1:
            warnings.warn(
                f"{env_id} {variant}: its seeds were trained for different budgets "
                f"({', '.join(f'seed {c.seed}: {b:,}' for c, b in zip(members, budgets, strict=True))} "
                f"steps; a run already trained is kept as it is); the summary row says so. "
                "Resume the shorter runs to the same budget (mbm-agent train --resume RUN "
                "--steps N) or use another --out to compare like with like.",
                stacklevel=2,
            )
        steps90 = [_steps_to(d / "metrics.csv", 0.9) for d in dirs]
        walls = [_wall_time(d / "metrics.csv") for d in dirs]
        rows.append(
            {
                "env_id": env_id,
                "variant": variant,
                "seeds": [c.seed for c in members],
                "steps": max(budgets),
                "per_seed_steps": budgets,
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
                "scored_by": game.scored_by,
                "chance": game.chance,
                "steps_to_90": float(np.nanmedian(steps90)) if np.isfinite(steps90).any() else None,
                "wall_time_s": float(np.nansum(walls)),
            }
        )
    summary = {
        "rows": rows,
        "games": {
            g: asdict(s)
            for g, s in ALL_GAMES.items()
            if g in {r["env_id"] for r in rows} or s.extra is None
        },
        "agents": publish_agents(rows, root),
    }
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=2, default=_json_default))
    atomic_write_text(root / "summary.md", summary_markdown(summary))
    try:
        for env_id in {str(r["env_id"]) for r in rows}:
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
        missing = [p.name for p in (source / "best", *reports(source)) if not p.exists()]
        if missing:
            # A committed reference folder keeps its runs' reports and curves but not their
            # weights (best/ is not committed): keep the published agent as it is.
            warnings.warn(
                f"Not publishing {game}'s agent from {source}: it has no {', '.join(missing)}."
                + (f" {target} is kept as it was." if target.exists() else ""),
                stacklevel=2,
            )
            continue
        # Copied beside the target first and renamed into place: the published agent is
        # never deleted before its replacement is complete.
        published = {p.name for p in (source / "best").iterdir()} | {
            p.name for p in reports(source)
        }
        kept = target.iterdir() if target.is_dir() else iter(())
        added = sorted(p.name for p in kept if p.name not in published)
        if added:
            # What was made from the published agent (eval-*.json, exports/, report.html)
            # lives in its folder: replacing the folder would delete it.
            warnings.warn(
                f"Not publishing {game}'s agent: {target} also holds {', '.join(added)}, "
                "which publishing did not write and would delete. Move them out, then run "
                f"mbm-agent bench --summary-only --out {root}.",
                stacklevel=2,
            )
            continue
        staging = fresh_tmp_dir(target)
        try:
            shutil.copytree(source / "best", staging, dirs_exist_ok=True)
            for report in reports(source):
                shutil.copy2(report, staging / report.name)
            replace_dir(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        agents[env_id] = str(target.relative_to(root))
    return agents


def reports(run_dir: Path) -> tuple[Path, Path]:
    """The greedy and sampled reports of a grid run, published with its agent."""
    return run_dir / "eval.json", run_dir / f"{SAMPLED}.json"


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
        chance = "-" if r["chance"] is None else f"{100 * r['chance']:.1f}"
        by_return = r.get("scored_by") == "return"  # no success (Atari): returns instead
        masked = ", ".join(
            f"{m}: return {v:.3f}" if by_return else f"{m}: {100 * v:.1f} ({chance})"
            for m, v in r["masked_success"].items()
        )
        success = "-" if by_return else _pct(r["success"])
        modes = (
            "-"
            if by_return
            else f"{100 * r['greedy_success']['iqm']:.1f} / {100 * r['sampled_success']['iqm']:.1f}"
        )
        s90 = "-" if r["steps_to_90"] is None else f"{r['steps_to_90'] / 1000:.0f}k"
        budgets = sorted(set(r.get("per_seed_steps") or [r["steps"]]))
        steps = (
            f"{budgets[0]:,}"
            if len(budgets) == 1
            else f"{budgets[0]:,}-{budgets[-1]:,} (differ by seed)"
        )
        steps += f" + {r['demo_steps']:,} demo" if r.get("demo_steps") else ""
        lines.append(
            f"| {r['env_id']} | {r['variant']} | {len(r['seeds'])} | {steps} "
            f"| {success} | {_num(r['return'])} | {r['actions']} "
            f"| {modes} | {masked or '-'} | {s90} "
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
        "listed as `demo`), then PPO from the cloned policy; its wall time is PPO's. "
        "Games without a success signal (Atari) are scored by return: their success "
        "columns are `-` and their masked column gives the mean return. "
        "`no-<component>` variants (`--components`): the game's own recipe with that one "
        f"component ({', '.join(COMPONENTS)}) taken out, same budget."
    )
    return "\n".join(lines) + "\n"


def curves_plot(cells: Sequence[Cell], root: Path, out: Path) -> Path:
    """Held-out success against steps per variant (mean over seeds) for one game."""
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
    return save_figure(fig, out, dpi=110)
