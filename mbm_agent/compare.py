"""Compare evaluated runs: group seeds of one configuration, aggregate, rank.

Each run folder holds ``config.json`` (the resolved training config) and
``eval.json`` (written by :func:`mbm_agent.evaluation.write_report`). Runs whose
``group_by`` values match form a group, one run per seed. A run is summarised
by its mean episode return and its success rate; a group by the interquartile
mean (IQM) of those over its runs, with a stratified bootstrap interval that
resamples runs within each environment. Pairs of groups are compared with the
probability of improvement: the chance that a run of one beats a run of the
other (Agarwal et al., 2021).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mbm_agent.plots import new_figure, save_figure
from mbm_agent.stats import aggregate_runs, probability_of_improvement
from mbm_agent.training.storage import read_json

#: Shown in place of a config value the run does not record.
MISSING = "?"

#: Config keys expected to differ between the seeds of one configuration, so
#: not reported as a difference within a group.
RUN_SPECIFIC_KEYS = frozenset(
    {"seed", "run", "run_name", "run_dir", "name", "out_dir", "output_dir", "command", "created"}
)

#: Per-run metrics, in display order: key in a run record -> label.
METRICS: dict[str, str] = {
    "success": "success rate",
    "return": "mean return",
    "normalized": "normalised score",
}


class NotARunError(FileNotFoundError):
    """A folder given as a run has no ``config.json``."""


class MissingEvalError(FileNotFoundError):
    """A run folder has not been evaluated (no ``eval.json``)."""


def _lookup(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]``, following dots into nested dicts; :data:`MISSING` when absent."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


def load_run(run_dir: str | Path, report: str = "eval") -> dict[str, Any]:
    """Read one evaluated run: its config and per-run metrics.

    Args:
        run_dir: A run folder with ``config.json`` and the report.
        report: Which evaluation report to read (file stem: ``eval``, or e.g.
            ``eval-sampled``, which ``mbm-agent bench`` writes).

    Returns:
        ``path``, ``config``, ``episodes``, ``return`` (mean episode return),
        ``success`` (success rate) and, when the evaluation had baselines,
        ``normalized`` (mean normalised score).

    Raises:
        NotARunError: When the folder is missing or has no ``config.json``.
        MissingEvalError: When the run has no ``<report>.json``.
        ValueError: When a file is not valid JSON or the report lacks episodes.
    """
    folder = Path(run_dir)
    config_path, eval_path = folder / "config.json", folder / f"{report}.json"
    if not folder.is_dir():
        raise NotARunError(f"{folder} is not a folder; give the run folders under runs/.")
    if not config_path.is_file():
        raise NotARunError(
            f"{folder} is not a run folder: it has no config.json "
            "(run folders are what `mbm-agent train` writes under runs/)."
        )
    if not eval_path.is_file():
        raise MissingEvalError(
            f"{folder} has no {report}.json; run `mbm-agent eval {folder}` first."
            if report == "eval"
            else f"{folder} has no {report}.json; `mbm-agent bench --summary-only` writes it."
        )
    config = read_json(config_path, "the run's config", fix="rerun training or fix the file")
    data = read_json(eval_path, "the evaluation report", fix=f"rerun `mbm-agent eval {folder}`")
    episodes = data.get("episodes")
    if (
        not isinstance(episodes, Mapping)
        or not episodes.get("returns")
        or len(episodes.get("successes", ())) != len(episodes["returns"])
    ):
        raise ValueError(
            f"{eval_path} has no per-episode returns and successes; it was not written by "
            f"`mbm-agent eval`. Rerun `mbm-agent eval {folder}`."
        )
    run: dict[str, Any] = {
        "path": str(folder),
        "config": dict(config),
        "episodes": len(episodes["returns"]),
        "return": float(np.mean(np.asarray(episodes["returns"], dtype=np.float64))),
        "success": float(np.mean(np.asarray(episodes["successes"], dtype=np.float64))),
    }
    normalized = data.get("normalized")
    if isinstance(normalized, Mapping) and normalized.get("mean") is not None:
        run["normalized"] = float(normalized["mean"])
    return run


def _differing_keys(configs: Sequence[Mapping[str, Any]], skip: set[str]) -> list[str]:
    keys = sorted(set().union(*configs) - skip - RUN_SPECIFIC_KEYS)
    return [
        k
        for k in keys
        if len({json.dumps(c.get(k, MISSING), sort_keys=True, default=str) for c in configs}) > 1
    ]


def _by_env(runs: Sequence[Mapping[str, Any]], metric: str) -> dict[str, list[float]]:
    """Per-run scores of ``metric`` grouped by environment (the bootstrap strata)."""
    out: dict[str, list[float]] = {}
    for run in runs:
        out.setdefault(str(_lookup(run["config"], "env_id")), []).append(run[metric])
    return out


def compare_runs(
    run_dirs: Sequence[str | Path],
    *,
    group_by: Sequence[str] = ("env_id", "algo", "fusion"),
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Group evaluated runs by configuration and compare the groups.

    Args:
        run_dirs: Run folders, each with ``config.json`` and ``eval.json``.
        group_by: Config keys (dots reach into nested dicts) that define a
            group; runs differing only in other keys (the seed) are pooled.
            A key a run's config lacks counts as ``"?"``.
        confidence: Confidence level of the intervals.
        n_boot: Bootstrap replicates.
        seed: Seed of the bootstrap generator.

    Returns:
        A JSON-ready dict: ``group_by``, ``shared_config`` (the ``group_by``
        values all groups share), ``confidence``, ``groups`` (each with
        ``name``, ``label`` (only the values that tell groups apart),
        ``config``, ``n_runs``, ``seeds``, ``runs``,
        ``differing_keys`` (other config keys that vary inside the group) and
        ``metrics``: ``success``, ``return`` and, when every run has it,
        ``normalized``, each ``{"iqm", "iqm_ci", "mean", "mean_ci", ...}`` over
        runs), and ``poi``: for every pair of groups sharing an environment,
        ``{"x", "y", "metrics": {metric: {"poi", "ci", ...}}}`` with
        ``poi = P(run of x beats run of y)``, averaged over shared environments.

    Raises:
        ValueError: For no runs, a run listed twice, or unreadable files.
        NotARunError: For a folder without ``config.json``.
        MissingEvalError: For a run without ``eval.json``.
    """
    if not run_dirs:
        raise ValueError("No run folders given; pass one or more folders under runs/.")
    if isinstance(group_by, str):
        group_by = (group_by,)
    seen: set[Path] = set()
    for d in run_dirs:
        resolved = Path(d).resolve()
        if resolved in seen:
            raise ValueError(f"Run folder {d} is listed twice; each run counts once.")
        seen.add(resolved)
    runs = [load_run(d) for d in run_dirs]
    stats_kw: dict[str, Any] = {"confidence": confidence, "n_boot": n_boot, "seed": seed}

    grouped: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for run in runs:
        key = tuple(str(_lookup(run["config"], k)) for k in group_by)
        grouped.setdefault(key, []).append(run)

    groups: list[dict[str, Any]] = []
    for key in sorted(grouped):
        members = grouped[key]
        name = ", ".join(f"{k}={v}" for k, v in zip(group_by, key, strict=True)) or "all runs"
        present = [m for m in METRICS if all(m in r for r in members)]
        metrics = {
            m: aggregate_runs({name: _by_env(members, m)}, **stats_kw)[name] for m in present
        }
        groups.append(
            {
                "name": name,
                "config": dict(zip(group_by, key, strict=True)),
                "n_runs": len(members),
                "seeds": [_lookup(r["config"], "seed") for r in members],
                "runs": [
                    {k: r[k] for k in ("path", "episodes", *METRICS) if k in r} for r in members
                ],
                "differing_keys": _differing_keys([r["config"] for r in members], set(group_by)),
                "metrics": metrics,
                "_members": members,
            }
        )

    poi: list[dict[str, Any]] = []
    for i, gx in enumerate(groups):
        for gy in groups[i + 1 :]:
            shared = [m for m in gx["metrics"] if m in gy["metrics"]]
            envs_x, envs_y = _by_env(gx["_members"], "success"), _by_env(gy["_members"], "success")
            common = sorted(set(envs_x) & set(envs_y))
            if not common:
                continue
            entry: dict[str, Any] = {"x": gx["name"], "y": gy["name"], "envs": common}
            entry["metrics"] = {}
            for m in shared:
                sx, sy = _by_env(gx["_members"], m), _by_env(gy["_members"], m)
                entry["metrics"][m] = probability_of_improvement(
                    {e: sx[e] for e in common}, {e: sy[e] for e in common}, **stats_kw
                )
            poi.append(entry)
    varying = [k for i, k in enumerate(group_by) if len({key[i] for key in grouped}) > 1]
    shared_config = {k: v for k, v in groups[0]["config"].items() if k not in varying}
    for g in groups:
        del g["_members"]
        g["label"] = ", ".join(f"{k}={g['config'][k]}" for k in varying) or g["name"]
    return {
        "group_by": list(group_by),
        "shared_config": shared_config,
        "confidence": confidence,
        "n_runs": len(runs),
        "groups": groups,
        "poi": poi,
    }


def _cell(stat: Mapping[str, Any] | None, key: str = "iqm") -> str:
    if not stat:
        return "n/a | n/a"
    ci = stat.get(f"{key}_ci") if key != "poi" else stat.get("ci")
    ci_text = "n/a (one run)" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{stat[key]:.3f} | {ci_text}"


def compare_markdown(result: Mapping[str, Any]) -> str:
    """A Markdown table of :func:`compare_runs` output.

    Args:
        result: What :func:`compare_runs` returned.

    Returns:
        Markdown: per-group IQMs with intervals, then pairwise probabilities of
        improvement, then any config keys that vary inside a group.
    """
    level = round(100 * result["confidence"])
    groups = result["groups"]
    shown = [m for m in METRICS if any(m in g["metrics"] for g in groups)]
    lines = [
        "# Run comparison",
        "",
        f"{result['n_runs']} runs grouped by {', '.join(result['group_by']) or 'nothing'}. "
        f"IQM over runs (seeds) of each run's score, with {level}% stratified bootstrap "
        "intervals (runs resampled within each environment).",
    ]
    if result.get("shared_config") and len(groups) > 1:
        common = ", ".join(f"{k}={v}" for k, v in result["shared_config"].items())
        lines += ["", f"All groups share {common}."]
    lines += [
        "",
        "| group | runs | seeds | "
        + " | ".join(f"{METRICS[m]} IQM | {level}% CI" for m in shown)
        + " |",
        "|---|---|---|" + "---|---|" * len(shown),
    ]
    for g in groups:
        seeds = ", ".join(map(str, g["seeds"]))
        cells = " | ".join(_cell(g["metrics"].get(m)) for m in shown)
        lines.append(f"| {g['label']} | {g['n_runs']} | {seeds} | {cells} |")
    labels = {g["name"]: g["label"] for g in groups}
    if result["poi"]:
        lines += [
            "",
            "## Probability of improvement",
            "",
            "P(X > Y): the chance that a run of X scores higher than a run of Y "
            "(0.5 = no difference).",
            "",
            "| X | Y | "
            + " | ".join(f"P(X > Y), {METRICS[m]} | {level}% CI" for m in shown)
            + " |",
            "|---|---|" + "---|---|" * len(shown),
        ]
        for p in result["poi"]:
            cells = " | ".join(_cell(p["metrics"].get(m), "poi") for m in shown)
            lines.append(f"| {labels[p['x']]} | {labels[p['y']]} | {cells} |")
    varying = [g for g in groups if g["differing_keys"]]
    if varying:
        lines += ["", "Config keys that differ inside a group (check they should be pooled):", ""]
        lines += [f"- {g['label']}: {', '.join(g['differing_keys'])}" for g in varying]
    lines.append("")
    return "\n".join(lines)


def compare_plot(result: Mapping[str, Any], path: str | Path) -> Path:
    """Draw each group's IQM with its interval, one panel per metric.

    Args:
        result: What :func:`compare_runs` returned.
        path: Output image (PNG by extension; parent folders are created).

    Returns:
        The image path.

    Raises:
        ValueError: When the result has no groups.
        ImportError: When matplotlib (the ``plots`` extra) is missing.
    """
    groups = list(result["groups"])
    if not groups:
        raise ValueError("Nothing to plot: the comparison has no groups.")
    shown = [m for m in METRICS if any(m in g["metrics"] for g in groups)]
    fig, axes = new_figure(4.0 * len(shown) + 2.5, 0.9 + 0.45 * len(groups), ncols=len(shown))
    rows = np.arange(len(groups))[::-1]
    level = round(100 * result["confidence"])
    for ax, metric in zip(axes, shown, strict=True):
        for row, g in zip(rows, groups, strict=True):
            stat = g["metrics"].get(metric)
            if stat is None:
                continue
            ci = stat["iqm_ci"]
            if ci is not None:
                ax.hlines(row, ci[0], ci[1], color="tab:blue", linewidth=6, alpha=0.35)
            ax.plot([stat["iqm"]], [row], "o", color="tab:blue")
        ax.set_yticks(rows, [g["label"] if ax is axes[0] else "" for g in groups])
        ax.set_ylim(-0.7, len(groups) - 0.3)
        ax.set_xlabel(f"IQM {METRICS[metric]} ({level}% CI)")
        ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


__all__ = [
    "MissingEvalError",
    "NotARunError",
    "compare_markdown",
    "compare_plot",
    "compare_runs",
    "load_run",
]
